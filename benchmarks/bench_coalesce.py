#!/usr/bin/env python3
# What coalescing deltas at the HTTP boundary buys clients that redo work on every event, and what its window
# costs in latency.
#
# 1. Client CPU per stream on a 64 KB tool input in 10-40 character input_json_delta fragments (seed 7),
#    served by `mendstream serve` (its own process): mendstream.stream, the SDK's .stream(), litellm
#    completion(stream=True) + stream_chunk_builder, and langchain-anthropic .stream() with the usual
#    `full = full + chunk`; directly, through the proxy (its own process) with coalescing off and on (the
#    default), and through RepairTransport in the client without and with coalesce=DEFAULT_WINDOW. Every
#    path's final tool input is checked against the one sent; the proxy's own CPU per stream is reported. litellm and langchain-anthropic are optional
#    (`pip install litellm langchain-anthropic`): a missing one is skipped with a note.
# 2. Latency: a paced upstream (its own process) stamps each text delta with the time it sent it; the client
#    records when each stamp arrives. Three pacings (seeded): "steady" (a delta every 15-25 ms, a model
#    writing token by token), "bursts" (5 deltas back to back every 40-60 ms) and "fast" (a delta every
#    0.5-1.5 ms); through the proxy with coalescing off and with windows of 2, 5, 10 and 16 ms, and through
#    RepairTransport. Reports deltas received per stream, time to first text and per-delta latency at
#    p50/p99, and what each adds over the direct path.
# Reproduce: `.venv/bin/python benchmarks/bench_coalesce.py [--quick]` (about 6 minutes; --quick about 2).
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _net import free_port, wait_port

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list

import anthropic
import httpx

import mendstream
from mendstream import MessageParser, RepairTransport
from mendstream.wire.coalesce import DEFAULT_WINDOW
from mendstream.wire.rewrite import encode_event

ROOT = Path(__file__).resolve().parent.parent
PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
HTTP2 = __import__("httpx2" if int(anthropic.__version__.split(".")[0]) >= 1 else "httpx")
TOOL = "tool_64kb"
MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench", "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}

# -- processes -------------------------------------------------------------------------------------------------


def spawn(code: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``code`` (which serves on the port it finds in PORT) in its own process; (process, base URL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def start_upstream(directory: Path) -> tuple[subprocess.Popen[str], str]:
    return spawn("import os, sys; from mendstream.cli import main; "
                 f"sys.exit(main(['serve', {str(directory)!r}, '--port', os.environ['PORT'], '--select', 'header']))")


def start_proxy(upstream: str, coalesce: float) -> tuple[subprocess.Popen[str], str]:
    return spawn("import os, uvicorn; from mendstream.wire.proxy import create_app; "
                 f"uvicorn.run(create_app({upstream!r}, coalesce={coalesce!r}), host='127.0.0.1', "
                 "port=int(os.environ['PORT']), log_level='warning', access_log=False)")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# -- 1. client CPU -----------------------------------------------------------------------------------------------


def tool_stream(seed: int = 7, size: int = 64 * 1024) -> tuple[bytes, dict[str, Any]]:
    """A complete tool_use stream whose input (about ``size`` bytes of JSON, with quotes, backslashes, line
    breaks and non-ASCII text in its strings) arrives in 10-40 character fragments after an empty one."""
    rng = random.Random(seed)
    value: dict[str, Any] = {"path": "src/app.py", "edits": []}
    while len(json.dumps(value)) < size:
        text = "".join(rng.choice('abcdefghij klmnop"\\\n\t{}é') for _ in range(rng.randint(20, 120)))
        value["edits"].append({"line": rng.randint(1, 9999), "text": text})
    raw = json.dumps(value)
    fragments, i = [""], 0
    while i < len(raw):
        n = rng.randint(10, 40)
        fragments.append(raw[i : i + n])
        i += n
    events = [encode_event("message_start", {"type": "message_start", "message": MESSAGE}),
              encode_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                  "type": "tool_use", "id": "toolu_bench", "name": "edit", "input": {}}}),
              b'event: ping\ndata: {"type": "ping"}\n\n']
    events += [encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "input_json_delta", "partial_json": f}})
               for f in fragments]
    events += [encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                                                 "stop_sequence": None},
                                              "usage": {"output_tokens": 9000}}),
               encode_event("message_stop", {"type": "message_stop"})]
    return b"".join(events), value


