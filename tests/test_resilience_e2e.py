# Resilience end to end: every fault x every on_partial policy x sync/async x the SDK transport (the real
# anthropic client) and the httpx transport, against a fault-injecting uvicorn server on 127.0.0.1. Checks
# that the consumer never sees content twice (except after a RestartEvent), that final messages are exactly
# the fixture's, that stalls are caught within timeout + 0.5 s, and that no connection leaks; then the
# budget rules (max_attempts, deadline, never-retried errors, complete streams), close during backoff, the
# prefill fallback and the capture layout.
from __future__ import annotations

import asyncio
import gc
import itertools
import json
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
httpx = pytest.importorskip("httpx")

import mendstream  # noqa: E402
import mendstream.httpx as mhttpx  # noqa: E402
from mendstream.core.parser import MessageParser  # noqa: E402
from mendstream.errors import (  # noqa: E402
    APIStreamError,
    HTTPStatusError,
    IncompleteStreamError,
    StreamStalledError,
)
from mendstream.streaming.retry import RestartEvent, Retry  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.testing.faults import Cut, ErrorEvent, FaultPlan, HTTPError, Schedule, Stall, continuation_body  # noqa: E402
from streams import busy_connections, text_stream, tool_stream  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")

TEXT = "The quick brown fox jumps over the lazy dog.  Pack my box with five dozen liquor jugs!"
FIXTURES = {"text": text_stream(TEXT, pieces=10), "tool": tool_stream()}
STALL = 0.3
PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

# name -> (plan for the first request, fixture, whether content was shown before the fault, stall options)
FAULTS: dict[str, tuple[FaultPlan, str, bool, dict[str, float]]] = {
    "overloaded_event": (ErrorEvent(after_events=6), "text", True, {}),
    "api_error_event": (ErrorEvent(error_type="api_error", after_events=7), "text", True, {}),
    "cut_mid_event": (Cut(after_events=6), "text", True, {}),
    "cut_mid_tool_input": (Cut(in_tool_input=True), "tool", True, {}),
    "stall_silent": (Stall(seconds=1.5, after_events=6), "text", True, {"idle_timeout": STALL}),
    "stall_pings": (Stall(seconds=1.5, after_events=6, ping_every=0.05), "text", True, {"progress_timeout": STALL}),
    "status_529": (HTTPError(529, retry_after=0.01), "text", False, {}),
    "error_before_content": (ErrorEvent(after_events=1), "text", False, {}),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    # Whatever earlier test modules left for the garbage collector is theirs, not this module's: collect it
    # quietly first, so the per-test collection below reports only what these tests leak.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with ReplayServer(FIXTURES) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    yield
    gc.collect()  # surfaces ResourceWarnings of unclosed responses inside this test


def message_of(body: bytes) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(body)
    parser.end()
    return parser.message


def replay_events(body: bytes) -> list[dict[str, Any]]:
    return [event.to_dict() for event in mendstream.replay(body)]


class Outcome:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.times: list[float] = []
        self.error: BaseException | None = None
        self.error_at = 0.0
        self.stream: Any = None
        self.busy = -1


def _record(out: Outcome, event: Any) -> None:
    out.events.append(event)
    out.times.append(time.monotonic())


def run_sync(transport: str, base_url: str, fixture: str, **options: Any) -> Outcome:
    out = Outcome()
    headers = {"x-mendstream-fixture": fixture}
    if transport == "sdk":
        client = anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0)
        http = client._client
        opener = lambda: mendstream.stream(client, **PARAMS, extra_headers=headers, **options)  # noqa: E731
    else:
        client = http = httpx.Client()
        opener = lambda: mhttpx.stream(PARAMS, base_url=base_url, client=http, headers=headers, **options)  # noqa: E731
    try:
        try:
            stream = opener()  # the first attempt is sent here: an error not retried is raised at once
        except Exception as exc:
            out.error, out.error_at = exc, time.monotonic()
        else:
            with stream:
                out.stream = stream
                try:
                    for event in stream:
                        _record(out, event)
                except Exception as exc:
                    out.error, out.error_at = exc, time.monotonic()
        out.busy = busy_connections(http)
    finally:
        client.close()
    return out


