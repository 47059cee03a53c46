# Bedrock's InvokeModelWithResponseStream, read by the same core as SSE. BedrockParser decodes the AWS
# event-stream frames (mendstream.eventstream), turns each `chunk` frame's base64 Messages API event back into
# the SSE event it stands for and feeds it to MessageParser, so events, message, repairs and errors are exactly
# those of the same events over SSE; exception frames become the `error` event the SDK makes of them (an
# APIStreamError with the Bedrock type). Also here, for tests and the replay server: the SSE → event-stream
# converter and the request paths/content type Bedrock clients expect. Sans-IO; no botocore, no SDK.
from __future__ import annotations

import binascii
import json
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal

from jiter import from_json

from .accumulate import PartialMode
from .errors import EventDecodeError, EventStreamError, IncompleteStreamError, StreamError, UsageError
from .events import Event
from .eventstream import (
    DEFAULT_MAX_FRAME_BYTES,
    PRELUDE_BYTES,
    EventStreamDecoder,
    EventStreamMessage,
    encode_message,
    looks_like_event_stream,
)
from .parser import MessageParser
from .repair import Repair
from .sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder

__all__ = [
    "EVENT_STREAM_CONTENT_TYPE",
    "BedrockParser",
    "bedrock_stream_path",
    "exception_frame",
    "is_event_stream",
    "sse_to_event_stream",
]

EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

# The event name an SSE stream would carry: the JSON's `type` when it is the first key (as the API and
# Bedrock write it); otherwise no name, which the core treats exactly like the matching name.
_TYPE_PREFIX = re.compile(rb'\{\s*"type"\s*:\s*"([a-z_]{1,40})"')
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_DELTA_TYPE = b'{"type":"content_block_delta"'
_DELTA_HEAD = b"event: content_block_delta\ndata: "
_a2b_base64 = binascii.a2b_base64  # lenient, as botocore's base64.b64decode

Framing = Literal["event-stream", "auto"]


def is_event_stream(head: bytes, /) -> bool:
    """True when a body starting with ``head`` (12 bytes or more) is AWS event-stream, not SSE."""
    return looks_like_event_stream(head)


def _sse_block(raw: bytes) -> bytes:
    """The SSE event carrying ``raw`` as its data (split into data lines where it holds line breaks)."""
    if raw[:29] == _DELTA_TYPE:  # most events: no regex
        head = b"event: content_block_delta\n"
    else:
        match = _TYPE_PREFIX.match(raw)
        head = b"event: " + match.group(1) + b"\n" if match else b""
    if 10 in raw or 13 in raw:  # 10: LF, 13: CR. A raw CR arrives as LF, as it would over SSE.
        return head + b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(raw)) + b"\n"
    return head + b"data: " + raw + b"\n\n"


