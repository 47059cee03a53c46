# The repairing proxy: an ASGI application (served by uvicorn) that forwards every request to an upstream
# Messages API with an async httpx client, applying mendstream.wire.rewrite to Messages requests (cache
# breakpoints) and their SSE responses (repairs), streaming chunk by chunk. For agents that can only be given
# a base URL (ANTHROPIC_BASE_URL). State (planners, statistics) lives in the worker process.
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, OrderedDict
from typing import Any, Literal
from urllib.parse import urlsplit

from mendstream.errors import UsageError
from mendstream.recording.files import CaptureDirectory
from mendstream.wire.rewrite import CACHE_MODES, ResponseRewriter, is_messages_path, rewrite_request

__all__ = ["ProxyApp", "UpstreamURL", "app_from_env", "create_app", "http_library", "run_proxy"]

_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"upgrade",
               b"proxy-connection", b"te", b"trailer"}
_MAX_BODY = 64 * 1024 * 1024  # a Messages request (images included) stays far below


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

    __slots__ = ("base_path", "origin")

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
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        self.origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
        self.base_path = parts.path.rstrip("/")

    def __str__(self) -> str:
        return self.origin + self.base_path

    def for_target(self, raw_path: bytes, query: bytes) -> str:
        """The upstream URL for a request whose target had ``raw_path`` and ``query`` (undecoded bytes).

        Raises:
            UsageError: the target is not origin-form (it does not start with a single ``/``).
        """
        if not raw_path.startswith(b"/"):
            shown = raw_path[:100].decode("latin-1")
            raise UsageError(f"the request target must be a path starting with '/' (origin-form); got {shown!r}")
        path = raw_path.decode("latin-1")
        url = self.origin + self.base_path + path
        if query:
            url += "?" + query.decode("latin-1")
        return url


def conversation_key(payload: dict[str, Any]) -> str:
    """The conversation a request belongs to, found by its prefix: model, tools, system and first message
    (a conversation only appends to its messages). A short hex digest, safe to log."""
    messages = payload.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    head = json.dumps([payload.get("model"), payload.get("tools"), payload.get("system"), first],
                      sort_keys=True, default=str).encode()
    return hashlib.blake2b(head, digest_size=8).hexdigest()


class _Usage:
    __slots__ = ("read", "uncached", "write")

    def __init__(self) -> None:
        self.read = self.write = self.uncached = 0

    def add(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.read += int(usage.get("cache_read_input_tokens") or 0)
        self.write += int(usage.get("cache_creation_input_tokens") or 0)
        self.uncached += int(usage.get("input_tokens") or 0)

    def to_dict(self) -> dict[str, Any]:
        total = self.read + self.write + self.uncached
        return {"cache_read_input_tokens": self.read, "cache_creation_input_tokens": self.write,
                "uncached_input_tokens": self.uncached, "hit_ratio": (self.read / total) if total else None}


class ProxyApp:
    """The ASGI application; see :func:`create_app`."""

    def __init__(self, upstream: str, *, cache: Literal["default", "planner", "off"] = "default",
                 capture: str | os.PathLike[str] | CaptureDirectory | None = None, max_conversations: int = 1024,
                 timeout: float = 600.0) -> None:
        if cache not in CACHE_MODES:
            raise UsageError(f"cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
        self.upstream = UpstreamURL(upstream)
        if max_conversations < 1:
            raise UsageError(f"max_conversations must be positive; got {max_conversations!r}")
        self.cache = cache
        # Captures are CaptureWriter captures (scrubbed body + sidecar, 0600, random names, size cap) in a
        # directory resolved and pinned once (mendstream.recording.files.CaptureDirectory).
        self._capture_dir = (capture if isinstance(capture, CaptureDirectory) or capture is None
                             else CaptureDirectory(capture))
        self.capture = self._capture_dir.path if self._capture_dir is not None else None
        self.max_conversations = max_conversations
        self.timeout = timeout
        self._client: Any = None
        self._planners: OrderedDict[str, Any] = OrderedDict()  # LRU, bounded by max_conversations
        self._conversations: OrderedDict[str, _Usage] = OrderedDict()
        self.requests = 0
        self.errors = 0
        self.repairs: Counter[str] = Counter()
        self.usage = _Usage()

    # -- ASGI --------------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
        if scope["method"] == "GET" and scope["path"] == "/mendstream/stats":
            await self._respond(send, 200, json.dumps(self.stats()).encode())
            return
        self.requests += 1
        try:
            await self._forward(scope, receive, send)
        except UsageError as exc:
            self.errors += 1
            await self._respond(send, 400, _error_body("invalid_request_error", f"mendstream proxy: {exc}"))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stats(self) -> dict[str, Any]:
        """Requests, repairs by kind, errors, and cache usage overall and per conversation."""
        return {"requests": self.requests, "errors": self.errors, "repairs": dict(self.repairs),
                "cache": self.usage.to_dict(),
                "conversations": {key: usage.to_dict() for key, usage in self._conversations.items()}}

    # -- internals ---------------------------------------------------------------------------------------------

    def _http(self) -> Any:
        if self._client is None:
            httpx = http_library()
            # asyncio already sets TCP_NODELAY on its sockets; nothing to tune there. No connection limit:
            # every client stream holds one upstream connection for its whole length.
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            )
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0), transport=transport)
        return self._client

    async def _respond(self, send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Any) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UsageError("the client disconnected while sending the request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                raise UsageError(f"request body over {_MAX_BODY} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _planner_for(self, key: str) -> Any:
        planner = self._planners.get(key)
        if planner is None:
            from mendstream.cache import CachePlanner

            planner = self._planners[key] = CachePlanner(warn=False)
            if len(self._planners) > self.max_conversations:
                self._planners.popitem(last=False)
        else:
            self._planners.move_to_end(key)
        return planner

    def _usage_for(self, key: str) -> _Usage:
        usage = self._conversations.get(key)
        if usage is None:
            usage = self._conversations[key] = _Usage()
            if len(self._conversations) > self.max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(key)
        return usage

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        httpx = http_library()
        path = scope["path"]
        query = scope.get("query_string", b"")
        # Only the target's path and query reach the upstream URL (see UpstreamURL): refused before reading.
        url = self.upstream.for_target(scope.get("raw_path") or path.encode("latin-1"), query)
        body = await self._read_body(receive)
        messages = scope["method"] == "POST" and is_messages_path(path)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        key: str | None = None
        sent: Any = None  # the request as sent, for a capture
        if messages:
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise UsageError("the request body is not JSON") from None
            if not isinstance(payload, dict):
                raise UsageError(f"the request body is JSON but not an object (a {type(payload).__name__})")
            key = conversation_key(payload)
            planner = self._planner_for(key) if self.cache == "planner" else None
            rewritten = rewrite_request(body, cache=self.cache, planner=planner, payload=payload)
            body = rewritten.body
            sent = rewritten.payload if rewritten.payload is not None else payload
            headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))  # the rewriter needs the SSE bytes themselves
        client = self._http()
        request = client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.errors += 1
            await self._respond(send, 502, _error_body(
                "api_error", f"mendstream proxy: upstream unreachable ({type(exc).__name__})"))
            return
        try:
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            rewrite = messages and content_type == "text/event-stream" and response.status_code == 200
            out_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            if not rewrite:
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError:
                    self.errors += 1
                await send({"type": "http.response.body", "body": b""})
                return
            capture = None
            if self._capture_dir is not None:
                capture = self._capture_dir.writer(
                    request_body=sent, request_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                    method=scope["method"], url=url, transport="proxy")
                capture.start_response(response.status_code, response.headers.items())
            await self._stream(response, send, key, capture)
        finally:
            await response.aclose()

    async def _stream(self, response: Any, send: Any, key: str | None, capture: Any = None) -> None:
        httpx = http_library()
        rewriter = ResponseRewriter()
        outcome, failure = "closed", None  # a client that went away (send raised) leaves "closed"
        try:
            try:
                async for chunk in response.aiter_raw():
                    if capture is not None:
                        capture.write(chunk)
                    out = rewriter.feed(chunk)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                outcome = "complete"
            except httpx.HTTPError as exc:  # the upstream cut the stream: the rewriter decides how it ends
                outcome, failure = "error", exc
            await send({"type": "http.response.body", "body": rewriter.end()})
        finally:
            if capture is not None:
                capture.finish(outcome, failure)
            self.repairs.update(rewriter.repair_counts)
            if rewriter.error is not None:
                self.errors += 1
            usage = rewriter.message.get("usage")
            self.usage.add(usage)
            if key is not None:
                self._usage_for(key).add(usage)


