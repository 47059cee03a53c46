# The repairing proxy: an ASGI application (served by uvicorn, see wire/serving.py) that forwards every request
# to one upstream Messages API, applying mendstream.wire.rewrite to Messages requests (cache breakpoints) and
# to their SSE responses (repairs), chunk by chunk. For agents that can only be given a base URL.
#
# Theory of operation (one request)
# ---------------------------------
# 1. The target's path and query (undecoded) are appended to the upstream's fixed origin (UpstreamURL):
#    nothing in a request chooses the host. The proxy's own endpoints (/mendstream/stats, /metrics) are
#    answered here.
# 2. The body is read within ProxyLimits: refused up front from content-length, and while reading, over
#    max_body_bytes (413, the Messages API's own 32 MB); body_timeout for the whole body (408). Headers over
#    max_headers get 431; the head's size, the header deadline, idle keep-alive and the connection cap are
#    the server's (wire/serving.py), which answers before the application runs.
# 3. A Messages request's JSON is decoded only after a linear count of its containers and separators
#    (max_json_values): a body of millions of empty arrays is refused before it can take the event loop
#    for seconds and gigabytes; a large one is decoded and planned in a worker thread. Too deep: 400.
# 4. From then on a watcher waits for the client to go away: it cancels the request's task, which closes the
#    upstream request (its connection is dropped, never reused) within one event-loop turn.
# 5. Request headers lose the hop-by-hop ones (Connection and what it names, Keep-Alive, Proxy-*, TE,
#    Trailer, Transfer-Encoding, Upgrade, Expect, Host, Content-Length); Messages requests ask for identity
#    encoding. Responses lose the same; a body passed unmodified keeps its Content-Length (HEAD included).
# 6. A Messages SSE answer goes through _stream_messages: repaired chunk by chunk; a gzip/deflate answer (sent
#    despite identity) is decoded first; the response ends after message_stop or a terminal error even if
#    the upstream keeps its connection open (what follows is read for a moment, bounded, then dropped, so the
#    connection can be reused). Any other answer passes byte for byte; if the upstream cuts it, the client's
#    connection is cut too (never a short body presented as whole).
# 7. Failures are answered in the API's error shape (400/408/413/431/502), logged as one line per kind and
#    rate-limited; never a 500 with a traceback.
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from mendstream.errors import StreamStalledError, UsageError
from mendstream.recording.files import CaptureDirectory
from mendstream.streaming.drivers import AsyncRun, Opened
from mendstream.streaming.machine import Fail, Open
from mendstream.wire.boundary import PROXY_SURVIVAL, NotAStream, Survival, UpstreamStatusError, boundary_machine
from mendstream.wire.coalesce import DEFAULT_WINDOW, DeltaCoalescer, coalesce_window
from mendstream.wire.coalesce_drivers import AsyncCoalescing
from mendstream.wire.rewrite import CACHE_MODES, error_event, is_messages_path, rewrite_request
from mendstream.wire.sanitize import sanitize_body

__all__ = [
    "LOGGER",
    "ProxyApp",
    "ProxyLimits",
    "UpstreamURL",
    "app_from_env",
    "conversation_key",
    "create_app",
    "http_library",
    "run_proxy",
    "seconds",
]

