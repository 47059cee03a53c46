# The httpx transport, for Anthropic-compatible endpoints without the SDK (public as `mendstream.httpx`,
# which re-exports this module: `mendstream.httpx.stream` / `astream`): it builds the
# `POST {base_url}/v1/messages` request (API key or bearer token, anthropic-version, the JSON body with
# "stream": true), sends it with a user-given `httpx.Client` / `httpx2.Client` (or the async twins; both
# libraries share one API) or a default client, turns non-2xx statuses and non-SSE content types into
# clear errors, and hands the body bytes to the core. Retries and stall timeouts are the stream machine's
# (mendstream.streaming); this module opens attempts.
# `import httpx` below is the real httpx (absolute imports); this module is only imported when used.
from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from mendstream.cache.integration import apply_cache
from mendstream.core.parser import MessageParser
from mendstream.errors import ContentTypeError, HTTPStatusError, StreamError, UsageError
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream, Opened
from mendstream.streaming.machine import Open
from mendstream.streaming.opener import AsyncStreamOpener
from mendstream.streaming.pause import PauseResumer, check_resume_pause_turn
from mendstream.streaming.retry import Retry
from mendstream.transports.capturing import (
    CapturePath,
    attempt_capture_path,
    capture_error_response,
    capture_writer,
)
from mendstream.transports.failures import aread_head, check_content_type, content_type_error, read_head, status_error
from mendstream.transports.pump import BodyPump
from mendstream.wire.http import http_library, library_of

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "DEFAULT_BASE_URL",
    "ContentTypeError",
    "HTTPStatusError",
    "astream",
    "build_headers",
    "stream",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Streams can pause for minutes during long thinking; the connect phase should fail fast.
_DEFAULT_TIMEOUT = {"connect": 10.0, "read": 600.0, "write": 60.0, "pool": 60.0}
UNSET: Any = object()


def _is_unset(value: Any) -> bool:
    return value is UNSET


class _StallBound:
    """The read timeout a stall timeout sets on an attempt (none was given): the wait for the response head,
    and a backstop for the watchdog on every read."""

    __slots__ = ("read",)

    def __init__(self, read: float) -> None:
        self.read = read

_default_client: Any = None
_default_lock = threading.Lock()


def http_module() -> ModuleType:
    """The HTTP library used for default clients: the one the installed anthropic SDK runs on (httpx2 from
    1.0 on, httpx before), else httpx2, else httpx (see :func:`mendstream.wire.http.http_library`).

    Raises ``UsageError`` (an ImportError's place: it names the install) when neither is installed.
    """
    return http_library("sdk")


def _timeout(module: ModuleType) -> Any:
    return module.Timeout(**_DEFAULT_TIMEOUT)


