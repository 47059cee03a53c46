# MessageParser: the whole sans-IO pipeline in one object. Bytes in (`feed`), stream events out, the
# accumulated message and the repairs on the side. Chains SSEDecoder → event JSON (fast jiter, repair on
# failure) → MessageAccumulator, and owns the end-of-stream decisions about a last, unterminated event.
from __future__ import annotations

import re
import sys
from typing import Any, Self

from jiter import from_json

from mendstream.core.accumulate import MessageAccumulator, PartialMode, check_partial_mode
from mendstream.core.events import Event
from mendstream.core.partial_json import MAX_NESTING_DEPTH
from mendstream.core.repair import Repair, decode_event_json
from mendstream.core.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder
from mendstream.errors import (
    BufferLimitError,
    EventDecodeError,
    MessageTooLargeError,
    ProtocolError,
    StreamError,
    UsageError,
)

__all__ = ["MAX_NESTING", "MessageParser"]

#: How deep the JSON of an event may nest: jiter's limit, shared with the repair path and tool input
#: (partial_json.MAX_NESTING_DEPTH). The API's events nest a few levels; deeper is an input error
#: (EventDecodeError), decided the same way whatever the call stack.
MAX_NESTING = MAX_NESTING_DEPTH
_NESTING = re.compile(r"recursion limit exceeded")


