# The `mendstream` command line (also `python -m mendstream`): `replay FILE` parses a recorded stream and
# prints its events, final message and repairs; `serve DIR` runs the replay server; `capture BODY.json`
# makes a real streaming request and saves it as a fixture; `cache plan|simulate` come from
# mendstream.cache.cli. One error mechanism for all of them: a handler raises CLIError (or any
# mendstream.UsageError) for input the user can fix, and main() prints it as one line
# `mendstream <command>: <message>` with exit status 2, never a traceback unless --debug.
# Exit statuses: 0 ok, 1 the stream or the request failed, 2 bad usage or input, 130 interrupted.
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

__all__ = ["CLIError", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

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


def _dump(value: Any, out: TextIO, *, indent: int | None) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=indent, default=str))
    out.write("\n")


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


# The SDK's documented fields of each event type, without its snapshot (O(block size) to build per event).
_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "message_start": ("message",),
    "content_block_start": ("index", "content_block"),
    "content_block_delta": ("index", "delta"),
    "content_block_stop": ("index", "content_block"),
    "message_delta": ("delta", "usage"),
    "message_stop": ("message",),
    "text": ("text",),
    "thinking": ("thinking",),
    "citation": ("citation",),
    "signature": ("signature",),
    "input_json": ("partial_json",),
}


def _event_dict(event: Any, *, snapshots: bool) -> dict[str, Any]:
    """An event as a JSON-ready dict; snapshots only when asked for."""
    fields = _EVENT_FIELDS.get(getattr(event, "type", ""))
    if snapshots or fields is None:
        result: dict[str, Any] = event.to_dict()
        return result
    out: dict[str, Any] = {"type": event.type}
    for name in fields:
        out[name] = _plain(getattr(event, name))
    return out


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


def _not_sse_reason(path: Path) -> str | None:
    """Why ``path`` cannot be a recorded stream (SSE without any ``data:`` line, and not an AWS event-stream),
    or None if it may be one."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    from mendstream.eventstream import looks_like_event_stream

    with path.open("rb") as fh:
        if looks_like_event_stream(fh.read(12)):
            return None  # a captured Bedrock body (AWS event-stream): replay reads it too
    overlap = b""
    head = b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            if not head:
                head = chunk[:4096]
            if b"data:" in overlap + chunk:
                return None
            overlap = chunk[-4:]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "it looks like JSON (an SSE stream is lines of 'event: ...' and 'data: ...')"
    if b"\x00" in head:
        return "it looks like a binary file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4 KiB boundary
            return "it looks like a binary file"
    return "it has no 'data:' line"


def cmd_replay(args: argparse.Namespace) -> int:
    from mendstream.errors import StreamError
    from mendstream.streaming import replay

    path = input_file(Path(args.file), expected="a recorded stream (a .sse file in it)")
    reason = _not_sse_reason(path)
    if reason is not None:
        raise CLIError(f"{path} is not an SSE stream: {reason}")
    out: TextIO = sys.stdout
    indent = None if args.compact else 2
    stream = replay(path)
    status = EXIT_OK
    try:
        with stream:
            for event in stream:
                if args.events:
                    _dump(_event_dict(event, snapshots=args.snapshots), out, indent=None)
    except StreamError as err:
        status = EXIT_FAILED
        print(f"mendstream replay: {path}: {type(err).__name__}: {err}", file=sys.stderr)
        if err.snapshot is not None:
            print("mendstream replay: the partial message follows", file=sys.stderr)
            _dump(err.snapshot, out, indent=indent)
    if status == EXIT_OK:
        _dump(stream.message, out, indent=indent)
    if args.repairs:
        _dump({"repairs": [r.to_dict() for r in stream.repairs]}, out, indent=indent)
    return status


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
    from mendstream.server import RecordedRequest, ReplayServer

    source = Path(args.dir)
    if not source.exists():
        raise CLIError(f"no such fixture directory: {source}")
    if not source.is_dir():
        raise CLIError(f"{source} is not a directory; serve wants a directory of *.sse fixtures")

    def log(record: RecordedRequest) -> None:
        print(f"{record.method} {record.path} {record.fixture or '-'} {record.status} "
              f"{record.bytes_sent} B {record.ms:.1f} ms", file=sys.stderr, flush=True)

    faults = None
    if args.fault is not None:
        from mendstream.faults import parse_fault_spec

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
        print(f"serving {len(srv.fixtures)} fixtures from {source}", file=sys.stderr)
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


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise CLIError(f"bad header {text!r}; use 'name: value'")
    return name.strip(), value.strip()


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


def cmd_capture(args: argparse.Namespace) -> int:
    import mendstream.httpx as transport
    from mendstream.capture import sidecar_path
    from mendstream.errors import StreamError

    body_path = input_file(Path(args.body), "request body file", expected="a JSON request body file")
    body = read_json(body_path, "a Messages API request body")
    if not isinstance(body, dict):
        raise CLIError(f"{body_path} must hold a JSON object (a Messages API request body)")
    output = output_file(Path(args.output) if args.output else body_path.with_suffix(".sse"), "capture.sse")
    api_key = auth_token = None
    if not args.no_auth:
        if args.auth_token_env:
            auth_token = os.environ.get(args.auth_token_env)
            if not auth_token:
                raise CLIError(f"environment variable {args.auth_token_env} is not set")
        else:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise CLIError(
                    f"environment variable {args.api_key_env} is not set; export your API key there, name "
                    "another variable with --api-key-env / --auth-token-env, or pass --no-auth"
                )
    headers = dict(_parse_header(h) for h in args.header)
    base_url = args.base_url or os.environ.get("ANTHROPIC_BASE_URL") or transport.DEFAULT_BASE_URL
    try:
        stream = transport.stream(
            body,
            base_url=base_url,
            api_key=api_key,
            auth_token=auth_token,
            headers=headers,
            capture=output,
            strict_content_type=False,
        )
    except transport.HTTPStatusError as exc:
        print(f"mendstream capture: {exc}; the error response was saved to {output}", file=sys.stderr)
        return EXIT_FAILED
    except transport.ContentTypeError as exc:
        print(f"mendstream capture: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UsageError:
        raise
    except Exception as exc:  # connect errors, timeouts: the HTTP library's own classes
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mendstream capture: request to {base_url} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    status = EXIT_OK
    try:
        with stream:
            for text in stream.text_stream:
                if args.print:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            stream.until_done()
        if args.print:
            sys.stdout.write("\n")
    except StreamError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mendstream capture: the stream failed ({reason}); captured anyway", file=sys.stderr)
        status = EXIT_FAILED
    size = output.stat().st_size if output.exists() else 0
    print(f"captured {size} bytes to {output} (sidecar {sidecar_path(output)})", file=sys.stderr)
    return status


def _port(text: str) -> int:
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


SERVE_DESCRIPTION = """\
Serve the *.sse fixtures in DIR as an Anthropic-compatible POST /v1/messages endpoint; point the SDK or an
agent at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT (or base_url=). Requests with "stream": false get
the fixture's final message as JSON. One line per request is logged on stderr (method, path, fixture,
status, bytes, ms) unless --quiet.

