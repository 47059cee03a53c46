# Requests that never 400 (sans-IO). `sanitize_request` rewrites a Messages API request body so that the
# mechanical 400s agents hit most do not happen: empty and whitespace-only text blocks, empty messages, a
# final assistant turn (prefill) ending in whitespace, `tool_use` / `tool_result` pairs broken by an agent
# interrupted mid-tool, and more images than the API takes or images over its documented size. It never
# mutates the caller's objects (copy-on-write: the original object comes back when nothing changes) and
# never changes an assistant message that holds `thinking` / `redacted_thinking` blocks. `validate_request`
# applies the same rules as checks and words each problem as the API does, so a test server can answer the
# API's 400. Each rule, its error text and the page that documents it: docs/requests.md.
#
# Theory of operation: the messages are read once into working records (`_Msg`: role, blocks with their
# index in the caller's list, whether thinking freezes it), then a fixed sequence of passes, each linear in
# the request, changes the records: (1) block cleaning, (2) empty messages, (3) tool pairing, (4) the final
# assistant turn, (5) media, then the system prompt; the records are written back only where something
# changed. Nothing recurses: the only nesting read is one level of `tool_result.content` (the API allows no
# more), so hostile nesting costs nothing. The checks in `validate_request` use the same predicates.
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mendstream.errors import UsageError

__all__ = [
    "EMPTY_MESSAGE",
    "EMPTY_TEXT",
    "IMAGE_TOO_LARGE",
    "IMAGE_TOO_MANY_PIXELS",
    "MISSING_TOOL_RESULT",
    "ORPHAN_TOOL_RESULT",
    "RULES",
    "TOO_MANY_MEDIA",
    "TRAILING_WHITESPACE",
    "WHITESPACE_TEXT",
    "RequestChange",
    "RequestLimits",
    "RequestProblem",
    "Rule",
    "SanitizeResult",
    "SanitizedBody",
    "apply_sanitize",
    "image_dimensions",
    "sanitize_body",
    "sanitize_request",
    "validate_request",
]

# -- the rules ----------------------------------------------------------------------------------------------

EMPTY_TEXT: Final = "empty_text_block"
WHITESPACE_TEXT: Final = "whitespace_only_text"
EMPTY_MESSAGE: Final = "empty_message"
TRAILING_WHITESPACE: Final = "trailing_whitespace"
MISSING_TOOL_RESULT: Final = "tool_use_without_result"
ORPHAN_TOOL_RESULT: Final = "tool_result_without_use"
TOO_MANY_MEDIA: Final = "too_many_media"
IMAGE_TOO_LARGE: Final = "image_too_large"
IMAGE_TOO_MANY_PIXELS: Final = "image_too_many_pixels"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its ``kind``, the API's error message for it (a ``str.format`` template: ``{path}`` is the
    location in the API's notation, ``{where}`` ``messages`` or ``system``, the other names the numbers the
    message quotes), and the documentation page the rule rests on (docs/requests.md also names where each
    error text was seen)."""

    kind: str
    api_message: str
    source: str


_VISION = "https://platform.claude.com/docs/en/build-with-claude/vision"
_TOOLS = "https://platform.claude.com/docs/en/agents-and-tools/tool-use/handle-tool-calls"
_MESSAGES = "https://platform.claude.com/docs/en/api/messages/create"
_PREFILL = "https://platform.claude.com/docs/en/build-with-claude/working-with-messages"

RULES: Final[Mapping[str, Rule]] = {
    rule.kind: rule
    for rule in (
        Rule(EMPTY_TEXT, "{where}: text content blocks must be non-empty", _MESSAGES),
        Rule(WHITESPACE_TEXT, "{where}: text content blocks must contain non-whitespace text", _MESSAGES),
        Rule(EMPTY_MESSAGE,
             "{path}: all messages must have non-empty content except for the optional final assistant message",
             _MESSAGES),
        Rule(TRAILING_WHITESPACE, "messages: final assistant content cannot end with trailing whitespace", _PREFILL),
        Rule(MISSING_TOOL_RESULT,
             "{path}: `tool_use` ids were found without `tool_result` blocks immediately after: {ids}. Each "
             "`tool_use` block must have a corresponding `tool_result` block in the next message.", _TOOLS),
        Rule(ORPHAN_TOOL_RESULT,
             "{path}: unexpected `tool_use_id` found in `tool_result` blocks: {ids}. Each `tool_result` block "
             "must have a corresponding `tool_use` block in the previous message.", _TOOLS),
        Rule(TOO_MANY_MEDIA, "too many images and documents: {images} + {documents} > {limit}", _VISION),
        Rule(IMAGE_TOO_LARGE,
             "{path}.image.source.base64: image exceeds {mb} MB maximum: {size} bytes > {limit} bytes", _VISION),
        Rule(IMAGE_TOO_MANY_PIXELS,
             "{path}.image.source.base64.data: At least one of the image dimensions exceed max allowed size"
             "{many}: {limit} pixels", _VISION),
    )
}

_THINKING: Final = frozenset({"thinking", "redacted_thinking"})
_MEDIA: Final = frozenset({"image", "document"})
_B64_ALPHABET = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MAX_JPEG_SEGMENTS = 4096  # a JPEG with more segments before its frame header is not read (dimensions unknown)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length field
_JPEG_NOT_FRAMES = frozenset({0xC4, 0xC8, 0xCC})  # C0-CF markers that are not frame headers

# The text of a tool_result added for a tool_use that has none. It is an error result (is_error: true), the
# documented way to tell the model a tool call did not produce a result.
INTERRUPTED_TOOL_TEXT: Final = "No result was recorded for this tool call: it was interrupted or never ran."


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The API's documented limits the media rules apply (see docs/requests.md for where each comes from).

    Attributes:
        max_media: images plus documents in one request.
        max_image_bytes: length of one image's base64 data.
        max_image_pixels: the longest side of an image.
        many_images: above this many images in one request, ``many_image_pixels`` applies instead.
        many_image_pixels: the longest side of an image in a request with more than ``many_images`` images.

    Raises :class:`~mendstream.errors.UsageError` for a value that is not a positive int.
    """

    max_media: int = 100
    max_image_bytes: int = 5 * 1024 * 1024
    max_image_pixels: int = 8000
    many_images: int = 20
    many_image_pixels: int = 2000

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"RequestLimits.{name} must be an int >= 1; got {value!r}")


