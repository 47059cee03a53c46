"""Issue 19 §3: resuming a paused turn (stop_reason "pause_turn") within one stream: mendstream.streaming.pause
and ``resume_pause_turn=N`` on the streams.

The first half drives PauseResumer with a small loop of its own (the sans-IO reference); the second half runs
``mendstream.stream`` / ``astream`` / ``mendstream.httpx`` with ``resume_pause_turn`` over the real SDK client
and the replay server, and the stream machine directly with a fake clock. Everything is checked against the
API's documented way to resume, done by hand with the SDK: append the paused assistant content and send again.
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import pytest

import mendstream
import mendstream.httpx
from mendstream import APIStreamError, IncompleteStreamError, MessageParser, MessageStream, RestartEvent, Retry
from mendstream.errors import UsageError
from mendstream.recording.fixtures import Fixture
from mendstream.streaming.drivers import Opened
from mendstream.streaming.machine import EventPresenter, Fail, Finish, Open, Sleep, StreamMachine, parser_factory
from mendstream.streaming.pause import PauseResumer, continuation_request, stitch_messages, sum_usage
from mendstream.testing import ReplayServer
from mendstream.testing.faults import Cut, ErrorEvent, HTTPError, PlannedResponse, Schedule, body_of, continuation_body
from sdk_reference import comparable
from streams import sse

anthropic = pytest.importorskip("anthropic")

PARAMS: dict[str, Any] = {
    "model": "claude-test", "max_tokens": 256, "messages": [{"role": "user", "content": "weather in Paris?"}],
    "tools": [{"type": "web_search_20250305", "name": "web_search"}],
}
CONTAINER = {"id": "container_p1", "expires_at": "2026-12-01T00:00:00Z"}


def start(msg_id: str, input_tokens: int) -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": "claude-test", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}


def search_call(index: int, query: str, call_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index,
         "content_block": {"type": "server_tool_use", "id": call_id, "name": "web_search", "input": {}}},
        {"type": "content_block_delta", "index": index,
         "delta": {"type": "input_json_delta", "partial_json": f'{{"query": "{query}"}}'}},
        {"type": "content_block_stop", "index": index},
    ]


def text(index: int, *parts: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}} for p in parts),
        {"type": "content_block_stop", "index": index},
    ]


def result(index: int, call_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {
            "type": "web_search_tool_result", "tool_use_id": call_id,
            "content": [{"type": "web_search_result", "title": "Paris", "url": "https://example.com/paris",
                         "encrypted_content": "e1", "page_age": None}]}},
        {"type": "content_block_stop", "index": index},
    ]


def paused(msg_id: str, input_tokens: int, call_id: str) -> bytes:
    events = [
        start(msg_id, input_tokens), *text(0, "Let me ", "search."), *search_call(1, "paris weather", call_id),
        {"type": "message_delta", "delta": {"stop_reason": "pause_turn", "stop_sequence": None, "container": CONTAINER},
         "usage": {"output_tokens": 20, "server_tool_use": {"web_search_requests": 1}}},
        {"type": "message_stop"},
    ]
    return b"".join(sse(e) for e in events)


FINAL = b"".join(sse(e) for e in [
    start("msg_p2", 900), *result(0, "srvtoolu_1"), *text(1, "It is ", "sunny."),
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 12, "server_tool_use": {"web_search_requests": 0}}},
    {"type": "message_stop"},
])
PAUSED = paused("msg_p1", 400, "srvtoolu_1")


def client_for(server: ReplayServer) -> Any:
    return anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)


# -- a minimal driver: what the stream machine will do, sync and async -----------------------------------------


def run_turn(client: Any, params: dict[str, Any], max_continuations: int) -> tuple[list[Any], dict[str, Any], Any]:
    resumer = PauseResumer(params, max_continuations=max_continuations)
    request: dict[str, Any] | None = params
    shown: list[Any] = []
    while request is not None:
        parser = MessageParser()
        with client.messages.with_streaming_response.create(**request, stream=True) as response:
            for chunk in response.iter_bytes():
                shown += resumer.events(parser.feed(chunk))
        shown += resumer.events(parser.end())
        request = resumer.next_request(parser.message)
    return shown, resumer.message(parser.message), resumer


async def arun_turn(client: Any, params: dict[str, Any], max_continuations: int) -> tuple[list[Any], dict[str, Any]]:
    resumer = PauseResumer(params, max_continuations=max_continuations)
    request: dict[str, Any] | None = params
    shown: list[Any] = []
    while request is not None:
        parser = MessageParser()
        async with client.messages.with_streaming_response.create(**request, stream=True) as response:
            async for chunk in response.iter_bytes():
                shown += resumer.events(parser.feed(chunk))
        shown += resumer.events(parser.end())
        request = resumer.next_request(parser.message)
    return shown, resumer.message(parser.message)


def by_hand(client: Any) -> tuple[list[Any], list[Any], Any, Any]:
    """The documented way, with the SDK's own helper: the paused response, then the request again with the
    paused assistant content appended (`{"role": "assistant", "content": response.content}`)."""
    with client.messages.stream(**PARAMS) as s:
        first_events = list(s)
        first = s.get_final_message()
    follow = {**PARAMS, "messages": [*PARAMS["messages"], {"role": "assistant", "content": first.content}],
              "container": first.container.id}
    with client.messages.stream(**follow) as s:
        second_events = list(s)
        second = s.get_final_message()
    return first_events, second_events, first, second


def expected_view(first_events: list[Any], second_events: list[Any], offset: int) -> list[tuple[Any, ...]]:
    """What one stream of the whole turn shows: the first request's events up to its stop, then the
    continuation's without its message_start, block indexes continued."""
    out = [comparable(e) for e in first_events if e.type not in ("message_delta", "message_stop")]
    for event in second_events:
        if event.type == "message_start":
            continue
        item = comparable(event)
        if event.type in ("content_block_start", "content_block_delta", "content_block_stop"):
            item = (item[0], item[1] + offset)
        out.append(item)
    return out


