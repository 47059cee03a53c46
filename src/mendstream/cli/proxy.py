# `mendstream proxy --upstream URL`: the repairing, cache-planning Messages API proxy in the foreground.
from __future__ import annotations

from typing import Any

from mendstream.cli.common import port
from mendstream.errors import UsageError
from mendstream.wire.coalesce import DEFAULT_WINDOW
from mendstream.wire.proxy import http_library, run_proxy, seconds
from mendstream.wire.rewrite import CACHE_MODES

__all__ = ["add_subcommand"]


def add_subcommand(subparsers: Any) -> None:
    """Add ``mendstream proxy`` to the CLI's subparsers; the handler is set as ``func``."""
    parser = subparsers.add_parser("proxy", help="run the repairing, cache-planning Messages API proxy")
    parser.add_argument("--upstream", required=True, help="base URL to forward to, e.g. https://api.anthropic.com")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8787)
    parser.add_argument("--cache", choices=CACHE_MODES, default="default")
    parser.add_argument("--capture", default=None, help="directory for the original bytes of every stream")
    parser.add_argument("--coalesce", default=str(DEFAULT_WINDOW), metavar="SECONDS",
                        help="merge consecutive deltas of one content block arriving within SECONDS "
                             f"(default {DEFAULT_WINDOW:g}; 0: off, every event as the upstream sent it)")
    parser.set_defaults(func=_proxy_command)


def _proxy_command(args: Any) -> int:
    """Run the proxy in the foreground. Errors are UsageErrors: the CLI prints them as one line (exit 2)."""
    http_library()
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"needs uvicorn ({exc}): pip install 'mendstream[proxy]'") from None
    coalesce = seconds(args.coalesce, "--coalesce")
    run_proxy(args.upstream, host=args.host, port=args.port, cache=args.cache, capture=args.capture,
              coalesce=coalesce)
    return 0
