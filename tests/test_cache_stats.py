# CacheStats over dict and SDK-shaped usage, and the stateful planner on hand-made sessions.
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from mendstream.cache import CachePlanner, CacheStats, ceiling, simulate
from test_cache_payloads import agent_turn_payload


def test_cache_stats_aggregates_usage() -> None:
    stats = CacheStats()
    assert stats.hit_ratio == 0.0 and stats.relative_cost == 1.0
    stats.add(
        {"input_tokens": 100, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 0, "output_tokens": 5}
    )
    stats.add(
        SimpleNamespace(
            input_tokens=50,
            cache_creation_input_tokens=200,
            cache_read_input_tokens=1000,
            output_tokens=7,
            cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=0, ephemeral_1h_input_tokens=200),
        )
    )
    stats.add({"input_tokens": None})
    assert stats.requests == 3
    assert stats.cache_write_5m_tokens == 1000 and stats.cache_write_1h_tokens == 200
    assert stats.total_input_tokens == 2350
    assert stats.hit_ratio == 1000 / 2350
    assert abs(stats.relative_cost - (150 + 1250 + 400 + 100) / 2350) < 1e-12
    assert "hit ratio" in stats.summary()


def marked(out: dict[str, Any]) -> list[tuple[str, int, int]]:
    found = [("tools", i, -1) for i, t in enumerate(out.get("tools", [])) if "cache_control" in t]
    found += [("system", i, -1) for i, b in enumerate(out["system"]) if "cache_control" in b]
    for m, message in enumerate(out["messages"]):
        if isinstance(message["content"], list):
            found += [("messages", m, b) for b, block in enumerate(message["content"]) if "cache_control" in block]
    return found


def test_planner_reads_exactly_where_it_wrote() -> None:
    planner = CachePlanner()
    planner.place(agent_turn_payload(turns=1, parallel=14))
    out, report = planner.plan(agent_turn_payload(turns=2, parallel=14))
    read = [b for b in report.breakpoints if b.reason.startswith("exact read")]
    assert [b.location for b in read] == [(2, 13)]  # the previous request's tail, 29 blocks back
    assert ("messages", 4, 13) in marked(out)  # the previous request's tail, 29 blocks back


def test_planner_learns_a_volatile_reminder() -> None:
    planner = CachePlanner()
    for turns in (1, 2, 3):
        payload = agent_turn_payload(turns=turns)
        payload = copy.deepcopy(payload)
        payload["messages"][-1]["content"].append({"type": "text", "text": f"<reminder {turns}>"})
        out, report = planner.plan(payload)
    assert any("tail changed" in b.reason for b in report.breakpoints)
    assert ("messages", 6, 0) in marked(out)  # the tool_result before the reminder


def test_planner_marks_the_prefix_before_a_changing_tool() -> None:
    planner = CachePlanner()
    for turn in range(3):
        payload = agent_turn_payload(turns=turn + 1)
        payload["tools"] = [*payload["tools"], {"name": "files", "description": f"open: {turn}", "input_schema": {}}]
        out, report = planner.plan(payload)
    assert ("tools", 1, -1) in marked(out)
    assert [b.location for b in report.breakpoints if b.reason.startswith("exact read")] == [(1, -1)]


def changing_last_tool_session(turns: int = 20) -> list[dict[str, Any]]:
    """An agent loop whose last tool definition (the open files) changes every turn."""
    tools = [{"name": f"tool_{i}", "description": f"tool {i} " * 150, "input_schema": {}} for i in range(12)]
    system = [{"type": "text", "text": "You are a coding agent. " * 250}]
    history: list[dict[str, Any]] = [{"role": "user", "content": "fix the failing test " * 40}]
    payloads = []
    for turn in range(turns):
        listing = {"name": "open_files", "description": f"open files ({turn}): " + f"src/f{turn}.py " * 60}
        payloads.append(
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 1000,
                "tools": [*tools, {**listing, "input_schema": {}}],
                "system": system,
                "messages": list(history),
            }
        )
        history.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"c{turn}", "name": "tool_1", "input": {}}]}
        )
        history.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"c{turn}", "content": "ok " * 300}]}
        )
    return payloads


@pytest.mark.parametrize("lookback", [20, 1])
def test_planner_reaches_the_ceiling_when_the_last_tool_changes_every_turn(lookback: int) -> None:
    payloads = changing_last_tool_session()
    planner = CachePlanner(warn=False)
    planned = [planner.place(p) for p in payloads]
    best = ceiling(payloads).hit_ratio
    reached = simulate(planned, lookback=lookback).hit_ratio
    assert best > 0.3
    assert reached >= 0.97 * best, (reached, best)