def shared_client() -> Any:
    """A process-wide default sync client (connection pooling across calls); created on first use."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            module = http_module()
            _default_client = module.Client(timeout=_timeout(module))
        return _default_client


def build_headers(
    *,
    api_key: str | None,
    auth_token: str | None,
    headers: Mapping[str, str] | None,
    anthropic_version: str | None,
) -> dict[str, str]:
    """The request headers: JSON content type, SSE accept, ``anthropic-version``, the credential, then
    ``headers`` (which override the rest; a value of ``""`` removes a header)."""
    out = {"content-type": "application/json", "accept": "text/event-stream"}
    if anthropic_version:
        out["anthropic-version"] = anthropic_version
    if api_key is not None:
        out["x-api-key"] = api_key
    if auth_token is not None:
        out["authorization"] = f"Bearer {auth_token}"
    for name, value in (headers or {}).items():
        key = name.lower()
        if value == "":
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _endpoint(base_url: str, path: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith(path.rstrip("/")):
        return base
    return base + "/" + path.lstrip("/")


def _prepare_body(body: Mapping[str, Any], cache: Any, sanitize: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    if not isinstance(body, Mapping):
        raise UsageError(f"body must be a mapping (the Messages API request), not {type(body).__name__}")
    params = dict(body)
    if params.get("stream", True) is not True:
        raise UsageError("mendstream.httpx always streams; drop \"stream\": false from the body")
    changes: tuple[Any, ...] = ()
    if sanitize is not False:  # first, so that no cache marker lands on a block that is then removed
        from mendstream.wire.sanitize import apply_sanitize

        params, changes = apply_sanitize(params, sanitize)
        params = dict(params)
    if cache is not None:
        params = apply_cache(params, cache)
    params["stream"] = True
    return params, changes


class _Request:
    """Everything about one request that does not depend on sync or async I/O."""

    def __init__(
        self,
        body: Mapping[str, Any],
        *,
        base_url: str,
        path: str,
        api_key: str | None,
        auth_token: str | None,
        headers: Mapping[str, str] | None,
        anthropic_version: str | None,
        timeout: Any,
        capture: CapturePath | None,
        cache: Any,
        strict_content_type: bool,
        sanitize: Any = False,
    ) -> None:
        self.body, self.changes = _prepare_body(body, cache, sanitize)
        self.url = _endpoint(base_url, path)
        self.headers = build_headers(
            api_key=api_key, auth_token=auth_token, headers=headers, anthropic_version=anthropic_version
        )
        try:
            self.content = json.dumps(self.body, ensure_ascii=False).encode("utf-8")
        except RecursionError:
            raise UsageError("body is nested too deeply to be sent as JSON") from None
        except (TypeError, ValueError) as exc:
            raise UsageError(f"body cannot be sent as JSON: {exc}") from exc
        self.timeout = timeout
        self.capture = capture
        self.strict_content_type = strict_content_type
        self.beta = "anthropic-beta" in self.headers
        self.started_at = 0.0

    def for_attempt(self, action: Open) -> _Request:
        """This request as attempt ``action.attempt.number`` sends it: ``action.request`` as the body when it
        names one (the continuation request of a paused turn), the continuation appended to the messages,
        its own capture path, and the stall bound as the read timeout (unless one was given)."""
        plain = action.continuation is None and (action.timeout is None or not _is_unset(self.timeout))
        if action.attempt.number == 1 and plain and action.request is None:
            return self
        out = copy.copy(self)
        out.capture = attempt_capture_path(self.capture, action.attempt.number)
        body = action.request if action.request is not None else self.body
        if action.continuation is not None:
            body = {**body, "messages": action.continuation.apply(body.get("messages"))}
        if body is not self.body:
            out.body = body
            out.content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        if action.timeout is not None and _is_unset(self.timeout):
            out.timeout = _StallBound(action.timeout)
        return out

    def build(self, client: Any) -> Any:
        kwargs: dict[str, Any] = {"headers": self.headers, "content": self.content}
        if isinstance(self.timeout, _StallBound):  # made of the client's own library (httpx or httpx2)
            library = library_of(client) or http_module()
            kwargs["timeout"] = library.Timeout(**{**_DEFAULT_TIMEOUT, "read": self.timeout.read})
        elif self.timeout is not UNSET:
            kwargs["timeout"] = self.timeout
        self.started_at = time.perf_counter()
        return client.build_request("POST", self.url, **kwargs)

    def new_capture(self, request: Any) -> Any:
        return capture_writer(
            self.capture,
            request_body=self.body,
            request_headers=list(request.headers.items()),
            url=str(request.url),
            transport="httpx",
            started_at=self.started_at,
        )

    def bad_content_type(self, response: Any) -> str | None:
        """The offending content type of a 2xx response that cannot be SSE, else ``None``."""
        return check_content_type(response.headers, strict=self.strict_content_type)

    def failure(self, response: Any, head: bytes, writer: Any) -> StreamError:
        """The error for a response that cannot be streamed (its body, or its first bytes, in ``head``),
        recorded in the capture ``writer`` when capturing."""
        capture_error_response(writer, response.status_code, response.headers.items(), head)
        status = response.status_code
        if not 200 <= status < 300:
            return status_error(status, head, response.headers, response)
        return content_type_error(status, self.bad_content_type(response) or "", head, response)

    def cannot_stream(self, response: Any) -> bool:
        return not 200 <= response.status_code < 300 or self.bad_content_type(response) is not None

    def open(self, http: Any) -> tuple[Any, Any]:
        """Send the request on ``http``: ``(response, capture writer or None)`` for a response that can be
        streamed; else the error for it (its first bytes read, the response closed, both recorded). The one
        place a sync httpx response is opened, for the plain transport and every resilient attempt."""
        request = self.build(http)
        writer = self.new_capture(request)  # before sending: nothing after send may fail and leak the connection
        try:
            response = http.send(request, stream=True)
        except BaseException as exc:
            if writer is not None:
                writer.finish("error", exc)
            raise
        try:
            if self.cannot_stream(response):
                try:
                    head = read_head(response)
                finally:
                    response.close()
                raise self.failure(response, head, writer)
            if writer is not None:
                writer.start_response(response.status_code, list(response.headers.items()))
        except BaseException:
            response.close()
            raise
        return response, writer

    async def aopen(self, client: Any) -> tuple[Any, Any, Callable[[], Awaitable[None]]]:
        """The async twin of :meth:`open`: ``(response, writer, release)``. Without ``client`` a new async
        client is made for this request (async clients are bound to one event loop) and ``release`` closes
        it with the response."""
        owned: Any = None
        if client is None:
            module = http_module()
            owned = module.AsyncClient(timeout=_timeout(module))
        http: Any = client if client is not None else owned
        writer: Any = None
        try:
            request = self.build(http)
            writer = self.new_capture(request)
            response = await http.send(request, stream=True)
        except BaseException as exc:
            if writer is not None:
                writer.finish("error", exc)
            if owned is not None:
                await owned.aclose()
            raise

        async def release() -> None:
            try:
                await response.aclose()
            finally:
                if owned is not None:
                    await owned.aclose()

        try:
            if self.cannot_stream(response):
                try:
                    head = await aread_head(response)
                finally:
                    await release()
                raise self.failure(response, head, writer)
            if writer is not None:
                writer.start_response(response.status_code, list(response.headers.items()))
        except BaseException:
            await release()
            raise
        return response, writer, release


def stream(
    body: Mapping[str, Any],
    /,
    *,
    base_url: str = DEFAULT_BASE_URL,
    api_key: str | None = None,
    auth_token: str | None = None,
    headers: Mapping[str, str] | None = None,
    client: Any = None,
    timeout: Any = UNSET,
    path: str = "/v1/messages",
    anthropic_version: str | None = DEFAULT_ANTHROPIC_VERSION,
    capture: CapturePath | None = None,
    cache: Any = None,
    parser: MessageParser | None = None,
    strict_content_type: bool = True,
    sdk_events: bool = False,
    retry: Retry | None = None,
    idle_timeout: float | None = None,
    progress_timeout: float | None = None,
    sanitize: Any = False,
    resume_pause_turn: int = 0,
) -> MessageStream:
    """Stream a Messages API request from ``base_url`` (any Anthropic-compatible endpoint).

    Args:
        body: the request body (``model``, ``max_tokens``, ``messages``, ...); ``"stream": true`` is added.
        base_url: e.g. ``https://api.anthropic.com`` or a compatible provider's ``.../anthropic``; ``path``
            is appended unless the URL already ends with it.
        api_key: sent as ``x-api-key``. auth_token: sent as ``authorization: Bearer ...``. Neither is
            read from the environment. headers: extra headers; they override the defaults, and ``""``
            removes one.
        client: an ``httpx.Client`` or ``httpx2.Client``; default: a shared client of whichever library
            is installed (the SDK's: see ``http_module``). timeout: a per-request timeout (default: the client's).
        anthropic_version: the ``anthropic-version`` header (None: not sent).
        capture: tee the response bytes to this path, with a ``*.capture.json`` sidecar.
        cache: a cache plan applied with ``mendstream.cache.apply_cache`` before sending.
        parser: a configured :class:`~mendstream.MessageParser`.
        strict_content_type: when True only ``text/event-stream`` (or no content type) is accepted;
            when False only JSON/HTML/XML/AWS event-stream responses are refused.
        sdk_events: yield the SDK's own event objects instead of mendstream's (needs ``anthropic``); with
            an ``anthropic-beta`` header, events and ``get_final_message()`` use the SDK's ``Beta`` types.
        retry, idle_timeout, progress_timeout: resilience (off by default), as for
            :func:`mendstream.stream`; see docs/resilience.md.
        sanitize: fix the mechanical 400s in the body before sending, as for :func:`mendstream.stream`
            (``stream.request_changes`` says what changed).
        resume_pause_turn: resume a turn that stops with ``pause_turn`` with up to this many continuation
            requests, shown as one message, as for :func:`mendstream.stream` (0: off).

    Returns:
        A :class:`~mendstream.MessageStream`; close it (or use ``with``) to release the connection.

    Raises:
        HTTPStatusError: a non-2xx status (``status_code``, ``error_type``, ``error_message``, ``body``,
            ``request_id``). ContentTypeError: a 2xx response that is not SSE. The HTTP library's own
            errors for failures before the response (connect errors, timeouts). While reading, the
            core's ``StreamError`` subclasses; a connection dropped mid-body ends the input (see
            :class:`~mendstream.transports.pump.BodyPump`).
    """
    limit = check_resume_pause_turn(resume_pause_turn)
    req = _Request(
        body,
        base_url=base_url,
        path=path,
        api_key=api_key,
        auth_token=auth_token,
        headers=headers,
        anthropic_version=anthropic_version,
        timeout=timeout,
        capture=capture,
        cache=cache,
        strict_content_type=strict_content_type,
        sanitize=sanitize,
    )
    http = client if client is not None else shared_client()

    def opener(action: Open) -> Opened:
        response, writer = req.for_attempt(action).open(http)
        return BodyPump(writer).opened(response, response.iter_bytes(), response.close)

    return MessageStream(opener, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                         parser=parser, sdk_events=sdk_events, beta=req.beta, request_changes=req.changes,
                         pause=_pause(req, limit))


def _pause(req: _Request, limit: int) -> PauseResumer | None:
    """The stream's :class:`~mendstream.streaming.pause.PauseResumer` over the body as sent (None: off)."""
    return PauseResumer(req.body, max_continuations=limit) if limit else None


