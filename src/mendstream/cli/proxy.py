# `mendstream proxy --upstream URL`: the repairing, cache-planning Messages API proxy in the foreground, with
# one or several worker processes. Every problem with the options (a port out of range, a capture path that
# is a file, a taken port, a bad --state URL) is one line and exit status 2, before anything is served.
from __future__ import annotations

import argparse
import os
from typing import Any

from mendstream.cli.common import port, positive_int
from mendstream.errors import UsageError
from mendstream.streaming.retry import Retry
from mendstream.wire.boundary import PROXY_SURVIVAL, Survival
from mendstream.wire.coalesce import DEFAULT_WINDOW
from mendstream.wire.proxy import ProxyLimits, http_library, run_proxy, seconds
from mendstream.wire.rewrite import CACHE_MODES

__all__ = ["add_subcommand"]

_DEFAULTS = ProxyLimits()
_RETRY = PROXY_SURVIVAL.retry or Retry()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0; got {text}")
    return value


def _workers(text: str) -> int:
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"at most 64 workers; got {value}")
    return value


def add_subcommand(subparsers: Any) -> None:
    """Add ``mendstream proxy`` to the CLI's subparsers; the handler is set as ``func``."""
    parser = subparsers.add_parser(
        "proxy",
        help="run the repairing, cache-planning Messages API proxy",
        description="Forward every request to --upstream, planning the cache breakpoints of Messages requests "
        "and repairing their streams. Point agents at it with ANTHROPIC_BASE_URL=http://HOST:PORT. Stops on "
        "SIGINT (exit 130) or SIGTERM. Exit status 2: a bad option or an address that cannot be used (a taken "
        "port), said in one line. Set MENDSTREAM_STATS_TOKEN (16+ characters) to require 'authorization: "
        "Bearer TOKEN' on /mendstream/stats and /metrics (and to see per-conversation usage).",
    )
    parser.add_argument("--upstream", required=True, metavar="URL",
                        help="base URL to forward to, e.g. https://api.anthropic.com (no credentials in it)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every "
                             "interface, e.g. in a container)")
    parser.add_argument("--port", type=port, default=8787, help="port to listen on (default 8787)")
    parser.add_argument("--cache", choices=CACHE_MODES, default="default",
                        help="cache breakpoints: default (at most 4, placed per request), planner (per "
                             "conversation, remembering earlier requests) or off (default: default)")
    parser.add_argument("--capture", default=None, metavar="DIR",
                        help="directory for the original bytes of every Messages stream (created 0700; "
                             "files 0600; bodies only, never headers)")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N",
                        help="worker processes accepting on the one port (default 1; about one per core). With "
                             "--cache planner, share their planner state with --state redis://...")
    parser.add_argument("--state", default=None, metavar="memory|redis://HOST:PORT/DB",
                        help="where --cache planner keeps each conversation's planner: memory (each worker, "
                             "bounded in bytes; the default) or a Redis/Valkey URL shared by every worker and "
                             "replica (the proxy keeps serving, planning without shared state, when it is down)")
    parser.add_argument("--coalesce", default=str(DEFAULT_WINDOW), metavar="SECONDS",
                        help="merge consecutive deltas of one content block arriving within SECONDS "
                             f"(default {DEFAULT_WINDOW:g}; 0: off, every event as the upstream sent it)")
    parser.add_argument("--metrics", action="store_true",
                        help="serve Prometheus metrics on GET /metrics (summed over the workers)")
    parser.add_argument("--no-stats", dest="stats", action="store_false",
                        help="turn GET /mendstream/stats off (answered 404)")
    parser.add_argument("--max-connections", type=positive_int, default=None, metavar="N",
                        help="open client connections per worker (default: a third of the file limit, at most "
                             "4096); over it idle keep-alive connections make room, else 503")
    parser.add_argument("--max-body-bytes", type=positive_int, default=_DEFAULTS.max_body_bytes, metavar="N",
                        help="largest request body, else 413 (default 32 MiB: the Messages API's own limit)")
    parser.add_argument("--header-timeout", type=_seconds, default=_DEFAULTS.header_timeout, metavar="SECONDS",
                        help=f"time to send a request's head, else 408 (default {_DEFAULTS.header_timeout:g})")
    parser.add_argument("--body-timeout", type=_seconds, default=_DEFAULTS.body_timeout, metavar="SECONDS",
                        help=f"time to send a whole request body, else 408 (default {_DEFAULTS.body_timeout:g})")
    parser.add_argument("--keepalive-timeout", type=_seconds, default=_DEFAULTS.keepalive_timeout,
                        metavar="SECONDS",
                        help="how long a keep-alive connection may wait for its next request (default "
                             f"{_DEFAULTS.keepalive_timeout:g}, longer than clients' own pools keep them)")
    parser.add_argument("--upstream-timeout", type=_seconds, default=_DEFAULTS.upstream_read_timeout,
                        metavar="SECONDS",
                        help="how long the upstream may stay silent before a request fails (default "
                             f"{_DEFAULTS.upstream_read_timeout:g})")
    survival = parser.add_argument_group(
        "surviving faults",
        "What a Messages stream survives. A fault before any content (an overloaded error, a 429/5xx, a cut, a "
        "stall) is retried unseen; after text, the response is continued in place (the partial text sent back "
        "as an assistant prefill); anything else ends the stream with an 'event: error' the client's SDK "
        "raises. A client that gets an answer after the proxy gave up sees 'x-should-retry: false'.")
    survival.add_argument("--retry", type=positive_int, default=_RETRY.max_attempts, metavar="N",
                          help=f"attempts per request, the first included (default {_RETRY.max_attempts}; "
                               "1: never retry)")
    survival.add_argument("--on-partial", choices=("continue", "raise"), default=_RETRY.on_partial,
                          help="after content was sent: continue the text in the same response, or end it "
                               f"with an error event (default {_RETRY.on_partial})")
    survival.add_argument("--deadline", type=_seconds, default=None, metavar="SECONDS",
                          help="no attempt starts later than this after the request (default: none)")
    survival.add_argument("--idle-timeout", type=_seconds, default=PROXY_SURVIVAL.idle_timeout, metavar="SECONDS",
                          help="an attempt with no byte for this long has stalled (default "
                               f"{PROXY_SURVIVAL.idle_timeout:g}; the API sends a ping every few seconds)")
    survival.add_argument("--progress-timeout", type=_seconds, default=PROXY_SURVIVAL.progress_timeout,
                          metavar="SECONDS",
                          help="an attempt with nothing but pings for this long has stalled (default "
                               f"{PROXY_SURVIVAL.progress_timeout:g})")
    survival.add_argument("--stream-tool-input", dest="hold_tools", action="store_false",
                          help="pass tool input on as it is written instead of holding each tool block back "
                               "until it is complete (a fault inside one then ends the stream with an error)")
    parser.add_argument("--sanitize", action="store_true",
                        help="fix the request mistakes the API refuses with a 400 before sending (empty or "
                             "whitespace-only text, empty messages, a prefill ending in whitespace, tool_use "
                             "without its tool_result, too many or too large images); counted in "
                             "/mendstream/stats as request_changes")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="log level (default info: one access line per request, query strings redacted)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="do not log one line per request")
    # accepted after the subcommand too (`mendstream proxy ... --debug`); SUPPRESS keeps a --debug given
    # before it
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show a traceback when the command fails")
    parser.set_defaults(func=_proxy_command)


