"""Issue 19: mendstream against anthropic 2.17 on the same bytes, the SDK's own stream helpers as the oracle.

Each hand-written stream below is served by ``mendstream.server.ReplayServer`` on 127.0.0.1 to the unmodified
SDK (``client.messages.stream`` / ``client.beta.messages.stream``, sync and async) and to mendstream
(``mendstream.stream`` / ``astream`` through the same client class, and ``replay`` / ``areplay`` of the bytes).
The final messages and the events are compared; where mendstream deliberately differs (it keeps work the SDK
loses, or completes where the SDK raises) the test says so and checks the difference itself.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mendstream
from mendstream.core.accumulate import WHOLE_OUTPUT_STOP_REASONS, cuts_output
from mendstream.errors import APIStreamError, IncompleteStreamError, StreamError, ToolInputError
from mendstream.streaming.sdk_rules import FINE_GRAINED_TOOL_STREAMING, sdk_partial_mode
from mendstream.testing import Fixture, ReplayServer
from mendstream.testing.faults import Cut, Stall, split_events
from sdk_reference import comparable
from splitting import feed_all, split_at
from streams import sse

anthropic = pytest.importorskip("anthropic")
httpx2 = pytest.importorskip("httpx2")

MODEL = "claude-test"


def start(**fields: Any) -> dict[str, Any]:
    message = {"id": "msg_fid", "type": "message", "role": "assistant", "model": MODEL, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 1}}
    return {"type": "message_start", "message": {**message, **fields}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **payload: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": payload}


def json_delta(index: int, fragment: str) -> dict[str, Any]:
    return delta(index, type="input_json_delta", partial_json=fragment)


def text_delta(index: int, text: str) -> dict[str, Any]:
    return delta(index, type="text_delta", text=text)


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(output_tokens: int = 9, **stop_fields: Any) -> dict[str, Any]:
    return {"type": "message_delta", "delta": stop_fields, "usage": {"output_tokens": output_tokens}}


END = {"type": "message_stop"}


def body(*events: dict[str, Any]) -> bytes:
    return b"".join(sse(e) for e in events)


def tool_stream(block: dict[str, Any], fragments: list[str], **stop_fields: Any) -> bytes:
    """A text block, then ``block`` (a tool block) fed ``fragments``, stopped with ``stop_fields``."""
    return body(
        start(),
        block_start(0, {"type": "text", "text": ""}), text_delta(0, "Let me check."), stop(0),
        block_start(1, block), *(json_delta(1, f) for f in fragments), stop(1),
        message_delta(**stop_fields), END,
    )


TOOL = {"type": "tool_use", "id": "toolu_f", "name": "weather", "input": {}}
TOOL_WITHOUT_INPUT = {"type": "tool_use", "id": "toolu_f", "name": "weather"}
WHOLE = ["", '{"city": "Pa', 'ris", "days": [1, 2', "]}"]
CUT = ["", '{"city": "Pa', 'ris", "note": "bring an umb']  # the model stopped mid-string
# Every stop reason the API documents (the beta adds `compaction`), and what it does to a cut tool input.
STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded", "compaction")
CUTTING = [r for r in STOP_REASONS if r not in WHOLE_OUTPUT_STOP_REASONS]


def cut_stream(reason: str) -> bytes:
    extra: dict[str, Any] = {}
    if reason == "stop_sequence":
        extra["stop_sequence"] = "###"
    if reason == "refusal":
        extra["stop_details"] = {"type": "refusal", "category": "cyber", "explanation": None}
    return tool_stream(TOOL, CUT, stop_reason=reason, **({"stop_sequence": None} | extra))


STREAMS: dict[str, bytes] = {
    # 1. a tool block whose content_block_start has no `input` (gateways send this)
    "tool_without_input": tool_stream(TOOL_WITHOUT_INPUT, WHOLE, stop_reason="tool_use", stop_sequence=None),
    "server_tool_without_input": body(
        start(),
        block_start(0, {"type": "server_tool_use", "id": "srvtoolu_f", "name": "web_search"}),
        json_delta(0, '{"query": "wea'), json_delta(0, 'ther"}'), stop(0),
        block_start(1, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_f", "content": []}), stop(1),
        block_start(2, {"type": "text", "text": ""}), text_delta(2, "Sunny."), stop(2),
        message_delta(stop_reason="end_turn", stop_sequence=None), END,
    ),
    "tool_without_input_no_deltas": tool_stream(TOOL_WITHOUT_INPUT, [], stop_reason="tool_use", stop_sequence=None),
    # 2. a tool input cut short, under every stop reason
    **{f"cut_{reason}": cut_stream(reason) for reason in STOP_REASONS},
    # 4. model fallback (beta): a fallback block names the model that serves the rest
    "fallback": body(
        start(),
        block_start(0, {"type": "fallback", "from": {"model": MODEL}, "to": {"model": "claude-fallback"},
                        "trigger": {"type": "refusal"}}), stop(0),
        block_start(1, {"type": "text", "text": ""}), text_delta(1, "Served by the fallback."), stop(1),
        message_delta(stop_reason="end_turn", stop_sequence=None), END,
    ),
    # 5. compaction (beta): each compaction_delta replaces the block's content, then a `compaction` event
    "compaction": body(
        start(),
        block_start(0, {"type": "compaction", "content": None}),
        delta(0, type="compaction_delta", content="Earlier: the user asked about Paris."),
        delta(0, type="compaction_delta", content="Earlier: the user asked about Paris and Rome.",
              encrypted_content="enc-1"),
        stop(0),
        block_start(1, {"type": "text", "text": ""}), text_delta(1, "Go on."), stop(1),
        message_delta(stop_reason="end_turn", stop_sequence=None), END,
    ),
    # 6. a tool input whose strings arrive in pieces (what the fine-grained tool streaming beta shows)
    "string_in_pieces": tool_stream(TOOL, ['{"city": "Pa', "ri", 's", "unit": "cel', 'sius"}'],
                                    stop_reason="tool_use", stop_sequence=None),
    # 8. a later message_delta that reports the stop resets what it leaves out
    "stop_details_reset": body(
        start(),
        block_start(0, {"type": "text", "text": ""}), text_delta(0, "Partial"), stop(0),
        message_delta(stop_reason="refusal", stop_sequence="##",
                      stop_details={"type": "refusal", "category": "cyber", "explanation": "x"}),
        message_delta(output_tokens=12, stop_reason="end_turn"),
        END,
    ),
    "usage_only_delta": body(
        start(),
        block_start(0, {"type": "text", "text": ""}), text_delta(0, "Done"), stop(0),
        message_delta(stop_reason="stop_sequence", stop_sequence="##"),
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 11}},
        END,
    ),
    "text_null": body(
        start(),
        block_start(0, {"type": "text", "text": None}), text_delta(0, "Kept"), text_delta(0, " text."), stop(0),
        message_delta(stop_reason="end_turn", stop_sequence=None), END,
    ),
    "plain": body(
        start(),
        block_start(0, {"type": "text", "text": ""}), *(text_delta(0, w) for w in ("One ", "two ", "three.")),
        stop(0), block_start(1, TOOL), *(json_delta(1, f) for f in WHOLE), stop(1),
        message_delta(stop_reason="tool_use", stop_sequence=None), END,
    ),
}
WORKSPACE = "wrkspc_fidelity"
FIXTURES = [Fixture(name, data, headers=(("anthropic-workspace-id", WORKSPACE),)) for name, data in STREAMS.items()]


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES, select="header") as srv:
        yield srv


# -- running a stream through the SDK and through mendstream ---------------------------------------------------


@dataclass
class Outcome:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    message: dict[str, Any] | None = None  # the final message as the SDK's to_dict(mode="json") gives it
    error: BaseException | None = None
    raw_message: dict[str, Any] | None = None  # mendstream's own dict form
    final: Any = None  # the final message object


def key(event: Any) -> tuple[Any, ...]:
    if event.type == "compaction":
        return ("compaction", event.content, event.encrypted_content)
    return comparable(event)


def request(name: str, betas: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}],
                              "extra_headers": {"x-mendstream-fixture": name}}
    if betas is not None:
        params["betas"] = betas
    return params


def sdk_client(server: ReplayServer, **options: Any) -> Any:
    return anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0, **options)


def async_sdk_client(server: ReplayServer, **options: Any) -> Any:
    return anthropic.AsyncAnthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0, **options)


def sdk_sync(server: ReplayServer, name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    with sdk_client(server) as client:
        messages = client.beta.messages if betas is not None else client.messages
        try:
            with messages.stream(**request(name, betas)) as s:
                for event in s:
                    out.events.append(key(event))
                out.final = s.get_final_message()
                out.message = out.final.to_dict(mode="json")
        except Exception as exc:
            out.error = exc
    return out


async def sdk_async(server: ReplayServer, name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    async with async_sdk_client(server) as client:
        messages = client.beta.messages if betas is not None else client.messages
        try:
            async with messages.stream(**request(name, betas)) as s:
                async for event in s:
                    out.events.append(key(event))
                out.final = await s.get_final_message()
                out.message = out.final.to_dict(mode="json")
        except Exception as exc:
            out.error = exc
    return out


def ours_sync(server: ReplayServer, name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    with sdk_client(server) as client:
        try:
            with mendstream.stream(client, **request(name, betas)) as s:
                for event in s:
                    out.events.append(key(event))
                out.final = s.get_final_message()
                out.message = out.final.to_dict(mode="json")
                out.raw_message = s.message
        except StreamError as exc:
            out.error = exc
    return out


async def ours_async(server: ReplayServer, name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    async with async_sdk_client(server) as client:
        try:
            async with mendstream.astream(client, **request(name, betas)) as s:
                async for event in s:
                    out.events.append(key(event))
                out.final = await s.get_final_message()
                out.message = out.final.to_dict(mode="json")
                out.raw_message = s.message
        except StreamError as exc:
            out.error = exc
    return out


def replay_options(betas: list[str] | None) -> dict[str, Any]:
    # A replay has no request: the partial mode the SDK would pick for one sent with these betas.
    headers = {"anthropic-beta": ",".join(betas)} if betas else {}
    return {"beta": betas is not None, "partial_mode": sdk_partial_mode(headers, beta=betas is not None)}


def ours_replay(name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    try:
        with mendstream.replay(STREAMS[name], **replay_options(betas)) as s:
            for event in s:
                out.events.append(key(event))
            out.final = s.get_final_message()
            out.message = out.final.to_dict(mode="json")
            out.raw_message = s.message
    except StreamError as exc:
        out.error = exc
    return out


async def ours_areplay(name: str, betas: list[str] | None) -> Outcome:
    out = Outcome()
    try:
        async with mendstream.areplay(STREAMS[name], **replay_options(betas)) as s:
            async for event in s:
                out.events.append(key(event))
            out.final = await s.get_final_message()
            out.message = out.final.to_dict(mode="json")
            out.raw_message = s.message
    except StreamError as exc:
        out.error = exc
    return out


VIAS = ["stream", "astream", "replay", "areplay"]


async def both(server: ReplayServer, via: str, name: str, betas: list[str] | None = None) -> tuple[Outcome, Outcome]:
    """(the SDK's outcome, mendstream's) for stream ``name``: the sync SDK for the sync ways, the async one
    for the async ways."""
    if via == "stream":
        return sdk_sync(server, name, betas), ours_sync(server, name, betas)
    if via == "astream":
        return await sdk_async(server, name, betas), await ours_async(server, name, betas)
    if via == "replay":
        return sdk_sync(server, name, betas), ours_replay(name, betas)
    return await sdk_async(server, name, betas), await ours_areplay(name, betas)


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def assert_same(sdk: Outcome, ours: Outcome) -> None:
    assert sdk.error is None, sdk.error
    assert ours.error is None, ours.error
    assert ours.events == sdk.events
    assert without_none(ours.message) == without_none(sdk.message)


# -- 1. a tool block started without `input` ------------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("betas", [None, ["x-beta"]], ids=["messages", "beta"])
@pytest.mark.parametrize("name", ["tool_without_input", "server_tool_without_input", "tool_without_input_no_deltas"])
async def test_a_tool_block_without_input_builds_it_from_the_deltas(
    server: ReplayServer, via: str, betas: list[str] | None, name: str
) -> None:
    sdk, ours = await both(server, via, name, betas)
    assert_same(sdk, ours)
    blocks = [b for b in ours.raw_message["content"] if b["type"] in ("tool_use", "server_tool_use")]
    if name == "tool_without_input":
        assert blocks[0]["input"] == {"city": "Paris", "days": [1, 2]}
    elif name == "server_tool_without_input":
        assert blocks[0]["input"] == {"query": "weather"}
    else:
        assert "input" not in blocks[0]  # no fragment came: the block stays as sent, as in the SDK


def test_a_tool_block_without_input_is_a_recorded_repair() -> None:
    with mendstream.replay(STREAMS["tool_without_input"]) as s:
        s.until_done()
        (repair,) = s.repairs
    assert repair.kind == "tool_input_missing_from_start" and repair.index == 1


# -- 2. every stop reason that may cut a tool input ----------------------------------------------------------


def test_the_stop_reasons_are_the_sdks() -> None:
    from typing import get_args

    from anthropic.types import StopReason
    from anthropic.types.beta import BetaStopReason

    assert set(get_args(StopReason)) | set(get_args(BetaStopReason)) == set(STOP_REASONS)
    assert set(CUTTING) == {"max_tokens", "stop_sequence", "pause_turn", "refusal",
                            "model_context_window_exceeded", "compaction"}
    assert cuts_output("a_stop_reason_from_next_year") and not cuts_output(None)
    assert cuts_output({"not": "hashable"})  # garbage from a gateway is not a reason to lose the input


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("reason", CUTTING)
async def test_a_cut_tool_input_completes_marked_incomplete(server: ReplayServer, via: str, reason: str) -> None:
    sdk, ours = await both(server, via, f"cut_{reason}", ["x-beta"] if reason == "compaction" else None)
    assert_same(sdk, ours)  # the SDK's input is the partial parse; so is ours
    tool = ours.raw_message["content"][1]
    assert tool["input"] == {"city": "Paris"} and tool["input_incomplete"] is True
    final_tool = ours.final.content[1]
    assert final_tool.input_incomplete is True  # an attribute of the SDK's block...
    assert "input_incomplete" not in final_tool.to_dict() and "input_incomplete" not in final_tool.model_dump()
    assert getattr(ours.final.content[0], "input_incomplete", False) is False


@pytest.mark.parametrize("reason", CUTTING)
def test_a_cut_tool_input_keeps_its_raw_text_in_a_repair(reason: str) -> None:
    with mendstream.replay(STREAMS[f"cut_{reason}"]) as s:
        s.until_done()
        (repair,) = s.repairs
    assert repair.kind == "tool_input_cut" and repair.index == 1 and repair.raw == "".join(CUT)
    assert repr(reason) in repair.detail


@pytest.mark.parametrize("reason", sorted(WHOLE_OUTPUT_STOP_REASONS))
@pytest.mark.parametrize("via", VIAS)
async def test_a_cut_tool_input_after_a_whole_output_stop_is_an_error(
    server: ReplayServer, via: str, reason: str
) -> None:
    # The SDK returns the partial input as if it were the model's whole call; the stop reason says the
    # output was whole, so the input is broken: ToolInputError, keeping the raw text and the message.
    sdk, ours = await both(server, via, f"cut_{reason}")
    assert sdk.error is None and sdk.message["content"][1]["input"] == {"city": "Paris"}
    assert isinstance(ours.error, ToolInputError)
    assert ours.error.raw == "".join(CUT) and ours.error.index == 1
    assert ours.error.snapshot["content"][0]["text"] == "Let me check."


def test_the_marker_never_reaches_the_api(server: ReplayServer) -> None:
    """An agent that sends the cut call back (with a tool_result saying so) sends what the API accepts."""
    with sdk_client(server) as client:
        with mendstream.stream(client, **request("cut_max_tokens", None)) as s:
            final = s.get_final_message()
        tool = final.content[1]
        assert tool.input_incomplete
        follow_up = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": final.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "is_error": True,
                                                   "content": "cut short"}]}]
        client.messages.create(model=MODEL, max_tokens=5, messages=follow_up,
                               extra_headers={"x-mendstream-fixture": "plain"}, stream=True).close()
    sent = server.requests[-1].body["messages"][1]["content"][1]
    assert sent == {"type": "tool_use", "id": "toolu_f", "name": "weather", "input": {"city": "Paris"}}


def test_the_marker_survives_copies_and_the_stop_event_when_the_stop_reason_came_first() -> None:
    data = STREAMS["cut_refusal"]
    with mendstream.replay(data, sdk_events=True) as s:
        stops = [e for e in s if e.type == "content_block_stop"]
        final = s.get_final_message()
    # One chunk: the stop reason was known before the events were made, so the block's stop shows it too.
    assert stops[1].content_block.input_incomplete is True
    assert copy.deepcopy(final).content[1].input_incomplete is True
    assert pickle.loads(pickle.dumps(final)).content[1].to_dict() == final.content[1].to_dict()


# -- 3 is in test_pause.py --------------------------------------------------------------------------------------


# -- 4, 5. fallback and compaction (beta) ------------------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
async def test_model_fallback_sets_the_model(server: ReplayServer, via: str) -> None:
    sdk, ours = await both(server, via, "fallback", ["x-beta"])
    assert_same(sdk, ours)
    assert ours.message["model"] == "claude-fallback"


@pytest.mark.filterwarnings("ignore::UserWarning")  # the standard SDK's to_dict() warns on a fallback block
async def test_model_fallback_without_betas_follows_the_beta_sdk(server: ReplayServer) -> None:
    # The standard helper ignores fallback blocks (the model stays the requested one); the fallback model is
    # what served the response, so mendstream follows the beta helper whatever the endpoint.
    sdk, ours = await both(server, "stream", "fallback")
    assert sdk.message["model"] == MODEL and ours.message["model"] == "claude-fallback"


@pytest.mark.parametrize("via", VIAS)
async def test_compaction_events_follow_each_compaction_delta(server: ReplayServer, via: str) -> None:
    sdk, ours = await both(server, via, "compaction", ["x-beta"])
    assert_same(sdk, ours)
    assert [e for e in ours.events if e[0] == "compaction"] == [
        ("compaction", "Earlier: the user asked about Paris.", None),
        ("compaction", "Earlier: the user asked about Paris and Rome.", "enc-1"),
    ]


def test_compaction_events_as_the_sdks_own() -> None:
    from anthropic.lib.streaming._beta_types import BetaCompactionEvent

    with mendstream.replay(STREAMS["compaction"], sdk_events=True, beta=True) as s:
        events = [e for e in s if e.type == "compaction"]
    assert all(isinstance(e, BetaCompactionEvent) for e in events) and events[1].encrypted_content == "enc-1"


# -- 6. fine-grained tool streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    "betas", [None, ["x-beta"], [FINE_GRAINED_TOOL_STREAMING], ["x-beta", FINE_GRAINED_TOOL_STREAMING]],
    ids=["messages", "beta", "fine-grained", "fine-grained-among-others"],
)
async def test_input_json_snapshots_follow_the_fine_grained_beta(
    server: ReplayServer, via: str, betas: list[str] | None
) -> None:
    sdk, ours = await both(server, via, "string_in_pieces", betas)
    assert_same(sdk, ours)
    snapshots = [e[2] for e in ours.events if e[0] == "input_json"]
    fine = betas is not None and FINE_GRAINED_TOOL_STREAMING in betas
    assert snapshots[0] == ({"city": "Pa"} if fine else {})


def test_the_fine_grained_header_alone_switches_only_the_beta_helper(server: ReplayServer) -> None:
    # The SDK decides from the request's anthropic-beta header as sent (extra_headers win over betas=), and
    # only in its beta helper.
    for betas, expect in ((None, {}), (["x-beta"], {"city": "Pa"})):
        params = request("string_in_pieces", betas)
        params["extra_headers"]["anthropic-beta"] = FINE_GRAINED_TOOL_STREAMING
        with sdk_client(server) as client:
            messages = client.beta.messages if betas else client.messages
            with messages.stream(**params) as s:
                theirs = [e.snapshot for e in s if e.type == "input_json"]
            with mendstream.stream(client, **params) as s:
                ours = [e.snapshot for e in s if e.type == "input_json"]
        assert server.requests[-1].headers["anthropic-beta"] == FINE_GRAINED_TOOL_STREAMING
        assert ours == theirs and ours[0] == expect


def test_an_explicit_parser_keeps_its_partial_mode(server: ReplayServer) -> None:
    with sdk_client(server) as client, mendstream.stream(
        client, parser=mendstream.MessageParser(partial_mode="on"),
        **request("string_in_pieces", [FINE_GRAINED_TOOL_STREAMING]),
    ) as s:
        snapshots = [e.snapshot for e in s if e.type == "input_json"]
    assert snapshots[0] == {}


# -- 7. a dropped connection -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cutting_server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES, select="header", faults=Cut(after_events=4)) as srv:
        yield srv


def test_a_dropped_connection_is_the_sdks_connection_error(cutting_server: ReplayServer) -> None:
    with sdk_client(cutting_server) as client:
        with pytest.raises(anthropic.APIConnectionError) as theirs, client.messages.stream(
            **request("plain", None)
        ) as s:
            s.until_done()
        with pytest.raises(IncompleteStreamError) as ours, mendstream.stream(client, **request("plain", None)) as s:
            s.until_done()
    err = ours.value
    assert isinstance(err, anthropic.APIConnectionError) and not isinstance(err, anthropic.APITimeoutError)
    assert str(err) == str(theirs.value) == err.message
    assert err.request is s.response.request
    assert err.snapshot["content"][0]["text"] == "One two "  # what arrived is kept
    assert err.transport_error is not None and err.__cause__ is err.transport_error
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and isinstance(again, IncompleteStreamError)


async def test_a_dropped_connection_is_the_sdks_connection_error_async(cutting_server: ReplayServer) -> None:
    async with async_sdk_client(cutting_server) as client:
        with pytest.raises(anthropic.APIConnectionError) as theirs:
            async with client.messages.stream(**request("plain", None)) as s:
                await s.until_done()
        with pytest.raises(IncompleteStreamError) as ours:
            async with mendstream.astream(client, **request("plain", None)) as s:
                await s.until_done()
    assert isinstance(ours.value, anthropic.APIConnectionError)
    assert str(ours.value) == str(theirs.value)


def test_a_read_timeout_mid_body_is_the_sdks_timeout_error() -> None:
    with ReplayServer(FIXTURES, select="header", faults=Stall(3.0, after_events=5)) as srv, sdk_client(
        srv, timeout=httpx2.Timeout(5.0, read=0.3)
    ) as client:
        with pytest.raises(anthropic.APITimeoutError) as theirs, client.messages.stream(**request("plain", None)) as s:
            s.until_done()
        with pytest.raises(IncompleteStreamError) as ours, mendstream.stream(client, **request("plain", None)) as s:
            s.until_done()
    assert isinstance(ours.value, anthropic.APITimeoutError)
    assert str(ours.value) == str(theirs.value)


def test_a_clean_end_before_message_stop_stays_incomplete_stream_error() -> None:
    # No transport failure (the server ended the body): the SDK returns the truncated message; mendstream
    # raises IncompleteStreamError, which is then not an APIConnectionError.
    head = STREAMS["plain"][: STREAMS["plain"].index(b"event: content_block_stop")]
    with ReplayServer({"cut": head}) as srv, sdk_client(srv) as client, pytest.raises(
        IncompleteStreamError
    ) as ours, mendstream.stream(client, **request("cut", None)) as s:
        s.until_done()
    assert not isinstance(ours.value, anthropic.APIConnectionError)


# -- 8. the snapshot, workspace_id, message_delta resets, text: null, mid-stream error text ----------------------


@pytest.mark.parametrize("via", ["stream", "replay"])
def test_current_message_snapshot_keeps_updating_like_the_sdks(server: ReplayServer, via: str) -> None:
    def watch(s: Any) -> list[Any]:
        seen, snapshot = [], None
        for _event in s:
            if snapshot is None:
                snapshot = s.current_message_snapshot
            assert s.current_message_snapshot is snapshot  # one object, as in the SDK
            seen.append(json.dumps(snapshot.to_dict(mode="json"), sort_keys=True))
        return [json.loads(x) for x in seen]

    with sdk_client(server) as client:
        with client.messages.stream(**request("plain", None)) as s:
            theirs = watch(s)
        if via == "stream":
            with mendstream.stream(client, **request("plain", None)) as s:
                ours = watch(s)
        else:  # one event per chunk, as the server sends them: the snapshot holds all a chunk brought
            with mendstream.replay(split_events(STREAMS["plain"])) as s:
                ours = watch(s)
    assert [without_none(m) for m in ours] == [without_none(m) for m in theirs]


def test_the_live_snapshot_updates_objects_taken_from_it() -> None:
    with mendstream.replay(split_events(STREAMS["plain"])) as s:
        events = iter(s)
        while next(events).type != "text":
            pass
        snapshot = s.current_message_snapshot
        text_block, content = snapshot.content[0], snapshot.content
        assert text_block.text == "One "
        s.until_done()
        assert snapshot.stop_reason == "tool_use"  # reading a field refreshes the object in place
        assert text_block.text == "One two three." and content is snapshot.content and len(content) == 2
        assert isinstance(snapshot, anthropic.types.Message)
        assert snapshot == s.get_final_message() and repr(snapshot) == repr(s.get_final_message())
        frozen = copy.copy(snapshot)
        assert type(frozen) is anthropic.types.Message


@pytest.mark.parametrize("via", ["stream", "astream"])
async def test_workspace_id_is_the_header(server: ReplayServer, via: str) -> None:
    if via == "stream":
        with sdk_client(server) as client:
            with client.messages.stream(**request("plain", None)) as s:
                theirs = s.workspace_id
            with mendstream.stream(client, **request("plain", None)) as s:
                ours = s.workspace_id
    else:
        async with async_sdk_client(server) as client:
            async with client.messages.stream(**request("plain", None)) as s:
                theirs = s.workspace_id
            async with mendstream.astream(client, **request("plain", None)) as s:
                ours = s.workspace_id
    assert ours == theirs == WORKSPACE
    assert mendstream.replay(STREAMS["plain"]).workspace_id is None


@pytest.mark.parametrize("via", VIAS)
async def test_a_message_delta_reporting_the_stop_resets_what_it_leaves_out(server: ReplayServer, via: str) -> None:
    sdk, ours = await both(server, via, "stop_details_reset")
    assert_same(sdk, ours)
    assert ours.message["stop_reason"] == "end_turn"
    assert ours.message.get("stop_sequence") is None and ours.message.get("stop_details") is None


@pytest.mark.parametrize("via", VIAS)
async def test_a_usage_only_message_delta_keeps_the_stop(server: ReplayServer, via: str) -> None:
    # Where mendstream keeps more: the SDK nulls stop_reason and stop_sequence on a message_delta without them.
    sdk, ours = await both(server, via, "usage_only_delta")
    assert sdk.message["stop_reason"] is None and sdk.message["stop_sequence"] is None
    assert ours.message["stop_reason"] == "stop_sequence" and ours.message["stop_sequence"] == "##"
    assert ours.message["usage"]["output_tokens"] == sdk.message["usage"]["output_tokens"] == 11


@pytest.mark.parametrize("via", VIAS)
async def test_a_text_block_started_with_null_text_keeps_its_text(server: ReplayServer, via: str) -> None:
    sdk, ours = await both(server, via, "text_null")
    assert isinstance(sdk.error, TypeError)  # the SDK cannot add to None: it has no answer here
    assert ours.error is None and ours.message["content"] == [{"type": "text", "text": "Kept text."}]
    assert [e for e in ours.events if e[0] == "text"] == [("text", "Kept", "Kept"), ("text", " text.", "Kept text.")]


def test_null_text_is_a_recorded_repair() -> None:
    with mendstream.replay(STREAMS["text_null"]) as s:
        s.until_done()
        assert [(r.kind, r.index) for r in s.repairs] == [("null_text_in_start", 0)]


ERROR_BODY = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_body"}
ERROR_STREAM = STREAMS["plain"][: STREAMS["plain"].index(b"event: content_block_stop")] + (
    b"event: error\ndata: " + json.dumps(ERROR_BODY).encode() + b"\n\n"
)


@pytest.mark.parametrize("header", [True, False], ids=["request-id-header", "body-only"])
def test_mid_stream_error_text_and_request_id_as_the_sdk(header: bool) -> None:
    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", **({"request-id": "req_header"} if header else {})}
        return httpx2.Response(200, headers=headers, content=ERROR_STREAM)

    client = anthropic.Anthropic(api_key="k", base_url="http://fidelity.test", max_retries=0,
                                 http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with client:
        with pytest.raises(anthropic.APIStatusError) as theirs, client.messages.stream(**request("x", None)) as s:
            s.until_done()
        with pytest.raises(APIStreamError) as ours, mendstream.stream(client, **request("x", None)) as s:
            s.until_done()
    assert str(ours.value) == str(theirs.value) and ours.value.message == theirs.value.message
    # The header first, as the SDK; without one the SDK's attribute is None (its text names the body's id),
    # mendstream's is the body's.
    assert theirs.value.request_id == ("req_header" if header else None)
    assert ours.value.request_id == ("req_header" if header else "req_body")
    assert isinstance(ours.value, anthropic.OverloadedError)  # mendstream picks the class by the error's type


async def test_mid_stream_error_text_as_the_sdk_async() -> None:
    with ReplayServer({"e": ERROR_STREAM}) as srv:
        async with async_sdk_client(srv) as client:
            with pytest.raises(anthropic.APIStatusError) as theirs:
                async with client.messages.stream(**request("e", None)) as s:
                    await s.until_done()
            with pytest.raises(APIStreamError) as ours:
                async with mendstream.astream(client, **request("e", None)) as s:
                    await s.until_done()
    # (the replay server numbers its requests: each got its own id)
    assert ours.value.request_id.startswith("req_replay_e") and ours.value.request_id != theirs.value.request_id
    assert str(ours.value).replace(ours.value.request_id, theirs.value.request_id) == str(theirs.value)


# -- everything else: the same events and message as the SDK ---------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("betas", [None, ["x-beta"]], ids=["messages", "beta"])
async def test_an_ordinary_stream_is_the_sdks(server: ReplayServer, via: str, betas: list[str] | None) -> None:
    sdk, ours = await both(server, via, "plain", betas)
    assert_same(sdk, ours)


# -- the new shapes are split-invariant, and read alike without content and through the rewriter -------------


def parse(chunks: list[bytes], **options: Any) -> tuple[dict[str, Any] | None, list[tuple[str, int | None]], str]:
    parser = mendstream.MessageParser(**options)
    _events, error = feed_all(parser, chunks)
    return (parser.message if error is None else None, [(r.kind, r.index) for r in parser.repairs],
            type(error).__name__ if error is not None else "")


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(STREAMS)), points=st.lists(st.integers(min_value=0), max_size=25))
def test_the_new_shapes_are_read_alike_however_split(name: str, points: list[int]) -> None:
    data = STREAMS[name]
    assert parse(split_at(data, points)) == parse([data])


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_new_shapes_byte_by_byte_and_without_content(name: str) -> None:
    data = STREAMS[name]
    whole = parse([data])
    assert parse([data[i : i + 1] for i in range(len(data))]) == whole
    lean = parse([data], keep_content=False)
    assert lean[1:] == whole[1:]  # the same repairs and errors
    if whole[0] is not None:
        marks = [b.get("input_incomplete") for b in whole[0]["content"]]
        assert [b.get("input_incomplete") for b in lean[0]["content"]] == marks
        assert lean[0]["stop_reason"] == whole[0]["stop_reason"] and lean[0]["model"] == whole[0]["model"]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_rewriter_passes_the_new_shapes_to_the_sdk(name: str) -> None:
    from mendstream.wire.rewrite import ResponseRewriter

    data = b"\xef\xbb\xbf" + STREAMS[name]  # a BOM: the rewriter re-encodes the whole chunk
    rewriter = ResponseRewriter()
    out = rewriter.feed(data) + rewriter.end()
    with mendstream.replay(STREAMS[name], beta=True) as s:
        try:
            expected: dict[str, Any] | None = s.get_final_message().to_dict(mode="json")
        except StreamError:
            expected = None
    try:
        with mendstream.replay(out, beta=True) as s:
            got: dict[str, Any] | None = s.get_final_message().to_dict(mode="json")
    except StreamError:
        got = None
    assert got == expected
