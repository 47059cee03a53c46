# SSE framing: bytes in, ServerSentEvent out, by the WHATWG rules. No I/O, no JSON.
#
# Theory of operation: the decoder keeps the bytes of an unfinished line as a list of chunks and searches
# only the newly fed chunk for a line terminator, so every byte is scanned once (worst case O(n) over the
# stream, whatever the chunking). Lines are split on CR, LF and CRLF only (never on U+2028 or U+0085, which
# are bytes inside UTF-8 sequences here), so a UTF-8 sequence split across chunks is reassembled before it is
# ever decoded. A CR at the very end of a chunk may be the first half of a CRLF: the decoder remembers it and
# drops an LF at the start of the next chunk.
from __future__ import annotations

import re
from typing import NamedTuple

from .errors import BufferLimitError, UsageError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "ServerSentEvent"]

_NAMES: dict[bytes, str | None] = {}  # decoded event names, shared: there are only a handful

#: Default bound on the bytes held for one unfinished event (its data lines plus a partial line).
#: Real events are far smaller; the largest are server-tool results of a few MB.
DEFAULT_MAX_EVENT_BYTES = 64 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


class ServerSentEvent(NamedTuple):
    """One dispatched event.

    ``raw_data`` holds the data lines joined with ``\\n`` as bytes (undecoded, so the JSON stage can parse
    bytes directly). ``offset`` is the byte offset of the event's first line in the stream (a stripped BOM
    counts), ``ordinal`` its position among dispatched events. ``stray_lines`` holds, in order, the event's data
    lines (``True``) and lines with an unknown field name (``False``), only when such lines occurred: a raw
    line break inside a JSON string splits a data line, and the JSON stage uses them to rejoin it.
    """

    event: str | None
    raw_data: bytes
    id: str | None = None
    retry: int | None = None
    offset: int = 0
    ordinal: int = 0
    stray_lines: tuple[tuple[bool, bytes], ...] | None = None

    @property
    def data(self) -> str:
        """The data as text (invalid UTF-8 replaced by U+FFFD)."""
        return self.raw_data.decode("utf-8", "replace")


