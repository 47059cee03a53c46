#!/usr/bin/env python3
# The cost of repairing at the HTTP boundary: the official SDK against a replay server (`mendstream serve`,
# its own process) directly, through the proxy (`mendstream proxy`, its own process or processes, as a team
# runs it) and through RepairTransport (in the client). Reports, in one run: time to first byte (p50/p99 and
# what each path adds), CPU per stream (client process for the transport; proxy process for the proxy),
# streams per second at 1/50/200 concurrent SDK streams (direct, proxy with 1 and 2 workers, transport;
# interleaved rounds, medians), the same for a proxy-bound load (64 KB tool inputs read as raw bytes, where
# the proxy's work, not the client's, sets the pace), and the proxy's peak RSS after streams of growing
# length. The servers run in sessions of their own, as services do (Linux's autogroup scheduling gives every
# session one share of the CPU: in the bench's session two workers would share one worker's time).
# Reproduce: `PYTHONPATH=src python benchmarks/bench_proxy.py [--quick]`.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx

from _net import free_port, wait_port
from mendstream import AsyncRepairTransport, RepairTransport
from mendstream.recording.capture import sidecar_path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "src" / "mendstream" / "fixtures"
SHORT = "text_basic"
HEAVY = "tool_input_64kb_in_16kb_chunks"
PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
HTTP2 = __import__("httpx2" if int(anthropic.__version__.split(".")[0]) >= 1 else "httpx")