def test_one_stream_for_the_turn_equals_resuming_by_hand() -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server, client_for(server) as client:
        first_events, second_events, first, second = by_hand(client)
        documented = [r.body for r in list(server.requests)[-2:]]
        server.reset()
        server.selector.reset()
        shown, message, resumer = run_turn(client, PARAMS, max_continuations=3)
        sent = [r.body for r in list(server.requests)[-2:]]
    # The continuation request is the documented one, byte for byte in meaning.
    assert sent == documented
    assert sent[1]["messages"][-1] == {"role": "assistant", "content": first.to_dict(mode="json")["content"]}
    assert sent[1]["container"] == "container_p1"
    # One stream: one message_start, indexes that continue, one stop.
    assert [comparable(e) for e in shown] == expected_view(first_events, second_events, offset=len(first.content))
    assert [e.type for e in shown].count("message_start") == 1
    assert [e.type for e in shown].count("message_stop") == 1
    # The stitched message: both contents, the last stop, the usage summed, the first id.
    assert message["id"] == "msg_p1" and message["stop_reason"] == "end_turn"
    assert message["content"] == first.to_dict(mode="json")["content"] + second.to_dict(mode="json")["content"]
    assert message["usage"] == {"input_tokens": 1300, "output_tokens": 32, "server_tool_use": {"web_search_requests": 1}}
    assert message["container"] == CONTAINER
    stop_event = shown[-1]
    assert stop_event.type == "message_stop" and stop_event.message.to_dict() == message
    delta_event = shown[-2]
    assert delta_event.type == "message_delta" and delta_event.usage["output_tokens"] == 32
    assert resumer.continuations == 1


async def test_one_stream_for_the_turn_async() -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server:
        async with anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0) as client:
            shown, message = await arun_turn(client, PARAMS, max_continuations=1)
    assert [e.type for e in shown].count("message_start") == 1
    assert [b["type"] for b in message["content"]] == ["text", "server_tool_use", "web_search_tool_result", "text"]
    assert message["stop_reason"] == "end_turn"


def test_a_turn_still_paused_after_the_continuations_ends_paused() -> None:
    streams = {"a": PAUSED, "b": paused("msg_p2", 500, "srvtoolu_2"), "c": FINAL}
    with ReplayServer(streams, select="order") as server, client_for(server) as client:
        shown, message, resumer = run_turn(client, PARAMS, max_continuations=1)
        assert len(server.requests) == 2
    assert message["stop_reason"] == "pause_turn"  # nothing lost: the caller may resume it
    assert [b["type"] for b in message["content"]] == ["text", "server_tool_use", "text", "server_tool_use"]
    assert [e.index for e in shown if e.type == "content_block_start"] == [0, 1, 2, 3]
    assert shown[-1].type == "message_stop" and shown[-1].message.to_dict() == message
    # The second continuation request would carry both paused contents in one assistant message.
    again = continuation_request(resumer.request, message | {"content": message["content"][2:]})
    assert [m["role"] for m in again["messages"]] == ["user", "assistant"]
    assert len(again["messages"][1]["content"]) == 4


def test_max_continuations_zero_passes_the_pause_through() -> None:
    resumer = PauseResumer(PARAMS, max_continuations=0)
    parser = MessageParser()
    shown = resumer.events(parser.feed(PAUSED)) + resumer.events(parser.end())
    assert [e.type for e in shown][-2:] == ["message_delta", "message_stop"]
    assert resumer.next_request(parser.message) is None and resumer.withheld() == []


