# MessageStream / AsyncMessageStream: pump byte chunks from any source into a MessageParser and offer the
# SDK's MessageStream surface. The only difference between the twins is how a chunk is awaited; everything
# else lives in _StreamState. `replay` / `areplay` build them from files, bytes or chunk iterables.
# How a stream ends: read to the end or failed, it releases its source itself; `close()` / `with` release it
# (the transport may drain first); dropped without either, a finaliser warns (ResourceWarning, as files do)
# and calls the transport's `abandon` callback, which must not block or take a lock. The event generators
# therefore never release anything when they are closed (GeneratorExit), because a generator is closed by
# the garbage collector at an arbitrary point, possibly inside the HTTP library's pool lock.
from __future__ import annotations

import inspect
import os
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from .errors import StreamError, UsageError, request_id_of
from .events import Event
from .parser import MessageParser
from .repair import Repair
from .sdk_events import to_sdk_event, to_sdk_message

__all__ = ["AsyncMessageStream", "MessageStream", "areplay", "replay", "to_sdk_message"]

Source = str | os.PathLike[str] | bytes | bytearray | Iterable[bytes]
_S = TypeVar("_S", bound="_Surface")
_READ_SIZE = 64 * 1024


class _StreamState:
    """What both twins share: the parser, the transport's metadata and error mapping."""

    def __init__(
        self,
        parser: MessageParser | None,
        response: object | None,
        request_id: str | None,
        wrap_error: Callable[[StreamError], BaseException] | None,
        beta: bool = False,
    ) -> None:
        self.beta = beta
        self.parser = parser if parser is not None else MessageParser()
        self.response = response
        self._request_id = request_id
        self._wrap_error = wrap_error
        self.closed = False
        self._live: Any = None  # the current_message_snapshot object, once asked for
        self.structured: Any = None  # a stream.structured.OutputFormat, with output_format=

    def request_id(self) -> str | None:
        if self._request_id is not None:
            return self._request_id
        return request_id_of(getattr(self.response, "headers", None))

    def error_for(self, error: StreamError) -> BaseException:
        """What to raise for the core's ``error`` (the transport's ``wrap_error``, else ``error``).

        Callers raise it ``from`` its ``__cause__``, so the cause set by the core (an internal bug) or by
        the transport (the connection failure) is what tracebacks and diagnostics show.
        """
        if self._wrap_error is None:
            return error
        failure = self._wrap_error(error)
        if failure is not error and failure.__cause__ is None:
            failure.__cause__ = error.__cause__  # the mapped error keeps the core's cause
        return failure

    def final_message(self) -> Any:
        if not self.parser.complete:
            raise UsageError("the stream has not completed")
        return self.sdk_message(self.parser.message, final=True)

    def sdk_message(self, message: dict[str, Any], *, final: bool = False) -> Any:
        """``message`` as the SDK's message (its ``ParsedMessage``, parsed, with ``output_format``)."""
        if self.structured is not None:
            return self.structured.message(message, final=final)
        return to_sdk_message(message, beta=self.beta)

    def sdk_event(self, event: Event) -> Any:
        """``event`` as the SDK's (with the parsed outputs the SDK's helper adds, with ``output_format``)."""
        if self.structured is not None:
            return self.structured.sdk_event(event)
        return to_sdk_event(event, beta=self.beta)

    def final_text(self) -> str:
        message = self.parser.message
        texts = [b.get("text", "") for b in message.get("content", []) if b.get("type") == "text"]
        if not texts:
            kinds = ",".join(str(b.get("type")) for b in message.get("content", []))
            raise RuntimeError(
                ".get_final_text() can only be called when the API returns a `text` content block.\n"
                f"The API returned {kinds} content block type(s) that you can access by calling "
                "get_final_message().content"
            )
        return "".join(texts)

    def snapshot(self) -> Any:
        return self.live_snapshot(lambda: self.parser.message)

    def live_snapshot(self, read: Callable[[], dict[str, Any]]) -> Any:
        """The one message object ``current_message_snapshot`` returns: it keeps updating as the stream is
        read (see :func:`mendstream.stream.snapshot.live_message`)."""
        if self._live is None:
            if not read():
                raise UsageError("no message_start has been received yet")
            from .stream.snapshot import live_message

            self._live = live_message(read, self.progress, beta=self.beta, build=self.sdk_message)
        return self._live

    def progress(self) -> tuple[int, int, bool]:
        parser = self.parser
        return id(parser), parser.bytes_fed, parser.complete

    def workspace_id(self) -> str | None:
        headers = getattr(self.response, "headers", None)
        value = headers.get("anthropic-workspace-id") if headers is not None else None
        return value if isinstance(value, str) else None


