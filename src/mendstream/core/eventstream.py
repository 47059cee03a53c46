# The AWS event-stream codec (`application/vnd.amazon.eventstream`, what Bedrock's
# InvokeModelWithResponseStream answers), sans-IO: bytes split anywhere in, whole frames out, and the encoder
# that tests and the replay server use to build frames. It knows nothing about Bedrock or the Messages API
# (mendstream.core.bedrock reads the frames) and imports neither botocore nor the SDK.
#
# Theory of operation. A frame is
#
#     total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (over the 8 bytes before it)
#     | headers | payload | message CRC32 (over every byte before it)
#
# The 12-byte prelude is checked as soon as it is complete: a bad CRC, an impossible length or a frame longer
# than `max_frame_bytes` fails before any of the frame is buffered, so memory stays bounded by one frame plus
# the chunk being fed (and at most 64 remembered header blocks of up to 1 KiB each). Once the prelude is good
# the decoder only waits (one length compare per chunk) until the whole frame is there. Whole frames are
# decoded straight from the caller's chunk when nothing is buffered (the usual case); only a frame cut by a
# chunk boundary is copied into the buffer. Every byte is
# therefore looked at a bounded number of times: worst case O(n), however the input is split.
from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Any, NamedTuple

from mendstream.errors import EventStreamError, EventStreamLimitError, StreamError, UsageError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "EventStreamDecoder",
    "EventStreamMessage",
    "HeaderType",
    "HeaderValue",
    "encode_message",
    "looks_like_event_stream",
]

PRELUDE_BYTES = 12
_MIN_FRAME = PRELUDE_BYTES + 4  # a frame without headers or payload

# AWS caps a message at 16 MiB of payload and 128 KiB of headers; the default admits exactly that.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024 + 128 * 1024 + _MIN_FRAME


