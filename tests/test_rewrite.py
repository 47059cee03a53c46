"""The sans-IO rewriters: the response rewriter's output read by the official SDK equals mendstream's reading
of the original bytes (or the SDK raises where mendstream raises), whatever the split; clean streams pass
byte for byte; the tool-input fixer agrees with json.loads(strict=False) and jiter's partial parser; the
request rewriter caps cache markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURE_NAMES, expected, fixture_bytes
from mendstream import MessageParser, Repair, UsageError
from mendstream.core.sse import SSEDecoder
from mendstream.wire.rewrite import (
    ResponseRewriter,
    ToolInputFixer,
    is_messages_path,
    rewrite_request,
    with_content_length,
)
from sdk_reference import sdk_events
from splitting import split_at
from streams import text_stream

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.sse")) if CORPUS.is_dir() else []


def rewrite(pieces: list[bytes], **kwargs: Any) -> tuple[bytes, ResponseRewriter]:
    rewriter = ResponseRewriter(**kwargs)
    out = b"".join(rewriter.feed(piece) for piece in pieces) + rewriter.end()
    return out, rewriter


def sdk_outcome(data: bytes) -> tuple[dict[str, Any] | None, BaseException | None]:
    try:
        return sdk_events(data)[1], None
    except Exception as exc:  # the SDK raises APIStatusError for an error event, ValueError for bad JSON
        return None, exc


def without_sdk_nulls(sdk: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The SDK's dict minus keys it adds with a null value that mendstream's message lacks (e.g.
    ``stop_details``, assigned on every message_delta), recursively through content blocks."""
    out = {k: v for k, v in sdk.items() if not (v is None and k not in ours)}
    if isinstance(out.get("content"), list) and isinstance(ours.get("content"), list):
        out["content"] = [
            {k: v for k, v in b.items() if not (v is None and k not in o)} if isinstance(b, dict) else b
            for b, o in zip(out["content"], ours["content"], strict=False)
        ] + out["content"][len(ours["content"]):]
    return out


def mendstream_outcome(data: bytes) -> tuple[dict[str, Any] | None, BaseException | None]:
    parser = MessageParser()
    try:
        parser.feed(data)
        parser.end()
    except Exception as exc:
        return None, exc
    return parser.message, None


def assert_sdk_agrees(original: bytes, rewritten: bytes, label: str) -> None:
    ours, our_error = mendstream_outcome(original)
    theirs, sdk_error = sdk_outcome(rewritten)
    if our_error is None:
        assert sdk_error is None, f"{label}: the SDK raised {sdk_error!r} on the rewritten stream"
        assert theirs is not None and ours is not None
        assert without_sdk_nulls(theirs, ours) == ours, label
    else:
        assert sdk_error is not None, f"{label}: mendstream raised {our_error!r} but the SDK returned a message"


def is_clean(data: bytes) -> bool:
    """No repair, and every event canonical (event line, one data line, LF framing, no padding)."""
    parser = MessageParser()
    try:
        parser.feed(data)
        parser.end()
    except Exception:
        return False
    if parser.repairs or b"\r" in data:
        return False
    blocks = data.split(b"\n\n")
    return blocks[-1] == b"" and all(
        b.startswith(b"event: ") and b.count(b"\n") == 1 and b"\ndata: {" in b and b.endswith(b"}")
        for b in blocks[:-1]
    )


# -- the fixtures, through the SDK ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_sdk_reads_rewritten_fixture_as_mendstream_reads_original(name: str) -> None:
    data = fixture_bytes(name)
    out, rewriter = rewrite([data])
    assert_sdk_agrees(data, out, name)
    exp = expected(name)
    if exp["error"] is None:
        assert rewriter.error is None
    else:
        assert out.rstrip().split(b"\n\n")[-1].startswith(b"event: error\ndata: ")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_output_is_the_same_byte_by_byte(name: str) -> None:
    data = fixture_bytes(name)
    whole, _ = rewrite([data])
    single, _ = rewrite([data[i : i + 1] for i in range(len(data))])
    assert single == whole


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(FIXTURE_NAMES), points=st.lists(st.integers(min_value=0), max_size=12))
def test_output_is_split_invariant(name: str, points: list[int]) -> None:
    data = fixture_bytes(name)
    whole, _ = rewrite([data])
    split, _ = rewrite(split_at(data, points))
    assert split == whole


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if is_clean(fixture_bytes(n))])
def test_clean_fixture_passes_byte_for_byte(name: str) -> None:
    data = fixture_bytes(name)
    out, rewriter = rewrite([data])
    assert out == data
    assert not rewriter.rewritten
    assert rewriter.repairs == []


