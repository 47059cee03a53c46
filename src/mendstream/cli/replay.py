# `mendstream replay FILE`: parse a recorded stream (SSE or a captured AWS event-stream body) and print its
# events, its final message and what was repaired, as JSON.
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from mendstream.cli.common import EXIT_FAILED, EXIT_OK, CLIError, dump, input_file

__all__ = ["add_subcommand"]


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


def _section(title: str, out: TextIO) -> None:
    """A label on stderr before each part of the output, so a reader can tell where the events end and the
    message begins; stdout stays nothing but JSON (the parts a program reads are unchanged)."""
    out.flush()
    print(f"== {title}", file=sys.stderr, flush=True)


def _stream_file(name: str) -> Path:
    """The file ``replay`` reads: ``name`` as a path, or else the bundled fixture of that name (``text_basic``
    or ``text_basic.sse``), so the quick start works from an installed wheel as from a clone."""
    path = Path(name)
    if not path.exists() and path.name == name:
        from mendstream.recording.fixtures import FIXTURES

        bundled = FIXTURES / (name if name.endswith(".sse") else f"{name}.sse")
        if bundled.is_file():
            return bundled
    return input_file(path, expected="a recorded stream (a .sse file in it)")


def cmd_replay(args: argparse.Namespace) -> int:
    from mendstream.errors import StreamError
    from mendstream.recording.fixtures import not_sse_reason
    from mendstream.streaming.replay import replay

    path = _stream_file(args.file)
    try:
        reason = not_sse_reason(path)
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    if reason is not None:
        raise CLIError(f"{path} is not an SSE stream: {reason}")
    out: TextIO = sys.stdout
    indent = None if args.compact else 2
    stream = replay(path)
    status = EXIT_OK
    try:
        with stream:
            if args.events:
                _section("events (one JSON object per line)", out)
            for event in stream:
                if args.events:
                    dump(_event_dict(event, snapshots=args.snapshots), out, indent=None)
    except StreamError as err:
        status = EXIT_FAILED
        out.flush()
        print(f"mendstream replay: {path}: {type(err).__name__}: {err}", file=sys.stderr)
        if err.snapshot is not None:
            _section("partial message (the stream did not complete)", out)
            dump(err.snapshot, out, indent=indent)
    if status == EXIT_OK:
        _section("message", out)
        dump(stream.message, out, indent=indent)
    if args.repairs:
        _section(f"repairs ({len(stream.repairs)})", out)
        dump({"repairs": [r.to_dict() for r in stream.repairs]}, out, indent=indent)
    return status


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="parse a recorded .sse stream; print its events and final message as JSON",
        description="Parse a recorded stream (a .sse fixture or capture) with mendstream. Prints one JSON "
        "line per event, then the final message as JSON, then (--repairs) what was repaired; stdout holds only "
        "JSON, and a line on stderr ('== events ...', '== message', '== repairs (N)') labels each part. Exit "
        "status 1 if the stream cannot complete (the partial message is printed instead), 2 if the file is "
        "missing or not an SSE stream.",
    )
    p.add_argument("file", help="the .sse file, or the name of a bundled fixture (e.g. text_basic)")
    p.add_argument("--no-events", dest="events", action="store_false", help="print only the final message")
    p.add_argument("--repairs", action="store_true", help="also print what mendstream repaired")
    p.add_argument("--snapshots", action="store_true", help="include each event's snapshot (can be large)")
    p.add_argument("--compact", action="store_true", help="print the message (and repairs) on one line")
    p.set_defaults(func=cmd_replay)