def test_a_failed_continuation_leaves_the_turn_so_far_for_the_snapshot() -> None:
    resumer = PauseResumer(PARAMS, max_continuations=2)
    parser = MessageParser()
    shown = resumer.events(parser.feed(PAUSED)) + resumer.events(parser.end())
    assert "message_stop" not in [e.type for e in shown]
    assert resumer.next_request(parser.message) is not None
    # The continuation's connection failed after its message_start: what the driver can still give.
    second = MessageParser()
    resumer.events(second.feed(FINAL[: FINAL.index(b"event: content_block_start")]))
    assert resumer.message(second.message)["content"] == parser.message["content"]
    assert resumer.message(second.message)["usage"]["input_tokens"] == 1300


def test_a_failed_first_continuation_has_the_withheld_stop() -> None:
    resumer = PauseResumer(PARAMS, max_continuations=2)
    parser = MessageParser()
    resumer.events(parser.feed(PAUSED) + parser.end())
    held = resumer.withheld()
    assert [e.type for e in held] == ["message_delta", "message_stop"]
    assert held[1].message.to_dict() == parser.message


# -- continuation_request, stitch_messages, sum_usage -----------------------------------------------------------


def paused_message(**fields: Any) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(PAUSED)
    parser.end()
    return {**parser.message, **fields}


def test_the_continuation_request_leaves_its_inputs_alone() -> None:
    params = copy.deepcopy(PARAMS)
    message = paused_message()
    before = copy.deepcopy((params, message))
    out = continuation_request(params, message)
    assert (params, message) == before
    assert out["messages"][:-1] == params["messages"] and out["tools"] == params["tools"]
    out["messages"][-1]["content"][0]["text"] = "changed"
    assert message["content"][0]["text"] == "Let me search."


@pytest.mark.parametrize("prefill", ["I will", [{"type": "text", "text": "I will"}]])
def test_a_prefill_and_the_paused_content_are_one_assistant_message(prefill: Any) -> None:
    params = {**PARAMS, "messages": [*PARAMS["messages"], {"role": "assistant", "content": prefill}]}
    out = continuation_request(params, paused_message())
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert out["messages"][1]["content"][0] == {"type": "text", "text": "I will"}
    assert [b["type"] for b in out["messages"][1]["content"]] == ["text", "text", "server_tool_use"]


def test_markers_and_empty_text_blocks_are_not_sent() -> None:
    message = paused_message()
    message["content"] = [{"type": "text", "text": ""}, {**message["content"][1], "input_incomplete": True}]
    out = continuation_request(PARAMS, message)
    assert out["messages"][-1]["content"] == [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                                               "input": {"query": "paris weather"}}]


def test_a_container_named_by_the_request_stays() -> None:
    out = continuation_request({**PARAMS, "container": "mine"}, paused_message())
    assert out["container"] == "mine"
    assert "container" not in continuation_request(PARAMS, paused_message(container=None))


@pytest.mark.parametrize("bad", [{"stop_reason": "end_turn", "content": []}, {"content": []}])
def test_only_a_paused_message_is_resumed(bad: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="pause_turn"):
        continuation_request(PARAMS, bad)
    with pytest.raises(UsageError, match="messages"):
        continuation_request({"model": "m"}, paused_message())


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_max_continuations_is_checked(bad: Any) -> None:
    with pytest.raises(UsageError, match="max_continuations"):
        PauseResumer(PARAMS, max_continuations=bad)


