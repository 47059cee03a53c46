# Streams that survive: the attempt loop behind `retry=`, `idle_timeout=` and `progress_timeout=`. A
# transport hands in an opener (send the request, optionally with an assistant prefill, and return the body);
# `_Conductor` is the sans-IO policy (what the consumer has been shown, what to do on a fault, how a
# continuation is stitched into the text already shown) and the two stream classes only move bytes and
# sleep. Stalls: async reads run under `asyncio.timeout`; sync reads are bounded by one shared watchdog
# thread that shuts down the socket of a stream whose deadline passed (a blocked `recv` then returns), plus
# the HTTP library's read timeout as a backstop, so no thread is started per stream.
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from .errors import IncompleteStreamError, StreamError, StreamStalledError
from .events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Data,
    Event,
    MessageStopEvent,
    TextEvent,
)
from .parser import MessageParser
from .repair import Repair
from .retry import Attempt, AttemptMode, RestartEvent, Retry, classify
from .streaming import AsyncMessageStream, MessageStream, _StreamState

__all__ = [
    "AsyncOpener",
    "AsyncResilientMessageStream",
    "Opened",
    "ResilientMessageStream",
    "SyncOpener",
    "attempt_capture_path",
]

CapturePath = str | PathLike[str]
_NO_RETRY = Retry(max_attempts=1)


@dataclass(slots=True)
class Opened:
    """One attempt's open response, as a transport's opener returns it.

    ``body`` yields the raw body chunks (sync or async iterable); ``pump`` is the transport's
    :class:`~mendstream.transports.BodyPump` (capture tee, transport errors ending the input, error
    conversion); ``release`` closes the response (sync, or a coroutine function for async);
    ``convert`` turns a mendstream error into what the transport raises (the SDK adds its classes).
    """

    response: Any
    body: Any
    pump: Any
    release: Callable[[], Any]
    convert: Callable[[StreamError], BaseException] | None = None


SyncOpener = Callable[[str | None, CapturePath | None], Opened]
"""``opener(prefill, capture_path)``: send the request (with ``prefill`` appended as an assistant message
when not None) and return the open response; raise whatever the transport raises before streaming."""
AsyncOpener = Callable[[str | None, CapturePath | None], Awaitable[Opened]]


def attempt_capture_path(capture: CapturePath | None, number: int) -> CapturePath | None:
    """Where attempt ``number`` is captured: ``capture`` itself for the first, then ``NAME.attempt-N.EXT``
    beside it (each with its own ``*.capture.json`` sidecar)."""
    if capture is None or number == 1:
        return capture
    path = Path(capture)
    return path.with_name(f"{path.stem}.attempt-{number}{path.suffix}")


def with_prefill(messages: Any, prefill: str) -> list[Any]:
    """``messages`` with ``prefill`` as the final assistant turn (appended to an existing final assistant
    turn whose content is a string)."""
    out = list(messages)
    if out and isinstance(out[-1], dict) and out[-1].get("role") == "assistant":
        last = out[-1]
        content = last.get("content")
        if isinstance(content, str):
            out[-1] = {**last, "content": content + prefill}
            return out
        if isinstance(content, list):
            out[-1] = {**last, "content": [*content, {"type": "text", "text": prefill}]}
            return out
    out.append({"role": "assistant", "content": prefill})
    return out


# -- stall clocks --------------------------------------------------------------------------------------------


