# Incremental parsing of tool-call input: the JSON text that arrives as `input_json_delta` fragments is fed
# to a ToolInputParser, which keeps its state between fragments so that the whole input costs O(n) to parse
# however it is split. It offers a partial snapshot equal to what `jiter.from_json(prefix, partial_mode=...)`
# gives, and a final value equal to `json.loads(text, strict=False)`, and tolerates the faults seen in the
# wild (raw control characters, invalid escapes, several top-level values). No I/O, no recursion.
#
# Theory of operation
# -------------------
# The parser is a pushdown automaton written as a loop. `_stack` holds one `_Frame` per open container (the
# live list or dict, plus the key a dict member is being read under); `_state` says what may come next:
#
#   _VALUE         a value (after ':' or ',' in an array, and at top level)
#   _VALUE_OR_END  a value or ']'            (just after '[')
#   _KEY_OR_END    a key string or '}'       (just after '{')
#   _KEY           a key string              (after ',' in an object)
#   _COLON         ':'                       (after a key)
#   _AFTER_VALUE   ',' or the closing bracket of the innermost container
#   _IN_STRING / _IN_NUMBER / _IN_LITERAL    inside a token that may continue in the next fragment
#
# Token state survives fragment boundaries: a string keeps its decoded parts plus the raw text of an escape
# not yet complete (at most `\uXXXX\uXXXX`, 12 characters); a number keeps its characters; a literal keeps
# how many characters of `true`/`false`/`null`/`NaN`/`Infinity`/`-Infinity` matched so far.
#
# A container is added to its parent only when it closes, and is never touched again after that. A
# snapshot is therefore built from the innermost token outwards with one shallow copy per open container;
# closed values are shared between snapshots, which is safe because nothing mutates them.
#
# After the first top-level value completes, further non-whitespace starts another value (`{…}{…}`, seen
# from compatible servers); completed values collect in `values` and the snapshot keeps showing the first,
# as jiter does. Anything that cannot continue as JSON sets `failed` for good; later fragments are ignored.
#
# jiter's verdict on a broken text
# --------------------------------
# A parse that keeps no text (MessageParser(keep_content=False)) must still decide, as the full parse does by
# running jiter's partial mode over the raw text, whether a tool input that failed is merely cut (jiter gives
# a partial value) or broken (jiter raises). `strict_verdict()` covers what jiter's string scanner refuses
# (control characters, invalid escapes, lone surrogates; an invalid \u escape with fewer than 4 characters
# after it in the whole text reads as its end). `jiter_refuses()` adds the structure: jiter's partial mode
# reads past two faults inside the first value (a character after a value that is neither ',' nor the
# container's closer ends that container and is read again by the one around it; a number followed by
# garbage is that number), so at such a fault the parser hands the rest of the text to a second parser that
# reads on as jiter does. Readers whose verdict is settled are dropped as they go, so the chain stays one
# reader long and memory stays bounded by the nesting depth.
#
# Nesting limit
# -------------
# JSON nested deeper than MAX_NESTING_DEPTH open containers is refused as an input error, on every path:
# the parser here fails with reason "maximum depth exceeded", and `loads` (the json.loads that callers use
# for whole documents) raises the same PartialJSONError before json.loads can recurse. The C decoder in
# json recurses once per level and raises RecursionError somewhere below sys.getrecursionlimit() (about
# 990 levels from a shallow stack, fewer from a deep one), so its limit depends on the caller. The limit is
# jiter's (201), the decoder of the fast path, so an event or a tool input gets the same verdict whichever
# path decodes it (a fault elsewhere in the event sends it down the repair path), and it sits far above
# what real tool input or event JSON uses.
from __future__ import annotations

import json
import re
from typing import Any, Final, Literal

__all__ = ["MAX_NESTING_DEPTH", "MISSING", "PartialJSONError", "ToolInputParser", "loads", "nesting_exceeded"]