DEFAULT_LIMITS: Final = RequestLimits()


@dataclass(frozen=True, slots=True)
class RequestChange:
    """One change the sanitiser made to a request (the request-side sibling of :class:`mendstream.Repair`).

    Attributes:
        kind: the rule (one of :data:`RULES`), e.g. ``"empty_text_block"``.
        detail: a human-readable account of what changed.
        path: where, in the caller's numbering and the API's notation (``messages.3.content.1``, ``system``).
        message: index of the message concerned in the caller's ``messages`` (None for ``system``).
        block: index of the block in that message's ``content`` as the caller sent it, when it concerns one.
        raw: the value removed or altered (the caller's own object, not a copy), or the ids concerned.
    """

    kind: str
    detail: str
    path: str
    message: int | None = None
    block: int | None = None
    raw: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail, "path": self.path, "message": self.message,
                "block": self.block, "raw": self.raw}


@dataclass(frozen=True, slots=True)
class RequestProblem:
    """One reason the API would answer 400: the rule, where, and the API's own error message.

    ``error_body()`` is the body the API sends: ``{"type": "error", "error": {"type": "invalid_request_error",
    "message": ...}}``.
    """

    kind: str
    path: str
    message: str
    status: int = 400
    error_type: str = "invalid_request_error"

    def error_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}


@dataclass(frozen=True, slots=True)
class SanitizeResult:
    """The outcome of :func:`sanitize_request`: the request to send (the caller's own object when nothing
    changed) and the changes made, in the order they were made."""

    payload: Any
    changes: tuple[RequestChange, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)


# -- reading blocks -----------------------------------------------------------------------------------------


def _field(block: Any, name: str) -> Any:
    """``block[name]`` for a mapping, the attribute for an SDK model object (anything with ``model_dump``),
    else None: other objects are opaque (their attributes could run arbitrary code)."""
    if type(block) is dict:  # the common case, without the ABC check below (this runs for every block)
        return block.get(name)
    if isinstance(block, Mapping):
        return block.get(name)
    if callable(getattr(type(block), "model_dump", None)):
        return getattr(block, name, None)
    return None


def _type(block: Any) -> str | None:
    kind = _field(block, "type")
    return kind if isinstance(kind, str) else None


def _text(block: Any) -> str | None:
    """The text of a text block, else None."""
    if _type(block) != "text":
        return None
    text = _field(block, "text")
    return text if isinstance(text, str) else None


def _is_empty_text(block: Any) -> bool:
    return _text(block) == ""


def _is_blank_text(block: Any) -> bool:
    """A text block of whitespace only (not empty: that is the empty-text rule)."""
    text = _text(block)
    return text is not None and text != "" and not text.strip()


def _all_blank(blocks: Sequence[Any]) -> bool:
    """The whitespace rule's condition: a content made only of whitespace-only text blocks."""
    return bool(blocks) and all(_is_blank_text(b) for b in blocks)


def _as_dict(block: Any) -> dict[str, Any] | None:
    """A block as a new dict, to change it: a mapping's items, or an SDK model dumped as the SDK sends it."""
    if isinstance(block, Mapping):
        return dict(block)
    dump = getattr(type(block), "model_dump", None)
    if not callable(dump):
        return None
    try:
        out = block.model_dump(exclude_unset=True, mode="json", by_alias=True,
                               exclude=getattr(block, "__api_exclude__", None))
    except Exception:  # an object that only looks like a model: leave it alone
        return None
    return out if isinstance(out, dict) else None


def _tool_use_ids(blocks: Sequence[Any] | None) -> list[str]:
    if not blocks:
        return []
    seen: dict[str, None] = {}
    for block in blocks:
        if _type(block) == "tool_use":
            ident = _field(block, "id")
            if isinstance(ident, str):
                seen.setdefault(ident, None)
    return list(seen)


def _result_id(block: Any) -> str | None:
    if _type(block) != "tool_result":
        return None
    ident = _field(block, "tool_use_id")
    return ident if isinstance(ident, str) else None


