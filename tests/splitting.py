"""Split input at chosen points, for the "same result however the input is split" tests."""

from __future__ import annotations


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at each point (taken modulo ``len(data) + 1``), keeping empty pieces out of the middle."""
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces
