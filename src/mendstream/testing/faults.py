# Fault injection: the contract between a server that replays a fixture and a plan that breaks it. A planned
# response is plain data (status, headers, timed chunks, how the body ends), independent of any HTTP library,
# so the replay server, the in-process mock transports of mendstream.testing and any later server apply the
# same plans. A plan maps (the request's ordinal, the response the server would send) to the response to send.
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Protocol

from mendstream.errors import UsageError
from mendstream.recording.fixtures import prefill_of

__all__ = [
    "SPEC_HELP",
    "Cut",
    "ErrorEvent",
    "FaultPlan",
    "HTTPError",
    "PlannedResponse",
    "RandomMix",
    "Schedule",
    "Stall",
    "Trickle",
    "Unchanged",
    "body_of",
    "continuation_body",
    "describe_fault",
    "interrupts",
    "parse_fault_spec",
    "split_events",
]

BodyEnd = Literal["close", "cut"]


@dataclass(frozen=True, slots=True)
class PlannedResponse:
    """What a server sends for one request.

    Attributes:
        status: the HTTP status.
        headers: response headers, lowercase names, in order.
        chunks: ``(delay, chunk)`` pairs: wait ``delay`` seconds, then send ``chunk``. An error status sends its
            JSON error body as the chunks.
        end: ``"close"`` finishes the body properly; ``"cut"`` drops the connection after the last chunk, so
            the client sees an incomplete body (a reset, an incomplete chunked read).
        head_delay: seconds of silence before the status line and headers (a server that accepted the request
            and says nothing at all).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[tuple[float, bytes], ...]
    end: BodyEnd = "close"
    head_delay: float = 0.0


class FaultPlan(Protocol):
    """Turns the response a server would send into the one it sends.

    ``ordinal`` counts the requests the server (or mock transport) has answered so far, from 0, so a plan can
    fail attempts 1 and 2 and let attempt 3 through. A plan must be deterministic for a given ordinal and
    response (seed any randomness), so that a failing run can be reproduced.
    """

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse: ...


# -- plans ---------------------------------------------------------------------------------------------------
# Every plan below works on the SSE events of the body it is given (split at blank lines), so the result does
# not depend on how the fixture happened to be chunked; each event becomes one chunk unless a plan says
# otherwise. All plans are frozen dataclasses: deterministic, comparable, printable.

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MAX_STALL_PINGS = 10_000
"""Most ``ping`` events one :class:`Stall` may plan (``seconds / ping_every``): each is a planned chunk."""
MAX_SEED = 2**63
"""A :class:`RandomMix` seed must lie within ``[-MAX_SEED, MAX_SEED)`` (19 digits)."""

_ERROR_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def split_events(body: bytes) -> list[bytes]:
    """``body`` split after each blank line (each piece one SSE event with its terminator; a final piece
    without one is kept). Linear in ``len(body)``."""
    out: list[bytes] = []
    start = 0
    for match in _EVENT_END.finditer(body):
        out.append(body[start : match.end()])
        start = match.end()
    if start < len(body):
        out.append(body[start:])
    return out


def body_of(response: PlannedResponse) -> bytes:
    """The response body: its chunks joined."""
    return b"".join(chunk for _, chunk in response.chunks)


def _evented(response: PlannedResponse, events: list[bytes], end: BodyEnd = "close") -> PlannedResponse:
    return replace(response, chunks=tuple((0.0, e) for e in events if e), end=end)


def _error_event(error_type: str, message: str) -> bytes:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


def _head_events(events: list[bytes], after_events: int | None, after_bytes: int | None) -> list[bytes]:
    if after_bytes is not None:
        # Whole events only: the error event starts at the last event boundary within after_bytes.
        kept, size = [], 0
        for event in events:
            size += len(event)
            if size > after_bytes:
                break
            kept.append(event)
        return kept
    return events[: after_events if after_events is not None else len(events)]


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Sends the response as it is (a schedule's "ok")."""

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        return response


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """After ``after_events`` events (or the whole events within ``after_bytes`` bytes), an ``error`` event of
    ``error_type`` ends the stream (HTTP status stays 200, as the API does)."""

    error_type: str = "overloaded_error"
    after_events: int | None = 4
    after_bytes: int | None = None
    message: str = "Overloaded"

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if response.status != 200:
            return response
        events = _head_events(split_events(body_of(response)), self.after_events, self.after_bytes)
        return _evented(response, [*events, _error_event(self.error_type, self.message)])