class BedrockParser(MessageParser):
    """Parse the body of Bedrock's ``InvokeModelWithResponseStream`` (AWS event-stream frames).

    Args:
        max_event_bytes, partial_mode: as for :class:`~mendstream.MessageParser`.
        max_frame_bytes: the longest event-stream frame accepted (default: AWS's maximum).
        framing: ``"event-stream"`` (default) requires event-stream frames; ``"auto"`` looks at the first
            12 bytes and reads plain SSE when they are not an event-stream prelude (what ``replay`` uses).

    The contract is :class:`~mendstream.MessageParser`'s: ``feed``/``end`` return stream events, raise only
    :class:`~mendstream.StreamError` subclasses, errors are sticky and carry ``snapshot`` and ``events``.
    Frames map onto the core as follows:

    * ``:message-type: event`` with ``:event-type: chunk``: the payload's ``bytes`` (base64 of one Messages
      API event) is that event's SSE data; a payload that is not such JSON raises ``EventDecodeError``.
      Other event types (none exist today) are skipped, as the SDK skips them.
    * ``:message-type: exception`` (``:exception-type: throttlingException``, ...) and ``error`` frames:
      the ``error`` event ``{"type": "error", "error": {"type": <exception type>, "message": ...}}`` (the
      payload's other keys kept inside ``error``), hence an ``APIStreamError`` with that ``error_type``.
    * A broken frame raises ``EventStreamError``; a frame cut by the end of input is tolerated (repair
      ``truncated_final_frame``) once the message has its stop reason, as a cut final SSE frame is, and is
      otherwise an ``IncompleteStreamError``.

    Offsets in errors and repairs are byte offsets of the frame in the event-stream body.
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        partial_mode: PartialMode | bool = "on",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        framing: Framing = "event-stream",
    ) -> None:
        if framing not in ("event-stream", "auto"):
            raise UsageError(f"framing must be 'event-stream' or 'auto', got {framing!r}")
        super().__init__(max_event_bytes=max_event_bytes, partial_mode=partial_mode)
        self._options = {
            "max_event_bytes": max_event_bytes, "partial_mode": partial_mode, "max_frame_bytes": max_frame_bytes,
            "framing": framing,
        }
        self._frames = EventStreamDecoder(max_frame_bytes=max_frame_bytes)
        # None: still deciding ("auto" only); True: event-stream; False: plain SSE, passed straight through.
        self._event_stream: bool | None = True if framing == "event-stream" else None
        self._head = b""  # "auto": the first bytes, held until there are enough to decide
        self._frame_error: StreamError | None = None
        self._core_failed = False  # the core raised (its error is sticky there)
        self._frames_ended = False
        # Where each SSE event given to the core came from: its offset in the SSE bytes the core has seen and
        # the offset of its frame, so errors and repairs can name frame offsets (16 bytes per frame).
        self._sse_starts = array("q")
        self._frame_offsets = array("q")
        self._sse_position = 0
        self._own_repairs: list[tuple[int, Repair]] = []  # (core repairs before it, repair)
        self._mapped: list[Repair] = []

    @property
    def framing(self) -> str | None:
        """``"event-stream"``, ``"sse"`` (``framing="auto"`` found SSE), or None while undecided."""
        if self._event_stream is None:
            return None
        return "event-stream" if self._event_stream else "sse"

    @property
    def repairs(self) -> list[Repair]:
        """Everything mended or tolerated so far, in order (offsets are frame offsets)."""
        core = super().repairs
        if not self._event_stream:
            return core
        for repair in core[len(self._mapped) :]:
            self._mapped.append(replace(repair, offset=self._frame_offset(repair.offset)))
        merged = list(self._mapped)
        for at, repair in reversed(self._own_repairs):  # each goes where it happened among the core's
            merged.insert(at, repair)
        return merged

    @property
    def error(self) -> StreamError | None:
        return self._frame_error or super().error

    def feed(self, data: bytes, /) -> list[Event]:
        """Feed the next bytes of the body; return the events they complete."""
        if self._event_stream is False:
            return super().feed(data)
        if self._frame_error is not None or self._core_failed:  # sticky, whichever stage raised it
            raise self.error  # type: ignore[misc]
        if self._frames_ended:
            return super().feed(data)  # the core's UsageError: fed after end()
        if self._event_stream is None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                return super().feed(data)  # the core raises its UsageError
            self._head += bytes(data)
            if len(self._head) < PRELUDE_BYTES:
                return []
            data, self._head = self._head, b""
            self._event_stream = looks_like_event_stream(data)
            if not self._event_stream:
                return super().feed(data)
        try:
            frames = self._frames.feed(data)
        except EventStreamError as error:
            raise self._frame_failure(error) from None
        return self._deliver(frames)

    def end(self) -> list[Event]:
        """Signal the end of the body; return the events this completes (see the class for cut frames)."""
        if self._event_stream is None:
            self._event_stream = False
            out = super().feed(self._head) if self._head else []
            return out + super().end()
        if not self._event_stream:
            return super().end()
        if self._frame_error is not None:
            raise self._frame_error
        if self._frames_ended:  # a second end(): the core answers (nothing, or its sticky error)
            return self._end_core()
        self._frames_ended = True
        try:
            self._frames.end()
        except EventStreamError as cut:
            return self._end_after_cut(cut)
        return self._end_core()

    # -- internals --------------------------------------------------------------------------------------

    def _end_core(self) -> list[Event]:
        try:
            return super().end()
        except StreamError as error:
            self._remap(error)
            raise

    def _end_after_cut(self, cut: EventStreamError) -> list[Event]:
        if super().error is not None:
            return self._end_core()  # raises the core's sticky error
        repair = Repair(
            "truncated_final_frame",
            f"dropped a cut final event-stream frame of {len(cut.raw)} bytes",
            cut.offset,
            None,
            raw=cut.raw.decode("utf-8", "replace"),
        )
        if self.complete or self.message.get("stop_reason") is not None:
            # before the core's end-of-stream repairs, as over SSE
            self._own_repairs.append((len(super().repairs), repair))
            return self._end_core()
        try:
            out = self._end_core()
        except IncompleteStreamError as error:
            error.add_note(f"the input ended inside an event-stream frame at offset {cut.offset}")
            error.__cause__ = cut
            raise
        self._own_repairs.append((len(super().repairs), repair))  # the core mended the end from a stop reason
        return out

    def _deliver(self, frames: list[EventStreamMessage]) -> list[Event]:
        """Give the core the SSE events the frames stand for, in one call; return its events."""
        if not frames:
            return []
        blocks: list[bytes] = []
        position = self._sse_position
        starts, offsets = self._sse_starts, self._frame_offsets
        for frame in frames:
            kind = frame.headers.get(":message-type")
            if kind == "event":
                if frame.headers.get(":event-type") != "chunk":
                    continue
                # _chunk_event and _sse_block, inlined for the usual frame (one call per frame matters here)
                raw = None
                try:
                    body = from_json(frame.payload)
                    if type(body) is dict and type(body.get("bytes")) is str:
                        raw = _a2b_base64(body["bytes"])
                except ValueError:  # binascii.Error is a ValueError
                    pass
                if raw is not None and raw[:29] == _DELTA_TYPE and 10 not in raw and 13 not in raw:
                    block = _DELTA_HEAD + raw + b"\n\n"
                    starts.append(position)
                    offsets.append(frame.offset)
                    position += len(block)
                    blocks.append(block)
                    continue
                try:
                    block = _sse_block(raw if raw is not None else _chunk_event(frame))
                except EventDecodeError as bad:
                    # Events from frames before the bad one come first, as over SSE.
                    out = self._feed_core(blocks, position)
                    bad.snapshot = self.message or None
                    bad.events = out
                    self._frame_error = bad
                    raise bad from None
            elif kind in ("exception", "error"):
                block = b"event: error\ndata: " + _error_event(frame) + b"\n\n"
            else:
                continue
            starts.append(position)
            offsets.append(frame.offset)
            position += len(block)
            blocks.append(block)
        return self._feed_core(blocks, position)

    def _feed_core(self, blocks: list[bytes], position: int) -> list[Event]:
        if not blocks:
            return []
        self._sse_position = position
        try:
            return super().feed(b"".join(blocks))
        except StreamError as error:
            self._remap(error)
            raise

    def _frame_failure(self, error: EventStreamError) -> StreamError:
        """Deliver the frames decoded before a broken one, then fail with its error (now with snapshot)."""
        frames: list[EventStreamMessage] = error.events
        events = self._deliver(frames)  # a core error among them wins: it came first
        error.events = events
        error.snapshot = self.message or None
        self._frame_error = error
        return error

    def _remap(self, error: StreamError) -> None:
        self._core_failed = not isinstance(error, UsageError)
        if error.offset is not None and not getattr(error, "_bedrock_mapped", False):
            error.offset = self._frame_offset(error.offset)
            error._bedrock_mapped = True  # type: ignore[attr-defined]  # sticky errors are raised again

    def _frame_offset(self, sse_offset: int | None) -> int | None:
        if sse_offset is None or not self._sse_starts:
            return sse_offset
        index = bisect_right(self._sse_starts, sse_offset) - 1
        return self._frame_offsets[max(index, 0)]


def _chunk_event(frame: EventStreamMessage) -> bytes:
    """The Messages API event JSON carried by a ``chunk`` frame (undecoded: the core decodes it)."""
    payload = frame.payload
    try:
        body = from_json(payload)
    except ValueError:
        body = None
    encoded = body.get("bytes") if type(body) is dict else None
    if type(encoded) is str:
        try:
            return binascii.a2b_base64(encoded)  # lenient as botocore's base64.b64decode
        except (binascii.Error, ValueError):
            pass
    raise EventDecodeError(
        f"the chunk frame at offset {frame.offset} does not carry {{\"bytes\": <base64>}}: "
        f"{payload[:200]!r}",
        raw=payload,
        offset=frame.offset,
    )


def _error_event(frame: EventStreamMessage) -> bytes:
    """The ``error`` event JSON for an exception (or error) frame, as the SDK's Bedrock decoder builds it."""
    error_type = frame.header(":exception-type") or frame.header(":error-code") or "unknown_error"
    try:
        body = from_json(frame.payload)
    except ValueError:
        body = None
    error: dict[str, Any] = {"type": error_type}
    if type(body) is dict:
        error.update((k, v) for k, v in body.items() if k != "type")
        if "message" not in error and "Message" in body:
            error["message"] = body["Message"]
    else:
        error["message"] = frame.header(":error-message") or frame.payload.decode("utf-8", "replace")
    error.setdefault("message", frame.header(":error-message") or "")
    return json.dumps({"type": "error", "error": error}, separators=(",", ":")).encode()


