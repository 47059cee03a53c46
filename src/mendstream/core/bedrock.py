# Bedrock's InvokeModelWithResponseStream, read by the same core as SSE. EventStreamFraming is the parser's
# framing (mendstream.core.framing) for AWS event-stream bodies: it decodes the frames
# (mendstream.core.eventstream) and gives each `chunk` frame's Messages API event (base64 in the frame's JSON
# payload) as a payload, exactly as the SSE decoder gives an SSE event's data: MessageParser(framing=
# "event-stream") then reads it with the same JSON decoding, the same repair path for undecodable JSON, the
# same sticky error pipeline. So events, message, repairs and errors are those of the same events over SSE,
# without ever building SSE text. Exception frames become the `error` event the SDK makes of them (an
# APIStreamError with the Bedrock type). Also here, for tests and the replay server: the SSE → event-stream
# converter and the request paths/content type Bedrock clients expect. Sans-IO; no botocore, no SDK.
from __future__ import annotations

import binascii
import json
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal

from jiter import from_json

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
from mendstream.core.framing import EventBytes, Payload, Unfinished
from mendstream.core.repair import Repair
from mendstream.core.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, check_max_event_bytes
from mendstream.errors import BufferLimitError, EventDecodeError, EventStreamError, StreamError

__all__ = [
    "EVENT_STREAM_CONTENT_TYPE",
    "EventStreamFraming",
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


class EventStreamFraming:
    """The :class:`~mendstream.core.framing.Framing` of Bedrock's ``InvokeModelWithResponseStream`` body
    (AWS event-stream frames): what ``MessageParser(framing="event-stream")`` reads it with.

    Args:
        max_event_bytes: bound on the size of one Messages API event (the decoded bytes a ``chunk`` frame
            carries); a larger one raises :class:`~mendstream.errors.BufferLimitError`, as an oversized SSE
            event does. Frames themselves are bounded by ``max_frame_bytes``.
        max_frame_bytes: the longest event-stream frame accepted (default: AWS's maximum).

    Frames map onto payloads as follows:

    * ``:message-type: event`` with ``:event-type: chunk``: the payload's ``bytes`` (base64 of one Messages
      API event) is that event, given exactly as an SSE event's data is (named by its JSON ``type``, CR and
      CRLF read as LF as SSE line splitting leaves them); a payload that is not such JSON raises
      ``EventDecodeError``. Other event types (none exist today) are skipped, as the SDK skips them.
    * ``:message-type: exception`` (``:exception-type: throttlingException``, ...) and ``error`` frames:
      the ``error`` event ``{"type": "error", "error": {"type": <exception type>, "message": ...}}`` (the
      payload's other keys kept inside ``error``), hence an ``APIStreamError`` with that ``error_type``.
    * A broken frame raises ``EventStreamError``; a frame cut by the end of input is what ``finish()``
      reports (its ``cause`` the ``EventStreamError`` of the cut frame).

    Offsets are byte offsets of the frame in the event-stream body; ordinals count the events delivered
    (chunk and exception frames).
    """

    kind: Literal["event-stream"] = "event-stream"

    def __init__(
        self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        check_max_event_bytes(max_event_bytes)
        self._frames = EventStreamDecoder(max_frame_bytes=max_frame_bytes, share_headers=True)  # only read
        self._chunk_headers: dict[str, HeaderValue] | None = None  # the headers dict of the last chunk frame
        self._chunk_block = b""  # and its header block's bytes, once known: what the hot path looks for
        # see _learn_chunk_block (unused while _chunk_block is empty)
        self._hot: tuple[bytes, int, int, int, int] = (b"", 0, PRELUDE_BYTES, PRELUDE_BYTES + 4, max_frame_bytes)
        self._max_frame_bytes = max_frame_bytes
        self._max_event_bytes = max_event_bytes
        self._delivered = 0  # events delivered: the next one's ordinal
        self.repairs: list[Repair] = []  # this framing mends nothing itself

    @property
    def position(self) -> int:
        """Bytes of whole frames read so far (the offset of the next frame)."""
        return self._frames.position

    def payloads(self, data: bytes, /) -> list[Payload]:
        """The payloads of the events the frames ``data`` completes carry."""
        out: list[Payload] = []
        decoder = self._frames
        try:
            if self._chunk_block and decoder.idle:
                # The hot path, one iteration per frame, for whole `chunk` frames with the usual header block
                # (the usual call): it makes the decoder's checks (prelude CRC, lengths, max_frame_bytes,
                # message CRC) and stops at the first frame it does not take, broken or cut or of another
                # kind, which the decoder then reads (and reports) as it reads every other frame. It builds no
                # EventStreamMessage and calls nothing per frame but C functions (and, for an event with a CR
                # or a bad chunk payload, a helper).
                block, block_len, payload_start, smallest, limit = self._hot
                max_event_bytes = self._max_event_bytes
                base = decoder.position
                size = len(data)
                pos = 0
                ordinal = self._delivered
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
                    payload = data[pos + payload_start : end - 4]
                    try:
                        raw = _a2b_base64(from_json(payload)["bytes"])
                    except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
                        raw = _chunk_event(payload, base + pos)  # raises EventDecodeError with the reason
                    if 13 in raw or len(raw) > max_event_bytes:
                        raw = _unusual_event(raw, base + pos, max_event_bytes)
                    out.append((  # (the name inline: one store and load less per frame)
                        "content_block_delta" if raw.startswith(_DELTA_TYPES) else _event_name(raw),
                        raw,
                        base + pos,
                        ordinal,
                    ))
                    ordinal += 1
                    pos = end
                self._delivered = ordinal
                if pos:
                    decoder.skip(pos)
                    data = data[pos:] if pos < size else b""
            if data:  # anything else (a cut frame, another kind of frame, a broken one): the decoder's
                try:
                    frames = decoder.feed(data)
                except EventStreamError as broken:
                    self._convert(broken.events, out)  # the frames before the broken one first, as over SSE
                    raise
                if frames:
                    self._convert(frames, out)
        except StreamError as exc:
            exc.events = out
            raise
        return out

    def finish(self) -> Unfinished | None:
        """End of input: the frame it cut, if any (a frame cut by the end is never readable)."""
        try:
            self._frames.end()
        except EventStreamError as cut:
            size, offset = len(cut.raw), self._frames.position  # the cut frame starts where whole frames end
            return Unfinished(
                None,
                cut.raw,
                offset,
                self._delivered,
                f"dropped a cut final event-stream frame of {size} bytes",
                f"the stream ended inside an event-stream frame at offset {offset} (a cut final frame of {size} bytes)",
                cut,
            )
        return None

    # -- internals --------------------------------------------------------------------------------------

    def _convert(self, frames: list[EventStreamMessage], out: list[Payload]) -> None:
        """The payloads of the frames the decoder read (the frames cut by a chunk boundary, other kinds of
        frames; the decoder shares its cached headers dicts, so a chunk frame is recognised by identity).
        Learns the usual chunk header block for the hot path."""
        chunk_headers = self._chunk_headers
        ordinal = self._delivered
        try:
            for headers, payload, offset, _ in frames:
                if headers is not chunk_headers:
                    kind = headers.get(":message-type")
                    if kind == "exception" or kind == "error":
                        out.append(("error", EventBytes(b"", decoded=_error_event(headers, payload)), offset, ordinal))
                        ordinal += 1
                        continue
                    if kind != "event" or headers.get(":event-type") != "chunk":
                        continue  # other event types and message types: skipped, as the SDK skips them
                    self._chunk_headers = chunk_headers = headers
                    self._learn_chunk_block(headers)
                out.append(self._chunk(payload, offset, ordinal))
                ordinal += 1
        finally:
            self._delivered = ordinal

    def _chunk(self, payload: bytes, offset: int, ordinal: int) -> Payload:
        """The payload of the Messages API event a ``chunk`` frame carries (as the hot path in payloads()
        makes it)."""
        try:
            raw = _a2b_base64(from_json(payload)["bytes"])
        except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
            raw = _chunk_event(payload, offset)  # raises EventDecodeError with the reason
        if 13 in raw or len(raw) > self._max_event_bytes:
            raw = _unusual_event(raw, offset, self._max_event_bytes)
        return ("content_block_delta" if raw.startswith(_DELTA_TYPES) else _event_name(raw), raw, offset, ordinal)

    def _learn_chunk_block(self, headers: dict[str, HeaderValue]) -> None:
        # The header block of the chunk frames (from the decoder's cache) and what the hot path needs with
        # it, in one tuple (one attribute read per call).
        block = self._frames.header_block(headers) or b""
        self._chunk_block = block
        payload_start = PRELUDE_BYTES + len(block)
        self._hot = (block, len(block), payload_start, payload_start + 4, self._max_frame_bytes)


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
    tail = decoder.unfinished_event
    if tail is not None and tail.raw_data.strip() and tail.raw_data.strip() != b"[DONE]":
        frame = chunk_frame(tail.raw_data, padding=len(events))
        try:
            from_json(tail.raw_data)
        except ValueError:
            frame = frame[: len(frame) // 2]
        frames.append(frame)
    return b"".join(frames)


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
