# SDK-faithful objects (issue 8 §1): `to_sdk_event` / `sdk_events=True` give the SDK's own event classes,
# checked against the SDK's MessageStream reading the same bytes (event for event: the class family and
# the comparable content); `get_final_message()` is a BetaMessage for beta requests; `replay(...).message`
# before and after reading; and the top-level `mendstream.stream` & co. are typed for mypy.
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import mendstream
from conftest import BASIC_SSE, FIXTURES_DIR, expected
from mendstream import replay
from mendstream.core.sdk_events import sdk_event_class, to_sdk_event
from mendstream.testing import ReplayServer
from sdk_reference import comparable, sdk_http_module

anthropic = pytest.importorskip("anthropic")

# The SDK class every event of a type must be an instance of (what `isinstance` code checks).
BASES = {
    "message_start": anthropic.types.RawMessageStartEvent,
    "content_block_start": anthropic.types.RawContentBlockStartEvent,
    "content_block_delta": anthropic.types.RawContentBlockDeltaEvent,
    "content_block_stop": anthropic.types.RawContentBlockStopEvent,
    "message_delta": anthropic.types.RawMessageDeltaEvent,
    "message_stop": anthropic.types.RawMessageStopEvent,
    "text": anthropic.lib.streaming.TextEvent,
    "input_json": anthropic.lib.streaming.InputJsonEvent,
}


def sdk_stream_events(data: bytes) -> list[Any]:
    """The SDK's own MessageStream events for ``data`` (served by a mock transport)."""
    http = sdk_http_module()
    client = anthropic.Anthropic(
        api_key="test", base_url="http://sdk.test", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(
            lambda request: http.Response(200, headers={"content-type": "text/event-stream"}, content=data)
        )),
    )
    with client.messages.stream(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]) as s:
        return list(s)


CLEAN = [name for name in sorted(p.name[:-4] for p in FIXTURES_DIR.glob("*.sse"))
         if expected(name)["error"] is None and not expected(name).get("repairs")][:40]


@pytest.mark.parametrize("name", CLEAN)
def test_sdk_events_match_the_sdk_stream(name: str) -> None:
    data = (FIXTURES_DIR / f"{name}.sse").read_bytes()
    try:
        theirs = sdk_stream_events(data)
    except ValueError:  # older SDKs fail on some streams mendstream reads (see test_fixtures)
        pytest.skip("the installed SDK cannot read this stream")
    with replay(data) as plain:
        if [comparable(e) for e in plain] != [comparable(e) for e in theirs]:
            pytest.skip("the SDK reads this stream differently (see test_fixtures); nothing to compare")
    with replay(data, sdk_events=True) as stream:
        ours = list(stream)
    assert [comparable(e) for e in ours] == [comparable(e) for e in theirs]
    for mine, sdk in zip(ours, theirs, strict=True):
        if isinstance(mine, mendstream.core.events.UnknownEvent):
            continue  # passed through as mendstream's (the SDK has no class for it: 2.x files it oddly)
        assert isinstance(mine, anthropic.BaseModel), mine
        base = BASES.get(mine.type) or sdk_event_class(mine.type)
        assert base is not None and isinstance(mine, base) and isinstance(sdk, base), mine.type


def test_to_sdk_event_beta_and_unknown() -> None:
    with replay(BASIC_SSE) as stream:
        events = list(stream)
    start = to_sdk_event(events[0], beta=True)
    assert isinstance(start, anthropic.types.beta.BetaRawMessageStartEvent)
    assert start.message.id == "msg_t1"
    text = to_sdk_event(next(e for e in events if e.type == "text"), beta=True)
    assert text.type == "text" and text.text == "Hello" and text.snapshot == "Hello"
    unknown = mendstream.core.events.UnknownEvent("vendor_thing", mendstream.core.events.Data({"type": "vendor_thing"}))
    assert to_sdk_event(unknown) is unknown


def test_text_stream_and_final_message_with_sdk_events() -> None:
    with replay(BASIC_SSE, sdk_events=True) as stream:
        assert "".join(stream.text_stream) == "Hello world"
        assert isinstance(stream.get_final_message(), anthropic.types.Message)
    with replay(BASIC_SSE, beta=True) as stream:
        assert isinstance(stream.get_final_message(), anthropic.types.beta.BetaMessage)


