# Bedrock's InvokeModelWithResponseStream, read by the same core as SSE. BedrockParser decodes the AWS
# event-stream frames (mendstream.core.eventstream) and hands each `chunk` frame's Messages API event (base64 in
# the frame's JSON payload) straight to MessageParser's accumulator, exactly as MessageParser hands it an SSE
# event's data: the same JSON decoding, the same repair path for undecodable JSON, the same sticky error
# pipeline. So events, message, repairs and errors are those of the same events over SSE, without ever
# building SSE text. Exception frames become the `error` event the SDK makes of them (an APIStreamError with
# the Bedrock type). Also here, for tests and the replay server: the SSE → event-stream converter and the
# request paths/content type Bedrock clients expect. Sans-IO; no botocore, no SDK.
from __future__ import annotations

import binascii
import json
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal

from jiter import from_json

from mendstream.core.accumulate import PartialMode
from mendstream.core.events import Event
from mendstream.core.eventstream import (
    _PRELUDE,
    _U32,
    DEFAULT_MAX_FRAME_BYTES,
    PRELUDE_BYTES,
    EventStreamDecoder,
    EventStreamMessage,
    HeaderValue,
    encode_message,
    looks_like_event_stream,
)
from mendstream.core.parser import MessageParser
from mendstream.core.repair import Repair
from mendstream.core.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder
from mendstream.errors import (
    BufferLimitError,
    EventDecodeError,
    EventStreamError,
    MessageTooLargeError,
    UsageError,
)

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
# Most events: named without the regex (the API and Bedrock write JSON compact; json.dumps's default spacing
# is common in recordings and tests).
_DELTA_TYPES = (b'{"type":"content_block_delta"', b'{"type": "content_block_delta"')
_CR = re.compile(rb"\r\n?")
_a2b_base64 = binascii.a2b_base64  # lenient, as botocore's base64.b64decode
_crc32 = zlib.crc32
_unpack_prelude = _PRELUDE.unpack_from
_unpack_u32 = _U32.unpack_from
_NAMES: dict[bytes, str] = {}  # type prefixes to names (bounded: a hostile stream may send any number)

Framing = Literal["event-stream", "auto"]


def is_event_stream(head: bytes, /) -> bool:
    """True when a body starting with ``head`` (12 bytes or more) is AWS event-stream, not SSE."""
    return looks_like_event_stream(head)


def _event_name(raw: bytes) -> str | None:
    """The name an SSE stream would give the event ``raw`` (see _TYPE_PREFIX)."""
    match = _TYPE_PREFIX.match(raw)
    if match is None:
        return None
    key = match.group(1)
    name = _NAMES.get(key)
    if name is None:
        name = key.decode("ascii")
        if len(_NAMES) < 64:
            _NAMES[key] = name
    return name