class _StallClock:
    """Deadlines of one attempt: the last byte plus ``idle``, the last non-ping event plus ``progress``."""

    __slots__ = ("idle", "last_byte", "last_progress", "progress", "saw_bytes_since_progress")

    def __init__(self, idle: float | None, progress: float | None) -> None:
        self.idle = idle
        self.progress = progress
        now = time.monotonic()
        self.last_byte = now
        self.last_progress = now
        self.saw_bytes_since_progress = False

    def on_bytes(self, now: float) -> None:
        self.last_byte = now
        self.saw_bytes_since_progress = True

    def on_progress(self, now: float) -> None:
        self.last_progress = now
        self.saw_bytes_since_progress = False

    def deadline(self) -> float:
        out = float("inf")
        if self.idle is not None:
            out = self.last_byte + self.idle
        if self.progress is not None:
            out = min(out, self.last_progress + self.progress)
        return out

    def expired(self, now: float) -> str | None:
        """``"idle"`` or ``"progress"`` when that deadline has passed (idle is named first), else None."""
        if self.idle is not None and now >= self.last_byte + self.idle:
            return "idle"
        if self.progress is not None and now >= self.last_progress + self.progress:
            return "progress"
        return None

    def error(self, kind: str, now: float, snapshot: dict[str, Any] | None) -> StreamStalledError:
        if kind == "idle":
            waited, timeout = now - self.last_byte, self.idle or 0.0
            what = f"no byte arrived for {waited:.2f} s (idle_timeout={timeout:g})"
            pings_only = False
        else:
            waited, timeout = now - self.last_progress, self.progress or 0.0
            pings_only = self.saw_bytes_since_progress
            arrived = "only pings arrived" if pings_only else "nothing arrived"
            what = f"no event but pings for {waited:.2f} s ({arrived}; progress_timeout={timeout:g})"
        return StreamStalledError(
            f"the stream stalled: {what}", kind=kind, waited=waited, timeout=timeout, pings_only=pings_only,
            snapshot=snapshot or None,
        )


class _Watchdog:
    """One daemon thread for every sync stream in the process: at a stream's deadline it calls the stream's
    ``fire`` (which shuts the socket down, so the blocked read returns).

    Each armed stream has at most one heap entry, so the heap is bounded by the number of open streams:
    moving a deadline later (every chunk) only updates ``_armed``; when the entry comes due with a later
    deadline recorded, it is pushed back once. Arming is O(1) on the hot path, O(log n) when pushing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _SyncGuard]] = []
        self._armed: dict[_SyncGuard, float] = {}
        self._queued: dict[_SyncGuard, float] = {}
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, guard: _SyncGuard, deadline: float) -> None:
        with self._cond:
            self._armed[guard] = deadline
            queued = self._queued.get(guard)
            if queued is not None and queued <= deadline:
                return  # the queued entry comes due first and re-queues itself at the new deadline
            self._queued[guard] = deadline
            heapq.heappush(self._heap, (deadline, next(self._counter), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mendstream-stall-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][2] is guard:
                self._cond.notify()

    def disarm(self, guard: _SyncGuard) -> None:
        with self._cond:
            self._armed.pop(guard, None)

    def _run(self) -> None:
        while True:
            due: list[_SyncGuard] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    queued, _, guard = heapq.heappop(self._heap)
                    if self._queued.get(guard) != queued:
                        continue  # superseded by an earlier entry for the same guard
                    del self._queued[guard]
                    deadline = self._armed.get(guard)
                    if deadline is None:
                        continue  # disarmed
                    if deadline > now:
                        self._queued[guard] = deadline
                        heapq.heappush(self._heap, (deadline, next(self._counter), guard))
                        continue
                    del self._armed[guard]
                    due.append(guard)
                if not due:
                    wait = self._heap[0][0] - now if self._heap else 60.0
                    self._cond.wait(min(wait, 60.0))
            for guard in due:
                guard.fire()


_WATCHDOG = _Watchdog()


def _socket_of(response: Any) -> socket.socket | None:
    extensions = getattr(response, "extensions", None)
    stream = extensions.get("network_stream") if isinstance(extensions, dict) else None
    get = getattr(stream, "get_extra_info", None)
    if get is None:
        return None
    try:
        sock = get("socket")
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


class _SyncGuard:
    """Bounds one sync attempt's reads: armed with the clock's deadline after every chunk."""

    def __init__(self, clock: _StallClock, response: Any) -> None:
        self.clock = clock
        self.sock = _socket_of(response)
        self.fired: str | None = None

    def arm(self) -> None:
        if self.sock is not None:
            _WATCHDOG.arm(self, self.clock.deadline())

    def disarm(self) -> None:
        if self.sock is not None:
            _WATCHDOG.disarm(self)

    def fire(self) -> None:
        kind = self.clock.expired(time.monotonic())
        if kind is None:  # raced with a chunk that moved the deadline
            return
        self.fired = kind
        try:
            assert self.sock is not None
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the policy ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Decision:
    delay: float
    restart: RestartEvent | None


class _StitchedSnapshot:
    """The snapshot of a continued text block at one event: the text shown before, then this attempt's
    text without the whitespace it repeated (computed when the event is stitched)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def snapshot_at(self, n: int, /) -> str:
        return self.text


