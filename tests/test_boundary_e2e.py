# Survival at the HTTP boundary, end to end: the unmodified anthropic SDK (max_retries=0, so every attempt is
# mendstream's) reads a ReplayServer on 127.0.0.1 that breaks its first answer on purpose, through
# RepairTransport, AsyncRepairTransport and the proxy (the same machine behind all three). For every fault: what the client received is never repeated, the
# final message is the fixture's where the text can be continued, anything else ends in an error the SDK
# raises, stalls end within their timeout (+ 0.5 s), no connection is left checked out, and a client that
# goes away closes the upstream request within a second.
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")

from mendstream import AsyncRepairTransport, MessageParser, RepairTransport, Retry  # noqa: E402
from mendstream.testing import ReplayServer, sdk_http_module  # noqa: E402
from mendstream.testing.faults import Cut, ErrorEvent, FaultPlan, HTTPError, Schedule, Stall  # noqa: E402
from mendstream.wire.boundary import Survival  # noqa: E402
from mendstream.wire.proxy import create_app  # noqa: E402
from proxy_helpers import Served  # noqa: E402
from streams import text_stream, tool_stream  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog.  Pack my box with five dozen liquor jugs!"
FIXTURES = {"text": text_stream(TEXT, pieces=10), "tool": tool_stream()}
STALL = 0.4
PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

# name -> (plan for the first answer, fixture, what the client ends with: "message" or "error", options; the
# option hold_tools goes to the Survival of the transport)
FAULTS: dict[str, tuple[FaultPlan, str, str, dict[str, float]]] = {
    "overloaded_before_content": (ErrorEvent(after_events=1), "text", "message", {}),
    "overloaded_after_content": (ErrorEvent(after_events=6), "text", "message", {}),
    "status_529_before_streaming": (HTTPError(529, retry_after=0.01), "text", "message", {}),
    "cut_mid_text": (Cut(after_events=6), "text", "message", {}),
    "cut_mid_tool": (Cut(in_tool_input=True), "tool", "message", {}),  # held back, then made again
    "cut_mid_tool_streamed": (Cut(in_tool_input=True), "tool", "error", {"hold_tools": False}),
    "stall_without_bytes": (Stall(seconds=3, after_events=6), "text", "message", {"idle_timeout": STALL}),
    "stall_with_pings": (Stall(seconds=3, after_events=6, ping_every=0.05), "text", "message",
                         {"progress_timeout": STALL}),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES) as srv:
        yield srv


def message_of(body: bytes) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(body)
    parser.end()
    return parser.message


@dataclass
class Seen:
    """What the client saw: its text deltas (with when they came), its final message or error."""

    texts: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    message: Any = None
    error: BaseException | None = None
    error_at: float = 0.0
    busy: int = 0

    def record(self, event: Any) -> None:
        self.times.append(time.monotonic())
        if event.type == "text":
            self.texts.append(event.text)


def _busy(pool: Any) -> int:
    return sum(1 for conn in pool.connections if not conn.is_idle())


def sdk_turn(base_url: str, fixture: str, transport: Any, inner: Any) -> Seen:
    """One turn of the SDK (its own retries off) over ``transport``; ``inner`` is the pool it ends up on."""
    http = sdk_http_module()
    seen = Seen()
    with anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0,
                             http_client=http.Client(transport=transport)) as client:
        try:
            with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": fixture}) as stream:
                for event in stream:
                    seen.record(event)
                seen.message = stream.get_final_message().to_dict()
        except Exception as exc:
            seen.error, seen.error_at = exc, time.monotonic()
        seen.busy = _busy(inner._pool)
    return seen


def run_sync(base_url: str, fixture: str, **options: Any) -> Seen:
    inner = sdk_http_module().HTTPTransport()
    return sdk_turn(base_url, fixture, RepairTransport(inner, **options), inner)


async def run_async(base_url: str, fixture: str, **options: Any) -> Seen:
    http = sdk_http_module()
    inner = http.AsyncHTTPTransport()
    seen = Seen()
    async with anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-test", max_retries=0,
            http_client=http.AsyncClient(transport=AsyncRepairTransport(inner, **options))) as client:
        try:
            async with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": fixture}) as stream:
                async for event in stream:
                    seen.record(event)
                seen.message = (await stream.get_final_message()).to_dict()
        except Exception as exc:
            seen.error, seen.error_at = exc, time.monotonic()
        seen.busy = _busy(inner._pool)
    return seen


def run_proxy(base_url: str, fixture: str, *, retry: Retry | None = None, hold_tools: bool = True,
              **stall: float) -> Seen:
    """The SDK with its own HTTP client, pointed at a proxy in front of ``base_url``."""
    survival = Survival(retry, hold_tools=hold_tools, **stall) if retry or stall else None
    with Served(create_app(base_url, survival=survival, coalesce=None)) as proxy:
        inner = sdk_http_module().HTTPTransport()
        return sdk_turn(proxy.base_url, fixture, inner, inner)


MODES = ["sync", "async", "proxy"]


