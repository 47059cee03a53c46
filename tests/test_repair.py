"""The slow path that mends event JSON (mendstream.core.repair): same results as the regex mend it replaced,
linear time and small memory on hostile input, and deep nesting refused as the input error it is."""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mendstream.core.parser as parser_module
from mendstream import MessageParser, StreamError
from mendstream.core.partial_json import MAX_NESTING_DEPTH, nesting_exceeded
from mendstream.core.repair import Repair, decode_event_json, mend_json_strings
from mendstream.core.sse import ServerSentEvent
from mendstream.errors import EventDecodeError
from workcount import count_work, peak_memory

# ---------------------------------------------------------------------------------------------------
# The implementation this module had before it became a single scan, kept verbatim as the reference for
# what every repair must still produce. It is quadratic on unterminated strings, so it only sees small input.

_REF_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_REF_BODY_FAULT = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])|(\\)|([\x00-\x1f])')


def reference_mend(text: str) -> tuple[str, list[str], int]:
    controls: list[str] = []
    invalid = 0

    def fix_body(match: re.Match[str]) -> str:
        nonlocal invalid
        if match.group(1) is not None:
            invalid += 1
            return "\\\\"
        char = match.group(2)
        if char is not None:
            controls.append(f"U+{ord(char):04X}")
            return f"\\u{ord(char):04x}"
        return match.group(0)

    def fix_string(match: re.Match[str]) -> str:
        literal = match.group(0)
        return '"' + _REF_BODY_FAULT.sub(fix_body, literal[1:-1]) + '"'

    return _REF_STRING.sub(fix_string, text), controls, invalid


def reference_decode(text: str) -> tuple[str, Any, list[tuple[str, str]]]:
    """('ok', value, repairs) or ('error', None, repairs), as the old decode_event_json decided."""
    try:
        return "ok", json.loads(text), []
    except ValueError:
        pass
    mended, controls, invalid = reference_mend(text)
    repairs = []
    if controls:
        unique = sorted(set(controls))
        repairs.append(
            (
                "control_characters",
                f"escaped {len(controls)} raw control character(s) inside JSON strings ({', '.join(unique)})",
            )
        )
    if invalid:
        repairs.append(("invalid_escape", f"kept {invalid} invalid escape(s) in JSON strings as literal backslashes"))
    try:
        return "ok", json.loads(mended), repairs
    except ValueError:
        return "error", None, []  # records are not returned with an error


def decode(text: str | bytes) -> tuple[str, Any, list[tuple[str, str]]]:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    sse = ServerSentEvent("content_block_delta", raw, offset=100, ordinal=3)
    try:
        value, repairs = decode_event_json(sse, None)
    except EventDecodeError as exc:
        assert exc.raw == raw
        assert exc.offset == 100
        return "error", None, []
    for repair in repairs:
        assert (repair.offset, repair.event_index) == (100, 3)
    return "ok", value, [(r.kind, r.detail) for r in repairs]


# Text made of the characters that matter to the mend: quotes, backslashes, escape letters, hex digits,
# control characters, JSON structure. Hypothesis finds the corners (escapes cut by a closing quote, lone
# backslashes at the end, controls right after a backslash) faster from this alphabet than from all of Unicode.
_ALPHABET = st.sampled_from([*'"\\\\\\u0aF9bnt/{}[],: x\x00\x01\t\n\x1f\x7fé', "\\ud800", "\\udc00"])
_MENDABLE_TEXT = st.lists(_ALPHABET, max_size=60).map("".join)


def _jsonish(*, lone_backslash: bool = True) -> st.SearchStrategy[str]:
    """JSON-shaped text whose strings hold the faults the mend repairs (and, if asked, lone backslashes,
    which can swallow a closing quote and so make the text unrepairable)."""
    pieces = ["a", "\\n", '\\"', "\\\\", "\\u00e9", "\\q", "\\u12", "\t", "\x01", "\x1f", "é"]
    body = st.lists(st.sampled_from([*pieces, "\\"] if lone_backslash else pieces), max_size=8).map("".join)
    string = body.map(lambda b: f'"{b}"')
    scalar = st.one_of(string, st.sampled_from(["1", "-2.5e3", "true", "null"]))
    value = st.recursive(
        scalar,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(string, inner), max_size=4).map(
                lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
            ),
        ),
        max_leaves=12,
    )
    return value


