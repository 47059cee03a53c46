# Properties and unit tests of the stateless planner: limit, purity, sharing, TTL order, content kept,
# caller markers kept or reported, each strategy on hand-made payloads, apply_cache.
from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mendstream.cache import (
    STRATEGIES,
    CacheMarkerWarning,
    CachePlanner,
    apply_cache,
    place_cache_breakpoints,
    plan_cache_breakpoints,
)
from mendstream.errors import UsageError
from test_cache_payloads import agent_turn_payload, all_markers, payloads, without_markers

OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(list(STRATEGIES)),
        "automatic": st.sampled_from([None, True, False]),
        "ttl": st.one_of(
            st.none(),
            st.sampled_from(["5m", "1h"]),
            st.fixed_dictionaries(
                {}, optional={r: st.sampled_from(["5m", "1h"]) for r in ("tools", "system", "messages")}
            ),
        ),
        "min_tokens": st.sampled_from([0, 1, 500, 1024, None]),
        "provider": st.sampled_from(["anthropic", "bedrock", "vertex", "prefix-auto"]),
        "lookback": st.sampled_from([1, 20]),
    },
)


def check_invariants(payload: dict[str, Any], out: dict[str, Any]) -> None:
    markers = all_markers(out)
    assert len(markers) <= 4  # nested markers included: the API counts every cache_control
    assert not any(region == "nested" for region, _, _ in markers)
    for region, marker, block in markers:
        assert isinstance(marker, dict)
        assert marker.get("type") == "ephemeral"
        assert set(marker) <= {"type", "ttl"}
        assert marker.get("ttl", "5m") in ("5m", "1h")
        if region == "top":
            continue
        assert isinstance(block, dict)
        assert block.get("type") not in ("thinking", "redacted_thinking")
        assert not (block.get("type") == "text" and not block.get("text"))
    ttls = [m.get("ttl", "5m") for _, m, _ in markers]
    assert "1h" not in ttls[ttls.index("5m") :] if "5m" in ttls else True
    assert without_markers(out) == without_markers(payload)


def markers_by_block(message: dict[str, Any]) -> list[tuple[int, list[Any]]]:
    """(block index, (where, marker) the API would count in that block) for every block of a message."""
    content = message["content"]
    if not isinstance(content, list):
        return []
    return [(i, [(r, m) for r, m, _ in all_markers({"messages": [{"content": [b]}]})]) for i, b in enumerate(content)]


def valid_combo(options: dict[str, Any]) -> bool:
    provider = options.get("provider", "anthropic")
    if provider == "anthropic":
        return True
    return not options.get("automatic") and options.get("strategy") != "automatic"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(), OPTIONS)
def test_planner_properties(payload: dict[str, Any], options: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    if not valid_combo(options):
        with pytest.raises(ValueError):
            plan_cache_breakpoints(payload, **options)
        return
    out, report = plan_cache_breakpoints(payload, **options)
    assert payload == before  # never mutated
    assert out is not payload
    check_invariants(payload, out)
    # unchanged messages are shared, not copied
    for old, new in zip(payload["messages"], out["messages"], strict=True):
        if markers_by_block(old) == markers_by_block(new) and not (
            isinstance(old["content"], str) and isinstance(new["content"], list)
        ):
            assert new is old
    # every caller marker that is gone is reported
    kept = {id(b) for _, _, b in all_markers(out)}
    before_blocks = all_markers(payload)
    reported = len(report.dropped) + len(report.normalised) + len(report.ttl_lowered)
    assert reported >= sum(1 for r, _, _ in before_blocks if r != "top") - len(kept)
    # every caller marker that is not in the output exactly as placed is reported
    kept_as_placed = {id(m) for r, m, _ in all_markers(out) if r != "top" and isinstance(m, dict)}
    changed = sum(1 for r, m, _ in before_blocks if r != "top" and id(m) not in kept_as_placed)
    assert reported >= changed
    assert len(report.breakpoints) == len(all_markers(out))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=4))
def test_stateful_planner_properties(sequence: list[dict[str, Any]]) -> None:
    planner = CachePlanner(warn=False)
    for payload in sequence:
        before = copy.deepcopy(payload)
        out = planner.place(payload)
        assert payload == before
        check_invariants(payload, out)


