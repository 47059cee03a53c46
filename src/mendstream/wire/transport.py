# RepairTransport / AsyncRepairTransport: httpx and httpx2 transports that apply mendstream's sans-IO
# rewriters (mendstream.wire.rewrite) to Messages API traffic, for code that only lets you choose the HTTP client
# (the anthropic SDK, pydantic-ai, langchain-anthropic). Requests to Messages endpoints get their cache
# breakpoints planned; their SSE responses are repaired as they stream. Every other request passes untouched.
# The HTTP library is found from the inner transport's module (httpx or httpx2), so one class serves both.
from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any, Literal

from mendstream.core.repair import Repair
from mendstream.errors import UsageError
from mendstream.recording.files import CaptureDirectory
from mendstream.transports.capturing import request_json
from mendstream.wire.rewrite import ResponseRewriter, is_messages_path, rewrite_request, with_content_length

__all__ = ["AsyncRepairTransport", "RepairTransport"]

CacheOption = bool | Literal["default", "planner", "off"] | Any | None


def _family_of(inner: object | None) -> ModuleType:
    """httpx or httpx2, whichever ``inner`` belongs to; without ``inner``, the one the installed anthropic
    SDK uses (httpx2 from 1.0 on), else whichever is installed."""
    if inner is not None:
        root = type(inner).__module__.split(".", 1)[0]
        if root in ("httpx", "httpx2"):
            return importlib.import_module(root)
        for cls in type(inner).__mro__:  # a subclass defined elsewhere
            base = cls.__module__.split(".", 1)[0]
            if base in ("httpx", "httpx2"):
                return importlib.import_module(base)
        raise UsageError(f"inner must be an httpx or httpx2 transport, not {type(inner).__name__}")
    try:
        import anthropic

        name = "httpx2" if int(anthropic.__version__.split(".")[0]) >= 1 else "httpx"
        return importlib.import_module(name)
    except ImportError:
        pass
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UsageError("RepairTransport needs httpx or httpx2: pip install 'mendstream[httpx]'")


class _Options:
    """What both transports share: the cache mode, the capture directory and the repair callback."""

    def __init__(self, cache: CacheOption, capture: str | os.PathLike[str] | CaptureDirectory | None,
                 on_repair: Callable[[Repair], None] | None) -> None:
        self.planner: Any = None
        if cache is None or cache is False or cache == "off":
            self.cache: Literal["default", "planner", "off"] = "off"
        elif cache is True or cache == "default":
            self.cache = "default"
        elif cache == "planner":
            from mendstream.cache import CachePlanner

            self.cache, self.planner = "planner", CachePlanner(warn=False)
        elif hasattr(cache, "plan"):  # a CachePlanner the caller made (e.g. with options)
            self.cache, self.planner = "planner", cache
        else:
            raise UsageError(
                f"cache must be None, a bool, 'default', 'planner', 'off' or a CachePlanner; got {cache!r}"
            )
        # CaptureWriter captures (scrubbed body + sidecar, 0600, random names, size cap) in a directory
        # resolved and pinned once (mendstream.recording.files.CaptureDirectory).
        self._capture_dir = (capture if isinstance(capture, CaptureDirectory) or capture is None
                             else CaptureDirectory(capture))
        self.capture = self._capture_dir.path if self._capture_dir is not None else None
        self.on_repair = on_repair

    def request(self, http: ModuleType, request: Any, body: bytes) -> Any:
        """The request to send for a Messages request whose body is ``body``."""
        result = rewrite_request(body, cache=self.cache, planner=self.planner)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"accept-encoding"]
        # The rewriter needs the SSE bytes themselves: ask for no content coding (the API sends none anyway).
        headers.append((b"accept-encoding", b"identity"))
        if result.changed:
            headers = with_content_length(headers, len(result.body))
        return http.Request(request.method, request.url, headers=headers, content=result.body,
                            extensions=request.extensions)

    def rewrites(self, response: Any) -> bool:
        content_type = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "identity").lower()
        return content_type.split(";")[0].strip().lower() == "text/event-stream" and encoding in ("", "identity")

    def response(self, http: ModuleType, response: Any, stream: Any) -> Any:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"content-length",)]
        return http.Response(response.status_code, headers=headers, stream=stream,
                             extensions=response.extensions)

    def capture_writer(self, request: Any, response: Any) -> Any:
        """A CaptureWriter for the original response bytes of ``request`` (scrubbed, with a sidecar), or
        None."""
        if self._capture_dir is None:
            return None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        writer = self._capture_dir.writer(request_body=request_json(request.content, None), request_headers=headers,
                                          method=request.method, url=str(request.url), transport="repair")
        writer.start_response(response.status_code, response.headers.items())
        return writer


class _Rewriting:
    """Feeds a response body through a ResponseRewriter; tees the original bytes to a capture."""

    def __init__(self, options: _Options, request: Any, response: Any) -> None:
        self.rewriter = ResponseRewriter(on_repair=options.on_repair)
        self.capture = options.capture_writer(request, response)
        self.outcome = "closed"
        self.failure: BaseException | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.capture is not None:
            self.capture.write(chunk)
        return self.rewriter.feed(chunk)

    def failed(self, exc: BaseException) -> None:
        self.outcome, self.failure = "error", exc

    def end(self) -> bytes:
        if self.outcome != "error":
            self.outcome = "complete"
        return self.rewriter.end()

    def close(self) -> None:
        if self.capture is not None:
            self.capture.finish(self.outcome, self.failure)
            self.capture = None


