# MessageParser: the whole sans-IO pipeline in one object. Bytes in (`feed`), stream events out, the
# accumulated message and the repairs on the side. Chains SSEDecoder → event JSON (fast jiter, repair on
# failure) → MessageAccumulator, and owns the end-of-stream decisions about a last, unterminated event.
from __future__ import annotations

from typing import Any

from jiter import from_json

from .accumulate import MessageAccumulator, PartialMode, check_partial_mode
from .errors import ProtocolError, StreamError, UsageError
from .events import Event
from .repair import Repair, decode_event_json
from .sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder

__all__ = ["MessageParser"]

# `event:` values of the Messages API, for the fast path (any other name takes the general path).
_KNOWN_NAMES = {
    name.encode(): name
    for name in (
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop", "ping", "error",
    )
}


_DELTA_PREFIX = b"event: content_block_delta\ndata: "


class MessageParser:
    """Parse the bytes of a Messages API SSE response.

    Args:
        max_event_bytes: bound on the bytes held for one unfinished SSE event (default 64 MiB).
        partial_mode: how ``input_json`` snapshots treat a string still being received: ``"on"`` (or
            ``True``) drops it, as the SDK does; ``"trailing-strings"`` includes it.

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
        partial_mode: PartialMode | bool = "on",
    ) -> None:
        self._sse = SSEDecoder(max_event_bytes=max_event_bytes)
        self._acc = MessageAccumulator(partial_mode=check_partial_mode(partial_mode))
        self._error: StreamError | None = None
        self._ended = False
        self._fast = False  # the decoder is between events and the stream has started: see feed()
        self._limit = max_event_bytes

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
    def error(self) -> StreamError | None:
        """The error that stopped the parser, if any."""
        return self._error

    def feed(self, data: bytes, /) -> list[Event]:
        """Feed the next bytes of the stream; return the events they complete."""
        out: list[Event] = []
        try:
            # The common case, fused (one call per chunk matters here): the decoder holds nothing and the
            # chunk ends on a blank line, so it is whole events. Each ordinary one (`event: NAME` or no name,
            # one `data:` line, JSON that jiter accepts) goes straight to the accumulator, deltas straight to
            # their handler; anything else goes through the decoder's general path, with the position and
            # count kept in step. `13 not in data` (CR) tests an int, a memchr; `b"\r" in` builds an error.
            if not (self._fast and type(data) is bytes and data[-2:] == b"\n\n" and 13 not in data):
                self._feed_general(data, out)
                return out
            sse = self._sse
            acc = self._acc
            limit = self._limit
            position = sse._position
            ordinal = sse._count
            blocks = data.split(b"\n\n")
            tail = len(blocks.pop())  # what follows the last blank line: b"" or b"\n"
            for block in blocks:
                if block[:33] == _DELTA_PREFIX and acc.streaming:  # most events: one compare, no field parse
                    raw = block[33:]
                    if 10 not in raw and len(block) < limit:
                        try:
                            obj = from_json(raw)
                        except ValueError:
                            obj = None
                        if type(obj) is dict and obj.get("type") == "content_block_delta":
                            acc._offset = position
                            acc._ordinal = ordinal
                            acc._on_block_delta(obj, out)
                            position += len(block) + 2
                            ordinal += 1
                            continue
                obj = None
                name: str | None = None
                raw = b""
                if block[:7] == b"event: ":
                    newline = block.find(b"\n", 7)
                    if newline > 0 and block[newline + 1 : newline + 7] == b"data: ":
                        name = _KNOWN_NAMES.get(block[7:newline])
                        if name is not None:
                            raw = block[newline + 7 :]
                elif block[:6] == b"data: ":  # providers that send no event names
                    raw = block[6:]
                if raw and len(block) < limit and 10 not in raw:  # 10: LF
                    try:
                        obj = from_json(raw)
                    except ValueError:
                        obj = None
                if obj is None:  # not an ordinary event (JSON null takes this path too, harmlessly)
                    sse._position, sse._count = position, ordinal
                    for event in sse.feed(block + b"\n\n"):
                        self._handle(event, out)
                    position, ordinal = sse._position, sse._count
                    continue
                acc.handle(name, obj, position, ordinal, out)
                position += len(block) + 2
                ordinal += 1
            sse._position = position + tail
            sse._count = ordinal
        except Exception as exc:
            raise self._fail(exc, out) from None
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
        self._fast = False
        out: list[Event] = []
        try:
            self._sse.end()
            if self._sse.unfinished:
                self._unfinished(self._sse.unfinished, out)
            self._acc.end(out)
        except Exception as exc:
            raise self._fail(exc, out) from None
        return out

    # -- internals --------------------------------------------------------------------------------------

    def _feed_general(self, data: bytes, out: list[Event]) -> None:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise UsageError("feed() called after end()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
        sse = self._sse
        was_started = sse._started
        events = sse.feed(bytes(data))
        if not was_started and sse.bom_stripped:
            self._acc.add_repair(Repair("bom", "stripped a leading UTF-8 byte order mark", 0, None))
        for event in events:
            self._handle(event, out)
        self._fast = sse._idle

    def _handle(self, sse: ServerSentEvent, out: list[Event]) -> None:
        try:
            obj = from_json(sse.raw_data)
        except ValueError:
            stripped = sse.raw_data.strip()
            if not stripped or stripped == b"[DONE]":
                return
            obj, repairs = decode_event_json(sse, self._acc.message())
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
        event = ServerSentEvent(name, raw, offset=self._sse._position, ordinal=self._sse._count)
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
        self._handle(event, out)

    def _fail(self, exc: Exception, out: list[Event]) -> StreamError:
        self._fast = False
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
