"""Per-chunk parse cost of mendstream vs the official SDK, on streams whose tool input is 1 KB to 1 MB.

Every stream is one text block plus one tool_use block whose input ({"path", "content"}) arrives in
input_json_delta fragments of 10-40 characters, one SSE event per chunk, as the API sends them. Each
implementation pulls the same chunks from the same instrumented generator; the time between two pulls is
that chunk's cost (parsing plus handing the events to a consumer loop). Implementations:

- floor: split events with bytes.split and decode their JSON with jiter; nothing else (the lower bound)
- mendstream: mendstream.MessageStream over the chunks, iterating every event
- mendstream+snapshots: the same, reading `.snapshot` of every input_json/text event
- sdk.stream(): client.messages.stream() through an httpx2 MockTransport serving the chunks
- sdk.create(stream=True): the SDK's raw event iteration (no accumulation)
- bedrock mendstream / bedrock sdk .stream(): the same events as Bedrock sends them (one AWS event-stream
  `chunk` frame per event, one frame per chunk), read by mendstream's MessageParser(framing="event-stream")
  and by the SDK's AnthropicBedrock (bench_eventstream.py's implementations; it has the detailed
  event-stream comparison)

Run: python benchmarks/bench_parse.py [--sizes 1k,2k,10k,100k,1m] [--repeat N] [--no-bedrock] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jiter

import mendstream
from mendstream.streaming.drivers import iterable_opener

SIZES = {"1k": 1_000, "2k": 2_000, "10k": 10_000, "100k": 100_000, "1m": 1_000_000}
SIZE_HELP = "one of " + ", ".join(SIZES) + " (case-insensitive; 1KB and '1 MB' are read as 1k and 1m)"


def size_name(text: str) -> str:
    """argparse type for one size: its name in SIZES ('1KB', '1 kb' and '1K' are '1k'); else a usage error."""
    key = text.replace(" ", "").lower().removesuffix("b")
    if key not in SIZES:
        raise argparse.ArgumentTypeError(f"unknown size {text!r}: use " + ", ".join(SIZES))
    return key


def size_names(text: str) -> list[str]:
    """argparse type for --sizes: comma-separated :func:`size_name`s."""
    return [size_name(part.strip()) for part in text.split(",")]


def count(minimum: int) -> Callable[[str], int]:
    """argparse type for an int of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value

    return parse


def event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def make_stream(size: int, seed: int = 1234) -> list[bytes]:
    """One chunk per SSE event; the tool input's JSON text is about ``size`` bytes."""
    rng = random.Random(seed)
    words = ["def", "return", "self", "import", "value", "for", "in", "if", "else", "print", "x", "0", "1"]
    lines = []
    total = 0
    while total < size - 60:
        line = " " * rng.choice([0, 4, 8]) + " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        if rng.random() < 0.1:
            line += '  # "quoted" \\ path\ttab'
        lines.append(line)
        total += len(line) + 2
    tool_input = json.dumps({"path": "src/generated.py", "content": "\n".join(lines)})
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 100, "output_tokens": 1}}
    chunks = [event("message_start", {"type": "message_start", "message": message}),
              event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})]
    for word in ["I", "will", "write", "the", "file", "now."]:
        chunks.append(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": word + " "}}))
    chunks.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    chunks.append(event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_bench", "name": "write_file", "input": {}}}))
    position = 0
    fragments = [""]
    while position < len(tool_input):
        step = rng.randint(10, 40)
        fragments.append(tool_input[position : position + step])
        position += step
    for fragment in fragments:
        chunks.append(event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                    "delta": {"type": "input_json_delta", "partial_json": fragment}}))
    chunks.append(event("content_block_stop", {"type": "content_block_stop", "index": 1}))
    chunks.append(event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                          "usage": {"output_tokens": len(fragments)}}))
    chunks.append(event("message_stop", {"type": "message_stop"}))
    return chunks


