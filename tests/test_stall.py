# Stall detection without retry: idle_timeout (no byte) and progress_timeout (only pings) on the four entry
# points, through the real clients against the fault server on 127.0.0.1. The error names its kind, how
# long it waited and keeps the partial message; it fires within timeout + 0.5 s; the connection is released;
# async streams use no thread and sync streams share one watchdog thread; live slow streams are not flagged.
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
httpx = pytest.importorskip("httpx")

import mendstream  # noqa: E402
import mendstream.httpx as mhttpx  # noqa: E402
from mendstream.errors import StreamStalledError, UsageError  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.testing.faults import Schedule, Stall, Trickle  # noqa: E402
from streams import busy_connections, text_stream  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

TEXT = "Waiting is not the same as working; pings are not progress."
PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 0.3


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer({"text": text_stream(TEXT, pieces=8)}) as srv:
        yield srv


def open_sync(transport: str, base_url: str, http: Any, **options: Any) -> Any:
    if transport == "sdk":
        return mendstream.stream(http, **PARAMS, **options)
    return mhttpx.stream(PARAMS, base_url=base_url, client=http, **options)


def consume_sync(stream: Any) -> tuple[list[Any], float, BaseException | None]:
    events: list[Any] = []
    last = time.monotonic()
    try:
        for event in stream:
            events.append(event)
            last = time.monotonic()
    except Exception as exc:
        return events, time.monotonic() - last, exc
    return events, 0.0, None


@pytest.mark.parametrize("transport", ["sdk", "httpx"])
@pytest.mark.parametrize(("kind", "plan", "option"), [
    ("idle", Stall(seconds=1.5, after_events=5), "idle_timeout"),
    ("progress", Stall(seconds=1.5, after_events=5, ping_every=0.05), "progress_timeout"),
])
def test_sync_stall_is_detected_in_time(server: ReplayServer, transport: str, kind: str, plan: Any, option: str) -> None:
    server.reset(Schedule((plan,)))
    client: Any = (
        anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0) if transport == "sdk"
        else httpx.Client()
    )
    try:
        with open_sync(transport, server.base_url, client, **{option: TIMEOUT}) as stream:
            events, gap, error = consume_sync(stream)
        http = client._client if transport == "sdk" else client
        assert busy_connections(http) == 0
    finally:
        client.close()
    assert isinstance(error, StreamStalledError), error
    assert TIMEOUT - 0.05 <= gap <= TIMEOUT + 0.5
    assert error.kind == kind and error.timeout == TIMEOUT and error.waited >= TIMEOUT - 0.01
    assert error.pings_only is (kind == "progress")
    assert ("only pings arrived" in str(error)) is (kind == "progress")
    shown = "".join(e.text for e in events if e.type == "text")
    assert error.snapshot is not None and error.snapshot["content"][0]["text"] == shown != ""
    if transport == "sdk":
        assert isinstance(error, anthropic.APITimeoutError)
    assert stream.response.is_closed


@pytest.mark.parametrize("transport", ["sdk", "httpx"])
@pytest.mark.parametrize("kind", ["idle", "progress"])
def test_async_stall_is_detected_in_time_without_threads(server: ReplayServer, transport: str, kind: str) -> None:
    plan = Stall(seconds=1.5, after_events=5, ping_every=0.05 if kind == "progress" else None)
    server.reset(plan)  # every request stalls
    option = {"idle_timeout" if kind == "idle" else "progress_timeout": TIMEOUT}

    async def one(client: Any) -> tuple[float, BaseException | None]:
        opener = (
            mendstream.astream(client, **PARAMS, **option) if transport == "sdk"
            else mhttpx.astream(PARAMS, base_url=server.base_url, client=client, **option)
        )
        last = time.monotonic()
        async with opener as stream:
            try:
                async for _ in stream:
                    last = time.monotonic()
            except Exception as exc:
                return time.monotonic() - last, exc
        return 0.0, None

    async def main() -> tuple[list[tuple[float, BaseException | None]], int, int]:
        client: Any = (
            anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0) if transport == "sdk"
            else httpx.AsyncClient()
        )
        threads_before = set(threading.enumerate())
        try:
            results = await asyncio.gather(*(one(client) for _ in range(4)))
            new_threads = set(threading.enumerate()) - threads_before
            http = client._client if transport == "sdk" else client
            busy = busy_connections(http)
        finally:
            await (client.close() if transport == "sdk" else client.aclose())
        # No thread per stream (the SDK itself may use its loop's executor, e.g. for platform headers).
        assert not any("mendstream" in t.name for t in new_threads)
        if transport == "httpx":
            assert new_threads == set()
        return list(results), busy, len(new_threads)

    results, busy, _ = asyncio.run(main())
    assert busy == 0
    for gap, error in results:
        assert isinstance(error, StreamStalledError) and error.kind == kind
        assert TIMEOUT - 0.05 <= gap <= TIMEOUT + 0.5
        if transport == "sdk":
            assert isinstance(error, anthropic.APITimeoutError)