@given(_MENDABLE_TEXT)
@settings(max_examples=1500, deadline=None)
def test_mend_equals_the_regex_mend_it_replaced(text: str) -> None:
    reference, controls, invalid = reference_mend(text)
    mended = mend_json_strings(text)
    assert mended.text == reference
    assert mended.controls == dict(Counter(controls))
    assert mended.invalid_escapes == invalid
    counted = mend_json_strings(text, escape_controls=False)
    assert (counted.controls, counted.invalid_escapes) == (mended.controls, mended.invalid_escapes)


@given(st.one_of(_MENDABLE_TEXT, _jsonish()))
@settings(max_examples=1500, deadline=None)
def test_decode_equals_the_old_decode(text: str) -> None:
    # Values, success or failure, and every repair record (kind and detail) are what they were.
    assert repr(decode(text)) == repr(reference_decode(text))


@given(_jsonish(lone_backslash=False), st.lists(st.sampled_from(["\\q", "\t", "\x00", "\\u1", "\x1b"]), min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_decode_of_faulty_json_matches_json_loads_of_the_mended_text(text: str, faults: list[str]) -> None:
    # A string member with the faults in it: always repairable, and the value is what the reference gives.
    document = '{"t":"' + "".join(faults) + '","v":' + text + "}"
    outcome = decode(document)
    assert outcome[0] == "ok"
    assert repr(outcome) == repr(reference_decode(document))
    assert outcome[2], "faults were present, so a repair is recorded"


def test_fixture_style_records_are_unchanged() -> None:
    text = '{"type":"content_block_delta","delta":{"type":"text_delta","text":"a\tb\x1b[0m\\Hc\\u12"}}'
    status, value, repairs = decode(text)
    assert status == "ok"
    assert value["delta"]["text"] == "a\tb\x1b[0m\\Hc\\u12"
    assert repairs == [
        ("control_characters", "escaped 2 raw control character(s) inside JSON strings (U+0009, U+001B)"),
        ("invalid_escape", "kept 2 invalid escape(s) in JSON strings as literal backslashes"),
    ]


def test_text_outside_strings_and_after_an_unterminated_string_is_left_alone() -> None:
    assert mend_json_strings('\t{"a\t": 1}\t').text == '\t{"a\\u0009": 1}\t'
    # the second string never closes: it and everything after it stay exactly as they were
    assert mend_json_strings('"\\q" "\\q\t\\"').text == '"\\\\q" "\\q\t\\"'
    assert mend_json_strings('"ab\\').invalid_escapes == 0


def test_error_keeps_the_raw_data_and_says_where() -> None:
    raw = b'{"a": "b\\q", oops}'
    sse = ServerSentEvent("message_delta", raw, offset=7, ordinal=2)
    with pytest.raises(EventDecodeError) as info:
        decode_event_json(sse, {"id": "m"})
    assert info.value.raw == raw
    assert info.value.snapshot == {"id": "m"}
    assert "event #2 at byte 7 (message_delta)" in str(info.value)
    assert "not JSON even after repair" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Deep nesting: an input error naming the limit, never RecursionError or an "internal error"

_DEEP = [
    ("open arrays", "[" * 100_000),
    ("open objects", '{"a":' * 100_000),
    ("valid, depth 990", "[" * 990 + "]" * 990),
    ("valid objects, depth 600", '{"a":' * 600 + "1" + "}" * 600),
    ("deep after a fault", '["\t",' + "[" * 5000),
]


@pytest.mark.parametrize(("name", "text"), _DEEP, ids=[name for name, _ in _DEEP])
def test_deep_nesting_is_an_event_decode_error(name: str, text: str) -> None:
    raw = text.encode()
    with pytest.raises(EventDecodeError, match=f"limit of {MAX_NESTING_DEPTH} containers") as info:
        decode_event_json(ServerSentEvent("content_block_delta", raw, offset=5, ordinal=1), None)
    assert info.value.raw == raw


def test_nesting_at_the_limit_decodes() -> None:
    text = "[" * MAX_NESTING_DEPTH + "]" * MAX_NESTING_DEPTH
    value, repairs = decode_event_json(ServerSentEvent(None, text.encode()), None)
    assert repairs == []
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    assert depth == MAX_NESTING_DEPTH - 1


@given(st.integers(0, 3), st.lists(st.sampled_from(["[", "]", "{", "}", '"[', '"', "\\", ",", "a"]), max_size=40))
@settings(max_examples=800, deadline=None)
def test_nesting_exceeded_matches_a_plain_bracket_walk(limit: int, pieces: list[str]) -> None:
    text = "".join(pieces)
    expected = None
    depth = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            tail = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL).match(text, i + 1)
            if tail is None:
                break
            i = tail.end()
            continue
        if char in "[{":
            depth += 1
            if depth > limit:
                expected = i
                break
        elif char in "]}":
            depth -= 1
        i += 1
    assert nesting_exceeded(text, limit) == expected


def _message_parser_outcome(body: bytes) -> StreamError | None:
    parser = MessageParser()
    try:
        parser.feed(body)
        parser.end()
    except StreamError as exc:
        return exc
    return None


def _sse(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


_START = _sse(
    "message_start",
    json.dumps(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        }
    ),
)


@pytest.mark.parametrize(("name", "text"), _DEEP, ids=[name for name, _ in _DEEP])
def test_deep_event_json_through_the_parser(name: str, text: str) -> None:
    error = _message_parser_outcome(_START + _sse("content_block_delta", text))
    assert isinstance(error, EventDecodeError), repr(error)
    # One limit for event JSON, whichever path decodes it (jiter's, shared with the repair path).
    assert parser_module.MAX_NESTING == MAX_NESTING_DEPTH
    assert f"limit of {MAX_NESTING_DEPTH}" in str(error)
    assert error.raw == text.encode()
    assert error.snapshot is not None and error.snapshot["id"] == "msg_1"


# ---------------------------------------------------------------------------------------------------
# Complexity: the work done on n and 8n bytes of hostile input. `count_work` counts Python bytecodes and
# calls (deterministic); the CPU-time ratio is a secondary check with a factor that only super-linear
# growth can break (linear is 8, quadratic 64, the old mend 120).

def _hostile(shape: str, n: int) -> str:
    if shape == "escaped quotes, unterminated":
        return '{"t":"' + '\\"' * n
    if shape == "escaped quotes, closed":
        return '{"t":"' + '\\"' * n + '\t"}'
    if shape == "raw control characters":
        return '{"t":"' + "\x01" * n + '"}'
    if shape == "alternating controls":
        return '{"t":"' + "a\x02" * n + '"}'
    if shape == "invalid escapes":
        return '{"t":"' + "\\q" * n + '"}'
    if shape == "backslash run, odd":
        return '{"t":"' + "\\" * (2 * n + 1) + '"}'
    if shape == "many small strings with controls":
        return "[" + ",".join(['"\t"'] * n) + "]"
    if shape == "quotes and brackets":
        return '["' + '\\"[' * n
    if shape == "bracket pairs":
        return "[" + "[]," * n + "[]]" + "\x01"
    if shape == "nested to the limit, then brackets":
        return "[" * (MAX_NESTING_DEPTH - 1) + "[]," * n + "\x01"
    if shape == "open brackets":
        return "[" * n
    if shape == "huge number":
        return '{"n":' + "7" * n + "}"
    if shape == "huge float":
        return '{"n":1.' + "5" * n + "e" + "9" * 20 + "}"
    raise AssertionError(shape)


HOSTILE_SHAPES = [
    "escaped quotes, unterminated",
    "escaped quotes, closed",
    "raw control characters",
    "alternating controls",
    "invalid escapes",
    "backslash run, odd",
    "many small strings with controls",
    "quotes and brackets",
    "bracket pairs",
    "nested to the limit, then brackets",
    "open brackets",
    "huge number",
    "huge float",
]


def _decode_quietly(text: str) -> None:
    sse = ServerSentEvent("content_block_delta", text.encode("utf-8"))
    with contextlib.suppress(EventDecodeError):
        decode_event_json(sse, None)


@pytest.mark.parametrize("shape", HOSTILE_SHAPES)
def test_repair_work_grows_linearly(shape: str) -> None:
    small, large = _hostile(shape, 2_000), _hostile(shape, 16_000)
    small_work = count_work(lambda: _decode_quietly(small))
    large_work = count_work(lambda: _decode_quietly(large))
    assert large_work.operations <= 12 * max(small_work.operations, 50), (small_work, large_work)
    # Secondary, and deliberately loose: CPU time, best of three.
    assert large_work.seconds <= 30 * small_work.seconds + 0.05, (small_work, large_work)


# Bracket shapes are left out: their peak is the decoded value itself (an empty list is 56 bytes for 3 bytes
# of "[],"), which json.loads or jiter would build just the same from valid input; the repair adds nothing.
@pytest.mark.parametrize("shape", [s for s in HOSTILE_SHAPES if "bracket" not in s])
def test_repair_memory_is_a_small_multiple_of_the_event(shape: str) -> None:
    text = _hostile(shape, 200_000)
    raw = text.encode("utf-8")
    peak = peak_memory(lambda: _decode_quietly(text))
    assert peak <= 8 * len(raw), f"{peak / len(raw):.1f}x"  # measured: 2.6-5.0x


def test_control_character_event_memory_through_the_parser() -> None:
    # The shape the audit measured at 200-280x: one text delta made of raw control characters.
    data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + "\x07" * 500_000 + '"}}'
    body = _START + _sse(
        "content_block_start",
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    ) + _sse("content_block_delta", data)
    parser = MessageParser()
    peak = peak_memory(lambda: parser.feed(body))
    assert peak <= 12 * len(data), f"{peak / len(data):.1f}x"
    assert [r.kind for r in parser.repairs] == ["control_characters"]
    assert isinstance(parser.repairs[0], Repair)
    assert "escaped 500000 raw control character(s)" in parser.repairs[0].detail


@pytest.mark.parametrize("chunk_pieces", [2, 3, 7])
def test_mend_joins_pieces_in_chunks_without_changing_the_result(
    chunk_pieces: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks make every path through the chunking (and the undo of an unterminated string that
    # spans several chunks) run on short text, where the reference is quick.
    import mendstream.core.repair as repair_module

    monkeypatch.setattr(repair_module, "_CHUNK_PIECES", chunk_pieces)
    rng = random.Random(chunk_pieces)
    alphabet = ['"', "\\", "\\q", "\t", "\x01", "a", "\\n", '\\"', "é", "{", "]"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        reference, controls, invalid = reference_mend(text)
        mended = mend_json_strings(text)
        assert (mended.text, mended.controls, mended.invalid_escapes) == (reference, dict(Counter(controls)), invalid)


def test_mend_of_large_text_equals_the_reference() -> None:
    text = '{"a":"' + "\\q\t" * 20_000 + '","b":"' + "x\\y\x02" * 20_000 + '"} "' + "\\q\x03" * 20_000
    reference, controls, invalid = reference_mend(text)
    mended = mend_json_strings(text)
    assert (mended.text, mended.controls, mended.invalid_escapes) == (reference, dict(Counter(controls)), invalid)


def test_snapshot_is_built_only_when_decoding_fails() -> None:
    calls: list[int] = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return {"id": "m"}

    value, repairs = decode_event_json(ServerSentEvent(None, b'{"a":"\t"}'), snapshot)
    assert value == {"a": "\t"} and [r.kind for r in repairs] == ["control_characters"]
    assert calls == []
    with pytest.raises(EventDecodeError) as info:
        decode_event_json(ServerSentEvent(None, b'{"a":"\t"'), snapshot)
    assert info.value.snapshot == {"id": "m"}
    assert calls == [1]
