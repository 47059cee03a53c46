# Streams dropped without `with` / close() (issue 12 §3, §7): for every transport (mendstream.httpx over
# httpx and httpx2, the SDK transport over whichever library the installed SDK uses), sync and async, a loop
# drops streams unread, mid-body and after `break` while garbage collections are forced inside the next
# request (inside the transport's handle_request and, for the sync pools, while the connection pool's lock
# is held: the interleaving that deadlocked). Each case runs under a watchdog (no hang), with a pool of one
# connection and a short pool timeout (a leaked connection fails the next request), and ends by counting
# the pool's busy connections. Async cases also check the loop reported no "Task exception was never
# retrieved" (the aclose() race of a dropped async generator).
from __future__ import annotations

import asyncio
import gc
import importlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mendstream
import mendstream.httpx as mh
from conftest import BASIC_SSE
from mendstream.streaming import reaper
from mendstream.testing import ReplayServer, sdk_http_module

BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
PARAMS: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ROUNDS = 30
WATCHDOG_S = 120.0


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HTTP_MODULES = [name for name in ("httpx", "httpx2") if _importable(name)]


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer({"basic": BASIC_SSE}) as srv:
        yield srv


class _CollectingLock:
    """Wraps a connection pool's thread lock so that a garbage collection runs while it is held."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> Any:
        self._lock.__enter__()
        gc.collect(1)  # young generations: where a just-dropped stream is, and cheap in a big test session
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._lock.__exit__(*exc)


def _collecting_transport(module: Any, *, is_async: bool) -> tuple[Any, Any]:
    """A transport of ``module`` that forces a collection in every request, and its connection pool."""
    limits = module.Limits(max_connections=1, max_keepalive_connections=1)
    if is_async:
        inner_async = module.AsyncHTTPTransport(limits=limits)

        class CollectingAsync(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                gc.collect(1)
                return await inner_async.handle_async_request(request)

            async def aclose(self) -> None:
                await inner_async.aclose()

        return CollectingAsync(), inner_async._pool
    inner = module.HTTPTransport(limits=limits)
    # Reaching into the pool reproduces the interleaving deterministically: a collection while the
    # pool's (non-reentrant, for httpcore) lock is held by the next request.
    inner._pool._optional_thread_lock = _CollectingLock(inner._pool._optional_thread_lock)

    class Collecting(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            gc.collect(1)
            return inner.handle_request(request)

        def close(self) -> None:
            inner.close()

    return Collecting(), inner._pool


def _busy(pool: Any) -> list[Any]:
    return [conn for conn in pool.connections if not conn.is_idle()]


def _collect_and_settle(pool: Any) -> list[Any]:
    """Collect, let the reaper run, and return the busy connections left.

    Repeated a few times because ``gc.collect()`` returns at once, collecting nothing, while another
    thread (here: the reaper, inside the collecting pool lock) is collecting.
    """
    for _ in range(20):
        gc.collect()
        assert reaper.wait_idle(30)
        if not _busy(pool):
            break
    return _busy(pool)


def _timeout(module: Any) -> Any:
    return module.Timeout(10.0, pool=3.0)


def _watchdog(run: Callable[[], None]) -> None:
    """Run ``run`` in a thread; fail (instead of hanging the suite) if it does not finish in time."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    assert not thread.is_alive(), "hang: a dropped stream deadlocked a later request"
    if failure:
        raise failure[0]


def _drop_sync(open_stream: Callable[[], Any], pool: Any) -> None:
    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for i in range(ROUNDS):
                stream = open_stream()
                if i % 3 == 1:
                    next(iter(stream))
                elif i % 3 == 2:
                    for _ in stream:
                        break
                del stream
            assert _collect_and_settle(pool) == []
        with open_stream() as last:  # the pool still serves
            assert last.get_final_text() == "Hello world"
        assert _busy(pool) == []

    _watchdog(run)


async def _wait_pool_idle(pool: Any) -> None:
    """Let the loop run the closes the reaper scheduled on it (and collect again, see above)."""
    for _ in range(500):
        if not _busy(pool):
            return
        gc.collect()
        reaper.submit(lambda: None)
        await asyncio.sleep(0.01)
    raise AssertionError(f"connections still checked out: {_busy(pool)}")


def _drop_async(open_stream: Callable[[], Any], pool: Any) -> None:
    reported: list[dict[str, Any]] = []

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for i in range(ROUNDS):
                stream = await open_stream()
                if i % 3 == 1:
                    await stream.__anext__()
                elif i % 3 == 2:
                    async for _ in stream:
                        break
                del stream
                await asyncio.sleep(0)
            gc.collect()
        assert reaper.wait_idle(30)
        await _wait_pool_idle(pool)
        async with open_stream() as last:
            assert await last.get_final_text() == "Hello world"
        await _wait_pool_idle(pool)
        gc.collect()
        await asyncio.sleep(0.05)  # let the loop run any finaliser-scheduled aclose()

    _watchdog(lambda: asyncio.run(asyncio.wait_for(body(), WATCHDOG_S / 2)))
    assert reported == [], reported


@pytest.mark.parametrize("module_name", HTTP_MODULES)
def test_httpx_transport_sync_drops(server: ReplayServer, module_name: str) -> None:
    module = importlib.import_module(module_name)
    transport, pool = _collecting_transport(module, is_async=False)
    client = module.Client(transport=transport, timeout=_timeout(module))
    _drop_sync(lambda: mh.stream(BODY, base_url=server.base_url, client=client), pool)


