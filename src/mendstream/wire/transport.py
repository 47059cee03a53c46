# RepairTransport / AsyncRepairTransport: httpx and httpx2 transports that apply mendstream at the HTTP
# boundary, for code that only lets you choose the HTTP client (the anthropic SDK, pydantic-ai,
# langchain-anthropic). Requests to Messages endpoints get their cache breakpoints planned (and, asked for,
# the mechanical 400s sanitised); their SSE responses are repaired as they stream and, with retry= and the
# stall timeouts, survive faults through the boundary's stream machine (wire/boundary.py); deltas may be
# coalesced for clients that are slow per event (wire/coalesce.py). Every other request passes untouched.
# The HTTP library is found from the inner transport's module (httpx or httpx2), so one class serves both.
from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

from mendstream.cache.options import CacheSetting, parse_cache
from mendstream.core.repair import Repair
from mendstream.errors import StreamStalledError, UsageError
from mendstream.recording.files import CaptureDirectory
from mendstream.streaming import reaper
from mendstream.streaming.drivers import AsyncRun, Opened, SyncRun, watch
from mendstream.streaming.machine import Fail, Open, Read
from mendstream.streaming.retry import Retry
from mendstream.transports.capturing import request_json
from mendstream.transports.pump import BodyPump
from mendstream.wire.boundary import NotAStream, Survival, UpstreamStatusError, boundary_machine
from mendstream.wire.coalesce import DeltaCoalescer, coalesce_window
from mendstream.wire.coalesce_drivers import AsyncCoalescing, ThreadedCoalescing
from mendstream.wire.http import http_library, is_messages_path, library_of
from mendstream.wire.rewrite import error_event, rewrite_request, with_content_length
from mendstream.wire.sanitize import RequestChange, RequestLimits, sanitize_body

__all__ = ["AsyncRepairTransport", "RepairTransport"]

CacheOption = Any
"""What ``cache=`` takes: see :mod:`mendstream.cache.options`."""
_DROPPED_HEADERS = (b"content-length", b"transfer-encoding")


def _family_of(inner: object | None) -> ModuleType:
    """httpx or httpx2, whichever ``inner`` belongs to; without ``inner``, the one the installed SDK uses."""
    if inner is None:
        return http_library("sdk")
    family = library_of(inner)
    if family is None:
        raise UsageError(f"inner must be an httpx or httpx2 transport, not {type(inner).__name__}")
    return family


def _same(chunk: bytes) -> bytes:
    return chunk


def _nothing() -> bytes:
    return b""