def test_stitching_keeps_the_first_id_and_the_last_stop() -> None:
    first = {"id": "a", "type": "message", "role": "assistant", "model": "m1", "content": [{"type": "text", "text": "x"}],
             "stop_reason": "pause_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2}}
    later = {"id": "b", "type": "message", "role": "assistant", "model": "m2", "content": [{"type": "text", "text": "y"}],
             "stop_reason": "end_turn", "stop_sequence": None, "stop_details": None,
             "usage": {"input_tokens": 3, "output_tokens": 4, "service_tier": "standard"}}
    out = stitch_messages(first, later)
    assert out == {"id": "a", "type": "message", "role": "assistant", "model": "m2",
                   "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
                   "stop_reason": "end_turn", "stop_sequence": None, "stop_details": None,
                   "usage": {"input_tokens": 4, "output_tokens": 6, "service_tier": "standard"}}
    assert stitch_messages(first) == first and stitch_messages(first) is not first


def test_usage_sums_numbers_and_nested_counts() -> None:
    total = sum_usage({"input_tokens": 1, "cache_creation": {"ephemeral_5m_input_tokens": 2}, "flag": True},
                      {"input_tokens": 2, "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 1},
                       "flag": False, "service_tier": "priority", "cache_read_input_tokens": None})
    assert total == {"input_tokens": 3, "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 1},
                     "flag": True, "service_tier": "priority", "cache_read_input_tokens": None}
    assert sum_usage({}, None) == {}


# -- resume_pause_turn=N: the stream resumes the turn itself ---------------------------------------------------


def message_of(body: bytes) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(body)
    parser.end()
    return parser.message


def bodies(server: ReplayServer) -> list[Any]:
    return [r.body for r in server.requests]


def block_indexes(events: list[Any]) -> list[int]:
    return [e.index for e in events if e.type == "content_block_start"]


def check_one_stream(events: list[Any]) -> None:
    """One message_start, block indexes from 0 without a gap (each started once, deltas and stops in range),
    one message_delta and one message_stop, last."""
    types = [e.type for e in events]
    assert types.count("message_start") == 1 and types[0] == "message_start"
    assert types.count("message_delta") == 1 and types.count("message_stop") == 1 and types[-1] == "message_stop"
    starts = block_indexes(events)
    assert starts == list(range(len(starts)))
    assert all(e.index < len(starts) for e in events if e.type in ("content_block_delta", "content_block_stop"))


STITCHED = stitch_messages(message_of(PAUSED), message_of(FINAL))
# The turn's two answers chosen by the request (a continuation names the paused container), not by order: a
# restarted turn sends its first request again and must get the paused answer again.
BY_REQUEST = {"resumed": Fixture("resumed", FINAL, match={"container": "container_p1"}),
              "paused": Fixture("paused", PAUSED, match={"model": "claude-test"})}


# Without stall timeouts the driver reads in its inline loop; with them, under the stall clocks (generous
# ones: nothing here waits).
READ_PATHS = [{}, {"retry": Retry(), "idle_timeout": 60, "progress_timeout": 120}]


@pytest.mark.parametrize("options", READ_PATHS)
def test_stream_resumes_the_turn_as_one_stream_equal_to_resuming_by_hand(options: dict[str, Any]) -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server, client_for(server) as client:
        first_events, second_events, first, second = by_hand(client)
        server.reset()
        server.selector.reset()
        with mendstream.stream(client, resume_pause_turn=3, **options, **PARAMS) as stream:
            events = list(stream)
            final = stream.get_final_message()
            snapshot = stream.current_message_snapshot
        sent = bodies(server)
    # The second request is the documented continuation of the first, built from the paused message.
    assert len(sent) == 2
    assert sent[1] == continuation_request(sent[0], message_of(PAUSED))
    assert sent[1]["messages"][-1] == {"role": "assistant", "content": first.to_dict(mode="json")["content"]}
    # One stream: the events of resuming by hand, without the pause's stop and the continuation's start.
    check_one_stream(events)
    assert [comparable(e) for e in events] == expected_view(first_events, second_events, offset=2)
    # The final message is the stitched turn, as by hand: both contents, the last stop, usage summed.
    message = final.to_dict(mode="json")
    assert message == STITCHED
    plain = {"mode": "json", "exclude_none": True}  # (the SDK's second message says stop_details: null)
    assert final.to_dict(**plain) == stitch_messages(first.to_dict(**plain), second.to_dict(**plain))
    assert message["usage"] == {"input_tokens": 1300, "output_tokens": 32,
                                "server_tool_use": {"web_search_requests": 1}}
    assert events[-2].usage.to_dict() == message["usage"] and events[-1].message.to_dict() == message
    assert snapshot.to_dict(mode="json") == message and stream.message == message
    assert stream.get_final_text() == "Let me search.It is sunny."
    assert [(a.mode, a.error) for a in stream.attempts] == [("first", None), ("resume", None)]
    assert [a.events_delivered for a in stream.attempts] == [11, 10]
    assert stream.repairs == []


@pytest.mark.parametrize("options", READ_PATHS)
async def test_astream_resumes_the_turn_as_one_stream(options: dict[str, Any]) -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server:
        client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0)
        async with client, mendstream.astream(client, resume_pause_turn=1, **options, **PARAMS) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
        sent = bodies(server)
    assert sent[1] == continuation_request(sent[0], message_of(PAUSED))
    check_one_stream(events)
    assert final.to_dict(mode="json") == STITCHED
    assert [a.mode for a in stream.attempts] == ["first", "resume"]


def test_sdk_events_show_the_stitched_turn() -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server, client_for(server) as client:
        first_events, second_events, _, _ = by_hand(client)
        server.reset()
        server.selector.reset()
        with mendstream.stream(client, resume_pause_turn=1, sdk_events=True, **PARAMS) as stream:
            events = list(stream)
            final = stream.get_final_message()
    assert all(type(e).__module__.startswith("anthropic.") for e in events)
    check_one_stream(events)
    assert [comparable(e) for e in events] == expected_view(first_events, second_events, offset=2)
    assert events[-2].usage.input_tokens == 1300 and events[-2].delta.stop_reason == "end_turn"
    assert events[-1].message.to_dict(mode="json") == final.to_dict(mode="json") == STITCHED


