# The replay server's ASGI application and its limits: reads a request (bounded in size and time), asks the
# Router what to answer, and sends the PlannedResponse (waiting each chunk's delay, cutting the connection
# for an aborting fixture or a fault plan's end="cut"). HTTP parsing is uvicorn's (h11); nothing here parses
# the wire. Importable without uvicorn: `ReplayApp` runs under any ASGI server.
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from mendstream.errors import UsageError
from mendstream.testing.faults import PlannedResponse
from mendstream.testing.routing import RecordedRequest, Router, error_response

__all__ = ["DEFAULT_MAX_CONNECTIONS", "LOGGER", "ReplayApp", "ServerLimits", "connection_cap", "descriptor_plan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOGGER = logging.getLogger("mendstream.testing")
"""The server's logger (uvicorn's protocol messages are routed here too); silent unless configured."""
LOGGER.addHandler(logging.NullHandler())

# Framing headers are the sender's to compute; a fixture's or fault plan's values for them would lie.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The replay server's limits. Every one bounds a resource a hostile or broken client could hold.

    Attributes:
        header_timeout: seconds a connection may take to send a request's headers (from connecting, or
            from the first byte of a further request); then 408 (or a silent close if nothing came).
        idle_timeout: seconds a keep-alive connection may stay idle between requests.
        body_timeout: seconds to receive a request body once its headers arrived; then 408.
        max_body_bytes: larger request bodies get 413 (announced by ``content-length`` or counted).
        max_header_bytes: request heads larger than this get 431.
        max_headers: requests with more header fields than this get 431.
        max_connections: connections beyond this are answered 503 and closed at once, so idle connections
            cannot exhaust file descriptors. None (the default): 512, or fewer when the process's file
            limit (RLIMIT_NOFILE) leaves less room when the server starts (see :func:`connection_cap`).
        backlog: the listening socket's accept queue (lowered with a small file limit, as
            ``max_connections``: see :func:`descriptor_plan`).
        request_log: how many requests :attr:`ReplayServer.requests` keeps (the most recent).
        request_log_bytes: how much memory those requests may take (bodies decoded, as
            :func:`~mendstream.testing.routing.record_weight` bounds it); older ones are dropped first.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    body_timeout: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int | None = None
    backlog: int = 128
    request_log: int = 1000
    request_log_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "idle_timeout", "body_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UsageError(f"ServerLimits.{name} must be a number > 0; got {value!r}")
        for name in ("max_body_bytes", "max_header_bytes", "max_headers", "max_connections", "backlog"):
            value = getattr(self, name)
            if value is None and name == "max_connections":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"ServerLimits.{name} must be an int >= 1; got {value!r}")
        for name in ("request_log", "request_log_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"ServerLimits.{name} must be an int >= 0; got {value!r}")


DEFAULT_MAX_CONNECTIONS = 512
"""The connection cap when :attr:`ServerLimits.max_connections` is None and descriptors are plentiful."""


def connection_cap(limits: ServerLimits) -> int:
    """The connection cap a server with ``limits`` enforces: ``limits.max_connections`` if set, else 512 or
    fewer when the process's file limit (RLIMIT_NOFILE) leaves less room: see :func:`descriptor_plan`."""
    return descriptor_plan(limits)[0]


def descriptor_plan(limits: ServerLimits) -> tuple[int, int]:
    """``(connection cap, listen backlog)`` for a server with ``limits`` started now.

    Every connection takes a file descriptor, and asyncio accepts up to ``backlog`` connections at a time,
    before any of them can be turned away with a 503; in a flood about two such batches are in flight (three
    are allowed for). So with ``left`` = the RLIMIT_NOFILE soft limit minus the descriptors open now, the
    backlog is at most ``left / 8`` (at least 16, at most ``limits.backlog``) and the cap at most
    ``(left - 3 * backlog) / 2`` (at least 1, at most 512): half of what remains stays free for the process
    (fixtures, logging, clients sharing it in a test). A flood of idle connections then meets 503s, never
    "too many open files" (with 256 files: a cap of 78 and a backlog of 31; with 1,024: 318 and 127; from
    about 4,000 on: 512 and 128). An explicit ``limits.max_connections`` is used as given, with
    ``limits.backlog``; so is everything where the limit cannot be read or is unlimited."""
    if limits.max_connections is not None:
        return limits.max_connections, limits.backlog
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # not POSIX
        return DEFAULT_MAX_CONNECTIONS, limits.backlog
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return DEFAULT_MAX_CONNECTIONS, limits.backlog
    left = soft - _open_descriptors()
    backlog = min(limits.backlog, max(16, left // 8))
    return max(1, min(DEFAULT_MAX_CONNECTIONS, (left - 3 * backlog) // 2)), backlog


def _open_descriptors() -> int:
    """How many file descriptors the process has open (0 where that cannot be listed)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return 0


class CutConnection(Exception):
    """Raised by the app after the last chunk of a response that must end in a broken connection: the ASGI
    server then closes the transport without finishing the body (ASGI has no other way to say so)."""


class _QuietCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], CutConnection))


LOGGER.addFilter(_QuietCut())


class ReplayApp:
    """ASGI application answering Messages requests through a :class:`Router` within ``limits``.

    ``on_request(record)`` is called after each response with the :class:`RecordedRequest` (method,
    target, fixture, status, bytes sent, ms); it runs on the server's event loop and must not block.
    """

    def __init__(
        self,
        router: Router,
        limits: ServerLimits | None = None,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        self.router = router
        self.limits = limits or ServerLimits()
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are refused by the server
            return
        started = time.monotonic()
        limits = self.limits
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string") or b""
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        grouped: dict[str, list[str]] = {}
        for key, value in scope["headers"]:
            grouped.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        headers = {k: ", ".join(v) for k, v in grouped.items()}

        if len(scope["headers"]) > limits.max_headers:
            msg = f"{len(scope['headers'])} header fields; the limit is {limits.max_headers}"
            await self._finish(*self.router.reject(method, target, headers, error_response(431, msg, close=True)),
                               send, started)
            return
        # The head as sent (request line, "name: value" CRLF lines, blank line), whichever server parsed it.
        head = len(method) + len(target) + 12 + sum(len(k) + len(v) + 4 for k, v in scope["headers"]) + 2
        if head > limits.max_header_bytes:
            msg = f"request head of {head} bytes; the limit is {limits.max_header_bytes}"
            await self._finish(*self.router.reject(method, target, {}, error_response(431, msg, close=True)),
                               send, started)
            return
        raw = await self._read_body(headers, receive)
        if isinstance(raw, PlannedResponse):
            await self._finish(*self.router.reject(method, target, headers, raw), send, started)
            return
        if raw is None:  # the client went away
            return
        record, planned = self.router.answer(method, target, headers, raw)
        # The body is read, so receive() now returns only when the client goes away: a paced response
        # stops there instead of sleeping and sending into a closed connection.
        gone = asyncio.ensure_future(receive())
        try:
            await self._finish(record, planned, send, started, gone)
        finally:
            gone.cancel()

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | PlannedResponse | None:
        limits = self.limits
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_body_bytes:
            return error_response(413, f"request body of {length} bytes; the limit is {limits.max_body_bytes}",
                                  close=True)
        parts: list[bytes] = []
        total = 0
        deadline = time.monotonic() + limits.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return error_response(408, f"request body not received within {limits.body_timeout:g} s",
                                      close=True)
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > limits.max_body_bytes:
                return error_response(413, f"request body over the limit of {limits.max_body_bytes} bytes",
                                      close=True)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _finish(
        self,
        record: RecordedRequest,
        planned: PlannedResponse,
        send: Send,
        started: float,
        gone: asyncio.Future[Message] | None = None,
    ) -> None:
        try:
            record.bytes_sent = await self._send(planned, send, gone)
        finally:
            record.ms = (time.monotonic() - started) * 1000.0
            if self.on_request is not None:
                self.on_request(record)
        if planned.end == "cut":
            raise CutConnection(f"fixture {record.fixture}: connection cut after {record.bytes_sent} bytes")

    @staticmethod
    async def _send(planned: PlannedResponse, send: Send, gone: asyncio.Future[Message] | None = None) -> int:
        """Send ``planned``; returns the body bytes sent. Streams (event streams, and any body that will be
        cut) go chunked; other bodies get a content-length. Stops early once ``gone`` (the client left) is
        done."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in planned.headers
                   if k.lower() not in _FRAMING]
        content_type = next((v for k, v in planned.headers if k.lower() == "content-type"), "")
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in planned.headers):
            headers.append((b"connection", b"close"))
        if planned.end != "cut" and not content_type.startswith("text/event-stream"):
            headers.append((b"content-length", str(sum(len(c) for _, c in planned.chunks)).encode()))
        if planned.head_delay > 0:  # a server that says nothing at all for a while (faults.Stall(headers=True))
            if gone is None:
                await asyncio.sleep(planned.head_delay)
            else:
                await asyncio.wait((gone,), timeout=planned.head_delay)
                if gone.done() and gone.exception() is None and gone.result()["type"] == "http.disconnect":
                    return 0
        await send({"type": "http.response.start", "status": planned.status, "headers": headers})
        due = time.monotonic()
        sent = 0
        for delay, chunk in planned.chunks:
            if delay > 0:
                due += delay  # deadlines, not sleeps: pacing does not drift with the time spent sending
                wait = due - time.monotonic()
                if wait > 0:
                    if gone is None:
                        await asyncio.sleep(wait)
                    else:
                        await asyncio.wait((gone,), timeout=wait)
            if gone is not None and gone.done():
                if gone.exception() is None and gone.result()["type"] == "http.disconnect":
                    return sent
                gone = None  # woken by something else: stop watching rather than misread it
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        if planned.end != "cut":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return sent
