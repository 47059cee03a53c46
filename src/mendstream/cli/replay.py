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


def _not_sse_reason(path: Path) -> str | None:
    """Why ``path`` cannot be a recorded stream (an SSE body in which the core's decoder finds no event with
    a ``data:`` line, and not an AWS event-stream), or None if it may be one. Reads until the first event."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    from mendstream.core.eventstream import looks_like_event_stream
    from mendstream.core.sse import SSEDecoder
    from mendstream.errors import BufferLimitError

    with path.open("rb") as fh:
        head = fh.read(4096)
        if looks_like_event_stream(head[:12]):
            return None  # a captured Bedrock body (AWS event-stream): replay reads it too
        decoder = SSEDecoder()
        try:
            chunk = head
            while chunk:
                if decoder.feed(chunk):
                    return None
                chunk = fh.read(1 << 16)
        except BufferLimitError:
            return None  # one line longer than any event may be: replay says so itself
        decoder.end()
        if decoder.unfinished_event is not None:
            return None  # a last event without its blank line: replay reads it
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
    from mendstream.streaming.replay import replay

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
                    dump(_event_dict(event, snapshots=args.snapshots), out, indent=None)
    except StreamError as err:
        status = EXIT_FAILED
        print(f"mendstream replay: {path}: {type(err).__name__}: {err}", file=sys.stderr)
        if err.snapshot is not None:
            print("mendstream replay: the partial message follows", file=sys.stderr)
            dump(err.snapshot, out, indent=indent)
    if status == EXIT_OK:
        dump(stream.message, out, indent=indent)
    if args.repairs:
        dump({"repairs": [r.to_dict() for r in stream.repairs]}, out, indent=indent)
    return status




def add_subcommand(sub: Any) -> None:
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