def test_repaired_output_is_strict_sse_and_json() -> None:
    # Every event of every rewritten fixture: an event line, one data line that strict json.loads accepts,
    # whose type equals the event name; no BOM, no comment, no [DONE].
    for name in FIXTURE_NAMES:
        out, _ = rewrite([fixture_bytes(name)])
        decoder = SSEDecoder()
        events = decoder.feed(out)
        decoder.end()
        assert decoder.unfinished == b"" and not out.startswith(b"\xef\xbb\xbf"), name
        assert b"\r" not in out and b"\n:" not in out, name
        for event in events:
            obj = json.loads(event.raw_data)
            assert event.event == obj["type"], (name, event)
            assert event.stray_lines is None


def test_truncated_stream_ends_with_incomplete_error_event() -> None:
    out, rewriter = rewrite([fixture_bytes("truncated_eof_in_text_block")])
    last = json.loads(out.rstrip().split(b"\n\n")[-1].split(b"data: ", 1)[1])
    assert last == {"type": "error", "error": {"type": "incomplete_stream_error", "message": last["error"]["message"]}}
    assert "ended before message_stop" in last["error"]["message"]
    assert type(rewriter.error).__name__ == "IncompleteStreamError"


def test_stream_cut_after_stop_reason_is_completed() -> None:
    data = fixture_bytes("truncated_final_frame_after_message_delta")
    out, rewriter = rewrite([data])
    assert out.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert rewriter.repair_counts["missing_message_stop"] == 1


def test_upstream_error_event_is_forwarded_as_sent() -> None:
    data = fixture_bytes("api_error_overloaded")
    out, rewriter = rewrite([data])
    assert out == data
    assert rewriter.error is not None


def test_repairs_reach_the_callback_and_are_counted() -> None:
    seen: list[Repair] = []
    data = fixture_bytes("fault_control_chars_in_event_json")
    _, rewriter = rewrite([data], on_repair=seen.append)
    assert [r.kind for r in seen] == expected("fault_control_chars_in_event_json")["repairs"]
    assert rewriter.repair_counts["control_characters"] == len(seen)


def test_nothing_after_message_stop_and_feed_after_end_is_usage_error() -> None:
    data = fixture_bytes("fault_event_after_message_stop")
    out, rewriter = rewrite([data])
    assert out.endswith(b'{"type":"message_stop"}\n\n')
    assert rewriter.dropped_bytes > 0
    with pytest.raises(UsageError):
        rewriter.feed(b"x")


def test_feed_takes_bytes_like_only() -> None:
    data = fixture_bytes("text_basic")
    rewriter = ResponseRewriter()
    out = rewriter.feed(memoryview(data)) + rewriter.feed(bytearray()) + rewriter.end()
    assert out == data
    with pytest.raises(UsageError, match="takes bytes"):
        ResponseRewriter().feed("text")  # type: ignore[arg-type]


def test_buffer_bound_gives_an_error_event() -> None:
    rewriter = ResponseRewriter(max_event_bytes=1000)
    head = fixture_bytes("text_basic").split(b"\n\n")[0] + b"\n\n"
    out = rewriter.feed(head) + rewriter.feed(b"event: content_block_delta\ndata: " + b"x" * 2000)
    assert b'"type":"event_too_large_error"' in out
    assert rewriter.feed(b"more") == b"" and rewriter.end() == b""


def test_scanning_is_linear_in_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # One 300 KB event fed 10 bytes at a time: the blank-line search must not rescan the held bytes, so the
    # bytes it examines stay within a small factor of the input (a rescan per chunk would be ~4,500x).
    import mendstream.wire.rewrite as rw

    scanned = 0
    pattern = rw._BLANK

    class Counting:
        def search(self, buf: bytearray, pos: int) -> Any:
            nonlocal scanned
            match = pattern.search(buf, pos)
            scanned += (match.end() if match else len(buf)) - pos
            return match

    monkeypatch.setattr(rw, "_BLANK", Counting())
    head = fixture_bytes("text_basic").split(b"\n\n")[0] + b"\n\n"
    text = "x" * 300_000
    event = ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             '"delta":{"type":"text_delta","text":"' + text + '"}}\n\n').encode()
    data = head + event
    out, _ = rewrite([data[i : i + 10] for i in range(0, len(data), 10)])
    assert scanned <= 2 * len(data)
    assert out.startswith(data[: len(head)]) and text.encode() in out


