# ReplayServer: the replay server's lifecycle. Binds the port synchronously (so port=0 and "address in use"
# are known when start() returns), then runs ReplayApp on uvicorn in a daemon thread with its own event loop
# (`with ReplayServer(d) as srv: srv.base_url`), or in the calling thread for `mendstream serve`.
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mendstream.errors import UsageError
from mendstream.recording.fixtures import FixtureSelector, Select, fixture_paths, load_fixtures
from mendstream.testing.app import ReplayApp, ServerLimits
from mendstream.testing.faults import FaultPlan
from mendstream.testing.routing import Pace, RecordedRequest, Router

__all__ = ["ReplayServer"]

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


class ReplayServer:
    """Serves fixtures on ``http://127.0.0.1:PORT/v1/messages`` (any path ending in ``/v1/messages``, and
    Vertex AI's ``:streamRawPredict`` paths), over uvicorn.

    ``source``: a directory of ``*.sse`` fixtures (files symlinked from outside it are not served), a list of
    paths, or a mapping name → bytes/Fixture. ``port=0`` picks a free port. ``pace="captured"`` replays the
    captured chunk timings (divided by ``speed``); ``"fast"`` sends the captured chunks without waiting. See
    :class:`FixtureSelector` for ``select`` and ``cycle``. Requests with ``"stream": false`` get the
    fixture's final message as JSON. :attr:`requests` keeps the last ``limits.request_log`` requests.
    ``limits`` (:class:`ServerLimits`) bounds timeouts, sizes and connections. ``faults``: a
    :class:`~mendstream.testing.faults.FaultPlan` applied to every Messages response (ordinal from 0).
    ``on_request(record)`` is called on the server's loop after each response. ``validate=True`` answers
    requests that break the rules of :func:`mendstream.wire.sanitize.validate_request` (empty text blocks,
    broken tool_use / tool_result pairs, ...) with the API's 400, so agents can be tested against it.

    Use as a context manager (``with ReplayServer(d) as srv: srv.base_url``), or ``start()``/``stop()``;
    the server then runs in a daemon thread with its own event loop. ``serve_forever()`` runs it in the
    calling thread (the CLI). HTTP/1.1 keep-alive, ``Expect: 100-continue``, chunked bodies; malformed
    requests get 400, oversized ones 413/431.

    Raises :class:`~mendstream.errors.UsageError` (a ``ValueError``) for bad options,
    :class:`~mendstream.errors.FixtureError` for unusable fixtures (``FileNotFoundError`` too when missing).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        select: Select = "auto",
        pace: Pace = "fast",
        speed: float = 1.0,
        cycle: bool = True,
        limits: ServerLimits | None = None,
        faults: FaultPlan | None = None,
        on_request: Callable[[RecordedRequest], None] | None = None,
        validate: bool = False,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UsageError(f"port must be an int from 0 to 65535; got {port!r}")
        if limits is not None and not isinstance(limits, ServerLimits):
            raise UsageError(f"limits must be a ServerLimits; got {limits!r}")
        self.limits = limits or ServerLimits()
        self.fixtures = load_fixtures(source)
        self.skipped: list[Path] = []
        """Files in the fixture directory not served because they resolve outside it."""
        if isinstance(source, str | os.PathLike) and Path(source).is_dir():
            self.skipped = fixture_paths(source)[1]
        self.selector = FixtureSelector(self.fixtures, select=select, cycle=cycle)
        self.router = Router(self.selector, pace=pace, speed=speed, faults=faults,
                             request_log=self.limits.request_log, validate=validate,
                             request_log_bytes=self.limits.request_log_bytes)
        self.app = ReplayApp(self.router, self.limits, on_request)
        """The ASGI application (usable under any ASGI server)."""
        self.host = host
        self.port = port
        self._bound_port: int | None = None  # the port bound by start()/serve_forever(); None before
        self.pace = pace
        self.speed = speed
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def reset(self, faults: FaultPlan | None = None) -> None:
        """Between tests that share one server: forget the requests received and answer with ``faults`` from
        now on (None: no faults), its ordinals counted from 0 again. Safe while serving."""
        self.router.reset(faults)

    @property
    def requests(self) -> deque[RecordedRequest]:
        """The most recent requests received, oldest first: at most ``limits.request_log`` of them, within
        ``limits.request_log_bytes`` (older ones dropped first, counted in :attr:`requests_dropped`)."""
        return self.router.requests

    @property
    def requests_dropped(self) -> int:
        """Requests dropped from :attr:`requests` to stay within ``limits.request_log_bytes``."""
        return self.router.requests_dropped

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: what to pass as ``base_url`` to the SDK. The port is the one bound, so this
        is known once the server has started; before, :class:`~mendstream.errors.UsageError`."""
        port = self._bound_port
        if port is None:
            raise UsageError(
                "the ReplayServer is not started, so it has no port yet: use it as a context manager "
                "(with ReplayServer(...) as srv: srv.base_url) or call start() first"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The full messages endpoint URL (once started, as :attr:`base_url`)."""
        return f"{self.base_url}/v1/messages"

    # -- lifecycle -------------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        from mendstream.testing._uvicorn import bind  # uvicorn is optional: imported only to serve

        sock = bind(self.host, self.port, self.limits.backlog)
        self.port = self._bound_port = sock.getsockname()[1]
        return sock

    def start(self) -> Self:
        """Start serving in a background thread; returns once the server accepts connections.

        Raises ``OSError`` when the address cannot be bound, ``ImportError`` without uvicorn.
        """
        if self._thread is not None:
            return self
        sock = self._bind()
        ready = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=self._thread_main, args=(sock, ready, errors), name="mendstream-replay-server", daemon=True
        )
        self._thread = thread
        thread.start()
        if not ready.wait(_START_TIMEOUT) or errors:
            self.stop()
            self._bound_port = None  # it never served: still "not started"
            raise errors[0] if errors else TimeoutError("the replay server did not start within 30 s")
        return self

    def _thread_main(self, sock: socket.socket, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            asyncio.run(self._serve(sock, ready.set))
        except BaseException as exc:  # reported to start(); the thread must not die silently
            errors.append(exc)
            ready.set()

    async def _serve(self, sock: socket.socket, on_started: Callable[[], None]) -> None:
        from mendstream.testing._uvicorn import run

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await run(self.app, sock, self._stop, on_started)
        finally:
            self._loop = None
            self._stop = None

    def stop(self) -> None:
        """Stop serving, drop open connections and join the thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=_STOP_TIMEOUT)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def serve_forever(self, *, on_ready: Callable[[ReplayServer], None] | None = None) -> None:
        """Serve in the calling thread until interrupted (KeyboardInterrupt ends it quietly).

        ``on_ready(server)`` is called once the server accepts connections. Raises ``OSError`` when the
        address cannot be bound.
        """
        sock = self._bind()

        def started() -> None:
            if on_ready is not None:
                on_ready(self)

        try:
            asyncio.run(self._serve(sock, started))
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