def _nested(block: Any) -> Sequence[Any] | None:
    """The content list of a tool_result block (the one level of nesting the API allows), else None."""
    if _type(block) != "tool_result":
        return None
    inner = _field(block, "content")
    return inner if isinstance(inner, list | tuple) else None


def _is_frozen(role: str | None, blocks: Sequence[Any] | None) -> bool:
    """An assistant message holding thinking blocks: the API requires it to stay as it was."""
    return role == "assistant" and bool(blocks) and any(_type(b) in _THINKING for b in blocks or ())


# -- image dimensions ---------------------------------------------------------------------------------------


class _Base64Bytes:
    """Random access to the bytes a base64 string encodes, decoding only the 4-character groups asked for.

    Every character before the furthest one read is checked to be in the base64 alphabet (once, in order), so
    an offset is never misread because of whitespace or other junk inside the data: such data reads as None.
    """

    __slots__ = ("_checked", "_data")

    def __init__(self, data: str) -> None:
        self._data = data
        self._checked = 0

    def read(self, start: int, size: int) -> bytes | None:
        first = start // 3 * 4
        last = -(-(start + size) // 3) * 4
        if last > len(self._data):
            return None
        if last > self._checked:
            if _B64_ALPHABET.fullmatch(self._data, self._checked, last) is None:
                return None
            self._checked = last
        try:
            decoded = base64.b64decode(self._data[first:last], validate=True)
        except (binascii.Error, ValueError):
            return None
        offset = start - first // 4 * 3
        chunk = decoded[offset : offset + size]
        return chunk if len(chunk) == size else None


def image_dimensions(data: str, /) -> tuple[int, int] | None:
    """``(width, height)`` of a base64-encoded PNG, GIF, WebP or JPEG image, read from its header without
    decoding the image (JPEG: from the first frame header, walking the segments before it); None when the
    data is none of these, is cut, or is not clean base64. Work is bounded by the number of header segments
    read, not by the image's size."""
    reader = _Base64Bytes(data)
    head = reader.read(0, 30) or reader.read(0, 24) or reader.read(0, 10)
    if head is None:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if chunk == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_dimensions(reader)
    return None


def _jpeg_dimensions(reader: _Base64Bytes) -> tuple[int, int] | None:
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        marker = reader.read(pos, 2)
        if marker is None or marker[0] != 0xFF:
            return None
        code = marker[1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        if code in _JPEG_STANDALONE:
            pos += 2
            continue
        if code in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = reader.read(pos + 2, 2)
        if length is None:
            return None
        if 0xC0 <= code <= 0xCF and code not in _JPEG_NOT_FRAMES:
            frame = reader.read(pos + 5, 4)
            if frame is None:
                return None
            return int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[0:2], "big")
        pos += 2 + int.from_bytes(length, "big")
    return None


# -- media --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Media:
    """One image or document block, where it is: message record, block position, nested position."""

    msg: _Msg
    position: int  # index in msg.blocks
    nested: int | None  # index in the tool_result's content list, when nested
    block: Any
    kind: str
    path: str


def _base64_data(block: Any) -> str | None:
    source = _field(block, "source")
    if _field(source, "type") != "base64":
        return None
    data = _field(source, "data")
    return data if isinstance(data, str) else None


def _image_verdict(block: Any, pixel_limit: int, many: bool, limits: RequestLimits) -> tuple[str, str] | None:
    """``(kind, API message details)`` when an image breaks a per-image limit, else None."""
    data = _base64_data(block)
    if data is None:
        return None
    if len(data) > limits.max_image_bytes:
        return IMAGE_TOO_LARGE, f"{len(data)} bytes > {limits.max_image_bytes} bytes"
    size = image_dimensions(data)
    if size is not None and max(size) > pixel_limit:
        return IMAGE_TOO_MANY_PIXELS, f"{size[0]}x{size[1]} pixels > {pixel_limit}" + (" (many-image request)"
                                                                                        if many else "")
    return None


def _image_message(kind: str, path: str, block: Any, pixel_limit: int, many: bool, limits: RequestLimits) -> str:
    if kind == IMAGE_TOO_LARGE:
        data = _base64_data(block) or ""
        mb = limits.max_image_bytes / (1024 * 1024)
        return RULES[kind].api_message.format(path=path, mb=f"{mb:g}", size=len(data), limit=limits.max_image_bytes)
    return RULES[kind].api_message.format(path=path, many=" for many-image requests" if many else "",
                                          limit=pixel_limit)


# -- working records ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Msg:
    """A message being sanitised. ``blocks`` is the content as a list (None when the content is a string, in
    ``text``), ``origins`` the index each block had in the caller's content (None for added blocks)."""

    index: int | None  # in the caller's messages; None for a message the sanitiser added
    source: Any
    role: str | None  # "user" / "assistant"; None: a message of a shape we do not read, passed through
    text: str | None = None
    blocks: list[Any] | None = None
    origins: list[int | None] = field(default_factory=list)
    frozen: bool = False
    modified: bool = False
    changes: list[RequestChange] = field(default_factory=list)

    @classmethod
    def read(cls, index: int, message: Any) -> _Msg:
        if not isinstance(message, Mapping):
            return cls(index, message, None)
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            return cls(index, message, None)
        if isinstance(content, str):
            return cls(index, message, role, text=content)
        if isinstance(content, list | tuple):
            blocks = list(content)
            return cls(index, message, role, blocks=blocks, origins=list(range(len(blocks))),
                       frozen=_is_frozen(role, blocks))
        return cls(index, message, None)

    @classmethod
    def added(cls, role: str, blocks: list[Any]) -> _Msg:
        return cls(None, None, role, blocks=blocks, origins=[None] * len(blocks), modified=True)

    def path(self, block: int | None = None) -> str:
        where = f"messages.{self.index}" if self.index is not None else "messages.(added)"
        return where if block is None else f"{where}.content.{block}"

    def change(self, kind: str, detail: str, block: int | None = None, raw: Any = None,
               nested: int | None = None) -> None:
        path = self.path(block)
        if nested is not None:
            path += f".content.{nested}"
        self.changes.append(RequestChange(kind, detail, path, self.index, block, raw))
        self.modified = True

    def restore(self) -> None:
        """Undo this message's changes (a fix that cannot be completed is not half-applied)."""
        fresh = _Msg.read(self.index or 0, self.source)
        self.text, self.blocks, self.origins = fresh.text, fresh.blocks, fresh.origins
        self.modified = False
        self.changes.clear()

    def is_empty(self) -> bool:
        return self.blocks is not None and not self.blocks

    def set_blocks(self, blocks: list[Any], origins: list[int | None]) -> None:
        self.text, self.blocks, self.origins, self.modified = None, blocks, origins, True

    def build(self) -> Any:
        if not self.modified:
            return self.source
        out = dict(self.source) if isinstance(self.source, Mapping) else {"role": self.role}
        out["content"] = self.text if self.blocks is None else self.blocks
        return out


# -- the passes ---------------------------------------------------------------------------------------------


def _clean_blocks(m: _Msg) -> None:
    """Pass 1: empty text blocks go (also inside tool_result content); a content of whitespace-only text
    goes; a string content that is empty or whitespace becomes an empty list (pass 2 decides about it)."""
    if m.role is None or m.frozen:
        return
    if m.text is not None:
        if m.text == "":
            m.change(EMPTY_TEXT, "the content was an empty string; removed", raw="")
            m.set_blocks([], [])
        elif not m.text.strip():
            m.change(WHITESPACE_TEXT, f"the content was whitespace only ({m.text!r}); removed", raw=m.text)
            m.set_blocks([], [])
        return
    assert m.blocks is not None
    blocks: list[Any] = []
    origins: list[int | None] = []
    for block, origin in zip(m.blocks, m.origins, strict=True):
        if _is_empty_text(block):
            m.change(EMPTY_TEXT, "an empty text block was removed", origin, block)
            continue
        inner = _nested(block)
        if inner is not None and any(_is_empty_text(b) for b in inner):
            updated = _as_dict(block)
            if updated is not None:
                kept = []
                for k, sub in enumerate(inner):
                    if _is_empty_text(sub):
                        m.change(EMPTY_TEXT, "an empty text block inside a tool_result was removed", origin, sub,
                                 nested=k)
                    else:
                        kept.append(sub)
                if kept:
                    updated["content"] = kept
                else:  # the API's tool_result content is optional; an empty result is one without content
                    del updated["content"]
                block = updated
        blocks.append(block)
        origins.append(origin)
    if _all_blank(blocks):
        for block, origin in zip(blocks, origins, strict=True):
            m.change(WHITESPACE_TEXT, "a whitespace-only text block (all the content) was removed", origin, block)
        blocks, origins = [], []
    if m.modified:
        m.set_blocks(blocks, origins)


def _drop_empty_messages(msgs: list[_Msg], dropped: list[RequestChange]) -> None:
    """Pass 2: an empty message is removed (the API combines the consecutive same-role turns this leaves), except
    the last message when it is a user's (removing it would turn the request into a prefill) and the first
    when an assistant message follows (the request would start with an assistant turn). An empty final
    assistant message is valid and stays, unless pass 1 emptied it. Decided from the end, so that "last" means
    the last message that remains. A message kept restores its content (no half-applied fix)."""
    keep = [True] * len(msgs)
    after: _Msg | None = None  # the nearest kept message after the one being decided
    for k in range(len(msgs) - 1, -1, -1):
        m = msgs[k]
        if m.role is not None and m.is_empty():
            if after is None:
                drop = m.role == "assistant" and m.modified
            else:
                drop = not (k == 0 and after.role == "assistant")
            if drop:
                keep[k] = False
                dropped.extend(m.changes)
                dropped.append(RequestChange(EMPTY_MESSAGE, f"the {m.role} message had no content; removed",
                                             m.path(), m.index, None, m.source))
                continue
            if m.modified:
                m.restore()
        after = m
    if not all(keep):
        msgs[:] = [m for m, kept in zip(msgs, keep, strict=True) if kept]


def _orphan_note(block: Any, ident: str) -> list[Any]:
    """The blocks an orphan tool_result becomes: a text note naming it, then its content (which the user turn
    accepts as it is: text, images, documents, search results)."""
    error = " (an error result)" if _field(block, "is_error") is True else ""
    note = (f"[tool result{error} for tool call {ident}, whose tool_use is not in the previous assistant "
            f"message; kept here as text]")
    inner = _field(block, "content")
    out: list[Any] = []
    if isinstance(inner, str):
        out.append({"type": "text", "text": f"{note}\n{inner}" if inner.strip() else note})
    else:
        out.append({"type": "text", "text": note})
        if isinstance(inner, list | tuple):
            out.extend(b for b in inner if not _is_empty_text(b))
    marker = _field(block, "cache_control")
    if marker is not None and isinstance(out[-1], Mapping):
        out[-1] = {**out[-1], "cache_control": marker}
    return out


def _fix_orphan_results(msgs: list[_Msg]) -> None:
    """Pass 3a: a tool_result whose tool_use_id is not a tool_use of the previous (assistant) message becomes
    text, placed after the message's remaining tool_result blocks (the API wants tool results first)."""
    for k, m in enumerate(msgs):
        if m.role != "user" or not m.blocks:
            continue
        prev = msgs[k - 1] if k > 0 else None
        allowed = set(_tool_use_ids(prev.blocks)) if prev is not None and prev.role == "assistant" else set()
        if not any((ident := _result_id(b)) is not None and ident not in allowed for b in m.blocks):
            continue
        kept: list[Any] = []
        kept_origins: list[int | None] = []
        notes: list[Any] = []
        insert_at: int | None = None
        for block, origin in zip(m.blocks, m.origins, strict=True):
            ident = _result_id(block)
            if ident is not None and ident not in allowed:
                m.change(ORPHAN_TOOL_RESULT, f"tool_result for {ident} has no tool_use in the previous assistant "
                                             "message; turned into text", origin, block)
                notes.extend(_orphan_note(block, ident))
                if insert_at is None:
                    insert_at = len(kept)
                continue
            kept.append(block)
            kept_origins.append(origin)
        last_result = max((i + 1 for i, b in enumerate(kept) if _result_id(b) is not None), default=0)
        at = max(last_result, insert_at or 0)
        m.set_blocks(kept[:at] + notes + kept[at:], kept_origins[:at] + [None] * len(notes) + kept_origins[at:])


def _add_missing_results(msgs: list[_Msg]) -> None:
    """Pass 3b: every tool_use id of an assistant message gets a tool_result in the next message: an error
    result (is_error: true) is added to the next user message, after its own tool results, or in a new user
    message when the next message is not a user's. The assistant message itself is never changed."""
    out: list[_Msg] = []
    for k, m in enumerate(msgs):
        out.append(m)
        ids = _tool_use_ids(m.blocks) if m.role == "assistant" else []
        if not ids:
            continue
        nxt = msgs[k + 1] if k + 1 < len(msgs) else None
        have = {_result_id(b) for b in nxt.blocks or ()} if nxt is not None and nxt.role == "user" else set()
        missing = [ident for ident in ids if ident not in have]
        if not missing:
            continue
        added = [{"type": "tool_result", "tool_use_id": ident, "is_error": True, "content": INTERRUPTED_TOOL_TEXT}
                 for ident in missing]
        for ident in missing:
            m.changes.append(RequestChange(
                MISSING_TOOL_RESULT, f"tool_use {ident} had no tool_result in the next message; added an error "
                "result" + ("" if nxt is not None and nxt.role == "user" else " in a new user message"),
                m.path(), m.index, None, ident))
        if nxt is not None and nxt.role == "user":
            _insert_results(nxt, added)
        else:
            out.append(_Msg.added("user", added))
    if len(out) != len(msgs):
        msgs[:] = out


def _insert_results(m: _Msg, added: list[Any]) -> None:
    """Add tool results to a user message, after its own; its content is then cleaned again, since a message
    left as it was (an empty final user message) is not empty any more once it holds results."""
    if m.blocks is None:
        m.set_blocks([{"type": "text", "text": m.text or ""}], [None])
    assert m.blocks is not None
    at = max((i + 1 for i, b in enumerate(m.blocks) if _result_id(b) is not None), default=0)
    m.set_blocks(m.blocks[:at] + added + m.blocks[at:], m.origins[:at] + [None] * len(added) + m.origins[at:])
    _clean_blocks(m)


def _trim_final_assistant(msgs: list[_Msg], dropped: list[RequestChange]) -> None:
    """Pass 4: the final assistant turn (a prefill) must not end with whitespace: the trailing whitespace of
    its last text block is removed; a block left empty goes, and a message left empty goes (no prefill)."""
    while msgs and msgs[-1].role == "assistant" and not msgs[-1].frozen:
        m = msgs[-1]
        if m.text is not None:
            stripped = m.text.rstrip()
            if stripped != m.text:
                m.change(TRAILING_WHITESPACE, "trailing whitespace removed from the final assistant content",
                         raw=m.text)
                m.text = stripped
            return
        assert m.blocks is not None
        while m.blocks:  # m.blocks is the sanitiser's own list: changed in place
            last = m.blocks[-1]
            text = _text(last)
            if text is None or text == text.rstrip():
                break
            stripped = text.rstrip()
            if stripped:
                updated = _as_dict(last)
                if updated is None:
                    break
                updated["text"] = stripped
                m.change(TRAILING_WHITESPACE, "trailing whitespace removed from the final assistant text block",
                         m.origins[-1], last)
                m.blocks[-1] = updated
                break
            m.change(TRAILING_WHITESPACE, "the final assistant text block was only whitespace; removed",
                     m.origins[-1], last)
            m.blocks.pop()
            m.origins.pop()
        if m.blocks or not m.modified:
            return
        dropped.extend(m.changes)
        dropped.append(RequestChange(EMPTY_MESSAGE, "the final assistant message was left empty; removed",
                                     m.path(), m.index, None, m.source))
        msgs.pop()


def _collect_media(msgs: list[_Msg], *, include_frozen: bool = False) -> list[_Media]:
    """Every image and document block, in request order (nested ones in their tool_result's place)."""
    found: list[_Media] = []
    for m in msgs:
        if m.role is None or (m.frozen and not include_frozen) or not m.blocks:
            continue
        for position, (block, origin) in enumerate(zip(m.blocks, m.origins, strict=True)):
            base = m.path(origin) if origin is not None else m.path()
            kind = _type(block)
            if kind in _MEDIA:
                found.append(_Media(m, position, None, block, kind or "", base))
                continue
            inner = _nested(block)
            for k, sub in enumerate(inner or ()):
                sub_kind = _type(sub)
                if sub_kind in _MEDIA:
                    found.append(_Media(m, position, k, sub, sub_kind or "", f"{base}.tool_result.content.{k}"))
    return found


def _placeholder(item: _Media, reason: str) -> dict[str, Any]:
    what = "image" if item.kind == "image" else "document"
    title = _field(item.block, "title")
    named = f" {title!r}" if isinstance(title, str) and title else ""
    out: dict[str, Any] = {"type": "text", "text": f"[{what}{named} removed: {reason}]"}
    marker = _field(item.block, "cache_control")
    if marker is not None:
        out["cache_control"] = marker
    return out


def _replace_media(item: _Media, kind: str, reason: str, owned: dict[tuple[int, int], list[Any]]) -> None:
    """Replace one media block by a text note. ``m.blocks`` is the sanitiser's own list, changed in place, and
    a tool_result copied once keeps its copied content list in ``owned``, so many replacements stay linear."""
    m = item.msg
    assert m.blocks is not None
    text = _placeholder(item, reason)
    if item.nested is None:
        m.blocks[item.position] = text
    else:
        key = (id(m), item.position)
        inner = owned.get(key)
        if inner is None:
            current = m.blocks[item.position]
            holder, nested = _as_dict(current), _nested(current)
            if holder is None or nested is None:
                return
            inner = owned[key] = list(nested)
            holder["content"] = inner
            m.blocks[item.position] = holder
        inner[item.nested] = text
    m.change(kind, f"{item.kind} replaced by a text note: {reason}", m.origins[item.position], item.block,
             nested=item.nested)


def _fix_media(msgs: list[_Msg], limits: RequestLimits) -> None:
    """Pass 5: media beyond the per-request count are replaced, oldest first, by a text note; then images over
    the per-image size or dimension limits. The dimension limit is chosen from the image count left after the
    count rule (more than ``many_images``: ``many_image_pixels``)."""
    owned: dict[tuple[int, int], list[Any]] = {}
    media = _collect_media(msgs)
    images = sum(1 for item in media if item.kind == "image")
    excess = len(media) - limits.max_media
    if excess > 0:
        reason = (f"the request held {images} images and {len(media) - images} documents; the API accepts at most "
                  f"{limits.max_media}")
        for item in media[:excess]:
            _replace_media(item, TOO_MANY_MEDIA, reason, owned)
        media = _collect_media(msgs)
        images = sum(1 for item in media if item.kind == "image")
    many = images > limits.many_images
    pixels = limits.many_image_pixels if many else limits.max_image_pixels
    for item in media:
        if item.kind != "image":
            continue
        verdict = _image_verdict(item.block, pixels, many, limits)
        if verdict is not None:
            kind, details = verdict
            _replace_media(item, kind, f"{details}; over the API's limit", owned)


def _sanitize_system(system: Any, changes: list[RequestChange]) -> tuple[Any, bool]:
    """The system prompt: whitespace-only text removed, empty text blocks removed, and the system field itself
    removed when nothing is left. Returns ``(new value, removed)``."""
    if isinstance(system, str):
        if system and not system.strip():
            changes.append(RequestChange(WHITESPACE_TEXT, "the system prompt was whitespace only; removed",
                                         "system", raw=system))
            return None, True
        return system, False
    if not isinstance(system, list | tuple):
        return system, False
    kept: list[tuple[int, Any]] = []
    for j, block in enumerate(system):
        if _is_empty_text(block):
            changes.append(RequestChange(EMPTY_TEXT, "an empty system text block was removed", f"system.{j}",
                                         None, j, block))
        else:
            kept.append((j, block))
    if _all_blank([block for _, block in kept]):
        for j, block in kept:
            changes.append(RequestChange(WHITESPACE_TEXT, "a whitespace-only system text block (all the system "
                                         "prompt) was removed", f"system.{j}", None, j, block))
        kept = []
    if len(kept) == len(system):
        return system, False
    return ([block for _, block in kept], False) if kept else (None, True)


# -- public entries -----------------------------------------------------------------------------------------


def _check_payload(payload: Any, limits: Any) -> RequestLimits:
    if not isinstance(payload, Mapping):
        raise UsageError(f"a Messages API request must be a mapping (the JSON object); got {type(payload).__name__}")
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, RequestLimits):
        raise UsageError(f"limits must be a mendstream RequestLimits; got {limits!r}")
    return limits


