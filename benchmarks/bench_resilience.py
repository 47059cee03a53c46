#!/usr/bin/env python3
# Resilience benchmark: N turns (default 1,000) of an agent turn (a text block, then a tool call) over a
# fault-injecting server on 127.0.0.1 under the seeded mix of issue 7, drawn independently for every request:
# 20% overloaded_error mid-stream, 5% stall with pings that never resumes, 5% cut mid-tool-input, 5% HTTP 529
# before streaming. Compared: the SDK's own `client.messages.stream()` with `max_retries=2`, mendstream
# without `retry`, and mendstream with `Retry(on_partial="restart")` and `"continue"` (progress_timeout on);
# then the unmodified SDK (`client.messages.stream()`, max_retries=2) through `RepairTransport` and through
# `mendstream proxy`, both surviving with `Retry(on_partial="continue")` and the same progress_timeout.
# Reported: turns completed (final message equal to the fixture's), requests sent, duplicated characters
# shown (characters on screen that are not the answer's text at their position, counted since the last
# RestartEvent), characters a RestartEvent told the UI to clear, and extra latency over a clean turn.
# Sleeps are scaled down: a stall lasts 0.5 s (it stands for the SDK's 600 s read timeout), progress_timeout
# 0.2 s, retry-after 10 ms, backoff 10 ms (cap 0.1 s). Reproduce:
#   PYTHONPATH=src python benchmarks/bench_resilience.py [--turns 1000] [--seed 7]
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anthropic

import mendstream
from mendstream.cli.common import positive_int
from mendstream.testing.faults import Cut, ErrorEvent, HTTPError, RandomMix, Stall

# The fault server lives with the tests until ReplayServer(faults=...) is merged.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mendstream.testing import ReplayServer, ServerLimits
from streams import sse

TEXT = (
    "Let me look that up for you. I will check the current weather in Paris, then compare it with the "
    "forecast for the rest of the week so you can decide what to pack."
)
TOOL_INPUT = {"city": "Paris", "unit": "celsius", "days": 7}
PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 512, "messages": [{"role": "user", "content": "x"}]}
STALL_SECONDS = 0.5
PROGRESS_TIMEOUT = 0.2


def agent_turn() -> bytes:
    """A complete SSE body: text in 12 deltas, then a tool_use whose input arrives in 6 fragments."""
    start = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 50, "output_tokens": 1}}
    size = -(-len(TEXT) // 12)
    raw = json.dumps(TOOL_INPUT)
    fsize = -(-len(raw) // 6)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT[i : i + size]}}
          for i in range(0, len(TEXT), size)),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {}}},
        *({"type": "content_block_delta", "index": 1,
           "delta": {"type": "input_json_delta", "partial_json": raw[i : i + fsize]}} for i in range(0, len(raw), fsize)),
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 40}},
        {"type": "message_stop"},
    ]
    return b"".join(sse(e) for e in events)


def mix(seed: int) -> RandomMix:
    return RandomMix(
        (
            (0.20, ErrorEvent(after_events=7)),  # overloaded mid-text
            (0.05, Stall(seconds=STALL_SECONDS, after_events=6, ping_every=0.05, cut=True)),
            (0.05, Cut(in_tool_input=True)),
            (0.05, HTTPError(529, retry_after_ms=10)),
        ),
        seed=seed,
    )


def turn_ok(message: Any) -> bool:
    blocks = message.content
    return (
        len(blocks) == 2 and blocks[0].type == "text" and blocks[0].text == TEXT
        and blocks[1].type == "tool_use" and blocks[1].input == TOOL_INPUT
    )


def run_turn(config: str, client: Any) -> tuple[bool, int, int, float]:
    """One turn: (completed, duplicated characters shown, characters retracted by a RestartEvent, seconds)."""
    shown = ""
    retracted = 0
    t0 = time.perf_counter()
    ok = False
    try:
        if config in ("sdk", "transport", "proxy"):
            with client.messages.stream(**PARAMS) as stream:
                for event in stream:
                    if event.type == "text":
                        shown += event.text
                ok = turn_ok(stream.get_final_message())
        else:
            options: dict[str, Any] = {}
            if config != "mendstream":
                options = {
                    "retry": mendstream.Retry(max_attempts=8, backoff=0.01, cap=0.1, on_partial=config, seed=1),
                    "progress_timeout": PROGRESS_TIMEOUT,
                }
            with mendstream.stream(client, **PARAMS, **options) as stream:
                for event in stream:
                    if event.type == "restart":
                        retracted += len(shown)
                        shown = ""
                    elif event.type == "text":
                        shown += event.text
                ok = turn_ok(stream.get_final_message())
    except Exception:
        ok = False
    elapsed = time.perf_counter() - t0
    # Characters on screen that are not the answer's text at their position: repeats after a retry.
    common = next((i for i, (a, b) in enumerate(zip(shown, TEXT, strict=False)) if a != b), min(len(shown), len(TEXT)))
    duplicated = len(shown) - common
    return ok, duplicated, retracted, elapsed