class SSEDecoder:
    """Incremental SSE decoder: ``feed(bytes) -> list[ServerSentEvent]``, then ``end()``.

    Args:
        max_event_bytes: bound on the bytes held for one unfinished event; exceeding it raises
            :class:`~mendstream.errors.BufferLimitError`.

    At ``end()`` an unfinished event is not dispatched (WHATWG); it is available as ``unfinished`` (its
    event and data lines, re-serialised, then any last line with no terminator) so the caller can decide
    what to do with it.
    """

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise UsageError(f"max_event_bytes must be positive, got {max_event_bytes!r}")
        self.max_event_bytes = max_event_bytes
        self.bom_stripped = False
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.unfinished: bytes = b""
        self._started = False
        self._ended = False
        self._skip_lf = False
        self._partial: list[bytes] = []  # chunks of the current unfinished line
        self._partial_len = 0
        self._position = 0  # stream offset of the first byte not yet split into lines
        # State of the event being built.
        self._event: str | None = None
        self._data: list[bytes] = []
        self._event_bytes = 0
        self._event_offset = 0
        self._stray: list[tuple[bool, bytes]] | None = None
        self._count = 0

    def feed(self, data: bytes, /) -> list[ServerSentEvent]:
        """Decode ``data``; return the events it completes (possibly none)."""
        # `13 not in data` (CR): testing an int is a memchr; `b"\r" in` first builds a TypeError.
        if self._idle and data[-2:] == b"\n\n" and 13 not in data:
            # The common case: the decoder holds nothing and the chunk ends on a blank line, so the chunk
            # is whole events. (The piece after the last blank line can only be b"" or b"\n".)
            events: list[ServerSentEvent] = []
            blocks = data.split(b"\n\n")
            tail = len(blocks.pop())
            self._events(blocks, events)
            self._position += tail
            return events
        return self._feed(data)

    @property
    def _idle(self) -> bool:
        return (
            self._started and not self._partial and not self._event_bytes and not self._skip_lf and not self._ended
        )

    def _feed(self, data: bytes) -> list[ServerSentEvent]:
        if self._ended:
            raise UsageError("feed() called after end()")
        if not data:
            return []
        if not self._started:
            data = self._strip_bom(data)
            if not data:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                self._position += 1
                data = data[1:]
                if not data:
                    return []
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            self._hold(data)
            return []
        if self._partial:
            self._partial.append(data[: cut + 1])
            head = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
        else:
            head = data if cut == len(data) - 1 else data[: cut + 1]
        events: list[ServerSentEvent] = []
        self._lines(head, events)
        if cut < len(data) - 1:
            self._hold(data[cut + 1 :])
        elif head[-1:] == b"\r":
            self._skip_lf = True
        return events

    def end(self) -> list[ServerSentEvent]:
        """Signal end of stream. Returns no events: an unfinished event is kept in ``unfinished``."""
        if self._ended:
            return []
        self._ended = True
        if not self._started and self._partial:
            # A stream shorter than a BOM that was a BOM prefix: it is data after all.
            self._started = True
        tail = b"".join(self._partial)
        self._partial.clear()
        if self._data or self._event is not None or tail or self._stray:
            lines = [b"event: " + self._event.encode()] if self._event is not None else []
            if self._stray is not None:
                lines += [(b"data: " + v) if is_data else v for is_data, v in self._stray]
            else:
                lines += [b"data: " + v for v in self._data]
            self.unfinished = b"".join(line + b"\n" for line in lines) + tail
        return []

    # -- internals --------------------------------------------------------------------------------------

    def _strip_bom(self, data: bytes) -> bytes:
        if self._partial:  # a BOM prefix held back from earlier chunks
            data = b"".join(self._partial) + data
            self._partial.clear()
            self._partial_len = 0
        if len(data) < 3 and _BOM.startswith(data):
            self._partial.append(data)
            self._partial_len = len(data)
            return b""
        self._started = True
        if data.startswith(_BOM):
            self.bom_stripped = True
            self._position = 3
            return data[3:]
        return data

    def _hold(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_len += len(piece)
        if self._partial_len + self._event_bytes > self.max_event_bytes:
            self._overflow()

    def _overflow(self) -> None:
        raise BufferLimitError(
            f"an unfinished SSE event exceeded max_event_bytes={self.max_event_bytes} "
            f"(event starting at byte {self._event_offset})",
            limit=self.max_event_bytes,
            offset=self._event_offset,
        )

    def _lines(self, head: bytes, events: list[ServerSentEvent]) -> None:
        if self._event_bytes or 13 in head:  # mid-event, or CR framing: the general loop
            self._general(head, events)
            return
        # Between events with LF framing: split on blank lines (one C call, like memchr).
        blocks = head.split(b"\n\n")
        rest = blocks.pop()  # after the last blank line: complete lines of an unfinished event, or b""
        self._events(blocks, events)
        if rest:
            self._general(rest, events)

    def _events(self, blocks: list[bytes], events: list[ServerSentEvent]) -> None:
        # Each block is one event's lines without its blank line. An ordinary event (an optional `event:`
        # line and one `data:` line) is taken with a few bytes operations; any other block goes through the
        # general line loop.
        names = _NAMES
        position = self._position
        limit = self.max_event_bytes
        for block in blocks:
            size = len(block) + 2
            if size > limit:
                self._event_offset = position
                self._overflow()
            if block[:6] == b"event:":
                newline = block.find(b"\n")
                name = block[6:newline] if newline >= 0 else b""
                line = block[newline + 1 :] if newline >= 0 else b""
            else:
                name = None
                line = block
            if line[:5] != b"data:" or line.find(b"\n") >= 0 or (name is not None and newline < 0):
                self._position = position
                self._general(block + b"\n\n", events)
                position += size
                continue
            if name is not None:
                text = names.get(name)
                if text is None:
                    text = name[1:].decode("utf-8", "replace") if name[:1] == b" " else name.decode(
                        "utf-8", "replace"
                    )
                    text = text or None
                    if len(names) < 64:
                        names[name] = text
            else:
                text = None
            events.append(
                tuple.__new__(
                    ServerSentEvent,
                    (text, line[6:] if line[5:6] == b" " else line[5:], self.last_event_id, self.retry,
                     position, self._count, None),
                )
            )
            self._count += 1
            position += size
        self._position = position

    def _general(self, head: bytes, events: list[ServerSentEvent]) -> None:
        # One pass over complete lines, with the decoder's state in locals. LF-only framing splits with one
        # C call and knows every terminator is one byte; a head with any CR goes through the regex, which
        # also reports each terminator's length (`extra` bytes beyond one).
        if 13 not in head:
            lines = head.split(b"\n")
            lines.pop()  # head ends with a terminator: the last piece is empty
            extra: list[int] | None = None
        else:
            matches = _LINE.findall(head)
            lines = [m[0] for m in matches]
            extra = [len(m[1]) - 1 for m in matches]
        position = self._position
        limit = self.max_event_bytes
        event_bytes = self._event_bytes
        data = self._data
        for i, line in enumerate(lines):
            consumed = len(line) + 1 if extra is None else len(line) + 1 + extra[i]
            if not line:  # blank line: dispatch
                if data:
                    raw = data[0] if len(data) == 1 else b"\n".join(data)
                    stray = tuple(self._stray) if self._stray is not None else None
                    events.append(
                        tuple.__new__(
                            ServerSentEvent,
                            (self._event, raw, self.last_event_id, self.retry, self._event_offset,
                             self._count, stray),
                        )
                    )
                    self._count += 1
                    data = self._data = []
                self._event = None
                self._stray = None
                event_bytes = 0
                position += consumed
                continue
            if event_bytes == 0:
                self._event_offset = position
            position += consumed
            event_bytes += consumed
            if event_bytes > limit:
                self._event_bytes = event_bytes
                self._overflow()
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                if self._stray is not None:
                    self._stray.append((True, value))
            else:
                self._field(line)
        self._position = position
        self._event_bytes = event_bytes

    def _field(self, line: bytes) -> None:
        # Every line but `data:` and blank ones: rare, so kept out of the loop above.
        if line[0] == 0x3A:  # ":" comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        elif name == b"data":  # `data` without a colon: an empty data line
            self._data.append(value)
            if self._stray is not None:
                self._stray.append((True, value))
        elif name == b"id":
            if 0 not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self.retry = int(value)
        else:
            # Unknown field: ignored by the rules, but remembered in case it is the tail of a data line
            # split by a raw line break.
            if self._stray is None:
                self._stray = [(True, d) for d in self._data]
            self._stray.append((False, line))
