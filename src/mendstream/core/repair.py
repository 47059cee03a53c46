# Repairs: the Repair record, and the slow path that mends an event's JSON when the fast decoder rejects it
# (raw control characters or invalid escapes inside strings, invalid UTF-8, a data line split by a raw line
# break). The fast path (jiter on the raw bytes) lives in the accumulator; this module runs only on failure.
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mendstream.core.partial_json import MAX_NESTING_DEPTH, nesting_exceeded
from mendstream.errors import EventDecodeError

if TYPE_CHECKING:  # the SSE decoder records repairs (a stripped BOM): it imports this module
    from mendstream.core.sse import ServerSentEvent

__all__ = ["MendedStrings", "Repair", "decode_event_json", "mend_json_strings"]


@dataclass(frozen=True, slots=True)
class Repair:
    """One thing mendstream mended or tolerated.

    Attributes:
        kind: what happened (see the table in docs/design.md), e.g. ``"control_characters"``.
        detail: a human-readable account of what changed.
        offset: byte offset of the SSE event in the stream, when it concerns one.
        event_index: ordinal of that SSE event among dispatched events.
        index: the content block concerned, if any.
        raw: the original text, where it was kept (tool input, a cut frame, an event's data).
    """

    kind: str
    detail: str
    offset: int | None = None
    event_index: int | None = None
    index: int | None = None
    raw: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "offset": self.offset,
            "event_index": self.event_index,
            "index": self.index,
            "raw": self.raw,
        }


# Inside a string body, the longest stretch that needs no mending: plain characters and valid escapes. It
# stops only at the closing quote, at a raw control character, or at a backslash that starts no valid
# escape (or ends the text). Matched (anchored) from where the last stop was handled, so every character is
# read once; possessive, so a failed stretch never backtracks.
_BODY_RUN = re.compile(r'(?:[^"\\\x00-\x1f]+|\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt]))*+')
_CONTROL_RUN = re.compile(r"[\x00-\x1f]+")
_CHUNK_PIECES = 4096
_ESCAPED_CONTROLS = {code: f"\\u{code:04x}" for code in range(0x20)}


@dataclass(slots=True)
class MendedStrings:
    """What `mend_json_strings` did to a text.

    Attributes:
        text: the mended text.
        controls: for each raw control character found inside a string, as ``"U+0009"``, how many times.
        invalid_escapes: how many backslashes starting no valid escape were doubled.
    """

    text: str
    controls: dict[str, int]
    invalid_escapes: int


def mend_json_strings(text: str, /, *, escape_controls: bool = True) -> MendedStrings:
    """Mend the JSON strings of ``text``: invalid escapes become literal backslashes, control chars escapes.

    A string is a ``"`` outside any string up to the next ``"`` not escaped by a backslash; text outside
    strings is left alone, and so is everything from a string that never closes to the end. Inside a
    string, a backslash that starts no valid escape (``\\H``, ``\\u12``) is doubled, and each raw
    U+0000-U+001F becomes ``\\u00XX`` (unless ``escape_controls`` is false: then they are only counted,
    for a caller that decodes with ``json.loads(strict=False)``, which takes them raw with the same value
    and spares the sixfold growth).

    One left-to-right pass: O(len(text)) time, and besides the result, O(1) memory per mended spot.
    """
    controls: Counter[str] = Counter()
    invalid = 0
    # The mended text so far is "".join(chunks + pieces) + text[copied:i]. Pieces are joined into a chunk
    # every _CHUNK_PIECES, so that a mend at every other character costs no list slot per mend.
    chunks: list[str] = []
    pieces: list[str] = []
    emitted = 0  # characters in chunks and pieces
    copied = 0

    def emit(end: int, replacement: str, resume: int) -> None:
        """Copy text[copied:end], then `replacement`, and go on copying from `resume`."""
        nonlocal copied, emitted
        stretch = text[copied:end]
        pieces.append(stretch)
        pieces.append(replacement)
        emitted += len(stretch) + len(replacement)
        copied = resume
        if len(pieces) >= _CHUNK_PIECES:
            chunks.append("".join(pieces))
            pieces.clear()

    n = len(text)
    pos = 0
    while True:
        quote = text.find('"', pos)
        if quote < 0:
            break
        # Mend this string provisionally: if it never closes, everything from it on stays as it was.
        mark = emitted + quote - copied  # length of the mended text up to this string
        invalid_before = invalid
        i = quote + 1
        closed = False
        while True:
            i = _BODY_RUN.match(text, i).end()  # type: ignore[union-attr]  # X*+ always matches
            if i >= n:
                break
            char = text[i]
            if char == '"':
                closed = True
                break
            if char == "\\":
                if i + 1 >= n:  # a lone backslash at the end: the string cannot close
                    break
                # The escaped character is read afresh: it is plain, or a control character to mend.
                emit(i, "\\\\", i + 1)
                i += 1
                invalid += 1
                continue
            run = _CONTROL_RUN.match(text, i)
            assert run is not None
            chars = run.group()
            if len(chars) == 1:
                controls[chars] += 1
            else:
                controls.update(chars)
            if escape_controls:
                emit(i, chars.translate(_ESCAPED_CONTROLS), run.end())
            i = run.end()
        if not closed:
            # Nothing in this string counts: every control character between its quote and where the scan
            # stopped was counted above, so uncount them all.
            invalid = invalid_before
            for run in _CONTROL_RUN.finditer(text, quote + 1, i):
                controls.subtract(run.group())
            controls = +controls  # drop the zero counts
            if emitted > mark:  # undo this string's mends: the result is cut back to `mark`, then text[quote:]
                chunks.append("".join(pieces))
                mended = "".join(chunks)
                chunks[:] = [mended[:mark]]
                pieces.clear()
                del mended
                emitted = mark
                copied = quote
            break
        pos = i + 1
    counts = {f"U+{ord(char):04X}": count for char, count in controls.items()}
    if not emitted:
        return MendedStrings(text, counts, invalid)
    chunks.append("".join(pieces))
    pieces.clear()
    chunks.append(text[copied:])
    return MendedStrings("".join(chunks), counts, invalid)


