# Keeping credentials out of captures: the one scrubber every capture path uses (CaptureWriter, so
# `mendstream.stream(capture=...)`, `mendstream.httpx`, `mendstream capture`; the proxy's `--capture DIR`;
# `RepairTransport(capture=DIR)`). By name: headers, query parameters and JSON fields named like a secret.
# By value: strings that look like credentials (SECRET_VALUE_PATTERNS, `Basic` values that decode to
# user:password, patterns added with add_secret_pattern), in the URL, headers, request body, response body
# and error descriptions. No I/O and no HTTP library here.
#
# Theory of operation (response bodies). BodyScrubber is sans-IO: body bytes in, the same bytes out with
# every secret masked, exactly as long (offsets and chunk sizes stay true) and still valid SSE and JSON: only
# bytes inside JSON strings are masked, an escape such as \u0041 as a whole, so a masked capture replays to
# a message of the same shape. The body is cut into segments (an SSE line, or an AWS event-stream frame whose
# event JSON is decoded from base64 and re-encoded, CRC and all, when masked). Each JSON string is decoded
# (escapes undone) into a piece that remembers where each of its bytes came from. A secret can be streamed
# in pieces, so the pieces of one content block (text, thinking, tool input) are scanned as one text: a
# unit per block, fed delta by delta. A unit decides a stretch of its text once nothing after it can change
# a match there. Every built-in pattern matches a run of token characters ([A-Za-z0-9_-./+=~]), perhaps
# after a keyword and a short gap (`Bearer `, `Basic `, `aws_secret_access_key = `), so a unit only holds
# back the run its text ends in (from such a keyword before it): usually a few bytes. A run longer than
# 2 x OVERLAP is decided up to OVERLAP bytes from its end (longer than any pattern's match, so no match can
# straddle the cut undecided). A tool input's JSON text is scanned a second time one level down: its strings
# decoded, each scanned on its own, and a string under a member named like a secret (`"api_key": ...`)
# masked whole.
#
# Nothing leaves the scrubber before every unit has decided every byte in it: segments are released in
# order, up to the oldest one a unit still holds. What is held is bounded by `hold_limit` (4 MiB; plus the
# line being received, at most LINE_LIMIT): past it, the unit holding the oldest segment decides all but
# its last OVERLAP bytes, and if that is not enough it masks what it holds undecided and keeps masking the
# run it was in until the run ends (fail closed, counted in `forced_bytes`). A line longer than LINE_LIMIT
# is not held whole: it is scanned as it arrives, as JSON text on its own. At the end of the body a unit
# still open (a block that never stopped: a cut stream, a capture stopped early or at its size cap) masks
# the run it ends in if it looks like a cut credential. Work is linear in the input: every byte is decoded
# once and scanned a bounded number of times (all regex quantifiers are bounded; the run bookkeeping is
# O(piece)).
from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import zlib
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mendstream.core.eventstream import EventStreamDecoder, EventStreamMessage, looks_like_event_stream
from mendstream.errors import EventStreamError

__all__ = [
    "DEFAULT_HOLD_LIMIT",
    "LINE_LIMIT",
    "OVERLAP",
    "SECRET_VALUE_PATTERNS",
    "BodyScrubber",
    "add_secret_pattern",
    "is_secret_name",
    "is_secret_query_name",
    "redact_secret_bytes",
    "redact_secret_values",
    "scrub_body",
    "scrub_headers",
    "scrub_json",
    "scrub_url",
]

# -- by name -------------------------------------------------------------------------------------------------

# Words that make a header or field name a secret. Names are split into lowercase words on any
# non-alphanumeric character and on camelCase humps, so `x-api-key`, `apiKey`, `AWS_SECRET_ACCESS_KEY`,
# `Proxy-Authorization` and `set-cookie` all match while `max_tokens` or `input_tokens` do not ("tokens",
# plural, is how the Messages API counts usage; a credential is "token").
_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "secrets",
        "session",
        "token",
    }
)
# Query parameters carry credentials under short names that are harmless as JSON field names (a tool
# schema's "key", a thinking block's "signature"), so the URL has its own, wider list.
_SECRET_QUERY_NAMES = frozenset(
    {
        "key",
        "sig",
        "signature",
        "token",
        "code",
        "secret",
        "password",
        "pass",
        "pwd",
        "auth",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
    }
)
# "<something> key" is a secret (api_key, access-key, private_key); a bare field named "key" is not, so a
# tool schema with a "key" property survives.
_KEY_SUFFIX_WORDS = frozenset({"key", "keys"})
# A name ending in one of these describes a secret without holding one (credentialType, token_type).
_DESCRIPTIVE_SUFFIX_WORDS = frozenset({"type", "types", "kind", "method", "scheme"})
# Messages API fields named like secrets that are not credentials: kept, so a capture keeps the message.
_API_FIELDS = frozenset({"fallback_credit_token"})
_WORD_SPLIT = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """True if a header, query parameter or JSON field called ``name`` probably holds a secret.

    Words such as ``token``, ``secret``, ``password``, ``auth``, ``cookie``, ``session``, and
    ``<something> key`` (``api_key``, ``access-key``), split on punctuation and camelCase humps; not a name
    that only describes one (ending in ``type``, ``kind``, ``method``, ``scheme``: ``token_type``), nor the
    Messages API's ``fallback_credit_token``.
    """
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    if not words or words[-1] in _DESCRIPTIVE_SUFFIX_WORDS or name in _API_FIELDS:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return len(words) >= 2 and words[-1] in _KEY_SUFFIX_WORDS


def is_secret_query_name(name: str) -> bool:
    """True if a URL query parameter called ``name`` probably holds a credential (``key``, ``sig``, ...)."""
    return name.lower() in _SECRET_QUERY_NAMES or is_secret_name(name)


# -- by value ------------------------------------------------------------------------------------------------