def create_app(upstream: str, *, cache: Literal["default", "planner", "off"] = "default",
               capture: str | os.PathLike[str] | CaptureDirectory | None = None,
               max_conversations: int = 1024) -> ProxyApp:
    """The proxy as an ASGI application (``uvicorn 'mendstream.wire.proxy:create_app' --factory`` needs the
    upstream from ``MENDSTREAM_UPSTREAM``; or call it yourself).

    Args:
        upstream: base URL requests are forwarded to, e.g. ``https://api.anthropic.com``.
        cache: ``default`` (at most 4 planned breakpoints per request), ``planner`` (one
            :class:`~mendstream.cache.CachePlanner` per conversation, at most ``max_conversations`` kept,
            least recently used dropped) or ``off``.
        capture: a directory for the original bytes of every Messages stream, as CaptureWriter captures
            (``.sse`` body and ``.capture.json`` sidecar, credentials scrubbed, files 0600 under random names,
            64 MiB cap each; see :class:`~mendstream.recording.files.CaptureDirectory`: pass one to set
            ``max_bytes``).

    Raises:
        UsageError: an invalid option.
    """
    return ProxyApp(upstream, cache=cache, capture=capture, max_conversations=max_conversations)


def run_proxy(upstream: str, *, host: str = "127.0.0.1", port: int = 8787,
              cache: Literal["default", "planner", "off"] = "default", capture: str | None = None) -> None:
    """Serve the proxy with uvicorn until interrupted (one worker; for several, see :func:`app_from_env`)."""
    import uvicorn

    app = create_app(upstream, cache=cache, capture=capture)
    uvicorn.run(app, host=host, port=port, log_level="info")


def app_from_env() -> ProxyApp:
    """A factory for ``uvicorn --factory --workers N mendstream.wire.proxy:app_from_env``: the options come from
    ``MENDSTREAM_UPSTREAM``, ``MENDSTREAM_CACHE`` and ``MENDSTREAM_CAPTURE``."""
    upstream = os.environ.get("MENDSTREAM_UPSTREAM")
    if not upstream:
        raise UsageError("set MENDSTREAM_UPSTREAM to the upstream base URL")
    cache = os.environ.get("MENDSTREAM_CACHE", "default")
    return create_app(upstream, cache=cache, capture=os.environ.get("MENDSTREAM_CAPTURE"))  # type: ignore[arg-type]
