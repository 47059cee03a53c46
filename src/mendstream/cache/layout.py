# The prefix as the cache sees it: a payload flattened into numbered blocks (tools, then system, then
# message content), per-block cacheability, prefix hashes, and the copy-on-write rewrite that moves
# cache_control markers without copying anything it does not change. Shared by planner and simulator.
# It is also where a malformed payload is rejected (CachePayloadError naming the field) and where the one
# definition of a valid marker and of its TTL lives.
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mendstream.cache.tokens import estimate_block_tokens
from mendstream.errors import CachePayloadError

__all__ = [
    "MAX_NESTING",
    "MESSAGES",
    "SYSTEM",
    "TOOLS",
    "TTLS",
    "Layout",
    "marker_ttl",
    "normalise_marker",
    "rewrite_markers",
]

TOOLS: Final = 0
SYSTEM: Final = 1
MESSAGES: Final = 2
REGION_NAMES: Final = ("tools", "system", "messages")

_UNMARKABLE_TYPES: Final = frozenset({"thinking", "redacted_thinking"})

#: The TTLs the API accepts in a ``cache_control`` marker.
TTLS: Final = ("5m", "1h")

#: ``tool_result`` blocks nested inside ``tool_result.content`` deeper than this are refused: the API
#: allows no nesting at all, and walking an unbounded depth would exhaust the interpreter's stack.
MAX_NESTING: Final = 32


def marker_ttl(marker: Any) -> str:
    """The TTL a ``cache_control`` value asks for, as written (``"5m"`` when it names none). The one TTL
    reader of the package: the planner uses it on normalised markers, the simulator to reject bad ones."""
    if isinstance(marker, Mapping):
        ttl = marker.get("ttl", "5m")
        return ttl if isinstance(ttl, str) else repr(ttl)
    return "5m"


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)?\s*", re.I)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600}


def _ttl_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            unit = (match.group(2) or "s")[0].lower()
            return float(match.group(1)) * _UNIT_SECONDS[unit]
    return None


def normalise_marker(marker: Any) -> tuple[Any, str | None]:
    """``(marker to send, what was wrong)`` for a caller's ``cache_control`` value.

    A valid marker (``{"type": "ephemeral"}`` with an optional ``ttl`` of ``"5m"``/``"1h"``) comes back
    as the same object and ``None``. A dict with a fixable fault comes back corrected: another ``type``
    becomes ``"ephemeral"``; a ``ttl`` given as a duration (``3600``, ``"2h"``, ``"300s"``) becomes
    ``"1h"`` when longer than five minutes, else ``"5m"``; an unreadable ``ttl`` is removed (5m); unknown
    keys are removed. Anything that is not an object (``"yes"``, ``True``, ``None``) cannot be read as a
    marker: ``(None, reason)``, and the caller drops it.
    """
    if not isinstance(marker, Mapping):
        return None, f"cache_control must be an object like {{'type': 'ephemeral'}}, not {type(marker).__name__}"
    faults: list[str] = []
    fixed: dict[str, Any] = {"type": "ephemeral"}
    if marker.get("type") != "ephemeral":
        faults.append(f"type {marker.get('type')!r} is not 'ephemeral'")
    if "ttl" in marker:
        ttl = marker["ttl"]
        if ttl in TTLS:
            fixed["ttl"] = ttl
        else:
            seconds = _ttl_seconds(ttl)
            if seconds is None:
                faults.append(f"ttl {ttl!r} is not '5m' or '1h' (removed: 5m)")
            else:
                fixed["ttl"] = "1h" if seconds > 300 else "5m"
                faults.append(f"ttl {ttl!r} is not '5m' or '1h' (became {fixed['ttl']!r})")
    extra = sorted(str(k) for k in marker if k not in ("type", "ttl"))
    if extra:
        faults.append(f"unknown key(s) {extra} removed")
    if not faults:
        return marker, None
    return fixed, "invalid cache_control: " + "; ".join(faults)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_block(value: Any) -> bool:
    """A content block as the planner accepts one: a dict, a string (a text block) or a model object."""
    return isinstance(value, dict | str) or callable(getattr(value, "model_dump", None))


