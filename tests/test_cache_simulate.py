# The simulator against the documented rules and worked examples (lookback, minimum, TTL, limit), the
# ceiling as an upper bound of every strategy, SESSION.jsonl loading and the CacheStats helper.
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mendstream.cache import STRATEGIES, CachePlanner, place_cache_breakpoints
from mendstream.cache.simulate import SessionEntry, SessionFormatError, ceiling, load_session, simulate

EPH = {"type": "ephemeral"}


def blocks_payload(
    n: int, marks: tuple[int, ...] = (), *, change: int | None = None, size: int = 400
) -> dict[str, Any]:
    """One user message of n text blocks of ~100 tokens each; 1-based block numbers as in the docs."""
    content = []
    for k in range(1, n + 1):
        text = f"block {k} " + "x" * size
        if k == change:
            text = "changed " + text
        block: dict[str, Any] = {"type": "text", "text": text}
        if k in marks:
            block["cache_control"] = EPH
        content.append(block)
    return {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": content}]}


def test_write_at_block_15_is_not_found_from_a_breakpoint_at_block_35() -> None:
    report = simulate([blocks_payload(15, (15,)), blocks_payload(35, (35,))], lookback=20, min_tokens=0)
    first, second = report.requests
    assert first.read_tokens == 0 and first.write_5m_tokens == first.total_tokens
    assert second.read_tokens == 0  # the walk from 35 covers blocks 35..16 only


def test_write_at_block_15_is_found_from_a_breakpoint_at_block_34() -> None:
    report = simulate([blocks_payload(15, (15,)), blocks_payload(34, (34,))], lookback=20, min_tokens=0)
    second = report.requests[1]
    assert second.read_tokens == report.requests[0].total_tokens  # blocks 1..15 read
    assert second.write_5m_tokens == second.total_tokens - second.read_tokens


def test_a_second_breakpoint_near_the_old_write_recovers_the_hit() -> None:
    report = simulate([blocks_payload(15, (15,)), blocks_payload(35, (15, 35))], lookback=20, min_tokens=0)
    assert report.requests[1].read_tokens == report.requests[0].total_tokens


def test_lookback_one_only_matches_exact_breakpoints() -> None:
    requests = [blocks_payload(15, (15,)), blocks_payload(20, (20,)), blocks_payload(25, (20, 25))]
    loose = simulate(requests, lookback=20, min_tokens=0)
    exact = simulate(requests, lookback=1, min_tokens=0)
    assert loose.requests[1].read_tokens > 0 and exact.requests[1].read_tokens == 0
    assert exact.requests[2].read_tokens == loose.requests[2].read_tokens > 0


def test_modified_block_before_the_breakpoint_misses() -> None:
    report = simulate([blocks_payload(30, (30,)), blocks_payload(30, (30,), change=25)], min_tokens=0)
    assert report.requests[1].read_tokens == 0


def test_prefix_under_the_minimum_is_not_written() -> None:
    requests = [blocks_payload(5, (5,)), blocks_payload(6, (6,))]  # ~100 tokens a block
    assert simulate(requests).requests[1].read_tokens == 0  # sonnet minimum 1024
    short = simulate(requests).requests[0]
    assert short.write_5m_tokens == 0 and short.uncached_tokens == short.total_tokens
    assert simulate(requests, min_tokens=100).requests[1].read_tokens > 0


def test_ttl_expiry_and_refresh_on_hit() -> None:
    p = blocks_payload(20, (20,))
    at = [SessionEntry(p, t) for t in (0, 240, 480, 800)]
    report = simulate(at, min_tokens=0)
    reads = [r.read_tokens > 0 for r in report.requests]
    assert reads == [False, True, True, False]  # refreshed at 240 and 480; 320 s later it has expired
    one_hour = {
        **p,
        "messages": [
            {
                "role": "user",
                "content": [
                    *p["messages"][0]["content"][:-1],
                    {**p["messages"][0]["content"][-1], "cache_control": {**EPH, "ttl": "1h"}},
                ],
            }
        ],
    }
    report = simulate([SessionEntry(one_hour, 0), SessionEntry(one_hour, 3000)], min_tokens=0)
    assert report.requests[0].write_1h_tokens == report.requests[0].total_tokens
    assert report.requests[1].read_tokens > 0


def test_rejected_requests_are_errors() -> None:
    too_many = blocks_payload(6, (1, 2, 3, 4, 5))
    assert "Found 5" in (simulate([too_many]).requests[0].error or "")
    top = {**blocks_payload(6, (1, 2, 3, 4)), "cache_control": EPH}
    assert "Found 5" in (simulate([top]).requests[0].error or "")
    thinking = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "t", "signature": "s", "cache_control": EPH}],
            },
        ],
    }
    assert "thinking" in (simulate([thinking]).requests[0].error or "")
    order = blocks_payload(3, (1,))
    order["messages"][0]["content"][2]["cache_control"] = {**EPH, "ttl": "1h"}
    assert "ttl" in (simulate([order]).requests[0].error or "")
    report = simulate([too_many])
    assert report.errors == 1 and report.total_tokens == 0