def _proxy_command(args: Any) -> int:
    """Run the proxy in the foreground. Errors are UsageErrors: the CLI prints them as one line (exit 2)."""
    http_library()
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"needs uvicorn ({exc}): pip install 'mendstream[proxy]'") from None
    limits = ProxyLimits(
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_timeout=args.body_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        upstream_read_timeout=args.upstream_timeout,
    )
    state = args.state
    if state == "memory":
        state = None
    if state is not None and args.cache != "planner":
        raise UsageError("--state is where --cache planner keeps its planners: add --cache planner")
    return run_proxy(
        args.upstream,
        host=args.host,
        port=args.port,
        cache=args.cache,
        capture=args.capture,
        workers=args.workers,
        limits=limits,
        state=state,
        metrics=args.metrics,
        stats=args.stats,
        stats_token=os.environ.get("MENDSTREAM_STATS_TOKEN") or None,
        log_level=args.log_level,
        access_log=args.access_log,
        coalesce=seconds(args.coalesce, "--coalesce"),
        survival=Survival(Retry(args.retry, deadline=args.deadline, on_partial=args.on_partial)
                          if args.retry > 1 or args.deadline is not None else None,
                          idle_timeout=args.idle_timeout, progress_timeout=args.progress_timeout,
                          hold_tools=args.hold_tools),
        sanitize=args.sanitize,
    )
