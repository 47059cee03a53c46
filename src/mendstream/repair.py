# Repairs: the Repair record, and the slow path that mends an event's JSON when the fast decoder rejects it
# (raw control characters or invalid escapes inside strings, invalid UTF-8, a data line split by a raw line
# break). The fast path (jiter on the raw bytes) lives in the accumulator; this module runs only on failure.
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import EventDecodeError
from .sse import ServerSentEvent

__all__ = ["Repair", "decode_event_json", "mend_json_strings"]


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


# A JSON string literal, with any escape pairs (DOTALL: raw line breaks inside are part of it).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Inside a string body: a valid escape (kept), a backslash starting an invalid escape, or a control char.
_BODY_FAULT = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])|(\\)|([\x00-\x1f])')


def mend_json_strings(text: str) -> tuple[str, list[str], int]:
    """Escape raw control characters and invalid escapes inside the JSON strings of ``text``.

    Returns ``(mended_text, control_chars_found, invalid_escapes_found)`` where ``control_chars_found``
    lists the code points (``"U+0009"``) in order of appearance. Text outside strings is left alone.
    """
    controls: list[str] = []
    invalid = 0

    def fix_body(match: re.Match[str]) -> str:
        nonlocal invalid
        if match.group(1) is not None:
            invalid += 1
            return "\\\\"
        char = match.group(2)
        if char is not None:
            controls.append(f"U+{ord(char):04X}")
            return f"\\u{ord(char):04x}"
        return match.group(0)

    def fix_string(match: re.Match[str]) -> str:
        literal = match.group(0)
        return '"' + _BODY_FAULT.sub(fix_body, literal[1:-1]) + '"'

    mended = _STRING.sub(fix_string, text)
    return mended, controls, invalid


def _describe_controls(controls: list[str]) -> str:
    unique = sorted(set(controls))
    return f"escaped {len(controls)} raw control character(s) inside JSON strings ({', '.join(unique)})"


def decode_event_json(sse: ServerSentEvent, snapshot: dict[str, Any] | None) -> tuple[Any, list[Repair]]:
    """Decode the data of ``sse`` when the fast decoder failed; return the value and the repairs made.

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
    try:
        return json.loads(text), repairs
    except ValueError:
        pass
    mended, controls, invalid = mend_json_strings(text)
    if controls:
        record("control_characters", _describe_controls(controls))
    if invalid:
        record("invalid_escape", f"kept {invalid} invalid escape(s) in JSON strings as literal backslashes")
    try:
        return json.loads(mended), repairs
    except ValueError as exc:
        raise EventDecodeError(
            f"event #{sse.ordinal} at byte {sse.offset} ({sse.event or 'unnamed'}): data is not JSON even "
            f"after repair: {exc.msg} at data char {exc.pos}" if isinstance(exc, json.JSONDecodeError)
            else f"event #{sse.ordinal} at byte {sse.offset}: data is not JSON even after repair",
            raw=sse.raw_data,
            snapshot=snapshot,
            offset=sse.offset,
        ) from None
