#!/usr/bin/env python3
# End-to-end benchmark over loopback HTTP: the same fixtures served by `mendstream serve` (a separate
# process, so its CPU is not counted) and read with the official client through `mendstream.stream` versus
# the SDK's own `client.messages.stream()`. Both read every event and the final message. Reports client CPU
# time per stream, time to first event, peak traced memory per stream, and streams per second with 1, 50 and
# 200 concurrent async streams. Reproduce: `PYTHONPATH=src python benchmarks/bench_e2e.py [--quick]`.
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic

import mendstream.transports.sdk as ms

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "src" / "mendstream" / "fixtures"
CASES = [
    "text_basic",
    "text_multiple_blocks",
    "thinking_signature_then_text",
    "web_search_with_citations",
    "tool_use_parallel",
    "tool_use_small_fragments",
    "tool_use_64kb_input",
]
PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}


def start_server() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mendstream", "serve", str(FIXTURES), "--port", "0", "--select", "header"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("base_url: "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(": ", 1)[1].strip()


def headers(name: str) -> dict[str, Any]:
    return {"extra_headers": {"x-mendstream-fixture": name}}


def run_mendstream(client: Any, name: str, first: list[float]) -> None:
    t0 = time.perf_counter()
    with ms.stream(client, **PARAMS, **headers(name)) as s:
        for i, _ in enumerate(s):
            if i == 0:
                first.append(time.perf_counter() - t0)
        s.get_final_message()


def run_sdk(client: Any, name: str, first: list[float]) -> None:
    t0 = time.perf_counter()
    with client.messages.stream(**PARAMS, **headers(name)) as s:
        for i, _ in enumerate(s):
            if i == 0:
                first.append(time.perf_counter() - t0)
        s.get_final_message()


IMPLS: dict[str, Callable[[Any, str, list[float]], None]] = {"mendstream": run_mendstream, "sdk": run_sdk}


def per_stream(client: Any, name: str, impl: str, repeats: int) -> dict[str, float]:
    run = IMPLS[impl]
    for _ in range(2):  # warm up connections and imports
        run(client, name, [])
    cpu: list[float] = []
    first: list[float] = []
    for _ in range(repeats):
        c0 = time.process_time()
        run(client, name, first)
        cpu.append(time.process_time() - c0)
    tracemalloc.start()
    run(client, name, [])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "cpu_ms": statistics.median(cpu) * 1000,
        "ttfe_ms": statistics.median(first) * 1000,
        "peak_kib": peak / 1024,
    }


async def throughput(base_url: str, impl: str, concurrency: int, total: int, seed: int) -> float:
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="bench", max_retries=0)
    names = [CASES[i % (len(CASES) - 1)] for i in range(total)]  # without the 64 KB case
    random.Random(seed).shuffle(names)
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with gate:
            if impl == "mendstream":
                async with ms.astream(client, **PARAMS, **headers(name)) as s:
                    async for _ in s:
                        pass
                    await s.get_final_message()
            else:
                async with client.messages.stream(**PARAMS, **headers(name)) as s2:
                    async for _ in s2:
                        pass
                    await s2.get_final_message()

    await asyncio.gather(*(one(n) for n in names[: min(20, total)]))  # warm-up
    t0 = time.perf_counter()
    await asyncio.gather(*(one(n) for n in names))
    elapsed = time.perf_counter() - t0
    await client.close()
    return total / elapsed


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    repeats = 5 if args.quick else 30
    total = 100 if args.quick else 600
    proc, base_url = start_server()
    try:
        client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0)
        print(f"anthropic {anthropic.__version__}, Python {sys.version.split()[0]}, server {base_url}\n")
        rows = [["fixture", "size", "CPU/stream ms (ms | sdk)", "ratio", "first event ms (ms | sdk)",
                 "peak KiB (ms | sdk)"]]
        for name in CASES:
            ours = per_stream(client, name, "mendstream", repeats)
            theirs = per_stream(client, name, "sdk", repeats)
            size = (FIXTURES / f"{name}.sse").stat().st_size
            rows.append([
                name, f"{size / 1024:.1f} KiB",
                f"{ours['cpu_ms']:.2f} | {theirs['cpu_ms']:.2f}",
                f"{theirs['cpu_ms'] / ours['cpu_ms']:.1f}x",
                f"{ours['ttfe_ms']:.2f} | {theirs['ttfe_ms']:.2f}",
                f"{ours['peak_kib']:.0f} | {theirs['peak_kib']:.0f}",
            ])
        print(f"Per stream (sync client, median of {repeats}; CPU = client process time)\n")
        print(table(rows))
        rows = [["concurrent streams", "mendstream streams/s", "sdk streams/s", "ratio"]]
        for concurrency in (1, 50, 200):
            ours_rate = asyncio.run(throughput(base_url, "mendstream", concurrency, total, args.seed))
            sdk_rate = asyncio.run(throughput(base_url, "sdk", concurrency, total, args.seed))
            rows.append([str(concurrency), f"{ours_rate:.0f}", f"{sdk_rate:.0f}", f"{ours_rate / sdk_rate:.1f}x"])
        print(f"\nThroughput (AsyncAnthropic, {total} streams over {len(CASES) - 1} fixtures, seed {args.seed})\n")
        print(table(rows))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