class _Boundary:
    """What both transports share: the request side (cache planning, sanitising), how one attempt is opened
    and answered, and the survival, capture and coalescing options."""

    def __init__(self, http: ModuleType, *, cache: CacheOption,
                 capture: str | os.PathLike[str] | CaptureDirectory | None,
                 on_repair: Callable[[Repair], None] | None, coalesce: float | bool | None, retry: Retry | None,
                 idle_timeout: float | None, progress_timeout: float | None,
                 sanitize: bool | RequestLimits, on_request_change: Callable[[RequestChange], None] | None) -> None:
        self.http = http
        self.survival = Survival(retry, idle_timeout, progress_timeout)
        self.coalesce = coalesce_window(coalesce)
        self.cache: CacheSetting = parse_cache(cache)
        if self.cache.mode == "planner" and self.cache.planner is None:  # one planner for this transport's requests
            from mendstream.cache import CachePlanner

            self.cache = CacheSetting("planner", planner=CachePlanner(warn=False))
        if sanitize is not False and sanitize is not True and not isinstance(sanitize, RequestLimits):
            raise UsageError(f"sanitize must be True, False or a RequestLimits; got {sanitize!r}")
        self.sanitize = sanitize
        self.on_request_change = on_request_change
        # CaptureWriter captures (scrubbed body + sidecar, 0600, random names, size cap) in a directory
        # resolved and pinned once (mendstream.recording.files.CaptureDirectory).
        self._capture_dir = (capture if isinstance(capture, CaptureDirectory) or capture is None
                             else CaptureDirectory(capture))
        self.capture = self._capture_dir.path if self._capture_dir is not None else None
        self.on_repair = on_repair

    # -- the request ------------------------------------------------------------------------------------------

    def plan(self, request: Any, body: bytes) -> Any:
        """The request to send for a Messages request whose body is ``body``: sanitised when asked for, cache
        breakpoints planned, asking for no content coding (the rewriter needs the SSE bytes themselves)."""
        payload = None
        if self.sanitize is not False:
            sanitized = sanitize_body(body, limits=self.sanitize if isinstance(self.sanitize, RequestLimits) else None)
            body, payload = sanitized.body, sanitized.payload
            if self.on_request_change is not None:
                for change in sanitized.changes:
                    self.on_request_change(change)
        result = rewrite_request(body, cache=self.cache, payload=payload)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"accept-encoding"]
        headers.append((b"accept-encoding", b"identity"))
        if result.body is not request.content:
            headers = with_content_length(headers, len(result.body))
        return self.http.Request(request.method, request.url, headers=headers, content=result.body,
                                 extensions=request.extensions)

    def for_attempt(self, request: Any, action: Open) -> Any:
        """``request`` as attempt ``action`` sends it: the continuation appended to its messages, and the wait
        for the response head bounded by the stall timeout (the read timeout, unless a shorter one is set)."""
        if action.continuation is None and action.timeout is None:
            return request
        content, headers = request.content, list(request.headers.raw)
        if action.continuation is not None:
            body = json.loads(content)
            body["messages"] = action.continuation.apply(body.get("messages"))
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
            headers = with_content_length(headers, len(content))
        extensions = dict(request.extensions)
        if action.timeout is not None:
            timeout = dict(extensions.get("timeout") or {})
            read = timeout.get("read")
            timeout["read"] = action.timeout if read is None else min(read, action.timeout)
            extensions["timeout"] = timeout
        return self.http.Request(request.method, request.url, headers=headers, content=content, extensions=extensions)

    # -- one attempt ------------------------------------------------------------------------------------------

    def _check(self, response: Any) -> None:
        content_type = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "identity").lower()
        if content_type.split(";")[0].strip().lower() != "text/event-stream" or encoding not in ("", "identity"):
            raise NotAStream(response)

    def opened(self, request: Any, response: Any) -> Opened:
        """The attempt over a streamable ``response`` (body teed to the capture, a dropped connection ending
        it quietly); a status error or a body that is not SSE is raised (the machine decides)."""
        if not 200 <= response.status_code < 300:
            try:
                body = response.read()
            finally:
                response.close()
            raise UpstreamStatusError(response.status_code, list(response.headers.raw), body, response)
        self._check(response)
        pump = BodyPump(self._capture_writer(request, response))
        return pump.opened(response, response.stream, response.stream.close)

    async def aopened(self, request: Any, response: Any) -> Opened:
        if not 200 <= response.status_code < 300:
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            raise UpstreamStatusError(response.status_code, list(response.headers.raw), body, response)
        self._check(response)
        pump = BodyPump(self._capture_writer(request, response))
        return pump.aopened(response, response.stream, response.stream.aclose)

    def _capture_writer(self, request: Any, response: Any) -> Any:
        """A CaptureWriter for the original response bytes of ``request`` (scrubbed, with a sidecar), or None."""
        if self._capture_dir is None:
            return None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        writer = self._capture_dir.writer(request_body=request_json(request.content, None), request_headers=headers,
                                          method=request.method, url=str(request.url), transport="repair")
        writer.start_response(response.status_code, response.headers.items())
        return writer

    def machine(self) -> Any:
        return boundary_machine(self.survival, on_repair=self.on_repair, now=time.monotonic())

    # -- the answer -------------------------------------------------------------------------------------------

    def response(self, first: Any, stream: Any) -> Any:
        headers = [(k, v) for k, v in first.headers.raw if k.lower() not in _DROPPED_HEADERS]
        return self.http.Response(first.status_code, headers=headers, stream=stream, extensions=first.extensions)

    def failure(self, error: BaseException) -> Any:
        """What the client gets when no attempt could stream: the last answer that was not a stream (an HTTP
        error, with ``x-should-retry: false`` when this boundary retried and gave up, so the client's SDK does
        not multiply the attempts), or the transport's error (a head that never came: a read timeout)."""
        http = self.http
        if isinstance(error, NotAStream):
            return error.response
        if isinstance(error, UpstreamStatusError):
            headers = [(k, v) for k, v in error.headers if k.lower() not in _DROPPED_HEADERS]
            if self.survival.retry is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"x-should-retry"]
                headers.append((b"x-should-retry", b"false"))
            return http.Response(error.status_code, headers=headers, content=error.content,
                                  extensions=getattr(error.response, "extensions", {}))
        if isinstance(error, StreamStalledError):
            raise http.ReadTimeout(str(error)) from error
        raise error


