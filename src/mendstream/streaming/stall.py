# Stall detection for sync streams: a blocked `recv` cannot be interrupted from its own thread, so one daemon
# thread for the whole process (the watchdog) shuts down the socket of a stream whose read deadline passed;
# the read then returns and the driver reports the end of the body to the stream machine, which finds the
# deadline past and calls it a stall. No thread is started per stream. Async streams need none of this:
# they read under `asyncio.timeout_at`.
from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WATCHDOG", "SyncGuard", "Watchdog", "socket_of", "socket_waker"]


class Watchdog:
    """One daemon thread for every sync stream in the process: at a stream's deadline it calls the stream's
    ``fire`` (which shuts the socket down, so the blocked read returns).

    Each armed stream has at most one heap entry, so the heap is bounded by the number of open streams:
    moving a deadline later (every chunk) only updates ``_armed``; when the entry comes due with a later
    deadline recorded, it is pushed back once. Arming is O(1) on the hot path, O(log n) when pushing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, SyncGuard]] = []
        self._armed: dict[SyncGuard, float] = {}
        self._queued: dict[SyncGuard, float] = {}
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, guard: SyncGuard, deadline: float) -> None:
        with self._cond:
            self._armed[guard] = deadline
            queued = self._queued.get(guard)
            if queued is not None and queued <= deadline:
                return  # the queued entry comes due first and re-queues itself at the new deadline
            self._queued[guard] = deadline
            heapq.heappush(self._heap, (deadline, next(self._counter), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mendstream-stall-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][2] is guard:
                self._cond.notify()

    def disarm(self, guard: SyncGuard) -> None:
        with self._cond:
            self._armed.pop(guard, None)

    def _run(self) -> None:
        while True:
            due: list[SyncGuard] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    queued, _, guard = heapq.heappop(self._heap)
                    if self._queued.get(guard) != queued:
                        continue  # superseded by an earlier entry for the same guard
                    del self._queued[guard]
                    deadline = self._armed.get(guard)
                    if deadline is None:
                        continue  # disarmed
                    if deadline > now:
                        self._queued[guard] = deadline
                        heapq.heappush(self._heap, (deadline, next(self._counter), guard))
                        continue
                    del self._armed[guard]
                    due.append(guard)
                if not due:
                    wait = self._heap[0][0] - now if self._heap else 60.0
                    self._cond.wait(min(wait, 60.0))
            for guard in due:
                guard.fire()


WATCHDOG = Watchdog()


def socket_of(response: Any) -> socket.socket | None:
    extensions = getattr(response, "extensions", None)
    stream = extensions.get("network_stream") if isinstance(extensions, dict) else None
    get = getattr(stream, "get_extra_info", None)
    if get is None:
        return None
    try:
        sock = get("socket")
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


class SyncGuard:
    """Bounds one sync attempt's reads: armed with the machine's read deadline after every chunk."""

    def __init__(self, sock: socket.socket, deadline: Callable[[], float | None]) -> None:
        self.sock = sock
        self._deadline = deadline
        self.fired = False

    def arm(self) -> None:
        deadline = self._deadline()
        if deadline is not None:
            WATCHDOG.arm(self, deadline)

    def disarm(self) -> None:
        WATCHDOG.disarm(self)

    def fire(self) -> None:
        deadline = self._deadline()
        if deadline is None or time.monotonic() < deadline:  # raced with a chunk that moved the deadline
            return
        self.fired = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def socket_waker(extensions: Any) -> Callable[[], None] | None:
    """A function that makes a read blocked on an HTTP/1.1 response's connection return (by shutting its
    socket down), from the response's ``extensions`` (httpcore's ``network_stream``); None when there is no
    socket to shut down or the connection may be shared (HTTP/2)."""
    if not isinstance(extensions, dict) or extensions.get("http_version", b"HTTP/1.1") != b"HTTP/1.1":
        return None
    stream = extensions.get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:
        return None
    if not isinstance(sock, socket.socket):
        return None

    def wake() -> None:
        # The base class's shutdown: ssl.SSLSocket.shutdown would also drop its SSL object under the reader.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    return wake
