"""Issue 19 §10: with the SDK's OpenTelemetry tracing on, a mendstream stream's span is as complete as the
span of the SDK's own ``.stream()`` over the same bytes (the replay server on 127.0.0.1, the OpenTelemetry SDK's
in-memory exporter): response id, model, usage, stop reason, time to first chunk, output content, status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import mendstream
from conftest import BASIC_SSE, error_sse
from mendstream.errors import StreamError
from mendstream.testing import ReplayServer
from mendstream.testing.faults import Cut
from streams import sse, tool_stream

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

USAGE_STREAM = b"".join(sse(e) for e in [
    {"type": "message_start", "message": {
        "id": "msg_tr", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 50, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 20,
                  "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 1, "service_tier": "standard"}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Done."}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}}},
    {"type": "message_stop"},
])
STREAMS = {"basic": BASIC_SSE, "tool": tool_stream(), "usage": USAGE_STREAM, "overloaded": error_sse("overloaded_error"),
           "no_stop": BASIC_SSE[: BASIC_SSE.index(b"event: message_stop")]}
PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}],
                          "thinking": {"type": "enabled", "budget_tokens": 32}}
# Attributes that differ between two calls however faithful: the replay server numbers its request ids, and
# the time to the first chunk is a measurement (both must have it).
VOLATILE = {"anthropic.request.id", "gen_ai.response.time_to_first_chunk"}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(STREAMS, select="header") as srv:
        yield srv


def options(exporter: InMemorySpanExporter, content: bool) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traces = {"content_mode": "content"} if content else {}
    return {"open_telemetry": {"tracer_provider": provider, "traces": traces}}


def pick(name: str, betas: list[str] | None) -> dict[str, Any]:
    out = {**PARAMS, "extra_headers": {"x-mendstream-fixture": name}}
    if betas is not None:
        out["betas"] = betas
    return out


def read_sync(stream_cm: Any) -> BaseException | None:
    try:
        with stream_cm as s:
            s.until_done()
    except Exception as exc:
        return exc
    return None


async def read_async(stream_cm: Any) -> BaseException | None:
    try:
        async with stream_cm as s:
            await s.until_done()
    except Exception as exc:
        return exc
    return None


def spans_of(exporter: InMemorySpanExporter) -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for span in exporter.get_finished_spans():
        out.append((span.name, dict(span.attributes or {}), span.status.status_code.name))
    exporter.clear()
    return out


def assert_same_span(theirs: tuple[str, dict[str, Any], str], ours: tuple[str, dict[str, Any], str]) -> None:
    assert ours[0] == theirs[0] and ours[2] == theirs[2]
    for key in VOLATILE:
        assert (key in ours[1]) == (key in theirs[1]), key
    if "gen_ai.response.time_to_first_chunk" in ours[1]:
        assert ours[1]["gen_ai.response.time_to_first_chunk"] > 0
    strip = lambda attrs: {k: v for k, v in attrs.items() if k not in VOLATILE}  # noqa: E731
    assert strip(ours[1]) == strip(theirs[1])


NAMES = ["basic", "tool", "usage", "overloaded", "no_stop"]


@pytest.mark.parametrize("content", [False, True], ids=["metadata", "content"])
@pytest.mark.parametrize("betas", [None, ["x-beta"]], ids=["messages", "beta"])
@pytest.mark.parametrize("name", NAMES)
def test_the_span_is_the_sdks(
    server: ReplayServer, exporter: InMemorySpanExporter, name: str, betas: list[str] | None, content: bool
) -> None:
    with anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0,
                             **options(exporter, content)) as client:
        messages = client.beta.messages if betas else client.messages
        their_error = read_sync(messages.stream(**pick(name, betas)))
        (theirs,) = spans_of(exporter)
        our_error = read_sync(mendstream.stream(client, **pick(name, betas)))
        (ours,) = spans_of(exporter)
    assert (their_error is None) == (our_error is None) or name == "no_stop"
    assert_same_span(theirs, ours)
    assert "gen_ai.response.id" in ours[1] or name == "overloaded"
    if content and name != "overloaded":
        assert json.loads(ours[1]["gen_ai.output.messages"])[0]["role"] == "assistant"


@pytest.mark.parametrize("name", ["basic", "overloaded"])
async def test_the_span_is_the_sdks_async(server: ReplayServer, exporter: InMemorySpanExporter, name: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0,
                                        **options(exporter, True)) as client:
        await read_async(client.messages.stream(**pick(name, None)))
        (theirs,) = spans_of(exporter)
        error = await read_async(mendstream.astream(client, **pick(name, None)))
        (ours,) = spans_of(exporter)
    assert_same_span(theirs, ours)
    if name == "overloaded":
        assert isinstance(error, StreamError) and ours[1]["error.type"] == "overloaded_error"


def test_a_dropped_connection_fails_the_span_as_the_sdks(exporter: InMemorySpanExporter) -> None:
    with ReplayServer(STREAMS, select="header", faults=Cut(after_events=3)) as srv, anthropic.Anthropic(
        base_url=srv.base_url, api_key="k", max_retries=0, **options(exporter, True)
    ) as client:
        read_sync(client.messages.stream(**pick("basic", None)))
        (theirs,) = spans_of(exporter)
        read_sync(mendstream.stream(client, **pick("basic", None)))
        (ours,) = spans_of(exporter)
    assert_same_span(theirs, ours)
    assert ours[2] == "ERROR" and ours[1]["error.type"] == "connection_error"


def test_a_stream_closed_early_ends_its_span(server: ReplayServer, exporter: InMemorySpanExporter) -> None:
    with anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0,
                             **options(exporter, False)) as client:
        with client.messages.stream(**pick("basic", None)) as s:
            next(iter(s))
        (theirs,) = spans_of(exporter)
        with mendstream.stream(client, **pick("basic", None)) as s:
            next(iter(s))
        (ours,) = spans_of(exporter)
    assert_same_span(theirs, ours)


def test_without_tracing_nothing_is_fed(server: ReplayServer) -> None:
    from mendstream.streaming.tracing import SpanFeed

    with anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0,
                             open_telemetry=False) as client, mendstream.stream(client, **pick("basic", None)) as s:
        assert SpanFeed.open(s.response, lambda: None) is None
        assert s.get_final_text() == "Hello world"