def test_httpx_transport_resumes_the_turn() -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server:
        with mendstream.httpx.stream(PARAMS, base_url=server.base_url, api_key="k", resume_pause_turn=1) as stream:
            events = list(stream)
        sent = bodies(server)
    assert sent[1] == continuation_request(sent[0], message_of(PAUSED)) and sent[1]["stream"] is True
    check_one_stream(events)
    assert stream.message == STITCHED


async def test_httpx_astream_resumes_the_turn() -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server:
        async with mendstream.httpx.astream(PARAMS, base_url=server.base_url, api_key="k",
                                            resume_pause_turn=1) as stream:
            events = [event async for event in stream]
    check_one_stream(events)
    assert stream.message == STITCHED


MODES = ["sync", "async"]


def read_turn(server: ReplayServer, mode: str, **options: Any) -> tuple[Any, list[Any], BaseException | None]:
    """Read a turn with ``mendstream.stream`` (sync) or ``astream`` (async) over the SDK client: the stream,
    the events it gave, and the error it raised while iterating (None: it ended)."""
    events: list[Any] = []
    if mode == "sync":
        with client_for(server) as client, mendstream.stream(client, **options, **PARAMS) as stream:
            try:
                for event in stream:
                    events.append(event)
            except Exception as exc:
                return stream, events, exc
        return stream, events, None

    async def main() -> tuple[Any, list[Any], BaseException | None]:
        client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0)
        async with client, mendstream.astream(client, **options, **PARAMS) as stream:
            try:
                async for event in stream:
                    events.append(event)
            except Exception as exc:
                return stream, events, exc
        return stream, events, None

    return asyncio.run(main())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("option", [{}, {"resume_pause_turn": 0}])
def test_off_passes_the_pause_through(option: dict[str, Any], mode: str) -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order") as server:
        stream, events, error = read_turn(server, mode, **option)
        assert len(server.requests) == 1
    assert error is None
    assert [comparable(e) for e in events] == [comparable(e) for e in mendstream.replay(PAUSED)]
    assert stream.message["stop_reason"] == "pause_turn" and stream.message == message_of(PAUSED)
    assert [a.mode for a in stream.attempts] == ["first"]
    presenter = stream._run.presenter
    assert presenter.pause is None and presenter.transparent  # no rewriting per chunk when off


@pytest.mark.parametrize("mode", MODES)
def test_a_turn_still_paused_after_n_continuations_ends_paused_with_everything(mode: str) -> None:
    second = paused("msg_p2", 500, "srvtoolu_2")
    with ReplayServer({"a": PAUSED, "b": second, "c": FINAL}, select="order") as server:
        stream, events, error = read_turn(server, mode, resume_pause_turn=1)
        assert len(server.requests) == 2
    assert error is None
    check_one_stream(events)
    final = stream.message
    assert final == stitch_messages(message_of(PAUSED), message_of(second))
    assert final["stop_reason"] == "pause_turn"  # nothing lost: the caller may resume it
    assert [b["type"] for b in final["content"]] == ["text", "server_tool_use", "text", "server_tool_use"]
    assert events[-2].delta["stop_reason"] == "pause_turn" and events[-2].usage["input_tokens"] == 900
    assert [a.mode for a in stream.attempts] == ["first", "resume"]


def test_each_continuation_appends_to_the_one_assistant_message() -> None:
    second = paused("msg_p2", 500, "srvtoolu_2")
    with ReplayServer({"a": PAUSED, "b": second, "c": FINAL}, select="order") as server:
        stream, events, error = read_turn(server, "sync", resume_pause_turn=5)
        sent = bodies(server)
    assert error is None and len(sent) == 3
    assert sent[2] == continuation_request(sent[1], message_of(second))
    assert [m["role"] for m in sent[2]["messages"]] == ["user", "assistant"]
    check_one_stream(events)
    assert block_indexes(events) == [0, 1, 2, 3, 4, 5]
    assert stream.message == stitch_messages(message_of(PAUSED), message_of(second), message_of(FINAL))
    assert stream.message["usage"]["input_tokens"] == 1800
    assert [a.mode for a in stream.attempts] == ["first", "resume", "resume"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("fault", "error_class"),
    [(ErrorEvent("api_error", after_events=3), APIStreamError), (Cut(after_events=3), IncompleteStreamError)],
)
@pytest.mark.parametrize("retry", [None, Retry(backoff=0)])
def test_a_continuation_failing_after_content_raises_with_the_stitched_turn(
    fault: Any, error_class: type[BaseException], retry: Retry | None, mode: str
) -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order", faults=Schedule((None, fault))) as server:
        stream, events, error = read_turn(server, mode, resume_pause_turn=2, retry=retry)
        assert len(server.requests) == 2
    assert isinstance(error, error_class)
    snapshot = error.snapshot  # type: ignore[attr-defined]
    # The turn so far: the paused request's message, then the continuation's partial one (its result block).
    assert snapshot["id"] == "msg_p1" and snapshot["stop_reason"] is None
    assert snapshot["content"] == [*message_of(PAUSED)["content"], message_of(FINAL)["content"][0]]
    assert snapshot["usage"]["input_tokens"] == 1300
    assert snapshot == stream.message
    # The consumer saw one message start, the blocks shown, no stop (neither the pause's nor any other).
    assert [e.type for e in events].count("message_start") == 1
    assert "message_stop" not in [e.type for e in events] and "message_delta" not in [e.type for e in events]
    assert block_indexes(events) == [0, 1, 2]
    assert [a.mode for a in stream.attempts] == ["first", "resume"] and stream.attempts[1].error is error


