# `mendstream serve [DIR]`: the replay server in the foreground (the bundled fixtures without DIR), with fault
# plans, one log line per request (naming the fault injected).
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mendstream.cli.common import EXIT_OK, CLIError, port
from mendstream.errors import UsageError

__all__ = ["add_subcommand"]


def _describe_selection(server: Any) -> str:
    selector = server.selector
    if selector.select == "header":
        return "by the x-mendstream-fixture header (required)"
    if selector.select == "body":
        return "by matching the request body against captured requests"
    rotation = selector.rotation
    names = ", ".join(f.name for f in rotation[:4]) + (", ..." if len(rotation) > 4 else "")
    if selector.select == "order":
        return f"in request order over all {len(rotation)} fixtures ({names})"
    clean = "clean " if len(rotation) < len(selector.fixtures) else ""
    return (f"by the x-mendstream-fixture header, else a body match, else in request order over the "
            f"{len(rotation)} {clean}fixtures ({names})")


def cmd_serve(args: argparse.Namespace) -> int:
    from mendstream.testing import FIXTURES, RecordedRequest, ReplayServer

    source = FIXTURES if args.dir is None else Path(args.dir)
    if not source.exists():
        raise CLIError(f"no such fixture directory: {source}")
    if not source.is_dir():
        raise CLIError(f"{source} is not a directory; serve wants a directory of *.sse fixtures")
    where = "the bundled fixtures" if args.dir is None else str(source)

    def log(record: RecordedRequest) -> None:
        fault = f" fault={record.fault}" if record.fault is not None else ""
        print(f"{record.method} {record.path} {record.fixture or '-'} {record.status} "
              f"{record.bytes_sent} B {record.ms:.1f} ms{fault}", file=sys.stderr, flush=True)

    faults = None
    if args.fault is not None:
        from mendstream.testing.faults import parse_fault_spec

        try:
            faults = parse_fault_spec(args.fault)
        except UsageError as exc:  # the message names the problem and ends with the SPEC grammar
            raise CLIError(f"--fault {args.fault!r}: {exc}") from None

    server = ReplayServer(
        source,
        faults=faults,
        host=args.host,
        port=args.port,
        select=args.select,
        pace=args.pace,
        speed=args.speed,
        cycle=not args.no_cycle,
        on_request=None if args.quiet else log,
        validate=args.validate,
    )

    def ready(srv: ReplayServer) -> None:
        print(f"serving {len(srv.fixtures)} fixtures from {where}", file=sys.stderr)
        if faults is not None:
            print(f"faults: {args.fault}", file=sys.stderr)
        print(f"selection: {_describe_selection(srv)}", file=sys.stderr)
        if srv.skipped:
            names = ", ".join(p.name for p in srv.skipped)
            print(f"skipped (symlinked outside {source}): {names}", file=sys.stderr)
        print(f"base_url: {srv.base_url}", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)

    try:
        server.serve_forever(on_ready=ready)
    except ImportError as exc:
        raise CLIError(f"serve needs uvicorn: pip install 'mendstream[server]' ({exc})") from None
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"speed must be a number > 0; got {text}")
    return value


SERVE_DESCRIPTION = """\
Serve the *.sse fixtures in DIR (without DIR: the fixtures bundled with mendstream) as an Anthropic-compatible
POST /v1/messages endpoint; point the SDK or an agent at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT (or
base_url=). Requests with "stream": false get the fixture's final message as JSON. One line per request is
logged on stderr (method, path, fixture, status, bytes, ms, and the fault injected as fault=SPEC) unless
--quiet. A *.sse file that cannot be a stream (empty, binary, JSON, no 'data:' line) is refused, as replay
refuses it.

Selection (--select): "auto" (default) serves the fixture named by an x-mendstream-fixture header, else the
one whose captured request (sidecar) matches the request body, else the next *clean* fixture in name order
(successful streams that need no repair, cycling), so error and fault fixtures are only served when asked
for. "order" cycles through every fixture; "header" requires the header; "body" requires a match."""



def add_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve fixtures as POST /v1/messages on 127.0.0.1",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir",
        nargs="?",
        help="directory of *.sse fixtures (with optional *.capture.json sidecars); default: the bundled fixtures",
    )
    p.add_argument("--port", type=port, default=8765, help="port (0: pick a free one; default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--pace", choices=["fast", "captured"], default="fast", help="replay the captured timing or not"
    )
    p.add_argument("--speed", type=_speed, default=1.0, help="with --pace captured: speed factor (2 = twice)")
    p.add_argument(
        "--select", choices=["auto", "header", "body", "order"], default="auto", help="how to choose fixtures"
    )
    p.add_argument("--no-cycle", action="store_true", help="in order mode, answer 404 after the last fixture")
    p.add_argument("--quiet", action="store_true", help="do not log one line per request")
    p.add_argument(
        "--validate",
        action="store_true",
        help="answer 400 as the API does to requests that break its rules (empty text blocks, tool_use without "
        "tool_result, ...: docs/requests.md)",
    )
    p.add_argument(
        "--fault",
        metavar="SPEC",
        help="break responses on purpose (see docs/resilience.md), e.g. 'error(type=overloaded_error);ok' or "
        "'mix(seed=7):0.2*error+0.05*cut(in=tool)'",
    )
    p.set_defaults(func=cmd_serve)
