# Framing: how the bytes of a response become the Messages API events the parser reads. Two framings exist:
# SSE (mendstream.core.sse.SSEDecoder: the API, Vertex, every gateway) and AWS event-stream
# (mendstream.core.bedrock.EventStreamFraming: Bedrock's InvokeModelWithResponseStream). MessageParser holds
# one of them, chosen at construction (``framing="auto"`` chooses from the first 12 bytes), and has one
# feed/end for both: everything after the framing (JSON, repairs, accumulation, errors) is shared.
#
# Theory of operation. A framing takes bytes split anywhere and hands back *payloads*, one per Messages API
# event it completed: ``(name, data, offset, ordinal)``, where ``data`` is the event's JSON text as bytes,
# undecoded (the parser decodes it with jiter, and mends it on failure), ``name`` the event name the framing
# knows (SSE's ``event:`` line; event-stream: the JSON's leading ``type``; None if none), ``offset`` where the
# event starts in the body (what repairs and errors name) and ``ordinal`` its position among the events
# delivered. A payload is a plain tuple because one is made per event on the hot path. The rare event that
# needs more than its bytes carries an EventBytes (a bytes subclass, so the hot path does not look at it).
#
# A framing fault (a broken frame, an event over max_event_bytes, a chunk frame without an event) is raised
# as a StreamError whose ``events`` are the payloads the same call completed before it: the parser hands those
# on first (an error among them wins), then raises. At the end of input, ``finish()`` says what a last event
# left behind (Unfinished); whether that is harmless is the parser's decision, because it depends on the
# message (a stop reason already received). Framings keep what they hold bounded (max_event_bytes,
# max_frame_bytes) and look at each byte a bounded number of times however the input is split.
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mendstream.core.repair import Repair

__all__ = ["FRAMINGS", "EventBytes", "Framing", "FramingName", "Payload", "Unfinished"]

FramingName = Literal["sse", "event-stream", "auto"]
"""What ``MessageParser(framing=...)`` takes: a body's framing, or ``"auto"`` to tell from its first bytes."""

FRAMINGS: tuple[FramingName, ...] = ("sse", "event-stream", "auto")

Payload = tuple[str | None, bytes, int, int]
"""One event as a framing delivers it: ``(name, data, offset, ordinal)`` (see the module's notes)."""


class EventBytes(bytes):
    """An event's data with what the framing knows beyond its bytes (rare events only).

    Attributes:
        stray_lines: SSE: the event's data lines and unknown-field lines in order (see
            ``ServerSentEvent.stray_lines``), for rejoining a data line a raw line break split.
        decoded: an event the framing built itself rather than received as JSON (an event-stream exception
            frame becomes the ``error`` event); its bytes are then empty, so that they never decode.
    """

    stray_lines: tuple[tuple[bool, bytes], ...] | None
    decoded: dict[str, Any] | None

    def __new__(
        cls,
        data: bytes | bytearray,
        *,
        stray_lines: tuple[tuple[bool, bytes], ...] | None = None,
        decoded: dict[str, Any] | None = None,
    ) -> EventBytes:
        self = super().__new__(cls, data)
        self.stray_lines = stray_lines
        self.decoded = decoded
        return self


@dataclass(frozen=True, slots=True)
class Unfinished:
    """What the end of input left of a last event (``Framing.finish()``).

    Attributes:
        payload: the event as far as it came, when the framing can read it (SSE: a last event without its
            blank line); the parser dispatches it if its data is complete JSON. None: nothing readable (a cut
            event-stream frame).
        raw: the bytes received of it, kept in the ``truncated_final_frame`` repair.
        offset: where it starts in the body.
        ordinal: the ordinal it would have had.
        repair_detail: the repair's wording when the cut is harmless (the message had its stop reason).
        error_detail: the IncompleteStreamError's wording otherwise.
        cause: the framing's own error for the cut, kept as the IncompleteStreamError's ``__cause__``.
    """

    payload: Payload | None
    raw: bytes
    offset: int
    ordinal: int
    repair_detail: str
    error_detail: str
    cause: BaseException | None = None


class Framing(Protocol):
    """Bytes in, Messages API event payloads out (see the module's notes). ``kind`` names it."""

    @property
    def kind(self) -> Literal["sse", "event-stream"]: ...

    @property
    def position(self) -> int:
        """Bytes of the body taken so far: the offset named by an error about the whole stream."""
        ...

    @property
    def repairs(self) -> list[Repair]:
        """Repairs the framing made (SSE: a stripped BOM); the parser moves them to the message's, in order."""
        ...

    def payloads(self, data: bytes, /) -> list[Payload]:
        """The payloads of the events ``data`` completes. Raises StreamError (``events``: the payloads before)."""
        ...

    def finish(self) -> Unfinished | None:
        """End of input: what a last event left behind, or None when the body ended between events."""
        ...
