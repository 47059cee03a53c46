# Recording real traffic as fixtures. A CaptureWriter tees the response bytes to `NAME.sse` as they arrive
# and, when the stream ends, writes a JSON sidecar `NAME.capture.json` (chunk sizes and arrival times,
# status, response headers, request body). Secrets never reach the disk, scrubbed by name and by value
# everywhere a capture writes: headers, query parameters and JSON fields named like a secret are removed,
# and values that look like credentials (see SECRET_VALUE_PATTERNS) are masked in the URL, every header,
# the request body, the response body (error bodies included) and error descriptions. In the body the mask
# has the secret's length, so chunk sizes and byte offsets stay true. `add_secret_pattern` adds rules.
# No HTTP library is imported here; transports hand over plain bytes, mappings and numbers.
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "CAPTURE_FORMAT",
    "SECRET_VALUE_PATTERNS",
    "CaptureWriter",
    "add_secret_pattern",
    "is_secret_name",
    "is_secret_query_name",
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
        "session",
        "token",
    }
)
# Query parameters carry credentials under short names that are harmless as JSON field names (a tool
# schema's "key", a thinking block's "signature"), so the URL has its own, wider list.
_SECRET_QUERY_NAMES = frozenset(
    {
        "key",
        "sig",
        "signature",
        "token",
        "code",
        "secret",
        "password",
        "pass",
        "pwd",
        "auth",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
    }
)
# "<something> key" is a secret (api_key, access-key, private_key); a bare field named "key" is not, so a
# tool schema with a "key" property survives.
_KEY_SUFFIX_WORDS = frozenset({"key", "keys"})
_WORD_SPLIT = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])")
# Credentials recognised by their value, whatever field, header or text they appear in. Every quantifier
# is bounded and every pattern starts with a literal, so a scan is linear in the text's length.
SECRET_VALUE_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{8,400}",  # Anthropic API / admin keys
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
    r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{36,255}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}",  # GitHub fine-grained tokens
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{4,4096}\.[A-Za-z0-9_\-]{4,8192}\.[A-Za-z0-9_\-]{0,4096}",  # JWTs
    r"(?i:bearer)[ \t]{1,8}(?=[A-Za-z0-9._~+/=\-]{0,2047}[0-9._~+/=\-])[A-Za-z0-9._~+/=\-]{8,2048}",
)
# `Basic` credentials are base64("user:password"); they are masked only when they decode to that shape,
# so prose ("Basic understanding") survives.
_BASIC = re.compile(r"(?<![A-Za-z0-9])Basic[ \t]{1,8}([A-Za-z0-9+/]{8,2048}={0,2})")
_REDACTED = "[REDACTED]"
_rules_lock = threading.Lock()
_extra_patterns: list[str] = []


def _compile(patterns: list[str]) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    text = "|".join(f"(?:{p})" for p in patterns)
    return re.compile(text), re.compile(text.encode("ascii"))


_SECRET_VALUE, _SECRET_VALUE_BYTES = _compile(list(SECRET_VALUE_PATTERNS))
_BASIC_BYTES = re.compile(_BASIC.pattern.encode("ascii"))


def add_secret_pattern(pattern: str) -> None:
    """Also scrub every value matching ``pattern`` (an ASCII regular expression) from every later capture.

    The hook for custom credential formats (an internal gateway's keys, a tenant id). Keep the pattern
    linear: start it with a literal and bound its quantifiers. Raises ``re.error`` for an invalid pattern.
    """
    global _SECRET_VALUE, _SECRET_VALUE_BYTES
    re.compile(pattern)
    with _rules_lock:
        _extra_patterns.append(pattern)
        _SECRET_VALUE, _SECRET_VALUE_BYTES = _compile([*SECRET_VALUE_PATTERNS, *_extra_patterns])


def _is_basic_credential(token: bytes) -> bool:
    try:
        return b":" in base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return False


def _mask(length: int) -> bytes:
    """A mask of exactly ``length`` bytes (``[REDACTED]`` padded or cut), so offsets stay true."""
    if length >= len(_REDACTED):
        return (b"[REDACTED" + b"*" * (length - len(_REDACTED)) + b"]")
    return b"*" * length


def redact_secret_bytes(data: bytes) -> bytes:
    """``data`` with every credential-looking value masked by a mask of the same length."""
    data = _SECRET_VALUE_BYTES.sub(lambda m: _mask(len(m.group(0))), data)
    return _BASIC_BYTES.sub(
        lambda m: m.group(0)[: m.start(1) - m.start(0)] + _mask(len(m.group(1)))
        if _is_basic_credential(m.group(1)) else m.group(0),
        data,
    )


