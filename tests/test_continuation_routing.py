# A continuation (the same request with the text received sent back as an assistant prefill, as
# Retry(on_partial="continue") sends it) must be answered from the fixture whose answer it continues, in every
# selection mode, or the client stitches two answers together (issue 20: the README's offline resilience
# recipe did in 9 of 60 turns). Tested with the real SDK over the replay server for many turns under a fault
# mix, each turn checked against the one fixture the server says it served; then the selector's rules alone.
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mendstream
from mendstream.recording.fixtures import Fixture, FixtureSelector, prefill_of
from mendstream.testing import FIXTURES, ReplayServer, anthropic_client, parse_fault_spec
from mendstream.testing.faults import continuation_body

anthropic = pytest.importorskip("anthropic")

TURNS = 64
# Dense enough that most turns are broken at least once and many are continued. The error comes after three
# events (message_start, the first block's start, one delta): before any stop reason, in an answer and in a
# continuation alike (a fault after the stop reason is not retried: that message is complete). A cut in a tool
# input falls back to a restart.
FAULTS = "mix(seed=11):0.5*error(after_events=3)+0.05*cut(in=tool)"
RETRY = mendstream.Retry(max_attempts=25, on_partial="continue", backoff=0.001, cap=0.002, seed=1)


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def answer(name: str, directory: Path = FIXTURES) -> list[dict[str, Any]]:
    """The content of a fixture's answer, as mendstream reads it whole (null fields left out, as the SDK's
    ``model_dump(exclude_none=True)`` leaves them)."""
    with mendstream.replay(directory / f"{name}.sse") as stream:
        stream.get_final_message()
        return list(without_none(stream.message["content"]))


def clean_names() -> list[str]:
    with ReplayServer(FIXTURES) as server:
        return [f.name for f in server.selector.rotation]


@pytest.fixture(scope="module")
def clean() -> list[str]:
    return clean_names()


def copy_fixtures(names: list[str], directory: Path, *, sidecars: bool = False) -> Path:
    directory.mkdir()
    for name in names:
        shutil.copy(FIXTURES / f"{name}.sse", directory / f"{name}.sse")
        if sidecars:  # a captured request per fixture, so body selection can find it
            request = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": f"about {name}"}]}
            (directory / f"{name}.capture.json").write_text(json.dumps({"request": {"body": request}}))
    return directory


def run_turns(server: ReplayServer, client: Any, turn_request: Any) -> dict[str, int]:
    """TURNS agent turns; each must end with the whole answer of the one fixture that served every one of
    its requests. Returns counts of attempt modes."""
    modes: dict[str, int] = {}
    for turn in range(TURNS):
        before = len(server.requests)
        params, headers = turn_request(turn)
        with mendstream.stream(client, model="m", max_tokens=100, retry=RETRY, extra_headers=headers,
                               **params) as stream:
            message = stream.get_final_message()
            attempts = stream.attempts
        name = last_answer(list(server.requests)[before:], f"turn {turn} ({[a.mode for a in attempts]})")
        content = [block.model_dump(exclude_none=True) for block in message.content]
        assert content == answer(name, server_dir(server)), f"turn {turn} ({name}): {[a.mode for a in attempts]}"
        for attempt in attempts:
            modes[attempt.mode] = modes.get(attempt.mode, 0) + 1
    return modes


def last_answer(records: list[Any], where: str) -> str:
    """The fixture the consumer's final message comes from: every request of a turn (the first, invisible
    retries, restarts and continuations, with or without a prefill) is answered by the same fixture, since
    each follows an answer the fault plan broke."""
    served = {record.fixture for record in records}
    assert len(served) == 1 and None not in served, f"{where}: answered by {served}"
    return str(served.pop())


_DIRS: dict[int, Path] = {}


def server_dir(server: ReplayServer) -> Path:
    return _DIRS.get(id(server), FIXTURES)


