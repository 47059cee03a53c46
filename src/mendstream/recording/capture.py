# Recording real traffic as fixtures. A CaptureWriter tees the response bytes to `NAME.sse` as they arrive
# and, when the stream ends, writes a JSON sidecar `NAME.capture.json` (chunk sizes and arrival times,
# status, response headers, request body). Secrets never reach the disk: the scrubbing (by name and by value,
# in the URL, headers, request body, response body and error descriptions, and across the events of a
# stream) is mendstream.recording.scrub's, re-exported here; the body goes through its BodyScrubber, whose
# masks keep the body's length, so chunk sizes and byte offsets stay true. Files are created 0600 without
# following symlinks (mendstream.recording.files), and a capture stops at a size cap with a note.
# No HTTP library is imported here; transports hand over plain bytes, mappings and numbers.
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from mendstream.recording.files import create_private, write_private
from mendstream.recording.scrub import (
    SECRET_VALUE_PATTERNS,
    BodyScrubber,
    add_secret_pattern,
    is_secret_name,
    is_secret_query_name,
    redact_secret_bytes,
    redact_secret_values,
    scrub_headers,
    scrub_json,
    scrub_url,
)

__all__ = [
    "CAPTURE_FORMAT",
    "DEFAULT_MAX_CAPTURE_BYTES",
    "SECRET_VALUE_PATTERNS",
    "CaptureWriter",
    "add_secret_pattern",
    "is_secret_name",
    "is_secret_query_name",
    "redact_secret_bytes",
    "redact_secret_values",
    "scrub_headers",
    "scrub_json",
    "scrub_url",
    "sidecar_path",
]

CAPTURE_FORMAT = "mendstream-capture/1"
"""Value of the sidecar's ``format`` field; bumped when the sidecar layout changes incompatibly."""
DEFAULT_MAX_CAPTURE_BYTES = 64 * 1024 * 1024
"""The default size cap of one capture's body (see :class:`CaptureWriter`)."""
_MAX_CHUNK_RECORDS = 200_000  # chunk entries a sidecar keeps; later chunks are merged into the last one

