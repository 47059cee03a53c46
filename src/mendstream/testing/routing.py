# One routing function for everything that answers Messages requests from fixtures: the replay server (over
# uvicorn) and the in-process mock transports of mendstream.testing both hand a request's method, target,
# headers and body bytes to Router.answer and send the PlannedResponse it returns, so they agree on paths,
# methods, error bodies, non-streaming answers, pacing and fault plans. Sending is theirs; deciding is here.
from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mendstream.core.partial_json import nesting_exceeded
from mendstream.errors import StreamError, UsageError
from mendstream.recording.fixtures import Fixture, FixtureSelector, NoFixtureError
from mendstream.testing.faults import FaultPlan, PlannedResponse, continuation_body, describe_fault, interrupts
from mendstream.wire.http import bedrock_path, error_body, error_type_for, is_messages_path, model_in_path
from mendstream.wire.sanitize import validate_request

_EVENT_STREAM = "application/vnd.amazon.eventstream"

__all__ = [
    "DEFAULT_REQUEST_LOG",
    "DEFAULT_REQUEST_LOG_BYTES",
    "MAX_JSON_DEPTH",
    "Pace",
    "RecordedRequest",
    "Router",
    "error_body",
    "error_type_for",
    "whole_message",
]

Pace = Literal["fast", "captured"]
_PACE_VALUES = ("fast", "captured")
DEFAULT_REQUEST_LOG = 1000
"""How many requests :attr:`Router.requests` keeps (the most recent ones)."""
DEFAULT_REQUEST_LOG_BYTES = 32 * 1024 * 1024
"""How much memory the requests in :attr:`Router.requests` may take, as :func:`record_weight` counts it."""
# What a decoded JSON value costs beyond its text, per container, element or member (measured under
# CPython 3.11: a list of empty lists takes 21 bytes per byte of JSON, an array of {"a":1} 24; every case
# tried stays below len(text) + 80 per "[", "{", "," and ":").
_DECODED_BYTES_PER_ITEM = 80
MAX_JSON_DEPTH = 256
"""Request bodies nested deeper than this are answered with 400 (the API's own bodies are shallow)."""

# The Messages API's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_JSON = (("content-type", "application/json"),)


def error_response(status: int, message: str, *, close: bool = False) -> PlannedResponse:
    """A JSON error answer in the Messages API's error shape; ``close`` adds ``connection: close``."""
    headers = _JSON + ((("connection", "close"),) if close else ())
    return PlannedResponse(status, headers, ((0.0, error_body(error_type_for(status), message)),))


def whole_message(fixture: Fixture) -> bytes:
    """The final message of ``fixture`` (SSE, or a captured Bedrock event-stream) as JSON, for clients that
    asked for ``"stream": false`` (or Bedrock's ``/invoke``).

    Raises :class:`~mendstream.errors.StreamError` when the fixture's stream does not complete.
    """
    from mendstream.core.bedrock import BedrockParser  # the core, imported only when a whole message is asked for

    parser = BedrockParser(framing="auto")
    parser.feed(fixture.body)
    parser.end()
    return json.dumps(parser.message).encode()


