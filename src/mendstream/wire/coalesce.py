# Sans-IO coalescing of content_block_delta events at the HTTP boundary: canonical SSE in (what the response
# rewriter emits), the same stream out with consecutive deltas of one block merged into fewer, larger ones,
# so that clients which re-merge or re-parse everything on every event (quadratic) see fewer events. No I/O,
# no clock reads: the caller passes the time in and asks when it must come back (`deadline()`).
#
# Theory of operation. The input is cut into blocks at blank lines (`\n\n`; the rewriter's output is LF
# framed). A block is a merge candidate when it is a content_block_delta whose delta is exactly
# `{"type": T, F: "..."}` with (T, F) one of text_delta/text, thinking_delta/thinking,
# input_json_delta/partial_json. Candidates of one run (same index and delta type, only pings between them)
# are merged, much as Nagle's algorithm merges small writes: a delta goes out at once when it is the first of
# its run or arrives more than a window after the previous one (so the first text of a block, and every delta
# of a stream slower than the window, is not delayed at all); the deltas that follow it within the window are
# held and go out as one event when the window since the first held one ends, or earlier when no delta came
# for `idle` seconds (a burst that ended need not wait out the window), when the held bytes reach
# `max_bytes`, or when anything else arrives (another delta, any other event, the end). A ping arriving while
# deltas are held is held behind them (it carries nothing, so it never breaks a merge) and goes out with
# them, so it too waits at most the window. Everything else passes at once and byte for byte, after whatever
# was held.
#
# Merged text is exact: the JSON string bodies of the fragments are concatenated (a complete JSON string body
# ends on a whole character and a whole escape, so the concatenation decodes to the concatenated text), and
# canonical (what json.dumps(ensure_ascii=False) writes). The API's compact form without \u or \/ escapes is
# matched by one regular expression and its string body copied as received (it is canonical already); any
# other spelling of a candidate is decoded and its fragment encoded once. A fragment with a surrogate
# (\uD800-\uDFFF escapes) is never merged: two halves of a pair in separate deltas are two lone surrogates to
# every client, and one pair once merged. Each input byte is examined a bounded number of times and each
# fragment copied once: linear in the input whatever the chunking.
from __future__ import annotations

import json
import math
import re
from typing import Any

import jiter

from mendstream.errors import UsageError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_WINDOW", "DeltaCoalescer", "coalesce_window"]

DEFAULT_WINDOW = 0.010
"""The proxy's default window in seconds (10 ms: below a 60 Hz frame; see docs/proxy.md for the measurements)."""

DEFAULT_MAX_BYTES = 64 * 1024
"""Held bytes at which a merged delta goes out without waiting for the window."""

# The merge candidates: delta type -> the field holding its fragment.
_FIELDS: dict[str, str] = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}

_DELTA_HEAD = b"event: content_block_delta\ndata: "
_PING_HEAD = b"event: ping\ndata: "
_MERGED_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%s,"delta":{"type":"%s","%s":"'

# The API's own spelling of a candidate up to its JSON string body, which runs to the block's last 5 bytes.
_HEAD = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(0|[1-9][0-9]{0,9}),'
    rb'"delta":\{"type":"(text_delta|thinking_delta|input_json_delta)","(text|thinking|partial_json)":"'
)
_TAIL = b'"}}\n\n'  # ... and what follows it
_FAST_FIELDS = {b"text_delta": b"text", b"thinking_delta": b"thinking", b"input_json_delta": b"partial_json"}
# Worth decoding: a block naming one of the candidate delta types (other deltas pass without a JSON parse).
_MAYBE = re.compile(rb'"(?:text_delta|thinking_delta|input_json_delta)"')
_SURROGATE = re.compile("[\ud800-\udfff]")
_PING = re.compile(rb'event: ping\ndata: \{ ?"type": ?"ping" ?\}\n\n')

_Key = tuple[bytes, bytes]  # (the block index as JSON writes it, the delta type)


