# `replay` / `areplay`: a recorded stream (a file, bytes, or an iterable of chunks) read by the same driver
# as a live one, in one attempt. SSE and captured AWS event-stream bodies are told apart by their first bytes.
from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from mendstream.core.parser import MessageParser
from mendstream.errors import UsageError
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream, async_iterable_opener, iterable_opener

__all__ = ["Source", "areplay", "replay"]

Source = str | os.PathLike[str] | bytes | bytearray | Iterable[bytes]
_READ_SIZE = 64 * 1024


def _file_chunks(path: str | os.PathLike[str]) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(_READ_SIZE):
            yield chunk


def _chunks_of(source: Source) -> Iterable[bytes]:
    if isinstance(source, (bytes, bytearray)):
        return [bytes(source)]
    if isinstance(source, (str, os.PathLike)):
        if os.path.isdir(source):
            raise UsageError(f"{os.fspath(source)!r} is a directory; give a recorded stream file (.sse)")
        if not os.path.isfile(source):
            raise UsageError(f"no such fixture file: {os.fspath(source)!r}")
        return _file_chunks(source)
    if source is None or not isinstance(source, Iterable):
        raise UsageError(
            f"replay takes a file path, bytes or an iterable of byte chunks, not {type(source).__name__}"
        )
    return source


def _parser(parser_options: dict[str, Any]) -> MessageParser:
    # SSE or AWS event-stream (Bedrock), told apart by the first bytes.
    return MessageParser(**{"framing": "auto", **parser_options})


def replay(
    source: Source, /, *, sdk_events: bool = False, beta: bool = False, output_format: Any = None,
    **parser_options: Any,
) -> MessageStream:
    """Parse a recorded stream: a file path, the bytes, or an iterable of byte chunks.

    Returns a :class:`~mendstream.MessageStream` (use it as a context manager or iterate it). Nothing is read
    until it is iterated or ``get_final_message()`` / ``until_done()`` is called (``.message`` is ``{}``
    before). ``sdk_events=True`` yields the SDK's own event objects instead of mendstream's; ``beta=True``
    makes those and ``get_final_message()`` the SDK's ``Beta`` types. ``output_format`` (a type, as the SDK's
    ``messages.stream(output_format=...)`` takes it) makes ``get_final_message()`` the SDK's ``ParsedMessage``
    with ``parsed_output`` (see :class:`mendstream.streaming.structured.OutputFormat`). ``parser_options`` go to
    :class:`~mendstream.MessageParser` (``max_event_bytes``, ``partial_mode``, ...). An AWS event-stream body
    (a captured Bedrock response) is recognised from its first bytes and read as such.

    Raises:
        UsageError: ``source`` is not a file, bytes or an iterable of chunks (a directory, a missing file).
    """
    return MessageStream(iterable_opener(_chunks_of(source)), parser=_parser(parser_options),
                         sdk_events=sdk_events, beta=beta, output_format=output_format)


async def _aiter_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def areplay(
    source: AsyncIterable[bytes] | Source, /, *, sdk_events: bool = False, beta: bool = False,
    output_format: Any = None, **parser_options: Any,
) -> AsyncMessageStream:
    """Async twin of :func:`replay`: takes an async iterable of chunks (or what ``replay`` takes). Iterate it
    with ``async for`` (or ``await stream.get_final_message()``)."""
    achunks = source if isinstance(source, AsyncIterable) else _aiter_chunks(_chunks_of(source))
    return AsyncMessageStream(async_iterable_opener(achunks), parser=_parser(parser_options),
                              sdk_events=sdk_events, beta=beta, output_format=output_format)