def sanitize_request(payload: Mapping[str, Any], /, *, limits: RequestLimits | None = None) -> SanitizeResult:
    """Rewrite a Messages API request so that the API's mechanical 400s do not happen (docs/requests.md).

    Args:
        payload: the request body as a mapping (``messages``, ``system``, ...). Content blocks may be dicts or
            the SDK's model objects (``message.content`` passed back as is).
        limits: the media limits to apply (:class:`RequestLimits`; default: the API's documented ones).

    Returns a :class:`SanitizeResult`. Its ``payload`` is the caller's own object when nothing changed;
    otherwise a new mapping that shares every part that did not change (nothing the caller passed is ever
    mutated). Assistant messages holding ``thinking`` / ``redacted_thinking`` blocks come back as the very same
    objects. Parts of a shape the API would reject anyway (``messages`` not a list, a block that is neither a
    mapping nor an SDK model) pass through untouched. Problems that cannot be fixed without inventing content
    (an empty final user message) are left as they are; :func:`validate_request` still reports them.

    Raises:
        UsageError: ``payload`` is not a mapping, or ``limits`` not a RequestLimits.
    """
    limits = _check_payload(payload, limits)
    changes: list[RequestChange] = []
    out: dict[str, Any] | None = None

    system_removed = False
    system = payload.get("system")
    if "system" in payload:
        system, system_removed = _sanitize_system(payload["system"], changes)

    raw_messages = payload.get("messages")
    new_messages: list[Any] | None = None
    if isinstance(raw_messages, list | tuple):
        msgs = [_Msg.read(i, message) for i, message in enumerate(raw_messages)]
        dropped: list[RequestChange] = []
        for m in msgs:
            _clean_blocks(m)
        _drop_empty_messages(msgs, dropped)
        _fix_orphan_results(msgs)
        _add_missing_results(msgs)
        _trim_final_assistant(msgs, dropped)
        _fix_media(msgs, limits)
        message_changes = dropped + [c for m in msgs for c in m.changes]
        message_changes.sort(key=lambda c: -1 if c.message is None else c.message)
        changes.extend(message_changes)
        if len(msgs) != len(raw_messages) or any(m.modified for m in msgs):
            new_messages = [m.build() for m in msgs]

    if not changes and new_messages is None:
        return SanitizeResult(payload)
    out = dict(payload)
    if system_removed:
        del out["system"]
    elif "system" in payload:
        out["system"] = system
    if new_messages is not None:
        out["messages"] = new_messages
    return SanitizeResult(out, tuple(changes))


