# Hypothesis strategies and hand-made payload builders shared by the cache tests (no tests here).
from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

TTLS = st.sampled_from([None, "5m", "1h"])


def marker(ttl: str | None) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}


#: Markers callers really send that the API rejects: the planner must correct or drop every one.
INVALID_MARKERS = st.sampled_from(
    [
        {"type": "ephemeral", "ttl": "2h"},
        {"type": "ephemeral", "ttl": 3600},
        {"type": "persistent"},
        {"type": "ephemeral", "scope": "global"},
        "yes",
        True,
        None,
    ]
)


@st.composite
def maybe_marked(draw: st.DrawFn, block: dict[str, Any]) -> dict[str, Any]:
    roll = draw(st.integers(0, 9))
    if roll < 2:
        block = {**block, "cache_control": marker(draw(TTLS))}
    elif roll == 2:
        block = {**block, "cache_control": draw(INVALID_MARKERS)}
    return block


TEXT = st.text(alphabet='abc xyz\n{}"\\é😀', max_size=40)
BIG_TEXT = st.builds(lambda n, c: c * n, st.integers(0, 3000), st.sampled_from("ab"))


@st.composite
def nested_block(draw: st.DrawFn) -> dict[str, Any]:
    """A block inside a tool_result's content, often carrying a marker (the API counts those too)."""
    if draw(st.integers(0, 5)) == 0:
        return {"type": "tool_result", "tool_use_id": "t0", "content": draw(st.lists(nested_block(), max_size=2))}
    return draw(maybe_marked({"type": "text", "text": draw(TEXT) or "r"}))


@st.composite
def content_block(draw: st.DrawFn, role: str) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "text",
                "text",
                "empty",
                "big",
                "thinking",
                "redacted",
                "tool_use",
                "tool_result",
                "image",
                "document",
                "unknown",
            ]
        )
    )
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": draw(TEXT) or "x"}
    elif kind == "empty":
        block = {"type": "text", "text": ""}
    elif kind == "big":
        block = {"type": "text", "text": draw(BIG_TEXT) or "y"}
    elif kind == "thinking":
        block = {"type": "thinking", "thinking": draw(TEXT), "signature": "sig"}
    elif kind == "redacted":
        block = {"type": "redacted_thinking", "data": "abc"}
    elif kind == "tool_use":
        block = {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": draw(TEXT)}}
    elif kind == "tool_result":
        inner = draw(st.one_of(TEXT, st.lists(nested_block(), max_size=3)))
        block = {"type": "tool_result", "tool_use_id": "t1", "content": inner}
    elif kind == "image":
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    elif kind == "document":
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}
    else:
        block = {"type": "mystery_block", "payload": [1, 2, 3]}
    return draw(maybe_marked(block))


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-sonnet-4-5", "claude-opus-4-6", "x"])),
        "max_tokens": 100,
    }
    if draw(st.booleans()):
        payload["tools"] = [
            draw(maybe_marked({"name": f"tool{i}", "description": draw(BIG_TEXT), "input_schema": {}}))
            for i in range(draw(st.integers(0, 4)))
        ]
    system_kind = draw(st.sampled_from(["none", "str", "list"]))
    if system_kind == "str":
        payload["system"] = draw(st.one_of(TEXT, BIG_TEXT))
    elif system_kind == "list":
        payload["system"] = [
            draw(maybe_marked({"type": "text", "text": draw(st.one_of(TEXT, BIG_TEXT))}))
            for _ in range(draw(st.integers(0, 3)))
        ]
    messages = []
    for i in range(draw(st.integers(0, 14))):
        role = "user" if i % 2 == 0 else "assistant"
        if draw(st.booleans()):
            content: Any = draw(st.one_of(TEXT, BIG_TEXT))
        else:
            content = [draw(content_block(role)) for _ in range(draw(st.integers(0, 5)))]
        messages.append({"role": role, "content": content})
    payload["messages"] = messages
    if draw(st.integers(0, 3)) == 0:
        payload["cache_control"] = marker(draw(TTLS))
    return payload


def nested_markers(block: Any) -> list[tuple[str, Any, Any]]:
    """Every marker inside a tool_result's content, at any depth (region "nested")."""
    out: list[tuple[str, Any, Any]] = []
    if isinstance(block, dict) and block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        for item in block["content"]:
            if isinstance(item, dict) and "cache_control" in item:
                out.append(("nested", item["cache_control"], item))
            out += nested_markers(item)
    return out


def all_markers(payload: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any] | str]]:
    """Every (region, marker, block) the API would count, top-level and nested markers included: block
    markers in prefix order (a block's nested markers just before it), the top-level marker last."""
    out: list[tuple[str, Any, Any]] = []
    for tool in payload.get("tools") or []:
        if "cache_control" in tool:
            out.append(("tools", tool["cache_control"], tool))
    system = payload.get("system")
    if isinstance(system, list):
        out += [("system", b["cache_control"], b) for b in system if "cache_control" in b]
    for message in payload.get("messages") or []:
        if isinstance(message["content"], list):
            for b in message["content"]:
                out += nested_markers(b)
                if isinstance(b, dict) and "cache_control" in b:
                    out.append(("messages", b["cache_control"], b))
    if "cache_control" in payload:
        out.append(("top", payload["cache_control"], {}))
    return out


def without_markers(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with every cache_control removed and string content as one text block."""
    p = copy.deepcopy(payload)
    p.pop("cache_control", None)

    def clean(blocks: Any) -> Any:
        if isinstance(blocks, str):
            return [{"type": "text", "text": blocks}] if blocks else blocks
        for b in blocks:
            if isinstance(b, dict):
                b.pop("cache_control", None)
                if b.get("type") == "tool_result" and isinstance(b.get("content"), list):
                    clean(b["content"])
        return blocks

    if "tools" in p:
        p["tools"] = clean(p["tools"])
    if "system" in p:
        p["system"] = clean(p["system"])
    for m in p.get("messages", []):
        m["content"] = clean(m["content"])
    return p


def agent_turn_payload(turns: int, parallel: int = 1, system_blocks: int = 1) -> dict[str, Any]:
    """tools + system + a user task + `turns` assistant tool_use/user tool_result rounds."""
    big = "lorem ipsum " * 400
    messages: list[dict[str, Any]] = [{"role": "user", "content": "do the task"}]
    for t in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]
                + [{"type": "tool_use", "id": f"c{t}_{k}", "name": "read", "input": {"k": k}} for k in range(parallel)],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"c{t}_{k}", "content": f"result {t} {k}"}
                    for k in range(parallel)
                ],
            }
        )
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "tools": [
            {"name": "read", "description": big, "input_schema": {"type": "object"}},
            {"name": "write", "description": "w", "input_schema": {"type": "object"}},
        ],
        "system": [{"type": "text", "text": f"system part {i} " + big} for i in range(system_blocks)],
        "messages": messages,
    }
