# CacheStats over dict and SDK-shaped usage, and the stateful planner on hand-made sessions.
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from mendstream.cache import CachePlanner, CacheStats
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