def validate_request(payload: Mapping[str, Any], /, *, limits: RequestLimits | None = None) -> list[RequestProblem]:
    """The reasons the Messages API would answer this request with 400, by the rules :func:`sanitize_request`
    fixes, each with the API's own error message (:meth:`RequestProblem.error_body` is the API's 400 body).

    An empty list means none of these rules is broken (the request may still break rules outside them, e.g. a
    missing ``model``). Problems come in request order: system, then each message's content, then tool
    pairing, the final assistant turn and media.

    Raises:
        UsageError: ``payload`` is not a mapping, or ``limits`` not a RequestLimits.
    """
    limits = _check_payload(payload, limits)
    problems: list[RequestProblem] = []
    add = problems.append

    def text_rule(kind: str, where: str, path: str) -> None:
        add(RequestProblem(kind, path, RULES[kind].api_message.format(where=where)))

    system = payload.get("system")
    if isinstance(system, str):
        if system and not system.strip():
            text_rule(WHITESPACE_TEXT, "system", "system")
    elif isinstance(system, list | tuple):
        for j, block in enumerate(system):
            if _is_empty_text(block):
                text_rule(EMPTY_TEXT, "system", f"system.{j}")
        if _all_blank(system):
            text_rule(WHITESPACE_TEXT, "system", "system")

    raw_messages = payload.get("messages")
    if not isinstance(raw_messages, list | tuple):
        return problems
    msgs = [_Msg.read(i, message) for i, message in enumerate(raw_messages)]
    last = len(msgs) - 1
    for k, m in enumerate(msgs):
        if m.role is None:
            continue
        if m.text is not None:
            if m.text == "":
                text_rule(EMPTY_TEXT, "messages", m.path())
            elif not m.text.strip():
                text_rule(WHITESPACE_TEXT, "messages", m.path())
            continue
        assert m.blocks is not None
        if not m.blocks and not (k == last and m.role == "assistant"):
            add(RequestProblem(EMPTY_MESSAGE, m.path(), RULES[EMPTY_MESSAGE].api_message.format(path=m.path())))
        for j, block in enumerate(m.blocks):
            if _is_empty_text(block):
                text_rule(EMPTY_TEXT, "messages", m.path(j))
            for n, sub in enumerate(_nested(block) or ()):
                if _is_empty_text(sub):
                    text_rule(EMPTY_TEXT, "messages", f"{m.path(j)}.content.{n}")
        if _all_blank(m.blocks):
            text_rule(WHITESPACE_TEXT, "messages", m.path())

    for k, m in enumerate(msgs):
        if m.role == "user" and m.blocks:
            prev = msgs[k - 1] if k > 0 else None
            allowed = set(_tool_use_ids(prev.blocks)) if prev is not None and prev.role == "assistant" else set()
            for j, block in enumerate(m.blocks):
                ident = _result_id(block)
                if ident is not None and ident not in allowed:
                    path = m.path(j)
                    add(RequestProblem(ORPHAN_TOOL_RESULT, path,
                                       RULES[ORPHAN_TOOL_RESULT].api_message.format(path=path, ids=ident)))
        if m.role == "assistant":
            ids = _tool_use_ids(m.blocks)
            nxt = msgs[k + 1] if k < last else None
            have = {_result_id(b) for b in nxt.blocks or ()} if nxt is not None and nxt.role == "user" else set()
            missing = [ident for ident in ids if ident not in have]
            if missing:
                add(RequestProblem(MISSING_TOOL_RESULT, m.path(), RULES[MISSING_TOOL_RESULT].api_message.format(
                    path=m.path(), ids=", ".join(missing))))

    final = msgs[-1] if msgs else None
    if final is not None and final.role == "assistant":
        tail = final.text if final.text is not None else _text(final.blocks[-1]) if final.blocks else None
        blank = (final.text is not None and not final.text.strip()) or _all_blank(final.blocks or ())
        if tail and tail != tail.rstrip() and not blank:
            add(RequestProblem(TRAILING_WHITESPACE, final.path(), RULES[TRAILING_WHITESPACE].api_message))

    media = _collect_media(msgs, include_frozen=True)
    images = sum(1 for item in media if item.kind == "image")
    if len(media) > limits.max_media:
        add(RequestProblem(TOO_MANY_MEDIA, "messages", RULES[TOO_MANY_MEDIA].api_message.format(
            images=images, documents=len(media) - images, limit=limits.max_media)))
    many = images > limits.many_images
    pixels = limits.many_image_pixels if many else limits.max_image_pixels
    for item in media:
        if item.kind == "image":
            verdict = _image_verdict(item.block, pixels, many, limits)
            if verdict is not None:
                add(RequestProblem(verdict[0], item.path,
                                   _image_message(verdict[0], item.path, item.block, pixels, many, limits)))
    return problems


