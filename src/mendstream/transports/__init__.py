# What every transport shares, whatever moves the bytes: the errors for HTTP failures before the stream
# starts, the content-type check, and the body pumps that tee chunks to a capture and turn a connection
# dropped mid-body into an ordinary end of input (the core then decides whether the message was complete).
# Sync and async transports differ only in the two pump generators below. Nothing here imports an HTTP
# library or the SDK; they are reached through duck-typed response objects.
from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Generator, Iterable, Mapping
from os import PathLike
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mendstream.errors import ProtocolError, StreamError

if TYPE_CHECKING:
    from mendstream.capture import CaptureWriter
    from mendstream.parser import MessageParser
    from mendstream.streaming import AsyncMessageStream, MessageStream

__all__ = [
    "AsyncStreamOpener",
    "BodyPump",
    "ContentTypeError",
    "HTTPStatusError",
    "check_content_type",
    "error_message_of",
    "is_transport_error",
]

CapturePath = str | PathLike[str]
Outcome = Literal["complete", "closed", "error"]


class HeadersLike(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class HTTPStatusError(StreamError):
    """The endpoint answered with a non-2xx status before any stream began.

    Attributes:
        status_code: the HTTP status.
        body: the decoded JSON body, or the body text when it is not JSON.
        error_type: ``error.type`` from an Anthropic-style error body, when present.
        error_message: ``error.message`` from the body, when present.
        request_id: the ``request-id`` header (or the body's ``request_id``), when present.
        response: the HTTP library's response object (already read and closed).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: object,
        response: object = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.response = response
        self.request_id = request_id
        error = body.get("error") if isinstance(body, dict) else None
        self.error_type: str | None = error.get("type") if isinstance(error, dict) else None
        self.error_message: str | None = error.get("message") if isinstance(error, dict) else None


class ContentTypeError(ProtocolError):
    """A 2xx response whose content type is not an SSE stream (JSON, HTML, AWS event-stream, ...).

    Attributes: ``status_code``, ``content_type``, ``body`` (decoded JSON or up to 4 KiB of text),
    ``response``.
    """

    def __init__(
        self, message: str, *, status_code: int, content_type: str, body: object, response: object = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.content_type = content_type
        self.body = body
        self.response = response


def decode_body(raw: bytes) -> object:
    """The body as JSON when it parses, else as text (replacement characters for invalid UTF-8)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_message_of(body: object) -> str:
    """A short human description of an error body: ``"overloaded_error: Overloaded"`` or its text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            kind, msg = error.get("type"), error.get("message")
            return ": ".join(str(x) for x in (kind, msg) if x) or json.dumps(body)[:500]
        if isinstance(error, str):
            return error
        msg = body.get("message")
        if isinstance(msg, str):
            return msg
        return json.dumps(body)[:500]
    return str(body)[:500]


def status_error(status: int, raw_body: bytes, headers: HeadersLike, response: object) -> HTTPStatusError:
    """The :class:`HTTPStatusError` for a non-2xx response whose body has been read into ``raw_body``."""
    body = decode_body(raw_body)
    request_id = headers.get("request-id") or (body.get("request_id") if isinstance(body, dict) else None)
    detail = error_message_of(body) if body else "(empty body)"
    suffix = f" (request-id {request_id})" if request_id else ""
    return HTTPStatusError(
        f"HTTP {status}: {detail}{suffix}",
        status_code=status,
        body=body,
        response=response,
        request_id=request_id,
    )


# Content types that certainly are not an Anthropic SSE stream. Anything else is accepted when
# `strict=False`, because some compatible servers send SSE as text/plain or without a content type.
_NOT_SSE = ("application/json", "text/html", "application/vnd.amazon.eventstream", "application/xml")


def check_content_type(headers: HeadersLike, *, strict: bool) -> str | None:
    """``None`` when the response may carry SSE, else the offending content type.

    With ``strict`` only ``text/event-stream`` (or no content type at all) passes.
    """
    content_type = str(headers.get("content-type") or "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not media or media == "text/event-stream":
        return None
    if strict or media in _NOT_SSE:
        return content_type
    return None


def content_type_error(status: int, content_type: str, raw_body: bytes, response: object) -> ContentTypeError:
    """The :class:`ContentTypeError` for a 2xx response that is not SSE, naming its content type."""
    body = decode_body(raw_body[:4096])
    if "amazon.eventstream" in content_type:
        hint = (
            "this is AWS event-stream framing (the Bedrock InvokeModelWithResponseStream API), not SSE; "
            "use anthropic.AnthropicBedrockMantle / AnthropicAWS or the SDK's own .stream()"
        )
    elif isinstance(body, dict) and body.get("type") == "error":
        hint = f"the body is an error: {error_message_of(body)}"
    elif isinstance(body, dict) and body.get("type") == "message":
        hint = "the endpoint ignored \"stream\": true and sent a whole message"
    else:
        hint = f"body starts with {str(body)[:200]!r}"
    return ContentTypeError(
        f"expected text/event-stream from the endpoint (HTTP {status}), got {content_type!r}: {hint}",
        status_code=status,
        content_type=content_type,
        body=body,
        response=response,
    )


def is_transport_error(exc: BaseException) -> bool:
    """True for httpx / httpx2 ``TransportError`` (connection reset, read timeout, incomplete chunk)."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "TransportError" and cls.__module__.split(".", 1)[0] in ("httpx", "httpx2"):
            return True
    return False


DRAIN_LIMIT = 64 * 1024 * 1024
"""Most bytes read after a stream error to complete a capture."""


class BodyPump:
    """Moves body chunks from an HTTP response into the core, teeing them to a capture.

    A transport error while reading the body (the peer reset the connection, a read timed out) ends the
    input instead of escaping: the core then sees EOF and either finishes a complete message or raises
    ``IncompleteStreamError`` with the partial message; :meth:`wrap_error` attaches the transport error to
    that error as ``transport_error`` (and a note). A capture is finished with outcome ``"complete"``,
    ``"closed"`` (consumer stopped early) or ``"error"``.

    ``convert_error`` maps core errors to what is raised (the SDK transport turns ``APIStreamError`` into
    the SDK's error classes); it receives the error after the cause has been attached.
    """

    def __init__(
        self,
        capture: CaptureWriter | None = None,
        *,
        convert_error: Callable[[StreamError], BaseException] | None = None,
    ) -> None:
        self.capture = capture
        self.transport_error: BaseException | None = None
        self.failed = False
        self._convert_error = convert_error

    def drain(self, chunks: Generator[bytes, None, None]) -> None:
        """After a stream error, read the rest of the body into the capture (so a fixture of a broken
        stream is whole), at most ``DRAIN_LIMIT`` bytes. Does nothing when not capturing."""
        if not self.failed or self.capture is None:
            return
        seen = 0
        for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break

    async def adrain(self, chunks: AsyncGenerator[bytes, None]) -> None:
        """The async twin of :meth:`drain`."""
        if not self.failed or self.capture is None:
            return
        seen = 0
        async for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break

    def wrap_error(self, err: StreamError) -> BaseException:
        """Record a transport error that ended the body on ``err``, then apply ``convert_error``.

        The transport error is kept as ``transport_error`` and in a note on the raised exception (shown in
        tracebacks), and offered as ``__cause__`` (which the core may reset when it raises).
        """
        self.failed = True
        converted = self._convert_error(err) if self._convert_error is not None else err
        failure = self.transport_error
        if failure is not None:
            for target in {id(err): err, id(converted): converted}.values():
                target.transport_error = failure  # type: ignore[attr-defined]
                if target.__cause__ is None:
                    target.__cause__ = failure
            reason = f"{type(failure).__name__}: {failure}"
            converted.add_note(f"the connection failed before the stream ended: {reason}")
        return converted

    def _finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self.capture is not None:
            self.capture.finish(outcome, error)

    def finish_capture(self) -> None:
        """Finish the capture as ``"closed"`` if the body was never read to the end (idempotent)."""
        self._finish("closed")

    def _body_failed(self, exc: Exception) -> bool:
        """Record that reading the body raised ``exc``; True if it must propagate (not a transport error)."""
        self._finish("error", exc)
        if not is_transport_error(exc):
            return True
        self.transport_error = exc
        return False

    def pump(self, chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
        """Yield ``chunks`` (teeing them), stopping quietly at a transport error."""
        capture = self.capture
        try:
            for chunk in chunks:
                if capture is not None:
                    capture.write(chunk)
                yield chunk
            self._finish("complete")
        except Exception as exc:
            if self._body_failed(exc):
                raise
        finally:
            self._finish("closed")

    async def apump(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """The async twin of :meth:`pump`."""
        capture = self.capture
        try:
            async for chunk in chunks:
                if capture is not None:
                    capture.write(chunk)
                yield chunk
            self._finish("complete")
        except Exception as exc:
            if self._body_failed(exc):
                raise
        finally:
            self._finish("closed")

    def message_stream(
        self, body: Iterable[bytes], *, response: Any, parser: MessageParser | None, release: Callable[[], object]
    ) -> MessageStream:
        """The :class:`MessageStream` over ``body``: closing it drains the capture, then ``release()``."""
        from mendstream.streaming import MessageStream

        chunks = self.pump(body)

        def close() -> None:
            try:
                self.drain(chunks)
                chunks.close()
            finally:
                release()

        return MessageStream(
            chunks, parser=parser, response=response, request_id=response.headers.get("request-id"),
            close=close, wrap_error=self.wrap_error,
        )

    def amessage_stream(
        self,
        body: AsyncIterable[bytes],
        *,
        response: Any,
        parser: MessageParser | None,
        release: Callable[[], Awaitable[object]],
    ) -> AsyncMessageStream:
        """The async twin of :meth:`message_stream`."""
        from mendstream.streaming import AsyncMessageStream

        chunks = self.apump(body)

        async def close() -> None:
            try:
                await self.adrain(chunks)
                await chunks.aclose()
            finally:
                await release()

        return AsyncMessageStream(
            chunks, parser=parser, response=response, request_id=response.headers.get("request-id"),
            close=close, wrap_error=self.wrap_error,
        )


def capture_writer(
    capture: CapturePath | None,
    *,
    request_body: Any,
    request_headers: Iterable[tuple[str, str]] | Mapping[str, str],
    url: str | None,
    transport: str,
    started_at: float | None = None,
) -> CaptureWriter | None:
    """A :class:`~mendstream.capture.CaptureWriter` for ``capture``, or ``None`` when not capturing."""
    if capture is None:
        return None
    from mendstream.capture import CaptureWriter

    return CaptureWriter(
        capture,
        request_body=request_body,
        request_headers=request_headers,
        url=url,
        transport=transport,
        started_at=started_at,
    )


class AsyncStreamOpener:
    """What ``astream(...)`` returns: await it, or use it with ``async with`` (the request is sent then).

    ``stream = await opener`` gives the :class:`~mendstream.streaming.AsyncMessageStream`;
    ``async with opener as stream:`` also closes it on exit, as the SDK's ``AsyncMessageStreamManager``
    does. An opener sends its request once; awaiting it a second time raises ``RuntimeError``.
    """

    def __init__(self, open_stream: Callable[[], Awaitable[AsyncMessageStream]]) -> None:
        self._open_stream = open_stream
        self._opened = False
        self._stream: AsyncMessageStream | None = None

    async def _open(self) -> AsyncMessageStream:
        if self._opened:
            raise RuntimeError("this stream request has already been sent; call astream(...) again")
        self._opened = True
        self._stream = await self._open_stream()
        return self._stream

    def __await__(self) -> Generator[Any, None, AsyncMessageStream]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncMessageStream:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not None:
            await self._stream.close()


def capture_error_response(
    capture: CaptureWriter | None, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> None:
    """Record a response that failed before streaming (its whole body is known) and finish the capture."""
    if capture is None:
        return
    capture.start_response(status, headers)
    capture.write(body)
    capture.finish("complete")


def request_json(content: bytes | None, fallback: Any) -> Any:
    """The JSON request body that was sent (``content``), or ``fallback`` when it is not JSON."""
    if content:
        try:
            return json.loads(content)
        except ValueError:
            pass
    return fallback
