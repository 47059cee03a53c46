# MessageParser: the whole sans-IO pipeline in one object. Bytes in (`feed`), stream events out, the
# accumulated message and the repairs on the side. Chains SSEDecoder → event JSON → MessageAccumulator.
from __future__ import annotations

from typing import Any

from .accumulate import MessageAccumulator, PartialMode, check_partial_mode
from .errors import ProtocolError, StreamError, UsageError
from .events import Event
from .repair import Repair
from .sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder

__all__ = ["MessageParser"]


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
        self._bom_recorded = False
        self.bytes_received = 0

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
        if self._error is not None:
            raise self._error
        if self._ended:
            raise UsageError("feed() called after end()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
        self.bytes_received += len(data)
        out: list[Event] = []
        try:
            sses = self._sse.feed(bytes(data) if type(data) is not bytes else data)
            if not self._bom_recorded and self._sse.bom_stripped:
                self._bom_recorded = True
                self._acc._add_repair(Repair("bom", "stripped a leading UTF-8 byte order mark", 0, None))
            handle = self._acc.handle
            for sse in sses:
                handle(sse, out)
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
        out: list[Event] = []
        try:
            self._sse.end()
            self._acc.end(out, self._sse.unfinished)
        except Exception as exc:
            raise self._fail(exc, out) from None
        return out

    def _fail(self, exc: Exception, out: list[Event]) -> StreamError:
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