def apply_sanitize(
    params: dict[str, Any], sanitize: bool | RequestLimits, /
) -> tuple[dict[str, Any], tuple[RequestChange, ...]]:
    """The entry points' one call: ``params`` (the keyword arguments of ``client.messages.stream(...)``, or a
    decoded request body) sanitised when ``sanitize`` is True or a :class:`RequestLimits`, with the changes
    made; unchanged (the same object) and ``()`` when it is False.

    Raises :class:`~mendstream.errors.UsageError` when ``sanitize`` is neither a bool nor a RequestLimits.
    """
    if sanitize is False:
        return params, ()
    if sanitize is True:
        limits = None
    elif isinstance(sanitize, RequestLimits):
        limits = sanitize
    else:
        raise UsageError(f"sanitize must be True, False or a mendstream RequestLimits; got {sanitize!r}")
    result = sanitize_request(params, limits=limits)
    payload = result.payload if isinstance(result.payload, dict) else dict(result.payload)
    return payload, result.changes


@dataclass(frozen=True, slots=True)
class SanitizedBody:
    """The outcome of :func:`sanitize_body`: the bytes to send (the caller's bytes when nothing changed), the
    decoded request after sanitising, and the changes."""

    body: bytes
    payload: Any
    changes: tuple[RequestChange, ...] = ()