@pytest.mark.parametrize("mode", MODES)
def test_a_continuation_refused_before_streaming_raises_with_the_paused_turn(mode: str) -> None:
    refused = HTTPError(400, error_type="invalid_request_error")
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order", faults=Schedule((None, refused))) as server:
        stream, _, error = read_turn(server, mode, resume_pause_turn=2, retry=Retry(backoff=0))
        assert len(server.requests) == 2  # a 400 is never retried
    assert isinstance(error, anthropic.BadRequestError)
    # Nothing of the continuation arrived: the snapshot is the paused turn, which the caller may resume.
    assert error.snapshot == message_of(PAUSED)  # type: ignore[attr-defined]
    assert stream.message == message_of(PAUSED)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", [ErrorEvent("overloaded_error", after_events=1), HTTPError(529), Cut(after_events=1)])
def test_a_continuation_failing_before_content_is_retried_invisibly(fault: Any, mode: str) -> None:
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order", faults=Schedule((None, fault))) as server:
        stream, events, error = read_turn(server, mode, resume_pause_turn=1, retry=Retry(backoff=0))
        sent = bodies(server)
    assert error is None and len(sent) == 3
    assert sent[1] == sent[2] == continuation_request(sent[0], message_of(PAUSED))
    check_one_stream(events)
    assert stream.message == STITCHED
    assert [a.mode for a in stream.attempts] == ["first", "resume", "retry"]
    assert stream.attempts[1].error is not None and stream.attempts[2].error is None


@pytest.mark.parametrize("mode", MODES)
def test_each_request_of_the_turn_has_its_own_retry_budget(mode: str) -> None:
    # max_attempts=2: the first request used one attempt, the continuation still gets its retry.
    faults = Schedule((ErrorEvent("overloaded_error", after_events=1), None, HTTPError(529)))
    with ReplayServer({"a": PAUSED, "b": FINAL}, select="order", faults=faults) as server:
        stream, _, error = read_turn(server, mode, resume_pause_turn=1, retry=Retry(max_attempts=2, backoff=0))
        assert len(server.requests) == 4
    assert error is None
    assert [a.mode for a in stream.attempts] == ["first", "retry", "resume", "retry"]
    assert stream.message == STITCHED


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", ["restart", "continue"])
def test_a_restart_in_a_continuation_starts_the_turn_again(policy: Any, mode: str) -> None:
    faults = Schedule((None, ErrorEvent("overloaded_error", after_events=3)))
    with ReplayServer(BY_REQUEST, select="body", faults=faults) as server:
        stream, events, error = read_turn(server, mode, resume_pause_turn=2,
                                          retry=Retry(on_partial=policy, backoff=0))
        sent = bodies(server)
    assert error is None
    assert sent[2] == sent[0] and sent[3] == sent[1]  # the turn's first request again, then its continuation
    restart = [i for i, e in enumerate(events) if isinstance(e, RestartEvent)]
    assert len(restart) == 1 and restart[0] > 0
    check_one_stream(events[restart[0] + 1 :])  # after the marker: the whole turn, once
    assert stream.message == STITCHED
    assert [a.mode for a in stream.attempts] == ["first", "resume", "restart", "resume"]
    if policy == "continue":  # the continuation's output starts with a tool result: no prefill can go on from it
        assert stream.attempts[2].note is not None
        assert "web_search_tool_result" in stream.attempts[2].note


