"""The parser's contract on hostile input, asserted in the normal test run with the fuzz target's own check
(fuzz/fuzz_parser.py): only StreamErrors, never an internal error, the same outcome however the input is
split. Also deep nesting in tool input, which must be the input error it is."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mendstream import MessageParser, StreamError, ToolInputError
from mendstream.core.partial_json import MAX_NESTING_DEPTH, PartialJSONError, ToolInputParser, loads
from mendstream.testing import FIXTURES as BUNDLED_FIXTURES

ROOT = Path(__file__).resolve().parent.parent


def _load_fuzz_target():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_parser", ROOT / "fuzz" / "fuzz_parser.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_parser"] = module
    spec.loader.exec_module(module)
    return module


fuzz_parser = _load_fuzz_target()
SEEDS = fuzz_parser.seed_inputs(ROOT)
FIXTURE_BODIES = [path.read_bytes() for path in sorted(BUNDLED_FIXTURES.glob("*.sse"))]


def test_seed_corpus_is_built_from_every_fixture() -> None:
    assert len(FIXTURE_BODIES) >= 30
    assert len(SEEDS) >= 2 * len(FIXTURE_BODIES)
    for data in SEEDS.values():
        body, chunks = fuzz_parser.decode_input(data)
        assert b"".join(chunks) == body


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_contract_holds_on_the_seed_corpus(name: str) -> None:
    fuzz_parser.check(SEEDS[name], time_budget=False)


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6), st.booleans())
@settings(max_examples=200, deadline=None)
def test_input_encoding_round_trips(body: bytes, cuts: list[int], byte_by_byte: bool) -> None:
    decoded, chunks = fuzz_parser.decode_input(fuzz_parser.encode_input(body, cuts, byte_by_byte=byte_by_byte))
    assert decoded == body
    assert b"".join(chunks) == body


# Snippets that reach the repair paths and the limits: broken escapes, raw controls and line breaks inside
# event JSON, deep nesting, huge numbers, cut frames, stray fields.
_HOSTILE_SNIPPETS = [
    b'"', b"\\", b'\\"' * 50, b"\x00\x01\x1f", b"\t", b"\r", b"\n", b"\n\n", b"\r\n\r\n", b"\xff\xfe",
    b"\xef\xbb\xbf", b"[" * 700, b'{"a":' * 600, b"9" * 5000, b"\\u12", b"\\ud800", b"data: ", b"event: x\n",
    b": comment\n", b"data: [DONE]\n\n", b'data: {"type":"ping"}\n\n', b"}", b"]", b",", b"null",
]


@st.composite
def _mutated_stream(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(FIXTURE_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "delete", "flip", "truncate"]))
        if action == "insert":
            body[position:position] = draw(st.sampled_from(_HOSTILE_SNIPPETS)) * draw(st.integers(1, 3))
        elif action == "delete":
            del body[position : position + draw(st.integers(1, 40))]
        elif action == "flip" and position < len(body):
            body[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del body[position:]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=8))
    return fuzz_parser.encode_input(bytes(body), cuts, byte_by_byte=draw(st.booleans()) and len(body) < 3000)


@given(_mutated_stream())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_contract_holds_on_mutated_fixtures(data: bytes) -> None:
    fuzz_parser.check(data, time_budget=False)


@given(st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_contract_holds_on_arbitrary_bytes(data: bytes) -> None:
    fuzz_parser.check(data, time_budget=False)


def test_check_reports_a_broken_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check is not vacuous: an input whose outcome is an internal error is reported as such.
    from mendstream.core.accumulate import MessageAccumulator

    def broken(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("planted bug")

    monkeypatch.setattr(MessageAccumulator, "handle", broken)
    with pytest.raises(fuzz_parser.ContractViolation, match="internal error"):
        fuzz_parser.check(SEEDS["text_basic.whole"], time_budget=False)


# ---------------------------------------------------------------------------------------------------
# Deep nesting in tool input: the partial parser, the whole-document decode, and through the parser.

_DEEP_TOOL_INPUTS = {
    "open arrays": "[" * 100_000,
    "open objects": '{"a":' * 100_000,
    "valid, depth 990": "[" * 990 + "]" * 990,
}


@pytest.mark.parametrize("text", list(_DEEP_TOOL_INPUTS.values()), ids=list(_DEEP_TOOL_INPUTS))
def test_partial_parser_refuses_nesting_past_the_limit(text: str) -> None:
    parser = ToolInputParser()
    parser.feed(text)
    assert parser.failed is not None
    assert parser.failed.reason == "maximum depth exceeded"
    step = 1 if text.startswith("[") else len('{"a":')
    assert parser.failed.position == step * MAX_NESTING_DEPTH  # the bracket that opens one too many
    with pytest.raises(PartialJSONError):
        parser.finish()


@pytest.mark.parametrize("text", list(_DEEP_TOOL_INPUTS.values()), ids=list(_DEEP_TOOL_INPUTS))
def test_loads_refuses_nesting_past_the_limit(text: str) -> None:
    with pytest.raises(PartialJSONError, match="maximum depth exceeded") as info:
        loads(text)
    assert isinstance(info.value, ValueError)


def test_loads_at_the_limit_equals_json_loads() -> None:
    text = '{"a":' * (MAX_NESTING_DEPTH - 1) + "[1]" + "}" * (MAX_NESTING_DEPTH - 1)
    assert loads(text) == json.loads(text)
    parser = ToolInputParser()
    parser.feed(text)
    assert parser.finish() == json.loads(text)


def test_loads_from_a_deep_stack_is_still_an_input_error() -> None:
    # Called with little stack left, json.loads would raise RecursionError below the limit: loads turns
    # that into the same input error.
    text = "[" * 400 + "]" * 400
    limit = sys.getrecursionlimit()

    def descend(depth: int) -> BaseException | None:
        if depth > 0:
            return descend(depth - 1)
        try:
            loads(text)
        except PartialJSONError as exc:
            return exc
        return None

    sys.setrecursionlimit(700)
    try:
        error = descend(500)
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(error, PartialJSONError)
    assert error.reason == "maximum depth exceeded"


def _tool_stream(partial_json: str) -> bytes:
    def sse(name: str, data: object) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    return (
        sse("message_start", {"type": "message_start", "message": message})
        + sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}},
        )
        + sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": partial_json}},
        )
        + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    )


@pytest.mark.parametrize("text", list(_DEEP_TOOL_INPUTS.values()), ids=list(_DEEP_TOOL_INPUTS))
def test_deep_tool_input_through_the_parser_is_a_tool_input_error(text: str) -> None:
    parser = MessageParser()
    with pytest.raises(StreamError) as info:
        parser.feed(_tool_stream(text))
        parser.end()
    assert isinstance(info.value, ToolInputError), repr(info.value)
    assert info.value.raw == text
    assert "maximum depth exceeded" in str(info.value)


_UNHASHABLE = [
    b'{"type":"content_block_delta","index":0,"delta":{"type":{"x":1},"text":"a"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":["text_delta"],"text":"a"}}',
    b'{"type":"content_block_delta","index":7,"delta":{"type":{"x":1}}}',
    b'{"type":"content_block_start","index":1,"content_block":{"type":{"x":1},"text":"a"}}',
    b'{"type":"content_block_start","index":2,"content_block":{"type":["text"]}}',
]


@pytest.mark.parametrize("event", _UNHASHABLE)
def test_unhashable_types_in_events_are_input_not_bugs(event: bytes) -> None:
    """A ``type`` that is a JSON object or array (found by the fuzzer) goes through every path as data."""
    from mendstream.core.events import Data
    from mendstream.wire.rewrite import ResponseRewriter

    head = FIXTURE_BODIES[0][: FIXTURE_BODIES[0].index(b"event: content_block_delta")]
    body = head + b"event: content_block_delta\ndata: " + event + b"\n\n"
    fuzz_parser.check(body, time_budget=False)
    for keep in (True, False):
        parser = MessageParser(keep_content=keep)
        assert all(e.to_dict() for e in parser.feed(body))
    with pytest.raises(AttributeError, match="no attribute 'text'"):
        Data({"type": {"x": 1}}).text  # noqa: B018 - a missing field of a view whose type is not a string
    rewriter = ResponseRewriter()
    out = rewriter.feed(body) + rewriter.end()
    assert out.endswith(b"\n\n")


@pytest.mark.parametrize("data", [
    b'{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}',
    b'{"type":"content_block_stop","index":0}',
    b'{"type":{"x":1},"index":"0"}',
    b'{"index":0}',
    b'{"type":null}',
])
def test_an_event_named_content_block_delta_but_typed_otherwise(data: bytes) -> None:
    """The SSE name routes to the delta fast path; the JSON's own type decides (event_name_mismatch), as it
    does for every other event, and nothing loops or escapes."""
    head = FIXTURE_BODIES[0][: FIXTURE_BODIES[0].index(b"event: content_block_delta")]
    body = head + b"event: content_block_delta\ndata: " + data + b"\n\n"
    fuzz_parser.check(body, time_budget=False)
    parser = MessageParser()
    events = parser.feed(body)
    if b'"type":"content_block_st' in data:
        assert "event_name_mismatch" in [r.kind for r in parser.repairs]
        assert events[-1].type == json.loads(data)["type"]
