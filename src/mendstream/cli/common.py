# What every subcommand shares: exit statuses, the one error mechanism (a handler raises CLIError, or any
# mendstream.UsageError, for input the user can fix; `run` prints it as one line `mendstream <command>:
# <message>` with exit status 2, never a traceback unless --debug), argparse with one-line errors, file
# checks and JSON output. Exit statuses: 0 ok, 1 the stream or the request failed, 2 bad usage or input,
# 130 interrupted.
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from mendstream.errors import UsageError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "Parser",
    "dump",
    "input_file",
    "output_file",
    "port",
    "read_json",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""The stream or the request failed (what was received is still printed or saved)."""
EXIT_USAGE = 2
"""Bad usage or input: a missing or unreadable file, a bad option, a file of the wrong kind."""
EXIT_INTERRUPTED = 130


class CLIError(UsageError):
    """Input the user can fix; printed as ``mendstream <command>: <message>`` with exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with errors as one line in the CLI's own format (``mendstream <command>: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def dump(value: Any, out: TextIO, *, indent: int | None) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=indent, default=str))
    out.write("\n")


def input_file(path: Path, what: str = "file", *, expected: str = "a file") -> Path:
    """``path`` if it is a readable regular file; else a CLIError saying what is wrong with it."""
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give {expected}")
    if not path.exists():
        raise CLIError(f"cannot read {path}: no such {what}")
    if not os.access(path, os.R_OK):
        raise CLIError(f"cannot read {path}: permission denied")
    return path


def output_file(path: Path, example: str) -> Path:
    """``path`` if a file can be written there; else a CLIError (a directory, a missing parent)."""
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give a file name such as {path / example}")
    if not path.parent.is_dir():
        raise CLIError(f"cannot write {path}: no such directory {path.parent}")
    return path


def read_json(path: Path, what: str) -> Any:
    """The JSON document in ``path``; a CLIError naming the file when it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not UTF-8 text (a binary file?); expected {what}") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise CLIError(f"{path} nests JSON too deeply to be {what}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (else one line naming the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535; got {value}")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"speed must be a number > 0; got {text}")
    return value


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command's handler: the one error mechanism of every subcommand.

    A :class:`~mendstream.errors.UsageError` (CLIError included) prints ``mendstream <command>: <message>``
    and gives 2; an unexpected exception prints one line and gives 1; ``--debug`` adds the traceback.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 after --help/--version, 2 after a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name = " ".join(str(p) for p in (args.command, getattr(args, "cache_command", None)) if p)
    debug = bool(getattr(args, "debug", False))
    try:
        return func(args)
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        print(f"mendstream {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mendstream replay x.sse | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_FAILED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"mendstream {name}: internal error: {type(exc).__name__}: {exc} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILED
