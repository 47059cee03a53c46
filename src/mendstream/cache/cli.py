# Command line: `mendstream cache plan PAYLOAD.json` (where markers go and why) and
# `mendstream cache simulate SESSION.jsonl` (what a session's markers read and write, optional PNG).
# The lead's CLI mounts these with add_subcommands(); main() runs them standalone:
# `python -m mendstream.cache.cli cache plan payload.json`.
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

from .planner import CacheMarkerWarning, CachePlanner, plan_cache_breakpoints
from .simulate import SessionEntry, SessionFormatError, ceiling, load_session, simulate
from .strategies import STRATEGIES

__all__ = ["add_subcommands", "main"]


class _UsageError(Exception):
    """Bad input the user can fix: printed on stderr, exit code 2."""


def _read_payload(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise _UsageError(f"{path} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("payload"), dict):
        data = data["payload"]
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise _UsageError(f"{path} is not a Messages API request body (a JSON object with a 'messages' list)")
    return data


def _plan(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload)
    out, report = plan_cache_breakpoints(payload, strategy=args.strategy, model=args.model)
    print(report.table())
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                json.dump(out, fh, ensure_ascii=False, indent=1)
        except OSError as exc:
            raise _UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


def _simulate(args: argparse.Namespace) -> int:
    try:
        entries = load_session(args.session)
    except OSError as exc:
        raise _UsageError(f"cannot read {args.session}: {exc.strerror or exc}") from None
    except SessionFormatError as exc:
        raise _UsageError(f"{args.session}: {exc}") from None
    if not entries:
        raise _UsageError(f"{args.session} holds no requests")
    if args.strategy != "as-sent":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheMarkerWarning)
            if args.strategy == "planner":
                planner = CachePlanner(model=args.model, lookback=args.lookback)
                place: Callable[[Any], dict[str, Any]] = planner.place
            else:
                strategy = args.strategy

                def place(p: Any) -> dict[str, Any]:
                    return plan_cache_breakpoints(p, strategy=strategy, model=args.model, lookback=args.lookback)[0]

            entries = [SessionEntry(place(e.payload), e.timestamp, e.usage) for e in entries]
    report = simulate(entries, lookback=args.lookback, model=args.model)
    print(report.table())
    bound = ceiling(entries, model=args.model)
    print(f"ceiling (best any placement could read, 5m TTL): {bound.hit_ratio:.1%}")
    if args.png:
        try:
            report.chart(args.png, title=f"{args.session} ({args.strategy}, lookback {args.lookback})")
        except ImportError:
            print("error: --png needs matplotlib (pip install 'mendstream[chart]')", file=sys.stderr)
            return 1
        except OSError as exc:
            raise _UsageError(f"cannot write {args.png}: {exc.strerror or exc}") from None
        print(f"chart written to {args.png}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cache`` with its ``plan`` and ``simulate`` subcommands to an existing CLI.

    Each leaf parser sets ``func`` (``Callable[[argparse.Namespace], int]``) via ``set_defaults``; the
    caller runs ``args.func(args)`` and should treat a raised ``SystemExit`` as the exit code. Errors in
    the user's input print ``error: ...`` on stderr and exit with code 2.
    """
    cache = subparsers.add_parser(
        "cache",
        help="prompt-cache breakpoints: plan and simulate",
        description="Plan prompt-cache breakpoints and simulate what they save.",
    )
    commands = cache.add_subparsers(dest="cache_command", metavar="{plan,simulate}", required=True)

    plan = commands.add_parser(
        "plan",
        help="show where cache_control markers go and why",
        description="Plan cache_control markers for one request body and print a table: position, region, "
        "role, block type, estimated prefix tokens, TTL and the reason for each breakpoint.",
    )
    plan.add_argument("payload", metavar="PAYLOAD.json", help="a Messages API request body (JSON object)")
    plan.add_argument("--strategy", choices=list(STRATEGIES), default="default", help="placement strategy")
    plan.add_argument("--model", help="model id for the minimum cacheable length (default: the payload's)")
    plan.add_argument("--output", "-o", metavar="OUT.json", help="also write the planned payload here")
    plan.set_defaults(func=_guard(_plan))

    sim = commands.add_parser(
        "simulate",
        help="replay a session under the caching rules",
        description='Replay SESSION.jsonl (one request body per line, or {"payload": ..., "timestamp": '
        'seconds, "usage": {...}}) under the documented caching rules and print tokens read, '
        "written and uncached per request, the hit ratio, relative cost and errors.",
    )
    sim.add_argument("session", metavar="SESSION.jsonl", help="the recorded requests")
    sim.add_argument(
        "--lookback",
        type=_positive,
        default=20,
        help="blocks walked back from each breakpoint (20 for Anthropic, 1 for exact-match providers)",
    )
    sim.add_argument(
        "--strategy",
        choices=["as-sent", *STRATEGIES, "planner"],
        default="as-sent",
        help="re-plan every request with this strategy first (default: use the markers as sent)",
    )
    sim.add_argument("--model", help="model id for the minimum cacheable length (default: each payload's)")
    sim.add_argument("--png", metavar="OUT.png", help="write a chart of read/written/uncached tokens per request")
    sim.set_defaults(func=_guard(_simulate))


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def main(argv: list[str] | None = None) -> int:
    """Run ``cache plan`` / ``cache simulate`` standalone; returns the exit code."""
    parser = argparse.ArgumentParser(prog="mendstream", description="mendstream prompt-cache tools")
    subparsers = parser.add_subparsers(dest="command", metavar="{cache}", required=True)
    add_subcommands(subparsers)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return exc.code if isinstance(exc.code, int) else 2
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