async def run_async(transport: str, base_url: str, fixture: str, **options: Any) -> Outcome:
    out = Outcome()
    headers = {"x-mendstream-fixture": fixture}
    if transport == "sdk":
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test", max_retries=0)
        http = client._client
        opener = mendstream.astream(client, **PARAMS, extra_headers=headers, **options)
    else:
        client = http = httpx.AsyncClient()
        opener = mhttpx.astream(PARAMS, base_url=base_url, client=http, headers=headers, **options)
    try:
        try:
            stream = await opener  # the first attempt is sent here: an error not retried is raised at once
        except Exception as exc:
            out.error, out.error_at = exc, time.monotonic()
        else:
            async with stream:
                out.stream = stream
                try:
                    async for event in stream:
                        _record(out, event)
                except Exception as exc:
                    out.error, out.error_at = exc, time.monotonic()
        out.busy = busy_connections(http)
    finally:
        if transport == "sdk":
            await client.close()
        else:
            await client.aclose()
    return out


def run(mode: str, transport: str, base_url: str, fixture: str, **options: Any) -> Outcome:
    if mode == "sync":
        return run_sync(transport, base_url, fixture, **options)
    return asyncio.run(run_async(transport, base_url, fixture, **options))


def shown_text(events: list[Any]) -> str:
    text = ""
    for event in events:
        if isinstance(event, RestartEvent):
            text = ""
        elif event.type == "text":
            text += event.text
    return text


def text_of(message: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in message.get("content", []) if b.get("type") == "text")


def assert_stall_caught_in_time(out: Outcome, timeout: float) -> None:
    """The stall was reported (the error, or the next attempt's first event) within timeout + 0.5 s of the
    last event before it: the longest silence the consumer saw."""
    stamps = [*out.times, out.error_at] if out.error is not None else out.times
    gap = max(b - a for a, b in itertools.pairwise(stamps))
    assert timeout - 0.05 <= gap <= timeout + 0.5, gap


