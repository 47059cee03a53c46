"""MessageParser on generated streams: the intended message comes back however the bytes are split, the
SDK's accumulator agrees, every input_json snapshot equals jiter's reading of the prefix, and no input
bytes make anything but a StreamError escape."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jiter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mendstream
from mendstream import (
    APIStreamError,
    IncompleteStreamError,
    MessageParser,
    StreamError,
    ToolInputError,
    UsageError,
)
from mendstream.testing import FIXTURES as BUNDLED_FIXTURES
from sdk_reference import comparable, sdk_events
from splitting import split_at

FIXTURES = BUNDLED_FIXTURES


# -- generating streams -------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, _text, _text),
    st.builds(
        lambda i, n, v: {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": v},
        st.integers(0, 999), st.sampled_from(["read_file", "bash"]), st.dictionaries(_text, _json, max_size=4),
    ),
)


def chop(text: str, sizes: list[int]) -> list[str]:
    pieces, i, k = [], 0, 0
    while i < len(text):
        size = sizes[k % len(sizes)] if sizes else len(text)
        pieces.append(text[i : i + size])
        i += size
        k += 1
    return pieces


def event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def serialise(message: dict[str, Any], sizes: list[int], input_json: list[str]) -> bytes:
    """The Messages API stream for ``message``, deltas chopped by ``sizes``. ``input_json`` receives each
    tool block's JSON text (the fragments' concatenation)."""
    start = dict(message, content=[], stop_reason=None, usage={"input_tokens": 3, "output_tokens": 1})
    out = [event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        first = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                 "tool_use": {**block, "input": {}}}[kind]
        out.append(event("content_block_start", {"type": "content_block_start", "index": index, "content_block": first}))
        if kind == "tool_use":
            text = json.dumps(block["input"], ensure_ascii=False)
            input_json.append(text)
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *chop(text, sizes)]]
        elif kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in chop(block["text"], sizes)]
        else:
            deltas = [{"type": "thinking_delta", "thinking": p} for p in chop(block["thinking"], sizes)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        for delta in deltas:
            out.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            if len(out) % 5 == 0:
                out.append(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": 42}}))
    out.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


_message = st.builds(
    lambda blocks: {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                    "content": blocks, "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": 42}},
    st.lists(_block, max_size=4),
)


def parse(chunks: list[bytes], **options: Any) -> tuple[list[Any], MessageParser]:
    parser = MessageParser(**options)
    events: list[Any] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.end()
    return events, parser


# -- properties ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_message, sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
       points=st.lists(st.integers(min_value=0), max_size=15))
def test_generated_streams_round_trip_however_split(message: dict[str, Any], sizes: list[int], points: list[int]) -> None:
    data = serialise(message, sizes, [])
    events, parser = parse(split_at(data, points))
    assert parser.message == message
    assert parser.repairs == []
    whole_events, _ = parse([data])
    assert [e.to_dict() for e in events] == [e.to_dict() for e in whole_events]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_message, sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5))
def test_generated_streams_match_the_sdk(message: dict[str, Any], sizes: list[int]) -> None:
    data = serialise(message, sizes, [])
    theirs, sdk_message = sdk_events(data)
    events, parser = parse([data])
    assert [comparable(e) for e in events] == theirs
    assert parser.message["content"] == sdk_message["content"]
    assert parser.message["usage"] == {k: v for k, v in sdk_message["usage"].items() if v is not None}


@settings(max_examples=150, deadline=None)
@given(value=st.dictionaries(_text, _json, max_size=5), sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       mode=st.sampled_from(["on", "trailing-strings"]))
def test_input_json_snapshots_equal_jiter_on_every_prefix(value: dict[str, Any], sizes: list[int], mode: str) -> None:
    message = {"id": "m", "type": "message", "role": "assistant", "model": "x", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": value}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 42}}
    texts: list[str] = []
    events, parser = parse([serialise(message, sizes, texts)], partial_mode=mode)
    prefix = ""
    jiter_mode: Any = True if mode == "on" else mode
    snapshots = [(e.partial_json, e.snapshot) for e in events if e.type == "input_json"]
    for fragment, snapshot in snapshots:
        prefix += fragment
        try:
            expected = jiter.from_json(prefix.encode(), partial_mode=jiter_mode) if prefix else {}
        except ValueError:
            continue
        assert snapshot == expected, prefix
    assert prefix == texts[0]
    assert parser.message["content"][0]["input"] == json.loads(texts[0])


def test_snapshots_read_late_or_out_of_order_are_still_exact() -> None:
    message = {"id": "m", "type": "message", "role": "assistant", "model": "x", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": {"path": "a.py", "lines": [1, 2, 3], "body": "x" * 50}},
        {"type": "text", "text": "hello world, and more"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 42}}
    data = serialise(message, [3], [])
    events, _ = parse([data])
    inputs = [e for e in events if e.type == "input_json"]
    texts = [e for e in events if e.type == "text"]
    reference, _ = parse([data])
    expected_inputs = [e.snapshot for e in reference if e.type == "input_json"]
    expected_texts = [e.snapshot for e in reference if e.type == "text"]
    # Read newest first, then oldest, then the rest: each must still be the state after its own delta.
    order = [len(inputs) - 1, 0, *range(1, len(inputs) - 1)]
    assert [inputs[i].snapshot for i in order] == [expected_inputs[i] for i in order]
    assert [t.snapshot for t in reversed(texts)] == list(reversed(expected_texts))
    assert expected_texts[-1] == "hello world, and more"


# -- robustness ---------------------------------------------------------------------------------------------

FIXTURE_BYTES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.sse"))]


def assert_only_stream_errors(chunks: list[bytes]) -> None:
    try:
        parse(chunks)
    except StreamError as exc:
        assert not exc.message.startswith("internal error"), exc.__cause__
        assert isinstance(exc.events, list)
    # Any other exception fails the test by propagating.


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), points=st.lists(st.integers(min_value=0), max_size=6))
def test_random_bytes_raise_only_stream_errors(data: bytes, points: list[int]) -> None:
    assert_only_stream_errors(split_at(data, points))


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, len(FIXTURE_BYTES) - 1),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=4), st.integers(0, 4)), max_size=6),
    cut=st.integers(min_value=0),
)
def test_mutated_fixtures_raise_only_stream_errors(which: int, edits: list[tuple[int, bytes, int]], cut: int) -> None:
    data = bytearray(FIXTURE_BYTES[which])
    for position, insert, delete in edits:
        position %= len(data) + 1
        data[position : position + delete] = insert
    data = data[: len(data) - cut % (len(data) + 1) // 3]
    assert_only_stream_errors([bytes(data)])


_events = st.lists(st.sampled_from([
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[],"usage":{}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","input":{}}}\n\n',
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n',
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": [1"}}\n\n',
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"]}"}}\n\n',
    b'data: {"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"x":1}}}\n\n',
    b'data: {"type":"content_block_delta","index":"0","delta":[]}\n\n',
    b'data: {"type":"content_block_stop","index":0}\n\n',
    b'data: {"type":"content_block_stop","index":1}\n\n',
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}\n\n',
    b'data: {"type":"message_delta","delta":null,"usage":7}\n\n',
    b'data: {"type":"message_stop"}\n\n',
    b'data: {"type":"message_start","message":"nope"}\n\n',
    b'data: [1, 2]\n\n', b'data: "str"\n\n', b"data: [DONE]\n\n", b": c\n\n",
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n',
    b'event: error\ndata: {"error": 5}\n\n',
]), max_size=14)


@settings(max_examples=500, deadline=None)
@given(events=_events)
def test_any_order_of_plausible_events_raises_only_stream_errors(events: list[bytes]) -> None:
    assert_only_stream_errors([b"".join(events)])


# -- API contract -------------------------------------------------------------------------------------------


def test_errors_keep_the_partial_message_and_raw_text() -> None:
    data = (FIXTURES / "truncated_eof_in_tool_input.sse").read_bytes()
    with pytest.raises(IncompleteStreamError) as info:
        parse([data])
    error = info.value
    assert error.snapshot is not None and error.snapshot["content"][1]["input"] == {"path": "src/app.py"}
    assert list(error.raw_tool_inputs.values()) == [error.raw_tool_inputs[1]]
    assert error.raw_tool_inputs[1].startswith('{"path": "src/app.py", "content": "')

    data = (FIXTURES / "tool_input_invalid_json.sse").read_bytes()
    with pytest.raises(ToolInputError) as tool_info:
        parse([data])
    assert tool_info.value.raw == json.loads((FIXTURES / "tool_input_invalid_json.expected.json").read_text())["error"]["raw"]

    data = (FIXTURES / "api_error_overloaded.sse").read_bytes()
    with pytest.raises(APIStreamError) as api_info:
        parse([data])
    assert api_info.value.error_type == "overloaded_error"
    assert api_info.value.body["error"]["message"]
    assert api_info.value.request_id
    assert api_info.value.snapshot is not None and api_info.value.snapshot["content"]


def test_errors_are_sticky_and_misuse_is_a_usage_error() -> None:
    parser = MessageParser()
    with pytest.raises(APIStreamError) as first:
        parser.feed(b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n')
    with pytest.raises(APIStreamError) as second:
        parser.feed(b"data: more\n\n")
    assert second.value is first.value
    with pytest.raises(APIStreamError):
        parser.end()

    parser = MessageParser()
    parser.feed((FIXTURES / "text_basic.sse").read_bytes())
    parser.end()
    with pytest.raises(UsageError):
        parser.feed(b"x")
    with pytest.raises(UsageError, match="'on', 'trailing-strings'"):
        MessageParser(partial_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # UsageError is a ValueError too, as jiter's bad options are
        MessageParser(max_event_bytes=0)
    with pytest.raises(UsageError):
        MessageParser().feed("text")  # type: ignore[arg-type]


def test_events_read_like_the_sdk() -> None:
    data = (FIXTURES / "text_citations.sse").read_bytes()
    events, _ = parse([data])
    start = events[0]
    assert start.type == "message_start" and start.message.usage.input_tokens > 0
    # Issue 8: an absent field the SDK's model declares optional reads None; any other name raises.
    assert start.message.container is None
    with pytest.raises(AttributeError):
        start.message.missing_field  # noqa: B018 - reading it is the point
    delta = next(e for e in events if e.type == "content_block_delta")
    assert delta.delta.type == "text_delta" and delta.delta.text == delta.delta["text"]
    citation = next(e for e in events if e.type == "citation")
    assert citation.citation.type and citation.snapshot[0].cited_text == citation.snapshot[0]["cited_text"]
    stop = next(e for e in events if e.type == "content_block_stop")
    assert stop.content_block.type == "text" and isinstance(stop.content_block.to_dict(), dict)
    assert events[-1].type == "message_stop" and events[-1].message.content[0].type == "text"


def test_unknown_events_pass_through() -> None:
    data = (FIXTURES / "unknown_event_block_delta.sse").read_bytes()
    events, _ = parse([data])
    unknown = [e for e in events if type(e).__name__ == "UnknownEvent"]
    assert unknown and all(e.type not in ("ping",) for e in unknown)
    assert unknown[0].data.to_dict()["type"] == unknown[0].type


def test_trailing_strings_mode_shows_the_string_in_progress() -> None:
    data = (FIXTURES / "truncated_eof_in_tool_input.sse").read_bytes()
    with pytest.raises(IncompleteStreamError) as info:
        parse([data], partial_mode="trailing-strings")
    assert info.value.snapshot is not None
    assert info.value.snapshot["content"][1]["input"]["content"].startswith("import os")


def test_import_mendstream_imports_neither_httpx_nor_anthropic() -> None:
    code = "import sys, mendstream; mendstream.replay(b''); print(sorted(m for m in ('httpx', 'httpx2', 'anthropic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _opener(chunks: list[bytes], release: Any = None, convert: Any = None) -> Any:
    from mendstream.streaming.drivers import Opened

    return lambda action: Opened(None, iter(chunks), release or (lambda: None), convert=convert)


def test_message_stream_releases_once_even_when_broken_off() -> None:
    data = (FIXTURES / "text_basic.sse").read_bytes()
    calls: list[int] = []
    stream = mendstream.MessageStream(_opener([data[:40], data[40:]], lambda: calls.append(1)))
    for event in stream:
        if event.type == "text":
            break
    stream.close()
    stream.close()
    assert calls == [1]
    with mendstream.MessageStream(_opener([data], lambda: calls.append(2))) as stream:
        assert stream.get_final_text()
    assert calls == [1, 2]


def test_convert_maps_errors_after_yielding_what_came_before() -> None:
    data = (FIXTURES / "api_error_overloaded.sse").read_bytes()

    class Mapped(Exception):
        pass

    seen: list[str] = []
    stream = mendstream.MessageStream(_opener([data], convert=lambda e: Mapped(e.message)))
    with pytest.raises(Mapped):
        for event in stream:
            seen.append(event.type)
    assert seen[0] == "message_start" and "content_block_delta" in seen
