# How transports start a capture (mendstream.recording.capture.CaptureWriter) for one request: the writer for a
# streamed response, the record of a response that failed before streaming, and the request body as sent.
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mendstream.recording.capture import CaptureWriter

__all__ = ["CapturePath", "attempt_capture_path", "capture_error_response", "capture_writer", "request_json"]

CapturePath = str | PathLike[str]


def capture_writer(
    capture: CapturePath | None,
    *,
    request_body: Any,
    request_headers: Iterable[tuple[str, str]] | Mapping[str, str],
    url: str | None,
    transport: str,
    started_at: float | None = None,
) -> CaptureWriter | None:
    """A :class:`~mendstream.recording.capture.CaptureWriter` for ``capture``, or ``None`` when not capturing."""
    if capture is None:
        return None
    from mendstream.recording.capture import CaptureWriter

    return CaptureWriter(
        capture,
        request_body=request_body,
        request_headers=request_headers,
        url=url,
        transport=transport,
        started_at=started_at,
    )


def capture_error_response(
    capture: CaptureWriter | None, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> None:
    """Record a response that failed before streaming (its whole body is known) and finish the capture."""
    if capture is None:
        return
    capture.start_response(status, headers)
    capture.write(body)
    capture.finish("complete")


def request_json(content: bytes | None, fallback: Any) -> Any:
    """The JSON request body that was sent (``content``), or ``fallback`` when it is not JSON."""
    if content:
        try:
            return json.loads(content)
        except (ValueError, RecursionError):
            pass
    return fallback


def attempt_capture_path(capture: CapturePath | None, number: int) -> CapturePath | None:
    """Where attempt ``number`` is captured: ``capture`` itself for the first, then ``NAME.attempt-N.EXT``
    beside it (each with its own ``*.capture.json`` sidecar)."""
    if capture is None or number == 1:
        return capture
    path = Path(capture)
    return path.with_name(f"{path.stem}.attempt-{number}{path.suffix}")
