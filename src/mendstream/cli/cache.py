# Command line for the cache package: `mendstream cache plan PAYLOAD.json` (where markers go and why) and
# `mendstream cache simulate SESSION.jsonl` (what a session's markers read and write, optional PNG chart).
# mendstream.cli mounts these with add_subcommands() and runs them through its one error mechanism
# (CLIError / UsageError → one line, exit 2); main() runs them standalone the same way:
# `python -m mendstream.cli.cache cache plan payload.json`.
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mendstream.cache.planner import CacheMarkerWarning, CachePlanner, plan_cache_breakpoints
from mendstream.cache.simulate import (
    SessionEntry,
    SessionFormatError,
    SimulationReport,
    ceiling,
    load_session,
    simulate,
)
from mendstream.cache.strategies import STRATEGIES
from mendstream.cli.common import CLIError, Parser, input_file, output_file, positive_int, read_json, run
from mendstream.errors import UsageError

__all__ = ["add_subcommands", "main"]

_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _read_payload(path: Path) -> dict[str, Any]:
    data = read_json(input_file(path, expected="a JSON request body file"), "a Messages API request body")
    if isinstance(data, dict) and isinstance(data.get("payload"), dict):
        data = data["payload"]
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise CLIError(f"{path} is not a Messages API request body (a JSON object with a 'messages' list)")
    return data