Outcome = Literal["complete", "closed", "error"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the sidecar of the capture at ``path`` lives: ``x.sse`` → ``x.capture.json``."""
    p = Path(path)
    stem = p.name[: -len(".sse")] if p.name.endswith(".sse") else p.name
    return p.with_name(stem + ".capture.json")


class CaptureWriter:
    """Tees a response body to ``path`` as it arrives and writes the sidecar when finished.

    Usage: construct before the response body is read (``request_body`` and ``request_headers`` are
    scrubbed immediately, so nothing secret is held longer than needed), call :meth:`start_response` when
    the status and headers are known, :meth:`write` for every body chunk in arrival order, and
    :meth:`finish` exactly once (further calls are ignored). Chunk times are milliseconds since
    :meth:`start_response`; ``headers_ms`` is the time from ``started_at`` (a ``time.perf_counter()``
    value taken when the request was sent; default: construction) to the headers.

    Body bytes go through a :class:`~mendstream.recording.scrub.BodyScrubber`: credentials are masked
    (same length, so the sidecar's chunk sizes still add up to the file's size), also when the model streams
    one in pieces. Bytes are written and flushed as soon as the scrubber releases them, so a capture
    interrupted by a crash keeps them; it holds back only what may still be part of a secret (at most its
    ``hold_limit``, 4 MiB, plus one line of up to 1 MiB; past that it masks, fail closed). The sidecar's
    ``scrub`` field counts the bytes masked (``forced_bytes``: masked that way).

    Files: created with mode 0600, never through a symlink (see :mod:`mendstream.recording.files`): a file,
    symlink or hard link already at ``path`` is replaced, not followed or written into. With ``dir_fd`` (an
    open directory) the files are created relative to it under ``path``'s name, and with ``exclusive`` an
    existing name is a ``FileExistsError`` (:class:`~mendstream.recording.files.CaptureDirectory` uses both).

    ``max_bytes`` (default :data:`DEFAULT_MAX_CAPTURE_BYTES`, 64 MiB; None: no cap) caps the body written:
    past it the capture stops (the stream itself is not affected) and the sidecar's ``truncated`` field says
    at how many bytes and how many more arrived. The sidecar keeps at most 200,000 chunk entries; later
    chunks are added to the last entry. A failure to write the body (a full disk) stops the capture, not
    the stream: the sidecar's ``capture_error`` says why.
    """

    HOLD_LIMIT = 4 * 1024 * 1024
    """Most body bytes held back by the scrubber before it masks rather than waits (plus one line)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        request_body: Any = None,
        request_headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        method: str = "POST",
        url: str | None = None,
        transport: str | None = None,
        started_at: float | None = None,
        max_bytes: int | None = DEFAULT_MAX_CAPTURE_BYTES,
        dir_fd: int | None = None,
        exclusive: bool = False,
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            from mendstream.errors import UsageError

            raise UsageError(f"max_bytes must be None or an int >= 0; got {max_bytes!r}")
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self._dir_fd = dir_fd
        if dir_fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._request: dict[str, Any] = {
            "method": method,
            "url": scrub_url(url) if url else None,
            "headers": scrub_headers(request_headers) if request_headers is not None else {},
            "body": scrub_json(request_body),
        }
        self._file: IO[bytes] | None = create_private(self.path, dir_fd=dir_fd, exclusive=exclusive)
        self._scrubber = BodyScrubber(hold_limit=self.HOLD_LIMIT)
        self._max_bytes = max_bytes
        self._transport = transport
        self._t_request = started_at if started_at is not None else time.perf_counter()
        self._t_response: float | None = None
        self._status: int | None = None
        self._response_headers: dict[str, str] = {}
        self._chunks: list[list[float]] = []
        self._total = 0  # body bytes captured
        self._dropped = 0  # body bytes that arrived past max_bytes
        self._failure: str | None = None  # why writing the body stopped, if it failed
        self.finished = False

    def start_response(self, status: int, headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        """Record the response status and (scrubbed) headers; chunk times count from this call."""
        self._t_response = time.perf_counter()
        self._status = status
        self._response_headers = scrub_headers(headers)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (scrubbed) to the fixture file and note its size and arrival time."""
        if not chunk or self.finished:
            return
        if self._file is None:  # stopped at max_bytes (or by a write error)
            self._dropped += len(chunk)
            return
        now = time.perf_counter()
        if self._t_response is None:
            self._t_response = now
        capped = self._max_bytes is not None and self._total + len(chunk) > self._max_bytes
        if capped:
            assert self._max_bytes is not None
            keep = self._max_bytes - self._total
            self._dropped += len(chunk) - keep
            chunk = chunk[:keep]
        if chunk:
            self._emit(self._scrubber.feed(chunk))
            self._total += len(chunk)
            ms = round((now - self._t_response) * 1000.0, 3)
            if len(self._chunks) < _MAX_CHUNK_RECORDS:
                self._chunks.append([len(chunk), ms])
            else:
                self._chunks[-1][0] += len(chunk)
        if capped:
            self._close_body(cut=True)

    def _emit(self, data: bytes) -> None:
        if data and self._file is not None:
            try:
                self._file.write(data)
                self._file.flush()
            except OSError as exc:  # a full disk stops the capture, not the stream it tees
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self._failure = self._failure or redact_secret_values(f"{type(exc).__name__}: {exc}")
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _close_body(self, *, cut: bool) -> None:
        if self._file is None:
            return
        self._emit(self._scrubber.end(cut=cut))
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._fail(exc)
            self._file = None

    def finish(self, outcome: Outcome = "complete", error: BaseException | None = None) -> None:
        """Close the fixture file and write the sidecar. Idempotent.

        ``outcome`` says how the body ended: ``"complete"`` (read to EOF), ``"closed"`` (the consumer
        stopped early, so the fixture is a prefix of the response) or ``"error"`` (the transport failed;
        ``error`` is described in the sidecar, with secret-looking values redacted).
        """
        if self.finished:
            return
        self.finished = True
        self._close_body(cut=outcome != "complete")
        t_resp = self._t_response if self._t_response is not None else time.perf_counter()
        sidecar: dict[str, Any] = {
            "format": CAPTURE_FORMAT,
            "captured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "transport": self._transport,
            "outcome": outcome,
            "request": self._request,
            "response": {
                "status": self._status,
                "headers": self._response_headers,
                "headers_ms": round((t_resp - self._t_request) * 1000.0, 3),
            },
            "body_bytes": self._total,
            "chunks": self._chunks,
            "scrub": {"masked_bytes": self._scrubber.masked_bytes, "forced_bytes": self._scrubber.forced_bytes},
        }
        if self._max_bytes is not None and self._total >= self._max_bytes and (self._dropped or outcome != "complete"):
            sidecar["truncated"] = {
                "max_bytes": self._max_bytes,
                "bytes_not_captured": self._dropped,
                "note": "the capture stopped at its size cap; the stream went on",
            }
        if error is not None:
            sidecar["error"] = redact_secret_values(f"{type(error).__name__}: {error}")
        if self._failure is not None:
            sidecar["capture_error"] = self._failure
        try:
            text = json.dumps(sidecar, indent=1, ensure_ascii=False)
        except RecursionError:  # a request body nested deeper than json can write: record that instead
            self._request["body"] = "[request body nested too deeply to record]"
            text = json.dumps(sidecar, indent=1, ensure_ascii=False)
        write_private(self.sidecar, (text + "\n").encode("utf-8"), dir_fd=self._dir_fd)