def test_sync_streams_share_one_watchdog_thread(server: ReplayServer) -> None:
    server.reset(Stall(seconds=1.0, after_events=5))
    errors: list[BaseException | None] = []

    def worker() -> None:
        with httpx.Client() as http:
            stream = mhttpx.stream(PARAMS, base_url=server.base_url, client=http, idle_timeout=TIMEOUT)
            with stream:
                errors.append(consume_sync(stream)[2])

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(10)
    assert len(errors) == 4 and all(isinstance(e, StreamStalledError) for e in errors)
    watchdogs = [t for t in threading.enumerate() if t.name == "mendstream-stall-watchdog"]
    assert len(watchdogs) == 1


def test_a_slow_but_live_stream_is_not_a_stall(server: ReplayServer) -> None:
    server.reset(Trickle(chunk_bytes=64, delay=0.05))
    with httpx.Client() as http:
        stream = mhttpx.stream(PARAMS, base_url=server.base_url, client=http, idle_timeout=TIMEOUT,
                               progress_timeout=1.0)
        with stream:
            events, _, error = consume_sync(stream)
    assert error is None and "".join(e.text for e in events if e.type == "text") == TEXT


def test_timeouts_are_off_by_default_and_validated(server: ReplayServer) -> None:
    server.reset(Schedule((Stall(seconds=0.6, after_events=5, ping_every=0.1),)))
    with httpx.Client() as http, mhttpx.stream(PARAMS, base_url=server.base_url, client=http) as stream:
        assert consume_sync(stream)[2] is None
    for bad in (0, -1, float("inf"), "1"):
        with pytest.raises(UsageError, match="idle_timeout"):
            mhttpx.stream(PARAMS, base_url=server.base_url, idle_timeout=bad)
        with pytest.raises(UsageError, match="progress_timeout"):
            mendstream.stream(anthropic.Anthropic(api_key="k"), **PARAMS, progress_timeout=bad)


def test_watchdog_keeps_one_entry_per_stream_and_fires_on_time() -> None:
    from mendstream.streaming.stall import Watchdog

    class Guard:
        def __init__(self) -> None:
            self.fired = threading.Event()

        def fire(self) -> None:
            self.fired.set()

    watchdog = Watchdog()
    busy, quiet = Guard(), Guard()
    now = time.monotonic()
    for i in range(1000):  # a chunk moves the deadline later each time: no new heap entries
        watchdog.arm(busy, now + 10 + i * 0.001)  # type: ignore[arg-type]
    assert len(watchdog._heap) == 1
    watchdog.arm(quiet, time.monotonic() + 0.1)  # type: ignore[arg-type]
    assert quiet.fired.wait(0.6) and not busy.fired.is_set()
    watchdog.disarm(busy)  # type: ignore[arg-type]
    assert len(watchdog._heap) <= 2


@pytest.mark.parametrize("transport", ["sdk", "httpx"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_response_headers_within_idle_timeout_is_a_stall(server: ReplayServer, transport: str, mode: str) -> None:
    server.reset(Stall(1.0, headers=True))  # no status line for 1 s

    async def astream_error() -> BaseException | None:
        if transport == "sdk":
            client: Any = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0)
            opener = mendstream.astream(client, **PARAMS, idle_timeout=TIMEOUT)
        else:
            client = httpx.AsyncClient()
            opener = mhttpx.astream(PARAMS, base_url=server.base_url, client=client, idle_timeout=TIMEOUT)
        try:
            async with opener as stream:
                async for _ in stream:
                    pass
        except Exception as exc:
            return exc
        finally:
            await (client.close() if transport == "sdk" else client.aclose())
        return None

    t0 = time.monotonic()
    if mode == "async":
        error = asyncio.run(astream_error())
    else:
        client: Any = (
            anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0) if transport == "sdk"
            else httpx.Client()
        )
        with client:
            try:  # the first attempt is sent when the stream is made: a stall there is raised there
                with open_sync(transport, server.base_url, client, idle_timeout=TIMEOUT) as stream:
                    error = consume_sync(stream)[2]
            except StreamStalledError as exc:
                error = exc
    elapsed = time.monotonic() - t0
    assert isinstance(error, StreamStalledError) and error.kind == "idle" and error.snapshot is None
    assert elapsed <= TIMEOUT + 0.5
    if transport == "sdk":
        assert isinstance(error, anthropic.APITimeoutError)
    server.reset(None)