@pytest.mark.skipif(not CORPUS_FILES, reason="shared corpus not present")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_through_sdk(path: Path) -> None:
    # The SDK and mendstream differ on some real streams (usage fields the SDK nulls), so the differential
    # here is: mendstream reads the output as it read the input, the SDK reads the output as it read a
    # stream that needed no repair, and where mendstream raises, the SDK raises on the output too.
    data = path.read_bytes()
    out, _ = rewrite([data])
    ours, our_error = mendstream_outcome(data)
    again, again_error = mendstream_outcome(out)
    theirs, sdk_error = sdk_outcome(out)
    if our_error is not None:
        assert again_error is not None and sdk_error is not None, path.name
    else:
        assert again == ours and sdk_error is None, (path.name, sdk_error)
        original, original_error = sdk_outcome(data)
        if original_error is None and MessageParserRepairs.none(data):
            assert theirs == original
    thirds = split_at(data, [len(data) // 3, 2 * len(data) // 3 + 1])
    assert rewrite(thirds)[0] == out
    if is_clean(data):
        assert out == data


# -- the tool input fixer -----------------------------------------------------------------------------------

_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _raw_json(value: Any, corrupt: bool) -> str:
    """JSON text of value; with ``corrupt``, escaped control characters become raw ones and some valid
    ``\\\\`` escapes become invalid ones (``\\q``), as broken providers send them."""
    text = json.dumps(value, ensure_ascii=False)
    if corrupt:
        for escape, raw in (("\\t", "\t"), ("\\n", "\n"), ("\\u001b", "\x1b"), ("\\b", "\b")):
            text = text.replace(escape, raw)
    return text


@settings(max_examples=200, deadline=None)
@given(
    value=st.dictionaries(st.text(max_size=6), _value, max_size=5),
    corrupt=st.booleans(),
    extra=st.sampled_from(["", "\\q", "\\x", "C:\\Users\\H", "\\u12G", "\t\x01"]),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
def test_fixer_concatenation_is_valid_and_partial_parses_succeed(
    value: dict[str, Any], corrupt: bool, extra: str, points: list[int]
) -> None:
    from jiter import from_json

    value = {**value, "z": "tail" + extra}
    raw = _raw_json(value, corrupt)
    if extra:
        raw = raw.replace(json.dumps("tail" + extra, ensure_ascii=False)[1:-1], "tail" + extra, 1)
    data = raw.encode()
    pieces = [p.decode("utf-8", "ignore") for p in split_at(data, points)]
    pieces = _resplit_on_chars(raw, pieces)
    out, _ = rewrite([tool_stream(pieces)])
    decoder = SSEDecoder()
    sent = [
        obj["delta"]["partial_json"]
        for obj in (json.loads(e.raw_data) for e in decoder.feed(out))
        if obj["type"] == "content_block_delta"
    ]
    text = "".join(sent)
    assert json.loads(text) == MessageParserReference.tool_input(raw)
    buf = ""
    for piece in sent:
        buf += piece
        if buf.strip():
            from_json(buf.encode(), partial_mode=True)


def tool_stream(fragments: list[str], stop_reason: str = "tool_use", start_input: Any = None) -> bytes:
    """A complete stream with one tool block whose input arrives as ``fragments`` (its start carrying
    ``start_input``, ``{}`` by default)."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "x",
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 1, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "t", "name": "f",
                           "input": {} if start_input is None else start_input}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": f}}
          for f in fragments),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _resplit_on_chars(raw: str, pieces: list[str]) -> list[str]:
    # Split points chosen on bytes may fall inside a UTF-8 sequence; cut the text at character boundaries
    # of the same lengths instead.
    out, start = [], 0
    for piece in pieces:
        out.append(raw[start : start + len(piece)])
        start += len(piece)
    out.append(raw[start:])
    return out


class MessageParserRepairs:
    @staticmethod
    def none(data: bytes) -> bool:
        parser = MessageParser()
        parser.feed(data)
        parser.end()
        return not parser.repairs


class MessageParserReference:
    @staticmethod
    def tool_input(raw: str) -> Any:
        """mendstream's own reading of a tool input: one fragment through the core."""
        parser = MessageParser()
        parser.feed(tool_stream([raw]))
        parser.end()
        return parser.message["content"][0]["input"]


def test_fixer_leaves_clean_fragments_as_the_same_objects() -> None:
    fixer = ToolInputFixer()
    for piece in ['{"path": "a\\', 'nb", "n": [1, {"x": "\\u00', 'e9"}]}']:
        assert fixer.feed(piece) is piece
    assert fixer.fixed == 0


def test_fixer_merges_objects_in_one_fragment() -> None:
    fixer = ToolInputFixer()
    assert fixer.feed('{"a": 1}{"b": 2}') == '{"a": 1,"b": 2}'
    assert fixer.feed("{}") == "}" and fixer.unclose_previous  # the caller drops the earlier "}"
    assert json.loads('{"a": 1,"b": 2}') == {"a": 1, "b": 2}


# -- requests ------------------------------------------------------------------------------------------------


def _request_with_markers(count: int) -> dict[str, Any]:
    blocks = [{"type": "text", "text": f"part {i} " * 400, "cache_control": {"type": "ephemeral"}}
              for i in range(count)]
    return {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": blocks}]}


def test_request_with_six_markers_leaves_with_at_most_four() -> None:
    payload = _request_with_markers(6)
    result = rewrite_request(json.dumps(payload).encode())
    assert result.changed and result.markers_before == 6 and result.markers_after <= 4
    planned = json.loads(result.body)
    strip = json.loads(json.dumps(planned))
    for block in strip["messages"][0]["content"]:
        block.pop("cache_control", None)
    for block in payload["messages"][0]["content"]:
        block.pop("cache_control", None)
    assert strip == payload


def test_request_off_is_untouched_and_bad_bodies_are_usage_errors() -> None:
    body = b'{"model": "m",  "messages": []}'
    assert rewrite_request(body, cache="off").body is body
    with pytest.raises(UsageError, match="not JSON"):
        rewrite_request(b"{nope")
    with pytest.raises(UsageError, match="not an object"):
        rewrite_request(b"[1]")
    with pytest.raises(UsageError, match="cache: unknown value"):
        rewrite_request(body, cache="sometimes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="planner"):
        rewrite_request(body, cache="planner")


def test_unchanged_request_keeps_its_bytes() -> None:
    body = b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}'
    assert rewrite_request(body).body is body


def test_content_length_is_replaced() -> None:
    headers = [(b"Content-Length", b"10"), (b"x-api-key", b"k"), (b"transfer-encoding", b"chunked")]
    assert with_content_length(headers, 42) == [(b"x-api-key", b"k"), (b"content-length", b"42")]


@pytest.mark.parametrize(
    ("path", "expected_result"),
    [
        ("/v1/messages", True),
        ("/v1/messages?beta=true", True),
        ("/anthropic/v1/messages", True),
        ("/v1/projects/p/locations/l/publishers/anthropic/models/claude:streamRawPredict", True),
        ("/v1/messages/count_tokens", False),
        ("/v1/messages/batches", False),
        ("/v1/models", False),
    ],
)
def test_messages_paths(path: str, expected_result: bool) -> None:
    assert is_messages_path(path) is expected_result


# -- one form of tool input for every client ------------------------------------------------------------------


def _starts(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEDecoder().feed(out) if e.event == "content_block_start"]


@settings(max_examples=150, deadline=None)
@given(
    start=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), min_size=1, max_size=3),
    value=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), max_size=3),
    pieces=st.integers(1, 6),
    empties=st.integers(0, 3),
    splits=st.lists(st.integers(0, 3000), max_size=5),
)
def test_a_start_input_followed_by_deltas_is_sent_in_the_one_form_every_client_reads(
    start: dict[str, Any], value: dict[str, Any], pieces: int, empties: int, splits: list[int]
) -> None:
    # The input in the start AND as deltas (gateways): the SDK concatenates, langchain keeps the start,
    # pydantic-ai refuses. The output's start has an empty input, so the deltas are the input for all of them.
    text = json.dumps(value)
    step = max(1, len(text) // pieces)
    fragments = [""] * empties + [text[i : i + step] for i in range(0, len(text), step)]
    data = tool_stream(fragments, start_input=start)
    out, _ = rewrite(split_at(data, splits))
    assert [b["content_block"]["input"] for b in _starts(out)] == [{}]
    assert rewrite([data])[0] == out == rewrite([bytes([b]) for b in data])[0]
    theirs, error = sdk_outcome(out)
    assert error is None and theirs is not None
    assert theirs["content"][0]["input"] == value == mendstream_outcome(data)[0]["content"][0]["input"]  # type: ignore[index]


@pytest.mark.parametrize("fragments", [[], [""], ["", ""]])
def test_a_start_input_without_deltas_passes_as_sent(fragments: list[str]) -> None:
    # What the API itself sends for server tools (web_fetch: the input in the start, no deltas).
    data = tool_stream(fragments, start_input={"url": "https://example.com"})
    out, rewriter = rewrite([data])
    assert out == data and not rewriter.rewritten
    assert sdk_outcome(out)[0]["content"][0]["input"] == {"url": "https://example.com"}  # type: ignore[index]


def test_a_start_input_followed_only_by_blanks_is_restated_after_them() -> None:
    # The SDK would parse the blanks as the input (and fail); the core keeps the start's input.
    data = tool_stream(["", "  ", "\n"], start_input={"url": "https://example.com"})
    assert sdk_outcome(data)[1] is not None
    out, _ = rewrite([data])
    assert [b["content_block"]["input"] for b in _starts(out)] == [{}]
    assert sdk_outcome(out)[0]["content"][0]["input"] == {"url": "https://example.com"}  # type: ignore[index]
    assert mendstream_outcome(out)[0] == mendstream_outcome(data)[0]


@pytest.mark.parametrize("fragments", [["'code'", '": 1}'], ["{", "]"], ['{"a": 1', ', "b": tru', "x}"]])
def test_a_fragment_that_can_never_parse_is_replaced_by_the_error(fragments: list[str]) -> None:
    # Clients that parse every fragment (the SDKs) would fail on it with their own error first.
    data = tool_stream(fragments)
    out, rewriter = rewrite([data])
    sent = [json.loads(e.data)["delta"]["partial_json"] for e in SSEDecoder().feed(out) if e.event == "content_block_delta"]
    assert len(sent) < len(fragments) and out.rstrip().endswith(b"}}") and b"event: error" in out
    assert rewriter.error is not None and "invalid_tool_input_error" in out.decode()
    assert "of " + str(len("".join(fragments[: len(sent) + 1]))) in str(rewriter.error)
    _, error = sdk_outcome(out)
    assert error is not None and "invalid_tool_input_error" in str(error)


# -- the rewriter's blank lines are the decoder's ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(endings=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=64),
       splits=st.lists(st.integers(0, 2000), max_size=6))
