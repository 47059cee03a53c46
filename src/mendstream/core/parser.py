# MessageParser: the whole sans-IO pipeline in one object. Bytes in (`feed`), stream events out, the
# accumulated message and the repairs on the side. Chains a framing (SSE, or AWS event-stream for Bedrock:
# mendstream.core.framing) → event JSON (fast jiter, repair on failure) → MessageAccumulator, and owns the
# end-of-stream decisions about what a last, unfinished event left.
from __future__ import annotations

import re
import sys
from typing import Any, NoReturn, Self

from jiter import from_json

from mendstream.core.accumulate import MessageAccumulator, PartialMode, check_partial_mode
from mendstream.core.bedrock import EventStreamFraming
from mendstream.core.events import Event
from mendstream.core.eventstream import (
    DEFAULT_MAX_FRAME_BYTES,
    PRELUDE_BYTES,
    check_max_frame_bytes,
    looks_like_event_stream,
)
from mendstream.core.framing import FRAMINGS, Framing, FramingName, Payload, Unfinished
from mendstream.core.partial_json import MAX_NESTING_DEPTH
from mendstream.core.repair import Repair, decode_event_json
from mendstream.core.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder, check_max_event_bytes
from mendstream.errors import (
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
    """Parse the bytes of a Messages API streaming response.

    Args:
        framing: how the body is framed: ``"sse"`` (server-sent events: the API, Vertex, gateways; the
            default), ``"event-stream"`` (AWS event-stream: Bedrock's ``InvokeModelWithResponseStream``,
            see :class:`~mendstream.core.bedrock.EventStreamFraming`) or ``"auto"`` (decided from the first 12
            bytes: an event-stream prelude, else SSE; what ``replay`` uses). The events, message, repairs and
            errors are the same whatever the framing (offsets and ordinals are the framing's).
        max_event_bytes: bound on the size of one event (default 64 MiB; see SSEDecoder; event-stream: the
            decoded event a frame carries).
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
        max_frame_bytes: the longest event-stream frame accepted (default: AWS's maximum); unused for SSE.

    ``feed(data)`` returns the events that ``data`` completes; ``end()`` must be called at end of stream and
    returns the events it completes (e.g. a final SSE event without its blank line). Both raise a
    :class:`~mendstream.errors.StreamError` subclass on a fault no repair can mend; the error's ``events``
    attribute holds the events decoded from the same call before it, and ``snapshot`` the partial message.
    The error is sticky: later calls raise it again. No other exception escapes, whatever the bytes.
    """

    def __init__(
        self,
        *,
        framing: FramingName = "sse",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_message_bytes: int | None = None,
        partial_mode: PartialMode | bool = "on",
        keep_content: bool = True,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if framing not in FRAMINGS:
            raise UsageError(f"framing must be one of 'sse', 'event-stream', 'auto', got {framing!r}")
        if max_message_bytes is not None and (type(max_message_bytes) is not int or max_message_bytes <= 0):
            raise UsageError(f"max_message_bytes must be a positive int or None, got {max_message_bytes!r}")
        check_max_event_bytes(max_event_bytes)
        check_max_frame_bytes(max_frame_bytes)
        self._options: dict[str, Any] = {
            "framing": framing, "max_event_bytes": max_event_bytes, "max_message_bytes": max_message_bytes,
            "partial_mode": partial_mode, "keep_content": keep_content, "max_frame_bytes": max_frame_bytes,
        }
        # None until "auto" has seen enough bytes to decide (see _decide); the first bytes wait in _head.
        self._framing: Framing | None = None
        self._head = b""
        if framing != "auto":
            self._framing = self._new_framing(framing)
        self._max_message_bytes = max_message_bytes
        # Bytes the stream may still bring: one subtraction per chunk keeps the optional bound cheap.
        self._budget = max_message_bytes if max_message_bytes is not None else sys.maxsize
        self._acc = MessageAccumulator(partial_mode=check_partial_mode(partial_mode), keep_content=keep_content)
        self._error: StreamError | None = None
        self._ended = False

    def fresh(self) -> Self:
        """A new parser of the same class and options, with no state: what a retried request is read with."""
        return type(self)(**self._options)

    @property
    def framing(self) -> FramingName:
        """The body's framing: ``"sse"`` or ``"event-stream"``; ``"auto"`` while ``framing="auto"`` has not
        seen enough bytes to decide."""
        return self._framing.kind if self._framing is not None else "auto"

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
            framing = self._framing
            if framing is None:  # "auto", still deciding
                framing, data = self._decide(data)
                if framing is None:  # fewer than 12 bytes so far: held
                    if self._budget < 0:
                        raise self._too_large(0)
                    return out
            try:
                payloads = framing.payloads(data)
            except StreamError as fault:
                self._framing_fault(framing, fault, out)
            if framing.repairs:
                self._framing_repairs(framing)
            # The hot loop, one iteration per event (as _handle, inlined: this runs for every chunk): JSON
            # that jiter accepts goes straight to the accumulator, a delta to its dedicated entry (most events
            # are deltas); anything else is mended.
            acc = self._acc
            for name, raw, offset, ordinal in payloads:
                try:
                    obj = from_json(raw)
                except ValueError as exc:
                    self._handle_undecodable(name, raw, offset, ordinal, exc, out)
                    continue
                if name == "content_block_delta" and acc.streaming and type(obj) is dict:
                    acc.handle_delta(obj, offset, ordinal, out)
                else:
                    acc.handle(name, obj, offset, ordinal, out)
            if self._budget < 0:  # after decoding the chunk, so that the snapshot has what it brought
                raise self._too_large(framing.position)
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
            framing = self._framing
            if framing is None:  # "auto", and fewer than 12 bytes came: not event-stream
                framing = self._framing = self._new_framing("sse")
                head, self._head = self._head, b""
                self._take(framing, head, out)
            unfinished = framing.finish()
            if unfinished is not None:
                self._unfinished(unfinished, out)
            self._acc.end(out)
        except Exception as exc:
            raise self._fail(exc, out)  # noqa: B904 - _fail keeps the cause (see there)
        return out

    # -- internals --------------------------------------------------------------------------------------

    def _new_framing(self, framing: FramingName) -> Framing:
        options = self._options
        if framing == "event-stream":
            return EventStreamFraming(
                max_event_bytes=options["max_event_bytes"], max_frame_bytes=options["max_frame_bytes"]
            )
        return SSEDecoder(max_event_bytes=options["max_event_bytes"])

    def _decide(self, data: bytes) -> tuple[Framing | None, bytes]:
        # "auto": hold the first bytes until there are enough to tell an event-stream prelude from SSE text.
        head = self._head + data
        if len(head) < PRELUDE_BYTES:
            self._head = head
            return None, b""
        self._head = b""
        framing = self._framing = self._new_framing("event-stream" if looks_like_event_stream(head) else "sse")
        return framing, head

    def _too_large(self, offset: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            f"the stream exceeded max_message_bytes={self._max_message_bytes}",
            limit=self._max_message_bytes or 0,
            offset=offset,
        )

    def _accept(self, data: object) -> bytes:
        """The bytes of a ``feed`` argument that is not plain bytes, or the UsageError for a bad call."""
        if self._ended:
            raise UsageError("feed() called after end()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
        return bytes(data)

    def _take(self, framing: Framing, data: bytes, out: list[Event]) -> None:
        # As feed() (which has this inlined), for the few bytes "auto" held until end().
        try:
            payloads = framing.payloads(data)
        except StreamError as fault:
            self._framing_fault(framing, fault, out)
        if framing.repairs:
            self._framing_repairs(framing)
        self._handle(payloads, out)

    def _framing_fault(self, framing: Framing, fault: StreamError, out: list[Event]) -> NoReturn:
        # A framing fault: the events the same call completed before it first (an error among them wins).
        if framing.repairs:
            self._framing_repairs(framing)
        self._handle(fault.events, out)
        raise fault

    def _framing_repairs(self, framing: Framing) -> None:
        # A framing's own repairs (a stripped BOM) come before those of the events it delivered with them.
        for repair in framing.repairs:
            self._acc.add_repair(repair)
        framing.repairs.clear()

    def _handle(self, payloads: list[Payload], out: list[Event]) -> None:
        # As the hot loop in feed(), for the payloads end() completes.
        acc = self._acc
        for name, raw, offset, ordinal in payloads:
            try:
                obj = from_json(raw)
            except ValueError as exc:
                self._handle_undecodable(name, raw, offset, ordinal, exc, out)
                continue
            if name == "content_block_delta" and acc.streaming and type(obj) is dict:
                acc.handle_delta(obj, offset, ordinal, out)
            else:
                acc.handle(name, obj, offset, ordinal, out)

    def _handle_undecodable(
        self, name: str | None, raw: bytes, offset: int, ordinal: int, reason: ValueError, out: list[Event]
    ) -> None:
        decoded = getattr(raw, "decoded", None)  # an event the framing built itself (EventBytes)
        if decoded is not None:
            self._acc.handle(name, decoded, offset, ordinal, out)
            return
        stripped = raw.strip()
        if not stripped or stripped == b"[DONE]":
            return
        if _NESTING.search(str(reason)):
            raise EventDecodeError(
                f"event #{ordinal} at byte {offset} ({name or 'unnamed'}): its JSON nests deeper "
                f"than the limit of {MAX_NESTING} levels",
                raw=bytes(raw),
                offset=offset,
            )
        sse = ServerSentEvent(
            name, bytes(raw), offset=offset, ordinal=ordinal, stray_lines=getattr(raw, "stray_lines", None)
        )
        # No snapshot here: building the message for every mended event would make many repairs
        # quadratic; _fail attaches one if decoding fails for good.
        try:
            obj, repairs = decode_event_json(sse, None)
        except RecursionError:  # the repair path's own parser gave up on the nesting first
            raise EventDecodeError(
                f"event #{ordinal} at byte {offset} ({name or 'unnamed'}): its JSON nests deeper "
                "than Python's recursion limit allows",
                raw=sse.raw_data,
                offset=offset,
            ) from None
        for repair in repairs:
            self._acc.add_repair(repair)
        self._acc.handle(name, obj, offset, ordinal, out)

    def _unfinished(self, unfinished: Unfinished, out: list[Event]) -> None:
        # The end of input left part of a last event. If the framing could read it and its data is complete
        # JSON, it was meant to be dispatched (an SSE event without its blank line); otherwise the final
        # frame was cut: harmless once the message has its stop_reason, else the stream is incomplete.
        acc = self._acc
        payload = unfinished.payload
        if payload is not None:
            raw = payload[1].strip()
            if not raw or raw == b"[DONE]":
                return
            try:
                from_json(payload[1])
            except ValueError:
                pass
            else:
                acc.add_repair(
                    Repair(
                        "unterminated_final_event",
                        "the last event had no blank line after it; dispatched it",
                        unfinished.offset,
                        unfinished.ordinal,
                    )
                )
                self._handle([payload], out)
                return
        if acc.stop_reason_seen or acc.stopped:
            acc.add_repair(
                Repair(
                    "truncated_final_frame",
                    unfinished.repair_detail,
                    unfinished.offset,
                    unfinished.ordinal,
                    raw=unfinished.raw.decode("utf-8", "replace"),
                )
            )
            return
        error = acc.incomplete(unfinished.error_detail)
        error.offset = unfinished.offset
        raise error from unfinished.cause

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
