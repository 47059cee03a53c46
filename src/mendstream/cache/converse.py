# Bedrock Converse payloads for the planner: a Converse request (`toolConfig.tools`, `system`,
# `messages[].content`, with `{"cachePoint": ...}` blocks after the content they close) is read as a
# Messages-shaped "shadow" payload, one shadow block per Converse block and the cache points as markers
# on the block before them; after planning, the chosen markers are written back as cachePoint blocks.
# The planner, strategies, CachePlanner and simulator therefore run unchanged on Converse requests.
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mendstream.errors import CachePayloadError

__all__ = ["ConverseMap", "is_converse", "shadow_of", "write_cache_points"]

#: Converse block keys whose shadow keeps the Messages block type the planner's rules know.
_TYPES: Final = {
    "text": "text",
    "toolUse": "tool_use",
    "toolResult": "tool_result",
    "reasoningContent": "thinking",  # like thinking blocks: a cache point cannot close one
    "image": "image",
    "document": "document",
}


def is_converse(payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` looks like a Converse request rather than a Messages API body: it has a
    Converse-only key (``modelId``, ``toolConfig``, ``inferenceConfig``), or a system or content block
    that is a one-key Converse block without ``type``."""
    if "toolConfig" in payload or "modelId" in payload or "inferenceConfig" in payload:
        return True
    candidates: list[Any] = []
    system = payload.get("system")
    if isinstance(system, list):
        candidates += system[:1]
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages[:3]:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, list):
                candidates += content[:1]
    return any(isinstance(b, Mapping) and "type" not in b and len(b) == 1 for b in candidates)


def _marker_of(point: Any) -> Any:
    """A cachePoint value as a Messages marker (``default`` is Converse's only type, like ``ephemeral``)."""
    if isinstance(point, Mapping) and point.get("type") == "default":
        return {**point, "type": "ephemeral"}
    return point


def _shadow_block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, Mapping) or len(block) != 1:
        raise CachePayloadError(
            f"{where} must be a Converse block: an object with exactly one key such as 'text' or 'toolUse'",
            field=where,
        )
    ((key, value),) = block.items()
    kind = _TYPES.get(key, key)
    if key == "text":
        return {"type": "text", "text": value if isinstance(value, str) else str(value)}
    if key == "reasoningContent":
        return {"type": "thinking", "thinking": value}
    if isinstance(value, Mapping):
        return {"type": kind, **{k: v for k, v in value.items() if k != "type"}, "converse": key}
    return {"type": kind, "value": value}


@dataclass(slots=True)
class ConverseMap:
    """Where each shadow block came from: for tools, system and each message, the index in the original
    list of every non-cachePoint block, in order (shadow index -> original index)."""

    tools: list[int] = field(default_factory=list)
    system: list[int] = field(default_factory=list)
    messages: dict[int, list[int]] = field(default_factory=dict)
    #: containers that hold cachePoint blocks in the input (they are rewritten even if nothing is chosen)
    had_points: set[tuple[str, int]] = field(default_factory=set)


def _container(
    items: Any, where: str, key: tuple[str, int], mapping: ConverseMap, is_tools: bool = False
) -> tuple[list[Any], list[int]]:
    """Shadow blocks of one Converse list and the original index of each; cachePoints become markers."""
    if not isinstance(items, list | tuple):
        raise CachePayloadError(f"{where} must be a list of Converse blocks, not {type(items).__name__}", field=where)
    shadows: list[Any] = []
    origin: list[int] = []
    for i, block in enumerate(items):
        if isinstance(block, Mapping) and "cachePoint" in block:
            mapping.had_points.add(key)
            if shadows:
                shadows[-1] = {**shadows[-1], "cache_control": _marker_of(block["cachePoint"])}
            continue  # a cache point with nothing before it in its list closes nothing: it is removed
        if is_tools:
            if not isinstance(block, Mapping):
                raise CachePayloadError(f"{where}[{i}] must be a tool object", field=f"{where}[{i}]")
            shadows.append(dict(block))
        else:
            shadows.append(_shadow_block(block, f"{where}[{i}]"))
        origin.append(i)
    return shadows, origin


def shadow_of(payload: Mapping[str, Any]) -> tuple[dict[str, Any], ConverseMap]:
    """The Messages-shaped shadow of a Converse request, and the map back to it.

    Raises:
        CachePayloadError: a field has the wrong shape (``toolConfig.tools`` not a list, a block that is
            not a one-key Converse block), naming the field.
    """
    mapping = ConverseMap()
    shadow: dict[str, Any] = {"model": payload.get("modelId", payload.get("model", ""))}
    # tool choice and reasoning settings are part of the prefix, as tool_choice/thinking are
    config = payload.get("toolConfig")
    if config is not None:
        if not isinstance(config, Mapping):
            raise CachePayloadError("toolConfig must be an object", field="toolConfig")
        shadow["tool_choice"] = config.get("toolChoice")
        if config.get("tools") is not None:
            shadow["tools"], mapping.tools = _container(
                config["tools"], "toolConfig.tools", ("tools", 0), mapping, is_tools=True
            )
    shadow["thinking"] = payload.get("additionalModelRequestFields")
    if payload.get("system") is not None:
        shadow["system"], mapping.system = _container(payload["system"], "system", ("system", 0), mapping)
    messages = payload.get("messages")
    if messages is not None:
        if not isinstance(messages, list | tuple):
            raise CachePayloadError("messages must be a list of messages", field="messages")
        out = []
        for m, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise CachePayloadError(f"messages[{m}] must be a message object", field=f"messages[{m}]")
            content, mapping.messages[m] = _container(
                message.get("content"), f"messages[{m}].content", ("messages", m), mapping
            )
            out.append({"role": message.get("role", ""), "content": content})
        shadow["messages"] = out
    return shadow, mapping


def _point(marker: Mapping[str, Any]) -> dict[str, Any]:
    point = {"type": "default"}
    if "ttl" in marker:
        point["ttl"] = marker["ttl"]
    return {"cachePoint": point}


def _rewrite(items: Any, origin: list[int], chosen: dict[int, Any]) -> list[Any]:
    """``items`` without its cachePoint blocks, with one after each chosen shadow index."""
    out: list[Any] = []
    after = {origin[i]: marker for i, marker in chosen.items()}
    for i, block in enumerate(items):
        if isinstance(block, Mapping) and "cachePoint" in block:
            continue
        out.append(block)
        if i in after:
            out.append(_point(after[i]))
    return out


def write_cache_points(
    payload: Mapping[str, Any], mapping: ConverseMap, wanted: dict[tuple[str, int, int], Any]
) -> dict[str, Any]:
    """A copy of ``payload`` whose cachePoint blocks are exactly ``wanted`` (``(container, outer, shadow
    index) -> marker``). Copy-on-write: only lists that gain or lose a cache point are new; ``payload``
    is never mutated."""
    by_container: dict[tuple[str, int], dict[int, Any]] = {}
    for (kind, outer, inner), marker in wanted.items():
        by_container.setdefault((kind, outer), {})[inner] = marker
    out = dict(payload)
    touched = by_container.keys() | mapping.had_points
    if ("tools", 0) in touched:
        config = dict(payload["toolConfig"])
        config["tools"] = _rewrite(config["tools"], mapping.tools, by_container.get(("tools", 0), {}))
        out["toolConfig"] = config
    if ("system", 0) in touched:
        out["system"] = _rewrite(payload["system"], mapping.system, by_container.get(("system", 0), {}))
    messages = [key[1] for key in touched if key[0] == "messages"]
    if messages:
        new = list(payload["messages"])
        for m in messages:
            chosen = by_container.get(("messages", m), {})
            new[m] = {**new[m], "content": _rewrite(new[m]["content"], mapping.messages[m], chosen)}
        out["messages"] = new
    return out
