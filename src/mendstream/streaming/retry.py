# The retry policy and its vocabulary: `Retry` (how many attempts, how long to wait, which faults, what to do
# after content was shown), the per-attempt record `Attempt`, the `RestartEvent` a consumer sees before a
# restarted attempt, and `classify`, which names the fault behind any exception a transport can raise. No I/O
# and no HTTP library here: exceptions are recognised by their mendstream class or by duck-typed attributes
# (`status_code`, `response.headers`), so the SDK and httpx transports share one classification.
from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mendstream.core.events import RestartEvent
from mendstream.errors import APIStreamError, IncompleteStreamError, StreamStalledError, UsageError

__all__ = [
    "DEFAULT_RETRY_ON",
    "Attempt",
    "Fault",
    "OnPartial",
    "RestartEvent",
    "Retry",
    "check_timeout",
    "classify",
]

OnPartial = Literal["raise", "restart", "continue"]
AttemptMode = Literal["first", "retry", "restart", "continue", "resume"]

# Fault kinds that are not an API error type or an HTTP status.
_LOCAL_KINDS = frozenset({"read_error", "truncated", "stalled", "connection"})
# Error types a mid-stream `error` event (or an error body) may carry that are worth another attempt.
_RETRIABLE_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
# Never retried, whatever retry_on says: the same request will fail the same way.
_NEVER_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error"})
_NEVER_STATUSES = frozenset({400, 401, 403, 404, 413})
MAX_RETRY_AFTER = 60.0
"""A ``retry-after`` longer than this (seconds) is not waited for: the fault is not retried and the error is
raised (or, at the HTTP boundary, passed on with its header), as the SDK too stops honouring it past 60 s."""

DEFAULT_RETRY_ON: frozenset[str | int] = frozenset(
    {"overloaded_error", "api_error", "read_error", "truncated", "stalled", "connection", 429, 500, 502, 503,
     504, 529}
)
"""What ``Retry()`` retries: overloaded/api error events, transport errors, truncation, stalls, and the
statuses 429, 500, 502, 503, 504 and 529 answered before streaming."""

_ON_PARTIAL = ("raise", "restart", "continue")
_JITTER = ("full", "none")


def check_timeout(name: str, value: object) -> float | None:
    """``value`` as a positive float, or None; ``UsageError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a positive number of seconds or None, not {value!r}")
    return float(value)


def _check_retry_on(values: Iterable[str | int]) -> frozenset[str | int]:
    if isinstance(values, (str, int)):
        raise UsageError(f"retry_on must be a collection of fault kinds, not {values!r}")
    out: set[str | int] = set()
    allowed = sorted(_LOCAL_KINDS | _RETRIABLE_TYPES)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UsageError(f"retry_on: {value!r} is not a fault kind (allowed: {allowed} or an HTTP status)")
        if isinstance(value, int):
            if value in _NEVER_STATUSES or not 408 <= value <= 599:
                raise UsageError(
                    f"retry_on: HTTP status {value} cannot be retried (allowed: 408..599 except "
                    f"{sorted(_NEVER_STATUSES)})"
                )
        elif value in _NEVER_TYPES:
            raise UsageError(f"retry_on: {value!r} is never retried (the same request fails the same way)")
        elif value not in _LOCAL_KINDS and value not in _RETRIABLE_TYPES:
            raise UsageError(f"retry_on: unknown fault kind {value!r} (allowed: {allowed} or an HTTP status)")
        out.add(value)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Retry:
    """How a stream survives failures.

    Args:
        max_attempts: attempts in all, the first included (>= 1).
        backoff: the first retry's delay bound in seconds; attempt ``n`` waits up to ``backoff * 2**(n-2)``,
            at most ``cap``. With ``jitter="full"`` the wait is uniform in ``[0, bound]``; ``"none"`` waits
            the bound. A ``retry-after`` / ``retry-after-ms`` header replaces the computed wait.
        cap: the largest computed wait, in seconds.
        deadline: seconds from the first request after which no attempt starts (None: no deadline). A wait
            that would end past the deadline is not slept; the last error is raised instead.
        retry_on: the fault kinds retried (see :data:`DEFAULT_RETRY_ON`): error types (``"overloaded_error"``,
            ``"api_error"``, ``"rate_limit_error"``, ``"timeout_error"``), ``"read_error"`` (a transport
            error while reading), ``"truncated"``, ``"stalled"``, ``"connection"`` (no response), and HTTP
            statuses answered before streaming. Invalid requests, authentication and permission errors are
            never retried; ``x-should-retry: false`` vetoes a retry, ``true`` allows one for any status; a
            ``retry-after`` over :data:`MAX_RETRY_AFTER` (60 s) vetoes one too.
        on_partial: what to do when the failed attempt had already delivered content: ``"raise"``,
            ``"restart"`` (a :class:`RestartEvent`, then the whole stream again) or ``"continue"`` (the
            partial text sent back as an assistant prefill, the stream continuing where it stopped).
        seed: seeds the jitter (None: unpredictable), so a test can reproduce the waits.

    Raises:
        UsageError: a value outside what is allowed, naming it.
    """

    max_attempts: int = 3
    backoff: float = 0.5
    cap: float = 8.0
    deadline: float | None = None
    retry_on: frozenset[str | int] = DEFAULT_RETRY_ON
    on_partial: OnPartial = "raise"
    jitter: Literal["full", "none"] = "full"
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise UsageError(f"max_attempts must be an integer >= 1, not {self.max_attempts!r}")
        for name in ("backoff", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise UsageError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        check_timeout("deadline", self.deadline)
        if self.on_partial not in _ON_PARTIAL:
            raise UsageError(f"on_partial must be one of {list(_ON_PARTIAL)}, not {self.on_partial!r}")
        if self.jitter not in _JITTER:
            raise UsageError(f"jitter must be one of {list(_JITTER)}, not {self.jitter!r}")
        object.__setattr__(self, "retry_on", _check_retry_on(self.retry_on))
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def retries(self, fault: Fault) -> bool:
        """Whether ``fault`` is one this policy retries (the header hint ``x-should-retry`` wins)."""
        if fault.error_type in _NEVER_TYPES or fault.status in _NEVER_STATUSES:
            return False
        if fault.retry_after is not None and fault.retry_after > MAX_RETRY_AFTER:
            return False
        if fault.should_retry is not None:
            return fault.should_retry
        key: str | int = fault.status if fault.kind == "status" and fault.status is not None else fault.kind
        return key in self.retry_on

    def delay(self, retry_number: int, fault: Fault | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the second attempt): the fault's
        ``retry_after`` when it has one, else exponential backoff with jitter, capped."""
        if fault is not None and fault.retry_after is not None:
            return fault.retry_after
        bound = min(self.cap, self.backoff * (2.0 ** (retry_number - 1)))
        if self.jitter == "none":
            return bound
        return self._rng.uniform(0.0, bound)