@dataclass(frozen=True, slots=True)
class Cut:
    """The connection drops mid-body: after ``after_bytes`` bytes; or in the middle of event number
    ``after_events + 1``; or (``in_tool_input``) in the middle of the first ``input_json_delta`` event."""

    after_bytes: int | None = None
    after_events: int | None = None
    in_tool_input: bool = False

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if response.status != 200:
            return response
        body = body_of(response)
        events = split_events(body)
        if self.after_bytes is not None:
            cut = min(self.after_bytes, len(body))
        else:
            target = len(events) - 1
            if self.in_tool_input:
                target = next((i for i, e in enumerate(events) if b'"input_json_delta"' in e), target)
            elif self.after_events is not None:
                target = min(self.after_events, len(events) - 1)
            cut = sum(len(e) for e in events[:target]) + len(events[target]) // 2
        return _evented(response, split_events(body[:cut]), end="cut")


@dataclass(frozen=True, slots=True)
class Stall:
    """After ``after_events`` events the server goes quiet for ``seconds`` (or, with ``ping_every``, sends
    only ``ping`` events that often), then sends the rest; with ``cut`` it drops the connection instead (a
    generation that never resumes, ended by some proxy's timeout). With ``headers`` the silence comes before
    anything at all, status line included (a request accepted and never answered, whatever its status);
    then the response follows, or with ``cut`` its headers and a dropped connection.

    ``ping_every`` None or 0 means no pings; otherwise at most :data:`MAX_STALL_PINGS` pings may fit in
    ``seconds``. Raises :class:`~mendstream.errors.UsageError` for a negative or non-finite number or more
    pings than that."""

    seconds: float
    after_events: int = 3
    ping_every: float | None = None
    cut: bool = False
    headers: bool = False

    def __post_init__(self) -> None:
        for name in ("seconds", "ping_every"):
            value = getattr(self, name)
            if value is None and name == "ping_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise UsageError(f"Stall.{name} must be a finite number >= 0; got {value!r}")
        if self.ping_every and self.seconds / self.ping_every > MAX_STALL_PINGS:
            raise UsageError(
                f"a stall of {self.seconds:g} s with a ping every {self.ping_every:g} s plans "
                f"{self.seconds / self.ping_every:.0f} pings; at most {MAX_STALL_PINGS} (use a longer ping "
                "interval, or ping=0 for none)"
            )

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if self.headers:
            if self.cut:
                return replace(response, head_delay=self.seconds, chunks=(), end="cut")
            return replace(response, head_delay=self.seconds)
        if response.status != 200:
            return response
        events = split_events(body_of(response))
        head, tail = events[: self.after_events], events[self.after_events :]
        chunks: list[tuple[float, bytes]] = [(0.0, e) for e in head]
        waited = 0.0
        if self.ping_every:  # None or 0: silence; bounded by MAX_STALL_PINGS (checked at construction)
            while waited + self.ping_every < self.seconds:
                chunks.append((self.ping_every, _PING))
                waited += self.ping_every
        if self.cut:
            return replace(response, chunks=(*chunks, (self.seconds - waited, b"")), end="cut")
        rest = [(0.0, e) for e in tail]
        if rest:
            rest[0] = (self.seconds - waited, rest[0][1])
        return replace(response, chunks=tuple(chunks + rest))


@dataclass(frozen=True, slots=True)
class Trickle:
    """The body sent ``chunk_bytes`` at a time, ``delay`` seconds apart (a slow but live stream)."""

    chunk_bytes: int = 8
    delay: float = 0.01

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if response.status != 200:
            return response
        body = body_of(response)
        size = max(1, self.chunk_bytes)
        chunks = tuple((self.delay, body[i : i + size]) for i in range(0, len(body), size))
        return replace(response, chunks=chunks)


@dataclass(frozen=True, slots=True)
class HTTPError:
    """An error status before any stream: a JSON error body, with ``retry-after`` (seconds),
    ``retry-after-ms`` and ``x-should-retry`` headers when given."""

    status: int = 529
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    error_type: str | None = None

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        error_type = self.error_type or _ERROR_TYPE_OF_STATUS.get(self.status, "api_error")
        body = json.dumps(
            {"type": "error", "error": {"type": error_type, "message": f"injected HTTP {self.status}"},
             "request_id": f"req_fault_{ordinal}"}
        ).encode()
        headers = [("content-type", "application/json"), ("request-id", f"req_fault_{ordinal}")]
        if self.retry_after is not None:
            headers.append(("retry-after", f"{self.retry_after:g}"))
        if self.retry_after_ms is not None:
            headers.append(("retry-after-ms", str(self.retry_after_ms)))
        if self.should_retry is not None:
            headers.append(("x-should-retry", "true" if self.should_retry else "false"))
        return PlannedResponse(self.status, tuple(headers), ((0.0, body),), "close")