class _Surface:
    """Read-only properties common to both twins."""

    _state: _StreamState

    @property
    def message(self) -> dict[str, Any]:
        """The message so far as a Messages API dict; reading it never reads the stream.

        Before iteration this is ``{}`` (nothing read yet, even for a replay of a complete file); after
        ``get_final_message()`` / ``until_done()`` (which read to the end) it is the final message, equal
        to ``get_final_message()`` as a dict.
        """
        return self._state.parser.message

    @property
    def repairs(self) -> list[Repair]:
        """Everything mendstream mended or tolerated in this stream."""
        return self._state.parser.repairs

    @property
    def parser(self) -> MessageParser:
        return self._state.parser

    @property
    def response(self) -> Any:
        """The transport's response object (e.g. an httpx response), or None for replays."""
        return self._state.response

    @property
    def request_id(self) -> str | None:
        return self._state.request_id()

    @property
    def workspace_id(self) -> str | None:
        """The ``anthropic-workspace-id`` response header, as the SDK's ``MessageStream.workspace_id`` (None for
        replays and responses without it)."""
        return self._state.workspace_id()

    @property
    def current_message_snapshot(self) -> Any:
        """The message so far, as an ``anthropic.types.Message`` when the SDK is installed. As with the SDK it
        is one object that keeps updating while the stream is read (raises UsageError before message_start)."""
        return self._state.snapshot()


