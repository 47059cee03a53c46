# Running ReplayApp on uvicorn (h11), with the limits uvicorn does not enforce by itself: a deadline for a
# request's headers (uvicorn only times out idle keep-alive connections, so a connection that never sends,
# or trickles a header byte at a time, would be held for ever), a cap on open connections (so idle ones
# cannot exhaust file descriptors), and 431 for an oversized request head. Imported only when a server
# starts, so importing mendstream.testing works without uvicorn installed.
from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mendstream.testing.app import LOGGER, ReplayApp, ServerLimits, descriptor_plan
from mendstream.testing.routing import error_body, error_type_for

__all__ = ["bind", "run"]

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a request head (it accepts bare LF line ends too)


def _raw_error(status: int, message: str) -> bytes:
    """A complete JSON error response for a connection h11 cannot answer (no request parsed yet)."""
    body = error_body(error_type_for(status), message)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, _REASONS[status], len(body)) + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline, a connection cap and 431 (see the module comment)."""

    limits: ClassVar[ServerLimits]
    max_connections: ClassVar[int]  # connection_cap(limits), resolved when the server starts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = LOGGER
        self._header_timer: asyncio.TimerHandle | None = None
        self._pending = 0  # bytes received towards the current request head
        self._tail = b""  # the last 2 bytes of those (a head's end, LF [CR] LF, may straddle two reads)
        self._rejected = False

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._rejected = True
            self.transport = transport
            transport.write(_raw_error(503, f"more than {self.max_connections} open connections"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected or self.transport.is_closing():
            return
        if self._waiting_for_head():
            # Checked before h11 sees the bytes: a whole oversized head can arrive in one read, and h11
            # would parse it (up to its own, larger bound) before the check after the call could see it.
            # Only the head counts, not the body bytes that came in the same read.
            window = self._tail + data
            end = _HEAD_END.search(window)
            head = self._pending + (end.end() - len(self._tail) if end is not None else len(data))
            if head > self.limits.max_header_bytes:
                self._too_large()
                return
            self._pending += len(data)
            self._tail = window[-2:]
        super().data_received(data)
        if self.transport.is_closing():
            return
        if not self._waiting_for_head():
            self._pending = 0
            self._tail = b""
            self._disarm()
            return
        self._arm()

    def _too_large(self) -> None:
        self._disarm()
        self.transport.write(_raw_error(431, f"request head over {self.limits.max_header_bytes} bytes"))
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._header_timer = None
        if not self._waiting_for_head() or self.transport.is_closing():
            return
        if self._pending:
            timeout = self.limits.header_timeout
            self.transport.write(_raw_error(408, f"request head not received within {timeout:g} s"))
        self.transport.close()


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port). Raises ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio disables Nagle (TCP_NODELAY) only on sockets that say they are TCP,
    # and with Nagle on, every response pays a 40 ms delayed-ACK stall between its head and its body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def run(app: ReplayApp, sock: socket.socket, stop: asyncio.Event, on_started: Callable[[], None]) -> None:
    """Serve ``app`` on the bound ``sock`` until ``stop`` is set; then close every connection at once."""
    limits = app.limits
    max_connections, backlog = descriptor_plan(limits)
    protocol = type("BoundLimitedH11Protocol", (LimitedH11Protocol,),
                    {"limits": limits, "max_connections": max_connections})
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # uvicorn types it as int but hands it to loop.call_later, which takes seconds as a float
        timeout_keep_alive=cast(int, limits.idle_timeout),
        backlog=backlog,  # also how many connections asyncio accepts at once (see descriptor_plan)
        # h11's own bound on a buffered head; ours (431) is checked first, after each read (<= 256 KiB)
        h11_max_incomplete_event_size=limits.max_header_bytes + 256 * 1024,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        on_started()
        await stop.wait()
    finally:
        # uvicorn's own shutdown waits for streaming responses to finish; stop() promises to drop them.
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        tasks = list(server.server_state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
