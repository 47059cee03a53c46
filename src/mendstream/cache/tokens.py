# Token estimates and per-model minimum cacheable lengths. Everything here is a documented heuristic: the
# planner only needs to know whether a prefix is long enough to be cached, and the simulator needs counts
# that are proportional to what the API bills. Real usage numbers, when supplied, always win.
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BLOCK_OVERHEAD_TOKENS",
    "DEFAULT_MIN_CACHEABLE_TOKENS",
    "IMAGE_TOKENS",
    "MIN_CACHEABLE_TOKENS",
    "estimate_block_tokens",
    "estimate_text_tokens",
    "min_cacheable_tokens",
]

#: Minimum prefix length (in tokens) below which a breakpoint silently writes nothing. Keys are model-id
#: prefixes; the longest matching prefix wins. Values from Anthropic's prompt-caching documentation
#: (late 2026); the 512/2048 rows for the newest models come from release notes and should be re-checked.
MIN_CACHEABLE_TOKENS: Mapping[str, int] = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-opus-4-7": 2048,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
    "claude-haiku-3": 2048,
    "claude-sonnet-4-6": 1024,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-opus-4-8": 1024,
    "claude-sonnet-5": 1024,
    "claude-opus-5": 512,
}

#: Used for models the table does not know.
DEFAULT_MIN_CACHEABLE_TOKENS = 1024

#: Fixed estimate for an image or a non-text document (their real cost depends on pixels / pages).
IMAGE_TOKENS = 1600

#: Per-block framing overhead added to every block's estimate.
BLOCK_OVERHEAD_TOKENS = 3


def min_cacheable_tokens(model: str | None, overrides: int | Mapping[str, int] | None = None) -> int:
    """The minimum cacheable prefix length for ``model``.

    ``overrides`` is either one number (used for every model) or a mapping of model-id prefixes that is
    consulted before :data:`MIN_CACHEABLE_TOKENS`. Provider prefixes such as ``anthropic/`` or
    ``us.anthropic.`` and version suffixes are tolerated because matching is by substring of the id.
    """
    if isinstance(overrides, int):
        return overrides
    name = (model or "").lower()
    for table in (overrides or {}, MIN_CACHEABLE_TOKENS):
        best: tuple[int, int] | None = None
        for key, value in table.items():
            if key.lower() in name and (best is None or len(key) > best[0]):
                best = (len(key), value)
        if best is not None:
            return best[1]
    return DEFAULT_MIN_CACHEABLE_TOKENS


def estimate_text_tokens(text: str) -> int:
    """About four characters per token, rounded up (English prose and code average 3.5-4.5)."""
    return (len(text) + 3) // 4


def _json_len(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return len(str(value))


def estimate_block_tokens(block: Any) -> int:
    """Estimated input tokens of one prefix block: a tool definition, a system block or a content block.

    Text-like fields count ``len / 4``; tool inputs and tool definitions count their compact JSON; images
    and binary documents count :data:`IMAGE_TOKENS`; every block adds :data:`BLOCK_OVERHEAD_TOKENS`.
    A plain string counts as one text block. Never raises.
    """
    if isinstance(block, str):
        return estimate_text_tokens(block) + BLOCK_OVERHEAD_TOKENS
    if not isinstance(block, Mapping):
        dump = getattr(block, "model_dump", None)
        block = dump() if callable(dump) else {"text": str(block)}
        if not isinstance(block, Mapping):
            return BLOCK_OVERHEAD_TOKENS
    kind = block.get("type")
    chars: int
    if kind == "text":
        chars = len(str(block.get("text", "")))
    elif kind == "thinking":
        chars = len(str(block.get("thinking", "")))
    elif kind == "redacted_thinking":
        chars = len(str(block.get("data", ""))) // 2
    elif kind in ("tool_use", "server_tool_use"):
        chars = len(str(block.get("name", ""))) + _json_len(block.get("input", {}))
    elif kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            chars = len(content)
        elif isinstance(content, list):
            return sum(estimate_block_tokens(b) for b in content) + BLOCK_OVERHEAD_TOKENS
        else:
            chars = _json_len(content)
    elif kind in ("image", "document"):
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text":
            chars = len(str(source.get("data", "")))
        else:
            return IMAGE_TOKENS + BLOCK_OVERHEAD_TOKENS
    else:  # tool definitions, search results, unknown blocks: their JSON is what the model reads
        chars = _json_len({k: v for k, v in block.items() if k != "cache_control"})
    return (chars + 3) // 4 + BLOCK_OVERHEAD_TOKENS
