# Bad input to the cache package: malformed payloads and options raise UsageErrors naming the field or
# argument; invalid or nested caller markers are corrected, moved or dropped and reported; hostile
# nesting is a clear error, never a RecursionError; the simulator counts what the API counts.
from __future__ import annotations

import copy
import subprocess
import sys
import typing
import warnings
from typing import Any

import pytest

from mendstream import StreamError, UsageError
from mendstream.cache import (
    STRATEGIES,
    CacheMarkerWarning,
    CachePlanner,
    place_cache_breakpoints,
    plan_cache_breakpoints,
    simulate,
)
from mendstream.cache.layout import MAX_NESTING, normalise_marker
from mendstream.cache.simulate import SessionFormatError
from mendstream.cache.strategies import StrategyName
from mendstream.errors import CachePayloadError
from test_cache_payloads import agent_turn_payload, all_markers


def nested_result(markers: int) -> dict[str, Any]:
    """A tool_result whose content carries ``markers`` cache_control markers."""
    return {
        "type": "tool_result",
        "tool_use_id": "c0_0",
        "content": [
            {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(markers)
        ],
    }


def test_markers_nested_in_tool_results_are_counted_kept_within_budget_and_reported() -> None:
    payload = agent_turn_payload(turns=3)
    payload["messages"][2]["content"] = [nested_result(10)]
    before = copy.deepcopy(payload)
    out, report = plan_cache_breakpoints(payload)
    assert payload == before
    markers = all_markers(out)
    assert len(markers) <= 4
    assert not any(region == "nested" for region, _, _ in markers)
    # nested text is unchanged apart from the markers
    assert [b["text"] for b in out["messages"][2]["content"][0]["content"]] == [f"part {i}" for i in range(10)]
    # every one of the ten is accounted for: moved to the enclosing block or dropped, each with its path
    paths = {d.path for d in report.dropped + report.normalised}
    assert paths == {f"messages[2].content[0].content[{i}]" for i in range(10)}
    assert all(d.location == (2, 0) for d in report.dropped + report.normalised)


def test_a_kept_nested_marker_moves_to_the_enclosing_block() -> None:
    payload = agent_turn_payload(turns=1)
    payload["messages"][-1]["content"] = [nested_result(1)]
    out, report = plan_cache_breakpoints(payload, strategy="last-block")
    block = out["messages"][-1]["content"][0]
    assert block["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in block["content"][0]
    assert [d.reason for d in report.normalised] == [
        "inside a tool_result's content: moved to the enclosing tool_result block"
    ]
    with pytest.warns(CacheMarkerWarning, match="corrected"):
        place_cache_breakpoints(payload, strategy="last-block")


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ({"type": "ephemeral", "ttl": "2h"}, {"type": "ephemeral", "ttl": "1h"}),
        ({"type": "ephemeral", "ttl": 3600}, {"type": "ephemeral", "ttl": "1h"}),
        ({"type": "ephemeral", "ttl": "300s"}, {"type": "ephemeral", "ttl": "5m"}),
        ({"type": "ephemeral", "ttl": "soon"}, {"type": "ephemeral"}),
        ({"type": "persistent"}, {"type": "ephemeral"}),
        ({"type": "ephemeral", "ttl": "1h", "scope": "x"}, {"type": "ephemeral", "ttl": "1h"}),
        ("yes", None),
        (True, None),
        (None, None),
    ],
)
def test_invalid_caller_markers_are_corrected_or_dropped_and_reported(marker: Any, expected: Any) -> None:
    fixed, fault = normalise_marker(marker)
    assert fixed == expected and fault is not None
    payload = agent_turn_payload(turns=1)
    del payload["tools"]  # the system block is the first breakpoint: a 1h TTL is not lowered
    payload["system"][0] = {**payload["system"][0], "cache_control": marker}
    out, report = plan_cache_breakpoints(payload)
    system_marker = out["system"][0].get("cache_control")
    if expected is None:
        assert [d.marker for d in report.dropped] == [marker]
        assert "must be an object" in report.dropped[0].reason
        assert system_marker in (None, {"type": "ephemeral"})  # the planner's own marker may go there
    else:
        assert system_marker == expected
        assert [d.marker for d in report.normalised] == [marker]
        assert "invalid cache_control" in report.normalised[0].reason
    for _, m, _ in all_markers(out):
        assert normalise_marker(m)[1] is None


def test_valid_markers_pass_through_as_the_same_object() -> None:
    marker = {"type": "ephemeral", "ttl": "1h"}
    assert normalise_marker(marker) == (marker, None)
    assert normalise_marker(marker)[0] is marker