def _plan(args: argparse.Namespace) -> int:
    path = Path(args.payload)
    payload = _read_payload(path)
    output = output_file(Path(args.output), "planned.json") if args.output else None
    try:
        out, report = plan_cache_breakpoints(payload, strategy=args.strategy, model=args.model)
    except UsageError as exc:
        raise CLIError(f"{path}: {exc}") from None
    print(report.table())
    if output is not None:
        try:
            with open(output, "w", encoding="utf-8") as fh:
                json.dump(out, fh, ensure_ascii=False, indent=1)
        except OSError as exc:
            raise CLIError(f"cannot write {output}: {exc.strerror or exc}") from None
    return 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_session(path: Path) -> None:
    """Reject, naming the line, what load_session would take but cannot be simulated: a non-numeric
    ``timestamp``, non-integer ``usage`` token counts; and say so when the file is one JSON document
    rather than JSON Lines."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not UTF-8 text (a binary file?); expected JSON Lines") from None
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except RecursionError:
            raise CLIError(f"{path}: line {number}: JSON nested too deeply") from None
        except ValueError:
            if number == 1 and _is_one_document(text):
                raise CLIError(f"{path} holds one JSON document spread over several lines; simulate wants "
                               "JSON Lines: one request body (or {\"payload\": ...}) per line") from None
            continue  # load_session names the line
        if not isinstance(item, Mapping) or not isinstance(item.get("payload"), Mapping):
            continue
        timestamp = item.get("timestamp")
        if timestamp is not None and not _number(timestamp):
            raise CLIError(f"{path}: line {number}: 'timestamp' must be a number of seconds; got {timestamp!r:.40}")
        usage = item.get("usage")
        if isinstance(usage, Mapping):
            for field in _USAGE_FIELDS:
                value = usage.get(field)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise CLIError(f"{path}: line {number}: usage.{field} must be a token count; got {value!r:.40}")


def _is_one_document(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _png_path(value: str, session: Path) -> Path:
    path = Path(value)
    if path.is_dir():
        path = path / (session.stem + ".png")
    elif path.suffix.lower() != ".png":
        raise CLIError(f"--png wants a .png file name (or a directory); got {value}")
    if not path.parent.is_dir():
        raise CLIError(f"cannot write {path}: no such directory {path.parent}")
    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--png needs matplotlib: pip install 'mendstream[chart]'")
    return path


def _simulate(args: argparse.Namespace) -> int:
    session = input_file(Path(args.session), expected="a session file (JSON Lines)")
    png = _png_path(args.png, session) if args.png else None  # before the simulation: fail fast
    _check_session(session)
    try:
        entries = load_session(session)
    except OSError as exc:
        raise CLIError(f"cannot read {session}: {exc.strerror or exc}") from None
    except SessionFormatError as exc:
        raise CLIError(f"{session}: {exc}") from None
    except (ValueError, TypeError) as exc:  # a field load_session could not convert
        raise CLIError(f"{session}: {exc}") from None
    if not entries:
        raise CLIError(f"{session} holds no requests")
    try:
        if args.strategy != "as-sent":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheMarkerWarning)
                if args.strategy == "planner":
                    planner = CachePlanner(model=args.model, lookback=args.lookback)
                    place: Callable[[Any], dict[str, Any]] = planner.place
                else:
                    strategy = args.strategy

                    def place(p: Any) -> dict[str, Any]:
                        return plan_cache_breakpoints(p, strategy=strategy, model=args.model,
                                                      lookback=args.lookback)[0]

                entries = [SessionEntry(place(e.payload), e.timestamp, e.usage) for e in entries]
        report = simulate(entries, lookback=args.lookback, model=args.model)
        bound = ceiling(entries, model=args.model)
    except UsageError as exc:
        raise CLIError(f"{session}: {exc}") from None
    print(report.table())
    print(f"ceiling (best any placement could read, 5m TTL): {bound.hit_ratio:.1%}")
    if png is not None:
        try:
            write_chart(report, png, title=f"{session.name} ({args.strategy}, lookback {args.lookback})")
        except OSError as exc:
            raise CLIError(f"cannot write {png}: {exc.strerror or exc}") from None
        print(f"chart written to {png}")
    return 0


def write_chart(report: SimulationReport, path: Path, *, title: str) -> None:
    """A PNG of read / written / uncached input tokens per request, readable from 3 to thousands of
    requests: the width is bounded (bars become a stacked step area past a few hundred requests), the
    y axis leaves headroom over the tallest request and the legend sits outside the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.requests
    n = len(results)
    xs = [r.index for r in results]
    read = [r.read_tokens for r in results]
    write = [r.write_5m_tokens + r.write_1h_tokens for r in results]
    uncached = [r.uncached_tokens for r in results]
    low = [a + b for a, b in zip(read, write, strict=True)]
    top = [a + b for a, b in zip(low, uncached, strict=True)]
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 4.0 + n * 0.12)), 4.5))
    colours = {"read": "#4caf50", "written": "#ff9800", "uncached": "#9e9e9e"}
    if n <= 300:
        width = 0.8 if n <= 60 else 1.0
        ax.bar(xs, read, width=width, label="read", color=colours["read"], linewidth=0)
        ax.bar(xs, write, width=width, bottom=read, label="written", color=colours["written"], linewidth=0)
        ax.bar(xs, uncached, width=width, bottom=low, label="uncached", color=colours["uncached"], linewidth=0)
    else:
        zero = [0] * n
        ax.fill_between(xs, zero, read, step="mid", label="read", color=colours["read"], linewidth=0)
        ax.fill_between(xs, read, low, step="mid", label="written", color=colours["written"], linewidth=0)
        ax.fill_between(xs, low, top, step="mid", label="uncached", color=colours["uncached"], linewidth=0)
    errors = [r.index for r in results if r.error]
    if errors:
        ax.plot(errors, [0] * len(errors), "v", color="red", markersize=6, clip_on=False, label="API error (400)")
    ax.set_xlim(min(xs, default=0) - 0.6, max(xs, default=0) + 0.6)
    ax.set_ylim(0, max(max(top, default=0), 1) * 1.08)
    ax.margins(x=0)
    ax.set_xlabel("request")
    ax.set_ylabel("input tokens")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=12, integer=True))
    ax.set_title(f"{title}\nhit ratio {report.hit_ratio:.1%}, relative cost {report.relative_cost:.3f}",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_subcommands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``cache`` with its ``plan`` and ``simulate`` subcommands to an existing CLI.

    Each leaf parser sets ``func`` (``Callable[[argparse.Namespace], int]``); run it through
    :func:`mendstream.cli.run`, which prints a :class:`~mendstream.cli.CLIError` as one line
    ``mendstream cache <command>: ...`` with exit code 2.
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
    plan.set_defaults(func=_plan)

    sim = commands.add_parser(
        "simulate",
        help="replay a session under the caching rules",
        description='Replay SESSION.jsonl (JSON Lines: one request body per line, or {"payload": ..., '
        '"timestamp": seconds, "usage": {...}}) under the documented caching rules and print tokens read, '
        "written and uncached per request, the hit ratio, relative cost and errors.",
    )
    sim.add_argument("session", metavar="SESSION.jsonl", help="the recorded requests")
    sim.add_argument(
        "--lookback",
        type=positive_int,
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
    sim.add_argument("--png", metavar="OUT.png", help="write a chart of read/written/uncached tokens per request "
                     "(a .png file, or a directory: SESSION.png in it); needs matplotlib")
    sim.set_defaults(func=_simulate)


def main(argv: list[str] | None = None) -> int:
    """Run ``cache plan`` / ``cache simulate`` standalone; returns the exit code."""
    parser = Parser(prog="mendstream", description="mendstream prompt-cache tools")
    subparsers = parser.add_subparsers(dest="command", metavar="{cache}", required=True)
    add_subcommands(subparsers)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
