"""Issue 19 §3: resuming a paused turn (stop_reason "pause_turn") within one stream: mendstream.streaming.pause.

The driver that sends the requests is the stream machine's (not here yet); these tests drive PauseResumer with
a small loop of their own over the real SDK client and the replay server, and check it against the API's
documented way to resume, done by hand with the SDK: append the paused assistant content and send again.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mendstream import MessageParser
from mendstream.errors import UsageError
from mendstream.streaming.pause import PauseResumer, continuation_request, stitch_messages, sum_usage
from mendstream.testing import ReplayServer
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