def _too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` containers deep (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


@dataclass(slots=True)
class RecordedRequest:
    """A request the server received: method, target (path and query), lowercase headers, decoded body,
    fixture served, status answered, body bytes sent and milliseconds from request to last byte;
    ``body_bytes`` is the size of the body received (its ``body`` is None when the request log could not
    keep it: see :attr:`Router.requests`); ``fault`` is the fault injected into the response in the SPEC
    syntax (``faults.describe_fault``), None when no fault plan changed it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fixture: str | None = None
    status: int = 200
    bytes_sent: int = 0
    ms: float = 0.0
    body_bytes: int = 0
    fault: str | None = None


def record_weight(raw: bytes, headers: Mapping[str, str], target: str) -> int:
    """What a request kept in the log costs in memory, at most: its target and headers, and its body
    decoded (its bytes plus 80 per JSON container, element or member: a bound, not a measure, for any
    JSON; 60 MB of empty arrays decode to 1.3 GB)."""
    items = raw.count(b"[") + raw.count(b"{") + raw.count(b",") + raw.count(b":") if raw else 0
    head = len(target) + sum(len(k) + len(v) + 64 for k, v in headers.items())
    return 256 + head + len(raw) + _DECODED_BYTES_PER_ITEM * items


class Router:
    """Decides the answer to each request from fixtures; thread-safe.

    ``pace="captured"`` turns the fixtures' captured chunk timings (divided by ``speed``) into the delays of
    the planned chunks; ``"fast"`` sends them without waiting. ``faults`` (a
    :class:`~mendstream.testing.faults.FaultPlan`) transforms every Messages response before it is sent; its ordinal
    counts the Messages requests answered so far, from 0. :attr:`requests` keeps the last ``request_log``
    requests, within ``request_log_bytes`` (see :attr:`requests`). ``id_format`` makes the ``request-id`` of
    fixtures that have none (``{name}``: the fixture, ``{count}``: the request's number). ``validate=True``
    answers a Messages request that breaks a rule of :func:`mendstream.wire.sanitize.validate_request` with the
    API's 400 and error message, before choosing a fixture.

    Raises :class:`~mendstream.errors.UsageError` (a ``ValueError``) for a bad option.
    """

    def __init__(
        self,
        selector: FixtureSelector,
        *,
        pace: Pace = "fast",
        speed: float = 1.0,
        faults: FaultPlan | None = None,
        request_log: int = DEFAULT_REQUEST_LOG,
        id_format: str = "req_replay_{name}_{count}",
        validate: bool = False,
        request_log_bytes: int = DEFAULT_REQUEST_LOG_BYTES,
    ) -> None:
        if pace not in _PACE_VALUES:
            raise UsageError(f"pace must be one of {', '.join(_PACE_VALUES)}; got {pace!r}")
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0:
            raise UsageError(f"speed must be a number > 0; got {speed!r}")
        if isinstance(request_log, bool) or not isinstance(request_log, int) or request_log < 0:
            raise UsageError(f"request_log must be an int >= 0; got {request_log!r}")
        if isinstance(request_log_bytes, bool) or not isinstance(request_log_bytes, int) or request_log_bytes < 0:
            raise UsageError(f"request_log_bytes must be an int >= 0; got {request_log_bytes!r}")
        if faults is not None and not callable(getattr(faults, "apply", None)):
            raise UsageError(f"faults must be a mendstream.testing.faults.FaultPlan (with .apply); got {faults!r}")
        self.selector = selector
        self.pace = pace
        self.speed = float(speed)
        self.faults = faults
        self.id_format = id_format
        self.validate = bool(validate)
        self.requests: deque[RecordedRequest] = deque(maxlen=request_log)
        """The most recent requests, oldest first: at most ``request_log`` of them, and only as many as fit in
        ``request_log_bytes`` (each counted by :func:`record_weight`); older ones are dropped first (counted
        in :attr:`requests_dropped`). A request too large to fit on its own is kept without its body."""
        self.requests_dropped = 0
        """Requests dropped from :attr:`requests` to stay within ``request_log_bytes`` (not those beyond
        ``request_log``: that count is the point of the log)."""
        self.request_log_bytes = request_log_bytes
        self._weights: deque[int] = deque(maxlen=request_log)  # the weight of each record in self.requests
        self._logged_bytes = 0
        self._count = 0
        self._answered = 0
        self._lock = threading.Lock()

    def reset(self, faults: FaultPlan | None = None) -> None:
        """Forget the requests received and use ``faults`` from now on, its ordinals counted from 0 again."""
        if faults is not None and not callable(getattr(faults, "apply", None)):
            raise UsageError(f"faults must be a mendstream.testing.faults.FaultPlan (with .apply); got {faults!r}")
        with self._lock:
            self.faults = faults
            self._answered = 0
            self.requests.clear()
            self._weights.clear()
            self._logged_bytes = 0
            self.requests_dropped = 0

    def _log(self, record: RecordedRequest, weight: int) -> None:
        """Append ``record`` to :attr:`requests` within both bounds (the lock is held)."""
        requests, weights = self.requests, self._weights
        if requests.maxlen == 0:
            return
        if weight > self.request_log_bytes:  # alone over the budget: keep what it was, not its body
            record.body = None
            weight = record_weight(b"", record.headers, record.path)
        if len(requests) == requests.maxlen:  # the deque drops its oldest on append
            self._logged_bytes -= weights[0]
        requests.append(record)
        weights.append(weight)
        self._logged_bytes += weight
        while self._logged_bytes > self.request_log_bytes and len(requests) > 1:
            requests.popleft()
            self._logged_bytes -= weights.popleft()
            self.requests_dropped += 1

    def answer(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[RecordedRequest, PlannedResponse]:
        """The record of a request and the response to send. ``headers`` have lowercase names; ``target`` is
        the path with its query. Never raises for anything the client sent: every problem is an answer."""
        path = target.split("?", 1)[0]
        body: Any = None
        body_error: str | None = None
        if raw:
            try:
                # Depth first, in one linear pass: json's own RecursionError depends on how deep the caller's
                # stack already is (and on the recursion limit), so it cannot be the verdict.
                too_deep = nesting_exceeded(raw.decode("utf-8"), MAX_JSON_DEPTH) is not None
                if too_deep:
                    body_error = f"request body nests deeper than {MAX_JSON_DEPTH} levels"
                else:
                    body = json.loads(raw)
            except RecursionError:
                body_error = f"request body nests deeper than {MAX_JSON_DEPTH} levels"
            except ValueError as exc:  # includes UnicodeDecodeError
                body_error = f"request body is not JSON: {exc}"
            else:
                if _too_deep(body, MAX_JSON_DEPTH):
                    body, body_error = None, f"request body nests deeper than {MAX_JSON_DEPTH} levels"
        record = RecordedRequest(method=method.upper(), path=target, headers=dict(headers), body=body,
                                 body_bytes=len(raw))
        weight = record_weight(raw, record.headers, target)
        with self._lock:
            self._log(record, weight)
            self._count += 1
            count = self._count
        bedrock = _bedrock_path(path)
        if bedrock is None and not is_messages_path(path):
            planned = error_response(
                404, f"the replay server serves POST /v1/messages (and Vertex and Bedrock model paths), not {target}"
            )
            record.status = planned.status
            return record, planned
        planned = self._plan(record, body, body_error, count, bedrock)
        if self.faults is not None:
            with self._lock:
                ordinal = self._answered
                self._answered += 1
            faulted = self.faults.apply(ordinal, planned)
            if faulted != planned:  # a plan that does not apply to this response (an error status) says nothing
                record.fault = describe_fault(self.faults, ordinal)
                if record.fixture is not None and interrupts(planned, faulted):
                    self.selector.faulted(body)  # the client will send it again: answer from the same fixture
            planned = faulted
        if bedrock is not None:
            planned = _for_bedrock(planned, bedrock)
        record.status = planned.status
        return record, planned

    def reject(
        self, method: str, target: str, headers: Mapping[str, str], planned: PlannedResponse
    ) -> tuple[RecordedRequest, PlannedResponse]:
        """Record a request refused before routing (a limit was exceeded) with the answer ``planned``."""
        record = RecordedRequest(method.upper(), target, dict(headers), None, status=planned.status)
        weight = record_weight(b"", record.headers, target)
        with self._lock:
            self._log(record, weight)
            self._count += 1
        return record, planned

    def _plan(
        self, record: RecordedRequest, body: Any, body_error: str | None, count: int, bedrock: str | None
    ) -> PlannedResponse:
        if record.method != "POST":
            return error_response(405, f"method {record.method} not allowed; use POST")
        if body_error is not None:
            return error_response(400, body_error)
        if not isinstance(body, dict):
            return error_response(400, "request body must be a JSON object")
        if self.validate:
            problems = validate_request(body)
            if problems:  # the API reports one problem per 400: the first, in request order
                return error_response(400, problems[0].message)
        try:
            # A cloud client names the model in the path; a fixture of that name answers it (unless a header
            # names one), so AnthropicBedrock / AnthropicVertex pick fixtures with model="<fixture name>".
            named = self.selector.named(model_in_path(record.path.split("?", 1)[0]))
            if named is None or "x-mendstream-fixture" in record.headers:
                named = self.selector.choose(record.headers, body)
            else:
                self.selector.remember(body, named)
            fixture = named
        except NoFixtureError as exc:
            return error_response(exc.status, str(exc))
        record.fixture = fixture.name
        headers = [(k, v) for k, v in fixture.headers if k != "content-type"]
        if not any(k == "request-id" for k, _ in headers):
            headers.append(("request-id", self.id_format.format(name=fixture.name, count=count)))
        streaming = body.get("stream") is True if bedrock is None else bedrock == "stream"
        if not streaming and fixture.status == 200:
            try:
                payload = whole_message(fixture)
            except StreamError as exc:
                return error_response(500, f"fixture {fixture.name} has no complete message: {exc}")
            return PlannedResponse(200, (*_JSON, *headers), ((0.0, payload),))
        headers = [("content-type", fixture.content_type), *headers, ("cache-control", "no-cache")]
        if fixture.status == 200 and not fixture.abort and not fixture.content_type.startswith(_EVENT_STREAM):
            # A request that ends with an assistant prefill (what Retry(on_partial="continue") sends) gets the
            # rest of the recorded answer after that prefill, as the API would stream it.
            continuation = continuation_body(body, fixture.body, prefill=self.selector.prefill_for(body, fixture))
            if continuation is not None:
                return PlannedResponse(200, tuple(headers), ((0.0, continuation),))
        return PlannedResponse(
            fixture.status, tuple(headers), self._timed_chunks(fixture), "cut" if fixture.abort else "close"
        )

    def _timed_chunks(self, fixture: Fixture) -> tuple[tuple[float, bytes], ...]:
        """The fixture's chunks with the delay before each (seconds since the previous chunk)."""
        paced = self.pace == "captured"
        out: list[tuple[float, bytes]] = []
        last = 0.0  # when the previous non-empty chunk was due
        for chunk, at in fixture.iter_chunks():
            if not chunk:
                continue
            delay = (at - last) / self.speed if paced and at > last else 0.0
            last = max(last, at)
            out.append((delay, chunk))
        return tuple(out)


def _bedrock_path(path: str) -> str | None:
    """``"stream"`` or ``"invoke"`` for Bedrock's paths, else None."""
    found = bedrock_path(path)
    return found[1] if found is not None else None


def _for_bedrock(planned: PlannedResponse, kind: str) -> PlannedResponse:
    """A planned answer (faults applied: they work on SSE events) as Bedrock sends it: the request id as
    ``x-amzn-requestid`` (Bedrock sends no ``request-id``), and a stream as AWS event-stream frames."""
    headers = dict(planned.headers)
    if "request-id" in headers and "x-amzn-requestid" not in headers:
        planned = replace(planned, headers=tuple(
            ("x-amzn-requestid" if k == "request-id" else k, v) for k, v in planned.headers))
    if kind == "stream" and planned.status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
        planned = _as_event_stream(planned)
    return planned


def _as_event_stream(planned: PlannedResponse) -> PlannedResponse:
    """``planned`` (an SSE answer, faults applied) as Bedrock sends it: each whole SSE event a ``chunk`` frame,
    sent with the delay of the SSE chunk that completed it; an event cut by the end of a cut body becomes a
    cut frame. A body that already is event-stream (a captured Bedrock answer) is sent as it is, with the
    event-stream content type."""
    from mendstream.core.bedrock import EVENT_STREAM_CONTENT_TYPE, is_event_stream, sse_to_event_stream

    headers = tuple((k, EVENT_STREAM_CONTENT_TYPE if k == "content-type" else v) for k, v in planned.headers)
    head = b""
    for _, chunk in planned.chunks:
        head += chunk[:12]
        if len(head) >= 12:
            break
    if is_event_stream(head[:12]):
        return replace(planned, headers=headers)
    chunks: list[tuple[float, bytes]] = []
    pending = b""
    delay = 0.0
    for wait, chunk in planned.chunks:
        delay += wait
        pending += chunk
        end = max(pending.rfind(b"\n\n") + 2, pending.rfind(b"\r\n\r\n") + 4, pending.rfind(b"\r\r") + 2)
        if end < 4:
            continue  # no whole event yet
        whole, pending = pending[:end], pending[end:]
        frames = sse_to_event_stream(whole)
        if frames:
            chunks.append((delay, frames))
            delay = 0.0
    if pending.strip():
        chunks.append((delay, sse_to_event_stream(pending)))
    return PlannedResponse(planned.status, headers, tuple(chunks), planned.end, planned.head_delay)
