# The proxy's upstream client: HTTP/1.1 to one origin, on asyncio's protocol layer with httptools' parser
# (llhttp), and a pool of kept-alive connections. Chosen over httpx2 for the proxy because per request it
# does a small fraction of the work (no request/response models, no anyio streams, no pool scan: httpx2 and
# its pool were half of the proxy's CPU at 50 concurrent streams), and because a protocol object hears of a
# closed connection the moment the peer closes it.
#
# Theory of operation
# -------------------
# - One _Connection per TCP (or TLS) connection. It is in the pool (idle), carrying one request (busy), or
#   closed. An idle connection keeps reading: when the upstream closes it (its own keep-alive timeout, a
#   restart) connection_lost removes it from the pool at once, so a request is never sent into a connection
#   known to be closed. Pooled connections also expire after `keepalive` seconds, or sooner when the upstream
#   says `Keep-Alive: timeout=N` (we keep them N - 1 s: the upstream closes first, never mid-request).
# - The remaining race (the upstream closes an idle connection while our request is on its way) is told
#   apart by its signature: a reused connection that closes before a single byte of the response arrived.
#   Such a request is sent once more on a new connection (as browsers do); never after any response byte.
#   (The upstream's idle clock starts when it finished sending, ours when we finished reading: a reader that
#   lags, e.g. a busy worker, hands back connections the upstream is about to close, several at once.)
# - A response's body is queued by the protocol (chunked and content-length framing undone by llhttp) and
#   read by `chunks()`; past 1 MiB queued, the connection stops reading until the reader catches up.
# - A response goes back to the pool only when its body was read to the end, llhttp says keep-alive, and it
#   was not a HEAD (llhttp cannot be told a HEAD answer has no body). Anything else closes the connection:
#   a reader that stops early, a cancelled task, a timeout.
# - Timeouts: `connect_timeout` to connect (and TLS), `read_timeout` for the head and between two chunks.
from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time
from collections.abc import AsyncGenerator
from typing import Final

import httptools

from mendstream.wire.proxy import UpstreamError

__all__ = ["UpstreamPool", "UpstreamResponse", "env_proxy_for"]

_HIGH_WATER: Final = 1024 * 1024