def _is_messages(request: Any) -> bool:
    return bool(request.method == "POST" and is_messages_path(request.url.path))


class RepairTransport:
    """A synchronous httpx / httpx2 transport that repairs Messages API streams.

    Args:
        inner: the transport that does the I/O (``httpx.HTTPTransport()``, ``httpx2.HTTPTransport()`` or any
            transport of either family); default: a plain ``HTTPTransport`` of the family the installed SDK
            uses (httpx2 for anthropic ≥ 1.0, httpx before).
        cache: ``None``/``False``/``"off"`` leaves requests alone; ``True``/``"default"`` plans at most 4
            cache breakpoints per request; ``"planner"`` (or a :class:`~mendstream.cache.CachePlanner`) plans
            with one planner shared by this transport's requests: use one transport per conversation.
        capture: a directory; the original bytes of every Messages stream are written there as
            CaptureWriter captures: ``.sse`` body and ``.capture.json`` sidecar, credentials scrubbed (by name
            and by value, also when streamed in pieces), files 0600 under random names, 64 MiB cap each (see
            :class:`~mendstream.recording.files.CaptureDirectory`; pass one to set ``max_bytes``).
        on_repair: called with every :class:`~mendstream.Repair`.

    Usage: ``anthropic.Anthropic(http_client=httpx2.Client(transport=RepairTransport(cache=True)))``.
    A POST to a Messages path (see :func:`mendstream.wire.rewrite.is_messages_path`) whose response is
    ``text/event-stream`` is rewritten by :class:`~mendstream.wire.rewrite.ResponseRewriter`; anything else is
    forwarded as is. A non-JSON body to a Messages endpoint raises :class:`~mendstream.UsageError` (with
    ``cache`` on).
    """

    def __init__(self, inner: Any = None, *, cache: CacheOption = None,
                 capture: str | os.PathLike[str] | CaptureDirectory | None = None,
                 on_repair: Callable[[Repair], None] | None = None) -> None:
        self._http = _family_of(inner)
        self._inner = inner if inner is not None else self._http.HTTPTransport()
        self._options = _Options(cache, capture, on_repair)

    def handle_request(self, request: Any) -> Any:
        if not _is_messages(request):
            return self._inner.handle_request(request)
        http = self._http
        request = self._options.request(http, request, request.read())
        response = self._inner.handle_request(request)
        if not self._options.rewrites(response):
            return response
        rewriting = _Rewriting(self._options, request, response)
        inner_stream = response.stream

        class _Stream(http.SyncByteStream):  # type: ignore[misc,name-defined]
            def __iter__(self) -> Iterator[bytes]:
                try:
                    for chunk in inner_stream:
                        out = rewriting.feed(chunk)
                        if out:
                            yield out
                except http.TransportError as exc:  # the upstream dropped the connection: end of input
                    rewriting.failed(exc)
                tail = rewriting.end()
                if tail:
                    yield tail

            def close(self) -> None:
                rewriting.close()
                inner_stream.close()

        return self._options.response(http, response, _Stream())

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> RepairTransport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncRepairTransport:
    """The asynchronous twin of :class:`RepairTransport` (same arguments; ``inner`` defaults to an
    ``AsyncHTTPTransport``), for ``httpx.AsyncClient`` / ``httpx2.AsyncClient`` and ``AsyncAnthropic``."""

    def __init__(self, inner: Any = None, *, cache: CacheOption = None,
                 capture: str | os.PathLike[str] | CaptureDirectory | None = None,
                 on_repair: Callable[[Repair], None] | None = None) -> None:
        self._http = _family_of(inner)
        self._inner = inner if inner is not None else self._http.AsyncHTTPTransport()
        self._options = _Options(cache, capture, on_repair)

    async def handle_async_request(self, request: Any) -> Any:
        if not _is_messages(request):
            return await self._inner.handle_async_request(request)
        http = self._http
        request = self._options.request(http, request, await request.aread())
        response = await self._inner.handle_async_request(request)
        if not self._options.rewrites(response):
            return response
        rewriting = _Rewriting(self._options, request, response)
        inner_stream = response.stream

        class _Stream(http.AsyncByteStream):  # type: ignore[misc,name-defined]
            async def __aiter__(self) -> AsyncIterator[bytes]:
                try:
                    async for chunk in inner_stream:
                        out = rewriting.feed(chunk)
                        if out:
                            yield out
                except http.TransportError as exc:  # the upstream dropped the connection: end of input
                    rewriting.failed(exc)
                tail = rewriting.end()
                if tail:
                    yield tail

            async def aclose(self) -> None:
                rewriting.close()
                await inner_stream.aclose()

        return self._options.response(http, response, _Stream())

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> AsyncRepairTransport:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()