def _sync_body(http: ModuleType, run: SyncRun, coalesce: float | None) -> Any:
    """The body of a boundary stream for an httpx sync client (coalesced by a reader thread when asked)."""
    events = run.events()
    if coalesce:
        driver = ThreadedCoalescing(events, DeltaCoalescer(coalesce), rewrite=_same, finish=_nothing,
                                    release=lambda: run.close(None), wake=run.interrupt)

        class _Coalesced(http.SyncByteStream):  # type: ignore[misc,name-defined]
            def __iter__(self) -> Iterator[bytes]:
                return iter(driver)

            def close(self) -> None:
                driver.close()
                finalizer.detach()

        body: Any = _Coalesced()
    else:
        class _Stream(http.SyncByteStream):  # type: ignore[misc,name-defined]
            def __iter__(self) -> Iterator[bytes]:
                return events

            def close(self) -> None:
                run.close(events)
                finalizer.detach()

        body = _Stream()
    finalizer = watch(body, run)
    return body


def _async_body(http: ModuleType, run: AsyncRun, coalesce: float | None) -> Any:
    """The async twin of :func:`_sync_body` (coalesced by a reader task when asked)."""
    events = run.events()
    if coalesce:
        driver = AsyncCoalescing(events, DeltaCoalescer(coalesce), rewrite=_same, finish=_nothing)

        class _ACoalesced(http.AsyncByteStream):  # type: ignore[misc,name-defined]
            def __aiter__(self) -> AsyncIterator[bytes]:
                return driver.__aiter__()

            async def aclose(self) -> None:
                await driver.aclose()
                await run.close(None)
                finalizer.detach()

        body: Any = _ACoalesced()
    else:
        class _AStream(http.AsyncByteStream):  # type: ignore[misc,name-defined]
            def __aiter__(self) -> AsyncIterator[bytes]:
                return events

            async def aclose(self) -> None:
                await run.close(events)
                finalizer.detach()

        body = _AStream()
    finalizer = watch(body, run)
    return body


def _is_messages(request: Any) -> bool:
    return bool(request.method == "POST" and is_messages_path(request.url.path))


_ARGS_DOC = """
    Args:
        inner: the transport that does the I/O (``httpx.HTTPTransport()``, ``httpx2.HTTPTransport()`` or any
            transport of either family); default: a plain one of the family the installed SDK uses (httpx2 for
            anthropic >= 1.0, httpx before).
        cache: what ``cache=`` takes everywhere (:mod:`mendstream.cache.options`): ``None``/``False``/``"off"``
            leaves requests alone; ``True``/``"default"`` or a strategy name plans at most 4 breakpoints per
            request; ``"planner"`` (or a :class:`~mendstream.CachePlanner`) plans with one planner shared by
            this transport's requests: use one transport per conversation.
        capture: a directory; the original bytes of every Messages attempt are written there as CaptureWriter
            captures: ``.sse`` body and ``.capture.json`` sidecar, credentials scrubbed (by name and by value,
            also when streamed in pieces), files 0600 under random names, 64 MiB cap each (see
            :class:`~mendstream.recording.files.CaptureDirectory`; pass one to set ``max_bytes``).
        on_repair: called with every :class:`~mendstream.Repair`.
        coalesce: merge consecutive deltas of one content block that arrive within this many seconds
            (``True``: 10 ms; ``None``/``0``: off, the default), so that clients which redo work on every
            event get fewer events; see :class:`mendstream.wire.coalesce.DeltaCoalescer`. The final message is
            unchanged. A coalescing sync stream is read by a thread of its own (so that a held delta goes out
            when its window ends even if the upstream goes quiet); closing the stream ends that thread.
        retry, idle_timeout, progress_timeout: survival (off by default: one attempt, no stall timeout), as
            for :func:`mendstream.stream`: before anything the client could act on was sent, a fault is
            retried invisibly; after content, ``Retry(on_partial="continue")`` resumes text in the same
            response, and anything else ends the stream with an ``event: error`` the client raises. A
            boundary that retried and gave up answers an HTTP error with ``x-should-retry: false``. See
            :mod:`mendstream.wire.boundary`.
        sanitize: ``True`` (or a :class:`~mendstream.wire.sanitize.RequestLimits`) fixes the mechanical 400s
            in requests before they are sent (empty text blocks, a prefill ending in whitespace, orphan
            tool_use / tool_result blocks, media over the documented limits); see docs/requests.md.
        on_request_change: called with every :class:`~mendstream.wire.sanitize.RequestChange` sanitising made.

    A POST to a Messages path (see :func:`mendstream.wire.http.is_messages_path`) whose response is
    ``text/event-stream`` is repaired as it streams; anything else is forwarded as is. A non-JSON body to a
    Messages endpoint raises :class:`~mendstream.UsageError` (with ``cache`` or ``sanitize`` on).
"""