# Credentials recognised by their value, whatever field, header or text they appear in. Every quantifier is
# bounded, so a scan is linear in the text's length, and every match is a run of token characters
# ([A-Za-z0-9_-./+=~], _TOKEN_CHARS below) or such a run after "Bearer"/"Basic" and up to 8 spaces or tabs:
# BodyScrubber relies on both to find secrets split across events. No match is longer than OVERLAP.
SECRET_VALUE_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{8,400}",  # Anthropic API / admin keys
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
    # AWS secret access keys: 40 characters of base64's alphabet standing alone, with both cases and a digit
    # (a hex digest or a URL path of words is not one; 99.9% of keys are). Any 40 such characters after a
    # label (aws_secret_access_key = ..., "SecretAccessKey": "...") are caught by _LABELLED below.
    r"(?<![A-Za-z0-9+/=])(?=[A-Za-z0-9+/]{0,39}[A-Z])(?=[A-Za-z0-9+/]{0,39}[a-z])(?=[A-Za-z0-9+/]{0,39}[0-9])"
    r"[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])",
    r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{36,255}",  # GitHub tokens: personal, OAuth, user, server, refresh
    r"github_pat_[A-Za-z0-9_]{22,255}",  # GitHub fine-grained tokens
    r"(?<![A-Za-z0-9])sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,400}",  # OpenAI project / service keys
    r"(?<![A-Za-z0-9])(?:sk|rk)_live_[A-Za-z0-9]{16,247}",  # Stripe live keys
    r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,250}",  # Slack tokens
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{4,2048}\.[A-Za-z0-9_\-]{4,8192}\.[A-Za-z0-9_\-]{0,1024}",  # JWTs
    r"(?i:bearer)[ \t]{1,8}(?=[A-Za-z0-9._~+/=\-]{0,2047}[0-9._~+/=\-])[A-Za-z0-9._~+/=\-]{8,2048}",
)
# `Basic` credentials are base64("user:password"); they are masked only when they decode to that shape
# (printable text with a colon after at least one character), so prose ("Basic understanding") survives.
# Padding may be missing; the scheme is case-insensitive. Only the credential is masked, not the word.
_BASIC_PATTERN = r"(?<![A-Za-z0-9])(?i:basic)[ \t]{1,8}([A-Za-z0-9+/]{4,2048}={0,2})"
_BASIC = re.compile(_BASIC_PATTERN)
# A value after a label that names it: any 40 base64 characters after an AWS secret key's label. Only the
# value is masked. The label and the value are joined by at most 8 of [ \t"':=] (see _KEYWORD_GAP).
_LABELLED_PATTERN = (
    r"(?i:aws_?secret_?access_?key|secret_?access_?key|aws_?secret_?key|aws_?secret)"
    r"[ \t\"':=]{1,8}([A-Za-z0-9+/]{40})(?![A-Za-z0-9+/=])"
)
_LABELLED = re.compile(_LABELLED_PATTERN)


def _basic_group() -> str:
    return _BASIC_PATTERN.replace("([A-Za-z0-9+/]", "(?P<basic>[A-Za-z0-9+/]")


def _labelled_group() -> str:
    return _LABELLED_PATTERN.replace("([A-Za-z0-9+/]{40})", "(?P<labelled>[A-Za-z0-9+/]{40})")
_REDACTED = "[REDACTED]"
_rules_lock = threading.Lock()
_extra_patterns: list[str] = []

OVERLAP = 12 * 1024
"""Longer than any built-in pattern's longest match (a JWT: 11,275 characters): a unit decides a long run
up to this many bytes from its end. Patterns added with :func:`add_secret_pattern` must not match more."""
LINE_LIMIT = 1024 * 1024
"""An SSE line (an event's data) longer than this is scanned as it arrives instead of held whole."""
DEFAULT_HOLD_LIMIT = 4 * 1024 * 1024
"""Most body bytes a BodyScrubber holds back by default (see :class:`BodyScrubber`)."""
_RUN_LIMIT = 2 * OVERLAP
_LONG_LINE_BATCH = 64 * 1024  # a long line goes to its unit in pieces of at least this (fewer, cheaper calls)
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./+=~"


def _compile(patterns: list[str]) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    """The value patterns as one regex for text, and for bytes with the Basic and labelled ones added (as
    groups ``basic`` and ``labelled``: one scan finds every kind)."""
    text = "|".join(f"(?:{p})" for p in patterns)
    every = f"{text}|{_basic_group()}|{_labelled_group()}"
    return re.compile(text), re.compile(every.encode("ascii"))


_SECRET_VALUE, _SECRET_VALUE_BYTES = _compile(list(SECRET_VALUE_PATTERNS))


def add_secret_pattern(pattern: str) -> None:
    """Also scrub every value matching ``pattern`` (an ASCII regular expression) from every later capture.

    The hook for custom credential formats (an internal gateway's keys, a tenant id). Keep the pattern
    linear (start it with a literal, bound its quantifiers) and its matches at most :data:`OVERLAP` long. A
    value split across events (streamed in pieces) is caught when it consists of the token characters
    ``[A-Za-z0-9_-./+=~]``, as every built-in pattern does; within one event or header anything is.
    Raises ``re.error`` for an invalid pattern.
    """
    global _SECRET_VALUE, _SECRET_VALUE_BYTES
    re.compile(pattern)
    pattern.encode("ascii")
    with _rules_lock:
        _extra_patterns.append(pattern)
        _SECRET_VALUE, _SECRET_VALUE_BYTES = _compile([*SECRET_VALUE_PATTERNS, *_extra_patterns])


def _is_basic_credential(token: bytes) -> bool:
    token = token.rstrip(b"=")
    if len(token) % 4 == 1:
        return False
    try:
        text = base64.b64decode(token + b"=" * (-len(token) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    return text.find(":") > 0 and text.isprintable()


def _mask(length: int) -> bytes:
    """A mask of exactly ``length`` bytes (``[REDACTED]`` padded or cut), so offsets stay true."""
    if length >= len(_REDACTED):
        return b"[REDACTED" + b"*" * (length - len(_REDACTED)) + b"]"
    return b"*" * length


def _value_spans(data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """The spans of ``data[start:end]`` that hold a credential (``end`` is the end of the text for lookarounds)."""
    end = len(data) if end is None else end
    spans: list[tuple[int, int]] = []
    for m in _SECRET_VALUE_BYTES.finditer(data, start, end):
        basic = m.group("basic")
        if basic is not None:
            if _is_basic_credential(bytes(basic)):
                spans.append(m.span("basic"))
        elif m.group("labelled") is not None:
            spans.append(m.span("labelled"))
        else:
            spans.append(m.span())
    return spans


def redact_secret_bytes(data: bytes) -> bytes:
    """``data`` with every credential-looking value masked by a mask of the same length.

    A one-shot scan of bytes that are not a stream (a body goes through :class:`BodyScrubber`, which also
    decodes JSON strings and joins values streamed in pieces)."""
    out = bytearray(data)
    for start, end in _value_spans(data):
        out[start:end] = _mask(end - start)
    return bytes(out)


def redact_secret_values(text: str) -> str:
    """Replace substrings that look like credentials (see ``SECRET_VALUE_PATTERNS``, ``Basic`` values and
    patterns added with :func:`add_secret_pattern`) with ``[REDACTED]``."""
    text = _SECRET_VALUE.sub(_REDACTED, text)
    text = _LABELLED.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + _REDACTED, text)
    return _BASIC.sub(
        lambda m: m.group(0)[: m.start(1) - m.start(0)] + _REDACTED
        if _is_basic_credential(m.group(1).encode("ascii"))
        else m.group(0),
        text,
    )


_BASIC_HEADER = re.compile(r"\A\s*(basic)[ \t]+\S", re.I)


def scrub_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """Headers without secrets, names lowercased; repeated headers are joined with ``", "``.

    Headers named like a secret are dropped; in the others credential-looking values are redacted, and a
    value that is a ``Basic`` credential (``Basic <anything>``, whatever the header's name) is redacted
    whole."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if is_secret_name(key):
            continue
        basic = _BASIC_HEADER.match(value)
        value = f"{basic.group(1)} {_REDACTED}" if basic else redact_secret_values(value)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def scrub_url(url: str) -> str:
    """``url`` without userinfo, without query parameters named like credentials (``key``, ``sig``,
    ``token``, ``signature``, ``X-Amz-Signature``, ...), and with credential-looking values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, redact_secret_values(v)) for k, v in pairs if not is_secret_query_name(k)])
    return urlunsplit((parts.scheme, netloc, redact_secret_values(parts.path), query, parts.fragment))


