# Recording real traffic as fixtures. A CaptureWriter tees the exact response bytes to `NAME.sse` as they
# arrive and, when the stream ends, writes a JSON sidecar `NAME.capture.json` (chunk sizes and arrival
# times, status, response headers, request body). Secrets never reach the disk: headers, query parameters
# and JSON fields named like a secret are removed, and values that look like Anthropic keys are redacted.
# No HTTP library is imported here; transports hand over plain bytes, mappings and numbers.
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "CAPTURE_FORMAT",
    "CaptureWriter",
    "is_secret_name",
    "redact_secret_values",
    "scrub_headers",
    "scrub_json",
    "scrub_url",
    "sidecar_path",
]

CAPTURE_FORMAT = "mendstream-capture/1"
"""Value of the sidecar's ``format`` field; bumped when the sidecar layout changes incompatibly."""

Outcome = Literal["complete", "closed", "error"]

# Words that make a header or field name a secret. Names are split into lowercase words on any
# non-alphanumeric character and on camelCase humps, so `x-api-key`, `apiKey`, `AWS_SECRET_ACCESS_KEY`,
# `Proxy-Authorization` and `set-cookie` all match while `max_tokens` or `input_tokens` do not ("tokens",
# plural, is how the Messages API counts usage; a credential is "token").
_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "secrets",
        "token",
    }
)
# "<something> key" is a secret (api_key, access-key, private_key); a bare field named "key" is not, so a
# tool schema with a "key" property survives.
_KEY_SUFFIX_WORDS = frozenset({"key", "keys"})
_WORD_SPLIT = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])")
# Anthropic keys and bearer tokens that appear as values under innocent names.
_SECRET_VALUE = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}")
_REDACTED = "[REDACTED]"


def is_secret_name(name: str) -> bool:
    """True if a header, query parameter or JSON field called ``name`` probably holds a secret."""
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return len(words) >= 2 and words[-1] in _KEY_SUFFIX_WORDS


def redact_secret_values(text: str) -> str:
    """Replace substrings that look like API keys or bearer credentials with ``[REDACTED]``."""
    return _SECRET_VALUE.sub(_REDACTED, text)


def scrub_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """Headers without secrets, names lowercased; repeated headers are joined with ``", "``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if is_secret_name(key):
            continue
        value = redact_secret_values(value)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def scrub_url(url: str) -> str:
    """``url`` without userinfo and without query parameters named like secrets."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, v) for k, v in pairs if not is_secret_name(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_json(value: Any) -> Any:
    """A deep copy of a JSON-like value with secret-named object fields removed and key-like strings redacted.

    Runs in O(size of ``value``). Non-JSON leaves (e.g. SDK sentinels) are turned into their ``repr``.
    """
    if isinstance(value, Mapping):
        return {str(k): scrub_json(v) for k, v in value.items() if not is_secret_name(str(k))}
    if isinstance(value, list | tuple):
        return [scrub_json(v) for v in value]
    if isinstance(value, str):
        return redact_secret_values(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


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

    Every chunk is flushed to disk as it arrives, so a capture interrupted by a crash keeps its bytes.
    """

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
    ) -> None:
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = self.path.open("wb")
        self._request: dict[str, Any] = {
            "method": method,
            "url": scrub_url(url) if url else None,
            "headers": scrub_headers(request_headers) if request_headers is not None else {},
            "body": scrub_json(request_body),
        }
        self._transport = transport
        self._t_request = started_at if started_at is not None else time.perf_counter()
        self._t_response: float | None = None
        self._status: int | None = None
        self._response_headers: dict[str, str] = {}
        self._chunks: list[list[float]] = []
        self._total = 0
        self.finished = False

    def start_response(self, status: int, headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        """Record the response status and (scrubbed) headers; chunk times count from this call."""
        self._t_response = time.perf_counter()
        self._status = status
        self._response_headers = scrub_headers(headers)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the fixture file exactly as received and note its size and arrival time."""
        if self._file is None or not chunk:
            return
        now = time.perf_counter()
        if self._t_response is None:
            self._t_response = now
        self._file.write(chunk)
        self._file.flush()
        self._total += len(chunk)
        self._chunks.append([len(chunk), round((now - self._t_response) * 1000.0, 3)])

    def finish(self, outcome: Outcome = "complete", error: BaseException | None = None) -> None:
        """Close the fixture file and write the sidecar. Idempotent.

        ``outcome`` says how the body ended: ``"complete"`` (read to EOF), ``"closed"`` (the consumer
        stopped early, so the fixture is a prefix of the response) or ``"error"`` (the transport failed;
        ``error`` is described in the sidecar, with secret-looking values redacted).
        """
        if self.finished:
            return
        self.finished = True
        if self._file is not None:
            self._file.close()
            self._file = None
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
        }
        if error is not None:
            sidecar["error"] = redact_secret_values(f"{type(error).__name__}: {error}")
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.sidecar)
