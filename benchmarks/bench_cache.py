# Cache breakpoint benchmark: every strategy and CachePlanner on the session corpus under lookback 20
# (Anthropic) and 1 (exact-match providers), against the ceiling; then the cost of planning a 2,000-block
# history next to copy.deepcopy. Reproduce: PYTHONPATH=src:benchmarks python benchmarks/bench_cache.py
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from typing import Any

from cache_sessions import SESSIONS
from mendstream.cache import STRATEGIES, CacheMarkerWarning, CachePlanner, place_cache_breakpoints
from mendstream.cache.simulate import SessionEntry, ceiling, simulate

PEERS = ["system-last-two-user", "pi", "dual", "last-block", "automatic"]
COLUMNS = ["default", *PEERS, "planner"]


def plan(entries: list[SessionEntry], strategy: str) -> list[SessionEntry]:
    if strategy == "planner":
        planner = CachePlanner(warn=False)
        return [SessionEntry(planner.place(e.payload), e.timestamp, e.usage) for e in entries]
    return [
        SessionEntry(place_cache_breakpoints(e.payload, strategy=strategy), e.timestamp, e.usage)  # type: ignore[arg-type]
        for e in entries
    ]


def corpus_table() -> bool:
    ok = True
    header = f"{'session':<22} {'lb':>2} {'ceiling':>8} " + " ".join(f"{c:>20}" for c in COLUMNS)
    print("hit ratio / relative input cost (1.000 = no caching) / errors, per session and lookback")
    print(header)
    print("-" * len(header))
    for name, build in SESSIONS.items():
        entries = build()
        bound = ceiling(entries)
        planned = {c: plan(entries, c) for c in COLUMNS}
        for lookback in (20, 1):
            results = {c: simulate(planned[c], lookback=lookback) for c in COLUMNS}
            cells = []
            for c in COLUMNS:
                r = results[c]
                cells.append(f"{r.hit_ratio:6.1%} {r.relative_cost:5.3f} e{r.errors}".rjust(20))
            print(f"{name:<22} {lookback:>2} {bound.hit_ratio:>8.1%} " + " ".join(cells))
            default = results["default"].hit_ratio
            for peer in PEERS:
                if results[peer].hit_ratio > default + 1e-9:
                    ok = False
                    print(f"  GOAL MISSED: default below {peer} on {name} (lookback {lookback})")
            gap = bound.hit_ratio - results["planner"].hit_ratio
            if gap > 0.03:
                ok = False
                print(f"  GOAL MISSED: planner {gap:.1%} below the ceiling on {name} (lookback {lookback})")
            if any(results[c].errors for c in COLUMNS):
                ok = False
    return ok


def big_payload(blocks: int = 2000) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "start"}]
    for i in range(blocks // 2):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"t{i}", "name": "read", "input": {"path": f"src/file_{i}.py", "n": i}}
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": f"line {i}\n" * 20}],
            }
        )
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "system": "you are an agent " * 300,
        "tools": [{"name": "read", "description": "read a file", "input_schema": {"type": "object"}}],
        "messages": messages,
    }


def timing() -> bool:
    payload = big_payload()

    def measure(fn: Any, rounds: int = 30) -> float:
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return min(samples)  # the least-disturbed run: robust to other load on the machine

    deep = measure(lambda: copy.deepcopy(payload))
    place = measure(lambda: place_cache_breakpoints(payload))
    cold = measure(lambda: CachePlanner(warn=False).place(payload), rounds=10)

    # The agent-loop case: the same history list grows by one message per request (only the tail changed).
    planner = CachePlanner(warn=False)
    planner.place(payload)
    turn = 0

    def next_turn() -> None:
        nonlocal turn
        turn += 1
        role = "assistant" if payload["messages"][-1]["role"] == "user" else "user"
        payload["messages"].append({"role": role, "content": [{"type": "text", "text": f"turn {turn}"}]})

    samples = []
    for _ in range(30):
        next_turn()
        t = time.perf_counter()
        planner.place(payload)
        samples.append(time.perf_counter() - t)
    tail_changed = min(samples)
    print()
    print(f"2,000-block history ({len(payload['messages'])} messages), best of 30 runs")
    print(f"  copy.deepcopy                          {deep * 1e3:8.2f} ms   1.0x")
    print(f"  place_cache_breakpoints                {place * 1e3:8.2f} ms   {deep / place:5.1f}x faster than deepcopy")
    print(f"  CachePlanner.place, first request      {cold * 1e3:8.2f} ms   {deep / cold:5.1f}x (hashes every block)")
    print(
        f"  CachePlanner.place, only tail changed  {tail_changed * 1e3:8.2f} ms   {deep / tail_changed:5.1f}x "
        "(goal <= 1 ms)"
    )
    # The 1 ms goal is for a quiet machine, where deepcopy of this payload takes about 12 ms; on a loaded
    # one, timings scale together, so the goal is also met at 1/12 of deepcopy measured in the same run.
    budget = max(1e-3, deep / 12)
    print(f"  (goal for this run: <= {budget * 1e3:.2f} ms, i.e. 1 ms scaled by deepcopy / 12 ms when loaded)")
    ok = deep / place >= 5
    if tail_changed > budget:
        print("  GOAL MISSED: CachePlanner.place over 1 ms with only the tail changed")
        ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description="Cache breakpoint benchmark: every strategy and CachePlanner on the session corpus (lookback 20 "
        "and 1) against the ceiling, then the cost of planning a 2,000-block history next to copy.deepcopy. "
        "Takes no options."
    ).parse_args(argv)
    warnings.simplefilter("ignore", CacheMarkerWarning)
    t = time.perf_counter()
    ok = corpus_table()
    ok = timing() and ok
    print(f"\nstrategies available: {', '.join(STRATEGIES)}; ran in {time.perf_counter() - t:.1f} s")
    print("all goals met" if ok else "SOME GOALS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