def scrub_json(value: Any) -> Any:
    """A deep copy of a JSON-like value with secret-named object fields removed and key-like strings redacted.

    Runs in O(size of ``value``) with an explicit stack, so any nesting depth works (no RecursionError).
    Non-JSON leaves (e.g. SDK sentinels) are turned into their ``repr``.
    """
    root: list[Any] = [None]
    # Each entry: (container to fill, slot in it, value to copy into that slot).
    todo: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while todo:
        target, slot, item = todo.pop()
        if isinstance(item, Mapping):
            copy: dict[str, Any] = {}
            target[slot] = copy
            for k, v in item.items():
                if not is_secret_name(str(k)):
                    copy[str(k)] = None  # keep the original field order
                    todo.append((copy, str(k), v))
        elif isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            target[slot] = items
            todo.extend((items, i, v) for i, v in enumerate(item))
        elif isinstance(item, str):
            target[slot] = redact_secret_values(item)
        elif item is None or isinstance(item, bool | int | float):
            target[slot] = item
        else:
            target[slot] = redact_secret_values(repr(item))
    return root[0]


# -- the body scrubber: where bytes come from ----------------------------------------------------------------


class _Counters:
    __slots__ = ("forced", "masked")

    def __init__(self) -> None:
        self.masked = 0  # bytes masked
        self.forced = 0  # of those, masked undecided because the hold limit was reached (fail closed)


class _Segment:
    """Body bytes not yet released: an SSE line (with its line end) or an event-stream frame. ``data`` is
    what masks apply to (a frame's event JSON); ``output()`` the bytes to write."""

    __slots__ = ("counters", "data", "frame", "seq")

    def __init__(self, seq: int, data: bytes, counters: _Counters, frame: _Frame | None = None) -> None:
        self.seq = seq
        self.data = bytearray(data)
        self.counters = counters
        self.frame = frame

    def mask(self, start: int, end: int) -> None:
        if end > start:
            self.data[start:end] = _mask(end - start)
            self.counters.masked += end - start
            if self.frame is not None:
                self.frame.masked = True

    def first_seq(self) -> int:
        return self.seq

    def output(self) -> bytes:
        if self.frame is not None:
            return self.frame.encode(self.data)
        return bytes(self.data)


class _Piece:
    """Decoded text (``data``) and where each byte came from in ``parent`` (a _Segment's data, or another
    piece's text: a tool input's JSON is itself decoded from event JSON strings). Decoded byte ``d`` starts
    at parent offset ``raw[k] + d - dec[k]`` for the last run ``k`` with ``dec[k] <= d`` (a run is a stretch
    without escapes, or one escape); ``end`` is where the last byte ends. Byte ranges are contiguous in the
    parent, so a decoded range maps to one parent range, whole escapes included."""

    __slots__ = ("data", "dec", "end", "parent", "raw")

    def __init__(self, data: bytes, parent: _Segment | _Piece, dec: list[int], raw: list[int], end: int) -> None:
        self.data = data
        self.parent = parent
        self.dec = dec
        self.raw = raw
        self.end = end

    def at(self, d: int) -> int:
        if d >= len(self.data):
            return self.end
        k = bisect_right(self.dec, d) - 1
        return self.raw[k] + d - self.dec[k]

    def mask(self, start: int, end: int) -> None:
        if end > start:
            self.parent.mask(self.at(start), self.at(end))

    def first_seq(self) -> int:
        return self.parent.first_seq()

    def sub(self, start: int, end: int) -> _Piece:
        """Bytes ``start:end`` of this piece's text as a piece of their own (its parent: this piece)."""
        return _Piece(self.data[start:end], self, [0], [start], end)


class _SplitEscape:
    """One decoded byte from an escape that two pieces share (``\\u00`` at the end of one delta, ``41`` at
    the start of the next)."""

    __slots__ = ("data", "parts")

    def __init__(self, data: bytes, parts: list[tuple[_Piece, int, int]]) -> None:
        self.data = data
        self.parts = parts

    def mask(self, start: int, end: int) -> None:
        if end > start:
            for piece, a, b in self.parts:
                piece.mask(a, b)

    def first_seq(self) -> int:
        return min(piece.first_seq() for piece, _, _ in self.parts)


_AnyPiece = _Piece | _SplitEscape
_ESCAPES = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("b"): 8, ord("f"): 12}
# An escape: \uXXXX; an invalid \u with fewer hex digits (up to the first other byte); any other \X.
_ESCAPE = re.compile(rb"\\(?:u[0-9A-Fa-f]{0,4}|.)", re.S)
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _escape_byte(escape: bytes) -> int:
    """The byte a whole JSON escape stands for in scanned text: ASCII as itself, anything else (and an
    invalid ``\\u``) as 0xFF, which no pattern matches and which separates words as any non-ASCII
    character does. An invalid escape ``\\q`` stands for ``q``, so that it cannot hide a credential."""
    if escape[1] == 0x75:  # u
        if len(escape) == 6:
            code = int(escape[2:], 16)
            return code if code < 0x80 else 0xFF
        return 0xFF
    return _ESCAPES.get(escape[1], escape[1])