def run(mode: str, base_url: str, fixture: str, **options: Any) -> Seen:
    if mode == "sync":
        return run_sync(base_url, fixture, **options)
    if mode == "proxy":
        return run_proxy(base_url, fixture, **options)
    return asyncio.run(run_async(base_url, fixture, **options))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_matrix_through_the_transports_and_the_proxy(server: ReplayServer, fault: str, mode: str) -> None:
    plan, fixture, outcome, options = FAULTS[fault]
    server.reset(Schedule((plan,)))
    stall = {k: v for k, v in options.items() if k.endswith("_timeout")}
    retry = Retry(on_partial="continue", backoff=0.01, seed=1)
    held = {"hold_tools": options["hold_tools"]} if "hold_tools" in options else {}
    seen = run(mode, server.base_url, fixture, retry=retry, **stall, **held)
    assert seen.busy == 0, "a connection was left checked out"
    expected = message_of(FIXTURES[fixture])
    if outcome == "message":
        assert seen.error is None, repr(seen.error)
        assert "".join(seen.texts) == (TEXT if fixture == "text" else "Checking.")  # nothing repeated or missing
        assert seen.message["content"] == expected["content"]
        assert seen.message["stop_reason"] == expected["stop_reason"]
        if fixture == "text":  # usage summed over the attempts whose answers the client sees spliced
            continued = fault not in ("overloaded_before_content", "status_529_before_streaming")
            assert seen.message["usage"]["input_tokens"] == expected["usage"]["input_tokens"] * (1 + continued)
    else:
        assert seen.error is not None and seen.message is None
        assert "incomplete_stream_error" in str(seen.error)
        assert "".join(seen.texts) == "Checking."
        assert len(server.requests) == 1  # a tool call under way is not continued
    if stall:
        gaps = [b - a for a, b in zip(seen.times, seen.times[1:], strict=False)]
        assert max(gaps) <= STALL + 0.5, gaps


@pytest.mark.parametrize("mode", MODES)
def test_raise_policy_gives_the_client_the_upstream_error(server: ReplayServer, mode: str) -> None:
    server.reset(Schedule((ErrorEvent(after_events=6),)))
    seen = run(mode, server.base_url, "text", retry=Retry(backoff=0.01))
    assert isinstance(seen.error, anthropic.APIStatusError) and "overloaded_error" in str(seen.error)
    assert len(server.requests) == 1 and seen.busy == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_boundary_that_gives_up_tells_the_client_not_to_retry(server: ReplayServer, mode: str) -> None:
    server.reset(Schedule((HTTPError(529),) * 3))
    seen = run(mode, server.base_url, "text", retry=Retry(max_attempts=2, backoff=0.01))
    assert isinstance(seen.error, anthropic.APIStatusError) and seen.error.status_code == 529
    assert seen.error.response.headers["x-should-retry"] == "false"
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_off_by_default_the_first_fault_reaches_the_client(server: ReplayServer, mode: str) -> None:
    server.reset(Schedule((ErrorEvent(after_events=1),)))
    seen = run(mode, server.base_url, "text")
    assert isinstance(seen.error, anthropic.APIStatusError) and len(server.requests) == 1


def test_the_proxy_survives_by_default(server: ReplayServer) -> None:
    """No options: the proxy's PROXY_SURVIVAL retries a mid-stream overload and continues the text."""
    server.reset(Schedule((ErrorEvent(after_events=6),)))
    http = sdk_http_module()
    with Served(create_app(server.base_url)) as proxy, \
            anthropic.Anthropic(base_url=proxy.base_url, api_key="sk-test", max_retries=0,
                                http_client=http.Client()) as client, \
            client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": "text"}) as stream:
        texts = [event.text for event in stream if event.type == "text"]
        message = stream.get_final_message()
        assert "".join(texts) == TEXT and message.content[0].text == TEXT  # type: ignore[union-attr]
        assert len(server.requests) == 2
        assert proxy.app.attempts == {"first": 1, "continue": 1}



@pytest.mark.parametrize("coalesce", [None, 0.01])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_client_that_goes_away_closes_the_upstream_request(server: ReplayServer, mode: str,
                                                             coalesce: float | None) -> None:
    server.reset(Schedule((Stall(seconds=30, after_events=6, ping_every=0.05),)))
    http = sdk_http_module()
    options = {"retry": Retry(on_partial="continue"), "progress_timeout": 20.0, "coalesce": coalesce}
    if mode == "sync":
        inner = http.HTTPTransport()
        client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0,
                                     http_client=http.Client(transport=RepairTransport(inner, **options)))
        with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": "text"}) as stream:
            for event in stream:
                if event.type == "text":
                    break  # the agent stops reading
        t0 = time.monotonic()
        while _busy(inner._pool) and time.monotonic() - t0 < 1.0:
            time.sleep(0.02)
        assert _busy(inner._pool) == 0 and time.monotonic() - t0 < 1.0
        client.close()
        return

    async def main() -> None:
        inner = http.AsyncHTTPTransport()
        client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0,
                                          http_client=http.AsyncClient(transport=AsyncRepairTransport(inner, **options)))
        async with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": "text"}) as stream:
            async for event in stream:
                if event.type == "text":
                    break
        t0 = time.monotonic()
        while _busy(inner._pool) and time.monotonic() - t0 < 1.0:
            await asyncio.sleep(0.02)
        assert _busy(inner._pool) == 0 and time.monotonic() - t0 < 1.0
        await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", MODES)
def test_the_response_ends_after_message_stop_while_the_upstream_holds_the_connection(
    server: ReplayServer, mode: str
) -> None:
    events = FIXTURES["text"].count(b"\n\n")
    server.reset(Schedule((Stall(seconds=5, after_events=events),)))  # all sent, then the connection held
    t0 = time.monotonic()
    seen = run(mode, server.base_url, "text")
    assert seen.error is None and "".join(seen.texts) == TEXT
    assert time.monotonic() - t0 < 2.0