def positions(report: Any) -> list[tuple[str, tuple[int, int]]]:
    return [(b.region, b.location) for b in report.breakpoints]


def test_default_strategy_on_a_tool_loop() -> None:
    payload = agent_turn_payload(turns=3)
    out, report = plan_cache_breakpoints(payload)
    assert positions(report) == [
        ("tools", (1, -1)),  # end of tool definitions
        ("system", (0, -1)),  # end of system
        ("messages", (4, 0)),  # previous request's tail: the tool_result before the last assistant turn
        ("messages", (6, 0)),  # current tail
    ]
    assert out["messages"][6]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert out["messages"][0] is payload["messages"][0]
    assert out["messages"][5] is payload["messages"][5]


def test_stepping_stone_for_parallel_tool_calls() -> None:
    payload = agent_turn_payload(turns=2, parallel=14)
    del payload["tools"]
    _, report = plan_cache_breakpoints(payload)
    reasons = [b.reason for b in report.breakpoints]
    assert any(r.startswith("stepping stone") for r in reasons)
    assert len(report.breakpoints) == 4


def test_minimum_length_skips_short_prefixes() -> None:
    payload = {"model": "claude-opus-4-6", "system": "short", "messages": [{"role": "user", "content": "hi"}]}
    out, report = plan_cache_breakpoints(payload)
    assert report.breakpoints == () and all_markers(out) == []
    assert report.min_tokens == 4096 and report.too_short
    out, report = plan_cache_breakpoints(payload, min_tokens=0)
    assert len(report.breakpoints) == 2
    _, report = plan_cache_breakpoints(payload, min_tokens={"claude-opus": 1})
    assert report.min_tokens == 1


def test_string_content_becomes_one_block_list() -> None:
    payload = {"model": "m", "system": "s", "messages": [{"role": "user", "content": "hello"}]}
    out = place_cache_breakpoints(payload, min_tokens=0)
    assert out["system"] == [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]
    assert payload["messages"][0]["content"] == "hello"


def test_accumulated_history_markers_are_dropped_oldest_first_and_reported() -> None:
    payload = agent_turn_payload(turns=6)
    for message in payload["messages"][1:]:
        message["content"][-1]["cache_control"] = {"type": "ephemeral"}
    with pytest.warns(CacheMarkerWarning, match="over the limit of 4"):
        out = place_cache_breakpoints(payload)
    assert len(all_markers(out)) == 4
    _, report = plan_cache_breakpoints(payload)
    dropped_messages = sorted(d.location[0] for d in report.dropped)
    assert dropped_messages and max(dropped_messages) < 12  # the newest ones survive
    assert report.breakpoints[-1].location == (12, 0)


def test_caller_system_markers_have_priority_and_keep_their_ttl() -> None:
    payload = agent_turn_payload(turns=2, system_blocks=3)
    payload["system"][0] = {**payload["system"][0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    out, report = plan_cache_breakpoints(payload)
    assert out["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert report.breakpoints[0].source == "caller"


def test_invalid_caller_markers_are_removed_and_reported() -> None:
    payload = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "t",
                        "signature": "s",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "ok"},
                ],
            },
            {"role": "user", "content": "next"},
        ],
    }
    out, report = plan_cache_breakpoints(payload, min_tokens=0)
    assert {d.reason for d in report.dropped} == {"this block type cannot carry cache_control"}
    assert "cache_control" not in out["messages"][1]["content"][0]
    assert "cache_control" not in out["messages"][0]["content"][0]


def test_ttl_per_region_and_longer_first() -> None:
    payload = agent_turn_payload(turns=2)
    _, report = plan_cache_breakpoints(payload, ttl={"tools": "1h", "system": "1h", "messages": "5m"})
    assert [b.ttl for b in report.breakpoints] == ["1h", "1h", "5m", "5m"]
    assert not report.ttl_lowered
    _, report = plan_cache_breakpoints(payload, ttl={"system": "5m", "messages": "1h"})
    assert [b.ttl for b in report.breakpoints] == ["5m", "5m", "5m", "5m"]
    assert len(report.ttl_lowered) == 2