def _escape_width(have: bytes) -> int | None:
    """How long the escape at the start of ``have`` is (see _ESCAPE), or None if ``have`` is too short to
    tell (the escape is cut by the end of a piece)."""
    if len(have) < 2:
        return None
    if have[1] != 0x75:
        return 2
    digits = 0
    while digits < 4 and 2 + digits < len(have) and have[2 + digits] in _HEX:
        digits += 1
    if digits == 4 or 2 + digits < len(have):
        return 2 + digits
    return None


def _decode_string(parent: _Segment | _Piece, data: bytes | bytearray, start: int, end: int) -> _Piece:
    """The piece for the JSON string content ``data[start:end]`` of ``parent`` (escapes decoded)."""
    raw = bytes(data[start:end])
    if b"\\" not in raw:
        return _Piece(raw, parent, [0], [start], end)
    out = bytearray()
    dec: list[int] = []
    offsets: list[int] = []
    pos = 0
    for m in _ESCAPE.finditer(raw):
        if m.start() > pos:
            dec.append(len(out))
            offsets.append(start + pos)
            out += raw[pos : m.start()]
        dec.append(len(out))
        offsets.append(start + m.start())
        out.append(_escape_byte(m.group()))
        pos = m.end()
    if pos < len(raw):
        dec.append(len(out))
        offsets.append(start + pos)
        out += raw[pos:]
    return _Piece(bytes(out), parent, dec or [0], offsets or [start], end)


# -- the body scrubber: units that scan text fed in pieces ---------------------------------------------------

# A keyword a credential follows after a gap (see _BASIC_PATTERN, _LABELLED_PATTERN, the Bearer pattern).
_KEYWORD_GAP = re.compile(rb"(?i:bearer|basic|access_?key|secret_?key|aws_?secret)[ \t\"':=]{1,8}\Z")
_CUT_PREFIX = re.compile(rb"(?<![A-Za-z0-9])(?:sk-|AKIA|ASIA|AIza|gh[pousr]_|github_pat_|eyJ|xox[abposr]|[sr]k_live)")


def _looks_cut(run: bytes) -> bool:
    """Whether ``run`` (the token characters a text was cut in) may be the start of a credential: one of
    the patterns' literal starts, or 8 characters or more with letters and digits, or with an uppercase
    letter after the first character and a lowercase one (a word of prose is neither)."""
    if _CUT_PREFIX.search(run) is not None:
        return True
    if len(run) < 8:
        return False
    lower = any(97 <= c <= 122 for c in run)
    upper = any(65 <= c <= 90 for c in run[1:])
    digit = any(48 <= c <= 57 for c in run)
    return ((lower or upper) and digit) or (lower and upper)


class _TextUnit:
    """Scans a text fed in pieces (one content block's deltas, one JSON string) for credentials and masks
    them in the pieces they came from. Holds back only what is undecided: the run of token characters the
    text ends in, from a ``Bearer``/``Basic`` keyword before it if any, and at most 2 x OVERLAP bytes of a
    longer run (see the module comment). ``mask_all`` masks everything fed (a value named like a secret)."""

    __slots__ = ("buf", "consumed", "counters", "mask_all", "pieces", "poisoned", "starts")

    def __init__(self, counters: _Counters, *, mask_all: bool = False) -> None:
        self.counters = counters
        self.mask_all = mask_all
        self.buf = bytearray()  # the undecided text
        self.pieces: list[_AnyPiece] = []  # the pieces it came from
        self.starts: list[int] = []  # text offset (since this unit began) of each piece's first byte
        self.consumed = 0  # text offset of buf[0]
        self.poisoned = False  # masked undecided mid-run (fail closed): mask the rest of that run too

    def first_seq(self) -> int | None:
        return self.pieces[0].first_seq() if self.pieces else None

    def feed(self, piece: _AnyPiece) -> None:
        data = piece.data
        if not data:
            return
        if self.mask_all:
            piece.mask(0, len(data))
            return
        skip = 0
        if self.poisoned:
            skip = len(data) - len(data.lstrip(_TOKEN_CHARS))
            piece.mask(0, skip)
            self.counters.forced += skip
            if skip == len(data):
                return
            self.poisoned = False
        self.pieces.append(piece)
        self.starts.append(self.consumed + len(self.buf) - skip)
        self.buf += data[skip:] if skip else data
        trailing = len(data) - len(data.rstrip(_TOKEN_CHARS))
        if trailing < len(data) - skip:  # a non-token byte in this piece: the run ending the text starts here
            run = len(self.buf) - trailing
            gap = _KEYWORD_GAP.search(self.buf, max(0, run - 32), run)
            if gap is not None:  # "Bearer  <run>": undecided from the keyword's own run on
                run = gap.start()
                while run > 0 and self.buf[run - 1] in _TOKEN_CHARS:
                    run -= 1
            self._decide(run)
        elif len(self.buf) > _RUN_LIMIT:
            self._decide_long_run()

    def end(self, *, cut: bool = False) -> None:
        """The text ends here. With ``cut`` (the body was cut, not finished) a final run that looks like the
        start of a credential is masked rather than decided as it stands."""
        if self.pieces:
            if cut:
                run_start = len(self.buf.rstrip(_TOKEN_CHARS))
                gap = _KEYWORD_GAP.search(self.buf, max(0, run_start - 32), run_start)
                if gap is not None or _looks_cut(bytes(self.buf[run_start:])):
                    start = gap.start() if gap is not None else run_start
                    self._decide(start)
                    self._mask(0, len(self.buf))
                    self._drop(len(self.buf))
                    return
            self._decide(len(self.buf))

    def fail_closed(self) -> None:
        """Mask everything undecided (the hold limit was reached), and the rest of the run it ends in."""
        if self.pieces:
            self.poisoned = self.buf[-1:] != b"" and self.buf[-1] in _TOKEN_CHARS
            self.counters.forced += len(self.buf)
            self._mask(0, len(self.buf))
            self._drop(len(self.buf))

    def relieve(self) -> None:
        """Decide all but the last OVERLAP bytes (when the hold limit presses)."""
        if len(self.buf) > OVERLAP:
            self._decide_long_run()

    def _decide(self, cut: int) -> None:
        """Mask the credentials in ``buf[:cut]`` (``cut`` follows a non-token byte, or is the text's end) and
        let those bytes go."""
        if cut <= 0:
            return
        for start, end in _value_spans(self.buf, 0, cut):
            self._mask(start, end)
        self._drop(cut)

    def _decide_long_run(self) -> None:
        """Decide a run too long to hold up to OVERLAP bytes before its end, or before the first match that
        straddles that point (every match is shorter than OVERLAP, so one starting earlier ends in view)."""
        cut = len(self.buf) - OVERLAP
        if cut <= 0:
            return
        spans = sorted(_value_spans(self.buf))
        for start, end in spans:
            if start < cut < end:
                cut = start
                break
        for start, end in spans:
            if end <= cut:
                self._mask(start, end)
        self._drop(cut)

    def _mask(self, start: int, end: int) -> None:
        """Mask ``buf[start:end]`` in the pieces it came from."""
        base = self.consumed
        first = bisect_right(self.starts, base + start) - 1
        for i in range(max(first, 0), len(self.pieces)):
            piece_start = self.starts[i]
            if piece_start >= base + end:
                break
            piece = self.pieces[i]
            lo = max(base + start - piece_start, 0)
            hi = min(base + end - piece_start, len(piece.data))
            piece.mask(lo, hi)

    def _drop(self, cut: int) -> None:
        del self.buf[:cut]
        self.consumed += cut
        keep = bisect_right(self.starts, self.consumed) - 1  # the piece holding the new buf[0] stays
        if not self.buf:
            keep = len(self.pieces)
        if keep > 0:
            del self.pieces[:keep]
            del self.starts[:keep]


