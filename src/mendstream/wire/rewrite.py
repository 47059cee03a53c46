# Sans-IO rewriting of Messages API traffic at the HTTP boundary, for transports and proxies that cannot
# change the code that reads the stream: a request rewriter (body in, cache-planned body out) and a response
# rewriter (upstream SSE bytes in, SSE bytes that any strict SSE + JSON consumer accepts out). No I/O here.
#
# Theory of operation (response): the rewriter cuts the input into raw event blocks (everything up to and
# including a blank line; the same blank lines as the core's SSEDecoder, LF, CR and CRLF mixed) with one
# regex search per block, which keeps clean streams on a split-and-forward fast path, and feeds each
# block to a MessageParser, the source of truth for what the stream means. A block whose bytes are in
# canonical form (`event: NAME` LF `data: {...}` LF LF) and for which the parser recorded no repair is
# forwarded as received; every other block is replaced by the re-encoding of the events the parser made of
# it (so BOM, `[DONE]`, comments, padding and CR framing disappear, control characters come out escaped).
# Tool input fragments are checked by a small incremental string scanner so that their concatenation is
# JSON the SDK's partial parser accepts. A stream that ends too early gets a final `event: error`.
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from mendstream.core.accumulate import TOOL_BLOCK_TYPES
from mendstream.core.parser import MessageParser
from mendstream.core.partial_json import MISSING
from mendstream.core.repair import Repair
from mendstream.core.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from mendstream.errors import (
    APIStreamError,
    BufferLimitError,
    EventDecodeError,
    IncompleteStreamError,
    StreamError,
    ToolInputError,
    UsageError,
)
from mendstream.wire.http import is_messages_path

if TYPE_CHECKING:
    from mendstream.cache import CachePlanner
    from mendstream.cache.options import CacheSetting

__all__ = [
    "CacheMode",
    "RequestRewrite",
    "ResponseRewriter",
    "ToolInputFixer",
    "error_event",
    "is_messages_path",
    "rewrite_request",
    "with_content_length",
]

CacheMode = Literal["default", "planner", "off"]
CACHE_MODES: tuple[str, ...] = ("default", "planner", "off")

# -- requests -----------------------------------------------------------------------------------------------



class RequestRewrite:
    """The outcome of :func:`rewrite_request`.

    Attributes:
        body: the bytes to send (the original object when nothing changed).
        changed: whether ``body`` differs from the input.
        payload: the decoded request (after planning), or ``None`` when ``cache="off"`` skipped decoding.
        markers_before / markers_after: ``cache_control`` markers counted in the request before and after.
    """

    __slots__ = ("body", "changed", "markers_after", "markers_before", "payload")

    def __init__(
        self, body: bytes, changed: bool, payload: dict[str, Any] | None, markers_before: int, markers_after: int
    ) -> None:
        self.body = body
        self.changed = changed
        self.payload = payload
        self.markers_before = markers_before
        self.markers_after = markers_after