def is_secret_name(name: str) -> bool:
    """True if a header, query parameter or JSON field called ``name`` probably holds a secret.

    Words such as ``token``, ``secret``, ``password``, ``auth``, ``cookie``, ``session``, and
    ``<something> key`` (``api_key``, ``access-key``), split on punctuation and camelCase humps.
    """
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return len(words) >= 2 and words[-1] in _KEY_SUFFIX_WORDS


def is_secret_query_name(name: str) -> bool:
    """True if a URL query parameter called ``name`` probably holds a credential (``key``, ``sig``, ...)."""
    return name.lower() in _SECRET_QUERY_NAMES or is_secret_name(name)


def redact_secret_values(text: str) -> str:
    """Replace substrings that look like credentials (see ``SECRET_VALUE_PATTERNS``, ``Basic`` values and
    patterns added with :func:`add_secret_pattern`) with ``[REDACTED]``."""
    text = _SECRET_VALUE.sub(_REDACTED, text)
    return _BASIC.sub(
        lambda m: m.group(0)[: m.start(1) - m.start(0)] + _REDACTED
        if _is_basic_credential(m.group(1).encode("ascii")) else m.group(0),
        text,
    )


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
    """``url`` without userinfo, without query parameters named like credentials (``key``, ``sig``,
    ``token``, ``signature``, ``X-Amz-Signature``, ...), and with credential-looking values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, redact_secret_values(v)) for k, v in pairs if not is_secret_query_name(k)])
    return urlunsplit((parts.scheme, netloc, redact_secret_values(parts.path), query, parts.fragment))


def scrub_json(value: Any) -> Any:
    """A deep copy of a JSON-like value with secret-named object fields removed and key-like strings redacted.

    Runs in O(size of ``value``) with an explicit stack, so any nesting depth works (no RecursionError).
    Non-JSON leaves (e.g. SDK sentinels) are turned into their ``repr``.
    """
    root: list[Any] = [None]
    # Each entry: (container to fill, slot in it, value to copy into that slot).
    todo: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while todo:
        target, slot, item = todo.pop()
        if isinstance(item, Mapping):
            copy: dict[str, Any] = {}
            target[slot] = copy
            for k, v in item.items():
                if not is_secret_name(str(k)):
                    copy[str(k)] = None  # keep the original field order
                    todo.append((copy, str(k), v))
        elif isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            target[slot] = items
            todo.extend((items, i, v) for i, v in enumerate(item))
        elif isinstance(item, str):
            target[slot] = redact_secret_values(item)
        elif item is None or isinstance(item, bool | int | float):
            target[slot] = item
        else:
            target[slot] = redact_secret_values(repr(item))
    return root[0]


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

    Body bytes are written with credential-looking values masked (same length, so the sidecar's chunk
    sizes still add up to the file's size). Complete lines are written and flushed as they arrive, so a
    capture interrupted by a crash keeps its bytes; the unfinished last line is held back (at most
    ``HOLD_LIMIT`` bytes) until its end arrives, so a secret split across chunks is still caught.
    """

    HOLD_LIMIT = 1 << 20
    """Most bytes of an unfinished line held back before they are scrubbed and written anyway."""
    _OVERLAP = 8192  # kept back when a held line is flushed early: longer than any pattern's match

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
        self._held = bytearray()
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
        self._held += chunk
        cut = self._held.rfind(b"\n") + 1
        if cut == 0 and len(self._held) > self.HOLD_LIMIT:
            cut = self._safe_cut(len(self._held) - self._OVERLAP)
        if cut:
            self._file.write(redact_secret_bytes(bytes(self._held[:cut])))
            del self._held[:cut]
            self._file.flush()
        self._total += len(chunk)
        self._chunks.append([len(chunk), round((now - self._t_response) * 1000.0, 3)])

    def _safe_cut(self, cut: int) -> int:
        """``cut``, moved back to the start of any secret that spans it (so no match is split)."""
        start = max(0, cut - self._OVERLAP)
        window = bytes(self._held[start : cut + self._OVERLAP])
        for match in _SECRET_VALUE_BYTES.finditer(window):
            if start + match.start() < cut < start + match.end():
                return start + match.start()
        return cut

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
            if self._held:
                self._file.write(redact_secret_bytes(bytes(self._held)))
                self._held.clear()
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
        try:
            text = json.dumps(sidecar, indent=1, ensure_ascii=False)
        except RecursionError:  # a request body nested deeper than json can write: record that instead
            self._request["body"] = "[request body nested too deeply to record]"
            text = json.dumps(sidecar, indent=1, ensure_ascii=False)
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(self.sidecar)
