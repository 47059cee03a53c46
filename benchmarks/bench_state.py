# What the proxy's planner-state stores cost. (1) Memory: 30 conversations of 12 MB requests planned with
# --cache planner, as the proxy keeps them today (one live CachePlanner per conversation, unbounded in bytes)
# and in MemoryPlannerStore (bounded: 256 MiB by default), resident memory measured in a subprocess each.
# (2) Time per request of checkout + commit: in process, and on a local redis-server (started here on a free
# port when the binary is installed), for a 20-turn agent session; the planning itself is not included.
#
#   .venv/bin/python benchmarks/bench_state.py [--conversations 30] [--mb 12] [--rounds 50]
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from mendstream.cli.common import positive_int


def rss_mb() -> float:
    gc.collect()
    with contextlib.suppress(OSError):  # return freed memory to the system, so RSS shows what is held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def big_request(seed: int, size: int) -> bytes:
    """An agent request of about ``size`` bytes: tool rounds with 8 KB tool results."""
    rng = random.Random(seed)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "task"}]
    n = i = 0
    while n < size:
        text = "".join(rng.choice("abcdefghij klmnop\n") for _ in range(200)) * 40
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "ok"}, {"type": "tool_use", "id": f"t{i}", "name": "read", "input": {"p": str(i)}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": text}]})
        n += len(text) + 150
        i += 1
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "s" * 5000,
                       "messages": messages}).encode()


def memory_child(mode: str, conversations: int, size: int) -> None:
    from mendstream.cache import CachePlanner
    from mendstream.wire.rewrite import rewrite_request
    from mendstream.wire.state import MemoryPlannerStore

    store = MemoryPlannerStore()
    planners: dict[str, CachePlanner] = {}
    start = rss_mb()

    async def one(c: int) -> None:
        data = big_request(c, size)
        payload = json.loads(data)
        if mode == "live":
            planner = planners.setdefault(str(c), CachePlanner(warn=False))
            rewrite_request(data, cache="planner", planner=planner, payload=payload)
        else:
            lease = await store.checkout(str(c))
            rewrite_request(data, cache="planner", planner=lease.planner, payload=payload)
            await store.commit(lease, retained=len(data))

    for c in range(conversations):
        asyncio.run(one(c))
    print(json.dumps({"grew": rss_mb() - start, "charged": store.bytes / 1e6}))


def measure_memory(conversations: int, mb: int) -> None:
    print(f"Resident memory after {conversations} conversations of {mb} MB requests (--cache planner):")
    for mode, label in (("live", "one live planner per conversation (today)"),
                        ("store", "MemoryPlannerStore(max_bytes=256 MiB)")):
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(conversations), str(mb * 1_000_000)],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        print(f"  {label:45s} +{result['grew']:7.1f} MB" +
              (f"   (charged {result['charged']:.1f} MB)" if mode == "store" else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session() -> list[dict[str, Any]]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_team_state import agent_session, wire

    return [wire(p) for p in agent_session()]


async def per_request(store: Any, payloads: list[dict[str, Any]], rounds: int) -> tuple[list[float], list[float]]:
    checkout, commit = [], []
    for r in range(rounds):
        for payload in payloads:
            t0 = time.perf_counter()
            lease = await store.checkout(f"conversation-{r}")
            t1 = time.perf_counter()
            lease.planner.plan(payload)
            t2 = time.perf_counter()
            await store.commit(lease, retained=20_000)
            t3 = time.perf_counter()
            checkout.append(t1 - t0)
            commit.append(t3 - t2)
    return checkout, commit


def measure_time(rounds: int) -> None:
    from mendstream.wire.state import MemoryPlannerStore, RedisPlannerStore

    payloads = session()
    rows = []
    rows.append(("in process", *asyncio.run(per_request(MemoryPlannerStore(), payloads, rounds))))
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server not installed: Redis rows skipped")
    else:
        port = free_port()
        with tempfile.TemporaryDirectory() as directory:
            proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.5)

                async def on_redis(pattern: str) -> tuple[list[float], list[float]]:
                    a = RedisPlannerStore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
                    b = RedisPlannerStore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
                    try:
                        if pattern == "one worker":
                            return await per_request(a, payloads, rounds)
                        checkout: list[float] = []
                        commit: list[float] = []
                        for r in range(rounds):  # alternate workers: every checkout decodes a state
                            for turn, payload in enumerate(payloads):
                                store = (a, b)[turn % 2]
                                t0 = time.perf_counter()
                                lease = await store.checkout(f"alt-{r}")
                                t1 = time.perf_counter()
                                lease.planner.plan(payload)
                                t2 = time.perf_counter()
                                await store.commit(lease, retained=20_000)
                                commit.append(time.perf_counter() - t2)
                                checkout.append(t1 - t0)
                        return checkout, commit
                    finally:
                        await a.aclose()
                        await b.aclose()

                rows.append(("redis, one worker", *asyncio.run(on_redis("one worker"))))
                rows.append(("redis, two workers alternating", *asyncio.run(on_redis("alternating"))))
            finally:
                proc.kill()
                proc.wait()
    print(f"\nPer request, 20-turn agent session x {rounds} conversations (state ~1-4 KB):")
    print(f"  {'store':32s} {'checkout p50':>13s} {'p99':>9s} {'commit p50':>11s} {'p99':>9s}")
    for name, checkout, commit in rows:
        q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1e3  # noqa: E731
        print(f"  {name:32s} {q(checkout, 50):10.3f} ms {q(checkout, 99):6.3f} ms {q(commit, 50):8.3f} ms "
              f"{q(commit, 99):6.3f} ms")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description="What the proxy's planner-state stores cost: resident memory, "
                                     "and time per request of checkout + commit (in process and on redis-server).")
    parser.add_argument("--conversations", type=positive_int, default=30, help="(default: %(default)s)")
    parser.add_argument("--mb", type=positive_int, default=12, help="request size in MB (default: %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=50, help="(default: %(default)s)")
    args = parser.parse_args()
    measure_memory(args.conversations, args.mb)
    measure_time(args.rounds)


if __name__ == "__main__":
    main()