def test_any_mix_of_line_endings_is_cut_where_the_decoder_cuts(endings: list[str], splits: list[int]) -> None:
    # Every line of a stream ended by LF, CR or CRLF, chosen per line (so blank lines like LF CRLF and CR CR
    # occur): the rewriter cuts the same events as SSEDecoder (pings kept), and its output reads as the input does.
    lines = text_stream("mixed line endings, one event at a time", pieces=5).decode().split("\n")
    chosen: list[str] = []
    for i, line in enumerate(lines[:-1]):
        ending = endings[i % len(endings)]
        if not line and chosen and chosen[-1] == "\r" and ending.startswith("\n"):
            ending = "\r"  # CR then an LF-ended blank line would be one CRLF: no blank line at all
        chosen.append(ending)
    data = "".join(line + ending for line, ending in zip(lines, chosen, strict=False)).encode()
    events = [(e.event, e.data) for e in SSEDecoder().feed(data + b"\n\n")]
    out, rewriter = rewrite(split_at(data, splits))
    assert [(e.event, json.loads(e.data)) for e in SSEDecoder().feed(out)] == \
        [(name, json.loads(body)) for name, body in events if body]
    assert rewriter.error is None
    assert mendstream_outcome(out)[0] == mendstream_outcome(data)[0] == mendstream_outcome(lines_lf(lines))[0]


def lines_lf(lines: list[str]) -> bytes:
    return "\n".join(lines).encode()