@dataclass(frozen=True, slots=True)
class Schedule:
    """Request ``k`` (0-based) gets ``plans[k]`` (None: unchanged); requests past the list get ``then``."""

    plans: tuple[FaultPlan | None, ...]
    then: FaultPlan | None = None

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        plan = self.plans[ordinal] if ordinal < len(self.plans) else self.then
        return plan.apply(ordinal, response) if plan is not None else response


@dataclass(frozen=True, slots=True)
class RandomMix:
    """Each request draws one plan with the given probabilities (the rest unchanged), from a generator
    seeded with ``(seed, ordinal)``: the same ordinal always gets the same fault, in any order."""

    choices: tuple[tuple[float, FaultPlan], ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -MAX_SEED <= self.seed < MAX_SEED:
            shown = f"an int of {self.seed.bit_length()} bits" if isinstance(self.seed, int) else repr(self.seed)
            raise UsageError(f"a fault mix seed must be an int within [-2**63, 2**63); got {shown}")
        total = 0.0
        for rate, _ in self.choices:
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"a fault rate must be within [0, 1], not {rate!r}")
            total += rate
        if total > 1.0 + 1e-9:
            raise UsageError(f"fault rates sum to {total:g}, more than 1")

    def pick(self, ordinal: int) -> FaultPlan | None:
        """The plan request ``ordinal`` gets (None: unchanged)."""
        draw = random.Random(f"{self.seed}:{ordinal}").random()
        for rate, plan in self.choices:
            if draw < rate:
                return plan
            draw -= rate
        return None

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        plan = self.pick(ordinal)
        return plan.apply(ordinal, response) if plan is not None else response


# -- the SPEC syntax -----------------------------------------------------------------------------------------

SPEC_HELP = """\
SPEC    := FAULT                      every request gets FAULT
         | FAULT ";" FAULT ...        request k gets the k-th FAULT, later ones are unchanged
         | "mix(seed=N):" R "*" FAULT ["+" R "*" FAULT ...]   each request draws FAULT with rate R
FAULT   := NAME ["(" KEY "=" VALUE ["," KEY "=" VALUE ...] ")"]
  ok                                              unchanged
  error(type=overloaded_error,after_events=4,after_bytes=N,message=TEXT)
  cut(after_bytes=N | after_events=N | in=tool)  connection dropped mid-event / mid-tool-input
  stall(seconds=T,after_events=3,ping=P,cut=false) T s silent (or pings every P s, ping=0: none), then the
                                                  rest (or a cut); at most 10000 pings
  stall(seconds=T,headers=true,cut=false)         T s without even a status line, then the response (or a cut)
  trickle(bytes=8,delay=0.01)                     the body a few bytes at a time
  status(code=529,retry_after=S,retry_after_ms=MS,should_retry=true|false,type=ERROR_TYPE)
Example: mix(seed=7):0.2*error+0.05*stall(seconds=2,ping=0.5)+0.05*cut(in=tool)+0.05*status(code=529)"""


_MAX_NUMBER_CHARS = 40  # more than any useful count or duration; int() of 5,000 digits raises its own error


def _number(name: str, key: str, value: str, kind: type[float] | type[int]) -> Any:
    if len(value) > _MAX_NUMBER_CHARS:
        raise UsageError(f"fault {name}: {key} takes at most {_MAX_NUMBER_CHARS} characters; got {len(value)}")
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"fault {name}: {key}={value!r} is not a{'n integer' if kind is int else ' number'}") from None
    if number < 0 or (isinstance(number, float) and not math.isfinite(number)):
        raise UsageError(f"fault {name}: {key}={value!r} must be >= 0")
    return number