class RepairTransport:
    __doc__ = """A synchronous httpx / httpx2 transport that repairs Messages API streams and makes them survive.

    Usage: ``anthropic.Anthropic(http_client=httpx2.Client(transport=RepairTransport(cache=True)))``.
""" + _ARGS_DOC

    def __init__(self, inner: Any = None, *, cache: CacheOption = None,
                 capture: str | os.PathLike[str] | CaptureDirectory | None = None,
                 on_repair: Callable[[Repair], None] | None = None, coalesce: float | bool | None = None,
                 retry: Retry | None = None, idle_timeout: float | None = None, progress_timeout: float | None = None,
                 sanitize: bool | RequestLimits = False,
                 on_request_change: Callable[[RequestChange], None] | None = None) -> None:
        self._http = _family_of(inner)
        self._inner = inner if inner is not None else self._http.HTTPTransport()
        self._boundary = _Boundary(self._http, cache=cache, capture=capture, on_repair=on_repair, coalesce=coalesce,
                                   retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                                   sanitize=sanitize, on_request_change=on_request_change)

    def handle_request(self, request: Any) -> Any:
        if not _is_messages(request):
            return self._inner.handle_request(request)
        boundary, inner = self._boundary, self._inner
        planned = boundary.plan(request, request.read())

        def opener(action: Open) -> Opened:
            attempt = boundary.for_attempt(planned, action)
            return boundary.opened(attempt, inner.handle_request(attempt))

        reaper.start()
        run = SyncRun(opener, boundary.machine(), fail_as=error_event)
        action = run.open_until_streaming()
        if isinstance(action, Fail):
            return boundary.failure(action.error)
        assert isinstance(action, Read)
        return boundary.response(run.response, _sync_body(self._http, run, boundary.coalesce))

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> RepairTransport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncRepairTransport:
    __doc__ = """The asynchronous twin of :class:`RepairTransport` (``inner`` defaults to an ``AsyncHTTPTransport``),
    for ``httpx.AsyncClient`` / ``httpx2.AsyncClient`` and ``AsyncAnthropic``; stalls are bounded with
    ``asyncio`` timeouts, and coalescing uses a reader task instead of a thread.
""" + _ARGS_DOC

    def __init__(self, inner: Any = None, *, cache: CacheOption = None,
                 capture: str | os.PathLike[str] | CaptureDirectory | None = None,
                 on_repair: Callable[[Repair], None] | None = None, coalesce: float | bool | None = None,
                 retry: Retry | None = None, idle_timeout: float | None = None, progress_timeout: float | None = None,
                 sanitize: bool | RequestLimits = False,
                 on_request_change: Callable[[RequestChange], None] | None = None) -> None:
        self._http = _family_of(inner)
        self._inner = inner if inner is not None else self._http.AsyncHTTPTransport()
        self._boundary = _Boundary(self._http, cache=cache, capture=capture, on_repair=on_repair, coalesce=coalesce,
                                   retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                                   sanitize=sanitize, on_request_change=on_request_change)

    async def handle_async_request(self, request: Any) -> Any:
        if not _is_messages(request):
            return await self._inner.handle_async_request(request)
        boundary, inner = self._boundary, self._inner
        planned = boundary.plan(request, await request.aread())

        async def opener(action: Open) -> Opened:
            attempt = boundary.for_attempt(planned, action)
            return await boundary.aopened(attempt, await inner.handle_async_request(attempt))

        reaper.start()
        run = AsyncRun(opener, boundary.machine(), fail_as=error_event)
        action = await run.open_until_streaming()
        if isinstance(action, Fail):
            return boundary.failure(action.error)
        assert isinstance(action, Read)
        return boundary.response(run.response, _async_body(self._http, run, boundary.coalesce))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> AsyncRepairTransport:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()