class MessageParser:
    """Parse the bytes of a Messages API SSE response.

    Args:
        max_event_bytes: bound on the size of one SSE event (default 64 MiB; see SSEDecoder).
        max_message_bytes: optional bound on the bytes of the whole stream, which bounds the memory the
            message can take (text and tool input built from valid deltas have no other bound; off by
            default, like the SDK). The ``feed`` that passes it decodes its chunk, then raises
            MessageTooLargeError with the message so far.
        partial_mode: how ``input_json`` snapshots treat a string still being received: ``"on"`` (or
            ``True``) drops it, as the SDK does; ``"trailing-strings"`` includes it.
        keep_content: False parses without keeping the message's content, so that memory does not grow
            with the stream (for code that forwards the stream and needs only its structure, such as the
            proxy): text and thinking deltas are not accumulated (blocks keep their start values), tool
            input is checked as it arrives but not kept (the input is its start value, ``raw`` in errors
            is empty), and no derived events (``text``, ``thinking``, ``input_json``) are made. Everything
            else is as with content: the stream events, stop reason, usage, repairs and errors.

    ``feed(data)`` returns the events that ``data`` completes; ``end()`` must be called at end of stream and
    returns the events it completes (e.g. a final event without its blank line). Both raise a
    :class:`~mendstream.errors.StreamError` subclass on a fault no repair can mend; the error's ``events``
    attribute holds the events decoded from the same call before it, and ``snapshot`` the partial message.
    The error is sticky: later calls raise it again. No other exception escapes, whatever the bytes.
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_message_bytes: int | None = None,
        partial_mode: PartialMode | bool = "on",
        keep_content: bool = True,
    ) -> None:
        if max_message_bytes is not None and (type(max_message_bytes) is not int or max_message_bytes <= 0):
            raise UsageError(f"max_message_bytes must be a positive int or None, got {max_message_bytes!r}")
        self._options: dict[str, Any] = {
            "max_event_bytes": max_event_bytes, "max_message_bytes": max_message_bytes, "partial_mode": partial_mode,
            "keep_content": keep_content,
        }
        self._sse = SSEDecoder(max_event_bytes=max_event_bytes)
        self._max_message_bytes = max_message_bytes
        # Bytes the stream may still bring: one subtraction per chunk keeps the optional bound cheap.
        self._budget = max_message_bytes if max_message_bytes is not None else sys.maxsize
        self._acc = MessageAccumulator(partial_mode=check_partial_mode(partial_mode), keep_content=keep_content)
        self._error: StreamError | None = None
        self._ended = False
        self._watch_bom = True  # until the decoder has seen whether the stream opens with a BOM

    def fresh(self) -> Self:
        """A new parser of the same class and options, with no state: what a retried request is read with."""
        return type(self)(**self._options)

    @property
    def message(self) -> dict[str, Any]:
        """The message so far as a Messages API dict (a fresh copy; ``{}`` before any event)."""
        return self._acc.message() or {}

    @property
    def repairs(self) -> list[Repair]:
        """Everything mended or tolerated so far, in order."""
        return self._acc.repairs

    @property
    def complete(self) -> bool:
        """True once the message has stopped (``message_stop``, or a repaired equivalent at ``end()``)."""
        return self._acc.stopped

    @property
    def bytes_fed(self) -> int:
        """How many bytes ``feed`` has taken so far: it grows whenever the message may have changed (with
        ``complete`` for what ``end()`` adds), so a reader can tell cheaply whether to look again."""
        limit = self._max_message_bytes if self._max_message_bytes is not None else sys.maxsize
        return limit - self._budget

    @property
    def error(self) -> StreamError | None:
        """The error that stopped the parser, if any."""
        return self._error

    def broken_tool_input(self, index: int, /) -> StreamError | None:
        """The :class:`~mendstream.ToolInputError` the tool input of open block ``index`` will end with, as
        soon as the text received can no longer become JSON that a repair or a stop reason would save; else
        None. Only a ``keep_content=False`` parser checks input as it arrives (the full one decides at the
        block's stop). For a boundary that must not pass on a fragment no client can parse."""
        return self._acc.broken_tool_input(index)

    def feed(self, data: bytes, /) -> list[Event]:
        """Feed the next bytes of the stream; return the events they complete."""
        if self._error is not None:
            raise self._error
        out: list[Event] = []
        try:
            if type(data) is not bytes or self._ended:
                data = self._accept(data)
            self._budget -= len(data)
            sse = self._sse
            whole = sse.whole_events(data)
            if whole is None:  # anything but whole events of the ordinary form
                self._feed_general(data, out)
                whole = []
            # The hot loop, one iteration per event: JSON that jiter accepts goes straight to the
            # accumulator, a delta to its dedicated entry (most events are deltas); anything else is mended.
            acc = self._acc
            for name, raw, offset, ordinal in whole:
                try:
                    obj = from_json(raw)
                except ValueError as exc:
                    self._handle_undecodable(ServerSentEvent(name, raw, offset=offset, ordinal=ordinal), exc, out)
                    continue
                if name == "content_block_delta" and acc.streaming and type(obj) is dict:
                    acc.handle_delta(obj, offset, ordinal, out)
                else:
                    acc.handle(name, obj, offset, ordinal, out)
            if self._budget < 0:  # after decoding the chunk, so that the snapshot has what it brought
                raise MessageTooLargeError(
                    f"the stream exceeded max_message_bytes={self._max_message_bytes}",
                    limit=self._max_message_bytes or 0,
                    offset=sse.position,
                )
        except Exception as exc:
            raise self._fail(exc, out)  # noqa: B904 - _fail keeps the cause (see there)
        return out

    def end(self) -> list[Event]:
        """Signal the end of the stream; return the events this completes.

        Raises IncompleteStreamError if the message never stopped (and no ``message_delta`` with a
        stop_reason arrived), after recording what was received.
        """
        if self._error is not None:
            raise self._error
        if self._ended:
            return []
        self._ended = True
        out: list[Event] = []
        try:
            self._sse.end()
            if self._sse.unfinished:
                self._unfinished(self._sse.unfinished, out)
            self._acc.end(out)
        except Exception as exc:
            raise self._fail(exc, out)  # noqa: B904 - _fail keeps the cause (see there)
        return out

    # -- internals --------------------------------------------------------------------------------------

    def _accept(self, data: object) -> bytes:
        """The bytes of a ``feed`` argument that is not plain bytes, or the UsageError for a bad call."""
        if self._ended:
            raise UsageError("feed() called after end()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
        return bytes(data)

    def _feed_general(self, data: bytes, out: list[Event]) -> None:
        sse = self._sse
        try:
            events = sse.feed(data)
        except BufferLimitError as exc:  # keep the events completed before the oversized one
            self._dispatch(exc.events, out)
            raise
        if self._watch_bom and sse.started:
            self._watch_bom = False
            if sse.bom_stripped:
                self._acc.add_repair(Repair("bom", "stripped a leading UTF-8 byte order mark", 0, None))
        self._dispatch(events, out)

    def _dispatch(self, events: list[ServerSentEvent], out: list[Event]) -> None:
        # As the hot loop in feed(), for the decoder's full events.
        acc = self._acc
        for event in events:
            try:
                obj = from_json(event[1])
            except ValueError as exc:
                self._handle_undecodable(event, exc, out)
                continue
            if event[0] == "content_block_delta" and acc.streaming and type(obj) is dict:
                acc.handle_delta(obj, event[4], event[5], out)
            else:
                acc.handle(event[0], obj, event[4], event[5], out)

    def _handle_undecodable(self, sse: ServerSentEvent, reason: ValueError, out: list[Event]) -> None:
        stripped = sse.raw_data.strip()
        if not stripped or stripped == b"[DONE]":
            return
        if _NESTING.search(str(reason)):
            raise EventDecodeError(
                f"event #{sse.ordinal} at byte {sse.offset} ({sse.event or 'unnamed'}): its JSON nests deeper "
                f"than the limit of {MAX_NESTING} levels",
                raw=sse.raw_data,
                offset=sse.offset,
            )
        # No snapshot here: building the message for every mended event would make many repairs
        # quadratic; _fail attaches one if decoding fails for good.
        try:
            obj, repairs = decode_event_json(sse, None)
        except RecursionError:  # the repair path's own parser gave up on the nesting first
            raise EventDecodeError(
                f"event #{sse.ordinal} at byte {sse.offset} ({sse.event or 'unnamed'}): its JSON nests deeper "
                "than Python's recursion limit allows",
                raw=sse.raw_data,
                offset=sse.offset,
            ) from None
        for repair in repairs:
            self._acc.add_repair(repair)
        self._acc.handle(sse.event, obj, sse.offset, sse.ordinal, out)

    def _unfinished(self, unfinished: bytes, out: list[Event]) -> None:
        # The last event had no terminating blank line. If its data is complete JSON, it was meant to be
        # dispatched; otherwise the final frame was cut: harmless once the message has its stop_reason.
        acc = self._acc
        data: list[bytes] = []
        name: str | None = None
        for line in unfinished.splitlines():
            field, _, value = line.partition(b":")
            value = value[1:] if value[:1] == b" " else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace") or None
        raw = b"\n".join(data)
        if not raw.strip() or raw.strip() == b"[DONE]":
            return
        event = ServerSentEvent(name, raw, offset=self._sse.position, ordinal=self._sse.dispatched)
        try:
            from_json(raw)
        except ValueError:
            if acc.stop_reason_seen or acc.stopped:
                acc.add_repair(
                    Repair(
                        "truncated_final_frame",
                        f"dropped a cut final frame of {len(unfinished)} bytes",
                        event.offset,
                        event.ordinal,
                        raw=unfinished.decode("utf-8", "replace"),
                    )
                )
                return
            raise acc.incomplete(
                f"the stream ended inside an event (a cut final frame of {len(unfinished)} bytes)"
            ) from None
        acc.add_repair(
            Repair(
                "unterminated_final_event",
                "the last event had no blank line after it; dispatched it",
                event.offset,
                event.ordinal,
            )
        )
        self._dispatch([event], out)

    def _fail(self, exc: Exception, out: list[Event]) -> StreamError:
        # A StreamError is raised as it is (its own cause kept); anything else is a bug in mendstream, wrapped
        # so that only StreamErrors escape, with the bug as its __cause__ for the diagnosis.
        if isinstance(exc, StreamError):
            error = exc
        else:  # a bug in mendstream: still honour the contract that only StreamErrors escape
            error = ProtocolError(f"internal error while parsing: {exc!r}", snapshot=self._acc.message())
            error.__cause__ = exc
        if error.snapshot is None:
            error.snapshot = self._acc.message()
        error.events = out
        if not isinstance(error, UsageError):
            self._error = error
        return error