def count_markers(value: Any, /) -> int:
    """The number of ``cache_control`` keys anywhere in a decoded request (iterative: no recursion limit)."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if "cache_control" in item:
                count += 1
            stack.extend(v for v in item.values() if type(v) in (dict, list))
        elif type(item) is list:
            stack.extend(v for v in item if type(v) in (dict, list))
    return count


def rewrite_request(
    body: bytes,
    /,
    *,
    cache: CacheSetting | str | bool | None = "default",
    planner: CachePlanner | None = None,
    payload: dict[str, Any] | None = None,
) -> RequestRewrite:
    """Plan the cache breakpoints of a Messages API request body.

    Args:
        body: the request body as sent (JSON).
        cache: a ``cache=`` value (see :mod:`mendstream.cache.options`: ``"default"``, ``"off"``, a strategy
            name, ``"planner"``...) or the :class:`~mendstream.cache.CacheSetting` parsed from one. Off returns
            the body untouched without decoding it.
        planner: the conversation's :class:`~mendstream.cache.CachePlanner`, for ``"planner"`` (required then,
            unless the setting holds its own).
        payload: ``body`` already decoded, when the caller has it (saves a second parse).

    Returns a :class:`RequestRewrite`; its ``body`` is the original bytes when planning changed nothing,
    otherwise compact JSON (UTF-8, keys in their original order). Set ``content-length`` from it (see
    :func:`with_content_length`).

    Raises:
        UsageError: ``cache`` is not a known value, ``"planner"`` without a planner, or the body is not a
            JSON object.
    """
    from mendstream.cache.options import CacheSetting, parse_cache

    setting = cache if isinstance(cache, CacheSetting) else parse_cache(cache)
    if setting.off:
        return RequestRewrite(body, False, None, 0, 0)
    if setting.mode == "planner" and setting.planner is None and planner is None:
        raise UsageError("cache='planner' needs a CachePlanner (planner=...)")
    if payload is None:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"the request body is not JSON ({exc}); {len(body)} bytes received") from None
        except RecursionError:
            raise UsageError(f"the request body nests JSON too deeply; {len(body)} bytes received") from None
    if type(payload) is not dict:
        raise UsageError(f"the request body is JSON but not an object (a {type(payload).__name__})")
    before = count_markers(payload)
    try:
        planned = setting.apply(payload, planner)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:  # a payload the planner cannot read (e.g. messages not a list)
        raise UsageError(f"cannot plan cache breakpoints for this request: {exc}") from None
    if planned == payload:
        return RequestRewrite(body, False, payload, before, before)
    encoded = json.dumps(planned, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return RequestRewrite(encoded, True, planned, before, count_markers(planned))


def with_content_length(headers: Iterable[tuple[bytes, bytes]], length: int, /) -> list[tuple[bytes, bytes]]:
    """``headers`` (raw name/value pairs) with every ``content-length`` and ``transfer-encoding`` replaced by
    one ``content-length: length``, so a rewritten body is framed correctly."""
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
    out.append((b"content-length", str(length).encode()))
    return out


# -- tool input ---------------------------------------------------------------------------------------------

_STRING_STOP = re.compile(r'["\\\x00-\x1f]')
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_STRUCTURE = re.compile(r'["{}\[\]]')
_NON_SPACE = re.compile(r"\S")


class ToolInputFixer:
    """Rewrites successive ``partial_json`` fragments of one tool block so that their concatenation is the
    JSON mendstream's own repair reads: no raw control character inside a string (→ ``\\u00XX``), no
    invalid escape (its backslash doubled), and several top-level objects in a row merged into one (the
    core merges ``{…}{…}``; the SDK's partial parser would silently keep the first).

    ``feed(fragment)`` returns the fragment to send: the very same object when nothing needed fixing. An
    escape cut by a fragment boundary (a lone trailing backslash, or ``\\u`` with fewer than 4 hex digits)
    is sent as received and judged with the next fragment: if invalid, :attr:`unescape_previous` asks the
    caller to double that backslash in the fragment it holds back (see :attr:`escape_at_end`). When a
    fragment ends just after the top-level object closed, :attr:`closed_at_end` is set: if the next
    fragment opens another object, :attr:`unclose_previous` is set and the caller must remove the last
    ``}`` from the fragment it sent before (the rewriter holds that event back for one event to allow it).
    Work is linear in the fragment's length; ordinary string characters are skipped by a compiled regex.
    """

    __slots__ = (
        "_depth",
        "_in_string",
        "_merging",
        "_pending",
        "_top_closed",
        "closed_at_end",
        "continued",
        "fixed",
        "unclose_previous",
        "unescape_previous",
    )

    def __init__(self) -> None:
        self._in_string = False
        self._pending = ""  # an escape cut at the end of the previous fragment (sent as received)
        self._depth = 0
        self._top_closed = False  # a top-level object has closed and nothing but whitespace followed yet
        self._merging = False  # dropped the `{` of a following object; its first key needs a comma
        self.closed_at_end = False
        self.unclose_previous = False
        self.unescape_previous = 0
        self.continued = False
        """The whole last fragment continued an escape cut earlier, which is still unfinished."""
        self.fixed = 0
        """Number of characters escaped, backslashes doubled and objects merged so far."""

    def feed(self, fragment: str, /) -> str:
        text = fragment
        self.closed_at_end = False
        self.unclose_previous = False
        self.unescape_previous = 0
        self.continued = False
        pieces: list[str] = []
        last = 0
        i = 0
        n = len(text)
        in_string = self._in_string
        if self._pending:
            i = self._resolve(text)
        close_pos = -1  # where the top-level `}` closed in this text, if it did
        # Each iteration consumes at least one character: O(len(text)) overall.
        while i < n:
            if not in_string:
                if self._top_closed or self._merging:
                    match = _NON_SPACE.search(text, i)
                    if match is None:
                        break
                    j = match.start()
                    char = text[j]
                    if self._top_closed and char == "{":  # a second object: merge it into the first
                        self._top_closed = False
                        self._merging = True
                        self._depth = 1
                        self.fixed += 1
                        if close_pos >= 0:
                            pieces.append(text[last:close_pos])
                            pieces.append(text[close_pos + 1 : j])
                        else:
                            pieces.append(text[last:j])
                            self.unclose_previous = True
                        last = i = j + 1
                        close_pos = -1
                        continue
                    if self._merging:
                        self._merging = False
                        if char == '"':
                            pieces.append(text[last:j])
                            pieces.append(",")
                            last = j
                    self._top_closed = False
                    i = j
                match = _STRUCTURE.search(text, i)
                if match is None:
                    break
                j = match.start()
                char = text[j]
                i = j + 1
                if char == '"':
                    in_string = True
                elif char in "{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0 and char == "}":
                        self._top_closed = True
                        close_pos = j
                continue
            match = _STRING_STOP.search(text, i)
            if match is None:
                break
            j = match.start()
            char = text[j]
            if char == '"':
                in_string = False
                i = j + 1
            elif char == "\\":
                if j + 1 >= n:  # a backslash at the very end: its escape is judged with the next fragment
                    self._pending = text[j:]
                    i = n
                    break
                follower = text[j + 1]
                if follower in _ESCAPES:
                    i = j + 2
                    continue
                if follower == "u":
                    digits = 0
                    while digits < 4 and j + 2 + digits < n and text[j + 2 + digits] in _HEX:
                        digits += 1
                    if digits == 4:
                        i = j + 6
                        continue
                    if j + 2 + digits == n:  # all hex so far, but cut: judge it with the next fragment
                        self._pending = text[j:]
                        i = n
                        break
                # An invalid escape: keep the backslash as a literal one; the follower is read normally.
                pieces.append(text[last:j])
                pieces.append("\\\\")
                self.fixed += 1
                last = i = j + 1
            else:  # a raw control character inside a string
                pieces.append(text[last:j])
                pieces.append(f"\\u{ord(char):04x}")
                self.fixed += 1
                last = i = j + 1
        self._in_string = in_string
        self.closed_at_end = self._top_closed and close_pos >= 0
        if not pieces:
            return fragment
        pieces.append(text[last:])
        return "".join(pieces)

    @property
    def escape_at_end(self) -> bool:
        """The last fragment ended inside an escape, judged when the next fragment arrives (then, if it is
        invalid, :attr:`unescape_previous` says how far from the end of the previous fragment the backslash
        to double is)."""
        return bool(self._pending)

    def _resolve(self, text: str) -> int:
        # Complete the escape cut at the end of the previous fragment; return where scanning resumes.
        pending = self._pending
        if not text:  # an empty fragment: still pending
            self.continued = True
            return 0
        candidate = pending + text[: 6 - len(pending)]
        follower = candidate[1:2]
        self._pending = ""
        if follower in _ESCAPES:
            return 2 - len(pending)
        if follower == "u":
            digits = 0
            while digits < 4 and 2 + digits < len(candidate) and candidate[2 + digits] in _HEX:
                digits += 1
            if digits == 4:
                return 6 - len(pending)
            if 2 + digits == len(candidate):  # still cut (a one- or two-character fragment): keep waiting
                self._pending = candidate
                self.continued = True
                return len(text)
        # Invalid: the backslash, already sent, must be doubled by the caller; its follower is read normally.
        self.unescape_previous = len(pending)
        self.fixed += 1
        return 0

    def finish(self) -> str:
        """What must still be sent at the end of the block (nothing: a cut escape means unfinished JSON)."""
        self._pending = ""
        return ""


# -- responses ----------------------------------------------------------------------------------------------

# A blank line: a line terminator followed by another. A CR counts as a whole terminator only when no LF
# follows it (CRLF is one terminator).
_BLANK = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")

# Block types the SDK accumulates input_json_delta fragments into (others ignore them).
_EMPTY_MESSAGE: dict[str, Any] = {
    "id": "", "type": "message", "role": "assistant", "model": "", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
}

# What the core synthesizes for a delta whose block never started (see src/mendstream/fixtures/README.md), so that the
# re-encoded stream starts the same block for consumers that need a content_block_start.
_SYNTHESIZED_BLOCKS: dict[str, dict[str, Any]] = {
    "text_delta": {"type": "text", "text": ""},
    "citations_delta": {"type": "text", "text": ""},
    "thinking_delta": {"type": "thinking", "thinking": "", "signature": ""},
    "signature_delta": {"type": "thinking", "thinking": "", "signature": ""},
}

#: The ``error.type`` of the ``error`` event ending a stream that mendstream could not complete, by cause.
ERROR_TYPES: dict[type[StreamError], str] = {
    IncompleteStreamError: "incomplete_stream_error",
    EventDecodeError: "undecodable_event_error",
    ToolInputError: "invalid_tool_input_error",
    BufferLimitError: "event_too_large_error",
}
_MAX_KEPT_REPAIRS = 1000


def _remove_last_brace(fragments: list[str]) -> list[str]:
    out = list(fragments)
    for k in range(len(out) - 1, -1, -1):
        cut = out[k].rfind("}")
        if cut >= 0:
            out[k] = out[k][:cut] + out[k][cut + 1 :]
            break
    return out


def _double_backslash_at(distance: int) -> Callable[[list[str]], list[str]]:
    # `distance` counts characters back from the end of the held fragments to the backslash to double.
    def patch(fragments: list[str]) -> list[str]:
        out = list(fragments)
        remaining = distance
        for k in range(len(out) - 1, -1, -1):
            if remaining <= len(out[k]):
                cut = len(out[k]) - remaining
                out[k] = out[k][:cut] + "\\" + out[k][cut:]
                break
            remaining -= len(out[k])
        return out

    return patch


def _start_decision(index: int, events: Sequence[Any], padded: bool) -> str | None:
    """For a held tool start of block ``index``: ``"replace"`` when ``events`` bring input fragments with
    content (the start's input is replaced by them), None while they are only empty or blank fragments of it
    (``padded`` says a blank one was held), ``"restate"`` when the block stops after blank fragments (clients
    that concatenate would parse the blanks: the start's input is sent as a delta after them), ``"keep"`` for
    anything else (the start stands as sent)."""
    undecided = False
    for event in events:
        if event.type == "content_block_delta" and event.index == index:
            delta = event.delta
            if delta.get("type") == "input_json_delta":
                fragment = delta.get("partial_json")
                if type(fragment) is str and fragment.strip():
                    return "replace"
                undecided = True
                continue
            return "keep"
        if event.type == "input_json":
            continue
        if event.type == "content_block_stop" and event.index == index and padded:
            return "restate"
        return "keep"
    return None if undecided or not events else "keep"


def _blank(encoded: tuple[str, dict[str, Any]]) -> bool:
    """Whether a held wire event is an input fragment of blanks (not empty)."""
    name, payload = encoded
    fragment = payload.get("delta", {}).get("partial_json") if name == "content_block_delta" else None
    return type(fragment) is str and fragment != "" and not fragment.strip()


def _is_tool_block(block: Mapping[str, Any]) -> bool:
    btype = block.get("type")
    return "input" in block or (type(btype) is str and btype in TOOL_BLOCK_TYPES)


def _error_type_of(exc: StreamError) -> str:
    for cls in type(exc).__mro__:
        if cls in ERROR_TYPES:
            return ERROR_TYPES[cls]
    return "invalid_stream_error"


def error_event(exc: BaseException, /) -> bytes:
    """The ``error`` event that ends a stream with ``exc``: the upstream's own event as it was sent when the
    error is one (``wire_event``), an APIStreamError's body, or mendstream's error (:data:`ERROR_TYPES`) for
    what mendstream found; for anything else (the boundary gave up on a transport failure), an ``api_error``
    naming it."""
    event = getattr(exc, "wire_event", None)
    if type(event) is bytes:
        return event
    if isinstance(exc, APIStreamError):
        sent: Any = exc.body
        return encode_event("error", sent if type(sent) is dict and sent.get("type") == "error" else {
            "type": "error", "error": {"type": exc.error_type, "message": exc.message}})
    if isinstance(exc, StreamError):
        return encode_event("error", {
            "type": "error", "error": {"type": _error_type_of(exc), "message": f"mendstream: {exc.message}"}})
    answered: Any = getattr(exc, "body", None)
    if isinstance(answered, dict) and answered.get("type") == "error" and isinstance(answered.get("error"), dict):
        return encode_event("error", answered)  # an HTTP error answered to a retry, in the API's own shape
    return encode_event("error", {
        "type": "error", "error": {"type": "api_error", "message": f"mendstream: {type(exc).__name__}: {exc}"}})


def encode_event(name: str, payload: Mapping[str, Any], /) -> bytes:
    """One canonical SSE event: ``event: name``, one ``data:`` line of compact JSON, a blank line. JSON
    escapes every control character, so no raw line break can reach the data line."""
    try:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from a \\ud800 escape): ASCII JSON keeps it valid
        data = json.dumps(payload, separators=(",", ":")).encode("ascii")
    return b"event: " + name.encode("utf-8", "replace").replace(b"\n", b"").replace(b"\r", b"") + b"\ndata: " + (
        data + b"\n\n"
    )


def _is_canonical(block: bytes) -> bool:
    # `event: NAME` LF `data: {...}` LF LF, nothing else: the shape the API sends. O(1) slices plus two
    # C-level scans (the parser scanned the same bytes already).
    if block[:7] != b"event: " or 13 in block:
        return False
    newline = block.find(b"\n", 7)
    if newline < 0 or block[newline + 1 : newline + 8] != b"data: {":
        return False
    return block.find(b"\n", newline + 1) == len(block) - 2 and block[-3:] == b"}\n\n"


def _is_ping(block: bytes) -> bool:
    # A non-canonical block the parser made nothing of: re-encoded as a ping when it was one (off the hot path).
    for event in SSEDecoder().feed(block + b"\n\n"):
        if event.event == "ping" or event.raw_data.replace(b" ", b"") == b'{"type":"ping"}':
            return True
    return False


class ResponseRewriter:
    """Rewrites the SSE body of a Messages API response, incrementally.

    Args:
        on_repair: called with each :class:`~mendstream.Repair` as it happens (the core's repairs, plus
            ``sse_framing`` for an event re-encoded only because its framing was not canonical). Exceptions
            it raises propagate to the caller of ``feed``/``end``.
        max_event_bytes: bound on one unfinished event (as :class:`~mendstream.MessageParser`).
        errors: ``"event"`` ends a stream that cannot complete with an ``error`` event (see below);
            ``"raise"`` raises the StreamError from ``feed``/``end`` instead, with the bytes to send before it
            in its ``output`` attribute (for a caller that may retry rather than give up: the HTTP boundary).

    ``feed(data)`` returns the bytes to send on for ``data`` (possibly ``b""`` while an event is
    incomplete); ``end()`` returns the last bytes. The concatenated output is the same however the input was
    split. Guarantees:

    * a stream that needs no repair and is canonically framed comes out byte for byte;
    * every other event is re-encoded (canonical framing, JSON with control characters escaped);
      ``input_json_delta`` fragments are fixed so that their concatenation is the JSON the core parsed;
    * a stream that ends before ``message_stop`` and without a stop reason, or that the core cannot read,
      ends with ``event: error`` whose ``error.type`` is one of :data:`ERROR_TYPES` (an ``error`` event from
      the upstream is passed on as such); a stream cut after its stop reason gets the missing
      ``content_block_stop``/``message_stop``. Nothing is sent after the end of the message.

    With ``errors="event"`` never raises a StreamError for bad input (that becomes the ``error`` event; see
    :attr:`error`); raises UsageError for ``feed`` after ``end``.
    """

    def __init__(
        self,
        *,
        on_repair: Callable[[Repair], None] | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        errors: Literal["event", "raise"] = "event",
    ) -> None:
        if errors not in ("event", "raise"):
            raise UsageError(f"errors must be 'event' or 'raise', not {errors!r}")
        self._raise = errors == "raise"
        # The core reads the stream without keeping its content: the rewriter needs the stream's structure,
        # stop reason, usage, repairs and errors, and its memory must not grow with the stream.
        self._parser = MessageParser(max_event_bytes=max_event_bytes, keep_content=False)
        self._limit = max_event_bytes
        self._on_repair = on_repair
        self._buf = bytearray()
        self._scan = 0
        self._position = 0  # stream offset of _buf[0]
        self._reported = 0  # parser repairs already reported
        self._own: list[Repair] = []
        self._message_started = False
        self._blocks: set[int] = set()
        self._tools: dict[int, ToolInputFixer] = {}
        # A tool block whose start carries an input is held back (with any empty fragments after it) until its
        # first fragment with content or its stop: the API sends such a start for server tools with no deltas
        # (passed as received), but some gateways send the input in the start AND as deltas, which clients
        # read differently (one keeps the start, one concatenates, one refuses); then the start goes out with
        # `"input": {}`, the one form every client reads alike: the input is the deltas' (as in the core).
        self._start_input: int | None = None  # set by _track when the event it read is such a start
        self._start_hold: tuple[int, list[tuple[bytes | None, list[tuple[str, dict[str, Any]]]]]] | None = None
        self._fed_tool: int | None = None  # the tool block a fragment was fed to in the last event
        self._changed = False
        self._finished = False  # message_stop or error sent: drop everything after
        # An event kept back for one event (see _block): (raw block if forwardable, wire events, block index).
        self._held: tuple[bytes | None, list[tuple[str, dict[str, Any]]], int] | None = None
        self._ended = False
        self._raised = False
        self.error: StreamError | None = None
        """The error the stream ended with (then sent as an ``error`` event), if any."""
        self.repair_counts: Counter[str] = Counter()
        """Repairs by kind (counted even past the bound on kept :attr:`repairs`)."""
        self.dropped_bytes = 0
        """Input bytes received after the message ended (not sent on)."""

    @property
    def repairs(self) -> list[Repair]:
        """The core's repairs followed by this rewriter's own (``sse_framing``), bounded."""
        return [*self._parser.repairs, *self._own]

    @property
    def message(self) -> dict[str, Any]:
        """The message read from the input so far, without its content (ids, model, block types, stop
        reason and usage; see ``MessageParser(keep_content=False)``): the rewriter keeps no content."""
        return self._parser.message

    @property
    def complete(self) -> bool:
        """True once the message has stopped (possibly completed at ``end()``)."""
        return self._parser.complete

    @property
    def rewritten(self) -> bool:
        """Whether any output byte differs from the input (false for a byte-for-byte pass-through)."""
        return self._changed

    def feed(self, data: bytes, /) -> bytes:
        """The output bytes for the next input bytes."""
        out = self._feed(data)
        if self._raise and self.error is not None and not self._raised:
            raise self._raised_error(out)
        return out

    def end(self) -> bytes:
        """The last output bytes: what completes the stream, or its ``error`` event."""
        out = self._end()
        if self._raise and self.error is not None and not self._raised:
            raise self._raised_error(out)
        return out

    def _raised_error(self, output: bytes) -> StreamError:
        error = self.error
        assert error is not None
        self._raised = True
        error.output = output  # type: ignore[attr-defined]
        return error

    def _feed(self, data: bytes, /) -> bytes:
        if self._ended:
            raise UsageError("feed() called after end()")
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise UsageError(f"feed() takes bytes, got {type(data).__name__}")
            data = bytes(data)
        if self._finished:
            self.dropped_bytes += len(data)
            return b""
        out: list[bytes] = []
        buf = self._buf
        if not buf and data[-2:] == b"\n\n" and 13 not in data:
            # The common case: whole LF-framed events. One split, no copy into the buffer.
            blocks = data.split(b"\n\n")
            tail = blocks.pop()
            for block in blocks:
                if self._finished:
                    self.dropped_bytes += len(block) + 2
                    continue
                self._block(block + b"\n\n", out)
                self._position += len(block) + 2
            if tail and not self._finished:
                buf += tail
            elif tail:
                self.dropped_bytes += len(tail)
            return b"".join(out)
        buf += data
        start = 0
        search_from = self._scan
        while not self._finished:
            match = _BLANK.search(buf, search_from)
            if match is None:
                break
            end = match.end()
            if end == len(buf) and buf[end - 1] == 13:  # a CR that may be half of a CRLF: wait
                break
            self._block(bytes(buf[start:end]), out)
            self._position += end - start
            start = search_from = end
        if self._finished:
            self.dropped_bytes += len(buf) - start
            buf.clear()
        else:
            del buf[:start]
            # A blank line is at most 4 bytes (CRLF CRLF): rescan only the last 3, so each byte is scanned
            # a bounded number of times (amortised O(n) whatever the chunking).
            self._scan = max(len(buf) - 3, 0)
            if len(buf) > self._limit:
                self._fail(
                    BufferLimitError(
                        f"an unfinished SSE event exceeded max_event_bytes={self._limit} "
                        f"(event starting at byte {self._position})",
                        limit=self._limit,
                        offset=self._position,
                        snapshot=self._parser.message,
                    ),
                    out,
                )
                buf.clear()
        return b"".join(out)

    def _end(self) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        out: list[bytes] = []
        if self._finished:
            return b""
        rest = bytes(self._buf)
        self._buf.clear()
        parser = self._parser
        try:
            events = parser.feed(rest) if rest else []
            events += parser.end()
        except StreamError as exc:
            self._fail(exc, out)
            return b"".join(out)
        if rest.strip(b"\r\n") or events:
            self._changed = True
            self._reencode(events, out)
        else:
            self._flush_held(out)
            out.append(rest)  # only line breaks: harmless to any consumer, and keeps clean streams identical
        self._report()
        return b"".join(out)

    # -- internals ------------------------------------------------------------------------------------------

    def _block(self, block: bytes, out: list[bytes]) -> None:
        parser = self._parser
        before = len(parser.repairs)
        try:
            events = parser.feed(block)
        except StreamError as exc:
            self._flush_held(out)
            self._fail(exc, out, block)
            return
        clean = _is_canonical(block) and len(parser.repairs) == before
        self._fed_tool = None
        self._start_input = None
        unchanged, encoded, closed = self._track(events)
        if self._fed_tool is not None:
            broken = parser.broken_tool_input(self._fed_tool)
            if broken is not None:
                # This fragment makes the input impossible to parse: clients that parse each fragment (the
                # SDKs) would fail on it with their own error; they get the error event instead.
                self._flush_held(out)
                self._fail(broken, out)
                return
        if not clean and not encoded and _is_ping(block):
            encoded = [("ping", {"type": "ping"})]  # the parser makes no event of it; clients' idle timers need it
        part = (block if clean and unchanged else None, encoded)
        if self._start_hold is not None:
            index, parts = self._start_hold
            decision = _start_decision(index, events, padded=any(_blank(e) for _, p in parts[1:] for e in p))
            if decision is None:  # an empty fragment of the held block: keep holding
                parts.append(part)
                return
            self._start_hold = None
            if decision != "keep":
                self._changed = True
            if decision == "restate":  # the blanks carry nothing, and clients that parse each fragment fail on them
                self._emit_start_hold(parts[:1], replace=True, out=out)
                start = parts[0][1][-1][1]["content_block"]["input"]
                out.append(encode_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(start, ensure_ascii=False)}}))
            else:
                self._emit_start_hold(parts, replace=decision == "replace", out=out)
        if self._start_input is not None and closed is None:
            self._flush_held(out)
            self._start_hold = (self._start_input, [part])
            if not clean:
                self._changed = True
                self._report()
            return
        held = self._held
        if held is not None and closed == held[2] and self._tools[closed].continued:
            # This fragment only continued an escape cut in the held one: hold both until it is judged.
            raw = held[0] + block if held[0] is not None and clean and unchanged else None
            self._held = (raw, held[1] + encoded, closed)
            return
        self._flush_held(out)
        if not clean:
            self._changed = True
            if len(parser.repairs) == before and block.strip(b"\r\n"):
                self._own_repair(
                    Repair("sse_framing", "re-encoded an event whose SSE framing was not canonical", self._position)
                )
            self._report()
        elif not unchanged:
            self._changed = True
        if closed is not None:
            # A tool fragment ended just after its top-level object closed: keep this event back for one
            # event, in case the next fragment opens a second object that must be merged into it.
            self._held = (block if clean and unchanged else None, encoded, closed)
            return
        if clean and unchanged:
            out.append(block)
        else:
            out.extend(encode_event(name, payload) for name, payload in encoded)

    def _emit_start_hold(self, parts: list[tuple[bytes | None, list[tuple[str, dict[str, Any]]]]], *,
                         replace: bool, out: list[bytes]) -> None:
        """Send the held tool start (with ``"input": {}`` when ``replace``) and the events held after it."""
        for k, (raw, encoded) in enumerate(parts):
            if k == 0 and replace:
                for name, payload in encoded:
                    if name == "content_block_start":
                        payload = {**payload, "content_block": {**payload["content_block"], "input": {}}}
                    out.append(encode_event(name, payload))
            elif raw is not None:
                out.append(raw)
            else:
                out.extend(encode_event(name, payload) for name, payload in encoded)

    def _flush_held(self, out: list[bytes]) -> None:
        if self._start_hold is not None:
            _, parts = self._start_hold
            self._start_hold = None
            self._emit_start_hold(parts, replace=False, out=out)
        held = self._held
        if held is None:
            return
        self._held = None
        raw, encoded, _ = held
        if raw is not None:
            out.append(raw)
        else:
            out.extend(encode_event(name, payload) for name, payload in encoded)

    def _patch_held(self, index: int, patch: Callable[[list[str]], list[str]]) -> None:
        # The next fragment of block `index` showed that the held fragments must change (see
        # ToolInputFixer): patch them; the held events are then re-encoded. Fragments no longer held cannot
        # change (then the SDK's parser rejects the JSON: an exception, never a silent truncation).
        held = self._held
        if held is None or held[2] != index:
            return
        _, encoded, _ = held
        payloads = [p for name, p in encoded if name == "content_block_delta" and p.get("index") == index]
        fragments = [p["delta"].get("partial_json") for p in payloads]
        if not payloads or not all(type(f) is str for f in fragments):
            return
        for payload, fragment in zip(payloads, patch(fragments), strict=True):
            payload["delta"] = {**payload["delta"], "partial_json": fragment}
        self._held = (None, encoded, index)
        self._changed = True

    def _reencode(self, events: Sequence[Any], out: list[bytes]) -> None:
        self._flush_held(out)
        _, encoded, _ = self._track(events)
        out.extend(encode_event(name, payload) for name, payload in encoded)

    def _track(self, events: Sequence[Any]) -> tuple[bool, list[tuple[str, dict[str, Any]]], int | None]:
        """Follow the stream's structure through ``events``. Returns whether they may be forwarded as
        received (no tool fragment had to change, no block had to be started), their wire events as
        ``(name, payload)`` pairs (encoded only when needed: O(1) per clean event), and the index of a tool
        block whose fragment ended just after its top-level object closed (or None)."""
        encoded: list[tuple[str, dict[str, Any]]] = []
        unchanged = True
        closed: int | None = None
        for event in events:
            kind = event.type
            if kind == "message_start":
                self._message_started = True
                encoded.append((kind, {"type": kind, "message": event.message.to_dict()}))
            elif kind == "content_block_start":
                self._start_message(encoded)
                self._blocks.add(event.index)
                block = event.content_block.to_dict()
                if _is_tool_block(block) and block.get("input", MISSING) not in (MISSING, {}):
                    self._start_input = event.index  # held back until its deltas show what it is (see _block)
                encoded.append((kind, {"type": kind, "index": event.index, "content_block": block}))
            elif kind == "content_block_delta":
                self._start_message(encoded)
                index = event.index
                delta: dict[str, Any] = event.delta.to_dict()
                if index not in self._blocks:
                    dtype = delta.get("type")
                    if dtype == "input_json_delta":
                        # Tool input for a block that never started: the core refuses it at the block's stop (a
                        # tool call without id and name cannot be run); nothing of it is sent before the error.
                        unchanged = False
                        continue
                    self._blocks.add(index)
                    template = _SYNTHESIZED_BLOCKS.get(dtype) if type(dtype) is str else None
                    if template is not None:
                        unchanged = False
                        encoded.append(("content_block_start", {
                            "type": "content_block_start", "index": index, "content_block": dict(template)}))
                if delta.get("type") == "input_json_delta" and type(delta.get("partial_json")) is str:
                    fixer = self._tools.get(index)
                    if fixer is None:
                        fixer = self._tools[index] = ToolInputFixer()
                    fragment = delta["partial_json"]
                    self._fed_tool = index
                    fixed = fixer.feed(fragment)
                    if fixer.unclose_previous:
                        self._patch_held(index, _remove_last_brace)
                    if fixer.unescape_previous:
                        self._patch_held(index, _double_backslash_at(fixer.unescape_previous))
                    if fixed is not fragment:
                        unchanged = False
                        delta = {**delta, "partial_json": fixed}
                    closed = index if fixer.closed_at_end or fixer.escape_at_end else None
                encoded.append((kind, {"type": kind, "index": index, "delta": delta}))
            elif kind == "content_block_stop":
                fixer = self._tools.pop(event.index, None)
                held = fixer.finish() if fixer is not None else ""
                if held:
                    unchanged = False
                    encoded.append(("content_block_delta", {
                        "type": "content_block_delta", "index": event.index,
                        "delta": {"type": "input_json_delta", "partial_json": held}}))
                encoded.append((kind, {"type": kind, "index": event.index}))
                closed = None
            elif kind == "message_delta":
                self._start_message(encoded)
                encoded.append((kind, {
                    "type": kind, "delta": event.delta.to_dict(), "usage": event.usage.to_dict()}))
                closed = None
            elif kind == "message_stop":
                self._finished = True
                encoded.append((kind, {"type": kind}))
                closed = None
            elif kind in ("text", "thinking", "signature", "citation", "input_json", "compaction"):
                continue  # derived events: their wire event is the content_block_delta beside them
            else:  # an event the core passes through unknown: send it as it was decoded
                encoded.append((kind, event.data.to_dict()))
                closed = None
        return unchanged, encoded, closed

    def _start_message(self, out: list[tuple[str, dict[str, Any]]]) -> None:
        # The core tolerates events before message_start (and synthesizes the message); a consumer like the
        # SDK does not, so the re-encoded stream gets the message_start the core assumed.
        if not self._message_started:
            self._message_started = True
            out.append(("message_start", {"type": "message_start", "message": dict(_EMPTY_MESSAGE)}))

    def _fail(self, exc: StreamError, out: list[bytes], block: bytes | None = None) -> None:
        self.error = exc
        self._finished = True
        self._flush_held(out)
        if exc.events:
            self._changed = True
            self._reencode(exc.events, out)
        if isinstance(exc, APIStreamError) and block is not None and _is_canonical(block) and block.startswith(
                b"event: error\n"):
            exc.wire_event = block  # type: ignore[attr-defined]  # the upstream's own error event, as sent
        self._report()
        if self._raise:
            return  # the caller decides what the client sees (the boundary may retry)
        event = error_event(exc)
        if event is not getattr(exc, "wire_event", None):
            self._changed = True
        out.append(event)

    def _own_repair(self, repair: Repair) -> None:
        self.repair_counts[repair.kind] += 1
        if len(self._own) < _MAX_KEPT_REPAIRS:
            self._own.append(repair)
        if self._on_repair is not None:
            self._on_repair(repair)

    def _report(self) -> None:
        repairs = self._parser.repairs
        while self._reported < len(repairs):
            repair = repairs[self._reported]
            self._reported += 1
            self.repair_counts[repair.kind] += 1
            if self._on_repair is not None:
                self._on_repair(repair)
