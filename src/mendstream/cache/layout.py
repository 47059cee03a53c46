# The prefix as the cache sees it: a payload flattened into numbered blocks (tools, then system, then
# message content), per-block cacheability, prefix hashes, and the copy-on-write rewrite that moves
# cache_control markers without copying anything it does not change. Shared by planner and simulator.
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .tokens import estimate_block_tokens

__all__ = ["MESSAGES", "SYSTEM", "TOOLS", "Layout", "rewrite_markers"]

TOOLS: Final = 0
SYSTEM: Final = 1
MESSAGES: Final = 2
REGION_NAMES: Final = ("tools", "system", "messages")

_UNMARKABLE_TYPES: Final = frozenset({"thinking", "redacted_thinking"})


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
    """Hash of one block as it contributes to the prefix; ``cache_control`` does not take part, and a
    plain string hashes like the equivalent one-element text block."""
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
    #: message index -> (first position, last position); absent for messages without blocks
    message_span: dict[int, tuple[int, int]] = field(default_factory=dict)
    _prefix_tokens: list[int] | None = None

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Layout:
        layout = cls(payload)
        add = layout._add
        tools = payload.get("tools")
        if isinstance(tools, Sequence) and not isinstance(tools, str):
            for i, tool in enumerate(tools):
                add(TOOLS, i, -1, tool, "tool", isinstance(tool, dict))
        system = payload.get("system")
        if isinstance(system, str):
            if system:
                add(SYSTEM, 0, -2, system, "system", True)
        elif isinstance(system, Sequence):
            for i, block in enumerate(system):
                add(SYSTEM, i, -1, block, "system", _is_cacheable(block))
        messages = payload.get("messages")
        if isinstance(messages, list | tuple):
            # The hot loop of the stateless planner (a 2,000-block history): exact type checks and bound
            # methods, because ABC isinstance checks and attribute lookups dominate at this size.
            r_add, o_add, i_add = layout.region.append, layout.outer.append, layout.inner.append
            b_add, role_add, c_add = layout.blocks.append, layout.roles.append, layout.cacheable.append
            blocks, markers, span = layout.blocks, layout.markers, layout.message_span
            unmarkable = _UNMARKABLE_TYPES
            for m, message in enumerate(messages):
                if type(message) is not dict and not isinstance(message, Mapping):
                    continue
                role = message.get("role", "")
                content = message.get("content")
                start = len(blocks)
                if type(content) is str:
                    if content:
                        r_add(MESSAGES), o_add(m), i_add(-1), b_add(content), role_add(role), c_add(True)
                elif type(content) is list or isinstance(content, list | tuple):
                    for b, block in enumerate(content):
                        if type(block) is dict:
                            if "cache_control" in block:
                                markers[start + b] = block["cache_control"]
                            kind = block.get("type")
                            c_add(kind not in unmarkable and (kind != "text" or bool(block.get("text"))))
                        else:
                            c_add(_is_cacheable(block))
                        r_add(MESSAGES), o_add(m), i_add(b), b_add(block), role_add(role)
                if len(blocks) > start:
                    span[m] = (start, len(blocks) - 1)
        return layout

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

    def prefix_tokens(self, memo: dict[int, tuple[Any, int]] | None = None) -> list[int]:
        """Cumulative token estimate: ``prefix_tokens()[p]`` covers positions ``0..p``. O(n), memoised.

        ``memo`` (``id(block) -> (block, tokens)``) lets a caller that replays many payloads sharing the
        same block objects estimate each block once; it keeps the blocks alive so ids stay unique.
        """
        if self._prefix_tokens is None:
            total = 0
            out = []
            for block in self.blocks:
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

    def prefix_hashes(self, memo: dict[tuple[int, str, bool], tuple[Any, bytes]] | None = None) -> list[bytes]:
        """``prefix_hashes()[p]`` identifies the whole prefix up to and including ``p``: the model, every
        earlier block in order, message boundaries and roles, and (from the first message on) the
        ``tool_choice`` and ``thinking`` settings, which the documentation says invalidate message caches.
        ``memo`` works as in :meth:`prefix_tokens` (``cache_control`` is excluded from the digest, so a
        block that only gained a marker is a new object and is hashed again, with the same result)."""
        payload = self.payload
        state = hashlib.blake2b(str(payload.get("model", "")).encode(), digest_size=16).digest()
        settings = json.dumps(
            [payload.get("tool_choice"), payload.get("thinking")], sort_keys=True, default=str
        ).encode()
        out: list[bytes] = []
        salted = False
        previous_outer = -1
        for pos, block in enumerate(self.blocks):
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
            state = hashlib.blake2b(state + digest, digest_size=16).digest()
            out.append(state)
        return out


def _with_marker(block: Any, marker: Any) -> Any:
    if isinstance(block, str):
        block = {"type": "text", "text": block}
    new = dict(block)
    if marker is None:
        new.pop("cache_control", None)
    else:
        new["cache_control"] = marker
    return new


def rewrite_markers(layout: Layout, wanted: Mapping[int, Any], top_level: Any = ...) -> dict[str, Any]:
    """A new payload whose block markers are exactly ``wanted`` (position -> ``cache_control`` value).

    Copy-on-write: the result is a new top-level dict; a list (tools, system, messages, one message's
    content) is copied only if one of its blocks changes, and only changed blocks/messages are new dicts.
    Every other object is shared with the input, which is never mutated. ``top_level`` sets (a value),
    removes (``None``) or keeps (``...``) the top-level ``cache_control``. Cost: O(changed containers).
    """
    payload = layout.payload
    changes: dict[int, Any] = {}
    for pos in layout.markers.keys() | wanted.keys():
        if (pos in wanted) != (pos in layout.markers) or wanted.get(pos) != layout.markers.get(pos):
            changes[pos] = wanted.get(pos)
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
                content[i] = _with_marker(content[i], marker)
    if tools is not None:
        out["tools"] = tools
    if system is not None:
        out["system"] = system
    if messages is not None:
        for o, content in contents.items():
            messages[o] = {**messages[o], "content": content}
        out["messages"] = messages
    return out