_STRING_STOP = re.compile(rb'["\\]')
_STRUCTURE = re.compile(rb"[{}\[\]:,]")
_MAX_DEPTH = 1024  # containers whose names are tracked; deeper ones inherit the last tracked state
_MAX_KEY = 256  # bytes of a member name kept to judge it


class _Container:
    __slots__ = ("expect_key", "is_object", "member_secret", "secret")

    def __init__(self, is_object: bool, secret: bool) -> None:
        self.is_object = is_object
        self.secret = secret  # inside a member named like a secret: every string is masked
        self.expect_key = is_object
        self.member_secret = False  # the current member's name is a secret's


class _JsonUnit:
    """A JSON text fed in pieces (a tool input's ``partial_json`` deltas, or one event line too long to hold):
    each string decoded and scanned on its own (a _TextUnit), the text between strings scanned as text, and
    every string inside a member named like a secret (``"password": ...``, ``"credentials": {...}``) masked
    whole. Lenient: any text is tokenised (quotes start and end strings, backslashes escape)."""

    __slots__ = ("containers", "counters", "depth_overflow", "escape", "in_key", "key", "outside", "string")

    def __init__(self, counters: _Counters) -> None:
        self.counters = counters
        self.outside = _TextUnit(counters)
        self.string: _TextUnit | None = None  # the string being read
        self.in_key = False
        self.key = bytearray()
        self.escape: list[tuple[_Piece, int, int]] = []  # a pending escape's parts, cut by the piece's end
        self.containers: list[_Container] = []
        self.depth_overflow = 0

    def first_seq(self) -> int | None:
        seqs = [piece.first_seq() for piece, _, _ in self.escape]
        for unit in (self.outside, self.string):
            seq = unit.first_seq() if unit is not None else None
            if seq is not None:
                seqs.append(seq)
        return min(seqs) if seqs else None

    def feed(self, piece: _Piece) -> None:
        data = piece.data
        pos = 0
        size = len(data)
        while pos < size:
            string = self.string
            if string is None:
                quote = data.find(b'"', pos)
                stop = size if quote < 0 else quote
                for char in _STRUCTURE.finditer(data, pos, stop):
                    self._structure(char.group()[0])
                self.outside.feed(piece.sub(pos, stop + 1 if quote >= 0 else stop))  # the quote ends a run
                if quote < 0:
                    return
                self._open_string()
                pos = quote + 1
                continue
            if self.escape:
                pos = self._escape(piece, string, pos)
                continue
            m = _STRING_STOP.search(data, pos)
            stop = size if m is None else m.start()
            if stop > pos:
                self._string_bytes(string, piece.sub(pos, stop))
            if m is None:
                return
            if data[stop] == 0x22:  # the closing quote
                self._close_string(string)
                pos = stop + 1
                continue
            pos = self._escape(piece, string, stop)

    def _escape(self, piece: _Piece, string: _TextUnit, start: int) -> int:
        """Read the escape at ``start`` of ``piece`` (or its rest, when ``self.escape`` holds its beginning
        from earlier pieces); return where reading goes on."""
        parts = self.escape
        prefix = b"".join(bytes(p.data[a:b]) for p, a, b in parts)
        have = prefix + bytes(piece.data[start : start + 6])
        width = _escape_width(have)
        if width is None:  # cut by the piece's end: wait for the next one
            parts.append((piece, start, len(piece.data)))
            return len(piece.data)
        need = width - len(prefix)
        value = bytes([_escape_byte(have[:width])])
        decoded: _AnyPiece
        if parts:
            decoded = _SplitEscape(value, [*parts, (piece, start, start + need)])
        else:
            decoded = _Piece(value, piece, [0], [start], start + need)
        self.escape = []
        self._string_bytes(string, decoded)
        return start + need

    def _string_bytes(self, string: _TextUnit, piece: _AnyPiece) -> None:
        string.feed(piece)
        if self.in_key and len(self.key) < _MAX_KEY:
            self.key += piece.data[: _MAX_KEY - len(self.key)]

    def _open_string(self) -> None:
        top = self.containers[-1] if self.containers else None
        self.in_key = top is not None and top.is_object and top.expect_key
        secret = top is not None and not self.in_key and (top.secret or (top.is_object and top.member_secret))
        self.string = _TextUnit(self.counters, mask_all=secret)
        self.key.clear()

    def _close_string(self, string: _TextUnit) -> None:
        string.end()
        self.string = None
        if self.in_key and self.containers:
            self.containers[-1].member_secret = is_secret_name(self.key.decode("latin-1"))
        self.in_key = False

    def _structure(self, char: int) -> None:
        containers = self.containers
        top = containers[-1] if containers else None
        if char in (0x7B, 0x5B):  # { [
            if len(containers) >= _MAX_DEPTH:
                self.depth_overflow += 1
                return
            secret = top is not None and (top.secret or (top.is_object and top.member_secret))
            containers.append(_Container(char == 0x7B, secret))
        elif char in (0x7D, 0x5D):  # } ]
            if self.depth_overflow:
                self.depth_overflow -= 1
            elif containers:
                containers.pop()
        elif top is not None and not self.depth_overflow:
            if char == 0x3A:  # :
                top.expect_key = False
            elif top.is_object:  # ,
                top.expect_key = True
                top.member_secret = False

    def end(self, *, cut: bool = False) -> None:
        if self.string is not None:
            self.string.end(cut=True)  # an unterminated string was cut
            self.string = None
        self.escape = []
        self.outside.end(cut=cut)

    def fail_closed(self) -> None:
        self.outside.fail_closed()
        if self.string is not None:
            self.string.fail_closed()
        for piece, a, b in self.escape:
            piece.mask(a, b)
            self.counters.forced += b - a

    def relieve(self) -> None:
        self.outside.relieve()
        if self.string is not None:
            self.string.relieve()