def test_top_level_marker_is_a_breakpoint_on_the_last_block() -> None:
    requests = [{**blocks_payload(10), "cache_control": EPH}, {**blocks_payload(12), "cache_control": EPH}]
    report = simulate(requests, min_tokens=0)
    assert report.requests[1].read_tokens == report.requests[0].total_tokens


def test_usage_scales_token_counts() -> None:
    p = blocks_payload(10, (10,))
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 5000, "cache_read_input_tokens": 0}
    report = simulate([SessionEntry(p, 0, usage)], min_tokens=0)
    assert report.requests[0].total_tokens == 5010


def conversation(turns: int, parallel: int, seed: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    system = [{"type": "text", "text": "rules " * 900}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "task " * rng.randint(1, 50)}]
    out = []
    for t in range(turns):
        out.append({"model": "claude-sonnet-4-5", "system": system, "messages": list(messages)})
        calls = rng.randint(1, parallel)
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"{t}.{k}",
                        "name": "f",
                        "input": {"q": "y" * rng.randint(1, 400)},
                    }
                    for k in range(calls)
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"{t}.{k}", "content": "r" * rng.randint(1, 2000)}
                    for k in range(calls)
                ],
            }
        )
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 8), st.integers(1, 14), st.integers(0, 10_000), st.sampled_from([1, 20]))
def test_ceiling_bounds_every_strategy(turns: int, parallel: int, seed: int, lookback: int) -> None:
    session = conversation(turns, parallel, seed)
    bound = ceiling(session).hit_ratio
    for name in STRATEGIES:
        planned = [place_cache_breakpoints(p, strategy=name) for p in session]  # type: ignore[arg-type]
        assert simulate(planned, lookback=lookback).hit_ratio <= bound + 1e-9
    planner = CachePlanner()
    assert simulate([planner.place(p) for p in session], lookback=lookback).hit_ratio <= bound + 1e-9


def test_default_reaches_the_ceiling_on_a_parallel_tool_loop() -> None:
    session = conversation(10, 14, seed=1)
    bound = ceiling(session).hit_ratio
    for lookback in (1, 20):
        planned = [place_cache_breakpoints(p) for p in session]
        assert simulate(planned, lookback=lookback).hit_ratio == pytest.approx(bound)
    last_block = [place_cache_breakpoints(p, strategy="last-block") for p in session]
    assert simulate(last_block, lookback=20).hit_ratio < bound


def test_load_session(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    p = blocks_payload(3)
    path.write_text(json.dumps(p) + "\n\n" + json.dumps({"payload": p, "timestamp": 5, "usage": {"input_tokens": 3}}))
    entries = load_session(path)
    assert entries[0].payload == p and entries[1].timestamp == 5.0 and entries[1].usage == {"input_tokens": 3}
    path.write_text("{\n")
    with pytest.raises(SessionFormatError, match="line 1"):
        load_session(path)
    path.write_text(json.dumps({"x": 1}))
    with pytest.raises(SessionFormatError, match="messages"):
        load_session(path)
