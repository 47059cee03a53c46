"""Split input at chosen points, and feed a parser the pieces, for the "same result however the input is split"
tests."""

from __future__ import annotations

from typing import Any

from mendstream import StreamError


def split_at(data: Any, points: list[int]) -> list[Any]:
    """``data`` (bytes or str) cut at each point (taken modulo ``len(data) + 1``), keeping empty pieces out of the middle."""
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def feed_all(parser: Any, chunks: list[bytes]) -> tuple[list[Any], StreamError | None]:
    """Feed ``parser`` every chunk, then end it: the events it gave (those before an error included) and the
    error it stopped with, if any."""
    events: list[Any] = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
        events += parser.end()
    except StreamError as exc:
        events += exc.events
        return events, exc
    return events, None