def coalesce_window(value: Any, /, *, default: float = DEFAULT_WINDOW) -> float:
    """The window in seconds for a ``coalesce=`` option: ``None``, ``False`` and ``0`` mean off (``0.0``),
    ``True`` means ``default``, a finite non-negative number is taken as is.

    Raises:
        UsageError: anything else (a negative, infinite or NaN number, a string...).
    """
    if value is None or value is False:
        return 0.0
    if value is True:
        return default
    if isinstance(value, int | float):
        window = float(value)
        if math.isfinite(window) and window >= 0:
            return window
    raise UsageError(f"coalesce must be None, a bool or a finite number of seconds >= 0; got {value!r}")


class DeltaCoalescer:
    """Merges consecutive deltas of one content block in a canonical SSE byte stream, within a time window.

    Args:
        window: seconds a held delta may wait for more of its run. ``0`` or ``None``: a pass-through
            (``feed`` returns its input; nothing is ever held). Callers that know coalescing is off should
            not construct one at all.
        idle: seconds without a new delta of the run after which what is held goes out before the window
            ends; from 0 to ``window``, default a quarter of it.
        max_bytes: held bytes (raw events, pings included) at which the merged delta goes out at once.

    ``feed(data, now)`` returns the bytes to send now; ``deadline()`` says when, if no input arrives, the
    driver must call ``flush_due(now)`` (or ``flush()``); ``end()`` returns everything still held. ``now``
    is any monotonic clock in seconds, the same for every call.

    Guarantees: the output, parsed as SSE and accumulated, gives the message the input gives (merged
    fragments are the exact concatenation of theirs, in order; a delta that goes out alone and every event
    that is not merged pass byte for byte); no event is reordered except pings, which may follow deltas that
    arrived after them; the first delta of a run, and one arriving more than ``window`` after the previous
    one, are never held; nothing waits longer than ``window`` after its arrival (given a driver that honours
    ``deadline()``), and nothing waits past another kind of event (an ``error`` event included) or the end.
    ``signature_delta``, ``citations_delta``, unknown delta types, deltas with keys beyond ``type`` and their
    field, and fragments with a surrogate escape are never merged. An incomplete event is kept until its
    blank line arrives only when it may be a delta or a ping, and at most ``max_bytes``; any other bytes are
    forwarded as soon as they arrive. Memory: held deltas up to ``max_bytes`` plus one event, and an incomplete
    event up to ``max_bytes``. Work: linear in the input.

    Raises:
        UsageError: a bad option, ``feed`` after ``end()``, or ``data`` that is not bytes-like.
    """

    __slots__ = (
        "_buf",
        "_deadline",
        "_ended",
        "_key",
        "_last",
        "_last_at",
        "_literals",
        "_max",
        "_pings",
        "_raws",
        "_size",
        "_through",
        "_through_lf",
        "_window_end",
        "idle",
        "merged",
        "window",
    )

    def __init__(self, window: float | None, /, *, idle: float | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.window = coalesce_window(window, default=DEFAULT_WINDOW)
        if idle is None:
            idle = self.window / 4
        if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle <= self.window:
            raise UsageError(f"idle must be a number of seconds from 0 to the window ({self.window:g}); got {idle!r}")
        self.idle = float(idle)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise UsageError(f"max_bytes must be a positive int; got {max_bytes!r}")
        self._max = max_bytes
        self._buf = bytearray()  # an incomplete block that may be a delta or a ping
        self._through = False  # forwarding an incomplete block that is neither, until its blank line
        self._through_lf = False  # ... and the last byte forwarded was a LF
        self._key: _Key | None = None  # the run of the held deltas (None: nothing held)
        self._last: _Key | None = None  # the run of the last delta sent or held, until another event
        self._last_at = 0.0  # when that delta arrived
        self._raws: list[bytes] = []  # held delta blocks as received
        self._literals: list[bytes] = []  # their JSON string bodies
        self._pings: list[bytes] = []  # pings held behind them
        self._size = 0
        self._deadline = 0.0  # when the held deltas go out: the window's end, or earlier after an idle gap
        self._window_end = 0.0
        self._ended = False
        self.merged = 0
        """Delta events merged into an earlier one so far (events the client did not have to handle)."""

    # -- the driver's interface ---------------------------------------------------------------------------------

    def feed(self, data: bytes, now: float, /) -> bytes:
        """The bytes to send for the next input bytes ``data``, received at time ``now``."""
        if self._ended:
            raise UsageError("feed() called after end()")
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
            data = bytes(data)
        if not self.window:
            return data
        out: list[bytes] = []
        if self._key is not None and now >= self._deadline:
            self._flush(out)
        if self._through:
            data = self._forward(data, out)
        if self._buf and data:
            data = self._complete(data, now, out)
        # Whole blocks: one C-level split, each block copied once (with its blank line put back).
        blocks = data.split(b"\n\n")
        tail = blocks.pop()
        block = self._block
        for body in blocks:
            block(body + b"\n\n", now, out)
        if tail:
            self._keep(tail, out)
        return out[0] if len(out) == 1 else b"".join(out)

    def deadline(self) -> float | None:
        """When the held deltas must go out (``flush_due``), or None when nothing is held."""
        return self._deadline if self._key is not None else None

    def flush_due(self, now: float, /) -> bytes:
        """The held deltas if their window has ended at ``now``, else ``b""``."""
        if self._key is None or now < self._deadline:
            return b""
        out: list[bytes] = []
        self._flush(out)
        return b"".join(out)

    def flush(self) -> bytes:
        """Everything held, now (an incomplete event stays until its blank line or ``end()``)."""
        if self._key is None:
            return b""
        out: list[bytes] = []
        self._flush(out)
        return b"".join(out)

    def end(self) -> bytes:
        """Everything held, an incomplete final event included (as received). Idempotent."""
        if self._ended:
            return b""
        self._ended = True
        out: list[bytes] = []
        self._flush(out)
        if self._buf:
            out.append(bytes(self._buf))
            self._buf.clear()
        return b"".join(out)

    # -- internals ---------------------------------------------------------------------------------------------

    def _forward(self, data: bytes, out: list[bytes]) -> bytes:
        # The rest of a block being forwarded raw: up to and including its blank line (which may straddle the
        # previous input's end). Returns what follows it.
        if self._through_lf and data[:1] == b"\n":
            stop = 1
        else:
            found = data.find(b"\n\n")
            if found < 0:
                out.append(data)
                if data:
                    self._through_lf = data[-1] == 10
                return b""
            stop = found + 2
        self._through = False
        out.append(data[:stop])
        return data[stop:]

    def _complete(self, data: bytes, now: float, out: list[bytes]) -> bytes:
        # Continue the incomplete candidate block in _buf. A blank line may straddle the old end (one byte
        # back), so each byte is searched at most twice. Returns the input after the block.
        buf = self._buf
        scan = len(buf) - 1
        buf += data
        stop = buf.find(b"\n\n", scan)
        if stop < 0:
            if not self._may_hold(buf):
                self._release_buf(out)
            return b""
        used = stop + 2 - (len(buf) - len(data))
        block = bytes(buf[: stop + 2])
        buf.clear()
        self._block(block, now, out)
        return data[used:]

    def _keep(self, tail: bytes, out: list[bytes]) -> None:
        # An incomplete block at the end of the input: keep it if it may be a delta or a ping, else forward it.
        self._buf += tail
        if not self._may_hold(self._buf):
            self._release_buf(out)

    def _may_hold(self, buf: bytearray) -> bool:
        if len(buf) > self._max:
            return False
        head = bytes(buf[: len(_DELTA_HEAD)])
        return _DELTA_HEAD.startswith(head) or head.startswith(_PING_HEAD) or _PING_HEAD.startswith(head)

    def _release_buf(self, out: list[bytes]) -> None:
        # Forward an incomplete block that will not be merged, and the rest of it as it arrives.
        self._flush(out)
        self._last = None
        out.append(bytes(self._buf))
        self._through_lf = self._buf[-1] == 10
        self._through = True
        self._buf.clear()

    def _block(self, block: bytes, now: float, out: list[bytes]) -> None:
        if block.startswith(_DELTA_HEAD):
            candidate = self._candidate(block)
            if candidate is not None:
                key, literal = candidate
                if self._key is not None:
                    if key == self._key:
                        self._raws.append(block)
                        self._literals.append(literal)
                        self._size += len(block)
                        self._last_at = now
                        due = now + self.idle
                        self._deadline = due if due < self._window_end else self._window_end
                        if self._size >= self._max:
                            self._flush(out)
                        return
                    self._flush(out)
                last_at, self._last_at = self._last_at, now
                if key != self._last or now - last_at > self.window:
                    # The first delta of a run, or the first after a pause longer than the window: nothing says
                    # more will follow soon, so it goes out at once (a stream slower than the window is never
                    # delayed); the deltas that follow it within the window are held.
                    self._last = key
                    out.append(block)
                    return
                self._key = key
                self._raws.append(block)
                self._literals.append(literal)
                self._size = len(block)
                self._window_end = now + self.window
                self._deadline = now + self.idle
                if self._size >= self._max:
                    self._flush(out)
                return
        elif block.startswith(_PING_HEAD) and _PING.fullmatch(block) is not None:
            if self._key is None:
                out.append(block)
                return
            self._pings.append(block)
            self._size += len(block)
            if self._size >= self._max:
                self._flush(out)
            return
        self._flush(out)
        self._last = None
        out.append(block)

    def _candidate(self, block: bytes) -> tuple[_Key, bytes] | None:
        # (run, JSON string body) for a mergeable delta block, else None.
        match = _HEAD.match(block)
        if match is not None and block.endswith(_TAIL):
            index, dtype, field = match.groups()
            start = match.end()
            if _FAST_FIELDS[dtype] != field or start > len(block) - 5:
                return None
            literal = block[start:-5]
            # One JSON string, strictly (valid UTF-8, valid escapes, no control character, no lone surrogate; an
            # unescaped quote would end it early), checked and decoded by jiter: linear.
            try:
                fragment = jiter.from_json(block[start - 1 : -4], cache_mode="keys")
            except ValueError:
                return None
            if type(fragment) is not str:
                return None
            if b"\\" not in literal:
                return (index, dtype), literal  # canonical already: copied as received
            unescaped = literal.replace(b"\\\\", b"")  # what is left of a run of backslashes starts an escape
            if b"\\u" not in unescaped and b"\\/" not in unescaped:
                return (index, dtype), literal
            # A \u or \/ escape (json.dumps(ensure_ascii=False) writes \u only for control characters, \/ never).
            return self._reencoded((index, dtype), fragment)
        if _MAYBE.search(block) is None:
            return None
        data = block[len(_DELTA_HEAD) : -2]
        if b"\n" in data or b"\r" in data:
            return None
        try:
            payload = jiter.from_json(data, cache_mode="keys")
        except ValueError:
            return None
        if type(payload) is not dict or payload.keys() != {"type", "index", "delta"}:
            return None
        index, delta = payload["index"], payload["delta"]
        if payload["type"] != "content_block_delta" or type(index) is not int or index < 0 or type(delta) is not dict:
            return None
        dtype = delta.get("type")
        if type(dtype) is not str:
            return None
        field = _FIELDS.get(dtype)
        if field is None or delta.keys() != {"type", field}:
            return None
        fragment = delta[field]
        if type(fragment) is not str:
            return None
        return self._reencoded((b"%d" % index, dtype.encode()), fragment)

    @staticmethod
    def _reencoded(key: _Key, fragment: str) -> tuple[_Key, bytes] | None:
        if _SURROGATE.search(fragment) is not None:
            return None
        return key, json.dumps(fragment, ensure_ascii=False)[1:-1].encode("utf-8")

    def _flush(self, out: list[bytes]) -> None:
        key = self._key
        if key is None:
            return
        raws = self._raws
        if len(raws) == 1:
            out.append(raws[0])
        else:
            index, dtype = key
            head = _MERGED_HEAD % (index, dtype, _FAST_FIELDS[dtype])
            out.append(head + b"".join(self._literals) + _TAIL)
            self.merged += len(raws) - 1
        out.extend(self._pings)
        self._key = None
        self._raws = []
        self._literals = []
        self._pings = []
        self._size = 0