def test_restarts_do_not_give_the_stream_new_continuations() -> None:
    # Every continuation fails after content and is restarted: the continuations run out, the turn ends paused.
    cut = ErrorEvent("overloaded_error", after_events=3)
    plan = Schedule((None, cut, None, cut, None))
    with ReplayServer(BY_REQUEST, select="body", faults=plan) as server:
        stream, events, error = read_turn(server, "sync", resume_pause_turn=2,
                                          retry=Retry(on_partial="restart", max_attempts=9, backoff=0))
        assert len(server.requests) == 5
    assert error is None
    assert [a.mode for a in stream.attempts] == ["first", "resume", "restart", "resume", "restart"]
    after = events[max(i for i, e in enumerate(events) if isinstance(e, RestartEvent)) + 1 :]
    check_one_stream(after)
    assert stream.message == message_of(PAUSED)  # two continuations sent: the third request ends paused


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2", None])
def test_bad_resume_pause_turn_values_are_usage_errors_naming_them(bad: Any) -> None:
    client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="k", max_retries=0)
    async_client = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="k", max_retries=0)
    calls = [
        lambda: mendstream.stream(client, resume_pause_turn=bad, **PARAMS),
        lambda: mendstream.astream(async_client, resume_pause_turn=bad, **PARAMS),
        lambda: mendstream.httpx.stream(PARAMS, base_url="http://127.0.0.1:9", resume_pause_turn=bad),
        lambda: mendstream.httpx.astream(PARAMS, base_url="http://127.0.0.1:9", resume_pause_turn=bad),
    ]
    for call in calls:
        with pytest.raises(UsageError, match=rf"resume_pause_turn.*{re.escape(repr(bad))}"):
            call()


# -- the machine, driven by hand (a fake clock: the times are numbers passed in) -------------------------------


class Overloaded(ConnectionError):
    """A connection error: a fault the default Retry retries."""


def test_machine_resumes_with_an_open_carrying_the_continuation_request() -> None:
    resumer = PauseResumer(PARAMS, max_continuations=2)
    presenter = EventPresenter(resumer)
    machine: StreamMachine[list[Any]] = StreamMachine(
        Retry(max_attempts=2, backoff=0, deadline=10), reader=parser_factory(None), presenter=presenter, now=0.0)
    first = machine.next_action()
    assert isinstance(first, Open) and first.attempt.mode == "first" and first.request is None
    machine.opened(0.0)
    shown = machine.received(PAUSED, 1.0) + machine.ended(100.0)  # a long request: past the first's deadline
    assert [e.type for e in shown][-1] == "content_block_stop"  # the pause's delta and stop held back
    assert machine.state == "open" and machine.reader is None and machine.attempt_complete
    resume = machine.next_action()
    assert isinstance(resume, Open) and resume.attempt.mode == "resume" and resume.continuation is None
    assert resume.request == continuation_request(PARAMS, message_of(PAUSED)) == machine.request
    assert presenter.stitch({}) == message_of(PAUSED)  # between requests: the turn so far
    # The continuation fails to open at t=101: retried, its deadline counted from its own start (t=100).
    machine.open_failed(Overloaded("reset"), 101.0)
    sleep = machine.next_action()
    assert isinstance(sleep, Sleep) and sleep.seconds == 0
    machine.slept(101.0)
    retry = machine.next_action()
    assert isinstance(retry, Open) and retry.attempt.mode == "retry" and retry.request == resume.request
    machine.opened(102.0)
    shown = machine.received(FINAL, 103.0) + machine.ended(104.0)
    assert isinstance(machine.next_action(), Finish)
    assert [e.type for e in shown].count("message_start") == 0
    assert block_indexes(shown) == [2, 3] and shown[-1].message.to_dict() == STITCHED
    assert machine.reader is not None and presenter.stitch(machine.reader.message) == STITCHED
    assert [a.mode for a in machine.attempts] == ["first", "resume", "retry"]


def test_machine_without_a_resumer_ends_on_pause_turn() -> None:
    machine: StreamMachine[list[Any]] = StreamMachine(
        None, reader=parser_factory(None), presenter=EventPresenter(), now=0.0)
    machine.next_action()
    machine.opened(0.0)
    shown = machine.received(PAUSED, 0.0) + machine.ended(0.0)
    assert [e.type for e in shown][-2:] == ["message_delta", "message_stop"]
    assert isinstance(machine.next_action(), Finish) and machine.request is None


def test_machine_a_continuation_out_of_attempts_fails() -> None:
    machine: StreamMachine[list[Any]] = StreamMachine(
        Retry(max_attempts=2, backoff=0), reader=parser_factory(None),
        presenter=EventPresenter(PauseResumer(PARAMS, max_continuations=1)), now=0.0)
    machine.next_action()
    machine.opened(0.0)
    machine.received(PAUSED, 0.0)
    machine.ended(1.0)
    for now in (2.0, 3.0):
        assert isinstance(machine.next_action(), Open)
        machine.open_failed(Overloaded("reset"), now)
        if now == 2.0:
            machine.next_action()
            machine.slept(now)
    fail = machine.next_action()
    assert isinstance(fail, Fail) and isinstance(fail.error, Overloaded)
    assert [a.mode for a in machine.attempts] == ["first", "resume", "retry"]


