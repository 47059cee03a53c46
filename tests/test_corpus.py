"""Every complete real recorded stream in ../shared/corpus: mendstream's final message equals what the SDK's
beta accumulator (`client.beta.messages.stream()`) builds from the same bytes, whole, byte by byte and at
random splits, apart from the deliberate differences named in DIFFERENCES.

The corpus is data recorded by other projects (see its README and manifest.json); it is read in place and
never copied into this repository. The tests skip when it is absent, as in a user's clone.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder as RefDecoder
from httpx_sse._decoders import SSELineDecoder as RefLineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from mendstream import MessageParser
from mendstream.core.accumulate import cuts_output
from sdk_reference import sdk_http_module
from splitting import split_at

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
FILES = sorted(p.name for p in CORPUS.glob("*.sse")) if CORPUS.is_dir() else []
# A complete stream is one with message_stop; the others end early on purpose (IncompleteStreamError).
COMPLETE = [name for name in FILES if b'"message_stop"' in (CORPUS / name).read_bytes()]

pytestmark = pytest.mark.skipif(not FILES, reason="../shared/corpus is absent (it is not part of the repository)")

# Where mendstream deliberately keeps more than the SDK's beta accumulator. Each is applied to the SDK's
# message to form the expectation, and only when the stream's own bytes show the case.
DIFFERENCES = {
    "usage_cache_creation_in_message_delta": (
        "a message_delta whose usage carries cache_creation: mendstream takes it (usage counts in "
        "message_delta are cumulative, every non-null one replaces the message's); the SDK keeps the "
        "message_start value"
    ),
    "unknown_message_delta_fields": (
        "a top-level message_delta field the SDK does not model (e.g. provider_metadata from a gateway): "
        "mendstream puts it on the message; the SDK drops it"
    ),
    "input_incomplete_marker": (
        "a tool input cut short by a stop reason that may cut the output (max_tokens, ...): both keep what "
        "parses of it; mendstream also marks the block \"input_incomplete\": true"
    ),
}
# Top-level message_delta fields the beta SDK reads (it puts the non-null ones on the message).
_SDK_MESSAGE_DELTA_FIELDS = {"type", "delta", "usage", "context_management", "input_transformations"}


def sdk_beta_message(data: bytes) -> dict[str, Any]:
    """The final message of the SDK's beta MessageStream over ``data``, driven offline."""
    import anthropic

    http = sdk_http_module()

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = anthropic.Anthropic(
        api_key="test", base_url="http://sdk.test", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler)),
    )
    with client.beta.messages.stream(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]) as s:
        for _ in s:
            pass
        message: dict[str, Any] = s.get_final_message().to_dict(mode="json")
    return message


def wire_events(data: bytes) -> list[Any]:
    """The stream's JSON events as httpx-sse (the reference decoder) frames them."""
    line_decoder, decoder = RefLineDecoder(), RefDecoder()
    out = []
    for line in line_decoder.decode(data.decode("utf-8", "replace")) + line_decoder.flush():
        sse = decoder.decode(line)
        if sse is not None and sse.data.lstrip().startswith("{"):
            out.append(json.loads(sse.data))
    return out


def without_none(value: Any) -> Any:
    """Absent and null are the same value of an optional field in the SDK's models (its to_dict() shows
    fields it set to None, such as stop_details); compare without the nulls."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


@cache
def expected(name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The SDK's message with the named differences applied, and the names of those that applied."""
    data = (CORPUS / name).read_bytes()
    message = sdk_beta_message(data)
    applied: list[str] = []
    for event in wire_events(data):
        if type(event) is not dict or event.get("type") != "message_delta":
            continue
        usage = event.get("usage")
        if type(usage) is dict and usage.get("cache_creation") is not None:
            message["usage"]["cache_creation"] = usage["cache_creation"]
            applied.append("usage_cache_creation_in_message_delta")
        for key, value in event.items():
            if key not in _SDK_MESSAGE_DELTA_FIELDS and value is not None:
                message[key] = value
                applied.append("unknown_message_delta_fields")
    for index in cut_tool_inputs(data):
        message["content"][index]["input_incomplete"] = True
        applied.append("input_incomplete_marker")
    assert set(applied) <= set(DIFFERENCES)
    return without_none(message), tuple(applied)