@dataclass(frozen=True, slots=True)
class Fault:
    """What went wrong in one attempt, as the retry policy sees it.

    ``kind`` is an error type (``"overloaded_error"``), ``"status"`` (see ``status``), ``"read_error"``,
    ``"truncated"``, ``"stalled"``, ``"connection"`` or ``"other"`` (never retried).
    """

    kind: str
    status: int | None = None
    error_type: str | None = None
    retry_after: float | None = None
    should_retry: bool | None = None
    complete: bool = False


def _header(exc: BaseException, name: str) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _retry_after(exc: BaseException) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date) from the error's response, >= 0."""
    raw_ms = _header(exc, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = _header(exc, "retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            import time
            from email.utils import parsedate_to_datetime  # only for the rare HTTP-date form

            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _should_retry(exc: BaseException) -> bool | None:
    value = _header(exc, "x-should-retry")
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


def _mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _stopped(snapshot: Any) -> bool:
    return isinstance(snapshot, dict) and snapshot.get("stop_reason") is not None


def classify(exc: BaseException) -> Fault:
    """The :class:`Fault` behind ``exc``: a mendstream error, an HTTP status error (mendstream's or the
    SDK's), an HTTP library's transport error, or anything else (``kind == "other"``).

    ``complete`` is True when the message's stop reason had already arrived: the stream is complete and
    must not be retried.
    """
    snapshot = getattr(exc, "snapshot", None)
    complete = _stopped(snapshot)
    if isinstance(exc, StreamStalledError):
        return Fault("stalled", complete=complete)
    if isinstance(exc, APIStreamError):
        return Fault(exc.error_type, error_type=exc.error_type, retry_after=_retry_after(exc), complete=complete)
    if isinstance(exc, IncompleteStreamError):
        kind = "read_error" if getattr(exc, "transport_error", None) is not None else "truncated"
        return Fault(kind, complete=complete)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
        error_type = getattr(exc, "error_type", None)
        if error_type is None:
            body = getattr(exc, "body", None)
            error = body.get("error") if isinstance(body, dict) else None
            error_type = error.get("type") if isinstance(error, dict) else None
        return Fault(
            "status",
            status=status,
            error_type=error_type if isinstance(error_type, str) else None,
            retry_after=_retry_after(exc),
            should_retry=_should_retry(exc),
        )
    names = _mro_names(exc)
    if "APIConnectionError" in names or "TransportError" in names or isinstance(exc, ConnectionError):
        return Fault("connection")
    return Fault("other")


@dataclass(slots=True)
class Attempt:
    """One attempt of a resilient stream, as recorded in ``stream.attempts``.

    Attributes:
        number: 1 for the first request.
        mode: ``"first"``, ``"retry"`` (nothing had been shown: invisible), ``"restart"``, ``"continue"``, or
            ``"resume"`` (the next request of a turn that paused with ``pause_turn``: ``resume_pause_turn``).
        delay: seconds slept before this attempt.
        error: what ended it (None: it succeeded, or is still running).
        bytes_received: body bytes read.
        events_delivered: events handed to the consumer from this attempt.
        note: why a continuation fell back to a restart, when it did.
    """

    number: int
    mode: AttemptMode
    delay: float = 0.0
    error: BaseException | None = None
    bytes_received: int = 0
    events_delivered: int = 0
    note: str | None = None