@pytest.fixture
def sdk() -> Iterator[Any]:
    clients: list[Any] = []

    def make(base_url: str) -> Any:
        client = anthropic.Anthropic(base_url=base_url, api_key="test", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def hello(turn: int) -> tuple[dict[str, Any], dict[str, str]]:
    return {"messages": [{"role": "user", "content": "Hello"}]}, {}


def check_modes(modes: dict[str, int]) -> None:
    # The run must really have continued answers (else it proves nothing), and every turn completed.
    assert modes.get("continue", 0) >= 15, modes
    assert modes["first"] == TURNS


def test_auto_selection_over_the_bundled_fixtures(sdk: Any) -> None:
    with ReplayServer(FIXTURES, faults=parse_fault_spec(FAULTS)) as server:
        check_modes(run_turns(server, sdk(server.base_url), hello))


def test_order_selection(sdk: Any, tmp_path: Path, clean: list[str]) -> None:
    directory = copy_fixtures(clean, tmp_path / "clean")
    with ReplayServer(directory, select="order", faults=parse_fault_spec(FAULTS)) as server:
        _DIRS[id(server)] = directory
        modes = run_turns(server, sdk(server.base_url), hello)
        # a retry or continuation does not take a turn of request order: turn k got fixture k
        served = [r.fixture for r in server.requests]
        turns = [name for i, name in enumerate(served) if i == 0 or served[i - 1] != name]
    check_modes(modes)
    assert turns == (clean * 3)[:TURNS]


def test_header_selection(sdk: Any, clean: list[str]) -> None:
    def named(turn: int) -> tuple[dict[str, Any], dict[str, str]]:
        return {"messages": [{"role": "user", "content": "Hello"}]}, {"x-mendstream-fixture": clean[turn % len(clean)]}

    with ReplayServer(FIXTURES, select="header", faults=parse_fault_spec(FAULTS)) as server:
        check_modes(run_turns(server, sdk(server.base_url), named))


def test_body_selection(sdk: Any, tmp_path: Path, clean: list[str]) -> None:
    directory = copy_fixtures(clean, tmp_path / "captured", sidecars=True)

    def about(turn: int) -> tuple[dict[str, Any], dict[str, str]]:
        name = clean[(turn * 7) % len(clean)]
        return {"messages": [{"role": "user", "content": f"about {name}"}]}, {}

    with ReplayServer(directory, select="body", faults=parse_fault_spec(FAULTS)) as server:
        _DIRS[id(server)] = directory
        check_modes(run_turns(server, sdk(server.base_url), about))


def test_the_mock_transport_routes_continuations_alike() -> None:
    client = anthropic_client(FIXTURES, faults=parse_fault_spec(FAULTS))
    transport = client._client._transport
    continued = 0
    try:
        for turn in range(TURNS):
            before = len(transport.requests)
            with mendstream.stream(client, model="m", max_tokens=100, retry=RETRY,
                                   messages=[{"role": "user", "content": "Hello"}]) as stream:
                message = stream.get_final_message()
                continued += sum(a.mode == "continue" for a in stream.attempts)
            name = last_answer(list(transport.requests)[before:], f"turn {turn}")
            assert [b.model_dump(exclude_none=True) for b in message.content] == answer(name)
    finally:
        client.close()
    assert continued >= 15


def test_text_stream_of_a_continued_answer_with_several_text_blocks(sdk: Any) -> None:
    faults = parse_fault_spec("error(after_events=3);ok")
    with ReplayServer(FIXTURES, select="header", faults=faults) as server:
        client = sdk(server.base_url)
        with mendstream.stream(client, model="m", max_tokens=100, retry=RETRY,
                               extra_headers={"x-mendstream-fixture": "text_citations"},
                               messages=[{"role": "user", "content": "Hello"}]) as stream:
            text = "".join(stream.text_stream)
            assert [a.mode for a in stream.attempts] == ["first", "continue"]
    assert text == "".join(block["text"] for block in answer("text_citations"))


# -- the selector's rules ------------------------------------------------------------------------------------

TEXT_SSE = (FIXTURES / "text_basic.sse").read_bytes()


def fixture_text(name: str) -> str:
    return str(answer(name)[0]["text"])


def request(*messages: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "stream": True, "messages": list(messages)}


USER = {"role": "user", "content": "hi"}


def test_a_continuation_gets_the_fixture_it_continues_without_taking_a_turn() -> None:
    names = ["text_basic", "text_multiple_blocks", "stop_sequence"]
    selector = FixtureSelector([Fixture.from_path(FIXTURES / f"{n}.sse") for n in names], select="order")
    first = selector.choose({}, request(USER))
    assert first.name == "text_basic"
    prefill = fixture_text("text_basic")[:7]
    again = selector.choose({}, request(USER, {"role": "assistant", "content": prefill}))
    assert again.name == "text_basic"
    assert selector.prefill_for(request(USER, {"role": "assistant", "content": prefill}), again) == prefill
    # a continuation of the continuation (more text received), as a list of text blocks
    longer = fixture_text("text_basic")[:12]
    blocks = {"role": "assistant", "content": [{"type": "text", "text": longer[:5]}, {"type": "text", "text": longer[5:]}]}
    assert selector.choose({}, request(USER, blocks)).name == "text_basic"
    assert selector.choose({}, request(USER)).name == "text_multiple_blocks"  # the next turn: order goes on


def test_a_request_with_its_own_prefill_is_continued_from_the_text_received() -> None:
    selector = FixtureSelector([Fixture.from_path(FIXTURES / "text_basic.sse")], select="order")
    own = {"role": "assistant", "content": "Sure:"}
    fixture = selector.choose({}, request(USER, own))
    assert selector.prefill_for(request(USER, own), fixture) == "Sure:"  # not a continuation: the answer is whole
    received = fixture_text("text_basic")[:9]
    body = request(USER, {"role": "assistant", "content": "Sure:" + received})
    assert selector.choose({}, body) is fixture
    assert selector.prefill_for(body, fixture) == received
    assert continuation_body(body, fixture.body, prefill=received) is not None
    assert continuation_body(body, fixture.body) is None  # the whole prefill does not begin the answer


def test_without_memory_the_fixture_whose_answer_begins_with_the_prefill() -> None:
    names = ["text_basic", "text_multiple_blocks", "stop_sequence"]
    fixtures = [Fixture.from_path(FIXTURES / f"{n}.sse") for n in names]
    for select in ("auto", "order", "body"):
        selector = FixtureSelector(fixtures, select=select)  # type: ignore[arg-type]
        prefill = fixture_text("stop_sequence")[:10]
        assert selector.choose({}, request(USER, {"role": "assistant", "content": prefill})).name == "stop_sequence"
    # a prefill no answer begins with is a new request; whitespace alone continues nothing
    selector = FixtureSelector(fixtures, select="order")
    assert selector.choose({}, request(USER, {"role": "assistant", "content": "Zebra"})).name == "text_basic"
    assert selector.choose({}, request(USER, {"role": "assistant", "content": "  "})).name == "text_multiple_blocks"


def test_the_header_still_decides_and_reset_forgets() -> None:
    names = ["text_basic", "stop_sequence"]
    selector = FixtureSelector([Fixture.from_path(FIXTURES / f"{n}.sse") for n in names], select="auto")
    prefill = fixture_text("text_basic")[:7]
    body = request(USER, {"role": "assistant", "content": prefill})
    assert selector.choose({"x-mendstream-fixture": "stop_sequence"}, body).name == "stop_sequence"
    selector.choose({}, request(USER))
    selector.reset()
    assert selector._answered == {}


def test_memory_is_bounded() -> None:
    selector = FixtureSelector([Fixture("a", TEXT_SSE)], select="order")
    selector.remember_limit = 50
    for i in range(500):
        selector.choose({}, request({"role": "user", "content": f"q{i}"}))
    assert len(selector._answered) == 50


def test_bodies_that_are_not_requests_are_not_remembered() -> None:
    selector = FixtureSelector([Fixture("a", TEXT_SSE)], select="order")
    for body in (None, [], "x", {"messages": "no"}, {"messages": [{"role": "assistant", "content": 5}]},
                 {"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}, {"x": float("nan")}):
        assert selector.choose({}, body).name == "a"
    assert prefill_of({"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}) is None


def test_the_same_request_after_a_broken_answer_gets_the_same_fixture() -> None:
    """A continuation sent without a prefill (nothing but a block's start had arrived), a retry or a restart
    repeats the request as it was: after an answer a fault broke, it gets that answer's fixture; after a
    whole answer, the same request is a new turn."""
    names = ["text_basic", "text_multiple_blocks", "stop_sequence"]
    selector = FixtureSelector([Fixture.from_path(FIXTURES / f"{n}.sse") for n in names], select="order")
    body = request(USER)
    assert selector.choose({}, body).name == "text_basic"
    selector.faulted(body)
    assert selector.choose({}, body).name == "text_basic"   # sent again after the broken answer
    assert selector.choose({}, body).name == "text_multiple_blocks"  # that answer was whole: a new turn
    selector.faulted(request({"role": "user", "content": "never sent"}))  # unknown: nothing to note
    assert selector.choose({}, body).name == "stop_sequence"


def planned(name: str) -> Any:
    from mendstream.testing.faults import PlannedResponse, split_events

    body = (FIXTURES / f"{name}.sse").read_bytes()
    return PlannedResponse(200, (("content-type", "text/event-stream"),), tuple((0.0, e) for e in split_events(body)))


@pytest.mark.parametrize(("spec", "interrupted"), [
    ("error(after_events=3)", True), ("error(after_events=17)", False),  # before / after text_basic's stop reason
    ("cut(after_events=3)", True), ("cut(after_events=17)", False), ("cut(in=tool)", False),
    ("status(code=529)", True), ("stall(seconds=1)", True), ("stall(seconds=1,headers=true)", True),
    ("trickle", False), ("ok", False),
])
def test_which_faults_interrupt_an_answer(spec: str, interrupted: bool) -> None:
    from mendstream.testing.faults import interrupts

    original = planned("text_basic")
    assert interrupts(original, parse_fault_spec(spec).apply(0, original)) is interrupted