def astream(
    body: Mapping[str, Any],
    /,
    *,
    base_url: str = DEFAULT_BASE_URL,
    api_key: str | None = None,
    auth_token: str | None = None,
    headers: Mapping[str, str] | None = None,
    client: Any = None,
    timeout: Any = UNSET,
    path: str = "/v1/messages",
    anthropic_version: str | None = DEFAULT_ANTHROPIC_VERSION,
    capture: CapturePath | None = None,
    cache: Any = None,
    parser: MessageParser | None = None,
    strict_content_type: bool = True,
    sdk_events: bool = False,
    retry: Retry | None = None,
    idle_timeout: float | None = None,
    progress_timeout: float | None = None,
    sanitize: Any = False,
    resume_pause_turn: int = 0,
) -> AsyncStreamOpener:
    """The async twin of :func:`stream`; ``client`` is an ``httpx.AsyncClient`` / ``httpx2.AsyncClient``.

    Without ``client`` a new async client is made for this request and closed with the stream (async
    clients are bound to one event loop, so none is shared); pass your own to reuse connections. Returns an
    opener: ``async with mendstream.httpx.astream(...) as stream:`` or ``stream = await ...``.
    """
    limit = check_resume_pause_turn(resume_pause_turn)
    req = _Request(
        body,
        base_url=base_url,
        path=path,
        api_key=api_key,
        auth_token=auth_token,
        headers=headers,
        anthropic_version=anthropic_version,
        timeout=timeout,
        capture=capture,
        cache=cache,
        strict_content_type=strict_content_type,
        sanitize=sanitize,
    )
    async def opener(action: Open) -> Opened:
        response, writer, release = await req.for_attempt(action).aopen(client)
        return BodyPump(writer).aopened(response, response.aiter_bytes(), release)

    def make() -> AsyncMessageStream:
        return AsyncMessageStream(opener, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                                  parser=parser, sdk_events=sdk_events, beta=req.beta, request_changes=req.changes,
                                  pause=_pause(req, limit))

    return AsyncStreamOpener(make)