class Clock:
    """Yields the chunks and records when each is pulled; chunk i cost pulls[i+1] - pulls[i]."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulls: list[int] = []

    def __iter__(self) -> Iterator[bytes]:
        now = time.perf_counter_ns
        pulls = self.pulls
        for chunk in self.chunks:
            pulls.append(now())
            yield chunk
        pulls.append(now())

    def costs(self) -> list[int]:
        return [b - a for a, b in zip(self.pulls, self.pulls[1:], strict=False)]


def run_floor(clock: Clock) -> Any:
    loads = jiter.from_json
    last = None
    for chunk in clock:
        for part in chunk.split(b"\n\n"):
            if part:
                last = loads(part[part.index(b"data:") + 5 :])
    return last


def run_mendstream(clock: Clock) -> Any:
    with mendstream.MessageStream(iterable_opener(clock)) as stream:
        for _ in stream:
            pass
        return stream.message


def run_mendstream_snapshots(clock: Clock) -> Any:
    with mendstream.MessageStream(iterable_opener(clock)) as stream:
        for event in stream:
            if event.type in ("input_json", "text"):
                event.snapshot  # noqa: B018 - reading it is the point
        return stream.message


def _sdk_client(clock: Clock) -> Any:
    import anthropic
    import httpx2

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=iter(clock))

    return anthropic.Anthropic(api_key="bench", base_url="http://bench.invalid", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


_PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}


def run_sdk_stream(clock: Clock) -> Any:
    client = _sdk_client(clock)
    with client.messages.stream(**_PARAMS) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def run_sdk_raw(clock: Clock) -> Any:
    client = _sdk_client(clock)
    last = None
    for last in client.messages.create(stream=True, **_PARAMS):  # noqa: B007
        pass
    return last


IMPLEMENTATIONS: dict[str, Callable[[Clock], Any]] = {
    "floor (split+jiter)": run_floor,
    "mendstream": run_mendstream,
    "mendstream+snapshots": run_mendstream_snapshots,
    "sdk .stream()": run_sdk_stream,
    "sdk create(stream=True)": run_sdk_raw,
}


def measure(run: Callable[[Clock], Any], chunks: list[bytes], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` total; per-chunk percentiles pooled over all repeats."""
    totals, costs = [], []
    for _ in range(repeat):
        gc.collect()
        clock = Clock(chunks)
        start = time.perf_counter_ns()
        run(clock)
        totals.append(time.perf_counter_ns() - start)
        # The first pull (before any work) and the SDK's request setup are not chunk costs.
        costs.extend(clock.costs()[1:])
    ordered = sorted(costs)
    tenth = max(1, len(chunks) // 10)
    last_costs = clock.costs()[1:]
    nbytes = sum(map(len, chunks))
    return {
        "total_ms": min(totals) / 1e6,
        "chunk_total_ms": sum(last_costs) / 1e6,
        "p50_us": ordered[len(ordered) // 2] / 1e3,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e3,
        "max_us": ordered[-1] / 1e3,
        "mb_per_s": nbytes / (min(totals) / 1e9) / 1e6,
        "first_tenth_us": statistics.mean(last_costs[:tenth]) / 1e3,
        "last_tenth_us": statistics.mean(last_costs[-tenth:]) / 1e3,
    }


def _bedrock_implementations() -> dict[str, Any]:
    """bench_eventstream's frame converter and Bedrock implementations (imported here, not duplicated)."""
    sys.modules.setdefault("bench_parse", sys.modules[__name__])  # run as a script: one copy of this module
    import bench_eventstream

    runs = {
        "bedrock mendstream": bench_eventstream.run_bedrock,
        "bedrock sdk .stream()": bench_eventstream.run_sdk_bedrock_stream,
    }
    return {"frames": bench_eventstream.to_frames, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size_names, default="1k,2k,10k,100k,1m",
                        help="tool input sizes, comma-separated, each " + SIZE_HELP + " (default: %(default)s)")
    parser.add_argument("--repeat", type=count(0), default=0,
                        help="runs per cell (default 0: more for small sizes)")
    parser.add_argument("--skip-sdk-above", type=size_name, default="1m",
                        help="skip the SDK's .stream() above this size: " + SIZE_HELP + " (default: %(default)s)")
    parser.add_argument("--no-bedrock", action="store_true", help="skip the Bedrock (event-stream) rows")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [SIZES[s] for s in args.sizes]
    skip_above = SIZES[args.skip_sdk_above]
    bedrock = _bedrock_implementations() if not args.no_bedrock else {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"python {sys.version.split()[0]}, mendstream {mendstream.__version__}, jiter {jiter.__version__}")
    header = (f"{'tool input':>10} {'implementation':24} {'chunks':>7} {'total ms':>9} {'p50 us':>8} {'p99 us':>8} "
              f"{'max us':>9} {'MB/s':>7} {'last/first':>10} {'vs mendstream':>13}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        chunks = make_stream(size)
        # Best of several runs for the cheap implementations (their totals are short, so noise dominates);
        # the SDK's take seconds at large sizes and run fewer times.
        repeat = args.repeat or max(3, min(20, 2_000_000 // size))
        row: dict[str, dict[str, float]] = {}
        for name, run in IMPLEMENTATIONS.items():
            if name == "sdk .stream()" and size > skip_above:
                continue
            sdk_repeat = max(1, min(repeat, 200_000 // size))
            row[name] = measure(run, chunks, sdk_repeat if name.startswith("sdk") else repeat)
        if bedrock:
            frames = bedrock["frames"](chunks)
            for name, run in bedrock["runs"].items():
                if "sdk" in name and size > skip_above:
                    continue
                sdk_repeat = max(1, min(repeat, 200_000 // size))
                row[name] = measure(run, frames, sdk_repeat if "sdk" in name else repeat)
        for name, r in row.items():
            ratio = r["total_ms"] / row["bedrock mendstream" if name.startswith("bedrock") else "mendstream"]["total_ms"]
            label = {1_000: "1 KB", 2_000: "2 KB", 10_000: "10 KB", 100_000: "100 KB", 1_000_000: "1 MB"}[size]
            print(f"{label:>10} {name:24} {len(chunks):>7} {r['total_ms']:>9.2f} {r['p50_us']:>8.2f} "
                  f"{r['p99_us']:>8.2f} {r['max_us']:>9.1f} {r['mb_per_s']:>7.1f} "
                  f"{r['last_tenth_us'] / r['first_tenth_us']:>10.2f} {ratio:>12.2f}x")
        results[str(size)] = row
        print()
    print("Targets: sdk .stream() / mendstream >= 15x at 2 KB and >= 25x at 100 KB; mendstream / floor <= 2.5x;")
    print("mendstream last/first tenth <= 1.5 at 1 MB.")
    for size in sizes:
        row = results[str(size)]
        line = f"  {size:>9,} B: mendstream/floor {row['mendstream']['total_ms'] / row['floor (split+jiter)']['total_ms']:.2f}x"
        if "sdk .stream()" in row:
            line += f", sdk.stream()/mendstream {row['sdk .stream()']['total_ms'] / row['mendstream']['total_ms']:.1f}x"
        line += f", sdk raw/mendstream {row['sdk create(stream=True)']['total_ms'] / row['mendstream']['total_ms']:.1f}x"
        if "bedrock sdk .stream()" in row:
            bedrock_ratio = row["bedrock sdk .stream()"]["total_ms"] / row["bedrock mendstream"]["total_ms"]
            line += f"; bedrock sdk.stream()/mendstream {bedrock_ratio:.1f}x"
        print(line)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
