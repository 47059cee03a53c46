# The `mendstream` command line (also `python -m mendstream`), one module per subcommand: `replay`, `serve`,
# `capture`, `proxy`, and `cache plan|simulate`. argparse lives only in this package; every subcommand runs
# through the one error mechanism of cli.common (a UsageError becomes one line and exit status 2).
from __future__ import annotations

import argparse
from collections.abc import Sequence

from mendstream.cli import cache, capture, proxy, replay, serve
from mendstream.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError, Parser, run

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from mendstream import __version__

    parser = Parser(
        prog="mendstream",
        description="Robust streaming for the Anthropic Messages API: replay, serve and capture fixtures; "
        "plan and simulate prompt-cache breakpoints; run the repairing proxy. Exit status: 0 ok, 1 the stream "
        "or request failed, 2 bad usage or input, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"mendstream {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    replay.add_subcommand(sub)
    serve.add_subcommand(sub)
    capture.add_subcommand(sub)
    cache.add_subcommands(sub)
    proxy.add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    return run(build_parser(), argv)