def _describe_controls(controls: dict[str, int]) -> str:
    unique = sorted(controls)
    return f"escaped {sum(controls.values())} raw control character(s) inside JSON strings ({', '.join(unique)})"


def decode_event_json(
    sse: ServerSentEvent, snapshot: dict[str, Any] | Callable[[], dict[str, Any] | None] | None
) -> tuple[Any, list[Repair]]:
    """Decode the data of ``sse`` when the fast decoder failed; return the value and the repairs made.

    ``snapshot`` is the message so far, for the error; pass a callable (e.g. the accumulator's bound
    ``message`` method) to have it built only if decoding fails, so that repairing many events does not
    cost one whole-message snapshot each.

    Raises:
        EventDecodeError: no repair produced valid JSON; ``.raw`` holds the data bytes.
    """
    repairs: list[Repair] = []

    def record(kind: str, detail: str, raw: str | None = None) -> None:
        repairs.append(Repair(kind, detail, sse.offset, sse.ordinal, raw=raw))

    raw = sse.raw_data
    if sse.stray_lines:
        raw = b"\n".join(value for _, value in sse.stray_lines)
        record(
            "split_data_line",
            f"rejoined {sum(1 for is_data, _ in sse.stray_lines if not is_data)} line(s) split off a data "
            "line by a raw line break",
            sse.raw_data.decode("utf-8", "replace"),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", "replace")
        record("invalid_utf8", f"replaced invalid UTF-8 bytes with U+FFFD (first at data byte {exc.start})")
    def failure(why: str) -> EventDecodeError:
        return EventDecodeError(
            f"event #{sse.ordinal} at byte {sse.offset} ({sse.event or 'unnamed'}): {why}",
            raw=sse.raw_data,
            snapshot=snapshot() if callable(snapshot) else snapshot,
            offset=sse.offset,
        )

    # Refuse deep nesting before json.loads can recurse on it (see "Nesting limit" in partial_json.py).
    too_deep = nesting_exceeded(text)
    if too_deep is not None:
        raise failure(f"data nests deeper than the limit of {MAX_NESTING_DEPTH} containers (at data char {too_deep})")
    try:
        return json.loads(text), repairs
    except ValueError:
        pass
    except RecursionError:  # only from a caller already deep in its own stack
        raise failure(f"data nests too deep to decode from this call stack (limit {MAX_NESTING_DEPTH})") from None
    # Raw control characters are only counted: json.loads(strict=False) takes them with the value their
    # \u00XX escape would have, without the sixfold copy that escaping them would make.
    mended = mend_json_strings(text, escape_controls=False)
    if mended.controls:
        record("control_characters", _describe_controls(mended.controls))
    if mended.invalid_escapes:
        record(
            "invalid_escape",
            f"kept {mended.invalid_escapes} invalid escape(s) in JSON strings as literal backslashes",
        )
    try:
        return json.loads(mended.text, strict=False), repairs
    except json.JSONDecodeError as exc:
        raise failure(f"data is not JSON even after repair: {exc.msg} at data char {exc.pos}") from None
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise failure(f"data is not JSON even after repair: {exc}") from None
    except RecursionError:
        raise failure(f"data nests too deep to decode from this call stack (limit {MAX_NESTING_DEPTH})") from None