class MessageStream(_Surface):
    """Events from an iterable of byte chunks, with the SDK ``MessageStream`` surface.

    Iterating yields the stream events. The transport's ``close`` callback is called exactly once: after
    the last chunk, when an error ends the stream, or by ``close()`` / ``__exit__``. If the stream is
    garbage-collected before that, a ``ResourceWarning`` is emitted and ``abandon`` (which must not block
    or take a lock: it runs in a finaliser) is called instead of ``close``.
    Errors are :class:`~mendstream.errors.StreamError` subclasses (or what ``wrap_error`` makes of them),
    raised after every event decoded before them has been yielded, ``from`` their ``__cause__``.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        parser: MessageParser | None = None,
        response: object | None = None,
        request_id: str | None = None,
        close: Callable[[], object] | None = None,
        abandon: Callable[[], object] | None = None,
        wrap_error: Callable[[StreamError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
    ) -> None:
        self._state = _StreamState(parser, response, request_id, wrap_error, beta)
        self._chunks = chunks
        self._close_callback = close
        self._finalizer = _watch(self, abandon)
        events = self._events()
        # With sdk_events the items are the SDK's objects; statically they stay typed as Event (documented).
        self._iterator = cast("Generator[Event, None, None]", _sdk_events(events, self)) if sdk_events else events
        self.text_stream: Iterator[str] = self._text()

    def _events(self) -> Generator[Event, None, None]:
        parser = self._state.parser
        try:
            for chunk in self._chunks:
                try:
                    events = parser.feed(chunk)
                except StreamError as error:
                    yield from error.events
                    failure = self._state.error_for(error)
                    raise failure from failure.__cause__
                yield from events
            try:
                events = parser.end()
            except StreamError as error:
                yield from error.events
                failure = self._state.error_for(error)
                raise failure from failure.__cause__
            yield from events
        except GeneratorExit:
            raise  # closed by close() or by the garbage collector: they release the source, not this frame
        except BaseException:
            self._release()
            raise
        self._release()

    def _text(self) -> Iterator[str]:
        events: Iterator[Any] = self
        for event in events:
            if event.type == "text":  # mendstream's or the SDK's TextEvent
                yield event.text

    def __iter__(self) -> Iterator[Event]:
        return self._iterator

    def __next__(self) -> Event:
        return next(self._iterator)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _release(self) -> None:
        if self._state.closed:
            return
        self._state.closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._close_callback is not None:
            self._close_callback()

    def close(self) -> None:
        """Stop reading and release the connection (idempotent)."""
        self._iterator.close()
        self._release()

    def until_done(self) -> None:
        """Read the stream to its end."""
        for _ in self._iterator:
            pass

    def get_final_message(self) -> Any:
        """Read to the end; return the final message (``anthropic.types.Message`` if the SDK is installed,
        else the dict)."""
        self.until_done()
        return self._state.final_message()

    def get_final_text(self) -> str:
        """Read to the end; return the text blocks joined. RuntimeError if there are none (as the SDK)."""
        self.until_done()
        return self._state.final_text()


class AsyncMessageStream(_Surface):
    """The async twin of :class:`MessageStream`, fed by an async iterable of byte chunks."""

    def __init__(
        self,
        achunks: AsyncIterable[bytes],
        *,
        parser: MessageParser | None = None,
        response: object | None = None,
        request_id: str | None = None,
        close: Callable[[], object] | Callable[[], Awaitable[object]] | None = None,
        abandon: Callable[[], object] | None = None,
        wrap_error: Callable[[StreamError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
    ) -> None:
        self._state = _StreamState(parser, response, request_id, wrap_error, beta)
        self._chunks = achunks
        self._close_callback = close
        self._finalizer = _watch(self, abandon)
        events = self._events()
        self._iterator = cast("AsyncGenerator[Event, None]", _asdk_events(events, self)) if sdk_events else events
        self.text_stream: AsyncIterator[str] = self._text()

    async def _events(self) -> AsyncGenerator[Event, None]:
        parser = self._state.parser
        try:
            async for chunk in self._chunks:
                try:
                    events = parser.feed(chunk)
                except StreamError as error:
                    for event in error.events:
                        yield event
                    failure = self._state.error_for(error)
                    raise failure from failure.__cause__
                for event in events:
                    yield event
            try:
                events = parser.end()
            except StreamError as error:
                for event in error.events:
                    yield event
                failure = self._state.error_for(error)
                raise failure from failure.__cause__
            for event in events:
                yield event
        except GeneratorExit:
            raise  # see MessageStream._events
        except BaseException:
            await self._release()
            raise
        await self._release()

    async def _text(self) -> AsyncIterator[str]:
        events: AsyncIterator[Any] = self
        async for event in events:
            if event.type == "text":  # mendstream's or the SDK's TextEvent
                yield event.text

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterator

    async def __anext__(self) -> Event:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _release(self) -> None:
        if self._state.closed:
            return
        self._state.closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._close_callback is not None:
            result = self._close_callback()
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        """Stop reading and release the connection (idempotent)."""
        await self._iterator.aclose()
        await self._release()

    async def until_done(self) -> None:
        async for _ in self._iterator:
            pass

    async def get_final_message(self) -> Any:
        await self.until_done()
        return self._state.final_message()

    async def get_final_text(self) -> str:
        await self.until_done()
        return self._state.final_text()


def _sdk_events(events: Iterator[Event], stream: _Surface) -> Generator[Any, None, None]:
    for event in events:
        yield stream._state.sdk_event(event)  # (the state read each time: a resilient stream replaces it)


async def _asdk_events(events: AsyncIterator[Event], stream: _Surface) -> AsyncGenerator[Any, None]:
    async for event in events:
        yield stream._state.sdk_event(event)


def _abandoned(abandon: Callable[[], object]) -> None:
    # Runs in a finaliser: warn as an unclosed file does, then hand over to the transport, whose callback
    # only queues work (no I/O, no lock here).
    warnings.warn(
        "a mendstream stream was garbage-collected without close(); its connection is closed without "
        "reading the rest of the body (use `with` / `async with`, or call close())",
        ResourceWarning,
        stacklevel=2,
    )
    abandon()


def _watch(stream: object, abandon: Callable[[], object] | None) -> weakref.finalize[Any, Any] | None:
    """A finaliser that calls ``abandon`` if ``stream`` is collected before it released its source."""
    if abandon is None:
        return None
    finalizer = weakref.finalize(stream, _abandoned, abandon)
    finalizer.atexit = False  # at interpreter exit the process takes its connections with it
    return finalizer


def _file_chunks(path: str | os.PathLike[str]) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(_READ_SIZE):
            yield chunk


def _chunks_of(source: Source) -> Iterable[bytes]:
    if isinstance(source, (bytes, bytearray)):
        return [bytes(source)]
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise UsageError(f"no such fixture file: {os.fspath(source)!r}")
        return _file_chunks(source)
    return source


def replay(
    source: Source, /, *, sdk_events: bool = False, beta: bool = False, output_format: Any = None,
    **parser_options: Any,
) -> MessageStream:
    """Parse a recorded stream: a file path, the bytes, or an iterable of byte chunks.

    Returns a :class:`MessageStream` (use it as a context manager or iterate it). Nothing is read until it
    is iterated or ``get_final_message()`` / ``until_done()`` is called (``.message`` is ``{}`` before).
    ``sdk_events=True`` yields the SDK's own event objects (see :func:`mendstream.sdk_events.to_sdk_event`)
    instead of mendstream's; ``beta=True`` makes those and ``get_final_message()`` the SDK's ``Beta``
    types. ``output_format`` (a type, as the SDK's ``messages.stream(output_format=...)`` takes it) makes
    ``get_final_message()`` the SDK's ``ParsedMessage`` with ``parsed_output`` (see
    :class:`mendstream.stream.structured.OutputFormat`). ``parser_options`` go to :class:`MessageParser`
    (``max_event_bytes``, ``partial_mode``). An AWS event-stream body (a captured Bedrock response) is
    recognised from its first bytes and read as :class:`~mendstream.bedrock.BedrockParser` reads it.
    """
    stream = MessageStream(
        _chunks_of(source), parser=_replay_parser(parser_options), sdk_events=sdk_events, beta=beta
    )
    return with_output_format(stream, output_format)


def with_output_format(stream: _S, output_format: Any) -> _S:
    """``stream``, parsing its answer into ``output_format`` when one is given (None: unchanged)."""
    if output_format is not None:
        from .stream.structured import OutputFormat

        stream._state.structured = OutputFormat(output_format, beta=stream._state.beta)
    return stream


def _replay_parser(parser_options: dict[str, Any]) -> MessageParser:
    # SSE or AWS event-stream (Bedrock), told apart by the first 12 bytes; see mendstream.bedrock.
    from .bedrock import BedrockParser

    return BedrockParser(framing="auto", **parser_options)


async def _aiter_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def areplay(
    source: AsyncIterable[bytes] | Source, /, *, sdk_events: bool = False, beta: bool = False,
    output_format: Any = None, **parser_options: Any,
) -> AsyncMessageStream:
    """Async twin of :func:`replay`: takes an async iterable of chunks (or what ``replay`` takes)."""
    achunks = source if isinstance(source, AsyncIterable) else _aiter_chunks(_chunks_of(source))
    stream = AsyncMessageStream(
        achunks, parser=_replay_parser(parser_options), sdk_events=sdk_events, beta=beta
    )
    return with_output_format(stream, output_format)