Selection (--select): "auto" (default) serves the fixture named by an x-mendstream-fixture header, else the
one whose captured request (sidecar) matches the request body, else the next *clean* fixture in name order
(successful streams that need no repair, cycling), so error and fault fixtures are only served when asked
for. "order" cycles through every fixture; "header" requires the header; "body" requires a match."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from mendstream import __version__
    from mendstream.cache.cli import add_subcommands
    from mendstream.proxy import add_proxy_subcommand

    parser = Parser(
        prog="mendstream",
        description="Robust streaming for the Anthropic Messages API: replay, serve and capture fixtures; "
        "plan and simulate prompt-cache breakpoints. Exit status: 0 ok, 1 the stream or request failed, "
        "2 bad usage or input, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"mendstream {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "replay",
        help="parse a recorded .sse stream; print its events and final message as JSON",
        description="Parse a recorded stream (a .sse fixture or capture) with mendstream. Prints one JSON "
        "line per event, then the final message as JSON. Exit status 1 if the stream cannot complete "
        "(the partial message is printed instead), 2 if the file is missing or not an SSE stream.",
    )
    p.add_argument("file", help="the .sse file")
    p.add_argument("--no-events", dest="events", action="store_false", help="print only the final message")
    p.add_argument("--repairs", action="store_true", help="also print what mendstream repaired")
    p.add_argument("--snapshots", action="store_true", help="include each event's snapshot (can be large)")
    p.add_argument("--compact", action="store_true", help="print the message on one line")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "serve",
        help="serve fixtures as POST /v1/messages on 127.0.0.1",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="directory of *.sse fixtures (with optional *.capture.json sidecars)")
    p.add_argument("--port", type=_port, default=8765, help="port (0: pick a free one; default 8765)")
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

    p = sub.add_parser(
        "capture",
        help="make a real streaming request and save the response as a fixture",
        description="Send the Messages API request in BODY (a JSON file) with \"stream\": true and save the "
        "exact response bytes to OUTPUT (default: BODY with .sse) plus a .capture.json sidecar. The API key "
        "is read from the environment and never written.",
    )
    p.add_argument("body", help="JSON file with the request body")
    p.add_argument("-o", "--output", help="where to write the .sse fixture (a file name)")
    p.add_argument("--base-url", help="endpoint (default: $ANTHROPIC_BASE_URL or https://api.anthropic.com)")
    p.add_argument("--api-key-env", default="ANTHROPIC_API_KEY", help="variable holding the x-api-key")
    p.add_argument("--auth-token-env", help="variable holding a bearer token (instead of an API key)")
    p.add_argument("--no-auth", action="store_true", help="send no credential (local servers)")
    p.add_argument("-H", "--header", action="append", default=[], help="extra header 'name: value'")
    p.add_argument("--print", action="store_true", help="print the text as it streams")
    p.set_defaults(func=cmd_capture)

    add_subcommands(sub)
    add_proxy_subcommand(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    return run(build_parser(), argv)