def env_proxy_for(scheme: str, host: str) -> str | None:
    """The proxy that ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (and ``NO_PROXY``) name for
    ``scheme://host``, as httpx would use it; None for a direct connection."""
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def _ssl_context() -> ssl.SSLContext:
    """Verified TLS as httpx sets it up: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's bundle when
    installed, else the system's."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            pass
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Stale(Exception):
    """A connection closed before any byte of the response arrived."""


class UpstreamResponse:
    """One upstream answer: ``status``, raw ``headers`` (as received), ``chunks()`` (the body with its
    transfer coding undone, content coding kept) and ``aclose()`` (returns the connection to the pool when
    the body was read to the end, else closes it)."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_head", "_head_only", "_queued", "_waiter", "headers",
                 "keep_alive", "status")

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self._conn: _Connection | None = conn
        self._head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the protocol ------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_complete(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            self._done = True

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._done:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(_Stale() if error.kind == "closed" and not self.status else error)
            self._head.exception()  # retrieved: the request may have gone away already
        self._wake()

    # -- read by the proxy ------------------------------------------------------------------------------------

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (several queued chunks come joined).

        Raises:
            UpstreamError: the upstream broke the connection, or stayed silent past the read timeout.
        """
        conn = self._conn
        timeout = conn.pool.read_timeout if conn is not None else 0.0
        while True:
            if self._chunks:
                data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._queued = 0
                if conn is not None:
                    conn.resume()
                yield data
                continue
            if self._done:
                return
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter, timeout)  # (cheaper than asyncio.timeout per wait)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._error is None and self.keep_alive and not self._head_only and not self._chunks:
            conn.release()
        else:
            conn.close()


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", f"the upstream sent nothing for {timeout:g} s"))


class _Connection(asyncio.Protocol):
    """One connection to the upstream (see the module comment)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.pooled = False
        self.requests = 0
        self.expires = 0.0
        self._paused = False
        self._keepalive: float | None = None  # from the upstream's Keep-Alive header

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        if self.response is None or (self.response._done and not self.response._head_only):
            # bytes nobody asked for: the connection cannot be trusted
            if self.response is not None:
                self.response._conn = None  # (its whole answer is already queued)
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._lost(UpstreamError("protocol", "the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._lost(UpstreamError("protocol", f"the upstream's answer is not HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response._done:
            if not response.status and not response._chunks:
                response._fail(UpstreamError("closed", "the upstream closed the connection before answering"))
            elif self._close_delimited(response):
                response._complete(False)  # a body that ends with the connection (no length, not chunked)
            else:
                reason = f" ({type(exc).__name__}: {exc})" if exc else ""
                response._fail(UpstreamError("closed", f"the upstream closed the connection mid-response{reason}"))
        self.pool._discard(self)

    # -- httptools callbacks ----------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:  # an interim answer (100 Continue, 103 Early Hints): not the one
            response.headers.clear()
            return
        response._headers_complete(status)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or (response._done and not response._head_only):
            return
        keep_alive = self.parser.should_keep_alive()
        if keep_alive:
            self._keepalive = _keepalive_hint(response.headers)
        response._complete(keep_alive)

    # -- used by the pool and the response --------------------------------------------------------------------

    @staticmethod
    def _close_delimited(response: UpstreamResponse) -> bool:
        if not response.status or response.status in (204, 304):
            return False
        names = {name.lower() for name, _ in response.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _lost(self, error: UpstreamError) -> None:
        if self.response is not None:
            self.response._fail(error)
        self.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def send(self, head: bytes, body: bytes, head_only: bool) -> UpstreamResponse:
        assert self.transport is not None
        self.requests += 1
        self.response = UpstreamResponse(self, head_only)
        if len(body) < 64 * 1024:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return self.response

    def release(self) -> None:
        """Back to the pool after a whole response (see UpstreamResponse.aclose)."""
        self.response = None
        self.resume()
        keepalive = self.pool.keepalive if self._keepalive is None else min(self.pool.keepalive, self._keepalive)
        if self.closed or keepalive <= 0:
            self.close()
            return
        self.expires = time.monotonic() + keepalive
        self.pool._idle(self)

    def close(self) -> None:
        self.closed = True
        self.response = None
        if self.transport is not None:
            self.transport.close()
        self.pool._discard(self)


def _keepalive_hint(headers: list[tuple[bytes, bytes]]) -> float | None:
    """Seconds to keep the connection after the upstream's ``Keep-Alive: timeout=N`` (N - 1: it closes first)."""
    for name, value in headers:
        if name.lower() == b"keep-alive":
            for part in value.split(b","):
                key, _, number = part.strip().partition(b"=")
                if key.strip().lower() == b"timeout" and number.strip().isdigit():
                    return float(int(number.strip()) - 1)
    return None


class UpstreamPool:
    """Connections to one upstream origin (see the module comment).

    Args:
        scheme, host, port: the origin (``http`` or ``https``).
        connect_timeout: seconds to connect (TLS handshake included).
        read_timeout: seconds the upstream may stay silent before its head, or between two body chunks.
        keepalive: seconds an idle connection is kept (less when the upstream says less).
        max_idle: idle connections kept at most (the least recently used are closed).
    """

    def __init__(self, scheme: str, host: str, port: int, *, connect_timeout: float = 10.0,
                 read_timeout: float = 600.0, keepalive: float = 4.0, max_idle: int = 256) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self._ssl = _ssl_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        self._host_header = (shown if port == default else f"{shown}:{port}").encode("idna")
        self._idle_conns: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()
        self.stale_retries = 0
        """Requests sent again because their reused connection closed before any byte of an answer."""

    # -- connections ------------------------------------------------------------------------------------------

    def _idle(self, conn: _Connection) -> None:
        conn.pooled = True
        self._idle_conns.append(conn)
        while len(self._idle_conns) > self.max_idle:
            oldest = self._idle_conns.popleft()
            oldest.pooled = False
            oldest.close()

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.pooled:  # (a scan of the idle ones, only for a connection closed while idle)
            conn.pooled = False
            self._idle_conns.remove(conn)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None)
        except TimeoutError:
            raise UpstreamError("timeout", f"connecting took over {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc.strerror or exc}"
                                if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}",
                                ) from None
        conn = protocol
        self._all.add(conn)
        return conn

    def _reusable(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle_conns:
            conn = self._idle_conns.pop()  # the most recently used: the least likely to be closed by now
            conn.pooled = False
            if conn.closed or now >= conn.expires:
                conn.close()
                continue
            return conn
        return None

    # -- requests ---------------------------------------------------------------------------------------------

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> UpstreamResponse:
        """Send one request (``target``: the path and query) and wait for the head of its answer.

        Raises:
            UpstreamError: the upstream could not be reached, closed the connection before answering, or
                sent no head within the read timeout.
        """
        lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode("ascii"), target.encode("latin-1"),
                                                       self._host_header)]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        head = b"".join(lines)
        head_only = method == "HEAD"
        for attempt in range(2):
            conn = self._reusable() if attempt == 0 else None  # the second try: always a new connection
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            response = conn.send(head, body, head_only)
            try:
                async with asyncio.timeout(self.read_timeout):
                    await asyncio.shield(response._head)
            except _Stale:
                conn.close()
                if reused and attempt == 0:
                    self.stale_retries += 1
                    continue  # closed under us while idle: once more, on a new connection
                raise UpstreamError("closed", "the upstream closed the connection before answering") from None
            except TimeoutError:
                conn.close()
                raise UpstreamError("timeout", f"no answer within {self.read_timeout:g} s") from None
            except BaseException:
                conn.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