class HeaderType(IntEnum):
    """Header value types of the event-stream encoding (the type byte after a header's name)."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


HeaderValue = bool | int | bytes | str | uuid.UUID
"""A decoded header value: bool; int for byte/short/integer/long and for a timestamp (milliseconds since the
Unix epoch, as botocore gives it); bytes; str; uuid.UUID."""

# Fixed-size integer types: (struct format, size).
_INTS: dict[int, tuple[str, int]] = {
    HeaderType.BYTE: (">b", 1),
    HeaderType.SHORT: (">h", 2),
    HeaderType.INTEGER: (">i", 4),
    HeaderType.LONG: (">q", 8),
    HeaderType.TIMESTAMP: (">q", 8),
}
_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_HEADERS_CACHE_SIZE = 64  # distinct header blocks remembered per decoder (Bedrock uses two or three)
# Only small header blocks are remembered (Bedrock's are about 100 bytes), so the cache holds at most
# 64 x 1 KiB of blocks plus their decoded dicts, however large the header blocks a sender makes.
_HEADERS_CACHE_BLOCK_BYTES = 1024
_crc32 = zlib.crc32
_unpack_prelude = _PRELUDE.unpack_from
_unpack_u32 = _U32.unpack_from
_new_tuple = tuple.__new__


class EventStreamMessage(NamedTuple):
    """One decoded frame (immutable; a NamedTuple because one is built per frame, and that is cheapest).

    Attributes:
        headers: header name → value (a repeated name keeps its last value).
        payload: the payload bytes.
        offset: byte offset of the frame's first byte in the stream.
        size: the frame's total length in bytes.
    """

    headers: dict[str, HeaderValue]
    payload: bytes
    offset: int
    size: int

    def header(self, name: str) -> str | None:
        """The string header ``name`` (e.g. ``":message-type"``), or None if absent or not a string."""
        value = self.headers.get(name)
        return value if type(value) is str else None


def looks_like_event_stream(head: bytes, /) -> bool:
    """True when ``head`` (at least the first 12 bytes of a body) starts with a valid event-stream prelude.

    An SSE body cannot pass by accident: its first bytes are text, and the CRC32 of the first 8 bytes would
    have to equal the next 4 (and the lengths be possible).
    """
    if len(head) < PRELUDE_BYTES:
        return False
    total, headers_len, crc = _PRELUDE.unpack_from(head, 0)
    return bool(zlib.crc32(head[:8]) == crc and total >= _MIN_FRAME and headers_len <= total - _MIN_FRAME)


class EventStreamDecoder:
    """Incremental decoder of an ``application/vnd.amazon.eventstream`` body.

    Args:
        max_frame_bytes: the longest frame accepted (default: AWS's own maximum, 16 MiB of payload plus
            128 KiB of headers). A longer frame is refused from its prelude, before it is buffered.
        share_headers: give every message the decoded headers dict of its header block itself rather than a
            copy (saves a copy per frame), for a reader that never changes them (mendstream.core.bedrock).

    ``feed(data)`` returns the frames that ``data`` completes, in order; ``end()`` must be called at end of
    input. Both raise :class:`~mendstream.errors.EventStreamError` (``EventStreamLimitError`` for an
    oversize frame) with ``raw`` (the frame's bytes received, bounded by ``max_frame_bytes``), ``offset``
    (where the frame starts) and ``events`` (the frames decoded by the same call before the fault). The
    error is sticky: later calls raise it again. No other exception escapes, whatever the bytes; feeding
    after ``end()`` or a non-bytes argument raises :class:`~mendstream.errors.UsageError`.
    """

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, share_headers: bool = False) -> None:
        if type(max_frame_bytes) is not int or max_frame_bytes < _MIN_FRAME:
            raise UsageError(f"max_frame_bytes must be an int >= {_MIN_FRAME}, got {max_frame_bytes!r}")
        self._limit = max_frame_bytes
        self._buffer = bytearray()  # the start of a frame cut by a chunk boundary (never more than one frame)
        self._offset = 0  # stream offset of the first byte not yet consumed (the buffer's first byte)
        self._need = 0  # total length of the frame at the buffer's start once its prelude checked out; else 0
        self._headers_len = 0  # and its headers' length
        self._headers_cache: dict[bytes, dict[str, HeaderValue]] = {}
        self._share_headers = share_headers
        self._error: StreamError | None = None
        self._ended = False
        self._ready = True  # no error and not ended: feed's fast entry tests this one attribute

    @property
    def position(self) -> int:
        """Bytes consumed so far (the offset of the next frame)."""
        return self._offset

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buffer)

    # -- for a reader that walks the usual frames itself (mendstream.core.bedrock's hot path) ------------------

    @property
    def idle(self) -> bool:
        """True when no bytes are held and input is accepted (no error, not ended): the moment a reader may
        decode whole frames itself and :meth:`skip` them."""
        return self._ready and not self._buffer

    def header_block(self, headers: dict[str, HeaderValue], /) -> bytes | None:
        """The encoded header block that decoded to ``headers``, the very dict a message of this decoder
        carried (with ``share_headers``, messages share the decoded dict of each block); else None (also
        for a block the decoder did not remember: only blocks of at most 1 KiB are, 64 of them at most)."""
        for block, decoded in self._headers_cache.items():
            if decoded is headers:
                return block
        return None

    def skip(self, size: int, /) -> None:
        """Move the position past ``size`` bytes of whole frames the caller decoded itself, with the checks
        this decoder makes (prelude and message CRC, lengths, ``max_frame_bytes``). Only when :attr:`idle`."""
        if self._buffer or not self._ready or type(size) is not int or size < 0:
            raise UsageError("skip() takes a byte count >= 0, and only while the decoder is idle")
        self._offset += size

    def feed(self, data: bytes, /) -> list[EventStreamMessage]:
        """Feed the next bytes; return the frames they complete."""
        out: list[EventStreamMessage] = []
        buffer = self._buffer
        if type(data) is bytes and not buffer and self._ready:  # the usual call: whole frames, nothing held
            try:
                consumed = self._decode(data, out)
            except Exception as exc:
                raise self._fail(exc, out) from None
            if consumed < len(data):
                buffer += data[consumed:]
            self._offset += consumed
            return out
        if self._error is not None:
            raise self._error
        if self._ended:
            raise UsageError("feed() called after end()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
        try:
            if not buffer:
                if type(data) is not bytes:
                    data = bytes(data)  # slices below must be bytes
                consumed = self._decode(data, out)
                if consumed < len(data):
                    buffer += data[consumed:]
                self._offset += consumed
            else:
                buffer += data
                # Until the pending frame (or its prelude) is complete there is nothing to decode: O(1). Then
                # the buffer (that frame and what followed it in this chunk) is copied once to decode it.
                if len(buffer) >= (self._need or PRELUDE_BYTES):
                    consumed = self._decode(bytes(buffer), out)
                    del buffer[:consumed]  # CPython drops a bytearray's head in O(1)
                    self._offset += consumed
        except Exception as exc:
            raise self._fail(exc, out) from None
        return out

    def end(self) -> list[EventStreamMessage]:
        """Signal the end of input. Raises EventStreamError if it cut a frame (``raw`` holds its bytes)."""
        if self._error is not None:
            raise self._error
        self._ended = True
        self._ready = False
        if self._buffer:
            held = bytes(self._buffer)
            expected = f" of {self._need}" if self._need else ""
            raise self._fail(
                EventStreamError(
                    f"the input ended inside an event-stream frame at offset {self._offset}: received "
                    f"{len(held)}{expected} bytes",
                    raw=held,
                    offset=self._offset,
                ),
                [],
            )
        return []

    # -- internals --------------------------------------------------------------------------------------

    def _decode(self, data: bytes, out: list[EventStreamMessage]) -> int:
        """Decode the whole frames at the start of ``data`` into ``out``; return the bytes they span.

        Slices copy, but each byte is copied a bounded number of times (into the frame's payload), and for
        the small frames Bedrock sends copying is cheaper than creating memoryviews. This runs once per
        frame, so it reads module globals (cached lookups) rather than binding locals per call."""
        base = self._offset
        size = len(data)
        headers_cache = self._headers_cache
        share = self._share_headers
        need = self._need
        headers_len = self._headers_len
        pos = 0
        while True:
            if not need:
                if size - pos < PRELUDE_BYTES:
                    self._need = 0
                    return pos
                total, headers_len, crc = _unpack_prelude(data, pos)
                if (
                    _crc32(data[pos : pos + 8]) != crc
                    or total < _MIN_FRAME
                    or headers_len > total - _MIN_FRAME
                    or total > self._limit
                ):
                    raise self._prelude_error(data[pos : pos + PRELUDE_BYTES], base + pos)
                need = total
            if size - pos < need:
                # the prelude checked out: wait for the rest (O(1) per chunk until then)
                self._need, self._headers_len = need, headers_len
                return pos
            end = pos + need
            if _crc32(data[pos : end - 4]) != _unpack_u32(data, end - 4)[0]:
                raise self._crc_error(data[pos:end], base + pos)
            headers_end = pos + PRELUDE_BYTES + headers_len
            block = data[pos + PRELUDE_BYTES : headers_end]
            # Bedrock repeats the same few header blocks on every frame: decode each once.
            headers = headers_cache.get(block)
            if headers is None:
                headers = _decode_headers(block, base + pos, data[pos:end])
                if len(headers_cache) < _HEADERS_CACHE_SIZE and headers_len <= _HEADERS_CACHE_BLOCK_BYTES:
                    headers_cache[block] = headers
            # tuple.__new__ directly: a NamedTuple's own __new__ is one more Python call per frame
            out.append(
                _new_tuple(
                    EventStreamMessage,
                    (headers if share else headers.copy(), data[headers_end : end - 4], base + pos, need),
                )
            )
            need = 0
            pos = end

    def _prelude_error(self, prelude: bytes, offset: int) -> EventStreamError:
        total, headers_len, crc = _PRELUDE.unpack_from(prelude, 0)
        actual = zlib.crc32(prelude[:8])
        if actual != crc:
            return EventStreamError(
                f"event-stream prelude CRC mismatch at offset {offset}: computed {actual:#010x}, frame says "
                f"{crc:#010x} (not an event stream, or corrupted)",
                raw=prelude,
                offset=offset,
            )
        if total < _MIN_FRAME or headers_len > total - _MIN_FRAME:
            return EventStreamError(
                f"impossible event-stream lengths at offset {offset}: total {total} bytes with {headers_len} "
                f"bytes of headers (a frame takes at least {_MIN_FRAME} + headers)",
                raw=prelude,
                offset=offset,
            )
        return EventStreamLimitError(
            f"event-stream frame at offset {offset} announces {total} bytes, more than max_frame_bytes "
            f"({self._limit})",
            raw=prelude,
            offset=offset,
            limit=self._limit,
        )

    @staticmethod
    def _crc_error(frame: bytes, offset: int) -> EventStreamError:
        actual = zlib.crc32(frame[:-4])
        (expected,) = _U32.unpack_from(frame, len(frame) - 4)
        return EventStreamError(
            f"event-stream message CRC mismatch in the {len(frame)}-byte frame at offset {offset}: computed "
            f"{actual:#010x}, frame says {expected:#010x}",
            raw=frame,
            offset=offset,
        )

    def _fail(self, exc: Exception, out: list[EventStreamMessage]) -> StreamError:
        if isinstance(exc, StreamError):
            error = exc
        else:  # a bug here: still honour the contract that only StreamErrors escape
            error = EventStreamError(
                f"internal error while decoding the event stream: {exc!r}",
                raw=bytes(self._buffer[: self._limit]),
                offset=self._offset,
            )
            error.__cause__ = exc
        error.events = out
        if not isinstance(error, UsageError):
            self._error = error
            self._ready = False
        return error


def _decode_headers(block: bytes, offset: int, frame: bytes) -> dict[str, HeaderValue]:
    """The headers in ``block`` (the frame's CRC has been checked, so a fault here is the sender's)."""
    headers: dict[str, HeaderValue] = {}
    end = len(block)
    i = 0

    def fail(what: str) -> EventStreamError:
        return EventStreamError(
            f"malformed event-stream header in the frame at offset {offset} (header byte {i}): {what}",
            raw=frame,
            offset=offset,
        )

    while i < end:
        name_len = block[i]
        if i + 1 + name_len + 1 > end:
            raise fail("the header name runs past the headers")
        try:
            name = block[i + 1 : i + 1 + name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise fail("the header name is not UTF-8") from None
        i += 1 + name_len
        kind = block[i]
        i += 1
        value: HeaderValue
        if kind == HeaderType.BOOL_TRUE:
            value = True
        elif kind == HeaderType.BOOL_FALSE:
            value = False
        elif kind in _INTS:
            fmt, size = _INTS[kind]
            if i + size > end:
                raise fail(f"the value of {name!r} runs past the headers")
            (value,) = struct.unpack_from(fmt, block, i)
            i += size
        elif kind == HeaderType.BYTES or kind == HeaderType.STRING:
            if i + 2 > end:
                raise fail(f"the length of {name!r} runs past the headers")
            (length,) = _U16.unpack_from(block, i)
            i += 2
            if i + length > end:
                raise fail(f"the value of {name!r} ({length} bytes) runs past the headers")
            raw = block[i : i + length]
            i += length
            if kind == HeaderType.STRING:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise fail(f"the string value of {name!r} is not UTF-8") from None
            else:
                value = raw
        elif kind == HeaderType.UUID:
            if i + 16 > end:
                raise fail(f"the UUID value of {name!r} runs past the headers")
            value = uuid.UUID(bytes=block[i : i + 16])
            i += 16
        else:
            raise fail(f"unknown header value type {kind} for {name!r}")
        headers[name] = value
    return headers


HeaderSpec = HeaderValue | tuple[HeaderType, HeaderValue]


def _encode_header(name: str, spec: HeaderSpec) -> bytes:
    kind: int
    if isinstance(spec, tuple):
        kind, value = spec
    else:
        value = spec
        if isinstance(value, bool):
            kind = HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE
        elif isinstance(value, int):
            kind = HeaderType.LONG
        elif isinstance(value, str):
            kind = HeaderType.STRING
        elif isinstance(value, (bytes, bytearray)):
            kind = HeaderType.BYTES
        elif isinstance(value, uuid.UUID):
            kind = HeaderType.UUID
        else:
            raise UsageError(f"no event-stream header type for {type(value).__name__} (header {name!r})")
    encoded_name = name.encode("utf-8")
    if not 0 < len(encoded_name) < 256:
        raise UsageError(f"an event-stream header name takes 1 to 255 bytes, got {name!r}")
    head = bytes([len(encoded_name)]) + encoded_name + bytes([kind])
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return head
    if kind in _INTS:
        fmt, _ = _INTS[kind]
        return head + struct.pack(fmt, value)
    if kind in (HeaderType.BYTES, HeaderType.STRING):
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        if len(raw) > 0xFFFF:
            raise UsageError(f"header {name!r}: a value takes at most 65535 bytes, got {len(raw)}")
        return head + _U16.pack(len(raw)) + raw
    if kind == HeaderType.UUID:
        raw = value.bytes if isinstance(value, uuid.UUID) else bytes(value)  # type: ignore[arg-type]
        if len(raw) != 16:
            raise UsageError(f"header {name!r}: a UUID takes 16 bytes, got {len(raw)}")
        return head + raw
    raise UsageError(f"unknown event-stream header type {kind} for {name!r}")


def encode_message(payload: bytes, headers: Mapping[str, HeaderSpec] | Iterable[tuple[str, HeaderSpec]] = ()) -> bytes:
    """One event-stream frame carrying ``payload`` and ``headers``.

    A header value's type follows its Python type (bool, int → long, str → string, bytes → byte array,
    uuid.UUID → uuid) unless it is given as ``(HeaderType.X, value)``. Raises UsageError for a value that
    cannot be encoded (name longer than 255 bytes, string or bytes longer than 65535, bad type).
    """
    items: Iterable[tuple[str, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    encoded = b"".join(_encode_header(name, spec) for name, spec in items)
    total = PRELUDE_BYTES + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    head = prelude + _U32.pack(zlib.crc32(prelude)) + encoded + bytes(payload)
    return head + _U32.pack(zlib.crc32(head))