def test_replay_message_before_and_after_reading(tmp_path: Path) -> None:
    path = tmp_path / "basic.sse"
    path.write_bytes(BASIC_SSE)
    stream = replay(path)
    assert stream.message == {}  # nothing is read until asked
    final = stream.get_final_message()  # reads to the end
    assert stream.message == final.to_dict() == expected_basic()
    stream.close()


def expected_basic() -> dict[str, Any]:
    from conftest import BASIC_MESSAGE

    return BASIC_MESSAGE


def test_beta_requests_give_beta_messages() -> None:
    with ReplayServer({"basic": BASIC_SSE}) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)
        params: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        with mendstream.stream(client, **params, betas=["context-management-2025-06-27"], sdk_events=True) as s:
            events = list(s)
            assert isinstance(events[0], anthropic.types.beta.BetaRawMessageStartEvent)
            assert isinstance(s.get_final_message(), anthropic.types.beta.BetaMessage)
        assert "anthropic-beta" in server.requests[-1].headers
        plain = mendstream.stream(client, **params).get_final_message()
        assert isinstance(plain, anthropic.types.Message)
        assert not isinstance(plain, anthropic.types.beta.BetaMessage)


def test_top_level_functions_are_typed(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent("""
        import anthropic
        import mendstream

        client = anthropic.Anthropic()
        reveal_type(mendstream.stream(client, model="m", max_tokens=1, messages=[]))
        reveal_type(mendstream.astream(anthropic.AsyncAnthropic(), model="m", max_tokens=1, messages=[]))
        reveal_type(mendstream.replay(b""))
        reveal_type(mendstream.areplay(b""))
    """))
    src = Path(mendstream.__file__).resolve().parent.parent
    stdout, stderr, _ = api.run([str(snippet), "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent"])
    revealed = [line.split("Revealed type is ")[1] for line in stdout.splitlines() if "Revealed type" in line]
    assert revealed == [
        '"mendstream.streaming.drivers.MessageStream"',
        '"mendstream.streaming.opener.AsyncStreamOpener"',
        '"mendstream.streaming.drivers.MessageStream"',
        '"mendstream.streaming.drivers.AsyncMessageStream"',
    ], stdout + stderr + str(src)


def test_sdk_events_and_beta_hold_across_retries() -> None:
    """With ``retry=`` the stream is resilient; sdk_events and betas still give the SDK's classes (a restart
    marker stays mendstream's RestartEvent, which the SDK has no class for)."""
    from mendstream.testing.faults import parse_fault_spec

    faults = parse_fault_spec("error(type=overloaded_error,after_events=4);ok")
    with ReplayServer({"basic": BASIC_SSE}, faults=faults) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)
        params: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        retry = mendstream.Retry(max_attempts=3, backoff=0, on_partial="restart")
        with mendstream.stream(client, **params, betas=["b-1"], retry=retry, sdk_events=True) as s:
            events = list(s)
            final = s.get_final_message()
        assert len(s.attempts) == 2
        kinds = [type(e).__name__ for e in events]
        assert "RestartEvent" in kinds
        sdk = [e for e in events if type(e).__name__ != "RestartEvent"]
        assert all(type(e).__module__.startswith("anthropic.") for e in sdk), kinds
        assert isinstance(sdk[0], anthropic.types.beta.BetaRawMessageStartEvent)
        assert isinstance(final, anthropic.types.beta.BetaMessage)
        assert final.to_dict() == expected_basic()


def test_sdk_events_across_retries_async_and_httpx() -> None:
    import asyncio

    import mendstream.httpx as mhttpx
    from mendstream.testing.faults import parse_fault_spec

    retry = mendstream.Retry(max_attempts=3, backoff=0, on_partial="restart")
    body: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with ReplayServer({"basic": BASIC_SSE}, faults=parse_fault_spec("cut(after_events=3);ok;cut(after_events=3)")) as server:
        with mhttpx.stream(body, base_url=server.base_url, api_key="k", retry=retry, sdk_events=True) as s:
            events = [e for e in s if type(e).__name__ != "RestartEvent"]
        assert all(type(e).__module__.startswith("anthropic.") for e in events)

        async def run() -> list[Any]:
            client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0)
            async with mendstream.astream(client, **body, retry=retry, sdk_events=True) as stream:
                out = [e async for e in stream]
                assert isinstance(await stream.get_final_message(), anthropic.types.Message)
            await client.close()
            return out

        events = [e for e in asyncio.run(run()) if type(e).__name__ != "RestartEvent"]
        assert all(type(e).__module__.startswith("anthropic.") for e in events)