@pytest.mark.parametrize("module_name", HTTP_MODULES)
def test_httpx_transport_async_drops(server: ReplayServer, module_name: str) -> None:
    module = importlib.import_module(module_name)
    transport, pool = _collecting_transport(module, is_async=True)
    client = module.AsyncClient(transport=transport, timeout=_timeout(module))
    _drop_async(lambda: mh.astream(BODY, base_url=server.base_url, client=client), pool)


def test_sdk_transport_sync_drops(server: ReplayServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    module = sdk_http_module()
    transport, pool = _collecting_transport(module, is_async=False)
    client = anthropic.Anthropic(
        base_url=server.base_url, api_key="sk-ant-test", max_retries=0,
        http_client=module.Client(transport=transport, timeout=_timeout(module)),
    )
    _drop_sync(lambda: mendstream.stream(client, **PARAMS), pool)


def test_sdk_transport_async_drops(server: ReplayServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    module = sdk_http_module()
    transport, pool = _collecting_transport(module, is_async=True)
    client = anthropic.AsyncAnthropic(
        base_url=server.base_url, api_key="sk-ant-test", max_retries=0,
        http_client=module.AsyncClient(transport=transport, timeout=_timeout(module)),
    )
    _drop_async(lambda: mendstream.astream(client, **PARAMS), pool)


def test_dropped_stream_warns_and_explicit_close_does_not(server: ReplayServer) -> None:
    module = importlib.import_module(HTTP_MODULES[0])
    client = module.Client(timeout=_timeout(module))
    stream = mh.stream(BODY, base_url=server.base_url, client=client)
    with pytest.warns(ResourceWarning, match="without close"):
        del stream
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        closed = mh.stream(BODY, base_url=server.base_url, client=client)
        closed.close()
        read = mh.stream(BODY, base_url=server.base_url, client=client)
        read.until_done()
        del closed, read
        gc.collect()
    assert reaper.wait_idle(30)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"x": [value]}
    return value


@pytest.mark.parametrize("module_name", HTTP_MODULES)
def test_deep_request_body_with_capture(server: ReplayServer, module_name: str, tmp_path: Any) -> None:
    """Issue 12 §7: a body nested 600 deep with capture= neither lets RecursionError out nor leaks."""
    module = importlib.import_module(module_name)
    transport, pool = _collecting_transport(module, is_async=False)
    client = module.Client(transport=transport, timeout=_timeout(module))
    body = {**BODY, "metadata": {"deep": _nested(300)}}  # 600 JSON levels
    out = tmp_path / "deep.sse"
    # The body is scrubbed and captured without recursion; the replay server itself refuses JSON nested
    # deeper than 256 levels with a 400, which arrives as the documented HTTPStatusError, recorded too.
    with pytest.raises(mendstream.errors.HTTPStatusError) as refused:
        mh.stream(body, base_url=server.base_url, client=client, capture=out)
    assert refused.value.status_code == 400
    assert "deeper than 256" in str(refused.value)
    assert (tmp_path / "deep.capture.json").exists()
    assert '"status": 400' in (tmp_path / "deep.capture.json").read_text().replace('"status":400', '"status": 400')
    with pytest.raises(mendstream.UsageError, match="nested too deeply"):
        mh.stream({**BODY, "metadata": {"deep": _nested(100_000)}}, base_url=server.base_url, client=client,
                  capture=tmp_path / "deeper.sse")
    assert _busy(pool) == []


def test_capture_of_a_stream_closed_unread(server: ReplayServer, tmp_path: Any) -> None:
    """Issue 8 §3: closed before any read, the capture holds what was received (nothing of the body)
    and its sidecar (status, headers, outcome "closed"), with both transports."""
    import json

    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)
    opened = [
        ("httpx", mh.stream(BODY, base_url=server.base_url, capture=tmp_path / "httpx.sse")),
        ("sdk", mendstream.stream(client, **PARAMS, capture=tmp_path / "sdk.sse")),
    ]
    for name, stream in opened:
        stream.close()
        meta = json.loads((tmp_path / f"{name}.capture.json").read_text())
        assert meta["outcome"] == "closed" and meta["response"]["status"] == 200
        assert meta["body_bytes"] == (tmp_path / f"{name}.sse").stat().st_size == 0


def test_error_pipeline_keeps_the_cause() -> None:
    """Issue 9 §3: the core's cause (e.g. an internal bug) survives the transport's mapping and raise."""
    from mendstream import MessageStream
    from mendstream.core.parser import MessageParser
    from mendstream.errors import ProtocolError
    from mendstream.streaming.drivers import Opened

    class BrokenParser(MessageParser):
        def feed(self, data: bytes) -> list[Any]:
            error = ProtocolError("internal error while parsing: KeyError('x')")
            error.__cause__ = KeyError("x")
            raise error

    class Mapped(Exception):
        pass

    for wrap in (None, lambda err: Mapped(err.message)):
        stream = MessageStream(lambda action, wrap=wrap: Opened(None, [b"data: {}\n\n"], lambda: None, convert=wrap),
                               parser=BrokenParser())
        with pytest.raises((ProtocolError, Mapped)) as info:
            stream.until_done()
        assert isinstance(info.value.__cause__, KeyError)