def sanitize_body(
    body: bytes, /, *, payload: Mapping[str, Any] | None = None, limits: RequestLimits | None = None
) -> SanitizedBody:
    """:func:`sanitize_request` for a request body in bytes (the HTTP boundary: proxy, RepairTransport).

    ``payload``: ``body`` already decoded, when the caller has it. A changed request is re-encoded as compact
    UTF-8 JSON with its keys in their original order (as the cache rewriter encodes); pass the result's
    ``body`` *and* ``payload`` on to :func:`mendstream.wire.rewrite.rewrite_request`, which otherwise returns the
    bytes it was given when cache planning changes nothing.

    Raises:
        UsageError: the body is not a JSON object (the message says what was received).
    """
    import json

    if payload is None:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"the request body is not JSON ({exc}); {len(body)} bytes received") from None
    if not isinstance(payload, Mapping):
        raise UsageError(f"the request body is JSON but not an object (a {type(payload).__name__})")
    result = sanitize_request(payload, limits=limits)
    if not result.changes:
        return SanitizedBody(body, payload)
    encoded = json.dumps(result.payload, ensure_ascii=False, separators=(",", ":"), default=_encode_model)
    return SanitizedBody(encoded.encode("utf-8", "surrogatepass"), result.payload, result.changes)


def _encode_model(value: Any) -> Any:
    dumped = _as_dict(value)
    if dumped is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return dumped