Client = Callable[[str, Any], tuple[Any, int]]
"""(base URL, RepairTransport factory or None) -> (the tool input the client ended with, events it handled)."""


def run_mendstream(base_url: str, transport: Any) -> tuple[Any, int]:
    client = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0,
                                 http_client=HTTP2.Client(transport=transport()) if transport else None)
    with mendstream.stream(client, **PARAMS, extra_headers={"x-mendstream-fixture": TOOL}) as stream:
        count = sum(1 for event in stream if event.type == "content_block_delta")
        message = stream.get_final_message()
    client.close()
    return message.content[0].input, count


def run_sdk(base_url: str, transport: Any) -> tuple[Any, int]:
    client = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0,
                                 http_client=HTTP2.Client(transport=transport()) if transport else None)
    with client.messages.stream(**PARAMS, extra_headers={"x-mendstream-fixture": TOOL}) as stream:
        count = sum(1 for event in stream if event.type == "content_block_delta")
        message = stream.get_final_message()
    client.close()
    return message.content[0].input, count


def run_litellm(base_url: str, transport: Any) -> tuple[Any, int]:
    import litellm
    from litellm.llms.custom_httpx.http_handler import HTTPHandler

    litellm.suppress_debug_info = True  # no "Provider List" banner on stdout for an unknown model name

    # litellm runs on httpx whatever the SDK uses: the transport wraps an httpx transport.
    extra = {"client": HTTPHandler(client=httpx.Client(transport=transport(httpx.HTTPTransport())))} if transport else {}
    response = litellm.completion(model="anthropic/claude-bench", messages=PARAMS["messages"], stream=True,
                                  api_base=base_url, api_key="k", max_tokens=64,
                                  extra_headers={"x-mendstream-fixture": TOOL}, **extra)
    chunks = list(response)
    final = litellm.stream_chunk_builder(chunks)
    return json.loads(final.choices[0].message.tool_calls[0].function.arguments), len(chunks)


def run_langchain(base_url: str, transport: Any) -> tuple[Any, int]:
    from langchain_anthropic import ChatAnthropic

    headers = {"x-mendstream-fixture": TOOL}
    llm = ChatAnthropic(model="claude-bench", base_url=base_url, api_key="k", max_retries=0, max_tokens=64,
                        default_headers=headers)
    if transport:  # ChatAnthropic builds its SDK client itself: hand it one whose HTTP client repairs
        llm.__dict__["_client"] = anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0,
                                                      http_client=HTTP2.Client(transport=transport()),
                                                      default_headers=headers)
    full, count = None, 0
    for chunk in llm.stream("x"):
        full = chunk if full is None else full + chunk
        count += 1
    assert full is not None
    return full.tool_calls[0]["args"], count