def cut_tool_inputs(data: bytes) -> list[int]:
    """The indexes of tool blocks whose input the stream's stop reason cut short: fragments that
    json.loads (strict=False) refuses, under a stop reason that may cut the output."""
    fragments: dict[int, list[str]] = {}
    stop_reason = None
    for event in wire_events(data):
        if type(event) is not dict:
            continue
        if event.get("type") == "content_block_delta" and (event.get("delta") or {}).get("type") == "input_json_delta":
            fragments.setdefault(event["index"], []).append(event["delta"].get("partial_json", ""))
        elif event.get("type") == "message_delta":
            stop_reason = (event.get("delta") or {}).get("stop_reason", stop_reason)
    cut = []
    for index, parts in fragments.items():
        text = "".join(parts)
        try:
            json.loads(text, strict=False) if text.strip() else None
        except ValueError:
            if cuts_output(stop_reason):
                cut.append(index)
    return cut


def parse(chunks: list[bytes]) -> tuple[dict[str, Any], list[tuple[str, int | None]]]:
    parser = MessageParser()
    for chunk in chunks:
        parser.feed(chunk)
    parser.end()
    assert parser.complete
    return parser.message, [(r.kind, r.index) for r in parser.repairs]


def test_the_corpus_is_there_and_mostly_complete() -> None:
    assert len(FILES) >= 170 and len(COMPLETE) >= len(FILES) - 5


@pytest.mark.parametrize("name", COMPLETE)
def test_final_message_equals_the_sdk_beta_accumulator(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    message, _ = parse([data])
    want, _ = expected(name)
    assert without_none(message) == want


@pytest.mark.parametrize("name", COMPLETE)
def test_byte_by_byte_and_seeded_splits_give_the_same_message(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    whole = parse([data])
    assert parse([data[i : i + 1] for i in range(len(data))]) == whole
    rng = random.Random(name)
    for _ in range(3):
        points = [rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 40))]
        assert parse(split_at(data, points)) == whole


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(COMPLETE or ["none"]), points=st.lists(st.integers(min_value=0), max_size=30))
def test_random_splits_give_the_same_message(name: str, points: list[int]) -> None:
    data = (CORPUS / name).read_bytes()
    assert parse(split_at(data, points)) == parse([data])


def test_every_named_difference_occurs_in_the_corpus() -> None:
    """Each exception above is there for a stream that needs it (so none lingers after the SDK catches up)."""
    seen = {difference for name in COMPLETE for difference in expected(name)[1]}
    assert seen == set(DIFFERENCES)


# -- the gaps issue 8 found, each on the stream that shows it -----------------------------------------------


def _message(name: str) -> tuple[dict[str, Any], list[str]]:
    parser = MessageParser()
    parser.feed((CORPUS / name).read_bytes())
    parser.end()
    return parser.message, [r.kind for r in parser.repairs]


def test_compaction_delta_fills_the_compaction_block() -> None:
    message, _ = _message("vercel-ai__anthropic-compaction.1.sse")
    blocks = [b for b in message["content"] if b["type"] == "compaction"]
    assert blocks and all(isinstance(b.get("content"), str) and b["content"] for b in blocks)


def test_context_management_from_message_delta_is_kept() -> None:
    message, _ = _message("vercel-ai__anthropic-clear-tool-uses.1.sse")
    assert message.get("context_management") is not None


def test_repeated_start_index_starts_a_new_block() -> None:
    message, repairs = _message("vercel-ai__anthropic-code-execution-pdf-skill.1.sse")
    servers = [b for b in message["content"] if b["type"] == "server_tool_use"]
    assert servers and all(b["id"].startswith("srvtoolu_") and b["name"] for b in servers)
    assert "block_index_repeated" in repairs


def test_tool_input_cut_by_max_tokens_completes_with_the_partial_input_marked_incomplete() -> None:
    name = "anthropic-sdk-python__incomplete_partial_json_response.sse"
    parser = MessageParser()
    parser.feed((CORPUS / name).read_bytes())
    parser.end()
    message = parser.message
    assert message["stop_reason"] == "max_tokens"
    tool = next(b for b in message["content"] if b["type"] == "tool_use")
    assert tool["input"]["filename"] == "taxes.txt" and tool["input"]["lines_of_text"]
    assert tool["input_incomplete"] is True
    (repair,) = [r for r in parser.repairs if r.kind == "tool_input_cut"]
    assert repair.raw is not None and repair.raw.endswith('"Filing taxes') and repair.index == tool_index(message)


def tool_index(message: dict[str, Any]) -> int:
    return next(i for i, b in enumerate(message["content"]) if b["type"] == "tool_use")
