# provider="bedrock-converse": Converse-shaped requests get at most 4 {"cachePoint": ...} blocks, each
# after a block that can be cached, TTLs non-increasing toolConfig -> system -> messages, nothing else
# changed and the input never mutated (hypothesis, on every Messages payload the Anthropic property tests
# draw, converted to Converse); CachePlanner, the simulator and CacheStats on Converse sessions.
from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mendstream.cache import (
    CachePlanner,
    CacheStats,
    ceiling,
    place_cache_breakpoints,
    plan_cache_breakpoints,
    simulate,
)
from mendstream.cache.converse import is_converse
from mendstream.cache.planner import bedrock_supports_1h
from mendstream.errors import CachePayloadError
from test_cache_payloads import payloads


def _point(marker: Any) -> dict[str, Any]:
    if isinstance(marker, dict) and marker.get("type") == "ephemeral":
        return {"cachePoint": {**marker, "type": "default"}}
    return {"cachePoint": marker}


def _block(block: Any) -> list[dict[str, Any]]:
    """One Messages content block as Converse blocks (plus the cachePoint its marker asks for)."""
    if isinstance(block, str):
        return [{"text": block}]
    kind = block.get("type")
    if kind == "text":
        out: dict[str, Any] = {"text": block["text"]}
    elif kind == "thinking":
        out = {"reasoningContent": {"reasoningText": {"text": block["thinking"], "signature": block["signature"]}}}
    elif kind == "redacted_thinking":
        out = {"reasoningContent": {"redactedContent": block["data"].encode()}}
    elif kind == "tool_use":
        out = {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
    elif kind == "tool_result":
        content = block["content"]
        items = [{"text": content}] if isinstance(content, str) else [{"text": str(c)} for c in content]
        out = {"toolResult": {"toolUseId": block["tool_use_id"], "content": items}}
    elif kind == "image":
        out = {"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}
    elif kind == "document":
        out = {"document": {"format": "txt", "name": "doc", "source": {"text": block["source"]["data"]}}}
    else:
        out = {"text": "unknown block"}
    return [out] + ([_point(block["cache_control"])] if "cache_control" in block else [])


def to_converse(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"modelId": payload["model"], "inferenceConfig": {"maxTokens": 100}}
    if "tools" in payload:
        tools: list[Any] = []
        for tool in payload["tools"]:
            spec = {"name": tool["name"], "description": tool["description"] or "d", "inputSchema": {"json": {}}}
            tools.append({"toolSpec": spec})
            if "cache_control" in tool:
                tools.append(_point(tool["cache_control"]))
        out["toolConfig"] = {"tools": tools}
    system = payload.get("system")
    if isinstance(system, str):
        out["system"] = [{"text": system}]
    elif isinstance(system, list):
        out["system"] = [b for block in system for b in _block(block)]
    out["messages"] = [
        {
            "role": m["role"],
            "content": _block(m["content"])
            if isinstance(m["content"], str)
            else [b for x in m["content"] for b in _block(x)],
        }
        for m in payload["messages"]
    ]
    return out


def cache_points(payload: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(container, cachePoint value, block before it) in prefix order."""
    containers: list[tuple[str, list[Any]]] = []
    if "toolConfig" in payload:
        containers.append(("tools", payload["toolConfig"]["tools"]))
    if "system" in payload:
        containers.append(("system", payload["system"]))
    containers += [("messages", m["content"]) for m in payload["messages"]]
    out = []
    for name, items in containers:
        for i, block in enumerate(items):
            if "cachePoint" in block:
                out.append((name, block["cachePoint"], items[i - 1] if i else None))
    return out


def without_points(payload: dict[str, Any]) -> dict[str, Any]:
    p = copy.deepcopy(payload)
    if "toolConfig" in p:
        p["toolConfig"]["tools"] = [b for b in p["toolConfig"]["tools"] if "cachePoint" not in b]
    if "system" in p:
        p["system"] = [b for b in p["system"] if "cachePoint" not in b]
    for m in p["messages"]:
        m["content"] = [b for b in m["content"] if "cachePoint" not in b]
    return p


def check_converse(payload: dict[str, Any], out: dict[str, Any]) -> None:
    points = cache_points(out)
    assert len(points) <= 4
    ttls = []
    for _, point, before in points:
        assert isinstance(point, dict) and point.get("type") == "default"
        assert set(point) <= {"type", "ttl"} and point.get("ttl", "5m") in ("5m", "1h")
        assert before is not None and "cachePoint" not in before
        assert "reasoningContent" not in before
        assert before != {"text": ""}
        ttls.append(point.get("ttl", "5m"))
    if "5m" in ttls:
        assert "1h" not in ttls[ttls.index("5m") :]  # non-increasing toolConfig -> system -> messages
    assert without_points(out) == without_points(payload)


OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["default", "system-last-two-user", "pi", "dual", "last-block", "none"]),
        "ttl": st.sampled_from([None, "5m", "1h", {"tools": "1h", "system": "1h", "messages": "5m"}]),
        "min_tokens": st.sampled_from([0, 1024, None]),
        "lookback": st.sampled_from([1, 20]),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(), OPTIONS)
def test_converse_planner_properties(messages_payload: dict[str, Any], options: dict[str, Any]) -> None:
    payload = to_converse(messages_payload)
    assert is_converse(payload)
    before = copy.deepcopy(payload)
    out, report = plan_cache_breakpoints(payload, provider="bedrock-converse", **options)
    assert payload == before  # never mutated
    check_converse(payload, out)
    assert len(report.breakpoints) == len(cache_points(out))
    # unchanged messages are shared, not copied
    for old, new in zip(payload["messages"], out["messages"], strict=True):
        if not any("cachePoint" in b for b in old["content"] + new["content"]):
            assert new is old


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=4))
def test_converse_stateful_planner_properties(sequence: list[dict[str, Any]]) -> None:
    planner = CachePlanner(provider="bedrock-converse", warn=False)
    for messages_payload in sequence:
        payload = to_converse(messages_payload)
        before = copy.deepcopy(payload)
        out = planner.place(payload)
        assert payload == before
        check_converse(payload, out)


def converse_session(turns: int = 12) -> list[dict[str, Any]]:
    tools: list[Any] = [
        {"toolSpec": {"name": f"tool_{i}", "description": f"tool {i} " * 150, "inputSchema": {"json": {}}}}
        for i in range(8)
    ]
    history: list[dict[str, Any]] = [{"role": "user", "content": [{"text": "fix the bug " * 100}]}]
    out = []
    for turn in range(turns):
        out.append(
            {
                "modelId": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "toolConfig": {"tools": tools},
                "system": [{"text": "You are a coding agent. " * 250}],
                "messages": list(history),
            }
        )
        history.append(
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": f"c{turn}", "name": "tool_1", "input": {}}}]}
        )
        history.append(
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": f"c{turn}", "content": [{"text": "ok " * 300}]}}],
            }
        )
    return out


@pytest.mark.parametrize("lookback", [20, 1])
def test_converse_planner_reaches_the_ceiling(lookback: int) -> None:
    session = converse_session()
    planner = CachePlanner(provider="bedrock-converse", warn=False)
    planned = [planner.place(p) for p in session]
    for p in planned:
        check_converse(p, p)
    report = simulate(planned, lookback=lookback)
    assert report.errors == 0
    assert report.hit_ratio >= 0.97 * ceiling(session).hit_ratio > 0.5


def test_converse_markers_write_cache_points_with_ttl_in_order() -> None:
    payload = converse_session(3)[-1]
    out, report = plan_cache_breakpoints(payload, provider="bedrock-converse", ttl={"tools": "1h", "system": "1h"})
    points = cache_points(out)
    assert [(c, p) for c, p, _ in points][:2] == [
        ("tools", {"type": "default", "ttl": "1h"}),
        ("system", {"type": "default", "ttl": "1h"}),
    ]
    assert out["toolConfig"]["tools"][-1] == {"cachePoint": {"type": "default", "ttl": "1h"}}
    assert payload["toolConfig"]["tools"][-1] != out["toolConfig"]["tools"][-1]  # input untouched
    assert report.provider == "bedrock-converse"


def test_converse_caller_cache_points_over_the_limit_are_dropped_and_invalid_ones_corrected() -> None:
    payload = converse_session(4)[-1]
    for message in payload["messages"]:
        message["content"] = [*message["content"], {"cachePoint": {"type": "default", "ttl": "2h"}}]
    out, report = plan_cache_breakpoints(payload, provider="bedrock-converse")
    assert len(cache_points(out)) <= 4
    assert report.dropped and all("limit" in d.reason or "invalid" in d.reason for d in report.dropped)
    assert all(p.get("ttl", "5m") in ("5m", "1h") for _, p, _ in cache_points(out))


def test_bedrock_1h_only_where_aws_supports_it() -> None:
    assert bedrock_supports_1h("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert bedrock_supports_1h("anthropic.claude-opus-4-6-v1")
    assert not bedrock_supports_1h("anthropic.claude-3-7-sonnet-20250219-v1:0")
    assert not bedrock_supports_1h("anthropic.claude-sonnet-4-20250514-v1:0")
    assert not bedrock_supports_1h("anthropic.claude-opus-4-1-20250805-v1:0")
    old = {**converse_session(2)[-1], "modelId": "anthropic.claude-3-7-sonnet-20250219-v1:0"}
    out, report = plan_cache_breakpoints(old, provider="bedrock-converse", ttl="1h")
    assert all("ttl" not in p or p["ttl"] == "5m" for _, p, _ in cache_points(out))
    assert report.ttl_lowered


def test_converse_has_no_automatic_caching_and_bad_shapes_name_the_field() -> None:
    payload = converse_session(1)[0]
    with pytest.raises(ValueError, match="no top-level automatic"):
        place_cache_breakpoints(payload, provider="bedrock-converse", automatic=True)
    bad = copy.deepcopy(payload)
    bad["toolConfig"]["tools"] = "x"
    with pytest.raises(CachePayloadError, match=r"toolConfig\.tools"):
        place_cache_breakpoints(bad, provider="bedrock-converse")
    bad = copy.deepcopy(payload)
    bad["messages"][0]["content"] = [{"text": "a", "image": {}}]
    with pytest.raises(CachePayloadError, match=r"messages\[0\]\.content\[0\]"):
        place_cache_breakpoints(bad, provider="bedrock-converse")


def test_cache_stats_and_simulator_read_converse_usage() -> None:
    stats = CacheStats()
    stats.add({"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 800, "cacheWriteInputTokens": 100})
    assert (stats.input_tokens, stats.output_tokens, stats.cache_read_tokens, stats.cache_write_5m_tokens) == (
        100,
        20,
        800,
        100,
    )
    assert stats.hit_ratio == 0.8
    from mendstream.cache.simulate import SessionEntry

    session = converse_session(2)
    usage = {"inputTokens": 10, "cacheReadInputTokens": 0, "cacheWriteInputTokens": 9990}
    report = simulate([SessionEntry(session[0], 0.0, usage)])
    assert report.total_tokens == 10000
