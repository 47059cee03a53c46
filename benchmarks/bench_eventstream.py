"""Bedrock (AWS event-stream) parse cost of mendstream vs the official SDK's AnthropicBedrock, beside the same
events over SSE, so the two ratios can be compared in one run.

The streams are bench_parse.py's (one text block, then a tool input of 1 KB to 1 MB in 10-40 character
fragments); each SSE event becomes one `chunk` frame (base64 of the event JSON, as Bedrock sends it), one
frame per chunk. Timing is bench_parse's: each implementation pulls the same chunks from an instrumented
generator; the time between two pulls is that chunk's cost. Implementations:

- floor (frames+b64+jiter): mendstream's EventStreamDecoder, then jiter and base64 on each payload; no
  accumulation (the lower bound for any event-stream reader)
- mendstream bedrock: mendstream.MessageStream with MessageParser(framing="event-stream"), iterating every event
- sdk bedrock .stream(): AnthropicBedrock(...).messages.stream() through an httpx2 MockTransport serving the
  frames (fake AWS credentials; SigV4 signing happens once, before the first chunk)
- sdk bedrock create(stream=True): the SDK's raw event iteration over the frames (botocore decoding)
- mendstream sse / sdk sse .stream(): the same events as SSE (bench_parse's implementations)

Run: python benchmarks/bench_eventstream.py [--sizes 1k,10k,100k] [--repeat N] [--json out.json]
"""

from __future__ import annotations

import argparse
import binascii
import json
import sys
from collections.abc import Callable
from typing import Any

import jiter

import mendstream
from bench_parse import SIZE_HELP, SIZES, Clock, count, make_stream, measure, run_mendstream, run_sdk_stream, size_names
from mendstream.core.bedrock import chunk_frame
from mendstream.core.eventstream import EventStreamDecoder
from mendstream.streaming.drivers import iterable_opener

_PARAMS: dict[str, Any] = {"model": "claude-bench", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}


def to_frames(sse_chunks: list[bytes]) -> list[bytes]:
    """One event-stream frame per SSE chunk (each chunk is one `event:`/`data:` event)."""
    frames = []
    for i, chunk in enumerate(sse_chunks):
        data = chunk[chunk.index(b"data: ") + 6 :].rstrip(b"\n")
        frames.append(chunk_frame(data, padding=i))
    return frames


def run_floor(clock: Clock) -> Any:
    decoder = EventStreamDecoder()
    loads = jiter.from_json
    last = None
    for chunk in clock:
        for frame in decoder.feed(chunk):
            last = loads(binascii.a2b_base64(loads(frame.payload)["bytes"]))
    return last


def run_bedrock(clock: Clock) -> Any:
    parser = mendstream.MessageParser(framing="event-stream")
    with mendstream.MessageStream(iterable_opener(clock), parser=parser) as stream:
        for _ in stream:
            pass
        return stream.message


def _bedrock_client(clock: Clock) -> Any:
    import anthropic
    import httpx2

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/vnd.amazon.eventstream"}, content=iter(clock))

    return anthropic.AnthropicBedrock(
        aws_access_key="AKIDEXAMPLE", aws_secret_key="bench", aws_region="us-east-1", max_retries=0,
        base_url="http://bench.invalid", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def run_sdk_bedrock_stream(clock: Clock) -> Any:
    with _bedrock_client(clock).messages.stream(**_PARAMS) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def run_sdk_bedrock_raw(clock: Clock) -> Any:
    last = None
    for last in _bedrock_client(clock).messages.create(stream=True, **_PARAMS):  # noqa: B007
        pass
    return last


# name → (implementation, reads event-stream frames?)
IMPLEMENTATIONS: dict[str, tuple[Callable[[Clock], Any], bool]] = {
    "floor (frames+b64+jiter)": (run_floor, True),
    "mendstream bedrock": (run_bedrock, True),
    "sdk bedrock .stream()": (run_sdk_bedrock_stream, True),
    "sdk bedrock create()": (run_sdk_bedrock_raw, True),
    "mendstream sse": (run_mendstream, False),
    "sdk sse .stream()": (run_sdk_stream, False),
}
LABELS = {1_000: "1 KB", 2_000: "2 KB", 10_000: "10 KB", 100_000: "100 KB", 1_000_000: "1 MB"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size_names, default="1k,10k,100k",
                        help="tool input sizes, comma-separated, each " + SIZE_HELP + " (default: %(default)s)")
    parser.add_argument("--repeat", type=count(0), default=0, help="runs per cell (default 0: more for small sizes)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [SIZES[s] for s in args.sizes]
    import anthropic

    print(f"python {sys.version.split()[0]}, mendstream {mendstream.__version__}, anthropic {anthropic.__version__}")
    header = (f"{'tool input':>10} {'implementation':26} {'chunks':>7} {'total ms':>9} {'p50 us':>8} {'p99 us':>8} "
              f"{'max us':>9} {'last/first':>10} {'vs mendstream':>13}")
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for size in sizes:
        sse_chunks = make_stream(size)
        frames = to_frames(sse_chunks)
        repeat = args.repeat or max(3, min(20, 2_000_000 // size))
        row: dict[str, dict[str, float]] = {}
        for name, (run, event_stream) in IMPLEMENTATIONS.items():
            sdk_repeat = max(1, min(repeat, 200_000 // size))
            row[name] = measure(run, frames if event_stream else sse_chunks, sdk_repeat if "sdk" in name else repeat)
        for name, r in row.items():
            base = row["mendstream bedrock" if name in IMPLEMENTATIONS and IMPLEMENTATIONS[name][1] else "mendstream sse"]
            print(f"{LABELS[size]:>10} {name:26} {len(frames):>7} {r['total_ms']:>9.2f} {r['p50_us']:>8.2f} "
                  f"{r['p99_us']:>8.2f} {r['max_us']:>9.1f} {r['last_tenth_us'] / r['first_tenth_us']:>10.2f} "
                  f"{r['total_ms'] / base['total_ms']:>12.2f}x")
        results[str(size)] = row
        print()
    print("Goal: sdk/mendstream over event-stream about the same as over SSE.")
    for size in sizes:
        row = results[str(size)]
        es = row["sdk bedrock .stream()"]["total_ms"] / row["mendstream bedrock"]["total_ms"]
        sse = row["sdk sse .stream()"]["total_ms"] / row["mendstream sse"]["total_ms"]
        es_p50 = row["sdk bedrock .stream()"]["p50_us"] / row["mendstream bedrock"]["p50_us"]
        sse_p50 = row["sdk sse .stream()"]["p50_us"] / row["mendstream sse"]["p50_us"]
        floor = row["mendstream bedrock"]["total_ms"] / row["floor (frames+b64+jiter)"]["total_ms"]
        print(f"  {LABELS[size]:>6}: sdk/mendstream total {es:.1f}x event-stream vs {sse:.1f}x SSE; "
              f"p50 {es_p50:.1f}x vs {sse_p50:.1f}x; mendstream bedrock/floor {floor:.2f}x")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
