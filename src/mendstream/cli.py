# The `mendstream` command line (also `python -m mendstream`): `replay FILE` parses a recorded stream and
# prints its events, final message and repairs; `serve DIR` runs the replay server; `capture BODY.json`
# makes a real streaming request and saves it as a fixture; `cache ...` is added by mendstream.cache.cli
# when present. Every subcommand handler takes the parsed arguments and returns the exit status: 0 ok,
# 1 the stream or the request failed, 2 bad usage (missing file, missing key).
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A usage problem reported as ``mendstream <command>: <message>`` with exit status 2."""


def _dump(value: Any, out: TextIO, *, indent: int | None) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=indent, default=str))
    out.write("\n")


def _event_dict(event: Any, *, snapshots: bool) -> dict[str, Any]:
    """An event as a JSON-ready dict; snapshots (O(block size) each) only when asked for."""
    if snapshots or not hasattr(type(event), "_public"):
        result: dict[str, Any] = event.to_dict()
        return result
    out: dict[str, Any] = {"type": event.type}
    for name in type(event)._public:
        if name == "snapshot":
            continue
        value = getattr(event, name)
        out[name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def cmd_replay(args: argparse.Namespace) -> int:
    from mendstream.errors import StreamError
    from mendstream.streaming import replay

    path = Path(args.file)
    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    out: TextIO = sys.stdout
    indent = None if args.compact else 2
    stream = replay(path)
    status = 0
    try:
        with stream:
            for event in stream:
                if args.events:
                    _dump(_event_dict(event, snapshots=args.snapshots), out, indent=None)
    except StreamError as err:
        status = 1
        print(f"mendstream replay: {type(err).__name__}: {err}", file=sys.stderr)
        if err.snapshot is not None:
            print("mendstream replay: the partial message follows", file=sys.stderr)
            _dump(err.snapshot, out, indent=indent)
    if status == 0:
        _dump(stream.message, out, indent=indent)
    if args.repairs:
        _dump({"repairs": [r.to_dict() for r in stream.repairs]}, out, indent=indent)
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    from mendstream.server import ReplayServer

    source = Path(args.dir)
    if not source.exists():
        raise CLIError(f"no such fixture directory: {source}")
    try:
        server = ReplayServer(
            source,
            host=args.host,
            port=args.port,
            select=args.select,
            pace=args.pace,
            speed=args.speed,
            cycle=not args.no_cycle,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None

    def ready(srv: ReplayServer) -> None:
        names = ", ".join(f.name for f in srv.fixtures[:5]) + (", ..." if len(srv.fixtures) > 5 else "")
        print(f"serving {len(srv.fixtures)} fixtures ({names}) from {source}", file=sys.stderr)
        print(f"base_url: {srv.base_url}", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)

    try:
        server.serve_forever(on_ready=ready)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise CLIError(f"bad header {text!r}; use 'name: value'")
    return name.strip(), value.strip()


def cmd_capture(args: argparse.Namespace) -> int:
    import mendstream.httpx as transport
    from mendstream.capture import sidecar_path
    from mendstream.errors import StreamError

    body_path = Path(args.body)
    if not body_path.is_file():
        raise CLIError(f"no such request body file: {body_path}")
    try:
        body = json.loads(body_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CLIError(f"{body_path} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CLIError(f"{body_path} must hold a JSON object (a Messages API request body)")
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
    output = Path(args.output) if args.output else body_path.with_suffix(".sse")
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
        print(f"mendstream capture: {exc}", file=sys.stderr)
        print(f"mendstream capture: the error response was saved to {output}", file=sys.stderr)
        return 1
    except transport.ContentTypeError as exc:
        print(f"mendstream capture: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # connect errors, timeouts: the HTTP library's own classes
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mendstream capture: request to {base_url} failed: {reason}", file=sys.stderr)
        return 1
    status = 0
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
        status = 1
    size = output.stat().st_size if output.exists() else 0
    print(f"captured {size} bytes to {output} (sidecar {sidecar_path(output)})", file=sys.stderr)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (``cache`` only when mendstream.cache.cli exists)."""
    parser = argparse.ArgumentParser(
        prog="mendstream",
        description="Robust streaming for the Anthropic Messages API: replay, serve and capture fixtures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "replay",
        help="parse a recorded .sse stream; print its events and final message as JSON",
        description="Parse a recorded stream (a .sse fixture or capture) with mendstream. Prints one JSON "
        "line per event, then the final message as JSON. Exit status 1 if the stream cannot complete "
        "(the partial message is printed instead).",
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
        description="Serve the *.sse fixtures in DIR as an Anthropic-compatible POST /v1/messages endpoint. "
        "Point the SDK at it with base_url. The fixture is chosen by the x-mendstream-fixture header, by "
        "matching the request body against captured requests, or in request order.",
    )
    p.add_argument("dir", help="directory of *.sse fixtures (with optional *.capture.json sidecars)")
    p.add_argument("--port", type=int, default=8765, help="port (0: pick a free one; default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--pace", choices=["fast", "captured"], default="fast", help="replay the captured timing or not"
    )
    p.add_argument("--speed", type=float, default=1.0, help="with --pace captured: speed factor (2 = twice)")
    p.add_argument(
        "--select", choices=["auto", "header", "body", "order"], default="auto", help="how to choose fixtures"
    )
    p.add_argument("--no-cycle", action="store_true", help="in order mode, answer 404 after the last fixture")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "capture",
        help="make a real streaming request and save the response as a fixture",
        description="Send the Messages API request in BODY (a JSON file) with \"stream\": true and save the "
        "exact response bytes to OUTPUT (default: BODY with .sse) plus a .capture.json sidecar. The API key "
        "is read from the environment and never written.",
    )
    p.add_argument("body", help="JSON file with the request body")
    p.add_argument("-o", "--output", help="where to write the .sse fixture")
    p.add_argument("--base-url", help="endpoint (default: $ANTHROPIC_BASE_URL or https://api.anthropic.com)")
    p.add_argument("--api-key-env", default="ANTHROPIC_API_KEY", help="variable holding the x-api-key")
    p.add_argument("--auth-token-env", help="variable holding a bearer token (instead of an API key)")
    p.add_argument("--no-auth", action="store_true", help="send no credential (local servers)")
    p.add_argument("-H", "--header", action="append", default=[], help="extra header 'name: value'")
    p.add_argument("--print", action="store_true", help="print the text as it streams")
    p.set_defaults(func=cmd_capture)

    try:
        cache_cli: Any = importlib.import_module("mendstream.cache.cli")
    except ImportError:
        cache_cli = None
    add = getattr(cache_cli, "add_subcommands", None)
    if add is not None:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = func(args)
    except CLIError as exc:
        print(f"mendstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status
