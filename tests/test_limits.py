"""Bounds and hostile input: max_event_bytes has one definition whatever the split, the memory held for an
unfinished line is its bytes, repairs stay linear, deep nesting is an input error, and the optional
max_message_bytes bounds the whole stream."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mendstream import (
    BufferLimitError,
    EventDecodeError,
    MessageParser,
    MessageTooLargeError,
    SSEDecoder,
    StreamError,
    ToolInputError,
    UsageError,
)
from mendstream.core.accumulate import MessageAccumulator
from mendstream.core.parser import MAX_NESTING
from splitting import split_at

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
)


def event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


# -- max_event_bytes: one definition, the same verdict however the bytes are split ----------------------------

_line = st.one_of(
    st.text(alphabet="abc{}\": ", max_size=40).map(lambda v: "data: " + v),
    st.just("event: content_block_delta"),
    st.text(alphabet="xyz ", max_size=10).map(lambda v: ": " + v),  # a comment counts too
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(_line, min_size=1, max_size=5),
    terminators=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3),
    slack=st.sampled_from([-2, -1, 0, 1, 2]),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
def test_the_event_size_verdict_does_not_depend_on_the_split(
    lines: list[str], terminators: list[str], slack: int, points: list[int]
) -> None:
    # The size of an event: its lines, each with one byte for its terminator (CR, LF or CRLF alike).
    size = sum(len(line) + 1 for line in lines)
    limit = size + slack
    if limit <= 0:
        return
    text = "".join(line + terminators[i % len(terminators)] for i, line in enumerate(lines))
    blank = terminators[(len(lines) - 1) % len(terminators)]  # the blank line: a CR then LF would be one CRLF
    data = b"data: before\n\n" + text.encode() + blank.encode() + b"data: after\n\n"
    limit = max(limit, len("data: after") + 1, len("data: before") + 1)

    def verdict(chunks: list[bytes]) -> bool:
        decoder = SSEDecoder(max_event_bytes=limit)
        try:
            for chunk in chunks:
                decoder.feed(chunk)
            decoder.end()
        except BufferLimitError:
            return True
        return False

    expected = size > limit
    assert verdict([data]) is expected
    assert verdict(split_at(data, points)) is expected
    assert verdict([data[i : i + 1] for i in range(len(data))]) is expected


@pytest.mark.parametrize("slack", [-1, 0, 1])
def test_parser_verdict_at_the_bound_is_the_decoders(slack: int) -> None:
    delta = event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "x" * 400}})
    size = len(delta) - 1  # the event's lines and their terminators, not the blank line
    data = START + event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}) + delta
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))], split_at(data, [len(data) - 7])):
        parser = MessageParser(max_event_bytes=size + slack)
        if slack < 0:
            with pytest.raises(BufferLimitError):
                for chunk in chunks:
                    parser.feed(chunk)
        else:
            for chunk in chunks:
                parser.feed(chunk)
            assert parser.message["content"][0]["text"] == "x" * 400


def test_events_before_an_oversized_one_are_kept_on_the_error() -> None:
    parser = MessageParser(max_event_bytes=400)
    with pytest.raises(BufferLimitError) as info:
        parser.feed(START + b"data: " + b"x" * 500 + b"\n\n")
    assert [e.type for e in info.value.events] == ["message_start"]


def test_an_unterminated_line_fed_byte_by_byte_holds_its_bytes_not_one_object_per_chunk() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    n = 200_000
    chunks = [bytes([0x61 + i % 26]) for i in range(n)]  # built before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for chunk in chunks:
            decoder.feed(chunk)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One bytes object per chunk would hold ~40 bytes per byte; one buffer holds ~1 (growth slack aside).
    assert held < 3 * n
    decoder.feed(b"\n\n")


# -- linear repairs -----------------------------------------------------------------------------------------


def test_many_repaired_blocks_do_not_rebuild_the_message_per_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = MessageAccumulator.message

    def counting(self: MessageAccumulator) -> Any:
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(MessageAccumulator, "message", counting)

    def stream(blocks: int) -> bytes:
        out = [START]
        for i in range(blocks):
            out.append(event("content_block_start", {"type": "content_block_start", "index": i,
                                                      "content_block": {"type": "text", "text": ""}}))
            # A raw TAB inside a JSON string: jiter rejects it, the repair path escapes it.
            out.append(f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{i},'
                       f'"delta":{{"type":"text_delta","text":"a\tb"}}}}\n\n'.encode())
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": i}))
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    counts = []
    for blocks in (10, 200):
        calls["n"] = 0
        parser = MessageParser()
        parser.feed(stream(blocks))
        parser.end()
        assert len([r for r in parser.repairs if r.kind == "control_characters"]) == blocks
        counts.append(calls["n"])
    assert counts[1] == counts[0]  # a constant number of message builds, not one per repair


# -- deep nesting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 990, 100_000])
def test_deep_nesting_in_event_json_is_an_event_decode_error(depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    data = START + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,' \
        b'"content_block":{"type":"text","text":"","x":' + body + b"}}\n\n"
    for chunks in ([data], split_at(data, [len(START) + 5, len(data) - 3])):
        parser = MessageParser()
        with pytest.raises(EventDecodeError) as info:
            for chunk in chunks:
                parser.feed(chunk)
        assert str(MAX_NESTING) in str(info.value) and info.value.raw.endswith(b"]}}")
        assert info.value.snapshot is not None and info.value.snapshot["id"] == "msg_1"


def test_nesting_within_the_limit_parses() -> None:
    depth = MAX_NESTING - 2
    body = b"[" * depth + b"]" * depth
    parser = MessageParser()
    parser.feed(START + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                b'"content_block":{"type":"server_tool_use","id":"s","name":"n","x":' + body + b"}}\n\n")
    assert parser.message["content"][0]["x"] == json.loads(body)


@pytest.mark.parametrize("depth", [990, 100_000])
def test_deep_nesting_in_tool_input_is_a_tool_input_error(depth: int) -> None:
    parser = MessageParser()
    with pytest.raises(ToolInputError) as info:
        parser.feed(START + event("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}}))
        parser.feed(event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": "[" * depth + "]" * depth}}))
        parser.feed(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    assert info.value.raw == "[" * depth + "]" * depth and "nest" in str(info.value)


# -- max_message_bytes --------------------------------------------------------------------------------------


def _long_stream(parts: int) -> bytes:
    out = [START, event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})]
    for _ in range(parts):
        out.append(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": "y" * 50}}))
    return b"".join(out)


def test_max_message_bytes_is_off_by_default_and_bounds_the_stream_when_set() -> None:
    data = _long_stream(200)
    parser = MessageParser()
    parser.feed(data)
    assert len(parser.message["content"][0]["text"]) == 200 * 50

    for chunks in ([data], split_at(data, list(range(0, len(data), 97)))):
        parser = MessageParser(max_message_bytes=len(data) - 1)
        with pytest.raises(MessageTooLargeError) as info:
            for chunk in chunks:
                parser.feed(chunk)
        assert isinstance(info.value, StreamError) and info.value.limit == len(data) - 1
        assert info.value.snapshot is not None and info.value.snapshot["id"] == "msg_1"
        with pytest.raises(MessageTooLargeError):  # sticky, like every error
            parser.feed(b"\n")

    parser = MessageParser(max_message_bytes=len(data))
    parser.feed(data)  # exactly at the bound: fine


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_max_message_bytes_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(UsageError):
        MessageParser(max_message_bytes=bad)