def test_invalid_top_level_marker() -> None:
    payload = {**agent_turn_payload(turns=1), "cache_control": "yes"}
    out, report = plan_cache_breakpoints(payload)
    assert "cache_control" not in out
    assert report.dropped[0].location == (-1, -1) and report.dropped[0].marker == "yes"
    payload["cache_control"] = {"type": "ephemeral", "ttl": 7200}
    out, report = plan_cache_breakpoints(payload)
    assert out["cache_control"] == {"type": "ephemeral", "ttl": "1h"} or out["cache_control"]["ttl"] == "5m"
    assert report.normalised[0].marker == {"type": "ephemeral", "ttl": 7200}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"min_tokens": 1.5}, "min_tokens must be a non-negative integer"),
        ({"min_tokens": "1024"}, "min_tokens must be a non-negative integer"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": {"claude": "x"}}, "min_tokens must map"),
        ({"model": 5}, "model must be a model id string"),
        ({"ttl": "2h"}, "allowed: 5m, 1h"),
        ({"ttl": 3600}, "ttl must be"),
        ({"ttl": {"messages": "2h"}}, "allowed: 5m, 1h"),
        ({"strategy": ["default"]}, "allowed: default"),
        ({"provider": 3}, "allowed: anthropic"),
        ({"automatic": "yes"}, "automatic must be True, False or None"),
        ({"lookback": 0}, "lookback must be a positive integer"),
        ({"lookback": True}, "lookback must be a positive integer"),
    ],
)
def test_bad_options_raise_usage_errors_naming_the_argument(options: dict[str, Any], match: str) -> None:
    payload = agent_turn_payload(turns=1)
    with pytest.raises(UsageError, match=match):
        place_cache_breakpoints(payload, **options)
    if "strategy" not in options:
        with pytest.raises(UsageError, match=match):
            CachePlanner(**options)


@pytest.mark.parametrize("memory", [-1, 0, 1.5, "10", True])
def test_bad_planner_memory(memory: Any) -> None:
    with pytest.raises(UsageError, match="memory must be a positive integer"):
        CachePlanner(memory=memory)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda p: p["messages"][0].__setitem__("content", 5), "messages[0].content"),
        (lambda p: p.__setitem__("tools", "x"), "tools"),
        (lambda p: p["tools"].__setitem__(0, "read"), "tools[0]"),
        (lambda p: p.__setitem__("system", 5), "system"),
        (lambda p: p["system"].__setitem__(0, 7), "system[0]"),
        (lambda p: p.__setitem__("messages", "hello"), "messages"),
        (lambda p: p["messages"].__setitem__(1, "hello"), "messages[1]"),
        (lambda p: p["messages"][1]["content"].__setitem__(0, None), "messages[1].content[0]"),
        (lambda p: p["messages"][0].pop("content"), "messages[0].content"),
    ],
)
def test_malformed_payloads_raise_naming_the_field(edit: Any, field: str) -> None:
    payload = agent_turn_payload(turns=1)
    edit(payload)
    for call in (place_cache_breakpoints, CachePlanner().place, lambda p: simulate([p])):
        with pytest.raises(CachePayloadError) as info:
            call(payload)
        assert info.value.field == field
        assert str(info.value).startswith(field)
        assert isinstance(info.value, UsageError) and isinstance(info.value, StreamError)
        assert isinstance(info.value, TypeError)  # what a non-mapping payload raised before


def nested_tool_results(depth: int) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": "leaf"}
    for _ in range(depth):
        block = {"type": "tool_result", "tool_use_id": "x", "content": [block]}
    return block


def test_hostile_tool_result_nesting_is_a_usage_error_not_a_recursion_error() -> None:
    payload = agent_turn_payload(turns=1)
    payload["messages"][-1]["content"] = [nested_tool_results(2000)]
    for call in (place_cache_breakpoints, CachePlanner().place, lambda p: simulate([p])):
        with pytest.raises(CachePayloadError, match=f"nested more than {MAX_NESTING} deep"):
            call(payload)
    payload["messages"][-1]["content"] = [nested_tool_results(MAX_NESTING - 1)]
    assert len(all_markers(place_cache_breakpoints(payload))) <= 4


def test_deep_tool_input_is_a_usage_error_not_a_recursion_error() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    payload = agent_turn_payload(turns=1)
    payload["messages"][1]["content"].append({"type": "tool_use", "id": "d", "name": "f", "input": {"x": deep}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheMarkerWarning)
        for call in (lambda p: plan_cache_breakpoints(p), CachePlanner().place):
            with pytest.raises(CachePayloadError, match="nested too deeply"):
                call(payload)


def test_simulator_counts_nested_markers_and_rejects_invalid_ones() -> None:
    payload = agent_turn_payload(turns=1)
    payload["messages"][-1]["content"] = [nested_result(5)]
    assert simulate([payload]).requests[0].error == (
        "400: A maximum of 4 blocks with cache_control may be provided. Found 5."
    )
    payload["messages"][-1]["content"] = [nested_result(1)]
    payload["messages"][-1]["content"][0]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "2h"}
    assert "ttl '2h'" in str(simulate([payload]).requests[0].error)
    planned, _ = plan_cache_breakpoints(payload)
    assert simulate([planned]).requests[0].error is None


def test_session_format_error_is_in_the_hierarchy() -> None:
    assert issubclass(SessionFormatError, UsageError)
    assert issubclass(SessionFormatError, ValueError)


def test_strategy_name_literal_matches_the_strategy_table() -> None:
    assert typing.get_args(StrategyName) == tuple(STRATEGIES)


def test_importing_the_cache_package_stays_light() -> None:
    code = (
        "import sys, mendstream.cache; "
        "heavy = {'httpx', 'httpx2', 'anthropic', 'uvicorn', 'botocore', 'boto3', 'matplotlib'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
