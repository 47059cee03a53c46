"""What scrubbing costs a capture: mendstream.recording.scrub.BodyScrubber over bench_parse.py's streams (a
text block, then a tool input of 1 KB to 1 MB in 10-40 character fragments), as SSE and as Bedrock
event-stream frames, beside mendstream's own parse of the same chunks (MessageParser with SSE or event-stream framing, every
event) in the same run. A capture runs both: the scrubber on the bytes it writes, the parser on the stream.

Each implementation is fed the same chunks (one SSE event, or one frame, per chunk); the time is the whole
run's, best of --repeat. Columns: MB/s of body, and the scrubber's time as a multiple of the parser's.

Run: python benchmarks/bench_scrub.py [--sizes 1k,10k,100k,1m] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from bench_eventstream import to_frames
from bench_parse import SIZE_HELP, SIZES, count, make_stream, size_names
from mendstream.core.parser import MessageParser
from mendstream.recording.scrub import BodyScrubber


def run_scrub(chunks: list[bytes]) -> Any:
    scrubber = BodyScrubber()
    out = [scrubber.feed(chunk) for chunk in chunks]
    out.append(scrubber.end())
    return out


def run_parse(parser: Any) -> Callable[[list[bytes]], Any]:
    def run(chunks: list[bytes]) -> Any:
        p = parser()
        for chunk in chunks:
            p.feed(chunk)
        p.end()
        return p.message

    return run


def best(run: Callable[[list[bytes]], Any], chunks: list[bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(chunks)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size_names, default="1k,10k,100k,1m",
                        help="tool input sizes, comma-separated, each " + SIZE_HELP + " (default: %(default)s)")
    parser.add_argument("--repeat", type=count(1), default=5, help="runs per cell, best kept (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"{'size':>5} {'framing':>12} {'bytes':>9} {'scrub MB/s':>11} {'parse MB/s':>11} {'scrub/parse':>12}")
    for name in args.sizes:
        sse = make_stream(SIZES[name])
        for framing, chunks, parse in (("sse", sse, MessageParser), ("event-stream", to_frames(sse), lambda: MessageParser(framing="event-stream"))):
            size = sum(len(c) for c in chunks)
            assert b"".join(run_scrub(chunks)) == b"".join(chunks)  # nothing to mask in these streams
            scrub = best(run_scrub, chunks, args.repeat)
            parsed = best(run_parse(parse), chunks, args.repeat)
            print(f"{name:>5} {framing:>12} {size:>9} {size / scrub / 1e6:>11.1f} {size / parsed / 1e6:>11.1f} "
                  f"{scrub / parsed:>11.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