def test_automatic_caching_costs_a_slot_and_covers_the_tail() -> None:
    payload = agent_turn_payload(turns=2)
    out, report = plan_cache_breakpoints(payload, automatic=True)
    assert out["cache_control"] == {"type": "ephemeral"}
    assert len(all_markers(out)) == 4
    assert report.breakpoints[-1].source == "automatic"
    assert "cache_control" not in out["messages"][-1]["content"][-1]
    out, _ = plan_cache_breakpoints(payload, strategy="automatic")
    assert all_markers(out) == [("top", {"type": "ephemeral"}, {})]


def test_bedrock_replaces_top_level_marker_with_explicit_tail() -> None:
    payload = {**agent_turn_payload(turns=1), "cache_control": {"type": "ephemeral"}}
    with pytest.warns(CacheMarkerWarning, match="no top-level automatic caching"):
        out = place_cache_breakpoints(payload, provider="bedrock")
    assert "cache_control" not in out
    assert "cache_control" in out["messages"][-1]["content"][-1]
    with pytest.raises(ValueError, match="no top-level automatic"):
        place_cache_breakpoints(payload, provider="vertex", automatic=True)


def test_prefix_auto_provider_strips_every_marker() -> None:
    payload = {**agent_turn_payload(turns=1), "cache_control": {"type": "ephemeral"}}
    payload["system"][0]["cache_control"] = {"type": "ephemeral"}
    with pytest.warns(CacheMarkerWarning):
        out = place_cache_breakpoints(payload, provider="prefix-auto")
    assert all_markers(out) == []


def test_peer_strategies() -> None:
    payload = agent_turn_payload(turns=3, parallel=2)

    def where(strategy: str) -> list[tuple[str, tuple[int, int]]]:
        return positions(plan_cache_breakpoints(payload, strategy=strategy)[1])  # type: ignore[arg-type]

    assert where("system-last-two-user") == [("system", (0, -1)), ("messages", (4, 1)), ("messages", (6, 1))]
    assert where("pi") == [("tools", (1, -1)), ("system", (0, -1)), ("messages", (6, 1))]
    assert where("dual") == [
        ("tools", (1, -1)),
        ("system", (0, -1)),
        ("messages", (5, 2)),
        ("messages", (6, 1)),
    ]
    assert where("last-block") == [("messages", (6, 1))]
    assert where("none") == []


def test_strategy_none_removes_markers_without_warning() -> None:
    payload = agent_turn_payload(turns=1)
    payload["messages"][-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = place_cache_breakpoints(payload, strategy="none")
    assert all_markers(out) == []


def test_large_history_is_shared_not_copied() -> None:
    payload = agent_turn_payload(turns=1000)
    out = place_cache_breakpoints(payload)
    changed = [i for i, (a, b) in enumerate(zip(payload["messages"], out["messages"], strict=True)) if a is not b]
    assert changed == [len(payload["messages"]) - 3, len(payload["messages"]) - 1]
    assert out["tools"][0] is payload["tools"][0]


def test_bad_options_list_the_allowed_values() -> None:
    payload = agent_turn_payload(turns=1)
    with pytest.raises(ValueError, match="allowed: default, system-last-two-user"):
        place_cache_breakpoints(payload, strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed: 5m, 1h"):
        place_cache_breakpoints(payload, ttl="2h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed: anthropic"):
        place_cache_breakpoints(payload, provider="openai")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        place_cache_breakpoints([1, 2])  # type: ignore[arg-type]


def test_apply_cache() -> None:
    payload = agent_turn_payload(turns=1)
    assert apply_cache(payload, None) is payload
    assert apply_cache(payload, False) is payload
    assert len(all_markers(apply_cache(payload, True))) == 4
    assert all_markers(apply_cache(payload, "last-block")) == all_markers(
        place_cache_breakpoints(payload, strategy="last-block")
    )
    assert apply_cache(payload, {"ttl": "1h"})["system"][0]["cache_control"]["ttl"] == "1h"
    planner = CachePlanner()
    assert len(all_markers(apply_cache(payload, planner))) >= 1
    assert planner.last_report is not None
    assert apply_cache(payload, "off") is payload
    assert apply_cache(payload, "default") == apply_cache(payload, True)
    for bad in ("nope", 3, {"colour": "red"}, {"strategy": "nope"}, "planner", {"ttl": "2h"}):
        with pytest.raises(UsageError, match=r"cache|ttl") as info:  # a UsageError is also a ValueError
            apply_cache(payload, bad)
        assert isinstance(info.value, ValueError)