CONFIGS = {
    "sdk": ("SDK .stream(), max_retries=2", 2),
    "mendstream": ("mendstream, no retry", 2),
    "restart": ('mendstream Retry(on_partial="restart")', 0),
    "continue": ('mendstream Retry(on_partial="continue")', 0),
    "transport": ('SDK .stream() through RepairTransport(Retry(on_partial="continue"))', 2),
    "proxy": ('SDK .stream() through mendstream proxy (on_partial="continue")', 2),
}
BOUNDARY_RETRY = mendstream.Retry(max_attempts=8, backoff=0.01, cap=0.1, on_partial="continue", seed=1)


def make_client(key: str, base_url: str, max_retries: int) -> Any:
    """The SDK client of a configuration: direct, or through RepairTransport."""
    if key != "transport":
        return anthropic.Anthropic(base_url=base_url, api_key="sk-bench", max_retries=max_retries)
    from mendstream.testing import sdk_http_module

    transport = mendstream.RepairTransport(retry=BOUNDARY_RETRY, progress_timeout=PROGRESS_TIMEOUT)
    return anthropic.Anthropic(base_url=base_url, api_key="sk-bench", max_retries=max_retries,
                               http_client=sdk_http_module().Client(transport=transport))


class Proxy:
    """`mendstream proxy`'s application on uvicorn in a thread, surviving with BOUNDARY_RETRY."""

    def __init__(self, upstream: str) -> None:
        import socket
        import threading

        import uvicorn

        from mendstream.wire.boundary import Survival
        from mendstream.wire.proxy import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(upstream, survival=Survival(BOUNDARY_RETRY, progress_timeout=PROGRESS_TIMEOUT))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _configs(text: str) -> set[str]:
    chosen = {name.strip() for name in text.split(",")}
    unknown = sorted(chosen - set(CONFIGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown configuration {', '.join(map(repr, unknown))}: use "
                                         + ", ".join(CONFIGS))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=positive_int, default=1000, help="turns per configuration (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", type=_configs, help="comma-separated configurations: " + ",".join(CONFIGS))
    args = parser.parse_args()
    chosen = args.only or set(CONFIGS)
    plan = mix(args.seed)
    rows = []
    # request_log: keep every request, so that the count below is the whole run's
    with ReplayServer({"turn": agent_turn()}, limits=ServerLimits(request_log=10**6)) as server:
        # A clean run first: the latency of a turn without faults, per configuration.
        for key, (label, max_retries) in CONFIGS.items():
            if key not in chosen:
                continue
            proxy = Proxy(server.base_url) if key == "proxy" else None
            client = make_client(key, proxy.base_url if proxy is not None else server.base_url, max_retries)
            server.reset(None)
            clean = statistics.median(run_turn(key, client)[3] for _ in range(50))
            server.reset(plan)
            completed = duplicated = retracted = 0
            extra: list[float] = []
            for _ in range(args.turns):
                ok, dup, gone, elapsed = run_turn(key, client)
                completed += ok
                duplicated += dup
                retracted += gone
                extra.append(max(0.0, elapsed - clean))
            requests = len(server.requests)
            client.close()
            if proxy is not None:
                proxy.stop()
            rows.append(
                (label, completed, requests, duplicated, retracted, percentile(extra, 0.5), percentile(extra, 0.99))
            )
            print(f"  done: {label}", file=sys.stderr)
    print(f"{args.turns} turns, seed {args.seed}, anthropic {anthropic.__version__}, Python {sys.version.split()[0]}")
    print("mix per request: 20% overloaded mid-stream, 5% stall with pings (never resumes), 5% cut mid-tool-input,")
    print(f"5% HTTP 529 before streaming; stall {STALL_SECONDS} s, progress_timeout {PROGRESS_TIMEOUT} s (scaled)\n")
    header = ("configuration", "turns completed", "requests", "duplicated chars", "chars retracted by restart",
              "extra p50", "extra p99")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for label, completed, requests, dup, gone, p50, p99 in rows:
        print(
            f"| {label} | {completed}/{args.turns} ({100 * completed / args.turns:.1f}%) | {requests} | {dup} | {gone} | "
            f"{p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