class _Missing:
    """Type of `MISSING`: "no value yet". A singleton that survives copy, deepcopy and pickling."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"

    def __copy__(self) -> _Missing:
        return self

    def __deepcopy__(self, memo: object) -> _Missing:
        return self


MISSING: Final = _Missing()
"""Returned by `ToolInputParser.snapshot()` while no value can be shown yet."""


class PartialJSONError(ValueError):
    """The tool-input text is not JSON, or not complete JSON.

    Internal to mendstream: the accumulator turns it into a `ToolInputError` that keeps the raw text.

    Attributes:
        position: character offset, in the whole text fed so far, where the problem was found.
        reason: a short description such as ``"expected a value"``, ``"incomplete"`` or
            ``"multiple values"``.
    """

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"{reason} at character {position}")
        self.position = position
        self.reason = reason


# Parser states; see "Theory of operation" above.
_VALUE: Final = 0
_VALUE_OR_END: Final = 1
_KEY_OR_END: Final = 2
_KEY: Final = 3
_COLON: Final = 4
_AFTER_VALUE: Final = 5
_IN_STRING: Final = 6
_IN_NUMBER: Final = 7
_IN_LITERAL: Final = 8

_WHITESPACE: Final = " \t\n\r"
_WHITESPACE_RUN: Final = re.compile(r"[ \t\n\r]+")

# The longest piece of string body that can be decoded without looking further: plain characters (raw
# control characters included, as json.loads(strict=False) keeps them) and complete valid escapes. A high
# surrogate escape is taken only together with the low surrogate that follows it, because a pair split
# across fragments must still combine. Invalid escapes and escapes cut by the fragment end stop the run and
# go to the per-character path. Nothing follows the repeated group, so the engine never backtracks.
_STRING_RUN: Final = re.compile(
    r'(?:[^"\\]+'
    r'|\\["\\/bfnrt]'
    r"|\\u(?![dD][89abAB])[0-9a-fA-F]{4}"
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})+"
)
_CONTROL_RUN: Final = re.compile(r"[\x00-\x1f]+")
# The escapes of a string run (all valid there): a surrogate pair, or one escape, with group 1 set for a
# lone low surrogate \uDC00-\uDFFF.
_LOW_SURROGATE_ESCAPE: Final = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u([dD][c-fC-F])|.)", re.DOTALL
)
_CONTROL_DETAIL: Final = 16
_ESCAPE_DECODER: Final = json.JSONDecoder(strict=False)
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

_NUMBER_START: Final = frozenset("-0123456789")
_NUMBER_RUN: Final = re.compile(r"[0-9eE.+\-]+")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")

# First character -> (spelling, value). "-Infinity" is entered from a number that reads "-" then "I".
_LITERALS: Final[dict[str, tuple[str, Any]]] = {
    "t": ("true", True),
    "f": ("false", False),
    "n": ("null", None),
    "N": ("NaN", float("nan")),
    "I": ("Infinity", float("inf")),
}
_NEGATIVE_INFINITY: Final = ("-Infinity", float("-inf"))

# Shortcuts for small tokens that arrive whole within one fragment (see `_structural`): a string without
# escapes or control characters, a key with its colon, a number followed by a character that ends it.
_PLAIN_STRING: Final = re.compile(r'"([^"\\\x00-\x1f]*)"')
_WHOLE_KEY: Final = re.compile(r'"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_NEXT_KEY: Final = re.compile(r',[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_WHOLE_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?=[^0-9eE.+\-])")

_PARTIAL_MODES: Final = ("on", "trailing-strings")

# Faults jiter's partial mode reads past (see ToolInputParser.jiter_refuses): a character after a value that is
# neither ',' nor the container's closer, and a number token that is a number followed by something else.
_AFTER_VALUE_FAULTS: Final = ("expected ',' or '}'", "expected ',' or ']'")
_NUMBER_PREFIX: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")

MAX_NESTING_DEPTH: Final = 201
"""Most containers that may be open at once in tool input or event JSON; see "Nesting limit" above."""

# The rest of a string literal after its opening quote, through the closing quote. Anchored with match() at
# each opening quote and never retried from inside a string, so a scan is linear even when the last string
# never closes (a search() retried at every later quote is what makes such input quadratic).
_STRING_TAIL: Final = re.compile(r'(?:[^"\\]+|\\.)*+"', re.DOTALL)
_BRACKET: Final = re.compile(r"[\[\]{}]")


def nesting_exceeded(text: str, /, limit: int = MAX_NESTING_DEPTH) -> int | None:
    """Where ``text`` first opens more than ``limit`` nested containers, or None if it never does.

    Counts ``[`` and ``{`` against ``]`` and ``}`` outside string literals, as a JSON parser would nest
    them; nothing after a string that never closes is structure. Returns the character offset of the
    bracket that opens container number ``limit + 1``. O(len(text)): between two strings the brackets are
    counted by str.count, and walked one by one only in a stretch that could cross the limit.
    """
    if text.count("[") + text.count("{") <= limit:  # the common case: too few brackets to matter
        return None
    depth = 0
    pos = 0
    n = len(text)
    while pos < n:
        quote = text.find('"', pos)
        end = n if quote < 0 else quote
        opens = text.count("[", pos, end) + text.count("{", pos, end)
        if depth + opens > limit:
            for match in _BRACKET.finditer(text, pos, end):
                if match.group() in "[{":
                    depth += 1
                    if depth > limit:
                        return match.start()
                else:
                    depth -= 1
        else:
            depth += opens - text.count("]", pos, end) - text.count("}", pos, end)
        if quote < 0:
            return None
        tail = _STRING_TAIL.match(text, quote + 1)
        if tail is None:
            return None
        pos = tail.end()
    return None


def loads(text: str, /, *, strict: bool = True) -> Any:
    """``json.loads(text, strict=strict)`` that refuses deep nesting as bad input instead of recursing.

    Raises:
        PartialJSONError: reason ``"maximum depth exceeded"`` when ``text`` nests deeper than
            MAX_NESTING_DEPTH (checked in O(n) before decoding), or when the stack left to json's
            recursive decoder runs out even so (a caller already very deep in its own stack).
        json.JSONDecodeError: as json.loads, for anything else that is not JSON. Both are ValueErrors.
    """
    position = nesting_exceeded(text)
    if position is not None:
        raise PartialJSONError(position, "maximum depth exceeded")
    try:
        return json.loads(text, strict=strict)
    except RecursionError:
        raise PartialJSONError(0, "maximum depth exceeded") from None


class _Sink(list[str]):
    """Where a parser that keeps no values puts string pieces: nowhere (``append`` keeps nothing)."""

    __slots__ = ()

    def append(self, item: str, /) -> None:
        pass


_SINK: Final = _Sink()
# Repairs a parser that keeps no values records at most (a bound on its memory for hostile input).
_MAX_CHECK_REPAIRS: Final = 1000


class _Frame:
    """One open container: the live list or dict, and for a dict the key of the member being read."""

    __slots__ = ("container", "is_object", "key")

    def __init__(self, container: list[Any] | dict[str, Any], is_object: bool) -> None:
        self.container = container
        self.is_object = is_object
        self.key = ""


def _number_value(text: str) -> Any:
    """The value of a JSON number, computed as json.loads does; MISSING if `text` is not a whole number."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return MISSING
    if match.group(1) is not None or match.group(2) is not None:
        return float(text)
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits(); json.loads refuses it too
        return MISSING