_KEYS: dict[str, dict[str, tuple[str, Any]]] = {
    "ok": {},
    "error": {"type": ("error_type", str), "after_events": ("after_events", int),
              "after_bytes": ("after_bytes", int), "message": ("message", str)},
    "cut": {"after_bytes": ("after_bytes", int), "after_events": ("after_events", int),
            "in": ("in_tool_input", "tool")},
    "stall": {"seconds": ("seconds", float), "after_events": ("after_events", int), "ping": ("ping_every", float),
              "cut": ("cut", bool), "headers": ("headers", bool)},
    "trickle": {"bytes": ("chunk_bytes", int), "delay": ("delay", float)},
    "status": {"code": ("status", int), "retry_after": ("retry_after", float),
               "retry_after_ms": ("retry_after_ms", int), "should_retry": ("should_retry", bool),
               "type": ("error_type", str)},
}
_CLASSES: dict[str, Any] = {
    "ok": Unchanged, "error": ErrorEvent, "cut": Cut, "stall": Stall, "trickle": Trickle, "status": HTTPError,
}
_FAULT = re.compile(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*\Z", re.S)


def _parse_fault(text: str) -> FaultPlan:
    match = _FAULT.match(text)
    if match is None or match.group(1) not in _KEYS:
        raise UsageError(f"unknown fault {text.strip()!r}; known: {', '.join(_KEYS)}\n{SPEC_HELP}")
    name, args = match.group(1), match.group(2)
    allowed = _KEYS[name]
    kwargs: dict[str, Any] = {}
    for item in (args or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in allowed:
            raise UsageError(
                f"fault {name}: unknown argument {item.strip()!r}; allowed: {', '.join(allowed) or 'none'}"
            )
        field_name, kind = allowed[key]
        if kind is str:
            kwargs[field_name] = value
        elif kind is bool:
            if value not in ("true", "false"):
                raise UsageError(f"fault {name}: {key} must be true or false, not {value!r}")
            kwargs[field_name] = value == "true"
        elif kind == "tool":
            if value != "tool":
                raise UsageError(f"fault {name}: in= must be 'tool', not {value!r}")
            kwargs[field_name] = True
        else:
            kwargs[field_name] = _number(name, key, value, kind)
    if name == "stall" and "seconds" not in kwargs:
        raise UsageError("fault stall needs seconds=T")
    if name == "status" and not 400 <= kwargs.get("status", 529) <= 599:
        raise UsageError(f"fault status: code must be within 400..599, not {kwargs['status']}")
    plan: FaultPlan = _CLASSES[name](**kwargs)
    return plan


_MIX = re.compile(r"\s*mix\s*\(\s*seed\s*=\s*(-?\d+)\s*\)\s*:(.*)\Z", re.S)


def parse_fault_spec(spec: str) -> FaultPlan:
    """The :class:`FaultPlan` a SPEC string describes (see ``SPEC_HELP``).

    Raises:
        UsageError: an unknown fault or argument, a bad number, rates above 1, naming what is allowed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"a fault spec must be a non-empty string, not {spec!r}\n{SPEC_HELP}")
    mix = _MIX.match(spec)
    if mix is not None:
        choices: list[tuple[float, FaultPlan]] = []
        for term in mix.group(2).split("+"):
            rate, star, fault = term.partition("*")
            if not star:
                raise UsageError(f"mix term {term.strip()!r} must be RATE*FAULT\n{SPEC_HELP}")
            choices.append((_number("mix", "rate", rate.strip(), float), _parse_fault(fault)))
        seed = mix.group(1)
        if len(seed.lstrip("-")) > 19:
            raise UsageError(f"mix seed takes at most 19 digits (within [-2**63, 2**63)); got {len(seed)} characters")
        return RandomMix(tuple(choices), seed=int(seed))
    parts = spec.split(";")
    if len(parts) == 1:
        return _parse_fault(parts[0])
    return Schedule(tuple(_parse_fault(part) for part in parts))


def describe_fault(plan: FaultPlan, ordinal: int) -> str | None:
    """The fault ``plan`` injects into request ``ordinal``'s response, in the SPEC syntax
    (``"error(type=overloaded_error,after_events=2)"``: the error type, status code or stall length always,
    other arguments where they differ from the defaults; :func:`parse_fault_spec` reads it back), or None
    when the plan leaves that response unchanged. A :class:`Schedule` or :class:`RandomMix` is resolved to the
    plan that request gets; a plan of another class is named by its ``repr`` (at most 120 characters). What
    the replay server logs for each response."""
    while True:
        if isinstance(plan, Schedule):
            picked = plan.plans[ordinal] if ordinal < len(plan.plans) else plan.then
        elif isinstance(plan, RandomMix):
            picked = plan.pick(ordinal)
        else:
            break
        if picked is None:
            return None
        plan = picked
    if isinstance(plan, Unchanged):
        return None
    name = next((n for n, cls in _CLASSES.items() if type(plan) is cls), None)
    if name is None:
        return repr(plan)[:120]
    # every class of _CLASSES is a dataclass
    defaults = {f.name: f.default for f in fields(plan)}  # type: ignore[arg-type]
    args: list[str] = []
    for key, (field_name, kind) in _KEYS[name].items():
        value = getattr(plan, field_name)
        default = defaults[field_name]
        if value == default and not (args == [] and key in ("type", "seconds", "code")):
            continue
        if kind == "tool":
            args.append(f"{key}=tool")
        elif kind is bool:
            args.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, float):
            args.append(f"{key}={value:g}")
        else:
            args.append(f"{key}={value}")
    return f"{name}({','.join(args)})" if args else name


def _stop_reason_of(event: bytes) -> bool:
    """True when ``event`` (one SSE event) is a ``message_delta`` that reports a stop reason."""
    if b"message_delta" not in event or b"stop_reason" not in event:
        return False
    data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("delta"), dict) and bool(obj["delta"].get("stop_reason"))


def interrupts(original: PlannedResponse, faulted: PlannedResponse) -> bool:
    """True when a fault plan's ``faulted`` response keeps the client from its answer, so that it will send the
    request again (a retry, a restart, a continuation): an error status, a silence the ``original`` did not
    have (a stall, before the headers or mid-body; a few milliseconds between chunks are not one), or a body
    that is cut or carries an ``error`` event before the answer's stop reason. An error after the stop reason
    leaves the answer complete. Linear in the body."""
    if faulted.status != 200:
        return original.status == 200
    if faulted.head_delay > original.head_delay:
        return True
    longest = max((delay for delay, _ in original.chunks), default=0.0)
    if any(delay > longest + 0.05 for delay, _ in faulted.chunks):
        return True
    for event in split_events(body_of(faulted)):
        if _stop_reason_of(event):
            return False
        if event.startswith(b"event: error") or b'"type": "error"' in event or b'"type":"error"' in event:
            return True
    return faulted.end == "cut"


# -- continuations -------------------------------------------------------------------------------------------


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def continuation_body(
    request_body: Mapping[str, Any], full_body: bytes, *, delta_chars: int = 8, prefill: str | None = None
) -> bytes | None:
    """What a model would stream for a request that ends with an assistant prefill, given the SSE body
    ``full_body`` of the whole answer: the text after the prefill, as a new message (``None`` when the
    request has no prefill or the answer's first text block does not start with it). ``prefill``: the part
    of the answer the client already has, when it is not the request's whole prefill (a continuation of a
    request that had a prefill of its own: :meth:`~mendstream.recording.fixtures.FixtureSelector.
    prefill_for`).

    After the text the continuation replays the recorded answer from the end of its first block (later
    blocks, tool calls, ``message_delta`` with the stop reason and usage), as a model would go on.
    """
    if prefill is None:
        prefill = prefill_of(request_body)
    if prefill is None:
        return None
    from mendstream.core.parser import MessageParser

    parser = MessageParser()
    try:
        parser.feed(full_body)
        parser.end()
    except Exception:
        return None
    message = parser.message
    content = message.get("content") or []
    if not content or content[0].get("type") != "text":
        return None
    text = str(content[0].get("text", ""))
    if not text.startswith(prefill):
        return None
    rest = text[len(prefill) :]
    pieces = [rest[i : i + delta_chars] for i in range(0, len(rest), max(1, delta_chars))]
    usage = message.get("usage") or {}
    start = {**message, "id": f"{message.get('id', 'msg')}_cont", "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces),
    ]
    # After the text block the answer goes on as recorded (later blocks, tool calls, the stop reason).
    tail = _after_first_block(full_body)
    if tail is None:
        events += [
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": None},
             "usage": {"output_tokens": max(1, len(pieces))}},
            {"type": "message_stop"},
        ]
        return b"".join(_sse(e) for e in events)
    return b"".join(_sse(e) for e in events) + tail


def _after_first_block(body: bytes) -> bytes | None:
    """The recorded events from the ``content_block_stop`` of block 0 on, or None if there is none."""
    events = split_events(body)
    for i, event in enumerate(events):
        if b"content_block_stop" not in event:
            continue
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "content_block_stop" and obj.get("index") == 0:
            return b"".join(events[i:])
    return None