LOGGER = logging.getLogger("mendstream.proxy")
"""The proxy's own log: one line per kind of failure (rate-limited), never a credential or a query string."""

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded, either way. A request also loses those the proxy
# sets itself (host, content-length: the body may be re-encoded); a response keeps its content-length
# wherever its body passes unmodified.
_HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"expect",
})
_NOT_FORWARDED: Final = _HOP_BY_HOP | {b"host", b"content-length"}
_STATS_PATH: Final = "/mendstream/stats"
_METRICS_PATH: Final = "/metrics"
# After message_stop, what the upstream still sends is read for this long (and this much) so its connection
# can go back to the pool; the client already has its whole response by then.
_DRAIN_SECONDS: Final = 0.5
_DRAIN_BYTES: Final = 1024 * 1024
# Bodies at least this large are decoded and planned in a worker thread (Python code there yields the GIL
# every few milliseconds; the bounded json.loads call is the one piece that does not).
_THREAD_BODY_BYTES: Final = 256 * 1024
_GZIP_ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})
# An upstream error answer (4xx/5xx) is read up to this much before it is judged and passed on; the API's own
# error bodies are a few hundred bytes.
_ERROR_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Every bound the proxy puts on what a client or the upstream can make it hold. Defaults are at least as
    strict as nginx's and envoy's (docs/proxy.md, "Running the proxy for a team", says why each).

    Attributes:
        header_timeout: seconds to receive a request's head, from connecting or from the first byte of a
            further request (then 408, or a silent close if nothing came).
        keepalive_timeout: seconds a keep-alive connection may wait for its next request. Longer than the
            clients' own pools keep idle connections (httpx 5 s, aiohttp 15 s, Node 4 s), so the client
            closes first and never sends into a connection the proxy is closing.
        body_timeout: seconds to receive a whole request body once its head arrived (then 408).
        max_body_bytes: larger request bodies get 413, refused from content-length before reading.
        max_header_bytes: a request head larger than this gets 431.
        max_headers: a request with more header fields than this gets 431.
        max_json_values: a Messages request with more JSON containers and separators (``[``, ``{``, ``,``,
            counted in the raw bytes) gets 413 before it is decoded.
        max_connections: open client connections; beyond it idle keep-alive connections are closed to make
            room, else the new connection gets 503. ``None``: a third of the process's file limit (each
            stream also holds an upstream connection, and the upstream pool keeps idle ones), at most 4096.
        upstream_connect_timeout: seconds to connect to the upstream (then 502).
        upstream_read_timeout: seconds the upstream may stay silent (before its head, or between two
            chunks) before the request fails (502) or the stream ends with an error event.
        upstream_keepalive: seconds an idle upstream connection is kept for reuse.
    """

    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    body_timeout: float = 60.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_json_values: int = 1_000_000
    max_connections: int | None = None
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    upstream_keepalive: float = 4.0

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keepalive_timeout", "body_timeout", "upstream_connect_timeout",
                     "upstream_read_timeout", "upstream_keepalive"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise UsageError(f"ProxyLimits.{name} must be a number of seconds > 0; got {value!r}")
        for name in ("max_body_bytes", "max_header_bytes", "max_headers", "max_json_values"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"ProxyLimits.{name} must be an integer >= 1; got {value!r}")
        cap = self.max_connections
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise UsageError(f"ProxyLimits.max_connections must be an integer >= 1 or None; got {cap!r}")

    def connection_cap(self) -> int:
        """``max_connections``, or when it is None the default derived from ``RLIMIT_NOFILE`` (see above)."""
        if self.max_connections is not None:
            return self.max_connections
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            soft = 1024
        if soft == -1 or soft > 1 << 20:  # RLIM_INFINITY or absurdly large
            soft = 1 << 20
        return max(16, min(4096, (soft - 64) // 3))

    def to_json(self) -> str:
        """The limits as JSON (for ``MENDSTREAM_LIMITS``; see :func:`app_from_env`)."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> ProxyLimits:
        """The limits from :meth:`to_json`'s format (unknown names refused).

        Raises:
            UsageError: not a JSON object, an unknown name or a bad value.
        """
        try:
            data = json.loads(text)
        except ValueError:
            raise UsageError(f"MENDSTREAM_LIMITS is not JSON; got {text[:100]!r}") from None
        if not isinstance(data, dict):
            raise UsageError("MENDSTREAM_LIMITS must be a JSON object of ProxyLimits fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"MENDSTREAM_LIMITS: unknown limits {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**data)


def http_library() -> Any:
    """httpx2 when installed, else httpx. httpx2's connection pool checks a kept-alive connection's expiry
    without a system call; httpx's polls the socket of every pooled connection on every request, which made
    that check most of the proxy's CPU at 50 concurrent streams."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        pass
    try:
        import httpx

        return httpx
    except ImportError:
        raise UsageError("the proxy needs httpx2 or httpx: pip install 'mendstream[proxy]'") from None


def _error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


class UpstreamURL:
    """Where the proxy sends requests: the scheme, host, port and base path of ``--upstream``, fixed at start.

    A request contributes only its path and query, as received (never percent-decoded, so ``%2F`` in a Bedrock
    model ARN stays one path segment), appended to the base path. Nothing in a request can change the host or
    port, or add userinfo: a target that is not origin-form (``/path``), such as ``@host:port/...``,
    ``:port/...``, ``.evil.example/...``, ``http://other/...``, ``host:443`` (CONNECT) or ``*`` (OPTIONS),
    is refused with :class:`~mendstream.UsageError` (the proxy answers 400), as nginx never connects to a
    host a request names.
    """

    __slots__ = ("base_path", "host", "origin", "port", "scheme")

    def __init__(self, upstream: str) -> None:
        if not isinstance(upstream, str) or not upstream.startswith(("http://", "https://")):
            raise UsageError(f"upstream must be an http:// or https:// URL; got {upstream!r}")
        try:
            parts = urlsplit(upstream)
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"upstream is not a valid URL ({exc}); got {upstream!r}") from None
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UsageError(
                "upstream must not carry credentials (user:password@): they would be sent with every request; "
                "the proxy forwards the client's own x-api-key / authorization headers"
            )
        if not parts.hostname:
            raise UsageError(f"upstream has no host; got {upstream!r}")
        if parts.query or parts.fragment:
            raise UsageError(f"upstream must not have a query or fragment; got {upstream!r}")
        host = parts.hostname
        self.scheme = parts.scheme
        self.host = host
        self.port = port if port is not None else (443 if parts.scheme == "https" else 80)
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        self.origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
        self.base_path = parts.path.rstrip("/")

    def __str__(self) -> str:
        return self.origin + self.base_path

    def target(self, raw_path: bytes, query: bytes) -> str:
        """The request target sent upstream (base path, path, query) for a request whose target had
        ``raw_path`` and ``query`` (undecoded bytes).

        Raises:
            UsageError: the target is not origin-form (it does not start with a single ``/``).
        """
        if not raw_path.startswith(b"/"):
            shown = raw_path[:100].decode("latin-1")
            raise UsageError(f"the request target must be a path starting with '/' (origin-form); got {shown!r}")
        target = self.base_path + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        return target

    def for_target(self, raw_path: bytes, query: bytes) -> str:
        """The upstream URL for a request whose target had ``raw_path`` and ``query`` (see :meth:`target`)."""
        return self.origin + self.target(raw_path, query)


def conversation_key(payload: Mapping[str, Any]) -> str:
    """The conversation a request belongs to, found by its prefix: model, tools, system and first message
    (a conversation only appends to its messages). A short hex digest of the prompt prefix: it is salted
    before it is stored or shown (the state store's salt; the stats' per-process salt), so nobody can
    confirm a guessed system prompt from it."""
    messages = payload.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    head = json.dumps([payload.get("model"), payload.get("tools"), payload.get("system"), first],
                      sort_keys=True, default=str).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def _count(value: Any) -> int:
    """A usage number as the API sends it; anything else (a string, a float, a bool, a negative) counts 0."""
    return value if type(value) is int and value > 0 else 0


class _Usage:
    __slots__ = ("read", "uncached", "write")

    def __init__(self) -> None:
        self.read = self.write = self.uncached = 0

    def add(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        self.read += _count(usage.get("cache_read_input_tokens"))
        self.write += _count(usage.get("cache_creation_input_tokens"))
        self.uncached += _count(usage.get("input_tokens"))

    def to_dict(self) -> dict[str, Any]:
        total = self.read + self.write + self.uncached
        return {"cache_read_input_tokens": self.read, "cache_creation_input_tokens": self.write,
                "uncached_input_tokens": self.uncached, "hit_ratio": (self.read / total) if total else None}


# -- failures ---------------------------------------------------------------------------------------------------


class _Refusal(Exception):
    """A request the proxy answers itself with an API-shaped error (``close``: the connection is closed
    after it, because part of the request was left unread)."""

    def __init__(self, status: int, error_type: str, message: str, *, kind: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.kind = kind
        self.close = close


class UpstreamCut(Exception):
    """Raised out of the ASGI application after the upstream cut a response passed byte for byte: the
    server then closes the client's connection without ending the body, so the client sees the cut too
    (ASGI has no other way to say so). The serving module logs it as one line, never with a traceback."""


class UpstreamError(Exception):
    """The upstream could not be reached, did not answer in time, or broke the connection (``kind``:
    ``connect``, ``timeout``, ``closed`` or ``protocol``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _ClientGone(Exception):
    """The client went away: nothing more can be sent to it."""


# -- logging ------------------------------------------------------------------------------------------------------


class RateLimitedLog(logging.Filter):
    """A logging filter that lets through one record per kind (logger, message template, exception type)
    per ``interval`` seconds, without its traceback (the exception's type and text are appended instead),
    and says how many of that kind it held back. So 600 connections failing alike write a few lines, not
    150,000 tracebacks. Also redacts the query string of uvicorn's access log lines."""

    def __init__(self, interval: float = 10.0, max_kinds: int = 256) -> None:
        super().__init__("mendstream-rate-limit")
        self.interval = interval
        self.max_kinds = max_kinds
        self._seen: OrderedDict[tuple[str, str, str], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access":
            _redact_access(record)
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and record.levelno < logging.WARNING:
            return True
        if isinstance(exc, UpstreamCut):
            record.msg, record.args = "upstream cut a response: %s (the client's connection was cut too)", (exc,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif exc is not None:
            record.msg = f"{record.getMessage().strip()}: {type(exc).__name__}: {exc}".replace("%", "%%")
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        kind = (record.name, str(record.msg)[:200] if exc is None else type(exc).__name__, str(record.levelno))
        now = time.monotonic()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._seen[kind] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._seen[kind] = (now, 0)
        self._seen.move_to_end(kind)
        while len(self._seen) > self.max_kinds:
            self._seen.popitem(last=False)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it in the last {self.interval:g} s)".replace(
                "%", "%%")
            record.args = ()
        return True


def _redact_access(record: logging.LogRecord) -> None:
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
        record.args = (*args[:2], args[2].split("?", 1)[0] + "?[redacted]", *args[3:])


_LOG_FILTER = RateLimitedLog()


def install_log_filters() -> None:
    """Put the rate limiter (and the access log's query redaction) on the loggers a proxy writes to:
    ``mendstream.proxy``, ``mendstream.state``, ``uvicorn.error``, ``uvicorn.access`` and ``asyncio``.
    Idempotent."""
    for name in ("mendstream.proxy", "mendstream.state", "uvicorn.error", "uvicorn.access", "asyncio"):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


# -- the upstream's answer ------------------------------------------------------------------------------------------


class _HttpxUpstream:
    """An upstream response read through httpx2/httpx: ``status``, raw ``headers``, ``chunks()`` (the body
    as received, transfer coding removed, content coding kept), ``aclose()``."""

    __slots__ = ("_errors", "_response", "headers", "status")

    def __init__(self, response: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._response = response
        self._errors = errors
        self.status: int = response.status_code
        self.headers: list[tuple[bytes, bytes]] = list(response.headers.raw)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except self._errors as exc:
            raise UpstreamError("closed", f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._response.aclose()


class _HttpxClient:
    """The upstream client on httpx2 (or httpx): used when httptools is missing or an HTTP(S)_PROXY applies
    to the upstream (wire/upstream.py speaks to the origin directly)."""

    def __init__(self, origin: str, limits: ProxyLimits) -> None:
        self._origin = origin
        httpx = http_library()
        # asyncio already sets TCP_NODELAY on its sockets. No connection limit: every client stream holds one
        # upstream connection for its whole length (the client connection cap bounds them).
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=256, keepalive_expiry=limits.upstream_keepalive))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(limits.upstream_read_timeout, connect=limits.upstream_connect_timeout),
            transport=transport)
        self._httpx = httpx

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> _HttpxUpstream:
        httpx = self._httpx
        request = self._client.build_request(method, self._origin + target, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", type(exc).__name__) from None
        except httpx.ConnectError as exc:
            raise UpstreamError("connect", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise UpstreamError("closed", type(exc).__name__) from None
        return _HttpxUpstream(response, (httpx.HTTPError,))

    async def aclose(self) -> None:
        await self._client.aclose()


async def _decoded(chunks: AsyncIterator[bytes], encoding: str) -> AsyncGenerator[bytes, None]:
    """``chunks`` with their gzip/deflate content coding removed (at most 1 MiB decoded per step, so a
    small chunk that expands a thousandfold is not held at once).

    Raises:
        UpstreamError: the compressed data is corrupt.
    """
    decoder: Any = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raw_deflate = encoding == "deflate"
    started = False
    async for chunk in chunks:
        data = chunk
        while data:
            try:
                out = decoder.decompress(data, 1024 * 1024)
            except zlib.error as exc:
                if raw_deflate and not started:  # "deflate" sent as a raw stream, as some servers do
                    decoder, raw_deflate = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise UpstreamError("protocol", f"the upstream's {encoding} body is corrupt ({exc})") from None
            started = True
            data = decoder.unconsumed_tail
            if out:
                yield out
    tail = decoder.flush()
    if tail:
        yield tail


def _forwardable(headers: list[tuple[bytes, bytes]], dropped: frozenset[bytes] = _HOP_BY_HOP,
                 ) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones: ``dropped`` and every header ``Connection`` names."""
    named = {token.strip().lower() for name, value in headers if name.lower() == b"connection"
             for token in value.split(b",")}
    return [(k, v) for k, v in headers if (low := k.lower()) not in dropped and low not in named]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


# -- the application ---------------------------------------------------------------------------------------------


class _Exchange:
    """One request as the proxy handles it: what was answered (for the metrics and the log), and the
    client-disconnect watcher."""

    __slots__ = ("_send", "complete", "gone", "left", "method", "path", "sent_bytes", "status", "task")

    def __init__(self, scope: Scope, send: Send) -> None:
        self._send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.status: int | None = None
        self.complete = False
        """True once the whole response was handed to the server (nothing after it may touch the client)."""
        self.sent_bytes = 0
        self.left = False
        """True once the client went away (its connection closed, or the request was cancelled)."""
        self.gone: asyncio.Future[Any] | None = None
        """Resolves when the client goes away (or the response completes); None until the body is read."""
        self.task: asyncio.Task[Any] | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.sent_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                # the response is complete: receive() now returns because of that, not because the client
                # left, so the watcher must not read it as a disconnect
                self.complete = True
                self.stop_watching()
        await self._send(message)

    def watch(self, receive: Receive) -> None:
        """Start watching for the client to leave (call once the body is read: ``receive()`` then returns
        only on a disconnect). When it leaves, the request's task is cancelled: whatever it awaits, the
        upstream request included, stops at once."""
        self.task = asyncio.current_task()
        self.gone = asyncio.ensure_future(receive())
        self.gone.add_done_callback(self._on_gone)

    def _on_gone(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or self.task is None:
            return
        if future.exception() is None and future.result().get("type") != "http.disconnect":
            return
        self.left = True
        self.task.cancel()

    def stop_watching(self) -> None:
        if self.gone is not None:
            self.gone.remove_done_callback(self._on_gone)
            self.gone.cancel()
            self.gone = None


class _Forwarded:
    """A request as the proxy forwards it: enough to send it again (a retry, a continuation).

    ``target`` is the path and query sent upstream (under the upstream's base path); ``headers`` are the
    client's without the hop-by-hop ones (for Messages requests, asking for identity coding); ``body`` is
    what is sent (planned, for Messages requests); ``payload`` the planned request as
    decoded JSON (None for other requests); ``key`` its conversation key (unsalted: never shown); ``started``
    when the proxy began forwarding it (``time.monotonic()``).
    """

    __slots__ = ("body", "headers", "key", "method", "payload", "started", "target")

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.payload: Any = None
        self.key: str | None = None
        self.started = time.monotonic()


class ProxyApp:
    """The ASGI application; see :func:`create_app`."""

    def __init__(
        self,
        upstream: str,
        *,
        cache: Literal["default", "planner", "off"] = "default",
        capture: str | os.PathLike[str] | CaptureDirectory | None = None,
        max_conversations: int = 1024,
        timeout: float | None = None,
        limits: ProxyLimits | None = None,
        state: str | None = None,
        state_options: Mapping[str, Any] | None = None,
        metrics: bool = False,
        stats: bool = True,
        stats_token: str | None = None,
        coalesce: float | bool | None = DEFAULT_WINDOW,
        survival: Survival | None = PROXY_SURVIVAL,
        sanitize: bool = False,
    ) -> None:
        if cache not in CACHE_MODES:
            raise UsageError(f"cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
        self.upstream = UpstreamURL(upstream)
        if isinstance(max_conversations, bool) or not isinstance(max_conversations, int) or max_conversations < 1:
            raise UsageError(f"max_conversations must be a positive integer; got {max_conversations!r}")
        if limits is not None and not isinstance(limits, ProxyLimits):
            raise UsageError(f"limits must be a ProxyLimits; got {limits!r}")
        limits = limits or ProxyLimits()
        if timeout is not None:  # the older spelling of the upstream read timeout
            limits = ProxyLimits(**{**{f.name: getattr(limits, f.name) for f in fields(limits)},
                                    "upstream_read_timeout": timeout})
        if stats_token is not None and (not isinstance(stats_token, str) or len(stats_token) < 16):
            raise UsageError("stats_token must be a string of at least 16 characters (e.g. from "
                             "`python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        if state not in (None, "memory") and cache != "planner":
            raise UsageError("a planner state store (--state) is only used with --cache planner")
        if survival is not None and not isinstance(survival, Survival):
            raise UsageError(f"survival must be a mendstream.wire.boundary.Survival or None; got {survival!r}")
        self.cache = cache
        self.coalesce = coalesce_window(coalesce)
        self.survival = survival if survival is not None else Survival()
        self.sanitize = bool(sanitize)
        self.request_changes: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        """Upstream attempts of Messages streams by kind: ``first``, ``retry`` (invisible), ``continue``,
        and ``stalled`` for those that stalled."""
        self.limits = limits
        # Captures are CaptureWriter captures (scrubbed body + sidecar, 0600, random names, size cap) in a
        # directory resolved and pinned once (mendstream.recording.files.CaptureDirectory).
        self._capture_dir = (capture if isinstance(capture, CaptureDirectory) or capture is None
                             else CaptureDirectory(capture))
        self.capture = self._capture_dir.path if self._capture_dir is not None else None
        self.max_conversations = max_conversations
        self.timeout = limits.upstream_read_timeout
        self.stats_enabled = bool(stats)
        self._stats_token = stats_token.encode() if stats_token is not None else None
        self.serve_metrics = bool(metrics)
        self.metrics: Any = None
        try:
            from mendstream.wire.metrics import ProxyMetrics

            self.metrics = ProxyMetrics()
        except UsageError:
            if metrics:
                raise
        self.store: Any = None
        if cache == "planner":
            from mendstream.wire.state import open_planner_store

            observer = self.metrics.state_event if self.metrics is not None else None
            self.store = open_planner_store(state, {"warn": False}, observer=observer, **dict(state_options or {}))
        self._salt = secrets.token_bytes(16)  # conversation keys in the stats: salted per process
        self._client: Any = None
        self._conversations: OrderedDict[str, _Usage] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.errors = 0
        self.repairs: Counter[str] = Counter()
        self.usage = _Usage()
        install_log_filters()

    # -- ASGI --------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == _STATS_PATH or (path == _METRICS_PATH and self.serve_metrics):
            await self._own_endpoint(scope, send)
            return
        exchange = _Exchange(scope, send)
        self.requests += 1
        try:
            await self._forward(scope, receive, exchange)
        except asyncio.CancelledError:
            if not exchange.left:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._failed("client_gone", None)
        except _ClientGone:
            exchange.left = True
            self._failed("client_gone", None)
        except Exception as exc:
            if exchange.complete:  # e.g. while reading on after message_stop: the client has its answer
                self._failed("internal", f"after a complete response: {type(exc).__name__}: {exc}")
                return
            await self._failure(exchange, exc)
        finally:
            exchange.stop_watching()
            if self.metrics is not None:
                status = exchange.status if not exchange.left else 499  # nginx's "client closed request"
                self.metrics.request(exchange.method, exchange.path, status if status is not None else 499)

    async def _failure(self, exchange: _Exchange, exc: Exception) -> None:
        """Answer a request that failed before its response was complete (or cut it, if it had started)."""
        if isinstance(exc, UsageError):  # a request the proxy will not forward; its body is left unread
            await self._refuse(exchange, _Refusal(400, "invalid_request_error", f"mendstream proxy: {exc}",
                                                  kind="bad_request", close=True))
        elif isinstance(exc, _Refusal):
            await self._refuse(exchange, exc)
        elif isinstance(exc, UpstreamCut):
            self._failed("upstream_cut", None)
            raise exc
        else:  # a bug: one line (rate-limited), a clean 502 if nothing was sent yet
            self._failed("internal", f"request failed: {type(exc).__name__}: {exc}")
            if exchange.status is not None:
                raise UpstreamCut(f"internal error after the response started ({type(exc).__name__})") from None
            await self._respond(exchange.send, 502, _error_body(
                "api_error", f"mendstream proxy: internal error ({type(exc).__name__})"), close=True)

    async def aclose(self) -> None:
        """Close the upstream client and the state store (pending state commits are awaited first)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.store is not None:
            await self.store.aclose()

    def stats(self, *, conversations: bool = True) -> dict[str, Any]:
        """Requests, repairs by kind, errors and cache usage: across every worker when the proxy runs
        several (from the metrics), else this process's. With ``conversations``, this worker's usage per
        conversation too, under salted keys (conversation keys are never shown unsalted)."""
        out: dict[str, Any]
        if self.metrics is not None:
            out = self.metrics.stats()
        else:
            out = {"requests": self.requests, "errors": self.errors, "repairs": dict(self.repairs),
                   "cache": self.usage.to_dict(), "workers": "this one"}
        out["answered_by"] = os.getpid()  # which worker (the totals are every worker's)
        out.setdefault("attempts", dict(self.attempts))
        if self.request_changes:
            out.setdefault("request_changes", dict(self.request_changes))
        if conversations:
            out["conversations"] = {key: usage.to_dict() for key, usage in self._conversations.items()}
            out["conversations_from"] = "this worker"
        return out

    # -- the proxy's own endpoints ----------------------------------------------------------------------------------

    async def _own_endpoint(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path == _STATS_PATH and not self.stats_enabled:
            await self._respond(send, 404, _error_body("not_found_error", f"{path} is turned off on this proxy"))
            return
        authorized = False
        if self._stats_token is not None:
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization" and value[:7].lower() == b"bearer ":
                    given = value[7:].strip()
            if not hmac.compare_digest(given, self._stats_token):
                await self._respond(send, 401, _error_body(
                    "authentication_error", f"{path} needs 'authorization: Bearer <the proxy's stats token>'"),
                    extra=[(b"www-authenticate", b'Bearer realm="mendstream"')])
                if self.metrics is not None:
                    self.metrics.request(scope["method"], path, 401)
                return
            authorized = True
        if scope["method"] not in ("GET", "HEAD"):
            await self._respond(send, 405, _error_body("invalid_request_error", f"{path} answers GET only"),
                                extra=[(b"allow", b"GET, HEAD")])
            return
        if path == _METRICS_PATH:
            body, content_type = self.metrics.render()
            await self._respond(send, 200, body, content_type=content_type.encode())
        else:
            # per-conversation usage only for whoever holds the token
            await self._respond(send, 200, json.dumps(self.stats(conversations=authorized)).encode())
        if self.metrics is not None:
            self.metrics.request(scope["method"], path, 200)

    # -- internals ---------------------------------------------------------------------------------------------

    def _http(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        """The upstream client: wire/upstream.py's pool (httptools), or httpx2/httpx when httptools is not
        installed or an HTTP(S)_PROXY / ALL_PROXY applies to the upstream (httpx honours them)."""
        upstream, limits = self.upstream, self.limits
        try:
            from mendstream.wire.upstream import UpstreamPool, env_proxy_for
        except ImportError:
            return _HttpxClient(upstream.origin, limits)
        if env_proxy_for(upstream.scheme, upstream.host) is not None:
            return _HttpxClient(upstream.origin, limits)
        return UpstreamPool(upstream.scheme, upstream.host, upstream.port,
                            connect_timeout=limits.upstream_connect_timeout,
                            read_timeout=limits.upstream_read_timeout, keepalive=limits.upstream_keepalive)

    @staticmethod
    async def _respond(send: Send, status: int, body: bytes, *, content_type: bytes = b"application/json",
                       close: bool = False, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, exchange: _Exchange, refusal: _Refusal) -> None:
        self._failed(refusal.kind, None)
        if exchange.status is not None:  # cannot happen: refusals come before the response starts
            raise UpstreamCut(f"refusal after the response started: {refusal.message}")
        await self._respond(exchange.send, refusal.status, _error_body(refusal.error_type, refusal.message),
                            close=refusal.close)

    def _failed(self, kind: str, line: str | None) -> None:
        """Count a failure of ``kind``; ``line``: also log it (rate-limited, one line)."""
        if kind != "client_gone":
            self.errors += 1
        if self.metrics is not None:
            self.metrics.error(kind)
        if line is not None:
            LOGGER.warning("%s", line)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limits = self.limits
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > limits.max_headers:
            raise _Refusal(431, "request_too_large",
                           f"mendstream proxy: {len(headers)} header fields; the limit is {limits.max_headers}",
                           kind="too_large", close=True)
        length = _header(headers, b"content-length")
        if length:
            if not length.isdigit():
                raise _Refusal(400, "invalid_request_error", "mendstream proxy: content-length is not a number",
                               kind="bad_request", close=True)
            if int(length) > limits.max_body_bytes:
                raise _Refusal(413, "request_too_large", f"mendstream proxy: request body of {length} bytes; "
                               f"the limit is {limits.max_body_bytes}", kind="too_large", close=True)
        parts: list[bytes] = []
        size = 0
        deadline = time.monotonic() + limits.body_timeout
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    message = await receive()
            except TimeoutError:
                raise _Refusal(408, "timeout_error", f"mendstream proxy: request body not received within "
                               f"{limits.body_timeout:g} s ({size} bytes arrived)", kind="timeout",
                               close=True) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise _Refusal(413, "request_too_large", f"mendstream proxy: request body over the limit of "
                               f"{limits.max_body_bytes} bytes", kind="too_large", close=True)
            if chunk:
                parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def _decode(self, body: bytes) -> dict[str, Any]:
        """The Messages request's JSON object, decoded only if it is bounded (see ProxyLimits)."""
        bound = self.limits.max_json_values
        # C-speed counts, strings included: an upper bound on the values json.loads would build
        values = body.count(b"[") + body.count(b"{")
        if values <= bound:
            values += body.count(b",")
        if values > bound:
            raise _Refusal(413, "request_too_large", f"mendstream proxy: the request body has over {bound:,} "
                           "JSON containers and separators; decoding it would hold the proxy for seconds",
                           kind="too_large")
        try:
            payload = json.loads(body)
        except RecursionError:
            raise UsageError("the request body's JSON is nested too deeply") from None
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"the request body is not JSON ({len(body)} bytes received)") from None
        if not isinstance(payload, dict):
            raise UsageError(f"the request body is JSON but not an object (a {type(payload).__name__})")
        return payload

    def _plan(self, body: bytes, planner: Any, payload: dict[str, Any] | None = None,
              ) -> tuple[bytes, str | None, Any]:
        """Decode (unless ``payload`` is given) and plan a Messages request: ``(body to send, conversation
        key, the request as sent)``. The key is computed only when it is used: per-conversation usage is
        shown to the holder of the stats token only."""
        if payload is None:
            payload = self._decode(body)
        if self.sanitize:
            sanitized = sanitize_body(body, payload=payload)
            body, payload = sanitized.body, dict(sanitized.payload)
            for change in sanitized.changes:
                self.request_changes[change.kind] += 1
        try:
            key = conversation_key(payload) if self._stats_token is not None else None
            rewritten = rewrite_request(body, cache=self.cache, planner=planner, payload=payload)
        except RecursionError:
            raise UsageError("the request body's JSON is nested too deeply") from None
        return rewritten.body, key, rewritten.payload if rewritten.payload is not None else payload

    def _usage_for(self, key: str) -> _Usage:
        shown = hashlib.blake2b(key.encode(), key=self._salt, digest_size=8).hexdigest()
        usage = self._conversations.get(shown)
        if usage is None:
            usage = self._conversations[shown] = _Usage()
            if len(self._conversations) > self.max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(shown)
        return usage

    async def _forward(self, scope: Scope, receive: Receive, exchange: _Exchange) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        # Only the target's path and query reach the upstream (see UpstreamURL): refused before reading.
        target = self.upstream.target(scope.get("raw_path") or path.encode("latin-1"), scope.get("query_string", b""))
        body = await self._read_body(scope, receive)
        exchange.watch(receive)
        received = len(body)
        headers = _forwardable(scope["headers"], _NOT_FORWARDED)
        request = _Forwarded(method, target, headers, body)
        if method == "POST" and is_messages_path(path):
            request.key, request.body, request.payload = await self._prepare_messages(body)
            request.headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
            request.headers.append((b"accept-encoding", b"identity"))  # the rewriter needs the SSE bytes
            if self.metrics is not None:
                self.metrics.transferred(client_request=received)
            await self._stream_messages(request, exchange)
            return
        if self.metrics is not None:
            self.metrics.transferred(client_request=received)
        upstream = await self._open_upstream(request, exchange)
        if upstream is None:
            return
        try:
            await self._pass_through(upstream, exchange, _forwardable(upstream.headers))
        finally:
            await upstream.aclose()

    async def _open_upstream(self, request: _Forwarded, exchange: _Exchange | None = None,
                             body: bytes | None = None) -> Any:
        """Send ``request`` upstream (with ``body`` instead of its own, e.g. a continuation) and return the
        answer once its head arrived: ``status``, raw ``headers``, ``chunks()`` (the body, content coding
        kept), ``aclose()``. When it cannot be reached and ``exchange`` is given, the client is answered 502
        (in the API's shape) and None is returned; without ``exchange``, UpstreamError is raised."""
        body = request.body if body is None else body
        metrics = self.metrics
        if metrics is not None:
            metrics.transferred(upstream_request=len(body))
        started = time.monotonic()
        try:
            upstream = await self._http().request(request.method, request.target, request.headers, body)
        except UpstreamError as exc:
            if metrics is not None:
                metrics.upstream(None)
            self._failed("upstream_unreachable", f"upstream {self.upstream} unreachable: {exc.kind} ({exc})")
            if exchange is None:
                raise
            await self._respond(exchange.send, 502, _error_body(
                "api_error", f"mendstream proxy: upstream unreachable ({exc})"))
            return None
        if metrics is not None:
            metrics.upstream(upstream.status)
            metrics.first_byte(time.monotonic() - started)
        return upstream

    async def _prepare_messages(self, body: bytes) -> tuple[str | None, bytes, Any]:
        """Decode and plan a Messages request (in a worker thread when it is large); with ``--cache planner``
        the conversation's planner is checked out of the store first and committed back in the background."""
        small = len(body) < _THREAD_BODY_BYTES
        if self.store is None:
            planned, key, sent = self._plan(body, None) if small else await asyncio.to_thread(self._plan, body, None)
            return key, planned, sent
        payload = self._decode(body) if small else await asyncio.to_thread(self._decode, body)
        conversation = conversation_key(payload)
        lease = await self.store.checkout(conversation)
        if small:
            planned, _, sent = self._plan(body, lease.planner, payload)
        else:
            planned, _, sent = await asyncio.to_thread(self._plan, body, lease.planner, payload)
        # committed in the background (the request need not wait for the store), awaited at shutdown
        commit = asyncio.ensure_future(self.store.commit(lease, retained=len(body)))
        self._background.add(commit)
        commit.add_done_callback(self._background.discard)
        return (conversation if self._stats_token is not None else None), planned, sent

    async def _pass_through(self, upstream: Any, exchange: _Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        """Relay a response byte for byte (Content-Length kept). If the upstream cuts it, the client's
        connection is cut too (UpstreamCut)."""
        await exchange.send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        received = 0
        chunks = upstream.chunks()
        try:
            async for chunk in chunks:
                received += len(chunk)
                await exchange.send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            raise UpstreamCut(f"{exc} after {received} bytes") from None
        finally:
            await chunks.aclose()
        await exchange.send({"type": "http.response.body", "body": b""})
        if self.metrics is not None:
            self.metrics.transferred(upstream_response=received, client_response=received)

    async def _stream_messages(self, request: _Forwarded, exchange: _Exchange) -> None:
        """Forward one Messages request, planned, from its first attempt to the end of its response, driven
        by the boundary's stream machine (mendstream.wire.boundary) with ``self.survival``: before anything
        the client could act on was sent, a fault is retried invisibly; after content, text is continued in
        the same response (a tool block being held back until it is whole, so that a fault inside it can be
        continued too); anything else ends the response with an ``event: error``. ``exchange.gone`` resolves
        when the client leaves, and the task is then cancelled: the upstream attempt is closed at once.

        When no attempt streams: the last answer that is not a stream passes as it was (with
        ``x-should-retry: false`` on an error this proxy retried and gave up on), an unreachable upstream is a
        502 and a head that never came a 504. The client's response ends after ``message_stop`` or a terminal
        error whatever the upstream does next."""
        machine = boundary_machine(self.survival, now=time.monotonic())
        counted = {"received": 0, "attempts": 0}
        run = AsyncRun(lambda action: self._attempt(request, action, machine, counted), machine,
                       fail_as=error_event)
        action = await run.open_until_streaming()
        self._count_attempts(machine.attempts, counted, done=False)
        if isinstance(action, Fail):
            await self._answer_failure(action.error, exchange)
            return
        encoding = _header(run.response.headers, b"content-encoding").strip().lower()
        head = [(k, v) for k, v in _forwardable(run.response.headers) if k.lower() != b"content-length"
                and (k.lower() != b"content-encoding" or encoding not in _GZIP_ENCODINGS)]
        metrics = self.metrics
        if metrics is not None:
            metrics.stream_started()
        events = run.events()
        try:
            await exchange.send({"type": "http.response.start", "status": 200, "headers": head})
            if self.coalesce:
                coalesced = AsyncCoalescing(events, DeltaCoalescer(self.coalesce), rewrite=_same, finish=_nothing)
                try:
                    async for out in coalesced:
                        await exchange.send({"type": "http.response.body", "body": out, "more_body": True})
                finally:
                    await coalesced.aclose()
            else:
                async for out in events:
                    await exchange.send({"type": "http.response.body", "body": out, "more_body": True})
            await exchange.send({"type": "http.response.body", "body": b""})
        finally:
            await run.close(None if self.coalesce else events)
            self._stream_done(request, exchange, machine, counted)

    async def _attempt(self, request: _Forwarded, action: Open, machine: Any, counted: dict[str, int]) -> Opened:
        """Open one attempt of a Messages request upstream (the continuation appended to its messages): the
        attempt's body as the machine reads it (teed to the capture, decoded from gzip, ended quietly by a cut),
        or the reason it cannot stream, raised for the machine to judge."""
        body = request.body
        if action.continuation is not None:
            payload = request.payload if isinstance(request.payload, dict) else json.loads(body)
            body = json.dumps({**payload, "messages": action.continuation.apply(payload.get("messages"))},
                              ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        try:
            upstream = await self._open_upstream(request, None, body)
        except UpstreamError as exc:
            raise UpstreamUnreachable(str(exc)) from exc
        content_type = _header(upstream.headers, b"content-type").split(";")[0].strip().lower()
        encoding = _header(upstream.headers, b"content-encoding").strip().lower()
        if not 200 <= upstream.status < 300:
            try:
                answer = await _read_bounded(upstream.chunks(), _ERROR_BODY_BYTES)
            finally:
                await upstream.aclose()
            raise UpstreamStatusError(upstream.status, upstream.headers, answer, None)
        if content_type != "text/event-stream" or encoding not in ("", "identity", *_GZIP_ENCODINGS):
            raise NotAStream(upstream)
        capture = self._capture(request, upstream)
        chunks: AsyncGenerator[bytes, None] = upstream.chunks()
        source = _decoded(chunks, encoding) if encoding in _GZIP_ENCODINGS else chunks
        ending: dict[str, Any] = {"outcome": "closed", "failure": None}

        async def body_chunks() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in source:
                    counted["received"] += len(chunk)
                    if capture is not None:
                        capture.write(chunk)
                    yield chunk
                ending["outcome"] = "complete"
            except UpstreamError as exc:  # a cut: the end of the input (the machine judges the stream)
                ending["outcome"], ending["failure"] = "error", exc

        pumped = body_chunks()

        def complete() -> None:
            ending["outcome"] = "complete"

        async def release() -> None:
            await pumped.aclose()
            if capture is not None:
                capture.finish(ending["outcome"], ending["failure"])
            if ending["outcome"] == "complete" and machine.state == "done":
                # what the upstream still sends after message_stop is read for a moment, in the background, so
                # that its connection is reused; the client's response does not wait for it
                self._in_background(_drain_and_close(source, chunks, upstream))
                return
            if source is not chunks:
                await source.aclose()
            await chunks.aclose()
            await upstream.aclose()

        return Opened(upstream, pumped, release, complete=complete)

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _answer_failure(self, error: BaseException, exchange: _Exchange) -> None:
        """Answer a Messages request none of whose attempts could stream (see :meth:`_stream_messages`)."""
        if isinstance(error, NotAStream):
            upstream = error.response
            try:
                await self._pass_through(upstream, exchange, _forwardable(upstream.headers))
            finally:
                await upstream.aclose()
            return
        retried = self.survival.retry is not None
        if isinstance(error, UpstreamStatusError):
            headers = [(k, v) for k, v in _forwardable(error.headers)
                       if k.lower() not in (b"content-length", b"x-should-retry")]
            if retried:  # this proxy retried and gave up: the client's SDK must not multiply the attempts
                headers.append((b"x-should-retry", b"false"))
            headers.append((b"content-length", str(len(error.content)).encode()))
            await exchange.send({"type": "http.response.start", "status": error.status_code, "headers": headers})
            await exchange.send({"type": "http.response.body", "body": error.content})
            return
        extra = [(b"x-should-retry", b"false")] if retried else []
        if isinstance(error, StreamStalledError):
            await self._respond(exchange.send, 504, _error_body(
                "timeout_error", f"mendstream proxy: the upstream sent no response head: {error.message}"),
                extra=extra)
            return
        if isinstance(error, UpstreamUnreachable):
            self._failed("upstream_unreachable", f"upstream {self.upstream} unreachable: {error}")
            await self._respond(exchange.send, 502, _error_body(
                "api_error", f"mendstream proxy: upstream unreachable ({error})"), extra=extra)
            return
        raise error

    def _count_attempts(self, attempts: list[Any], counted: dict[str, int], *, done: bool) -> None:
        """Count the machine's attempts once each, in order (``counted["attempts"]``: how many were): before
        the response starts, those that ended; when it is over, the rest."""
        metrics = self.metrics
        end = len(attempts) if done else sum(1 for attempt in attempts if attempt.error is not None)
        for attempt in attempts[counted["attempts"]:end]:
            self.attempts[attempt.mode] += 1
            if attempt.mode != "first" and metrics is not None:
                metrics.retry("continuation" if attempt.mode == "continue" else attempt.mode)
            if isinstance(attempt.error, StreamStalledError):
                self.attempts["stalled"] += 1
                if metrics is not None:
                    metrics.stall(attempt.error.kind)
        counted["attempts"] = max(counted["attempts"], end)

    def _stream_done(self, request: _Forwarded, exchange: _Exchange, machine: Any, counted: dict[str, int]) -> None:
        self._count_attempts(machine.attempts, counted, done=True)
        received = counted["received"]
        counts: Counter[str] = Counter(repair.kind for repair in machine.repairs)
        self.repairs.update(counts)
        failed = machine.state == "failed"
        if failed:
            self._failed("stream_error", None)
        reader = machine.reader
        usage = machine.presenter.stitch_usage(reader.message.get("usage")) if reader is not None else None
        self.usage.add(usage)
        if request.key is not None:
            self._usage_for(request.key).add(usage)
        metrics = self.metrics
        if metrics is not None:
            metrics.stream_finished(time.monotonic() - request.started, repairs=counts, usage=usage, failed=failed)
            metrics.transferred(upstream_response=received, client_response=exchange.sent_bytes)

    def _capture(self, request: _Forwarded, upstream: Any) -> Any:
        if self._capture_dir is None:
            return None
        capture = self._capture_dir.writer(
            request_body=request.payload, method=request.method, url=self.upstream.origin + request.target,
            transport="proxy",
            request_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers])
        capture.start_response(upstream.status, [(k.decode("latin-1"), v.decode("latin-1"))
                                                 for k, v in upstream.headers])
        return capture


class UpstreamUnreachable(ConnectionError):
    """The upstream could not be reached for an attempt (a connection error to the retry policy)."""


def _same(chunk: bytes) -> bytes:
    return chunk


def _nothing() -> bytes:
    return b""


async def _read_bounded(chunks: AsyncGenerator[bytes, None], limit: int) -> bytes:
    """An error answer's body, at most ``limit`` bytes of it (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except UpstreamError:
        pass
    finally:
        await chunks.aclose()
    return b"".join(parts)[:limit]


async def _drain_and_close(source: AsyncGenerator[bytes, None], chunks: AsyncGenerator[bytes, None],
                           upstream: Any) -> None:
    try:
        await _drain(source)
    finally:
        with contextlib.suppress(Exception):
            if source is not chunks:
                await source.aclose()
            await chunks.aclose()
            await upstream.aclose()


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what the upstream sends after the end of a message, for a moment and a bounded amount, so that
    a connection whose body ends promptly goes back to the pool; one that does not is closed."""
    dropped = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for chunk in chunks:
                dropped += len(chunk)
                if dropped > _DRAIN_BYTES:
                    return
    except (TimeoutError, UpstreamError):
        return


def create_app(
    upstream: str,
    *,
    cache: Literal["default", "planner", "off"] = "default",
    capture: str | os.PathLike[str] | CaptureDirectory | None = None,
    max_conversations: int = 1024,
    limits: ProxyLimits | None = None,
    state: str | None = None,
    state_options: Mapping[str, Any] | None = None,
    metrics: bool = False,
    stats: bool = True,
    stats_token: str | None = None,
    coalesce: float | bool | None = DEFAULT_WINDOW,
    survival: Survival | None = PROXY_SURVIVAL,
    sanitize: bool = False,
) -> ProxyApp:
    """The proxy as an ASGI application (``uvicorn --factory mendstream.wire.proxy:app_from_env`` reads the
    options from the environment; or call it yourself). ``mendstream proxy`` serves it with the connection
    limits of :class:`ProxyLimits` applied by the server (see :mod:`mendstream.wire.serving`).

    Args:
        upstream: base URL requests are forwarded to, e.g. ``https://api.anthropic.com``.
        cache: ``default`` (at most 4 planned breakpoints per request), ``planner`` (one
            :class:`~mendstream.cache.CachePlanner` per conversation, kept in ``state``) or ``off``.
        capture: a directory for the original bytes of every Messages stream, as CaptureWriter captures
            (``.sse`` body and ``.capture.json`` sidecar, credentials scrubbed, files 0600 under random names,
            64 MiB cap each; see :class:`~mendstream.recording.files.CaptureDirectory`: pass one to set
            ``max_bytes``).
        max_conversations: per-conversation usage kept for the stats (least recently used dropped).
        limits: request, body, JSON and upstream bounds (:class:`ProxyLimits`).
        state: where ``cache="planner"`` keeps planner state: ``None``/``"memory"`` (this process, bounded
            in bytes) or ``redis://HOST:PORT/DB`` (shared by every worker and replica); see
            :mod:`mendstream.wire.state`. ``state_options`` go to the store.
        metrics: serve Prometheus metrics on ``GET /metrics`` (needs prometheus-client).
        stats: serve ``GET /mendstream/stats`` (totals; with ``stats_token``, per-conversation usage too).
        stats_token: when set, ``/mendstream/stats`` and ``/metrics`` need ``Authorization: Bearer TOKEN``.
        coalesce: seconds within which consecutive deltas of one content block are merged into one event
            (default 10 ms, below a 60 Hz frame; ``0``/``None``: off, every event passes as the upstream sent
            it). The final message is unchanged; see :class:`mendstream.wire.coalesce.DeltaCoalescer`.
        survival: what a Messages stream survives (:class:`~mendstream.wire.boundary.Survival`). The default,
            ``PROXY_SURVIVAL``: up to 3 attempts; a fault before any content is retried unseen, one after
            text is continued in the same response (tool blocks held back until whole, so a fault inside
            one is continued too); an attempt stalls after 120 s without a byte or 600 s of nothing but
            pings. ``None``: one attempt, no stall bound beyond ``limits.upstream_read_timeout``.
        sanitize: fix the request mistakes the API would refuse with a 400 before sending (see
            :func:`mendstream.wire.sanitize.sanitize_body`; counted in the stats as ``request_changes``).

    Raises:
        UsageError: an invalid option.
    """
    return ProxyApp(upstream, cache=cache, capture=capture, max_conversations=max_conversations, limits=limits,
                    state=state, state_options=state_options, metrics=metrics, stats=stats,
                    stats_token=stats_token, coalesce=coalesce, survival=survival, sanitize=sanitize)


def run_proxy(upstream: str, *, host: str = "127.0.0.1", port: int = 8787,
              cache: Literal["default", "planner", "off"] = "default", capture: str | None = None,
              workers: int = 1, **options: Any) -> int:
    """Serve the proxy until interrupted (``mendstream proxy``); see :func:`mendstream.wire.serving.serve`.
    Returns the exit status."""
    from mendstream.wire.serving import serve

    return serve(upstream, host=host, port=port, workers=workers, cache=cache, capture=capture, **options)


_ENV_FLAGS: Final = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                     "off": False, "": False}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    flag = _ENV_FLAGS.get(value.strip().lower())
    if flag is None:
        raise UsageError(f"{name} must be 1 or 0; got {value!r}")
    return flag


def app_from_env() -> ProxyApp:
    """A factory for ``uvicorn --factory mendstream.wire.proxy:app_from_env`` (and each worker of
    ``mendstream proxy --workers N``): the options come from ``MENDSTREAM_UPSTREAM``, ``MENDSTREAM_CACHE``,
    ``MENDSTREAM_CAPTURE``, ``MENDSTREAM_STATE``, ``MENDSTREAM_STATE_SALT`` (read by the store),
    ``MENDSTREAM_METRICS`` (1/0), ``MENDSTREAM_STATS`` (1/0), ``MENDSTREAM_STATS_TOKEN``,
    ``MENDSTREAM_COALESCE`` (seconds; ``0`` turns coalescing off), ``MENDSTREAM_LIMITS`` (a JSON object of
    :class:`ProxyLimits` fields), ``MENDSTREAM_SURVIVAL`` (:meth:`Survival.to_json
    <mendstream.wire.boundary.Survival.to_json>`'s format; unset: the default) and ``MENDSTREAM_SANITIZE``
    (1/0)."""
    upstream = os.environ.get("MENDSTREAM_UPSTREAM")
    if not upstream:
        raise UsageError("set MENDSTREAM_UPSTREAM to the upstream base URL")
    cache = os.environ.get("MENDSTREAM_CACHE", "default")
    limits = os.environ.get("MENDSTREAM_LIMITS")
    survival = os.environ.get("MENDSTREAM_SURVIVAL")
    return create_app(
        upstream,
        cache=cache,  # type: ignore[arg-type]
        capture=os.environ.get("MENDSTREAM_CAPTURE") or None,
        limits=ProxyLimits.from_json(limits) if limits else None,
        state=os.environ.get("MENDSTREAM_STATE") or None,
        metrics=_env_flag("MENDSTREAM_METRICS", False),
        stats=_env_flag("MENDSTREAM_STATS", True),
        stats_token=os.environ.get("MENDSTREAM_STATS_TOKEN") or None,
        coalesce=seconds(os.environ.get("MENDSTREAM_COALESCE", str(DEFAULT_WINDOW)), "MENDSTREAM_COALESCE"),
        survival=Survival.from_json(survival) if survival else PROXY_SURVIVAL,
        sanitize=_env_flag("MENDSTREAM_SANITIZE", False),
    )


def seconds(text: str, name: str) -> float:
    """A coalescing window given as text (a command-line option, an environment variable), in seconds.

    Raises:
        UsageError: not a number of seconds >= 0, naming ``name``.
    """
    try:
        return coalesce_window(float(text))
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds >= 0 (0: off); got {text!r}") from None