_Unit = _TextUnit | _JsonUnit


# -- the body scrubber: lines and events ---------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n?|\n")
# Tokens of one line of (perhaps broken) JSON: a string (to its closing quote, else to the line's end), a
# structural character, a scalar or other run, whitespace.
_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)(?:"|\\?\Z)|([{}\[\]:,])|[^{}\[\]:,"\s]+|\s+', re.S)
_STREAM_FIELDS = {b"text": "text", b"thinking": "text", b"partial_json": "json"}
# The usual delta event, read with one match (everything else goes through _read_json's tokens).
_DELTA_EVENT = re.compile(
    rb'\{"type": ?"content_block_delta", ?"index": ?([0-9]{1,9}), ?"delta": ?\{"type": ?'
    rb'"(?:text|thinking|input_json)_delta", ?"(text|thinking|partial_json)": ?"((?:[^"\\]|\\.)*)"\}\}[ \t]*\Z',
    re.S,
)
# Lines with nothing to scan: blank, and the Messages API's event names.
_PLAIN_LINES = frozenset(
    b"event: " + name + end
    for name in (b"message_start", b"content_block_start", b"content_block_delta", b"content_block_stop",
                 b"message_delta", b"message_stop", b"ping", b"error")
    for end in (b"\n", b"\r\n", b"\r")
) | {b"\n", b"\r\n", b"\r"}
_NAME_CACHE_SIZE = 1024