@pytest.mark.parametrize("transport", ["sdk", "httpx"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("policy", ["raise", "restart", "continue"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_matrix(server: ReplayServer, fault: str, policy: str, mode: str, transport: str) -> None:
    plan, fixture, after_content, stall = FAULTS[fault]
    server.reset(Schedule((plan,)))
    full = FIXTURES[fixture]
    retry = Retry(on_partial=policy, backoff=0.01, seed=3)  # type: ignore[arg-type]
    out = run(mode, transport, server.base_url, fixture, retry=retry, **stall)

    assert out.busy == 0, "a connection was left checked out"
    attempts = out.stream.attempts
    if not after_content:
        # Invisible retry: the consumer iterated one clean stream, identical to the fixture's.
        assert out.error is None
        assert [e.to_dict() for e in out.events] == replay_events(full)
        assert [a.mode for a in attempts] == ["first", "retry"] and attempts[1].error is None
        assert out.stream.message == message_of(full)
        return

    if stall:
        assert_stall_caught_in_time(out, STALL)
    if policy == "raise":
        assert out.error is not None and len(server.requests) == 1
        expected = {
            "overloaded_event": APIStreamError, "api_error_event": APIStreamError, "cut_mid_event": IncompleteStreamError,
            "cut_mid_tool_input": IncompleteStreamError, "stall_silent": StreamStalledError,
            "stall_pings": StreamStalledError,
        }[fault]
        assert isinstance(out.error, expected), type(out.error).__mro__
        if transport == "sdk" and expected is StreamStalledError:
            assert isinstance(out.error, anthropic.APITimeoutError)
        if transport == "sdk" and expected is APIStreamError:
            assert isinstance(out.error, anthropic.APIStatusError)
        if fault == "stall_pings":
            assert out.error.kind == "progress" and out.error.pings_only  # type: ignore[attr-defined]
        if fault == "stall_silent":
            assert out.error.kind == "idle"  # type: ignore[attr-defined]
        assert out.error.snapshot is not None  # type: ignore[attr-defined]
        assert text_of(out.error.snapshot) == shown_text(out.events) != ""  # type: ignore[attr-defined]
        return

    assert out.error is None, repr(out.error)
    markers = [e for e in out.events if isinstance(e, RestartEvent)]
    final = out.stream.message
    if policy == "restart" or fixture == "tool":
        # Restart (or continue falling back to it because a tool_use was in flight): one marker, then the
        # fixture's whole stream; the final message is the last attempt's, never a mixture.
        assert len(markers) == 1 and markers[0].attempt == 2
        after = out.events[out.events.index(markers[0]) + 1 :]
        assert [e.to_dict() for e in after] == replay_events(full)
        assert final == message_of(full)
        if policy == "continue":
            assert attempts[1].mode == "restart" and "tool_use" in (attempts[1].note or "")
        return

    # Continue: no marker, text continues where it stopped, one text block, usage summed.
    assert markers == []
    assert shown_text(out.events) == TEXT
    assert [e.type for e in out.events].count("message_start") == 1
    assert final["content"] == [{"type": "text", "text": TEXT}]
    assert [a.mode for a in attempts] == ["first", "continue"]
    prefill = server.requests[1].body["messages"][-1]
    assert prefill["role"] == "assistant" and TEXT.startswith(prefill["content"])
    assert prefill["content"] == prefill["content"].rstrip()
    continued = message_of(continuation_body(server.requests[1].body, full) or b"")
    partial_usage = attempts[0].error.snapshot["usage"]  # type: ignore[union-attr]
    assert final["usage"] == {
        "input_tokens": partial_usage["input_tokens"] + continued["usage"]["input_tokens"],
        "output_tokens": partial_usage["output_tokens"] + continued["usage"]["output_tokens"],
    }
    assert final["stop_reason"] == "end_turn"
    # The message_delta shown carries the whole turn's usage, as the final message does: a consumer that
    # applies it (the SDK keeps each field a delta has) ends with the same numbers.
    delta = [e for e in out.events if e.type == "message_delta"][-1]
    assert {k: delta.usage.to_dict()[k] for k in final["usage"]} == final["usage"]


# -- budgets and rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_max_attempts_is_respected(server: ReplayServer, mode: str) -> None:
    server.reset(Schedule((HTTPError(529),) * 5))
    out = run(mode, "httpx", server.base_url, "text", retry=Retry(max_attempts=3, backoff=0.01))
    assert isinstance(out.error, HTTPStatusError) and out.error.status_code == 529
    assert len(server.requests) == 3 and len(out.stream.attempts) == 3
    assert out.events == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_deadline_is_respected_and_retry_after_honoured(server: ReplayServer, mode: str) -> None:
    server.reset(Schedule((HTTPError(529, retry_after=0.45),) * 10))
    t0 = time.monotonic()
    out = run(mode, "sdk", server.base_url, "text", retry=Retry(max_attempts=10, deadline=1.2))
    elapsed = time.monotonic() - t0
    assert isinstance(out.error, anthropic.APIStatusError) and out.error.status_code == 529
    # Waits of 0.45 s (retry-after): attempts start at ~0, 0.45 and 0.9 s; a third wait would end past 1.2 s.
    assert len(server.requests) == 3
    assert [round(a.delay, 2) for a in out.stream.attempts] == [0.0, 0.45, 0.45]
    assert elapsed < 1.2 + 0.5


@pytest.mark.parametrize(
    "plan",
    [
        HTTPError(400, error_type="invalid_request_error"),
        HTTPError(401, error_type="authentication_error"),
        HTTPError(403, error_type="permission_error"),
        ErrorEvent(error_type="invalid_request_error", after_events=2),
        HTTPError(529, should_retry=False),
    ],
    ids=["400", "401", "403", "invalid_request_event", "x-should-retry-false"],
)
def test_non_retriable_errors_are_raised_at_once(server: ReplayServer, plan: FaultPlan) -> None:
    server.reset(Schedule((plan,)))
    out = run("sync", "httpx", server.base_url, "text", retry=Retry(max_attempts=5, backoff=0.01))
    assert out.error is not None and len(server.requests) == 1


def test_a_cut_after_the_stop_reason_is_complete_and_not_retried(server: ReplayServer) -> None:
    events = FIXTURES["text"].count(b"\n\n")
    server.reset(Schedule((Cut(after_events=events - 1),)))  # the cut falls inside message_stop
    out = run("sync", "sdk", server.base_url, "text", retry=Retry(on_partial="restart", backoff=0.01))
    assert out.error is None and len(server.requests) == 1
    assert out.stream.message["stop_reason"] == "end_turn" and text_of(out.stream.message) == TEXT


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_continuation_keeps_the_whole_text_shown_in_its_snapshot(server: ReplayServer, mode: str) -> None:
    # The first attempt is cut mid-text, the continuation fails after more text, no attempt is left: the
    # error's snapshot holds all the text the consumer saw (both attempts), not only the continuation's part.
    server.reset(Schedule((Cut(after_events=6), ErrorEvent(after_events=5))))
    out = run(mode, "sdk", server.base_url, "text", retry=Retry(max_attempts=2, on_partial="continue", backoff=0.01))
    assert isinstance(out.error, APIStreamError) and len(server.requests) == 2
    shown = shown_text(out.events)
    assert len(shown) > len(text_of(out.stream.attempts[0].error.snapshot))  # type: ignore[union-attr]
    assert text_of(out.error.snapshot) == shown and TEXT.startswith(shown)  # type: ignore[attr-defined]


def test_continue_falls_back_to_restart_when_the_api_refuses_the_prefill(server: ReplayServer) -> None:
    server.reset(Schedule((ErrorEvent(after_events=6), HTTPError(400, error_type="invalid_request_error"))))
    out = run("sync", "sdk", server.base_url, "text", retry=Retry(on_partial="continue", backoff=0.01))
    assert out.error is None
    attempts = out.stream.attempts
    assert [a.mode for a in attempts] == ["first", "continue", "restart"]
    assert "refused the assistant prefill" in (attempts[2].note or "")
    assert sum(isinstance(e, RestartEvent) for e in out.events) == 1
    assert out.stream.message == message_of(FIXTURES["text"])


def test_continue_after_trailing_whitespace_drops_only_the_repeated_whitespace(server: ReplayServer) -> None:
    text = "alpha beta  \n\ngamma delta"
    body = text_stream(text, pieces=2)  # the first delta ends with whitespace
    assert json.loads(body.split(b"data: ")[4].split(b"\n")[0])["delta"]["text"] == "alpha beta  \n"
    with ReplayServer({"ws": body}, faults=Schedule((ErrorEvent(after_events=4),))) as srv:
        out = run("sync", "httpx", srv.base_url, "ws", retry=Retry(on_partial="continue", backoff=0.01))
        assert srv.requests[1].body["messages"][-1]["content"] == "alpha beta"
    assert out.error is None
    assert shown_text(out.events) == text and text_of(out.stream.message) == text


def test_close_from_another_thread_during_backoff_stops_at_once(server: ReplayServer) -> None:
    server.reset(Schedule((HTTPError(529, retry_after=30),)))
    stream = mhttpx.stream(PARAMS, base_url=server.base_url, headers={"x-mendstream-fixture": "text"},
                           retry=Retry(max_attempts=3))
    timer = threading.Timer(0.3, stream.close)
    t0 = time.monotonic()
    timer.start()
    events = list(stream)
    assert events == [] and time.monotonic() - t0 < 1.5
    time.sleep(0.1)
    assert len(server.requests) == 1  # no attempt after close


def test_cancelling_during_backoff_stops_at_once(server: ReplayServer) -> None:
    server.reset(Schedule((HTTPError(529, retry_after=30),)))

    async def main() -> float:
        async with httpx.AsyncClient() as http:
            stream = await mhttpx.astream(PARAMS, base_url=server.base_url, client=http,
                                          headers={"x-mendstream-fixture": "text"}, retry=Retry())

            async def consume() -> None:
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await stream.close()
            return time.monotonic() - t0

    assert asyncio.run(main()) < 0.5
    assert len(server.requests) == 1


def test_capture_writes_every_attempt_beside_the_first(server: ReplayServer, tmp_path: Path) -> None:
    server.reset(Schedule((ErrorEvent(after_events=6),)))
    path = tmp_path / "turn.sse"
    out = run("sync", "sdk", server.base_url, "text", retry=Retry(on_partial="restart", backoff=0.01),
              capture=path)
    assert out.error is None
    first, second = path.read_bytes(), (tmp_path / "turn.attempt-2.sse").read_bytes()
    assert b"overloaded_error" in first and second == FIXTURES["text"]
    assert (tmp_path / "turn.attempt-2.capture.json").exists() or any(tmp_path.glob("turn.attempt-2*.json"))
    assert len(out.stream.attempts) == 2 and out.stream.attempts[0].bytes_received == len(first)


def test_off_by_default_a_slow_stream_completes(server: ReplayServer) -> None:
    server.reset(Schedule((Stall(seconds=0.5, after_events=4),)))
    out = run("sync", "sdk", server.base_url, "text")
    assert out.error is None and text_of(out.stream.message) == TEXT
    assert [(a.number, a.mode, a.error) for a in out.stream.attempts] == [(1, "first", None)]