def long_stream(deltas: int) -> bytes:
    """A complete text stream of ``deltas`` 100-character deltas (about 200 bytes of SSE each)."""
    head = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_b","type":"message",'
        b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
    )
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"' + b"x" * 100 + b'"}}\n\n')
    tail = (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":9}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    return head + delta * deltas + tail


def start_upstream(directory: Path) -> tuple[subprocess.Popen[str], str]:
    """The replay server in its own process, with a connection cap above what the bench holds at once (the
    SDK's 200 connections plus the idle pools of three proxy processes: more than its default 512)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    port = free_port()
    code = ("from mendstream.testing import ReplayServer, ServerLimits; "
            f"ReplayServer({str(directory)!r}, port={port}, select='header', "
            "limits=ServerLimits(max_connections=4096, backlog=2048)).serve_forever()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def start_proxy(upstream: str, workers: int = 1) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mendstream", "proxy", "--upstream", upstream, "--port", str(port),
                             "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    wait_port(port)
    if workers > 1:  # every worker up: a few requests land on each
        with httpx.Client() as client:
            for _ in range(20):
                client.post(f"http://127.0.0.1:{port}/v1/messages", json={**PARAMS, "stream": True},
                            headers={"x-mendstream-fixture": SHORT, "connection": "close"})
    return proc, f"http://127.0.0.1:{port}"


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the workers of a multi-worker proxy)."""
    total = proc_cpu(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for kid in child.read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += tree_cpu(int(kid))
    return total


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ttfb(paths: dict[str, tuple[str, Any]], n: int) -> dict[str, list[float]]:
    """Seconds from sending the request to the first body byte, n times per path, one keep-alive connection
    each, the paths interleaved request by request (so the machine's noise falls on all of them alike)."""
    out: dict[str, list[float]] = {label: [] for label in paths}
    clients = {label: httpx.Client(transport=transport) for label, (_, transport) in paths.items()}
    try:
        for i in range(n + 5):
            for label, (base_url, _) in paths.items():
                t0 = time.perf_counter()
                with clients[label].stream("POST", base_url + "/v1/messages", json={**PARAMS, "stream": True},
                                           headers={"x-mendstream-fixture": SHORT}) as response:
                    first = None
                    for _chunk in response.iter_raw():
                        if first is None:
                            first = time.perf_counter() - t0
                if i >= 5 and first is not None:
                    out[label].append(first)
    finally:
        for client in clients.values():
            client.close()
    return out


def sdk_cpu(base_url: str, transport: Any, name: str, n: int) -> float:
    """Client-process CPU seconds per SDK stream (every event read, final message built)."""
    client = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0,
                                 http_client=HTTP2.Client(transport=transport) if transport else None)
    for _ in range(3):
        with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": name}) as s:
            s.get_final_message()
    t0 = time.process_time()
    for _ in range(n):
        with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": name}) as s:
            for _event in s:
                pass
            s.get_final_message()
    return (time.process_time() - t0) / n


def throughput(base_url: str, transport: Any, concurrency: int, total: int) -> float:
    async def run() -> float:
        http_client = HTTP2.AsyncClient(transport=transport, limits=HTTP2.Limits(max_connections=None),
                                        timeout=120) if transport else HTTP2.AsyncClient(
                                            limits=HTTP2.Limits(max_connections=None), timeout=120)
        client = anthropic.AsyncAnthropic(api_key="k", base_url=base_url, max_retries=0, http_client=http_client)
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                async with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": SHORT}) as s:
                    await s.get_final_message()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await client.close()
        return total / elapsed

    return asyncio.run(run())


def raw_throughput(base_url: str, fixture: str, concurrency: int, total: int) -> float:
    """Streams per second read as raw bytes (a client that costs little: the path's own work shows)."""
    async def run() -> float:
        client = HTTP2.AsyncClient(limits=HTTP2.Limits(max_connections=None), timeout=120)
        queue = list(range(total))
        body = json.dumps({**PARAMS, "stream": True}).encode()

        async def worker() -> None:
            while queue:
                queue.pop()
                async with client.stream("POST", base_url + "/v1/messages", content=body, headers={
                        "x-mendstream-fixture": fixture, "content-type": "application/json"}) as response:
                    async for _chunk in response.aiter_raw():
                        pass

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await client.aclose()
        return total / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    n_ttfb = 100 if args.quick else 400
    n_cpu = 30 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name in (SHORT, "tool_use_64kb_input", "fault_control_chars_in_event_json"):
            (directory / f"{name}.sse").write_bytes((FIXTURES / f"{name}.sse").read_bytes())
        # the proxy-bound load: the 64 KB tool input (7,300 deltas) sent by the upstream in 16 KB chunks, as a
        # network delivers it, so that the upstream's per-event sends do not set the pace
        heavy_body = (FIXTURES / "tool_use_64kb_input.sse").read_bytes()
        (directory / f"{HEAVY}.sse").write_bytes(heavy_body)
        sizes = [min(16384, len(heavy_body) - i) for i in range(0, len(heavy_body), 16384)]
        sidecar_path(directory / f"{HEAVY}.sse").write_text(json.dumps({"chunks": [[n, 0] for n in sizes]}))
        lengths = {"long_1mb": 5_000, "long_10mb": 50_000, "long_30mb": 150_000}
        for name, deltas in lengths.items():
            (directory / f"{name}.sse").write_bytes(long_stream(deltas))
        upstream_proc, upstream = start_upstream(directory)
        proxy_proc, proxy = start_proxy(upstream)
        try:
            times = ttfb({"direct": (upstream, None), "proxy": (proxy, None),
                          "transport": (upstream, RepairTransport(httpx.HTTPTransport()))}, n_ttfb)
            base50, base99 = pct(times["direct"], 0.5), pct(times["direct"], 0.99)
            print(f"\nTime to first byte ({n_ttfb} sequential streams of {SHORT} per path, interleaved, loopback)")
            print(f"{'path':<12}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}")
            for label, values in times.items():
                p50, p99 = pct(values, 0.5), pct(values, 0.99)
                print(f"{label:<12}{p50 * 1e3:>9.3f}{p99 * 1e3:>9.3f}{(p50 - base50) * 1e3:>11.3f}"
                      f"{(p99 - base99) * 1e3:>11.3f}")

            print(f"\nCPU per stream, SDK messages.stream() reading every event ({n_cpu} streams)")
            print(f"{'fixture':<36}{'SDK ms':>9}{'+transport ms':>15}{'proxy process ms':>18}")
            for name in (SHORT, "fault_control_chars_in_event_json", "tool_use_64kb_input"):
                direct_cpu = sdk_cpu(upstream, None, name, n_cpu) if "fault" not in name else float("nan")
                transport_cpu = sdk_cpu(upstream, RepairTransport(), name, n_cpu)
                before = proc_cpu(proxy_proc.pid)
                sdk_cpu(proxy, None, name, n_cpu)
                proxy_cpu = (proc_cpu(proxy_proc.pid) - before) / (n_cpu + 3)
                print(f"{name:<36}{direct_cpu * 1e3:>9.3f}{transport_cpu * 1e3:>15.3f}{proxy_cpu * 1e3:>18.3f}")

            rounds = 3 if args.quick else 5
            proxy2_proc, proxy2 = start_proxy(upstream, workers=2)
            try:
                print(f"\nThroughput, AsyncAnthropic streams per second ({SHORT}; median of {rounds} interleaved "
                      "rounds)")
                print(f"{'concurrent':<12}{'direct':>9}{'proxy':>9}{'proxy x2':>10}{'transport':>11}"
                      f"{'proxy/direct':>14}{'x2/direct':>11}{'x2/proxy':>10}{'transport/direct':>18}")
                for concurrency in (1, 50, 200):
                    total = (max(40, concurrency * 2) if args.quick else max(200, concurrency * 4))
                    runs: dict[str, list[float]] = {"direct": [], "proxy": [], "proxy2": [], "transport": []}
                    for _ in range(rounds):
                        runs["direct"].append(throughput(upstream, None, concurrency, total))
                        runs["proxy"].append(throughput(proxy, None, concurrency, total))
                        runs["proxy2"].append(throughput(proxy2, None, concurrency, total))
                        runs["transport"].append(throughput(
                            upstream, AsyncRepairTransport(HTTP2.AsyncHTTPTransport()), concurrency, total))
                    d, p, p2, t = (pct(runs[k], 0.5) for k in ("direct", "proxy", "proxy2", "transport"))
                    print(f"{concurrency:<12}{d:>9.1f}{p:>9.1f}{p2:>10.1f}{t:>11.1f}{p / d:>14.0%}{p2 / d:>11.0%}"
                          f"{p2 / p:>10.0%}{t / d:>18.0%}")

                heavy = HEAVY
                print(f"\nProxy-bound load: {heavy} read as raw bytes, streams per second (median of {rounds} "
                      "interleaved rounds; proxy CPU seconds per stream)")
                print(f"{'concurrent':<12}{'direct':>9}{'proxy':>9}{'proxy x2':>10}{'x2/proxy':>10}"
                      f"{'cpu/stream':>12}{'cpu x2':>9}")
                for concurrency in (50, 200):
                    total = concurrency if args.quick else concurrency * 2
                    runs = {"direct": [], "proxy": [], "proxy2": []}
                    cpu: dict[str, list[float]] = {"proxy": [], "proxy2": []}
                    for _ in range(rounds):
                        runs["direct"].append(raw_throughput(upstream, heavy, concurrency, total))
                        for key, url, pid in (("proxy", proxy, proxy_proc.pid), ("proxy2", proxy2, proxy2_proc.pid)):
                            before = tree_cpu(pid)
                            runs[key].append(raw_throughput(url, heavy, concurrency, total))
                            cpu[key].append((tree_cpu(pid) - before) / total)
                    d, p, p2 = (pct(runs[k], 0.5) for k in ("direct", "proxy", "proxy2"))
                    print(f"{concurrency:<12}{d:>9.1f}{p:>9.1f}{p2:>10.1f}{p2 / p:>10.0%}"
                          f"{pct(cpu['proxy'], 0.5) * 1e3:>10.1f}ms{pct(cpu['proxy2'], 0.5) * 1e3:>7.1f}ms")
            finally:
                proxy2_proc.terminate()
                proxy2_proc.wait(30)
        finally:
            proxy_proc.kill()

        print("\nProxy peak RSS (fresh proxy process, 3 sequential streams of each length)")
        print(f"{'stream':<14}{'bytes':>12}{'peak RSS MB':>13}")
        for name in (SHORT, *lengths):
            proc, url = start_proxy(upstream)
            try:
                with httpx.Client(timeout=120) as client:
                    for _ in range(3):
                        with client.stream("POST", url + "/v1/messages", json={**PARAMS, "stream": True},
                                           headers={"x-mendstream-fixture": name}) as response:
                            for _chunk in response.iter_raw():
                                pass
                size = (directory / f"{name}.sse").stat().st_size
                print(f"{name:<14}{size:>12}{proc_peak_rss_mb(proc.pid):>13.1f}")
            finally:
                proc.kill()
        upstream_proc.kill()
    print(json.dumps({"python": sys.version.split()[0], "anthropic": anthropic.__version__}))


if __name__ == "__main__":
    main()
