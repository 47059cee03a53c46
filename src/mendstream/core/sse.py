# SSE framing: bytes in, ServerSentEvent out, by the WHATWG rules. No I/O, no JSON.
#
# Theory of operation: the decoder keeps the bytes of an unfinished line in one bytearray and searches only
# the newly fed chunk for a line terminator, so every byte is scanned once (worst case O(n) over the stream,
# whatever the chunking). Lines are split on CR, LF and CRLF only (never on U+2028 or U+0085, which
# are bytes inside UTF-8 sequences here), so a UTF-8 sequence split across chunks is reassembled before it is
# ever decoded. A CR at the very end of a chunk may be the first half of a CRLF: the decoder remembers it and
# drops an LF at the start of the next chunk.
#
# The size of an event, bounded by ``max_event_bytes``, has one definition: the bytes of its lines, each
# line counted with ONE byte for its terminator (CR, LF or CRLF alike), the blank line that dispatches it not
# counted. An unfinished line counts its bytes so far. The count only grows while an event is built, and
# reaches the same total however the bytes were chunked, so the verdict for an event does not depend on the
# split. Everything held for an event (the unfinished line, the data lines, the stray lines) lives in
# bytearrays, so the memory held is the counted bytes plus a constant, never one object per chunk or line.
#
# Spans: every dispatched event also has its byte span ``[start, end)`` in the stream. It ends just after the
# blank line that dispatched it and starts where the previous event's span ended (0 for the first, so a BOM
# belongs to it), so comments, blank lines and data-less blocks before an event belong to its span, and the
# spans tile the stream: joined, they give it back, but for what follows the last dispatched event
# (``boundary``), which is what a final unterminated event (and trailing comments) leave. A span does not
# depend on how the stream was split, but for one case: a blank line ended by a CR at the very end of a chunk
# dispatches at once (no waiting for the next chunk), so an LF that then arrives, the second half of a CRLF,
# opens the next span instead of closing this one.
#
# The decoder is also the parser's SSE framing (mendstream.core.framing): ``payloads(data)`` gives each event
# as ``(name, data, offset, ordinal)`` and ``finish()`` what a last event left. Its fast path takes a chunk of
# whole events of the ordinary form (one `event:` line, one `data:` line, LF framing) with a few C-level
# splits and slice compares per event; anything else goes through the general line loop.
from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

from mendstream.core.framing import EventBytes, Payload, Unfinished
from mendstream.core.repair import Repair
from mendstream.errors import BufferLimitError, UsageError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "ServerSentEvent", "check_max_event_bytes", "split_events"]

_NAMES: dict[bytes, str | None] = {}  # `event:` lines to their names, shared: there are only a handful

#: Default bound on the size of one event (see above: its lines, one byte per terminator).
#: Real events are far smaller; the largest are server-tool results of a few MB.
DEFAULT_MAX_EVENT_BYTES = 64 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_DELTA_PREFIX = b"event: content_block_delta\ndata: "  # the commonest event's head
_NOT_A_NAME: Any = object()  # "this block is not in the API's form": see SSEDecoder._whole()


def check_max_event_bytes(value: object, /) -> None:
    """Raise UsageError unless ``value`` is a usable ``max_event_bytes`` (a positive int)."""
    if type(value) is not int or value <= 0:
        raise UsageError(f"max_event_bytes must be a positive int, got {value!r}")


def _event_name(head: bytes) -> Any:
    # The event name of a block's head if the head is one `event:` line, else _NOT_A_NAME. Cached in _NAMES
    # (bounded: a hostile stream may send any number of names).
    if head[:6] != b"event:" or 10 in head:
        return _NOT_A_NAME
    value = head[7:] if head[6:7] == b" " else head[6:]
    name = value.decode("utf-8", "replace") or None
    if len(_NAMES) < 64:
        _NAMES[head] = name
    return name
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