class BodyScrubber:
    """Masks credentials in a response body as it streams: SSE, JSON or any text, or an AWS event-stream
    (Bedrock; recognised from its first 12 bytes).

    ``feed(data)`` returns the bytes that are safe to write now; ``end()`` the rest. Together they are the
    input with every credential masked by as many bytes, within JSON strings only (an escape masked whole),
    so the result has the input's length and framing and replays to a message of the same shape; an
    event-stream frame whose event is masked is re-encoded with the same length and a correct CRC.

    Secrets are found by value (see :data:`SECRET_VALUE_PATTERNS`) and by name (a JSON member named like a
    secret, in an event or in a streamed tool input, has its string values masked), also when the model
    streams them in pieces: a block's deltas are scanned as one text. Bytes are held back while they may
    still be part of a secret: whole lines, at most ``hold_limit`` bytes of them (plus the line being
    received, at most :data:`LINE_LIMIT`, and the chunk being fed: :attr:`held`); past that the undecided
    text is masked (fail closed; see :attr:`forced_bytes`). A line longer than :data:`LINE_LIMIT` is scanned
    on its own as it arrives (values in it are not joined with other events). Linear time.

    ``end(cut=True)`` says the body was cut (a stream closed early, a capture's size cap): the text a block
    ends in is then masked if it looks like the start of a credential.
    """

    def __init__(self, *, hold_limit: int = DEFAULT_HOLD_LIMIT) -> None:
        if isinstance(hold_limit, bool) or not isinstance(hold_limit, int) or hold_limit < 1:
            raise ValueError(f"hold_limit must be an int >= 1; got {hold_limit!r}")
        self.hold_limit = hold_limit
        self._counters = _Counters()
        self._segments: deque[_Segment] = deque()
        self._held = 0  # bytes in self._segments
        self._seq = 0
        self._units: dict[tuple[bytes, str], _Unit] = {}
        self._line = bytearray()  # the unfinished line (SSE / text mode)
        self._long_line: _JsonUnit | None = None  # a line over LINE_LIMIT, scanned as it arrives
        self._head = b""  # the first bytes, until the format is known
        self._mode: str | None = None  # "text", "frames", "opaque"
        self._frames: _FrameReader | None = None
        self._opaque: bytearray | None = None  # event-stream bytes that could not be decoded
        self._names: dict[bytes, bool] = {}
        self._ended = False

    @property
    def held(self) -> int:
        """Bytes received and not yet returned."""
        pending = len(self._line) + len(self._head) + (len(self._opaque) if self._opaque is not None else 0)
        if self._frames is not None:
            pending += self._frames.buffered
        return self._held + pending

    @property
    def masked_bytes(self) -> int:
        """Bytes masked so far."""
        return self._counters.masked

    @property
    def forced_bytes(self) -> int:
        """Bytes masked undecided because the hold limit was reached (fail closed)."""
        return self._counters.forced

    def feed(self, data: bytes, /) -> bytes:
        """Feed the next body bytes; return those now safe to write (maybe none)."""
        if self._ended:
            raise ValueError("feed() called after end()")
        if not data:
            return b""
        if self._mode is None:
            self._head += bytes(data)
            # An event-stream frame starts with its length (big-endian, at most 16 MiB + 128 KiB: a first
            # byte of 0 or 1); text cannot, so it is known from its first byte, an event stream from 12.
            if len(self._head) < 12 and self._head[0] <= 1:
                return b""
            data, self._head = self._head, b""
            self._mode = "frames" if looks_like_event_stream(data[:12]) else "text"
            if self._mode == "frames":
                self._frames = _FrameReader(self)
        if self._mode == "text":
            self._feed_text(bytes(data))
        elif self._mode == "frames":
            assert self._frames is not None
            self._frames.feed(bytes(data))
        else:
            self._feed_opaque(bytes(data), final=False)
        return self._release()

    def end(self, *, cut: bool = False) -> bytes:
        """The body ended (``cut``: it was cut short); return the rest of it."""
        if self._ended:
            return b""
        self._ended = True
        if self._mode is None and self._head:
            self._mode = "text"
            self._feed_text(self._head)
            self._head = b""
        if self._mode == "text":
            if self._long_line is not None:
                self._long_line_bytes()
                self._long_line.end(cut=True)
                self._long_line = None
            elif self._line:
                self._line_done(bytes(self._line))
                self._line.clear()
        elif self._mode == "frames":
            assert self._frames is not None
            self._frames.end()
        if self._mode == "opaque":
            self._feed_opaque(b"", final=True)
        for unit in self._units.values():
            unit.end(cut=True)  # a block still open at the end of the body: it was cut
        self._units.clear()
        return self._release(final=True)

    # -- text: lines ------------------------------------------------------------------------------------------

    def _feed_text(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        if self._line.endswith(b"\r") and self._long_line is None:  # held: it could have been half a CRLF
            if data.startswith(b"\n"):
                self._line += b"\n"
                pos = 1
            self._line_done(bytes(self._line))
            self._line.clear()
        while pos < size:
            m = _LINE_END.search(data, pos)
            if m is None:
                self._partial_line(data[pos:])
                return
            end = m.end()
            if end == size and data[-1] == 0x0D and self._long_line is None:  # maybe half a CRLF: wait
                self._partial_line(data[pos:])
                return
            if self._long_line is not None:
                self._line += data[pos:end]
                self._long_line_bytes()
                self._long_line.end()
                self._long_line = None
            elif self._line:
                self._line += data[pos:end]
                self._line_done(bytes(self._line))
                self._line.clear()
            else:
                self._line_done(data[pos:end])
            pos = end

    def _partial_line(self, rest: bytes) -> None:
        self._line += rest
        if self._long_line is not None:
            if len(self._line) >= _LONG_LINE_BATCH:
                self._long_line_bytes()
        elif len(self._line) > LINE_LIMIT:  # too long to hold: scan it as it arrives, as JSON text
            self._long_line = _JsonUnit(self._counters)
            self._long_line_bytes()

    def _long_line_bytes(self) -> None:
        """Hand the bytes of a long line received so far (staged in ``_line``) to its unit."""
        if self._line:
            assert self._long_line is not None
            data, self._line = bytes(self._line), bytearray()
            segment = self._segment(data)
            self._long_line.feed(_Piece(data, segment, [0], [0], len(data)))

    def _segment(self, data: bytes, frame: _Frame | None = None) -> _Segment:
        segment = _Segment(self._seq, data, self._counters, frame)
        self._seq += 1
        self._segments.append(segment)
        self._held += len(data)
        return segment

    def _line_done(self, line: bytes) -> None:
        segment = self._segment(line)
        if line in _PLAIN_LINES:
            return
        end = len(line.rstrip(b"\r\n"))
        start = 0
        if line.startswith(b"data:"):
            start = 6 if line[5:6] == b" " else 5
        self._read_event(segment, start, end)

    def _read_event(self, segment: _Segment, start: int, end: int) -> None:
        """Scan the event JSON (or other text) ``segment.data[start:end]``: the usual delta in one match."""
        data = segment.data
        delta = _DELTA_EVENT.match(data, start, end)
        if delta is None:
            self._read_json(segment, start, end)
            return
        index, name = bytes(delta.group(1)), bytes(delta.group(2))
        piece = _decode_string(segment, data, delta.start(3), delta.end(3))
        kind = _STREAM_FIELDS[name]
        unit = self._units.get((index, kind))
        if unit is None:
            unit = _JsonUnit(self._counters) if kind == "json" else _TextUnit(self._counters)
            self._units[(index, kind)] = unit
        unit.feed(piece)

    # -- events ----------------------------------------------------------------------------------------------

    def _is_secret(self, name: bytes) -> bool:
        known = self._names.get(name)
        if known is None:
            known = is_secret_name(name.decode("latin-1"))
            if len(self._names) < _NAME_CACHE_SIZE:
                self._names[name] = known
        return known

    def _read_json(self, segment: _Segment, start: int, end: int) -> None:
        """Scan ``segment.data[start:end]``: event JSON (its strings routed to the units of the blocks they
        belong to), or any other text."""
        data = segment.data
        if data.find(b'"', start, end) < 0:
            self._scan_raw(segment, start, end)
            return
        # (path of member names, is a key, content start, content end) of every string, in order
        strings: list[tuple[tuple[bytes | None, ...], bool, int, int]] = []
        path: list[bytes | None] = []  # the member name (or None in an array) at each depth
        is_object: list[bool] = []
        expect_key: list[bool] = []
        event_type: bytes | None = None
        index: bytes | None = None
        pending_key: bytes | None = None
        outside = start  # where the text between strings began
        for m in _TOKEN.finditer(data, start, end):
            kind = m.group(2)
            if kind is not None:
                char = kind[0]
                if char in (0x7B, 0x5B):
                    path.append(pending_key if is_object and is_object[-1] else None)
                    is_object.append(char == 0x7B)
                    expect_key.append(char == 0x7B)
                elif char in (0x7D, 0x5D):
                    if is_object:
                        path.pop()
                        is_object.pop()
                        expect_key.pop()
                elif is_object and is_object[-1]:
                    expect_key[-1] = char == 0x2C
                continue
            if m.group(1) is not None:
                self._scan_raw(segment, outside, m.start())
                outside = m.end()
                content_start = m.start() + 1
                content_end = m.end(1)
                key = bool(is_object and is_object[-1] and expect_key[-1])
                names = (*path[1:], pending_key if is_object and is_object[-1] and not key else None)
                strings.append((names, key, content_start, content_end))
                if key:
                    pending_key = bytes(data[content_start:content_end])
                elif len(is_object) == 1 and pending_key == b"type":
                    event_type = bytes(data[content_start:content_end])
                continue
            if len(is_object) == 1 and pending_key == b"index" and not m.group().isspace():
                index = bytes(m.group())
        self._scan_raw(segment, outside, end)  # scalars, or text that is not JSON
        self._route(segment, strings, event_type, index)

    @staticmethod
    def _scan_raw(segment: _Segment, start: int, end: int) -> None:
        if end > start:
            for a, b in _value_spans(segment.data, start, end):
                segment.mask(a, b)

    def _route(
        self,
        segment: _Segment,
        strings: list[tuple[tuple[bytes | None, ...], bool, int, int]],
        event_type: bytes | None,
        index: bytes | None,
    ) -> None:
        units = self._units
        if event_type in (b"message_start", b"message_stop", b"error") and units:
            for open_unit in units.values():
                open_unit.end(cut=event_type != b"message_stop")
            units.clear()
        if event_type == b"content_block_start" and index is not None:
            for kind in ("text", "json"):
                old = units.pop((index, kind), None)
                if old is not None:
                    old.end(cut=True)
        data = segment.data
        for names, key, start, end in strings:
            piece = _decode_string(segment, data, start, end)
            if not key and any(name is not None and self._is_secret(name) for name in names):
                piece.mask(0, len(piece.data))  # by name: a value under a member named like a secret
                continue
            field: str | None = None
            if not key and index is not None and len(names) == 2 and names[0] in (b"delta", b"content_block"):
                field = _STREAM_FIELDS.get(names[1] or b"")
                if names[0] == b"content_block" and field == "json":
                    field = None
            if field is None or index is None:  # a string on its own
                for a, b in _value_spans(piece.data):
                    piece.mask(a, b)
                continue
            unit = units.get((index, field))
            if unit is None:
                unit = _JsonUnit(self._counters) if field == "json" else _TextUnit(self._counters)
                units[(index, field)] = unit
            unit.feed(piece)
        if event_type == b"content_block_stop" and index is not None:
            for kind in ("text", "json"):
                done = units.pop((index, kind), None)
                if done is not None:
                    done.end()

    # -- releasing -------------------------------------------------------------------------------------------

    def _floor(self) -> int | None:
        """The oldest segment a unit still holds undecided bytes of."""
        seqs = [unit.first_seq() for unit in self._units.values()]
        if self._long_line is not None:
            seqs.append(self._long_line.first_seq())
        held = [s for s in seqs if s is not None]
        return min(held) if held else None

    def _holders(self, seq: int) -> list[_Unit]:
        units: list[_Unit] = [u for u in self._units.values() if u.first_seq() == seq]
        if self._long_line is not None and self._long_line.first_seq() == seq:
            units.append(self._long_line)
        return units

    def _release(self, final: bool = False) -> bytes:
        out: list[bytes] = []
        self._pop_ready(out, final)
        if self._held > self.hold_limit:  # make room: decide long runs, then mask what stays undecided
            for fail in (False, True):
                while self._held > self.hold_limit and self._segments:
                    floor = self._floor()
                    if floor is None or floor != self._segments[0].seq:
                        break
                    for unit in self._holders(floor):
                        if fail:
                            unit.fail_closed()
                        else:
                            unit.relieve()
                    before = len(out)
                    self._pop_ready(out, final)
                    if len(out) == before:
                        break
        return b"".join(out)

    def _pop_ready(self, out: list[bytes], final: bool) -> None:
        floor = None if final else self._floor()
        segments = self._segments
        while segments and (floor is None or segments[0].seq < floor):
            segment = segments.popleft()
            self._held -= len(segment.data)
            out.append(segment.output())

    # -- event-stream bodies that cannot be decoded ------------------------------------------------------------

    def _feed_opaque(self, data: bytes, *, final: bool) -> None:
        """Bytes that are neither text nor decodable frames: masked by value as raw bytes, OVERLAP held."""
        if self._opaque is None:
            self._opaque = bytearray()
        buf = self._opaque
        buf += data
        cut = len(buf) if final else len(buf) - OVERLAP
        if cut <= 0:
            return
        spans = sorted(_value_spans(buf))
        for start, end in spans:
            if start < cut < end:
                cut = start
                break
        segment = self._segment(bytes(buf[:cut]))
        for start, end in spans:
            if end <= cut:
                segment.mask(start, end)
        del buf[:cut]

    def _to_opaque(self, rest: bytes) -> None:
        self._mode = "opaque"
        self._frames = None
        self._feed_opaque(rest, final=False)


class _Frame:
    """An event-stream frame whose event JSON (``data`` of its segment) may be masked: ``encode`` rebuilds the
    frame around the masked JSON (base64 for a ``chunk`` frame) with a correct message CRC."""

    __slots__ = ("b64_end", "b64_start", "masked", "payload_start", "raw")

    def __init__(self, raw: bytes, payload_start: int, b64_start: int, b64_end: int) -> None:
        self.raw = raw
        self.payload_start = payload_start
        self.b64_start = b64_start  # offsets in raw of the base64 text of a chunk's event; -1 for a bare JSON
        self.b64_end = b64_end
        self.masked = False

    def encode(self, data: bytearray) -> bytes:
        if not self.masked:
            return self.raw
        if self.b64_start >= 0:
            body = base64.b64encode(bytes(data))
            assert len(body) == self.b64_end - self.b64_start
            head = self.raw[: self.b64_start] + body + self.raw[self.b64_end : -4]
        else:  # the payload is the JSON itself
            head = self.raw[: self.payload_start] + bytes(data)
        return head + zlib.crc32(head).to_bytes(4, "big")


class _FrameReader:
    """Cuts an event-stream body into frames (mendstream.core.eventstream's decoder) and reads each frame's event
    as a line of event JSON; undecodable bytes go to the opaque scan."""

    def __init__(self, scrubber: BodyScrubber) -> None:
        self.scrubber = scrubber
        self.decoder = EventStreamDecoder()
        self.raw = bytearray()  # bytes from the decoder's position on (the frame being received)

    @property
    def buffered(self) -> int:
        return len(self.raw)

    def feed(self, data: bytes) -> None:
        self.raw += data
        base = self.decoder.position
        try:
            frames = self.decoder.feed(data)
        except EventStreamError as exc:
            decoded: list[EventStreamMessage] = list(exc.events)
            self._frames(decoded, base)
            done = max((f.offset + f.size for f in decoded), default=base)
            self.scrubber._to_opaque(bytes(self.raw[done - base :]))
            return
        self._frames(frames, base)
        del self.raw[: self.decoder.position - base]

    def end(self) -> None:
        try:
            self.decoder.end()
        except EventStreamError:  # a cut final frame: scanned as raw bytes
            rest = bytes(self.raw)
            self.raw.clear()
            self.scrubber._to_opaque(rest)

    def _frames(self, frames: list[EventStreamMessage], base: int) -> None:
        scrubber = self.scrubber
        for message in frames:
            start = message.offset - base
            raw = bytes(self.raw[start : start + message.size])
            payload = message.payload
            payload_start = message.size - 4 - len(payload)
            chunk = message.headers.get(":event-type") == "chunk"
            event: bytes | None = None
            if chunk:
                try:
                    text = json.loads(payload)["bytes"]
                    event = base64.b64decode(text, validate=True)
                    b64 = text.encode("ascii")
                except (ValueError, KeyError, TypeError, UnicodeEncodeError):
                    event = None
                if event is not None and base64.b64encode(event) == b64:
                    b64_start = payload.find(b'"' + b64 + b'"')
                    if b64_start >= 0:
                        b64_start += payload_start + 1
                        frame = _Frame(raw, payload_start, b64_start, b64_start + len(b64))
                        segment = scrubber._segment(event, frame)
                        scrubber._read_event(segment, 0, len(event))
                        continue
            # any other frame (an exception, a chunk in an unusual shape): its payload scanned as JSON text
            frame = _Frame(raw, payload_start, -1, -1)
            segment = scrubber._segment(payload, frame)
            scrubber._read_json(segment, 0, len(payload))


def scrub_body(data: bytes, /, *, cut: bool = False) -> bytes:
    """``data``, a whole body, through a :class:`BodyScrubber` (same length, credentials masked)."""
    scrubber = BodyScrubber(hold_limit=max(len(data), 1))
    return scrubber.feed(data) + scrubber.end(cut=cut)