def _sum_usage(total: dict[str, Any], usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return total
    for key, value in usage.items():
        old = total.get(key)
        if isinstance(value, bool) or value is None:
            total.setdefault(key, value)
        elif isinstance(value, (int, float)):
            total[key] = (old if isinstance(old, (int, float)) and not isinstance(old, bool) else 0) + value
        elif isinstance(value, dict):
            total[key] = _sum_usage(dict(old) if isinstance(old, dict) else {}, value)
        else:
            total[key] = value
    return total


class _Conductor:
    """The sans-IO heart of a resilient stream: attempt records, what the consumer has been shown, the
    retry decision for each fault and the rewriting of a continuation's events.

    Invariant: the consumer is shown one ``message_start`` per restart epoch, and every character of text
    at most once per epoch (a continuation drops the whitespace the prefill had to leave out).
    """

    def __init__(self, retry: Retry | None, idle: float | None, progress: float | None) -> None:
        self.retry = retry if retry is not None else _NO_RETRY
        self.idle = idle
        self.progress = progress
        self.attempts: list[Attempt] = []
        self.started = time.monotonic()
        self.shown_start = False
        self.shown_content = False
        self._mode: AttemptMode = "first"
        self._delay = 0.0
        self._note: str | None = None
        # Continuation state: the text shown so far (before this attempt), the prefill sent, the trailing
        # whitespace the prefill left out (to be dropped from the continuation's start), and how much of
        # this attempt's text was dropped.
        self.prefill: str | None = None
        self.shown_text = ""
        self._held = ""
        self.skipped = 0
        self._skipping = False
        self._usage: dict[str, Any] = {}
        self._repairs: list[Repair] = []
        self._drop_text_event = False

    @property
    def stall_enabled(self) -> bool:
        return self.idle is not None or self.progress is not None

    @property
    def continuing(self) -> bool:
        return self.prefill is not None

    def begin(self) -> Attempt:
        attempt = Attempt(number=len(self.attempts) + 1, mode=self._mode, delay=self._delay, note=self._note)
        self.attempts.append(attempt)
        self._note = None
        self.skipped = 0
        self._skipping = self.continuing and bool(self._held)
        return attempt

    def clock(self) -> _StallClock:
        return _StallClock(self.idle, self.progress)

    # Events of the running attempt -> what the consumer sees.
    def filter(self, events: list[Event], attempt: Attempt) -> list[Event]:
        if not events:
            return events
        out: list[Event] = []
        for event in events:
            kind = event.type
            if kind == "message_start":
                if self.shown_start:
                    continue  # a retry or continuation: the consumer already has its message_start
                self.shown_start = True
            elif self.continuing:
                rewritten = self._continued(event)
                if rewritten is None:
                    continue
                event = rewritten
                self.shown_content = True
            else:
                self.shown_content = True
            out.append(event)
        attempt.events_delivered += len(out)
        return out

    def _continued(self, event: Event) -> Event | None:
        """A continuation's event as the consumer must see it (None: dropped)."""
        if isinstance(event, ContentBlockStartEvent):
            return None if event.index == 0 else event
        if isinstance(event, ContentBlockDeltaEvent):
            self._drop_text_event = False
            delta = event.delta.to_dict()
            if event.index != 0 or delta.get("type") != "text_delta":
                return event
            text = str(delta.get("text", ""))
            if self._skipping:
                text = self._skip(text)
                if not text:
                    self._drop_text_event = True
                    return None
                return ContentBlockDeltaEvent(0, {**delta, "text": text})
            return event
        if isinstance(event, TextEvent):
            if self._drop_text_event:
                self._drop_text_event = False
                return None
            text = event.text
            visible = str(event.snapshot)[self.skipped :]
            if len(text) > len(visible):  # the delta's head was dropped as repeated whitespace
                text = text[len(text) - len(visible) :]
            return TextEvent(text, _StitchedSnapshot(self.shown_text + visible), 0)
        if isinstance(event, ContentBlockStopEvent) and event.index == 0:
            block = dict(event.content_block)
            if block.get("type") == "text":
                block["text"] = self.shown_text + str(block.get("text", ""))[self.skipped :]
            return ContentBlockStopEvent(0, Data(block))
        if isinstance(event, MessageStopEvent):
            return MessageStopEvent(Data(self.stitch(dict(event.message))))
        return event

    def _skip(self, text: str) -> str:
        """Drop from the continuation's start the whitespace the consumer already saw (held back from the
        prefill because the API refuses a prefill ending in whitespace)."""
        i = 0
        while i < len(text) and self.skipped < len(self._held) and text[i] == self._held[self.skipped]:
            i += 1
            self.skipped += 1
        if i < len(text) or self.skipped >= len(self._held):
            self._skipping = False
        return text[i:]

    def stitch(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message as the consumer must see it: when continuing, text block 0 holds all the text shown
        and usage is summed over every attempt."""
        if not self.continuing or not message:
            return message
        content = list(message.get("content") or [])
        if content and content[0].get("type") == "text":
            first = dict(content[0])
            first["text"] = self.shown_text + str(first.get("text", ""))[self.skipped :]
            content[0] = first
        else:
            content.insert(0, {"type": "text", "text": self.shown_text})
        out = dict(message)
        out["content"] = content
        out["usage"] = _sum_usage(dict(self._usage), message.get("usage"))
        return out

    def repairs(self, parser: MessageParser) -> list[Repair]:
        """The repairs of every finished attempt, then the current one's."""
        return [*self._repairs, *parser.repairs]

    def keep_repairs(self, parser: MessageParser) -> None:
        """Keep a failed attempt's repairs before its parser is replaced."""
        self._repairs.extend(parser.repairs)

    # Faults -> decisions.
    def fail(self, error: BaseException, attempt: Attempt, message: dict[str, Any] | None) -> _Decision:
        """Decide what follows ``error``: a retry (with its delay and maybe a RestartEvent), or raise
        ``error`` itself when the policy, the attempt budget or the deadline says so."""
        attempt.error = error
        retry = self.retry
        fault = classify(error)
        refused_prefill = self.continuing and fault.status == 400
        if fault.complete or not (refused_prefill or retry.retries(fault)):
            raise error
        number = len(self.attempts)
        if number >= retry.max_attempts:
            raise error
        delay = 0.0 if refused_prefill else retry.delay(number, fault)
        if retry.deadline is not None and time.monotonic() - self.started + delay > retry.deadline:
            raise error
        restart: RestartEvent | None = None
        if refused_prefill:
            self._note = f"continue not possible: the API refused the assistant prefill ({error}); restarted"
            restart = self._restart(number, error)
        elif not self.shown_content:
            self._mode = "continue" if self.continuing else "retry"
            self._keep_usage(message)
        elif retry.on_partial == "raise":
            raise error
        elif retry.on_partial == "restart":
            restart = self._restart(number, error)
        else:
            reason = self._continue_from(message or {})
            if reason is not None:
                self._note = f"continue not possible: {reason}; restarted"
                restart = self._restart(number, error)
        self._delay = delay
        return _Decision(delay, restart)

    def _restart(self, number: int, error: BaseException) -> RestartEvent:
        self._mode = "restart"
        self.shown_start = self.shown_content = False
        self.prefill = None
        self.shown_text = self._held = ""
        self._usage = {}
        return RestartEvent(attempt=number + 1, error=error)

    def _keep_usage(self, message: dict[str, Any] | None) -> None:
        if message and self.continuing:
            self._usage = _sum_usage(self._usage, message.get("usage"))

    def _continue_from(self, message: dict[str, Any]) -> str | None:
        """Prepare a continuation of what was shown; the reason it is impossible, or None."""
        content = message.get("content") or []
        kinds = [str(block.get("type")) for block in content]
        others = [k for k in kinds if k != "text"]
        if others:
            return f"the partial output has a {others[0]} block"
        if len(kinds) > 1:
            return "the partial output has more than one text block"
        text = str(content[0].get("text", "")) if content else ""
        shown = (self.shown_text + text[self.skipped :]) if self.continuing else text
        prefill = shown.rstrip()
        if not prefill:
            return "no text to prefill"
        self._usage = _sum_usage(self._usage, message.get("usage"))
        self.shown_text = shown
        self.prefill = prefill
        self._held = shown[len(prefill) :]
        self._mode = "continue"
        return None


class _ResilientState(_StreamState):
    """The surface's view of a resilient stream: the current attempt's parser, stitched when continuing."""

    def __init__(self, conductor: _Conductor, parser: MessageParser, beta: bool = False) -> None:
        super().__init__(parser, None, None, None, beta)
        self.conductor = conductor

    def stitched(self) -> dict[str, Any]:
        return self.conductor.stitch(self.parser.message)

    def final_message(self) -> Any:
        if not self.parser.complete:
            from .errors import UsageError

            raise UsageError("the stream has not completed")
        return self.sdk_message(self.stitched(), final=True)

    def final_text(self) -> str:
        message = self.stitched()
        texts = [b.get("text", "") for b in message.get("content", []) if b.get("type") == "text"]
        if not texts:
            raise RuntimeError(".get_final_text() can only be called when the API returns a `text` content block.")
        return "".join(texts)

    def snapshot(self) -> Any:
        return self.live_snapshot(self.stitched)


def _stall_or(error: StreamError, kind: str | None, clock: _StallClock, opened: Opened) -> BaseException:
    """The error an attempt ends with: a stall when its clock expired, else the transport's conversion."""
    if kind is not None and isinstance(error, IncompleteStreamError):
        stall = clock.error(kind, time.monotonic(), error.snapshot)
        stall.events = error.events
        stall.__cause__ = error
        return opened.convert(stall) if opened.convert is not None else stall
    converted: BaseException = opened.pump.error_for(error)
    return converted


def _header_stall(
    exc: BaseException, conductor: _Conductor, convert: Callable[[StreamError], BaseException] | None
) -> BaseException:
    """A read timeout while waiting for the response headers, when a stall timeout set it, as the stall
    error (the HTTP library's error kept as ``__cause__``); any other error unchanged."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if not conductor.stall_enabled or not names & {"ReadTimeout", "APITimeoutError"}:
        return exc
    if isinstance(exc, StreamStalledError):
        return exc
    kind = "idle" if conductor.idle is not None else "progress"
    clock = conductor.clock()
    limit = min(t for t in (conductor.idle, conductor.progress) if t is not None)
    clock.last_byte -= limit
    clock.last_progress -= limit
    stall = clock.error(kind, time.monotonic(), None)
    stall.__cause__ = exc
    converted = convert(stall) if convert is not None else stall
    converted.__cause__ = exc
    return converted


class _ResilientSurface:
    _state: _StreamState
    _conductor: _Conductor
    _first_parser: MessageParser | None

    @property
    def message(self) -> dict[str, Any]:
        """The message so far (or final) as a Messages API dict, stitched across continuations."""
        return self._conductor.stitch(self._state.parser.message)

    @property
    def repairs(self) -> list[Repair]:
        """Everything mended or tolerated, over every attempt."""
        return self._conductor.repairs(self._state.parser)

    @property
    def attempts(self) -> list[Attempt]:
        """One record per attempt so far (see :class:`~mendstream.Attempt`)."""
        return self._conductor.attempts

    def _new_parser(self, attempt: Attempt) -> MessageParser:
        """The parser for ``attempt``: the caller's for the first, then a fresh one with its options (and
        class: a BedrockParser for Bedrock's event-stream)."""
        if self._first_parser is None:
            return MessageParser()
        return self._first_parser if attempt.number == 1 else self._first_parser.fresh()


class ResilientMessageStream(_ResilientSurface, MessageStream):
    """A :class:`~mendstream.MessageStream` over as many attempts as the retry policy allows.

    Iterating yields the events of one clean stream (plus a :class:`~mendstream.RestartEvent` before a
    restarted attempt); ``attempts`` records every attempt. Closing it (from any thread) during a backoff
    sleep stops at once and no attempt starts after close.
    """

    def __init__(
        self,
        opener: SyncOpener,
        *,
        retry: Retry | None,
        idle_timeout: float | None,
        progress_timeout: float | None,
        parser: MessageParser | None = None,
        capture: CapturePath | None = None,
        convert: Callable[[StreamError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
    ) -> None:
        self._conductor = _Conductor(retry, idle_timeout, progress_timeout)
        self._opener = opener
        self._capture = capture
        self._convert = convert
        self._first_parser = parser
        self._wake = threading.Event()
        self._closing = False
        super().__init__((), sdk_events=sdk_events, beta=beta)
        self._state = _ResilientState(self._conductor, parser if parser is not None else MessageParser(), beta)

    def _events(self) -> Generator[Any, None, None]:
        conductor = self._conductor
        try:
            while not self._closing:
                attempt = conductor.begin()
                try:
                    opened = self._opener(conductor.prefill, attempt_capture_path(self._capture, attempt.number))
                except Exception as exc:
                    decision = conductor.fail(_header_stall(exc, conductor, self._convert), attempt, None)
                    if self._pause(decision.delay):
                        return
                    if decision.restart is not None:
                        yield decision.restart
                    continue
                parser = self._new_parser(attempt)
                self._state.parser, self._state.response = parser, opened.response
                clock = conductor.clock()
                guard = _SyncGuard(clock, opened.response) if conductor.stall_enabled else None
                error: StreamError | None = None
                stalled: str | None = None
                chunks = opened.pump.pump(opened.body)
                try:
                    if guard is not None:
                        guard.arm()
                    for chunk in chunks:
                        now = time.monotonic()
                        clock.on_bytes(now)
                        attempt.bytes_received += len(chunk)
                        try:
                            events = parser.feed(chunk)
                        except StreamError as exc:
                            events, error = exc.events, exc
                        if events:
                            clock.on_progress(now)
                        yield from conductor.filter(events, attempt)
                        if error is not None:
                            break
                        if guard is not None:
                            stalled = clock.expired(time.monotonic())
                            if stalled is not None:
                                break
                            guard.arm()
                    else:
                        try:
                            events = parser.end()
                        except StreamError as exc:
                            events, error = exc.events, exc
                        yield from conductor.filter(events, attempt)
                finally:
                    if guard is not None:
                        guard.disarm()
                    chunks.close()
                    opened.release()
                if stalled is not None and error is None:
                    error = IncompleteStreamError("the stream stalled", snapshot=parser.message or None)
                if error is None:
                    return
                if guard is not None and stalled is None and isinstance(error, IncompleteStreamError):
                    stalled = guard.fired or clock.expired(time.monotonic())
                conductor.keep_repairs(parser)
                failure = _stall_or(error, stalled, clock, opened)
                decision = conductor.fail(failure, attempt, parser.message)
                if self._pause(decision.delay):
                    return
                if decision.restart is not None:
                    yield decision.restart
        finally:
            self._release()

    def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds unless closed meanwhile; True when the stream was closed."""
        if delay > 0:
            self._wake.wait(delay)
        return self._closing

    def close(self) -> None:
        """Stop reading, release the connection, cut a backoff sleep short (idempotent, any thread)."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(ValueError):  # running in another thread: it returns when the sleep wakes
            self._iterator.close()
        self._release()


class AsyncResilientMessageStream(_ResilientSurface, AsyncMessageStream):
    """The async twin of :class:`ResilientMessageStream`: stalls are bounded with ``asyncio.timeout``;
    cancelling the task or closing the stream during a backoff sleep stops at once. ``convert`` maps a
    stall before any response (no headers within ``idle_timeout``) to what the transport raises."""

    def __init__(
        self,
        opener: AsyncOpener,
        *,
        retry: Retry | None,
        idle_timeout: float | None,
        progress_timeout: float | None,
        parser: MessageParser | None = None,
        capture: CapturePath | None = None,
        convert: Callable[[StreamError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
    ) -> None:
        self._conductor = _Conductor(retry, idle_timeout, progress_timeout)
        self._opener = opener
        self._capture = capture
        self._convert = convert
        self._first_parser = parser
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._running = False
        super().__init__(_no_chunks(), sdk_events=sdk_events, beta=beta)
        self._state = _ResilientState(self._conductor, parser if parser is not None else MessageParser(), beta)

    async def _open(self, attempt: Attempt) -> Opened:
        path = attempt_capture_path(self._capture, attempt.number)
        idle = self._conductor.idle
        if idle is None:
            return await self._opener(self._conductor.prefill, path)
        try:
            async with asyncio.timeout(idle):
                return await self._opener(self._conductor.prefill, path)
        except TimeoutError:
            # No response headers within idle_timeout: a stall before the first byte.
            clock = self._conductor.clock()
            clock.last_byte -= idle
            stall = clock.error("idle", time.monotonic(), None)
            raise (self._convert(stall) if self._convert is not None else stall) from None

    async def _events(self) -> AsyncGenerator[Any, None]:
        conductor = self._conductor
        try:
            while not self._closing:
                attempt = conductor.begin()
                try:
                    opened = await self._open(attempt)
                except Exception as exc:
                    decision = conductor.fail(exc, attempt, None)
                    if await self._pause(decision.delay):
                        return
                    if decision.restart is not None:
                        yield decision.restart
                    continue
                parser = self._new_parser(attempt)
                self._state.parser, self._state.response = parser, opened.response
                clock = conductor.clock()
                error: StreamError | None = None
                stalled: str | None = None
                chunks = opened.pump.apump(opened.body)
                try:
                    while True:
                        try:
                            if conductor.stall_enabled:
                                async with asyncio.timeout_at(_loop_time(clock.deadline())):
                                    chunk = await anext(chunks)
                            else:
                                chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            stalled = clock.expired(time.monotonic()) or "idle"
                            break
                        now = time.monotonic()
                        clock.on_bytes(now)
                        attempt.bytes_received += len(chunk)
                        try:
                            events = parser.feed(chunk)
                        except StreamError as exc:
                            events, error = exc.events, exc
                        if events:
                            clock.on_progress(now)
                        for event in conductor.filter(events, attempt):
                            yield event
                        if error is not None:
                            break
                    if error is None and stalled is None:
                        try:
                            events = parser.end()
                        except StreamError as exc:
                            events, error = exc.events, exc
                        for event in conductor.filter(events, attempt):
                            yield event
                finally:
                    await chunks.aclose()
                    await opened.release()
                if stalled is not None:
                    error = IncompleteStreamError("the stream stalled", snapshot=parser.message or None)
                if error is None:
                    return
                conductor.keep_repairs(parser)
                failure = _stall_or(error, stalled, clock, opened)
                decision = conductor.fail(failure, attempt, parser.message)
                if await self._pause(decision.delay):
                    return
                if decision.restart is not None:
                    yield decision.restart
        finally:
            await self._release()

    async def _pause(self, delay: float) -> bool:
        if delay > 0 and not self._closing:
            self._wake = asyncio.Event()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            finally:
                self._wake = None
        return self._closing

    async def close(self) -> None:
        """Stop reading, release the connection, cut a backoff sleep short (idempotent)."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        with contextlib.suppress(RuntimeError):  # iterated by another task now: it returns when the sleep wakes
            await self._iterator.aclose()
        await self._release()


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


async def _no_chunks() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # pragma: no cover