class ServerSentEvent(NamedTuple):
    """One dispatched event.

    ``raw_data`` holds the data lines joined with ``\\n`` as bytes (undecoded, so the JSON stage can parse
    bytes directly). ``offset`` is the byte offset of the event's first line in the stream (a stripped BOM
    counts), ``ordinal`` its position among dispatched events. ``stray_lines`` holds, in order, the event's data
    lines (``True``) and lines with an unknown field name (``False``), only when such lines occurred: a raw
    line break inside a JSON string splits a data line, and the JSON stage uses them to rejoin it. ``start``
    and ``end`` are its span: from the end of the previous event's span (0 for the first) to just after the
    blank line that dispatched it (see the module's notes; ``stream[start:end]`` holds it whole).
    """

    event: str | None
    raw_data: bytes
    id: str | None = None
    retry: int | None = None
    offset: int = 0
    ordinal: int = 0
    stray_lines: tuple[tuple[bool, bytes], ...] | None = None
    start: int = 0
    end: int = 0

    @property
    def data(self) -> str:
        """The data as text (invalid UTF-8 replaced by U+FFFD)."""
        return self.raw_data.decode("utf-8", "replace")


class SSEDecoder:
    """Incremental SSE decoder: ``feed(bytes) -> list[ServerSentEvent]``, then ``end()``.

    Args:
        max_event_bytes: bound on the size of one event (the bytes of its lines, one byte per line
            terminator, the dispatching blank line not counted); an event that grows past it raises
            :class:`~mendstream.errors.BufferLimitError`, whose ``events`` holds the events the same
            ``feed`` call completed before it.

    At ``end()`` an unfinished event is not dispatched (WHATWG); it is available as ``unfinished`` (its
    event and data lines, re-serialised, then any last line with no terminator) and, when it has a data line,
    as ``unfinished_event`` (the event it would have been, its span reaching the end of the stream), so the
    caller can decide what to do with it.

    It is also the SSE :class:`~mendstream.core.framing.Framing` of :class:`~mendstream.MessageParser`:
    ``payloads(data)`` and ``finish()`` are ``feed`` and ``end`` giving the events as payloads. A decoder is
    read one way or the other, not both.
    """

    kind: Literal["sse"] = "sse"

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        check_max_event_bytes(max_event_bytes)
        self.max_event_bytes = max_event_bytes
        self.bom_stripped = False
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.unfinished: bytes = b""
        self.unfinished_event: ServerSentEvent | None = None
        self.repairs: list[Repair] = []
        """Repairs of the framing (a stripped BOM), for the parser to move to the message's."""
        self._started = False
        self._ended = False
        self._skip_lf = False
        self._partial = bytearray()  # the current unfinished line (or a BOM prefix before the start)
        self._position = 0  # stream offset of the first byte not yet split into lines
        self._boundary = 0  # stream offset where the last dispatched event's span ends
        # State of the event being built.
        self._event: str | None = None
        self._data = bytearray()  # its data lines, joined with LF
        self._data_lines = 0
        self._event_bytes = 0
        self._event_offset = 0
        self._stray: bytearray | None = None  # see _stray_lines()
        self._count = 0
        # The `event:` line and `data: ` prefix of the last ordinary event, and its name: see _whole().
        self._last: tuple[bytes, str | None, int] = (_DELTA_PREFIX, "content_block_delta", len(_DELTA_PREFIX))
        # True when idle (see the property), kept up to date by every method that changes what is held, so
        # the fast path tests one attribute.
        self._ready = False

    @property
    def position(self) -> int:
        """Stream offset of the first byte not yet split into complete lines (a stripped BOM counts)."""
        return self._position

    @property
    def boundary(self) -> int:
        """Stream offset just after the blank line of the last dispatched event: where the spans so far end
        (0 before the first event). What follows it has not completed an event (yet)."""
        return self._boundary

    @property
    def dispatched(self) -> int:
        """How many events have been dispatched: the ``ordinal`` the next one will get."""
        return self._count

    @property
    def started(self) -> bool:
        """True once the first bytes decided whether the stream opens with a BOM."""
        return self._started

    @property
    def idle(self) -> bool:
        """True when the stream has started and the decoder holds nothing: no partial line, no unfinished
        event, no pending CR. A chunk fed now that ends on a blank line is whole events."""
        return (
            self._started and not self._partial and not self._event_bytes and not self._skip_lf and not self._ended
        )

    def feed(self, data: bytes, /) -> list[ServerSentEvent]:
        """Decode ``data``; return the events it completes (possibly none)."""
        start = self._boundary
        whole = self._whole(data)
        if whole is None:
            return self._slow(data, False)
        return self._full(whole, start)

    def end(self) -> list[ServerSentEvent]:
        """Signal end of stream. Returns no events: an unfinished event is kept in ``unfinished`` (and
        ``unfinished_event``)."""
        if self._ended:
            return []
        self._ended = True
        self._ready = False
        if not self._started and self._partial:
            # A stream shorter than a BOM that was a BOM prefix: it is data after all.
            self._started = True
        tail = bytes(self._partial)
        self._partial.clear()
        if self._data_lines or self._event is not None or tail or self._stray is not None:
            lines = [b"event: " + self._event.encode()] if self._event is not None else []
            stray = self._stray_lines()
            if stray is not None:
                lines += [(b"data: " + v) if is_data else v for is_data, v in stray]
            elif self._data_lines:
                lines += [b"data: " + v for v in self._data.split(b"\n")]
            self.unfinished = b"".join(line + b"\n" for line in lines) + tail
            self.unfinished_event = self._unfinished_event(tail)
        return []

    # -- the Framing protocol (mendstream.core.framing) --------------------------------------------------

    def payloads(self, data: bytes, /) -> list[Payload]:
        """Decode ``data``; return ``(event, raw_data, offset, ordinal)`` of each event it completes, as
        ``feed`` would (``raw_data`` an EventBytes carrying ``stray_lines`` when the event has some)."""
        # The commonest chunk first: one event of the ordinary form, named as the last one (servers flush
        # each event, and most are deltas). Then whole events of the ordinary form, then anything.
        last = self._last
        if self._ready and data[: last[2]] == last[0] and data[-2:] == b"\n\n" and 13 not in data:
            raw = data[last[2] : -2]
            if 10 not in raw and len(data) - 2 < self.max_event_bytes:
                position, count = self._position, self._count
                self._position = self._boundary = position + len(data)
                self._count = count + 1
                return [(last[1], raw, position, count)]
        whole = self._whole(data)
        if whole is None:
            return self._slow(data, True)
        return whole

    def finish(self) -> Unfinished | None:
        """End of stream, as ``end()``; what an unfinished event with data left (``unfinished`` is its
        ``raw``), for the parser to dispatch (complete JSON) or to judge as a cut."""
        self.end()
        event = self.unfinished_event
        if event is None:
            return None
        size = len(self.unfinished)
        return Unfinished(
            (event.event, event.raw_data, event.offset, event.ordinal),
            self.unfinished,
            event.offset,
            event.ordinal,
            f"dropped a cut final frame of {size} bytes",
            f"the stream ended inside an event (a cut final frame of {size} bytes)",
        )

    # -- internals --------------------------------------------------------------------------------------

    def _whole(self, data: bytes) -> list[Payload] | None:
        """The fast path: the payloads of ``data`` when it is whole events of the ordinary form, else None.

        That is: the decoder is idle (see ``idle``), ``data`` has no CR and ends on a blank line, and every
        event is an ``event: NAME`` line and one ``data: ...`` line (or that data line alone) within
        ``max_event_bytes``: the common case (servers flush whole events). Otherwise it returns None and
        changes nothing, and the general loop decodes ``data``.
        """
        # `13 in data` (CR) tests an int, a memchr; `b"\r" in` would build a bytes object.
        if not self._ready or data[-2:] != b"\n\n" or 13 in data:
            return None
        last = self._last
        # Each block is one event's lines without the LF ending its last line and without its blank line,
        # so its size is len(block) + 1. Consecutive events mostly share their name, so the last `event:`
        # line and `data: ` prefix is remembered and one slice comparison recognises it. Cost: O(len(block))
        # in C per block plus a constant number of Python operations; nothing is consumed until all passed.
        blocks = data.split(b"\n\n")
        tail = len(blocks.pop())  # what follows the last blank line: b"" or b"\n" (one more blank line)
        out: list[Payload] = []
        position = self._position
        count = self._count
        limit = self.max_event_bytes
        prefix, name, size = last
        for block in blocks:
            if len(block) >= limit:  # len(block) + 1 > limit: the general loop raises
                return None
            if block[:size] == prefix:
                raw = block[size:]
                event = name
            else:
                head, sep, raw = block.partition(b"\ndata: ")
                if sep:
                    event = _NAMES.get(head, _NOT_A_NAME)
                    if event is _NOT_A_NAME:
                        event = _event_name(head)
                        if event is _NOT_A_NAME:
                            return None
                    prefix, name, size = head + sep, event, len(head) + 7
                elif block[:6] == b"data: ":  # providers that send no event names
                    raw = block[6:]
                    event = None
                else:
                    return None
            if 10 in raw:  # 10: LF, more lines after the data line
                return None
            out.append((event, raw, position, count))
            count += 1
            position += len(block) + 2
        if prefix is not last[0]:
            self._last = (prefix, name, size)
        self._boundary = position
        self._position = position + tail
        self._count = count
        return out

    def _full(self, whole: list[Payload], start: int) -> list[ServerSentEvent]:
        # The fast path's events as ServerSentEvents: each span ends where the next event starts.
        new, last_id, retry = tuple.__new__, self.last_event_id, self.retry
        out = []
        for i, (event, raw, offset, ordinal) in enumerate(whole):
            end = whole[i + 1][2] if i + 1 < len(whole) else self._boundary
            out.append(new(ServerSentEvent, (event, raw, last_id, retry, offset, ordinal, None, start, end)))
            start = end
        return out

    def _slow(self, data: bytes, payloads: bool) -> list[Any]:
        # The general path: ServerSentEvents for feed(), payloads for payloads().
        self._ready = False
        events: list[Any] = []
        self._decode(data, events, payloads)
        self._ready = self.idle
        return events

    def _decode(self, data: bytes, events: list[Any], payloads: bool) -> None:
        if self._ended:
            raise UsageError("feed() called after end()")
        if not data:
            return
        if not self._started:
            data = self._strip_bom(data)
            if not data:
                return
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                self._position += 1
                data = data[1:]
                if not data:
                    return
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            self._hold(data)
            return
        if self._partial:
            self._partial += data[: cut + 1]
            head = bytes(self._partial)
            self._partial.clear()
        else:
            head = data if cut == len(data) - 1 else data[: cut + 1]
        self._lines(head, events, payloads)
        if cut < len(data) - 1:
            self._hold(data[cut + 1 :])
        elif head[-1:] == b"\r":
            self._skip_lf = True

    def _unfinished_event(self, tail: bytes) -> ServerSentEvent | None:
        # The event the lines since the last blank line would have made, the cut last line `tail` read as a
        # line (WHATWG drops it; its `data` or `event` field is what a cut event most often ends with).
        name, data, lines = self._event, bytes(self._data), self._data_lines
        stray = self._stray_lines()
        if tail:
            field, colon, value = tail.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data = data + b"\n" + value if lines else value
                lines += 1
                if stray is not None:
                    stray += ((True, value),)
            elif field == b"event":
                name = value.decode("utf-8", "replace") or None
            elif field not in (b"", b"id", b"retry"):  # an unknown field: a stray line, as _field() keeps it
                if stray is None:
                    stray = tuple((True, bytes(v)) for v in self._data.split(b"\n")) if self._data_lines else ()
                stray += ((False, tail),)
        if not lines:
            return None
        return ServerSentEvent(
            name, data, self.last_event_id, self.retry, self._event_offset, self._count, stray, self._boundary,
            self._position + len(tail),
        )

    def _strip_bom(self, data: bytes) -> bytes:
        if self._partial:  # a BOM prefix held back from earlier chunks
            data = bytes(self._partial) + data
            self._partial.clear()
        if len(data) < 3 and _BOM.startswith(data):
            self._partial += data
            return b""
        self._started = True
        if data.startswith(_BOM):
            self.bom_stripped = True
            self.repairs.append(Repair("bom", "stripped a leading UTF-8 byte order mark", 0, None))
            self._position = 3
            return data[3:]
        return data

    def _hold(self, piece: bytes) -> None:
        # One growing bytearray (amortised O(1) per byte): a line fed one byte per chunk holds its bytes,
        # not one object per chunk.
        if not self._event_bytes and not self._partial:
            self._event_offset = self._position
        self._partial += piece
        if len(self._partial) + self._event_bytes > self.max_event_bytes:
            self._overflow([])

    def _overflow(self, events: list[Any]) -> None:
        error = BufferLimitError(
            f"an SSE event exceeded max_event_bytes={self.max_event_bytes} "
            f"(event starting at byte {self._event_offset})",
            limit=self.max_event_bytes,
            offset=self._event_offset,
        )
        error.events = events
        raise error

    def _lines(self, head: bytes, events: list[Any], payloads: bool) -> None:
        # `head` is complete lines. Between events with LF framing, the part up to the last blank line is
        # whole events (the fast path takes it); the rest, and anything else, goes through the general loop.
        if not self._event_bytes and 13 not in head:
            cut = head.rfind(b"\n\n") + 2
            if cut > 1:
                # The decoder is idle here (the caller cleared the partial line and the pending CR), but
                # _ready is only set again when _slow returns: say so for this call.
                self._ready = True
                start = self._boundary
                whole = self._whole(head if cut == len(head) else head[:cut])
                self._ready = False
                if whole is not None:
                    events += whole if payloads else self._full(whole, start)
                    head = head[cut:]
                    if not head:
                        return
        self._general(head, events, payloads)

    def _general(self, head: bytes, events: list[Any], payloads: bool) -> None:
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
            size = len(line) + 1  # the event-size count: one byte per terminator
            consumed = size if extra is None else size + extra[i]
            if size == 1:  # blank line: dispatch
                position += consumed
                if self._data_lines:
                    stray = self._stray_lines()
                    if payloads:
                        raw = bytes(data) if stray is None else EventBytes(data, stray_lines=stray)
                        events.append((self._event, raw, self._event_offset, self._count))
                    else:
                        events.append(
                            tuple.__new__(
                                ServerSentEvent,
                                (self._event, bytes(data), self.last_event_id, self.retry, self._event_offset,
                                 self._count, stray, self._boundary, position),
                            )
                        )
                    self._count += 1
                    self._boundary = position
                    data.clear()
                    self._data_lines = 0
                self._event = None
                self._stray = None
                event_bytes = 0
                continue
            if event_bytes == 0:
                self._event_offset = position
            position += consumed
            event_bytes += size
            if event_bytes > limit:
                self._position = position
                self._event_bytes = event_bytes
                self._overflow(events)
            if line[:5] == b"data:":
                self._data_line(line[6:] if line[5:6] == b" " else line[5:])
            else:
                self._field(line)
        self._position = position
        self._event_bytes = event_bytes

    def _data_line(self, value: bytes) -> None:
        if self._data_lines:
            self._data += b"\n"
        self._data += value
        self._data_lines += 1
        if self._stray is not None:
            self._stray += b"\x01" + value + b"\n"

    def _stray_lines(self) -> tuple[tuple[bool, bytes], ...] | None:
        # `_stray` holds each line as a flag byte (1: data value, 0: unknown line), the bytes, and an LF: a
        # line never holds CR or LF, so splitting on LF recovers them.
        if self._stray is None:
            return None
        return tuple((entry[0] == 1, bytes(entry[1:])) for entry in self._stray.split(b"\n")[:-1])

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
            self._data_line(value)
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
                self._stray = bytearray()
                if self._data_lines:
                    for data_line in self._data.split(b"\n"):
                        self._stray += b"\x01" + data_line + b"\n"
            self._stray += b"\x00" + line + b"\n"


def split_events(body: bytes, /) -> list[bytes]:
    """``body`` cut into its SSE events as the decoder reads them: each piece is one event's span (comments
    and blank lines before the event, the event, the blank line that dispatched it); what follows the last
    event (an unterminated one, trailing comments) is a last piece. Joined, the pieces are ``body``. For code
    that sends or rewrites a body event by event; O(len(body))."""
    decoder = SSEDecoder(max_event_bytes=len(body) + 1)  # no event of the body can pass it
    pieces = [body[event.start : event.end] for event in decoder.feed(body)]
    decoder.end()
    if decoder.boundary < len(body):
        pieces.append(body[decoder.boundary :])
    return pieces