# -- building event-stream bodies (tests, the replay server) -------------------------------------------------

_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"


def chunk_frame(event_json: bytes, /, *, padding: int = 0) -> bytes:
    """The ``chunk`` frame Bedrock sends for one Messages API event (``padding`` characters of ``"p"``,
    the field Bedrock adds to vary frame sizes)."""
    body: dict[str, str] = {"bytes": binascii.b2a_base64(event_json, newline=False).decode("ascii")}
    if padding:
        body["p"] = _PADDING[: padding % len(_PADDING)]
    return encode_message(json.dumps(body, separators=(",", ":")).encode(), _CHUNK_HEADERS)


def exception_frame(exception_type: str, message: str = "boom", /, **fields: Any) -> bytes:
    """An exception frame (``:message-type: exception``) of ``exception_type`` with ``{"message": ...}``."""
    payload = json.dumps({"message": message, **fields}, separators=(",", ":")).encode()
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(payload, headers)


def sse_to_event_stream(sse: bytes, /) -> bytes:
    """The event-stream body Bedrock would send for the SSE body ``sse``.

    Every dispatched SSE event with data becomes a ``chunk`` frame carrying its data bytes unchanged (so
    faulty JSON stays faulty, and ``error`` events stay events); comments, empty data and ``[DONE]`` vanish,
    as does an SSE event name (the core takes the JSON's ``type``). An unterminated final event becomes a
    whole frame if its data is complete JSON, else a frame cut in half (as a dropped connection leaves it).
    Raises StreamError for SSE that the decoder rejects (e.g. an event over 64 MiB).
    """
    decoder = SSEDecoder()
    events = decoder.feed(sse)
    decoder.end()
    frames: list[bytes] = []
    for i, event in enumerate(events):
        raw = event.raw_data
        if event.stray_lines:  # a raw line break split a data line: the JSON text had it inside
            raw = b"\n".join(value for _, value in event.stray_lines)
        if raw.strip() and raw.strip() != b"[DONE]":
            frames.append(chunk_frame(raw, padding=i))
    tail = _unfinished_data(decoder.unfinished)
    if tail is not None and tail.strip() and tail.strip() != b"[DONE]":
        frame = chunk_frame(tail, padding=len(events))
        try:
            from_json(tail)
        except ValueError:
            frame = frame[: len(frame) // 2]
        frames.append(frame)
    return b"".join(frames)


def _unfinished_data(unfinished: bytes) -> bytes | None:
    data = []
    for line in unfinished.splitlines():
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(data) if data else None


def event_stream_frames(events: Iterable[bytes], /) -> bytes:
    """``chunk`` frames for Messages API event JSON texts, concatenated."""
    return b"".join(chunk_frame(event, padding=i) for i, event in enumerate(events))


# -- what a server answering Bedrock / Vertex clients needs ---------------------------------------------------

_BEDROCK_PATH = re.compile(r"^/model/(?P<model>[^/]+)/invoke-with-response-stream$")
_VERTEX_PATH = re.compile(
    r"^/(?:v1/)?projects/[^/]+/locations/[^/]+/publishers/anthropic/models/(?P<model>[^/:]+):streamRawPredict$"
)


def bedrock_stream_path(path: str, /) -> str | None:
    """The (URL-encoded) model id when ``path`` is Bedrock's ``/model/{id}/invoke-with-response-stream``."""
    match = _BEDROCK_PATH.match(path)
    return match.group("model") if match else None


def vertex_stream_path(path: str, /) -> str | None:
    """The model when ``path`` is Vertex's ``.../publishers/anthropic/models/{model}:streamRawPredict``."""
    match = _VERTEX_PATH.match(path)
    return match.group("model") if match else None


def response_for_path(path: str, sse: bytes, /) -> tuple[str, bytes]:
    """The content type and body a replay server answers on ``path`` with the recorded SSE body ``sse``:
    event-stream frames on Bedrock's streaming path, the SSE unchanged elsewhere (Vertex, Mantle, API).
    A body that already is event-stream is served as such on any path."""
    if is_event_stream(sse[:PRELUDE_BYTES]):
        return EVENT_STREAM_CONTENT_TYPE, sse
    if bedrock_stream_path(path) is not None:
        return EVENT_STREAM_CONTENT_TYPE, sse_to_event_stream(sse)
    return "text/event-stream; charset=utf-8", sse