def _is_cacheable(block: Any) -> bool:
    """Whether the API accepts ``cache_control`` on this block (a plain string becomes a text block)."""
    if isinstance(block, str):
        return block != ""
    if not isinstance(block, dict):
        return False  # SDK model objects and the like: we cannot add a key without converting them
    kind = block.get("type")
    if kind in _UNMARKABLE_TYPES:
        return False
    return not (kind == "text" and not block.get("text"))


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        if value.get("type") == "tool_result" and type(value.get("content")) is list:
            # markers nested in a tool_result are not content either
            value = {**value, "content": _strip_nested(value["content"])}
        if "cache_control" in value:
            return {k: v for k, v in value.items() if k != "cache_control"}
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _canonical(dump(exclude_none=True))
    if isinstance(value, str):
        return {"type": "text", "text": value}
    return value


def block_digest(role: str, first: bool, block: Any) -> bytes:
    """Hash of one block as it contributes to the prefix; ``cache_control`` does not take part (nor do
    markers nested in a tool_result's content), and a plain string hashes like the equivalent
    one-element text block."""
    text = json.dumps(
        [role, first, _canonical(block)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(slots=True)
class Layout:
    """A payload flattened into prefix order. Position ``p`` refers to the same block in every list.

    ``outer``/``inner`` locate the block: tools ``(tool index, -1)``; system ``(block index, -1)`` with
    ``inner == -2`` for a string system prompt; messages ``(message index, block index)`` with
    ``inner == -1`` for string content. Building a layout is O(number of blocks) and copies nothing.
    """

    payload: Mapping[str, Any]
    region: list[int] = field(default_factory=list)
    outer: list[int] = field(default_factory=list)
    inner: list[int] = field(default_factory=list)
    blocks: list[Any] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    cacheable: list[bool] = field(default_factory=list)
    #: position -> the ``cache_control`` value the caller put there
    markers: dict[int, Any] = field(default_factory=dict)
    #: position -> ``(path, cache_control)`` of every marker inside that tool_result's content
    nested: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    #: positions of tool_result blocks whose content is a list (scanned for nested markers), in order
    result_lists: list[int] = field(default_factory=list)
    #: message index -> (first position, last position); absent for messages without blocks
    message_span: dict[int, tuple[int, int]] = field(default_factory=dict)
    _prefix_tokens: list[int] | None = None

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Layout:
        """Flatten ``payload``.

        Raises:
            CachePayloadError: a field has the wrong shape (``tools`` not a list, a message that is not an
                object, ``content`` that is neither a string nor a list, a block that is not an object),
                or ``tool_result`` blocks are nested deeper than :data:`MAX_NESTING`. The message and
                ``.field`` name the field, e.g. ``messages[3].content``.
        """
        if not isinstance(payload, Mapping):
            raise CachePayloadError(
                f"payload must be a mapping (a Messages API request body), not {_kind(payload)}", field="payload"
            )
        layout = cls(payload)
        add = layout._add
        tools = payload.get("tools")
        if tools is not None:
            if not isinstance(tools, list | tuple):
                raise CachePayloadError(
                    f"tools must be a list of tool definitions, not {_kind(tools)}", field="tools"
                )
            for i, tool in enumerate(tools):
                if not _is_block(tool) or isinstance(tool, str):
                    raise CachePayloadError(
                        f"tools[{i}] must be a tool definition object, not {_kind(tool)}", field=f"tools[{i}]"
                    )
                add(TOOLS, i, -1, tool, "tool", isinstance(tool, dict))
        system = payload.get("system")
        if isinstance(system, str):
            if system:
                add(SYSTEM, 0, -2, system, "system", True)
        elif isinstance(system, list | tuple):
            for i, block in enumerate(system):
                if not _is_block(block):
                    raise CachePayloadError(
                        f"system[{i}] must be a text block object, not {_kind(block)}", field=f"system[{i}]"
                    )
                add(SYSTEM, i, -1, block, "system", _is_cacheable(block))
        elif system is not None:
            raise CachePayloadError(
                f"system must be a string or a list of text blocks, not {_kind(system)}", field="system"
            )
        messages = payload.get("messages")
        if messages is None:
            return layout
        if not isinstance(messages, list | tuple):
            raise CachePayloadError(f"messages must be a list of messages, not {_kind(messages)}", field="messages")
        layout.add_messages(messages, 0)
        return layout

    def add_messages(self, messages: Sequence[Any], start: int) -> None:
        """Append ``messages[start:]`` (the messages before ``start`` are already in this layout). Raises
        CachePayloadError as :meth:`of` does."""
        # The hot loop of the stateless planner (a 2,000-block history): exact type checks and bound
        # methods, because ABC isinstance checks and attribute lookups dominate at this size.
        r_add, o_add, i_add = self.region.append, self.outer.append, self.inner.append
        b_add, role_add, c_add = self.blocks.append, self.roles.append, self.cacheable.append
        blocks, markers, span = self.blocks, self.markers, self.message_span
        unmarkable = _UNMARKABLE_TYPES
        for m in range(start, len(messages)):
            message = messages[m]
            if type(message) is not dict and not isinstance(message, Mapping):
                raise CachePayloadError(
                    f"messages[{m}] must be a message object, not {_kind(message)}", field=f"messages[{m}]"
                )
            role = message.get("role", "")
            content = message.get("content")
            first = len(blocks)
            if type(content) is str:
                if content:
                    r_add(MESSAGES), o_add(m), i_add(-1), b_add(content), role_add(role), c_add(True)
            elif type(content) is list or isinstance(content, list | tuple):
                for b, block in enumerate(content):
                    if type(block) is dict:
                        if "cache_control" in block:
                            markers[first + b] = block["cache_control"]
                        kind = block.get("type")
                        if kind == "tool_result" and type(block.get("content")) is list:
                            self.result_lists.append(first + b)
                            self.scan_nested(first + b, block, f"messages[{m}].content[{b}]")
                        c_add(kind not in unmarkable and (kind != "text" or bool(block.get("text"))))
                    elif _is_block(block):
                        c_add(_is_cacheable(block))
                    else:
                        raise CachePayloadError(
                            f"messages[{m}].content[{b}] must be a content block object, not {_kind(block)}",
                            field=f"messages[{m}].content[{b}]",
                        )
                    r_add(MESSAGES), o_add(m), i_add(b), b_add(block), role_add(role)
            else:
                raise CachePayloadError(
                    f"messages[{m}].content must be a string or a list of content blocks, not {_kind(content)}",
                    field=f"messages[{m}].content",
                )
            if len(blocks) > first:
                span[m] = (first, len(blocks) - 1)

    def scan_nested(self, pos: int, block: dict[str, Any], where: str) -> None:
        """Record the markers inside a ``tool_result``'s content (the API counts them like any other).
        Iterative, so hostile nesting costs a bounded walk and a clear error, not a RecursionError."""
        stack: list[tuple[list[Any], str, int]] = [(block["content"], where + ".content", 1)]
        while stack:
            items, path, depth = stack.pop()
            for k, item in enumerate(items):
                if type(item) is not dict:
                    continue
                if "cache_control" in item:
                    self.nested.setdefault(pos, []).append((f"{path}[{k}]", item["cache_control"]))
                if item.get("type") == "tool_result" and type(item.get("content")) is list:
                    if depth >= MAX_NESTING:
                        raise CachePayloadError(
                            f"{path}[{k}]: tool_result blocks nested more than {MAX_NESTING} deep",
                            field=f"{path}[{k}]",
                        )
                    stack.append((item["content"], f"{path}[{k}].content", depth + 1))

    def _add(self, region: int, outer: int, inner: int, block: Any, role: str, cacheable: bool) -> None:
        if isinstance(block, dict) and "cache_control" in block:
            self.markers[len(self.blocks)] = block["cache_control"]
        self.region.append(region)
        self.outer.append(outer)
        self.inner.append(inner)
        self.blocks.append(block)
        self.roles.append(role)
        self.cacheable.append(cacheable)

    def __len__(self) -> int:
        return len(self.blocks)

    def block_type(self, pos: int) -> str:
        block = self.blocks[pos]
        if self.region[pos] == TOOLS:
            return "tool"
        if isinstance(block, str):
            return "text"
        if isinstance(block, Mapping):
            return str(block.get("type", "?"))
        return str(getattr(block, "type", type(block).__name__))

    def last_cacheable(self, before_or_at: int, *, floor: int = 0) -> int | None:
        """The nearest markable position at or before ``before_or_at`` (not below ``floor``)."""
        cacheable = self.cacheable
        pos = min(before_or_at, len(cacheable) - 1)
        while pos >= floor:
            if cacheable[pos]:
                return pos
            pos -= 1
        return None

    def prefix_tokens(
        self, memo: dict[int, tuple[Any, int]] | None = None, known: list[int] | None = None
    ) -> list[int]:
        """Cumulative token estimate: ``prefix_tokens()[p]`` covers positions ``0..p``. O(n), memoised.

        ``memo`` (``id(block) -> (block, tokens)``) lets a caller that replays many payloads sharing the
        same block objects estimate each block once; it keeps the blocks alive so ids stay unique.
        ``known``: the estimates of a prefix of positions the caller has verified unchanged; only the
        positions after it are estimated.
        """
        if self._prefix_tokens is None:
            out = list(known or ())
            total = out[-1] if out else 0
            for block in self.blocks[len(out) :]:
                if memo is None:
                    total += estimate_block_tokens(block)
                else:
                    hit = memo.get(id(block))
                    if hit is None or hit[0] is not block:
                        hit = memo[id(block)] = (block, estimate_block_tokens(block))
                    total += hit[1]
                out.append(total)
            self._prefix_tokens = out
        return self._prefix_tokens

    def reaches(self, pos: int, minimum: int) -> bool:
        """Whether the prefix ending at ``pos`` is at least ``minimum`` tokens. Stops summing as soon as
        the answer is known, so the stateless planner never estimates a whole 2,000-block history."""
        if self._prefix_tokens is not None:
            return self._prefix_tokens[pos] >= minimum
        total = 0
        for block in self.blocks[: pos + 1]:
            total += estimate_block_tokens(block)
            if total >= minimum:
                return True
        return False

    def prefix_hashes(
        self,
        memo: dict[tuple[int, str, bool], tuple[Any, bytes]] | None = None,
        known: list[bytes] | None = None,
        digests: list[bytes] | None = None,
    ) -> list[bytes]:
        """``prefix_hashes()[p]`` identifies the whole prefix up to and including ``p``: the model, every
        earlier block in order, message boundaries and roles, and (from the first message on) the
        ``tool_choice`` and ``thinking`` settings, which the documentation says invalidate message caches.
        ``memo`` works as in :meth:`prefix_tokens` (``cache_control`` is excluded from the digest, so a
        block that only gained a marker is a new object and is hashed again, with the same result).
        ``known``: the hashes of a prefix of positions the caller has verified unchanged (same model and
        settings, same blocks); hashing resumes after it. ``digests``, when given, receives each hashed
        block's own digest (position ``len(known)`` onwards)."""
        payload = self.payload
        settings = json.dumps(
            [payload.get("tool_choice"), payload.get("thinking")], sort_keys=True, default=str
        ).encode()
        out: list[bytes] = list(known or ())
        start = len(out)
        if start:
            state = out[-1]
            salted = self.region[start - 1] == MESSAGES
            previous_outer = self.outer[start - 1] if salted else -1
        else:
            state = hashlib.blake2b(str(payload.get("model", "")).encode(), digest_size=16).digest()
            salted = False
            previous_outer = -1
        for pos in range(start, len(self.blocks)):
            block = self.blocks[pos]
            region = self.region[pos]
            if region == MESSAGES and not salted:
                state = hashlib.blake2b(state + settings, digest_size=16).digest()
                salted = True
            first = region == MESSAGES and self.outer[pos] != previous_outer
            previous_outer = self.outer[pos] if region == MESSAGES else -1
            if memo is None:
                digest = block_digest(self.roles[pos], first, block)
            else:  # keyed by identity: valid only while the caller does not mutate the blocks it replays
                key = (id(block), self.roles[pos], first)
                hit = memo.get(key)
                if hit is None or hit[0] is not block:
                    hit = memo[key] = (block, block_digest(self.roles[pos], first, block))
                digest = hit[1]
            if digests is not None:
                digests.append(digest)
            state = hashlib.blake2b(state + digest, digest_size=16).digest()
            out.append(state)
        return out


def _strip_nested(items: list[Any]) -> list[Any]:
    """A copy of a tool_result's content without any ``cache_control``, copying only changed blocks.
    Depth is bounded by :data:`MAX_NESTING` (checked when the layout was built)."""
    out = []
    for item in items:
        if type(item) is dict:
            if "cache_control" in item:
                item = {k: v for k, v in item.items() if k != "cache_control"}
            if item.get("type") == "tool_result" and type(item.get("content")) is list:
                item = {**item, "content": _strip_nested(item["content"])}
        out.append(item)
    return out


def _with_marker(block: Any, marker: Any, strip_nested: bool = False) -> Any:
    if isinstance(block, str):
        block = {"type": "text", "text": block}
    new = dict(block)
    if marker is None:
        new.pop("cache_control", None)
    else:
        new["cache_control"] = marker
    if strip_nested:
        new["content"] = _strip_nested(new["content"])
    return new


def rewrite_markers(layout: Layout, wanted: Mapping[int, Any], top_level: Any = ...) -> dict[str, Any]:
    """A new payload whose block markers are exactly ``wanted`` (position -> ``cache_control`` value).

    Copy-on-write: the result is a new top-level dict; a list (tools, system, messages, one message's
    content) is copied only if one of its blocks changes, and only changed blocks/messages are new dicts.
    Every other object is shared with the input, which is never mutated. Markers nested inside a
    ``tool_result``'s content (``layout.nested``) are always removed: a nested marker the planner keeps
    is in ``wanted`` at the enclosing block. ``top_level`` sets (a value), removes (``None``) or keeps
    (``...``) the top-level ``cache_control``. Cost: O(changed containers).
    """
    payload = layout.payload
    changes: dict[int, Any] = {}
    markers = layout.markers
    for pos in markers.keys() | wanted.keys() | layout.nested.keys():
        marker = wanted.get(pos)
        if pos in layout.nested or (pos in wanted) != (pos in markers) or marker != markers.get(pos):
            changes[pos] = marker
    out = dict(payload)
    if top_level is None:
        out.pop("cache_control", None)
    elif top_level is not ...:
        out["cache_control"] = top_level
    if not changes:
        return out
    tools: list[Any] | None = None
    system: list[Any] | None = None
    messages: list[Any] | None = None
    contents: dict[int, list[Any]] = {}
    for pos in sorted(changes):
        marker = changes[pos]
        region, o, i = layout.region[pos], layout.outer[pos], layout.inner[pos]
        if region == TOOLS:
            if tools is None:
                tools = list(payload["tools"])
            tools[o] = _with_marker(tools[o], marker)
        elif region == SYSTEM:
            if i == -2:
                system = [_with_marker(payload["system"], marker)]
            else:
                if system is None:
                    system = list(payload["system"])
                system[o] = _with_marker(system[o], marker)
        else:
            if messages is None:
                messages = list(payload["messages"])
            if i == -1:
                if marker is None:
                    continue  # a string has no marker to remove
                contents[o] = [_with_marker(payload["messages"][o]["content"], marker)]
            else:
                content = contents.get(o)
                if content is None:
                    content = contents[o] = list(payload["messages"][o]["content"])
                content[i] = _with_marker(content[i], marker, pos in layout.nested)
    if tools is not None:
        out["tools"] = tools
    if system is not None:
        out["system"] = system
    if messages is not None:
        for o, content in contents.items():
            messages[o] = {**messages[o], "content": content}
        out["messages"] = messages
    return out