# -- a text continuation inside a continuation request (on_partial="continue") ----------------------------------


TEXT_PAUSED = b"".join(sse(e) for e in [
    start("msg_t1", 100), *search_call(0, "paris weather", "srvtoolu_1"),
    {"type": "message_delta", "delta": {"stop_reason": "pause_turn", "stop_sequence": None},
     "usage": {"output_tokens": 5}},
    {"type": "message_stop"},
])
TEXT_FINAL = b"".join(sse(e) for e in [
    start("msg_t2", 200), *text(0, "It is ", "sunny ", "and warm ", "in Paris."),
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 7}},
    {"type": "message_stop"},
])


class TurnOpener:
    """Answers the turn's first request with ``first`` and its continuation request with ``final``; the one
    named by ``cut`` ends with an error event after ``cut_after`` events (unless sent with a prefill: that gets
    the rest of its answer after the prefill, as the API would go on)."""

    def __init__(self, first: bytes, final: bytes, *, cut: str, cut_after: int) -> None:
        self.answers = {"first": first, "final": final}
        self.cut = cut
        self.cut_after = cut_after
        self.requests: list[dict[str, Any]] = []

    def body(self, action: Open) -> bytes:
        request = action.request if action.request is not None else PARAMS
        if action.continuation is not None:
            request = {**request, "messages": action.continuation.apply(request["messages"])}
        self.requests.append(request)
        which = "first" if action.request is None else "final"
        answer = self.answers[which]
        if action.continuation is not None:
            prefill = {"messages": [{"role": "assistant", "content": action.continuation.text}]}
            rest = continuation_body(prefill, answer)
            assert rest is not None
            return rest
        if which != self.cut:
            return answer
        cut = ErrorEvent("overloaded_error", after_events=self.cut_after)
        return body_of(cut.apply(0, PlannedResponse(200, (), ((0.0, answer),))))

    def __call__(self, action: Open) -> Opened:
        return Opened(None, iter([self.body(action)]), lambda: None)


def test_a_text_continuation_composes_inside_a_continuation_request() -> None:
    opener = TurnOpener(TEXT_PAUSED, TEXT_FINAL, cut="final", cut_after=4)  # "It is ", "sunny ", then the error
    stream = MessageStream(opener, retry=Retry(on_partial="continue", backoff=0),
                           pause=PauseResumer(PARAMS, max_continuations=1))
    events = list(stream)
    assert [a.mode for a in stream.attempts] == ["first", "resume", "continue"]
    # The text continuation goes on from the continuation request: paused content, then the text shown.
    paused_content = message_of(TEXT_PAUSED)["content"]
    assert opener.requests[2]["messages"][-1] == {
        "role": "assistant", "content": [*paused_content, {"type": "text", "text": "It is sunny"}]}
    check_one_stream(events)
    assert "".join(e.text for e in events if e.type == "text") == "It is sunny and warm in Paris."
    message = stream.message
    assert message["id"] == "msg_t1" and message["stop_reason"] == "end_turn"
    assert message["content"] == [*paused_content, {"type": "text", "text": "It is sunny and warm in Paris."}]
    assert message["usage"]["input_tokens"] == 500  # each of the three requests is billed
    assert events[-1].message.to_dict() == message


def test_a_paused_request_continued_as_text_is_resumed_with_all_its_text() -> None:
    first = b"".join(sse(e) for e in [
        start("msg_t1", 100), *text(0, "Let me ", "search ", "the web."), *search_call(1, "paris", "srvtoolu_1"),
        {"type": "message_delta", "delta": {"stop_reason": "pause_turn", "stop_sequence": None},
         "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    ])
    opener = TurnOpener(first, TEXT_FINAL, cut="first", cut_after=3)  # "Let me ", then the error
    stream = MessageStream(opener, retry=Retry(on_partial="continue", backoff=0),
                           pause=PauseResumer(PARAMS, max_continuations=1))
    events = list(stream)
    assert [a.mode for a in stream.attempts] == ["first", "continue", "resume"]
    assert opener.requests[1]["messages"][-1] == {"role": "assistant", "content": "Let me"}
    # The continuation request carries the paused request's whole text (stitched), not the prefilled request.
    paused_message = {**message_of(first), "content": [{"type": "text", "text": "Let me search the web."},
                                                       message_of(first)["content"][1]]}
    assert opener.requests[2] == continuation_request(PARAMS, paused_message)
    check_one_stream(events)
    assert "".join(e.text for e in events if e.type == "text") == "Let me search the web.It is sunny and warm in Paris."
    assert [b["type"] for b in stream.message["content"]] == ["text", "server_tool_use", "text"]
    assert stream.message["content"][0]["text"] == "Let me search the web."
    assert events[-1].message.to_dict() == stream.message