def available(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def cpu_table(upstream: str, proxies: dict[str, tuple[subprocess.Popen[str], str]], expected: Any,
              quick: bool) -> None:
    clients: list[tuple[str, Client, bool]] = [
        ("mendstream.stream", run_mendstream, False), ("SDK .stream()", run_sdk, False),
        ("litellm completion(stream=True)", run_litellm, True),
        ("langchain-anthropic .stream() + full += chunk", run_langchain, True)]
    window = DEFAULT_WINDOW

    def coalescing(inner: Any = None) -> RepairTransport:
        return RepairTransport(inner, coalesce=window)

    def repairing(inner: Any = None) -> RepairTransport:
        return RepairTransport(inner)

    paths: list[tuple[str, str, Any]] = [
        ("direct", upstream, None), ("proxy off", proxies["off"][1], None), ("proxy", proxies["on"][1], None),
        ("transport off", upstream, repairing), ("transport", upstream, coalescing)]
    print(f"\n1. Client CPU per stream, 64 KB tool input in 10-40 character fragments (events: deltas the "
          f"client handled; coalescing window {window * 1e3:g} ms)")
    print("(direct: the replay server; proxy: `mendstream proxy` in its own process, coalescing off / on;")
    print(" transport: RepairTransport in the client, off / on; the client's own process CPU, threads included)")
    print(f"{'client':<46}{'path':<15}{'events':>7}{'p50 ms':>10}{'p90 ms':>10}{'direct/this':>13}")
    proxy_cpu: dict[str, list[float]] = {"off": [], "on": []}
    for label, run, optional in clients:
        module = {"litellm completion(stream=True)": "litellm"}.get(label, "langchain_anthropic")
        if optional and not available(module):
            print(f"{label:<46}skipped: {module} is not installed (pip install litellm langchain-anthropic)")
            continue
        direct_p50 = None
        for path, base_url, transport in paths:
            slow = optional and path.endswith(("direct", "off"))
            n = (2 if quick else 3) if slow else (5 if quick else 15)
            value, events = run(base_url, transport)  # warm-up, and the correctness check
            assert value == expected, f"{label} via {path}: the tool input differs"
            times = []
            proxy = {"proxy off": "off", "proxy": "on"}.get(path)
            before = proc_cpu(proxies[proxy][0].pid) if proxy else 0.0
            for _ in range(n):
                start = time.process_time()
                run(base_url, transport)
                times.append(time.process_time() - start)
            if proxy:
                proxy_cpu[proxy].append((proc_cpu(proxies[proxy][0].pid) - before) / n)
            p50, p90 = pct(times, 0.5), pct(times, 0.9)
            direct_p50 = direct_p50 or p50
            print(f"{label if path == 'direct' else '':<46}{path:<15}{events:>7}{p50 * 1e3:>10.1f}{p90 * 1e3:>10.1f}"
                  f"{direct_p50 / p50:>12.1f}x", flush=True)
    print(f"proxy process CPU per stream (mean over the clients above): coalescing off "
          f"{statistics.mean(proxy_cpu['off']) * 1e3:.1f} ms, on {statistics.mean(proxy_cpu['on']) * 1e3:.1f} ms")


# -- 2. latency --------------------------------------------------------------------------------------------------

PACED_SERVER = r'''
import asyncio, json, os, random, time, uvicorn

DELTAS = 100
START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_p","type":"message",'
         b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
         b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
         b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
         b'"content_block":{"type":"text","text":""}}\n\n')
END = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
       b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
       b'"stop_sequence":null},"usage":{"output_tokens":100}}\n\n'
       b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def gaps(pacing, rng):
    for i in range(DELTAS):
        if pacing == "steady":
            yield rng.uniform(0.015, 0.025)
        elif pacing == "bursts":
            yield rng.uniform(0.040, 0.060) if i % 5 == 0 else 0.0
        else:
            yield rng.uniform(0.0005, 0.0015)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    headers = dict(scope["headers"])
    pacing = headers.get(b"x-pacing", b"steady").decode()
    rng = random.Random(pacing + ":" + headers.get(b"x-seed", b"0").decode())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": START, "more_body": True})
    for gap in gaps(pacing, rng):
        if gap:
            await asyncio.sleep(gap)
        text = "<%.6f> token" % time.monotonic()
        event = ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                 '"delta":{"type":"text_delta","text":"%s"}}\n\n' % text)
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": END})


uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
'''
_STAMP = re.compile(r"<(\d+\.\d+)>")


def paced_read(base_url: str, transport: Any, pacing: str, seed: int) -> tuple[float, list[float], int]:
    """One paced stream: (time from the request to the first text, per-delta latency from the upstream's send
    to the client's receipt in the order sent, deltas received)."""
    latencies: list[float] = []
    deltas = 0
    first_text = float("nan")
    parser = MessageParser()
    with httpx.Client(transport=transport, timeout=60) as client:
        start = time.monotonic()
        with client.stream("POST", base_url + "/v1/messages", json={**PARAMS, "stream": True},
                           headers={"x-pacing": pacing, "x-seed": str(seed)}) as response:
            for chunk in response.iter_raw():
                now = time.monotonic()
                for event in parser.feed(chunk):
                    if event.type == "content_block_delta":
                        deltas += 1
                    elif event.type == "text":
                        if first_text != first_text:
                            first_text = now - start
                        latencies.extend(now - float(stamp) for stamp in _STAMP.findall(event.text))
    parser.end()
    assert len(latencies) == 100, len(latencies)
    return first_text, latencies, deltas


def latency_table(paced: str, quick: bool) -> None:
    windows = (0.002, 0.005, 0.010, 0.016)
    proxies = {0.0: start_proxy(paced, 0.0), **{w: start_proxy(paced, w) for w in windows}}
    streams = 4 if quick else 12
    try:
        paths: list[tuple[str, str, Any]] = [("direct", paced, None), ("proxy off", proxies[0.0][1], None)]
        paths += [(f"proxy {w * 1e3:g} ms", proxies[w][1], None) for w in windows]
        paths.append((f"transport {DEFAULT_WINDOW * 1e3:g} ms", paced,
                      lambda: RepairTransport(httpx.HTTPTransport(), coalesce=DEFAULT_WINDOW)))
        print(f"\n2. Latency: 100 text deltas per stream, {streams} streams per row (the paths interleaved, stream by "
              "stream), paced upstream. TTFT: from the request to the first text; first / every delta: from the "
              "upstream's send of a delta to the client's receipt; +: added over direct")
        print(f"{'pacing':<8}{'path':<17}{'deltas':>7}{'TTFT':>9}{'first':>9}{'+':>7}{'every':>9}{'every':>9}"
              f"{'+':>8}{'+':>8}")
        print(f"{'':<32}{'p50':>9}{'p50':>9}{'p50':>7}{'p50':>9}{'p99':>9}{'p50':>8}{'p99':>8}   (ms)")
        for pacing in ("steady", "bursts", "fast"):
            ttft: dict[str, list[float]] = {label: [] for label, _, _ in paths}
            first: dict[str, list[float]] = {label: [] for label, _, _ in paths}
            latency: dict[str, list[float]] = {label: [] for label, _, _ in paths}
            counts: dict[str, list[int]] = {label: [] for label, _, _ in paths}
            for _, url, transport in paths:
                paced_read(url, transport() if transport else None, pacing, 999)  # warm-up
            for seed in range(streams):
                for label, url, transport in paths:
                    to_text, lat, count = paced_read(url, transport() if transport else None, pacing, seed)
                    ttft[label].append(to_text)
                    first[label].append(lat[0])
                    latency[label].extend(lat)
                    counts[label].append(count)
            base = (pct(first["direct"], 0.5), pct(latency["direct"], 0.5), pct(latency["direct"], 0.99))
            for label, _, _ in paths:
                f50, l50, l99 = pct(first[label], 0.5), pct(latency[label], 0.5), pct(latency[label], 0.99)
                print(f"{pacing if label == 'direct' else '':<8}{label:<17}{statistics.mean(counts[label]):>7.1f}"
                      f"{pct(ttft[label], 0.5) * 1e3:>9.2f}{f50 * 1e3:>9.2f}{(f50 - base[0]) * 1e3:>7.2f}"
                      f"{l50 * 1e3:>9.2f}{l99 * 1e3:>9.2f}{(l50 - base[1]) * 1e3:>8.2f}{(l99 - base[2]) * 1e3:>8.2f}",
                      flush=True)
    finally:
        for proc, _ in proxies.values():
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description="Coalescing deltas: client CPU saved and latency added.")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=("cpu", "latency"), help="run one part")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # langchain warns about a tool block the request did not declare
    data, value = tool_stream()
    print(f"tool stream: {len(data)} bytes, {data.count(b'event: content_block_delta')} input_json_delta events")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{TOOL}.sse").write_bytes(data)
        upstream_proc, upstream = start_upstream(Path(tmp))
        paced_proc, paced = spawn(PACED_SERVER)
        try:
            if args.only in (None, "cpu"):
                proxies = {"off": start_proxy(upstream, 0.0), "on": start_proxy(upstream, DEFAULT_WINDOW)}
                try:
                    cpu_table(upstream, proxies, value, args.quick)
                finally:
                    for proc, _ in proxies.values():
                        proc.kill()
            if args.only in (None, "latency"):
                latency_table(paced, args.quick)
        finally:
            upstream_proc.kill()
            paced_proc.kill()
    versions = {"python": sys.version.split()[0], "anthropic": anthropic.__version__}
    for module in ("litellm", "langchain_anthropic"):
        try:
            from importlib.metadata import version

            versions[module] = version(module.replace("_", "-"))
        except Exception:
            pass
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