def _number_then_garbage(token: str, prefix: re.Match[str]) -> bool:
    """Whether jiter reads an invalid number token as the whole number ``prefix`` (its match of
    _NUMBER_PREFIX) followed by something else (which ends the number, as any character after a value does)
    rather than as an invalid number: ``1e1e``, ``1-2`` and ``1.5.5`` are the first kind; ``01``, ``1.x``,
    ``1ex`` and ``-x`` the second."""
    rest = token[prefix.end() :]
    if not rest or rest[0].isdigit():  # (a digit can only follow a leading 0)
        return False
    if rest[0] == ".":
        return prefix.group(1) is not None or prefix.group(2) is not None
    if rest[0] in "eE":
        return prefix.group(2) is not None
    return True


class ToolInputParser:
    """Incremental, resumable parser for the JSON text of a tool call's input.

    Feed the fragments in order with `feed()`; read `snapshot()` whenever a partial value is wanted, and
    `finish()` at the end of the input. Parsing all fragments costs O(n) in the total text length however
    it is split (one character per fragment included); nothing is re-scanned.

    Args:
        partial_mode: how a string still open at the end of the text appears in `snapshot()`, as in
            jiter: ``"on"`` leaves it out (with its key), ``"trailing-strings"`` shows what has arrived.
        max_depth: most containers that may be open at once; one more sets `failed` with reason
            ``"maximum depth exceeded"``. Defaults to MAX_NESTING_DEPTH (201).
        keep_values: False checks the text without building its value, in memory bounded by the nesting
            depth (plus one number token): strings are not kept, containers stay empty, `values` holds at
            most the first top-level value (as such an empty shell) and `snapshot()` shows shells. Use it to
            validate input whose value is not wanted; `failed`, `finish()`'s errors, `value_count`,
            `only_objects` and the kinds of `repairs` are those of a parser that keeps values (at most
            1,000 repairs are kept).

    Raises:
        ValueError: for an unknown `partial_mode` or a `max_depth` below 1.

    Attributes:
        repairs: ``(kind, position, detail)`` for each fault tolerated so far, where kind is
            ``"control_character"`` (a run of raw U+0000-U+001F inside a string, kept as is; detail is the
            run, backslash-escaped) or ``"invalid_escape"`` (an escape such as ``\\H`` or a ``\\u`` without
            four hex digits, kept literally; detail is the raw escape text). Position is a character
            offset in the whole text.
    """

    def __init__(
        self,
        *,
        partial_mode: Literal["on", "trailing-strings"] = "on",
        max_depth: int = MAX_NESTING_DEPTH,
        keep_values: bool = True,
    ) -> None:
        if partial_mode not in _PARTIAL_MODES:
            raise ValueError(f"partial_mode must be one of {_PARTIAL_MODES!r}, not {partial_mode!r}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be at least 1, not {max_depth!r}")
        self._trailing_strings = partial_mode == "trailing-strings"
        self._max_depth = max_depth
        self.repairs: list[tuple[str, int, str]] = []
        self._stack: list[_Frame] = []
        self._state: int = _VALUE
        self._keep = keep_values
        self._values: list[Any] = []
        self.value_count = 0
        """Top-level values completed so far."""
        self.only_objects = True
        """Whether every top-level value completed so far is an object."""
        self.failed_number = ""
        """The text of the number token that made parsing fail, if one did."""
        # Where the first control character, invalid escape or lone surrogate came, before the first top-level
        # value ended (what a strict parser refuses), and the first invalid backslash-u escape, which jiter's partial
        # mode reads as a cut text when fewer than 4 characters follow its "u" (see strict_verdict).
        self._strict_at: int | None = None
        self._u_escape_at: int | None = None
        self._u_escape_top = False  # that escape is in a top-level string
        self._failed: PartialJSONError | None = None
        # Past a fault that jiter's partial mode reads past, the parser that reads on as jiter does (see
        # jiter_refuses); it gets every later fragment.
        self._jiter: ToolInputParser | None = None
        self._offset = 0  # characters fed before the current fragment (all of them, once failed)
        self._token_start = 0  # position of the current token's first character
        # string token
        self._str_parts: list[str] = []
        self._str_is_key = False
        self._escape = ""  # raw text of an escape begun but not complete, e.g. "\\u00"
        self._escape_start = 0
        self._high_surrogate = ""  # raw "\\uD8xx" waiting to see whether a low surrogate follows
        self._control_run_end = -1  # where the last recorded run of control characters ended
        self._control_run_head = ""  # its first characters, for the repair's detail
        # number token
        self._num_parts: list[str] = []
        # literal token
        self._lit_spelling = ""
        self._lit_value: Any = None
        self._lit_matched = 0
        # snapshot cache, valid until the next non-empty feed
        self._snapshot: Any = MISSING
        self._snapshot_valid = True

    # ----------------------------------------------------------------------------------------------
    # Public API

    @property
    def values(self) -> list[Any]:
        """Top-level values completed so far, in order (normally none or one). A new list each time."""
        return list(self._values)

    @property
    def failed(self) -> PartialJSONError | None:
        """The error that stopped parsing, once the text can no longer be JSON; else None. Sticky."""
        return self._failed

    def feed(self, fragment: str, /) -> None:
        """Parse the next fragment of the text. Never raises for any content.

        A fragment that makes the text impossible to complete as JSON sets `failed`; it and every later
        fragment are ignored, and `snapshot()` keeps the state reached just before the fault.
        """
        if self._failed is not None:
            # Ignored, but counted: strict_verdict() answers for the whole text, as jiter reads it (an invalid
            # \u escape is the end of the text only when fewer than 4 characters follow it in all the text).
            self._offset += len(fragment)
            if self._jiter is not None:
                self._feed_jiter(fragment)
            return
        if not fragment:
            return
        self._snapshot_valid = False
        try:
            self._consume(fragment)
        except PartialJSONError as exc:
            self._failed = exc
            self._jiter = self._read_on(exc, fragment)
        self._offset += len(fragment)

    def snapshot(self) -> Any:
        """The first top-level value as far as it has arrived, or MISSING when nothing can be shown yet.

        Equal to ``jiter.from_json(text_so_far, partial_mode=...)`` wherever jiter succeeds, and MISSING
        where jiter raises on a prefix of valid JSON (empty text, a partial literal or number at top
        level, a top-level string in mode ``"on"``). Once the first value is complete it is returned
        even if more values follow.

        The result never changes when more is fed: open containers are copied (shallowly), closed ones
        are shared with later snapshots and must be treated as read-only. Costs O(size of the open
        containers + the open string or number); the result is cached until the next feed.
        """
        if not self._snapshot_valid:
            self._snapshot = self._build_snapshot()
            self._snapshot_valid = True
        return self._snapshot

    def finish(self) -> Any:
        """End of input: return the one top-level value, equal to ``json.loads(text, strict=False)``.

        A top-level number still open is completed (it is moved to `values`). Beyond json.loads, the
        repairs listed in `repairs` are accepted.

        Raises:
            PartialJSONError: if parsing failed (the `failed` error), the text is incomplete
                (reason ``"incomplete"``), holds no value (``"no value"``) or holds several
                (``"multiple values"``; read them from `values`).
        """
        if self._failed is not None:
            raise self._failed
        if self._state == _IN_NUMBER and not self._stack:
            try:
                self._end_number("")
            except PartialJSONError as exc:
                self._failed = exc
                self._jiter = self._read_on(exc, "")
                raise
            self._snapshot_valid = False
        end = self._offset
        if self._stack or self._state in (_IN_STRING, _IN_NUMBER, _IN_LITERAL):
            raise PartialJSONError(end, "incomplete")
        if not self._values:
            raise PartialJSONError(end, "no value")
        if self.value_count > 1:
            raise PartialJSONError(end, "multiple values")
        return self._values[0]

    # ----------------------------------------------------------------------------------------------
    # Scanning

    def _consume(self, text: str) -> None:
        # Complexity: each pass of this loop either consumes at least one character of `text`, or ends a
        # number and hands its terminating character back, which the next pass consumes (a number cannot
        # end twice in a row). Long runs (string bodies, whitespace, digits) are consumed by one compiled
        # regex call each; a Python step touches only structural characters and escapes, O(1) work each.
        # The whole-token shortcuts in `_structural` are tried once per token start, so a failed attempt
        # re-reads at most that token's characters in this fragment once more. Nothing from earlier
        # fragments is ever re-read (tokens carry their state instead). So a fragment of length k costs
        # O(k), and the whole text O(n) however it is split.
        i = 0
        n = len(text)
        while i < n:
            state = self._state
            if state == _IN_STRING:
                i = self._scan_string(text, i, n)
            elif state == _IN_NUMBER:
                i = self._scan_number(text, i, n)
            elif state == _IN_LITERAL:
                i = self._scan_literal(text, i, n)
            elif text[i] in _WHITESPACE:
                match = _WHITESPACE_RUN.match(text, i)
                i = match.end() if match is not None else i + 1
            else:
                i = self._structural(text, i)

    def _fail(self, index: int, reason: str) -> PartialJSONError:
        return PartialJSONError(self._offset + index, reason)

    def _structural(self, text: str, i: int) -> int:
        """Handle the non-whitespace character at `text[i]`, outside any token; return the next index.

        Complete keys, plain strings and numbers that lie wholly inside the fragment are taken by one
        regex match each (the common case for small members); anything else goes through the token
        states, which give the same result.
        """
        char = text[i]
        state = self._state
        if state in (_VALUE, _VALUE_OR_END):
            if char == '"':
                match = _PLAIN_STRING.match(text, i)
                if match is not None:
                    self._emit(match.group(1))
                    return match.end()
            elif char in _NUMBER_START:
                match = _WHOLE_NUMBER.match(text, i)
                if match is not None:
                    value = _number_value(match.group())
                    if value is not MISSING:
                        self._emit(value)
                        return match.end()
            elif char == "]" and state == _VALUE_OR_END:
                self._close()
                return i + 1
            return self._start_value(char, i)
        if state == _AFTER_VALUE:
            frame = self._stack[-1]
            if char == ",":
                if frame.is_object:
                    match = _NEXT_KEY.match(text, i)
                    if match is not None:
                        frame.key = match.group(1)
                        self._state = _VALUE
                        return match.end()
                    self._state = _KEY
                else:
                    self._state = _VALUE
            elif char == ("}" if frame.is_object else "]"):
                self._close()
            else:
                raise self._fail(i, "expected ',' or '}'" if frame.is_object else "expected ',' or ']'")
            return i + 1
        if state in (_KEY, _KEY_OR_END):
            if char == '"':
                match = _WHOLE_KEY.match(text, i)
                if match is not None:
                    self._stack[-1].key = match.group(1)
                    self._state = _VALUE
                    return match.end()
                self._start_string(i, is_key=True)
            elif char == "}" and state == _KEY_OR_END:
                self._close()
            else:
                raise self._fail(i, "expected a key string")
            return i + 1
        # _COLON
        if char != ":":
            raise self._fail(i, "expected ':'")
        self._state = _VALUE
        return i + 1

    def _start_value(self, char: str, i: int) -> int:
        if char == "{" or char == "[":
            if len(self._stack) >= self._max_depth:
                raise self._fail(i, "maximum depth exceeded")
            if char == "{":
                self._stack.append(_Frame({}, True))
                self._state = _KEY_OR_END
            else:
                self._stack.append(_Frame([], False))
                self._state = _VALUE_OR_END
            return i + 1
        if char == '"':
            self._start_string(i, is_key=False)
            return i + 1
        self._token_start = self._offset + i
        if char in _NUMBER_START:
            self._num_parts = []
            self._state = _IN_NUMBER
            return i  # _scan_number reads it
        literal = _LITERALS.get(char)
        if literal is None:
            raise self._fail(i, "expected a value")
        self._lit_spelling, self._lit_value = literal
        self._lit_matched = 0
        self._state = _IN_LITERAL
        return i  # _scan_literal reads it

    def _close(self) -> None:
        self._emit(self._stack.pop().container)

    def _emit(self, value: Any) -> None:
        """A value is complete: add it to the innermost container, or to `values` at top level."""
        if self._stack:
            if self._keep:
                frame = self._stack[-1]
                container = frame.container
                if isinstance(container, dict):
                    container[frame.key] = value
                else:
                    container.append(value)
            self._state = _AFTER_VALUE
        else:
            self.value_count += 1
            if type(value) is not dict:
                self.only_objects = False
            if self._keep or not self._values:
                self._values.append(value if self._keep or type(value) in (dict, list) else type(value)())
            self._state = _VALUE

    # Strings ----------------------------------------------------------------------------------------

    def _start_string(self, i: int, *, is_key: bool) -> None:
        self._token_start = self._offset + i
        self._str_parts = [] if self._keep else _SINK
        self._str_is_key = is_key
        self._state = _IN_STRING

    def _scan_string(self, text: str, i: int, n: int) -> int:
        parts = self._str_parts
        while i < n:
            if self._escape or self._high_surrogate:
                i = self._scan_escape(text, i, n)
                continue
            match = _STRING_RUN.match(text, i)
            if match is not None:
                chunk = match.group()
                if _CONTROL_RUN.search(chunk) is not None:
                    self._record_controls(chunk, i)
                if "\\" in chunk:
                    if parts is not _SINK:
                        chunk = _ESCAPE_DECODER.decode(f'"{chunk}"')
                    elif not self.value_count and any(m.group(1) for m in _LOW_SURROGATE_ESCAPE.finditer(chunk)):
                        self._strict(self._offset + i)
                parts.append(chunk)
                i = match.end()
                if i == n:
                    break
            # The run stops only at the closing quote or at a backslash it could not take whole.
            if text[i] == '"':
                self._end_string()
                return i + 1
            self._escape = "\\"
            self._escape_start = self._offset + i
            i += 1
        return i

    def _record_controls(self, chunk: str, i: int) -> None:
        # One repair per run of control characters, however the run is split across fragments, so that
        # `repairs` does not depend on the split. The detail shows at most _CONTROL_DETAIL characters.
        for run in _CONTROL_RUN.finditer(chunk):
            start = self._offset + i + run.start()
            raw = run.group()[: _CONTROL_DETAIL + 1]
            if start == self._control_run_end and self.repairs:
                start = self.repairs.pop()[1]
                raw = (self._control_run_head + raw)[: _CONTROL_DETAIL + 1]
            self._control_run_head = raw
            self._control_run_end = self._offset + i + run.end()
            detail = raw[:_CONTROL_DETAIL].encode("unicode_escape").decode("ascii")
            if len(raw) > _CONTROL_DETAIL:
                detail += "..."
            if self._keep or len(self.repairs) < _MAX_CHECK_REPAIRS:
                self.repairs.append(("control_character", start, detail))
            self._strict(start)

    def _scan_escape(self, text: str, i: int, n: int) -> int:
        """Advance an escape begun earlier, one character at a time (at most 12 per escape)."""
        parts = self._str_parts
        while i < n:
            escape = self._escape
            char = text[i]
            if not escape:  # only a high surrogate is pending
                if char == "\\":
                    self._escape = "\\"
                    self._escape_start = self._offset + i
                    i += 1
                    continue
                self._flush_high_surrogate()  # a lone surrogate, kept as json.loads keeps it
                return i
            if len(escape) == 1:
                simple = _SIMPLE_ESCAPES.get(char)
                if simple is not None:
                    self._flush_high_surrogate()
                    parts.append(simple)
                    self._escape = ""
                    return i + 1
                if char == "u":
                    self._escape = "\\u"
                    i += 1
                    continue
                self._flush_high_surrogate()
                self._invalid_escape(escape + char)
                return i + 1
            if char not in _HEX_DIGITS:
                # "\u" without four hex digits: keep what we have literally; `char` is read afresh.
                self._flush_high_surrogate()
                self._invalid_escape(escape)
                return i
            escape += char
            i += 1
            if len(escape) < 6:
                self._escape = escape
                continue
            self._escape = ""
            code = int(escape[2:], 16)
            if self._high_surrogate:
                if 0xDC00 <= code <= 0xDFFF:
                    high = int(self._high_surrogate[2:], 16)
                    parts.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
                    self._high_surrogate = ""
                    return i
                self._flush_high_surrogate()
            if 0xD800 <= code <= 0xDBFF:
                self._high_surrogate = escape
                continue
            if 0xDC00 <= code <= 0xDFFF:
                self._strict(self._escape_start)  # a lone low surrogate
            parts.append(chr(code))
            return i
        return i

    def _flush_high_surrogate(self) -> None:
        if self._high_surrogate:
            self._str_parts.append(chr(int(self._high_surrogate[2:], 16)))
            self._high_surrogate = ""
            self._strict(self._escape_start)  # a lone high surrogate (approximately where)

    def _invalid_escape(self, raw: str) -> None:
        if self._keep or len(self.repairs) < _MAX_CHECK_REPAIRS:
            self.repairs.append(("invalid_escape", self._escape_start, raw))
        if raw.startswith("\\u"):
            if not self.value_count and self._u_escape_at is None:
                self._u_escape_at = self._escape_start
                self._u_escape_top = not self._stack
        else:
            self._strict(self._escape_start)
        self._str_parts.append(raw)
        self._escape = ""

    def _strict(self, position: int) -> None:
        if not self.value_count and self._strict_at is None:
            self._strict_at = position

    def jiter_refuses(self) -> bool:
        """Whether ``jiter.from_json(text_so_far, partial_mode=...)`` raises, rather than giving a (partial)
        value: what the SDK's partial parse makes of a text that failed here (an approximation where
        strict_verdict() is one).

        jiter refuses a character a strict parser refuses before a cut ``\\u`` escape (strict_verdict), a
        top-level value it cannot show yet (a partial literal or number, a string in mode ``"on"``) and most
        faults, but reads past two kinds of fault inside the first value: a character after a value that is
        neither ',' nor the container's own closer ends that container and is read again by the one around it
        (so ``[1}`` is ``[1]``, and ``{"a": [1}, 2}`` fails only at the ``2``), and a number followed by
        something else (``1e1e``) is that number followed by that something. Past such a fault this parser has
        a second one read on as jiter does (see _read_on), so the verdict holds however the text was split.
        It ignores everything after the first top-level value.
        """
        parser = self
        while True:
            verdict = parser.strict_verdict()
            if verdict != "ok":
                return verdict == "reject"  # "cut": jiter reads the text as ending there
            if parser.value_count:
                return False
            if parser._failed is None:
                return parser is self and self.snapshot() is MISSING  # (a reader reading on is in a container)
            if parser._jiter is None:
                return True
            parser = parser._jiter

    def _read_on(self, fault: PartialJSONError, fragment: str) -> ToolInputParser | None:
        """The parser that reads on past ``fault`` (met in ``fragment``, whose first character is at
        ``self._offset``) as jiter's partial mode does, or None when jiter stops or raises there."""
        if self.value_count or self.strict_verdict() != "ok":
            return None  # jiter returned the first value, or stopped or raised before this fault
        if fault.reason in _AFTER_VALUE_FAULTS:
            # The character ended the innermost container; the one around it reads it again.
            stack = self._stack[:-1]
            start = fault.position
            rest = fragment[start - self._offset :]
        elif fault.reason == "invalid number":
            token = self.failed_number
            match = _NUMBER_PREFIX.match(token)
            if match is None or not _number_then_garbage(token, match):
                return None
            # The number's prefix is a value of the innermost container (or the top-level value); what
            # follows it is read as the next character after a value.
            stack = self._stack
            start = fault.position + match.end()
            rest = token[match.end() :] + fragment[fault.position + len(token) - self._offset :]
        else:
            return None
        reader = ToolInputParser(
            partial_mode="trailing-strings" if self._trailing_strings else "on", max_depth=self._max_depth,
            keep_values=False,
        )
        reader._offset = start
        if not stack:
            reader.value_count = 1  # the first top-level value ended here: jiter reads nothing more
            return reader
        reader._stack = [_Frame({} if frame.is_object else [], frame.is_object) for frame in stack]
        reader._state = _AFTER_VALUE
        reader.feed(rest)
        reader._drop_read_ons()
        return reader

    def _feed_jiter(self, fragment: str) -> None:
        jiter = self._jiter
        assert jiter is not None
        jiter.feed(fragment)
        jiter._drop_read_ons()

    def _drop_read_ons(self) -> None:
        # Past its own fault, a reader's verdict is either decided (a strict character: jiter raises; a cut
        # \u escape: jiter stops there, or raises once 4 characters follow it) or that of the reader past
        # it: the chain is kept one reader long, so that its memory is bounded by the nesting depth.
        jiter = self._jiter
        if jiter is not None and jiter._jiter is not None:
            if jiter.strict_verdict() == "ok" and not jiter.value_count:
                self._jiter = jiter._jiter
            else:
                jiter._jiter = None

    def strict_verdict(self) -> Literal["reject", "cut", "ok"]:
        """How jiter's partial mode would take the text fed so far, as to the characters a strict parser
        refuses: ``"reject"`` (a control character, invalid escape or lone surrogate before the first value
        ended), ``"cut"`` (an invalid ``\\u`` escape with fewer than 4 characters after its ``\\u``, which
        jiter reads as the end of the text: nothing after it counts) or ``"ok"``. Positions are characters
        where jiter counts bytes, and lone low surrogates written whole within one fragment are seen only with
        ``keep_values=False``: an approximation for text that fails to parse anyway."""
        u_at, strict_at = self._u_escape_at, self._strict_at
        if u_at is not None and (strict_at is None or u_at < strict_at):
            if self._offset - u_at >= 6:
                return "reject"
            # cut inside a string: at top level jiter shows it only in trailing-strings mode
            return "reject" if self._u_escape_top and not self._trailing_strings else "cut"
        return "ok" if strict_at is None else "reject"

    def _end_string(self) -> None:
        value = "".join(self._str_parts)
        self._str_parts = [] if self._keep else _SINK
        if self._str_is_key:
            self._stack[-1].key = value
            self._state = _COLON
        else:
            self._emit(value)

    # Numbers and literals ---------------------------------------------------------------------------

    def _scan_number(self, text: str, i: int, n: int) -> int:
        match = _NUMBER_RUN.match(text, i)
        if match is not None:
            self._num_parts.append(match.group())
            i = match.end()
        if i < n:
            self._end_number(text[i])  # text[i] is not consumed: the caller reads it next
        return i

    def _end_number(self, following: str) -> None:
        """The number ended before `following` ("" at end of input): emit it or fail."""
        text = "".join(self._num_parts)
        self._num_parts = []
        if text == "-" and following == "I":
            self._lit_spelling, self._lit_value = _NEGATIVE_INFINITY
            self._lit_matched = 1
            self._state = _IN_LITERAL
            return
        value = _number_value(text)
        if value is MISSING:
            reason = "integer too long" if _NUMBER.fullmatch(text) else "invalid number"
            self.failed_number = text
            raise PartialJSONError(self._token_start, reason)
        self._emit(value)

    def _scan_literal(self, text: str, i: int, n: int) -> int:
        spelling = self._lit_spelling
        matched = self._lit_matched
        piece = text[i : i + len(spelling) - matched]
        if not spelling.startswith(piece, matched):
            bad = next(k for k, char in enumerate(piece) if char != spelling[matched + k])
            raise self._fail(i + bad, f"expected {spelling!r}")
        matched += len(piece)
        if matched == len(spelling):
            self._emit(self._lit_value)
        else:
            self._lit_matched = matched
        return i + len(piece)

    # Snapshots --------------------------------------------------------------------------------------

    def _open_token_value(self) -> Any:
        """What jiter shows for the token still open at the end of the text, or MISSING."""
        state = self._state
        if state == _IN_NUMBER:
            parts = self._num_parts
            if len(parts) > 1:  # join once, so that repeated snapshots stay O(token), not O(parts)
                parts[:] = ["".join(parts)]
            return _number_value(parts[0]) if parts else MISSING
        if state == _IN_STRING and self._trailing_strings and not self._str_is_key:
            parts = self._str_parts
            if len(parts) > 1:
                parts[:] = ["".join(parts)]
            return parts[0] if parts else ""
        return MISSING  # a partial literal, a key, or a string in mode "on"

    def _build_snapshot(self) -> Any:
        if self._values:
            return self._values[0]
        value = self._open_token_value()
        # Innermost container outwards: each open container is copied once and receives the partial
        # value of its open member; closed members are shared. O(total size of the open containers).
        for frame in reversed(self._stack):
            container = frame.container
            if isinstance(container, dict):
                members = dict(container)
                if value is not MISSING:
                    members[frame.key] = value
                value = members
            else:
                items = list(container)
                if value is not MISSING:
                    items.append(value)
                value = items
        return value