class BedrockParser(MessageParser):
    """Parse the body of Bedrock's ``InvokeModelWithResponseStream`` (AWS event-stream frames).

    Args:
        max_event_bytes: bound on the size of one Messages API event (the decoded bytes a ``chunk`` frame
            carries); a larger one raises :class:`~mendstream.errors.BufferLimitError`, as an oversized SSE
            event does. Frames themselves are bounded by ``max_frame_bytes``.
        max_message_bytes, partial_mode, keep_content: as for :class:`~mendstream.MessageParser` (``max_message_bytes``
            counts the event-stream bytes fed).
        max_frame_bytes: the longest event-stream frame accepted (default: AWS's maximum).
        framing: ``"event-stream"`` (default) requires event-stream frames; ``"auto"`` looks at the first
            12 bytes and reads plain SSE when they are not an event-stream prelude (what ``replay`` uses).

    The contract is :class:`~mendstream.MessageParser`'s: ``feed``/``end`` return stream events, raise only
    :class:`~mendstream.StreamError` subclasses, errors are sticky and carry ``snapshot`` and ``events``.
    Frames map onto the core as follows:

    * ``:message-type: event`` with ``:event-type: chunk``: the payload's ``bytes`` (base64 of one Messages
      API event) is that event, read exactly as an SSE event's data is (named by its JSON ``type``, CR and
      CRLF read as LF as SSE line splitting leaves them, the same repairs); a payload that is not such JSON
      raises ``EventDecodeError``. Other event types (none exist today) are skipped, as the SDK skips them.
    * ``:message-type: exception`` (``:exception-type: throttlingException``, ...) and ``error`` frames:
      the ``error`` event ``{"type": "error", "error": {"type": <exception type>, "message": ...}}`` (the
      payload's other keys kept inside ``error``), hence an ``APIStreamError`` with that ``error_type``.
    * A broken frame raises ``EventStreamError``; a frame cut by the end of input is tolerated (repair
      ``truncated_final_frame``) once the message has its stop reason, as a cut final SSE frame is, and is
      otherwise an ``IncompleteStreamError`` (its ``__cause__`` the ``EventStreamError`` of the cut frame).

    Offsets in errors and repairs are byte offsets of the frame in the event-stream body; ordinals count the
    events delivered (chunk and exception frames).
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_message_bytes: int | None = None,
        partial_mode: PartialMode | bool = "on",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        framing: Framing = "event-stream",
        keep_content: bool = True,
    ) -> None:
        if framing not in ("event-stream", "auto"):
            raise UsageError(f"framing must be 'event-stream' or 'auto', got {framing!r}")
        super().__init__(
            max_event_bytes=max_event_bytes, max_message_bytes=max_message_bytes, partial_mode=partial_mode,
            keep_content=keep_content,
        )
        self._options.update(max_frame_bytes=max_frame_bytes, framing=framing)
        self._frames = EventStreamDecoder(max_frame_bytes=max_frame_bytes, share_headers=True)  # only read
        self._chunk_headers: dict[str, HeaderValue] | None = None  # the headers dict of the last chunk frame
        self._chunk_block = b""  # and its header block's bytes, once known: what the hot path looks for
        # see _learn_chunk_block (unused while _chunk_block is empty)
        self._hot: tuple[bytes, int, int, int, int] = (b"", 0, PRELUDE_BYTES, PRELUDE_BYTES + 4, max_frame_bytes)
        self._max_frame_bytes = max_frame_bytes
        self._max_event_bytes = max_event_bytes  # checked by the SSE decoder the core made
        # None: still deciding ("auto" only); True: event-stream; False: plain SSE, the core's own feed/end.
        self._event_stream: bool | None = True if framing == "event-stream" else None
        self._head = b""  # "auto": the first bytes, held until there are enough to decide
        self._delivered = 0  # events given to the accumulator: the next one's ordinal

    @property
    def framing(self) -> str | None:
        """``"event-stream"``, ``"sse"`` (``framing="auto"`` found SSE), or None while undecided."""
        if self._event_stream is None:
            return None
        return "event-stream" if self._event_stream else "sse"

    def feed(self, data: bytes, /) -> list[Event]:
        """Feed the next bytes of the body; return the events they complete."""
        if self._event_stream is not True:
            if self._event_stream is None and isinstance(data, (bytes, bytearray, memoryview)):
                self._head += bytes(data)
                if len(self._head) < PRELUDE_BYTES:
                    return []
                data, self._head = self._head, b""
                self._event_stream = looks_like_event_stream(data)
            if not self._event_stream:
                return super().feed(data)  # SSE, or the core's UsageError
        if self._error is not None:
            raise self._error
        out: list[Event] = []
        try:
            if type(data) is not bytes or self._ended:
                data = self._accept(data)
            self._budget -= len(data)
            decoder = self._frames
            if self._chunk_block and decoder.idle:  # the usual call: whole chunk frames, walked here
                taken = self._take_chunk_frames(data, decoder.position, out)
                if taken:
                    decoder.skip(taken)
                    data = data[taken:] if taken < len(data) else b""
            if data:  # anything else (a cut frame, another kind of frame, a broken one): the decoder's
                try:
                    frames = decoder.feed(data)
                except EventStreamError as broken:
                    # the frames before the broken one first, as over SSE (an error among them wins)
                    self._deliver(broken.events, out)
                    raise
                if frames:
                    self._deliver(frames, out)
            if self._budget < 0:  # after decoding the chunk, so that the snapshot has what it brought
                raise MessageTooLargeError(
                    f"the stream exceeded max_message_bytes={self._max_message_bytes}",
                    limit=self._max_message_bytes or 0,
                    offset=self._frames.position,
                )
        except Exception as exc:
            raise self._fail(exc, out)  # noqa: B904 - _fail keeps the cause (see MessageParser._fail)
        return out

    def end(self) -> list[Event]:
        """Signal the end of the body; return the events this completes (see the class for cut frames)."""
        if self._event_stream is None:  # "auto", and fewer than 12 bytes came: not event-stream
            self._event_stream = False
            head = super().feed(self._head) if self._head else []
            return head + super().end()
        if not self._event_stream:
            return super().end()
        if self._error is not None:
            raise self._error
        if self._ended:
            return []
        self._ended = True
        out: list[Event] = []
        try:
            try:
                self._frames.end()
            except EventStreamError as cut:
                self._cut_final_frame(cut)
            self._acc.end(out)
        except Exception as exc:
            raise self._fail(exc, out)  # noqa: B904 - _fail keeps the cause (see MessageParser._fail)
        return out

    # -- internals --------------------------------------------------------------------------------------

    def _cut_final_frame(self, cut: EventStreamError) -> None:
        # As MessageParser._unfinished for a cut final SSE frame: harmless once the message has its stop
        # reason (recorded before the accumulator's end-of-stream repairs), else the stream is incomplete.
        acc = self._acc
        if acc.stop_reason_seen or acc.stopped:
            acc.add_repair(
                Repair(
                    "truncated_final_frame",
                    f"dropped a cut final event-stream frame of {len(cut.raw)} bytes",
                    cut.offset,
                    self._delivered,
                    raw=cut.raw.decode("utf-8", "replace"),
                )
            )
            return
        error = acc.incomplete(
            f"the stream ended inside an event-stream frame at offset {cut.offset} (a cut final frame of "
            f"{len(cut.raw)} bytes)"
        )
        error.offset = cut.offset
        raise error from cut

    def _take_chunk_frames(self, data: bytes, base: int, out: list[Event]) -> int:
        """Deliver the whole ``chunk`` frames at the start of ``data`` (whose first byte is at ``base`` in the
        body) that carry the usual header block; return the bytes they span.

        The hot path, one iteration per frame: it makes the decoder's checks (prelude CRC, lengths,
        ``max_frame_bytes``, message CRC) and stops at the first frame it does not take, broken or cut or
        of another kind, which the decoder then reads (and reports) as it reads every other frame. It builds
        no EventStreamMessage and calls nothing per frame but the C functions and the accumulator."""
        block, block_len, payload_start, smallest, limit = self._hot
        size = len(data)
        pos = 0
        ordinal = self._delivered
        try:
            while size - pos >= smallest:
                total, headers_len, crc = _unpack_prelude(data, pos)
                end = pos + total
                if (
                    headers_len != block_len
                    or end > size
                    or total < smallest
                    or total > limit
                    or not data.startswith(block, pos + PRELUDE_BYTES)
                    or _crc32(data[pos : pos + 8]) != crc
                    or _crc32(data[pos : end - 4]) != _unpack_u32(data, end - 4)[0]
                ):
                    break  # only a frame that fails a CRC here is hashed again (by the decoder, which fails)
                self._chunk(data[pos + payload_start : end - 4], base + pos, ordinal, out)
                ordinal += 1
                pos = end
        finally:
            self._delivered = ordinal
        return pos

    def _deliver(self, frames: list[EventStreamMessage], out: list[Event]) -> None:
        """Give the accumulator the events the frames the decoder read carry (the frames cut by a chunk
        boundary, other kinds of frames; the decoder shares its cached headers dicts, so a chunk frame is
        recognised by identity). Learns the usual chunk header block for _take_chunk_frames."""
        acc = self._acc
        chunk_headers = self._chunk_headers
        ordinal = self._delivered
        try:
            for headers, payload, offset, _ in frames:
                if headers is not chunk_headers:
                    kind = headers.get(":message-type")
                    if kind == "exception" or kind == "error":
                        acc.handle("error", _error_event(headers, payload), offset, ordinal, out)
                        ordinal += 1
                        continue
                    if kind != "event" or headers.get(":event-type") != "chunk":
                        continue  # other event types and message types: skipped, as the SDK skips them
                    self._chunk_headers = chunk_headers = headers
                    self._learn_chunk_block(headers)
                self._chunk(payload, offset, ordinal, out)
                ordinal += 1
        finally:
            self._delivered = ordinal

    def _chunk(self, payload: bytes, offset: int, ordinal: int, out: list[Event]) -> None:
        """Hand the accumulator the Messages API event a ``chunk`` frame's payload carries (the one path for
        frames the hot loop walks and frames the decoder read)."""
        try:
            raw = _a2b_base64(from_json(payload)["bytes"])
        except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
            raw = _chunk_event(payload, offset)  # raises EventDecodeError with the reason
        if 13 in raw or len(raw) > self._max_event_bytes:
            raw = _unusual_event(raw, offset, self._max_event_bytes)
        try:
            obj = from_json(raw)
        except ValueError as exc:
            self._undecodable(raw, offset, ordinal, exc, out)
            return
        acc = self._acc
        if raw.startswith(_DELTA_TYPES):
            if acc.streaming and type(obj) is dict:
                acc.handle_delta(obj, offset, ordinal, out)
            else:
                acc.handle("content_block_delta", obj, offset, ordinal, out)
        else:
            acc.handle(_event_name(raw), obj, offset, ordinal, out)

    def _learn_chunk_block(self, headers: dict[str, HeaderValue]) -> None:
        # The header block of the chunk frames (from the decoder's cache) and what _take_chunk_frames
        # needs with it, in one tuple (one attribute read per call).
        block = self._frames.header_block(headers) or b""
        self._chunk_block = block
        payload_start = PRELUDE_BYTES + len(block)
        self._hot = (block, len(block), payload_start, payload_start + 4, self._max_frame_bytes)

    def _undecodable(self, raw: bytes, offset: int, ordinal: int, exc: ValueError, out: list[Event]) -> None:
        name = "content_block_delta" if raw.startswith(_DELTA_TYPES) else _event_name(raw)
        self._handle_undecodable(ServerSentEvent(name, raw, offset=offset, ordinal=ordinal), exc, out)


def _unusual_event(raw: bytes, offset: int, max_event_bytes: int) -> bytes:
    """An event with a CR (read as LF, as SSE line splitting leaves it) or over ``max_event_bytes``
    (BufferLimitError, as for an oversized SSE event)."""
    if 13 in raw:
        raw = _CR.sub(b"\n", raw)
    if len(raw) > max_event_bytes:
        raise BufferLimitError(
            f"the event in the event-stream frame at offset {offset} exceeded max_event_bytes={max_event_bytes} "
            f"({len(raw)} bytes)",
            limit=max_event_bytes,
            offset=offset,
        )
    return raw


def _chunk_event(payload: bytes, offset: int) -> bytes:
    """The Messages API event JSON carried by a ``chunk`` frame's payload (undecoded: the core decodes it);
    raises EventDecodeError when the payload is not ``{"bytes": <base64>}``."""
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
        f"the chunk frame at offset {offset} does not carry {{\"bytes\": <base64>}}: {payload[:200]!r}",
        raw=payload,
        offset=offset,
    )


def _header(headers: dict[str, HeaderValue], name: str) -> str | None:
    value = headers.get(name)
    return value if type(value) is str else None


def _error_event(headers: dict[str, HeaderValue], payload: bytes) -> dict[str, Any]:
    """The ``error`` event for an exception (or error) frame, as the SDK's Bedrock decoder builds it."""
    error_type = _header(headers, ":exception-type") or _header(headers, ":error-code") or "unknown_error"
    try:
        body = from_json(payload)
    except ValueError:
        body = None
    error: dict[str, Any] = {"type": error_type}
    if type(body) is dict:
        error.update((k, v) for k, v in body.items() if k != "type")
        if "message" not in error and "Message" in body:
            error["message"] = body["Message"]
    else:
        error["message"] = _header(headers, ":error-message") or payload.decode("utf-8", "replace")
    error.setdefault("message", _header(headers, ":error-message") or "")
    return {"type": "error", "error": error}


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
