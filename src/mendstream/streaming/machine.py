# The stream machine: every decision in a stream's life, sans-IO, in the manner of h11. It opens no
# connection, reads no clock, sleeps on nothing and starts no thread: a driver asks it what to do next
# (`next_action()`), does it, and tells it what happened, passing the time in. The sync and async drivers
# (drivers.py), `replay()` and the HTTP boundary (RepairTransport, the proxy) all drive this one machine, so
# they cannot disagree about what a fault means.
#
# Theory of operation
# -------------------
# A stream is a sequence of attempts. Each attempt goes through the states
#
#     OPEN ──opened──► READ ──received*──► ended / timed_out ──► DONE (or OPEN: a paused turn resumed)
#       │                 │                                        or a fault ──► SLEEP ──slept──► OPEN
#       └─open_failed─────┴──(a fault)──► decide: retry (SLEEP, then OPEN) or FAILED (the error to raise)
#
# and `close()` from any state leads to CLOSED. The action for each state:
#
#     OPEN    Open(attempt, continuation, timeout, restart, request): send the request (`request` when the
#             machine gives one, a paused turn's continuation request; else the stream's own), with the
#             continuation appended to its messages when continuing; the response head must arrive within
#             `timeout` (stall timeouts)
#     READ    Read(): read the next chunk, giving up at `read_deadline()` (None: no stall timeout)
#     SLEEP   Sleep(seconds): back off; a close() during the sleep must end it
#     DONE    Finish()
#     FAILED  Fail(error): raise it
#
# What an attempt's bytes mean is decided by its *reader* (a MessageParser for Python consumers, the
# response rewriter at the HTTP boundary) and what the consumer is shown of them by the *presenter*
# (EventPresenter here; the boundary has its own): the machine only sees whether the presenter has shown
# content yet, whether a continuation is possible, and the reader's message. The decisions follow the Retry
# policy: before any content was shown, a retry is invisible (the presenter never shows a second
# message_start); after content, `on_partial` says raise, restart (a RestartEvent, then the stream again)
# or continue (the text shown so far is sent back as an assistant prefill).
#
# Paused turns (`resume_pause_turn=N`): when an attempt completes with stop_reason "pause_turn" and the
# presenter's PauseResumer (pause.py) allows another continuation, the stream is not done: the machine goes
# back to OPEN with an attempt of mode "resume" whose Open carries the continuation request (the request
# that paused, the paused content appended). Each request of the turn is a *segment* with its own Retry
# budget (max_attempts and deadline counted from its first attempt); faults inside a segment are decided as
# above, over what that segment has shown (a restart sends the turn's first request again). The presenter
# shows the segments as one message. Off (the default), nothing here runs: not one check per chunk.
#
# Stalls: the machine keeps one StallClock per attempt (the last byte, the last event that was not a ping).
# `read_deadline()` is the earlier of the two deadlines; a driver that cannot interrupt a read (sync) arms a
# watchdog with it and reports the resulting end of body with `ended()`: the machine then finds the
# deadline past and calls it a stall. `timed_out()` says the same thing directly (async).
#
# Cost: with no retry and no stall timeout, `received()` is one parser feed, one counter update and, until
# the first content event, a scan of the events for the presenter; nothing else per chunk.
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from mendstream.core.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Data,
    Event,
    MessageDeltaEvent,
    MessageStopEvent,
    TextEvent,
)
from mendstream.core.parser import MessageParser
from mendstream.core.repair import Repair
from mendstream.errors import IncompleteStreamError, StreamError, StreamStalledError, UsageError
from mendstream.streaming.retry import Attempt, AttemptMode, RestartEvent, Retry, check_timeout, classify

if TYPE_CHECKING:
    from mendstream.streaming.pause import PauseResumer

__all__ = [
    "Action",
    "Continuation",
    "EventPresenter",
    "Fail",
    "Finish",
    "Open",
    "Presenter",
    "Read",
    "Reader",
    "Sleep",
    "StallClock",
    "StreamMachine",
    "check_stream_options",
]

NO_RETRY = Retry(max_attempts=1)
_TIMEOUT_NAMES = frozenset({"ReadTimeout", "APITimeoutError", "TimeoutException", "TimeoutError"})


def check_stream_options(retry: object, idle_timeout: object, progress_timeout: object) -> None:
    """Validate ``retry``, ``idle_timeout`` and ``progress_timeout``; ``UsageError`` naming a bad one."""
    if retry is not None and not isinstance(retry, Retry):
        raise UsageError(f"retry must be a mendstream.Retry or None, not {retry!r}")
    check_timeout("idle_timeout", idle_timeout)
    check_timeout("progress_timeout", progress_timeout)


# -- actions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continuation:
    """What a continuing attempt appends to the request's messages: the assistant content shown so far
    (text without its trailing whitespace, which the API refuses at the end of a prefill)."""

    content: tuple[dict[str, Any], ...]

    @classmethod
    def prefill(cls, text: str) -> Continuation:
        return cls(({"type": "text", "text": text},))

    @property
    def text(self) -> str:
        """The text of the continuation's text blocks, joined."""
        return "".join(str(block.get("text", "")) for block in self.content if block.get("type") == "text")

    def apply(self, messages: Sequence[Any] | None) -> list[Any]:
        """``messages`` with this content as the final assistant turn (appended to a final assistant turn
        already there: a string content grows by the text, a list by the blocks). Never mutates its input.
        An empty continuation (nothing was shown yet but a block's start) leaves the messages as they are."""
        out = list(messages or [])
        if not self.content:
            return out
        if out and isinstance(out[-1], dict) and out[-1].get("role") == "assistant":
            last = out[-1]
            existing = last.get("content")
            if isinstance(existing, str) and all(b.get("type") == "text" for b in self.content):
                out[-1] = {**last, "content": existing + self.text}
                return out
            if isinstance(existing, list):
                out[-1] = {**last, "content": [*existing, *map(dict, self.content)]}
                return out
        if len(self.content) == 1 and self.content[0].get("type") == "text":
            out.append({"role": "assistant", "content": self.text})
        else:
            out.append({"role": "assistant", "content": [dict(b) for b in self.content]})
        return out


@dataclass(frozen=True, slots=True)
class Open:
    """Send attempt ``attempt.number``'s request (with ``continuation`` appended when not None); its response
    head must arrive within ``timeout`` seconds (None: no bound beyond the transport's), else report
    ``timed_out()``. Deliver ``restart`` (if any) to the consumer before the attempt's events. ``request``:
    the request to send instead of the stream's own (the continuation request of a paused turn, as
    :func:`~mendstream.streaming.pause.continuation_request` made it; None: the stream's own request)."""

    attempt: Attempt
    continuation: Continuation | None
    timeout: float | None
    restart: RestartEvent | None = None
    request: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """Read the next body chunk; report ``timed_out()`` if none arrived by ``StreamMachine.read_deadline()``
    (a monotonic time that moves with every chunk; None: wait as long as the transport does)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` before the next attempt (report ``slept()``; a ``close()`` ends the wait)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The stream is complete (or closed): release what is open and stop."""


@dataclass(frozen=True, slots=True)
class Fail:
    """The stream failed for good: raise ``error`` (after releasing what is open)."""

    error: BaseException


Action = Open | Read | Sleep | Finish | Fail
_FINISH = Finish()
_READ = Read()


# -- stall clocks --------------------------------------------------------------------------------------------


class StallClock:
    """Deadlines of one attempt: the last byte plus ``idle``, the last non-ping event plus ``progress``."""

    __slots__ = ("idle", "last_byte", "last_progress", "progress", "saw_bytes_since_progress")

    def __init__(self, idle: float | None, progress: float | None, now: float) -> None:
        self.idle = idle
        self.progress = progress
        self.last_byte = now
        self.last_progress = now
        self.saw_bytes_since_progress = False

    def deadline(self) -> float:
        out = math.inf
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


# -- readers and presenters ----------------------------------------------------------------------------------

Out = TypeVar("Out")
Out_co = TypeVar("Out_co", covariant=True)


class Reader(Protocol[Out_co]):
    """What reads one attempt's body (a MessageParser; the response rewriter at the HTTP boundary).

    ``feed`` / ``end`` return the attempt's output for the bytes (events, or bytes to forward); on a fault
    they raise a :class:`~mendstream.StreamError` whose partial output the presenter can recover.
    """

    def feed(self, data: bytes, /) -> Out_co: ...

    def end(self) -> Out_co: ...

    @property
    def message(self) -> dict[str, Any]: ...

    @property
    def repairs(self) -> list[Repair]: ...


class Presenter(Protocol[Out]):
    """What the consumer is shown of each attempt's output (see :class:`EventPresenter`)."""

    shown_content: bool
    """Whether anything the consumer could act on has been shown in this epoch (past message_start)."""

    transparent: bool
    """True while :meth:`show` would return its input unchanged (the machine then skips the call)."""

    resumes: bool
    """Whether :meth:`resume` may return a request (a paused turn can be resumed); False: never asked."""

    def begin(self, attempt: Attempt) -> None: ...

    def show(self, output: Out, attempt: Attempt) -> Out: ...

    def partial(self, error: StreamError) -> Out:
        """The output a reader produced before failing with ``error``."""
        ...

    def empty(self) -> Out: ...

    def progressed(self, output: Out) -> bool:
        """Whether ``output`` holds an event other than a ping (for the progress clock)."""
        ...

    def restart(self) -> None:
        """Forget what was shown: the next attempt starts a new epoch."""
        ...

    def continue_from(self, message: dict[str, Any]) -> Continuation | str:
        """Prepare a continuation of what was shown from the failed attempt's ``message``: the
        continuation to send, or the reason it is impossible."""
        ...

    def keep(self, message: dict[str, Any]) -> None:
        """A failed attempt that showed nothing is retried: keep what its ``message`` adds (usage)."""
        ...

    def resume(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The attempt completed with ``message`` (the reader's): the request that continues its paused turn,
        the next segment then starting (nothing of it shown yet), or None when the stream is done."""
        ...


# -- the machine ---------------------------------------------------------------------------------------------

State = Literal["open", "read", "sleep", "done", "failed", "closed"]


@dataclass(slots=True)
class _Epoch:
    """What the next attempt is: its mode, the delay slept before it, a note, the restart event to show."""

    mode: AttemptMode = "first"
    delay: float = 0.0
    note: str | None = None
    restart: RestartEvent | None = None
    continuation: Continuation | None = None


class StreamMachine(Generic[Out]):
    """The decisions of one resilient (or plain) stream; see the theory of operation above.

    Args:
        retry: the policy (None: one attempt, the plain stream).
        idle_timeout / progress_timeout: stall timeouts in seconds (None: off).
        reader: makes the reader of attempt ``n`` (1 for the first).
        presenter: what the consumer is shown (an :class:`EventPresenter` for event consumers).
        now: the monotonic time the stream starts (for ``Retry.deadline``).
        convert_stall: maps a stall error to what is raised (the SDK transport mixes in its class).
        restarts: whether a restart can be shown (False at the HTTP boundary, where a client cannot be told
            to forget what it received: where a restart would be the answer, the stream fails instead).
        stop_when_complete: end the attempt as soon as its reader has the whole message (``complete``), not at
            the end of the body: a boundary must not keep its client waiting on an upstream that keeps the
            connection open after ``message_stop``.

    The inputs ``opened``, ``open_failed``, ``received``, ``ended``, ``timed_out`` and ``slept`` must be
    called in the state whose action asked for them; anything else is a :class:`UsageError` (a driver bug).
    """

    def __init__(
        self,
        retry: Retry | None,
        *,
        reader: Callable[[int], Reader[Out]],
        presenter: Presenter[Out],
        now: float,
        idle_timeout: float | None = None,
        progress_timeout: float | None = None,
        convert_stall: Callable[[StreamStalledError], BaseException] | None = None,
        restarts: bool = True,
        stop_when_complete: bool = False,
    ) -> None:
        self.retry = retry if retry is not None else NO_RETRY
        self.restarts = restarts
        self.stop_when_complete = stop_when_complete
        self.idle = idle_timeout
        self.progress = progress_timeout
        self.stall_enabled = idle_timeout is not None or progress_timeout is not None
        limits = [t for t in (idle_timeout, progress_timeout) if t is not None]
        self.head_timeout: float | None = min(limits) if limits else None
        """The longest wait for a response head (the first byte): the earlier stall timeout."""
        self._make_reader = reader
        self.presenter = presenter
        self._convert_stall = convert_stall
        self.started = now
        self.attempts: list[Attempt] = []
        self.state: State = "open"
        self.reader: Reader[Out] | None = None
        self.clock: StallClock | None = None
        self._attempt: Attempt | None = None
        self._convert: Callable[[StreamError], BaseException] | None = None
        self._epoch = _Epoch()
        self._sleep = 0.0
        self._error: BaseException | None = None
        self._repairs: list[Repair] = []
        self._action: Action | None = None
        self._continuation: Continuation | None = None
        self._feed: Callable[[bytes], Out] = _not_reading
        self._show: Callable[[Out, Attempt], Out] = presenter.show
        self._kept: Reader[Out] | None = None  # the reader whose repairs are in _repairs already
        self.note: str | None = None
        """Why the stream failed when it might have continued (``restarts=False``), for the error shown."""
        self.request: dict[str, Any] | None = None
        """What the current segment sends: the continuation request of a paused turn, or None (the stream's
        own request)."""
        self._segment = 0  # attempts before the current segment: its Retry budget counts from there
        self._completed: Attempt | None = None  # the last attempt that read a whole message

    # -- what to do next ---------------------------------------------------------------------------------------

    def next_action(self) -> Action:
        """The action for the current state (the same object until the state changes)."""
        action = self._action
        if action is not None:
            return action
        state = self.state
        if state == "open":
            epoch = self._epoch
            attempt = Attempt(number=len(self.attempts) + 1, mode=epoch.mode, delay=epoch.delay, note=epoch.note)
            self._attempt = attempt
            action = Open(attempt, epoch.continuation, self.head_timeout, epoch.restart, self.request)
        elif state == "read":
            action = _READ
        elif state == "sleep":
            action = Sleep(self._sleep)
        elif state == "failed":
            assert self._error is not None
            action = Fail(self._error)
        else:
            action = _FINISH
        self._action = action
        return action

    def read_deadline(self) -> float | None:
        """When the chunk being read must have arrived (monotonic; None: no stall timeout)."""
        clock = self.clock
        return clock.deadline() if clock is not None else None

    @property
    def attempt(self) -> Attempt | None:
        """The current (or last) attempt."""
        return self._attempt

    @property
    def reading(self) -> bool:
        return self.state == "read"

    @property
    def attempt_complete(self) -> bool:
        """Whether the current (or last) attempt read a whole message (the stream may go on after it: a
        paused turn resumed)."""
        return self._attempt is not None and self._completed is self._attempt

    # -- inputs ----------------------------------------------------------------------------------------------------

    def opened(
        self,
        now: float,
        *,
        convert: Callable[[StreamError], BaseException] | None = None,
        reader: Reader[Out] | None = None,
    ) -> None:
        """The attempt's response head arrived and can be streamed. ``convert`` maps the reader's errors
        to what is raised for this attempt (the transport's error mapping); ``reader`` replaces the one the
        machine would make (a transport that chose the parser from the response)."""
        self._expect("open")
        attempt = self._attempt
        assert attempt is not None
        self.attempts.append(attempt)
        self._epoch = _Epoch()
        self.reader = reader if reader is not None else self._make_reader(attempt.number)
        self._feed = self.reader.feed  # bound once: received() is the hot path
        self._show = self.presenter.show
        self.presenter.begin(attempt)
        self.clock = StallClock(self.idle, self.progress, now) if self.stall_enabled else None
        self._convert = convert
        self._set("read")

    def open_failed(self, error: BaseException, now: float) -> None:
        """Sending the request failed before a response could be streamed (a status error, a connection
        error, a timeout waiting for the head)."""
        self._expect("open")
        attempt = self._attempt
        assert attempt is not None
        self.attempts.append(attempt)
        self._epoch = _Epoch()
        self.reader = None
        self._fault(self._head_stall(error, now), attempt, None, now)

    def timed_out_opening(self, now: float) -> None:
        """No response head arrived within the Open action's timeout."""
        self._expect("open")
        self.open_failed(self._head_stall(TimeoutError("no response head"), now, cause=False), now)

    def received(self, data: bytes, now: float) -> Out:
        """Body bytes arrived: the output to deliver to the consumer (the machine may leave READ: a fault
        found in them, or a stall deadline that passed while they trickled in). ``now`` is read only when a
        stall timeout is set (a driver may pass 0.0 otherwise)."""
        attempt = self._attempt
        if self.state != "read" or attempt is None:
            self._expect("read")
        assert attempt is not None
        attempt.bytes_received += len(data)
        try:
            output = self._feed(data)
        except StreamError as error:
            presenter = self.presenter
            output = presenter.show(presenter.partial(error), attempt)
            self._attempt_failed(error, now)
            return output
        if self.stop_when_complete and getattr(self.reader, "complete", False):
            return self._complete(output, attempt, now)
        clock = self.clock
        if clock is None:  # the common case: one feed, and the presenter only while it may change things
            if self.presenter.transparent:
                attempt.events_delivered += len(output)  # type: ignore[arg-type]
                return output
            return self._show(output, attempt)
        presenter = self.presenter
        clock.last_byte = now
        if presenter.progressed(output):
            clock.last_progress = now
            clock.saw_bytes_since_progress = False
        else:
            clock.saw_bytes_since_progress = True
        output = presenter.show(output, attempt)
        kind = clock.expired(now)
        if kind is not None:
            self._stalled(kind, now)
        return output

    def _complete(self, output: Out, attempt: Attempt, now: float) -> Out:
        """The reader has the whole message: what ending it adds, after ``output``; the machine is DONE."""
        shown = self.presenter.show(output, attempt)
        tail = self.ended(now)
        return shown + tail if tail else shown  # type: ignore[operator]

    def ended(self, now: float) -> Out:
        """The body ended (EOF, or the transport's error ended it): the last output; the machine moves to
        DONE (or back to OPEN when the presenter resumes a paused turn: the next segment's Retry deadline
        counts from ``now``), or decides about the fault (an incomplete stream, or a stall when the deadline
        had passed)."""
        self._expect("read")
        reader = self.reader
        attempt = self._attempt
        assert reader is not None and attempt is not None
        presenter = self.presenter
        clock = self.clock
        kind = clock.expired(now) if clock is not None else None
        try:
            output = reader.end()
        except StreamError as error:
            output = presenter.show(presenter.partial(error), attempt)
            if kind is not None and isinstance(error, IncompleteStreamError):
                self._stalled(kind, now, error)
            else:
                self._attempt_failed(error, now)
            return output
        self._set("done")
        self._completed = attempt
        shown = presenter.show(output, attempt)  # first: a paused stop is held back as it is shown
        if presenter.resumes:
            request = presenter.resume(reader.message)
            if request is not None:
                self._resume(request, now)
        return shown

    def _resume(self, request: dict[str, Any], now: float) -> None:
        """The attempt completed a paused turn that goes on: the next segment's first attempt (mode
        "resume") sends ``request``, with a Retry budget of its own."""
        self._keep_repairs()
        self.request = request
        self._continuation = None
        self._segment = len(self.attempts)
        self.started = now
        self._epoch = _Epoch(mode="resume")
        self.reader = None  # the turn so far is the presenter's (stitched); no attempt is reading
        self._set("open")

    def timed_out(self, now: float) -> Out:
        """No chunk arrived by ``read_deadline()``."""
        self._expect("read")
        clock = self.clock
        kind = (clock.expired(now) if clock is not None else None) or "idle"
        self._stalled(kind, now)
        return self.presenter.empty()

    def slept(self, now: float) -> None:
        self._expect("sleep")
        if self.retry.deadline is not None and now - self.started > self.retry.deadline:
            attempt = self.attempts[-1]
            self._error = attempt.error
            self._set("failed")
            return
        self._set("open")

    def close(self) -> None:
        """The consumer stopped: no attempt starts after this."""
        self._set("closed")

    # -- decisions ---------------------------------------------------------------------------------------------

    @property
    def repairs(self) -> list[Repair]:
        """The repairs of every attempt."""
        reader = self.reader
        if reader is None or reader is self._kept:
            return list(self._repairs)
        return [*self._repairs, *reader.repairs]

    def _expect(self, state: State) -> None:
        if self.state != state:
            raise UsageError(f"stream machine: input for state {state!r} in state {self.state!r}")

    def _set(self, state: State) -> None:
        self.state = state
        self._action = None

    def _stall(self, stall: StreamStalledError) -> BaseException:
        return self._convert_stall(stall) if self._convert_stall is not None else stall

    def _head_stall(self, error: BaseException, now: float, *, cause: bool = True) -> BaseException:
        """A timeout waiting for the response head, when a stall timeout bounded it, as the stall error (the
        transport's error kept as ``__cause__``); any other error unchanged."""
        limit = self.head_timeout
        if limit is None or isinstance(error, StreamStalledError):
            return error
        if not {cls.__name__ for cls in type(error).__mro__} & _TIMEOUT_NAMES:
            return error
        kind = "idle" if self.idle is not None else "progress"
        stall = StallClock(self.idle, self.progress, now - limit).error(kind, now, None)
        converted = self._stall(stall)
        if cause:
            stall.__cause__ = error
            converted.__cause__ = error
        return converted

    def _stalled(self, kind: str, now: float, incomplete: IncompleteStreamError | None = None) -> None:
        clock = self.clock
        reader = self.reader
        assert clock is not None and reader is not None
        stall = clock.error(kind, now, reader.message or None)
        if incomplete is not None:
            stall.events = incomplete.events
            stall.__cause__ = incomplete
        self._keep_repairs()
        self._fault(self._stall(stall), self._current(), reader.message, now)

    def _attempt_failed(self, error: StreamError, now: float) -> None:
        reader = self.reader
        assert reader is not None
        failure = self._convert(error) if self._convert is not None else error
        if failure is not error and failure.__cause__ is None:
            failure.__cause__ = error.__cause__
        self._keep_repairs()
        self._fault(failure, self._current(), reader.message, now)

    def _keep_repairs(self) -> None:
        """The attempt is over: its repairs join those kept (once: the reader stays current until the next)."""
        if self.reader is not None and self.reader is not self._kept:
            self._repairs.extend(self.reader.repairs)
            self._kept = self.reader

    def _current(self) -> Attempt:
        attempt = self._attempt
        assert attempt is not None
        return attempt

    def _fault(self, error: BaseException, attempt: Attempt, message: dict[str, Any] | None, now: float) -> None:
        """Decide what follows ``error``: SLEEP then a new attempt, or FAILED."""
        attempt.error = error
        decision = self._decide(error, message, now)
        if decision is None:
            self._error = error
            self._set("failed")
            return
        self._sleep = decision
        self._set("sleep")

    def _decide(self, error: BaseException, message: dict[str, Any] | None, now: float) -> float | None:
        """The delay before the next attempt (and the next attempt's epoch prepared), or None to raise."""
        retry = self.retry
        fault = classify(error)
        presenter = self.presenter
        continuing = self._was_continuing()
        refused_prefill = continuing and fault.status == 400
        if fault.complete or not (refused_prefill or retry.retries(fault)):
            return None
        number = len(self.attempts)
        tries = number - self._segment  # the attempts of this segment (one request of a paused turn)
        if tries >= retry.max_attempts:
            return None
        delay = 0.0 if refused_prefill else retry.delay(tries, fault)
        if retry.deadline is not None and now - self.started + delay > retry.deadline:
            return None
        epoch = _Epoch(delay=delay)
        if refused_prefill:
            if not self.restarts:
                return None
            epoch.note = f"continue not possible: the API refused the assistant prefill ({error}); restarted"
            self._restart(epoch, number, error)
        elif not presenter.shown_content:
            epoch.mode = "continue" if continuing else "retry"
            epoch.continuation = self._continuation
            if message:
                presenter.keep(message)
        elif retry.on_partial == "raise":
            return None
        elif retry.on_partial == "restart":
            if not self.restarts:
                return None
            self._restart(epoch, number, error)
        else:
            outcome = presenter.continue_from(message or {})
            if isinstance(outcome, str):
                if not self.restarts:
                    self.note = f"continue not possible: {outcome}"
                    return None
                epoch.note = f"continue not possible: {outcome}; restarted"
                self._restart(epoch, number, error)
            else:
                epoch.mode = "continue"
                epoch.continuation = outcome
        self._continuation = epoch.continuation
        self._epoch = epoch
        return delay

    def _was_continuing(self) -> bool:
        """Whether the failed attempt was sent as a continuation."""
        return self._continuation is not None

    def _restart(self, epoch: _Epoch, number: int, error: BaseException) -> None:
        epoch.mode = "restart"
        epoch.restart = RestartEvent(attempt=number + 1, error=error)
        epoch.continuation = None
        self.request = None  # a paused turn starts again from its first request (in this segment's budget)
        self.presenter.restart()


def _not_reading(data: bytes, /) -> Any:
    raise UsageError("stream machine: body bytes received with no attempt open")


# -- the presenter for event consumers -----------------------------------------------------------------------


def skip_held(text: str, held: str, skipped: int) -> tuple[str, int, bool]:
    """Drop from a continuation's start the whitespace the consumer already saw (``held``: held back from the
    prefill, because the API refuses a prefill ending in whitespace; ``skipped`` of it matched so far).
    Returns the rest of ``text``, the new ``skipped``, and whether skipping is over (a character that differs,
    or all of ``held`` matched)."""
    i = 0
    while i < len(text) and skipped < len(held) and text[i] == held[skipped]:
        i += 1
        skipped += 1
    return text[i:], skipped, i < len(text) or skipped >= len(held)


class _StitchedSnapshot:
    """The snapshot of a continued text block at one event: the text shown before, then this attempt's
    text without the whitespace it repeated (computed when the event is stitched)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def snapshot_at(self, n: int, /) -> str:
        return self.text


def sum_usage(total: dict[str, Any], usage: Any) -> dict[str, Any]:
    """``total`` with the counts of ``usage`` added (nested dicts summed; flags and strings kept)."""
    if not isinstance(usage, dict):
        return total
    for key, value in usage.items():
        old = total.get(key)
        if isinstance(value, bool) or value is None:
            total.setdefault(key, value)
        elif isinstance(value, (int, float)):
            total[key] = (old if isinstance(old, (int, float)) and not isinstance(old, bool) else 0) + value
        elif isinstance(value, dict):
            total[key] = sum_usage(dict(old) if isinstance(old, dict) else {}, value)
        else:
            total[key] = value
    return total


@dataclass(slots=True)
class _Shown:
    """What a continuation continues: the text shown so far, the whitespace the prefill left out (to be
    dropped from the continuation's start), the usage of the attempts before, and the usage the running
    attempt's (dropped) ``message_start`` reported."""

    text: str = ""
    held: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    start_usage: dict[str, Any] = field(default_factory=dict)


def delta_usage(shown: dict[str, Any], start: dict[str, Any], delta: Any) -> dict[str, Any]:
    """The usage a continuation's ``message_delta`` must carry so that a consumer that applies it (the SDK
    keeps each field the delta has) ends with the whole turn's: the continuation's own usage (its
    ``message_start``'s, overridden by the delta's non-null fields) added to the earlier attempts' ``shown``."""
    own = dict(start)
    if isinstance(delta, dict):
        own.update((key, value) for key, value in delta.items() if value is not None)
    return sum_usage(dict(shown), own)


class EventPresenter:
    """What an event consumer is shown: one ``message_start`` per epoch (a retry's own is dropped), and when
    continuing, the continuation's text spliced into text block 0 (whitespace the prefill had to leave out is
    not repeated), its snapshots, final block and final message stitched, and usage summed over attempts.

    With ``pause`` (a :class:`~mendstream.streaming.pause.PauseResumer`: ``resume_pause_turn``), a turn that
    pauses is resumed: every request of the turn is a segment, shown as above (block indexes from 0, text
    continuations spliced within it), then rewritten by ``pause.events`` into one message (one
    ``message_start``, indexes that go on from segment to segment, the paused stops held back, usage summed,
    the stitched final message).

    Invariant: the consumer sees every character of text at most once per epoch.
    """

    __slots__ = (
        "_drop_text_event", "_shown", "_skipping", "continuing", "pause", "resumes", "shown_content",
        "shown_start", "skipped", "transparent",
    )

    def __init__(self, pause: PauseResumer | None = None) -> None:
        self.shown_start = False
        self.shown_content = False
        self.continuing = False
        self.transparent = False
        self._shown = _Shown()
        self.skipped = 0
        self._skipping = False
        self._drop_text_event = False
        self.pause = pause
        self.resumes = pause is not None

    def begin(self, attempt: Attempt) -> None:
        self.skipped = 0
        self._skipping = self.continuing and bool(self._shown.held)

    def empty(self) -> list[Event]:
        return []

    def partial(self, error: StreamError) -> list[Event]:
        return list(getattr(error, "events", None) or [])

    def progressed(self, output: list[Event]) -> bool:
        return bool(output)

    def show(self, output: list[Event], attempt: Attempt) -> list[Event]:
        if not output:
            return output
        if self.transparent:
            attempt.events_delivered += len(output)
            return output
        out: list[Event] = []
        for event in output:
            if event.type == "message_start":
                if self.shown_start:
                    if self.continuing:  # its usage is part of the turn's: the continuation's delta adds it
                        usage = event.message.to_dict().get("usage")
                        self._shown.start_usage = usage if isinstance(usage, dict) else {}
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
        pause = self.pause
        if pause is not None:
            out = pause.events(out)
        attempt.events_delivered += len(out)
        self.transparent = self.shown_content and not self.continuing and pause is None
        return out

    def restart(self) -> None:
        self.shown_start = self.shown_content = False
        self._segment()
        if self.pause is not None:
            self.pause.reset()

    def _segment(self) -> None:
        """Forget the text shown (a new epoch, or the next request of a paused turn)."""
        self.shown_content = False
        self.continuing = False
        self.transparent = False
        self._shown = _Shown()
        self.skipped = 0
        self._skipping = False
        self._drop_text_event = False

    def resume(self, message: dict[str, Any]) -> dict[str, Any] | None:
        pause = self.pause
        if pause is None:
            return None
        request = pause.next_request(self._stitch_text(message))
        if request is not None:
            # Nothing of the next request is shown yet; its message_start goes to the resumer, which takes
            # its usage and drops it (the consumer has the turn's).
            self.shown_start = False
            self._segment()
        return request

    def keep(self, message: dict[str, Any]) -> None:
        if self.continuing:
            self._shown.usage = sum_usage(self._shown.usage, message.get("usage"))

    def continue_from(self, message: dict[str, Any]) -> Continuation | str:
        content = message.get("content") or []
        kinds = [str(block.get("type")) for block in content]
        others = [k for k in kinds if k != "text"]
        if others:
            return f"the partial output has a {others[0]} block"
        if len(kinds) > 1:
            return "the partial output has more than one text block"
        text = str(content[0].get("text", "")) if content else ""
        shown = (self._shown.text + text[self.skipped :]) if self.continuing else text
        prefill = shown.rstrip()
        self._shown.usage = sum_usage(self._shown.usage, message.get("usage"))
        self._shown.text = shown
        self._shown.held = shown[len(prefill) :]
        self.continuing = True
        self.transparent = False
        # Nothing but a block's start (or blanks) was shown: the request is sent again as it was, and its
        # answer spliced in as a continuation's is (the client already has message_start and block 0's start).
        return Continuation.prefill(prefill) if prefill else Continuation(())

    def stitch(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message as the consumer must see it: when continuing, text block 0 holds all the text shown
        and usage is summed over every attempt; in a resumed turn, the earlier requests' messages come first
        (``message`` may then be ``{}``: no attempt of the running request has a message yet)."""
        out = self._stitch_text(message)
        pause = self.pause
        if pause is None or not pause.resuming:
            return out
        return pause.message(out)

    def _stitch_text(self, message: dict[str, Any]) -> dict[str, Any]:
        """The running request's ``message`` with the text continued in it stitched (see :meth:`stitch`)."""
        if not self.continuing or not message:
            return message
        content = list(message.get("content") or [])
        if content and content[0].get("type") == "text":
            first = dict(content[0])
            first["text"] = self._shown.text + str(first.get("text", ""))[self.skipped :]
            content[0] = first
        else:
            content.insert(0, {"type": "text", "text": self._shown.text})
        out = dict(message)
        out["content"] = content
        out["usage"] = sum_usage(dict(self._shown.usage), message.get("usage"))
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
            return TextEvent(text, _StitchedSnapshot(self._shown.text + visible), 0)
        if isinstance(event, ContentBlockStopEvent) and event.index == 0:
            block = dict(event.content_block)
            if block.get("type") == "text":
                block["text"] = self._shown.text + str(block.get("text", ""))[self.skipped :]
            return ContentBlockStopEvent(0, Data(block))
        if isinstance(event, MessageStopEvent):
            return MessageStopEvent(Data(self._stitch_text(event.message.to_dict())))
        if isinstance(event, MessageDeltaEvent):
            shown = self._shown
            return MessageDeltaEvent(event.delta, Data(delta_usage(shown.usage, shown.start_usage,
                                                                   event.usage.to_dict())))
        return event

    def _skip(self, text: str) -> str:
        rest, self.skipped, done = skip_held(text, self._shown.held, self.skipped)
        if done:
            self._skipping = False
        return rest


def parser_factory(first: MessageParser | None) -> Callable[[int], MessageParser]:
    """The readers of a Python stream: the caller's parser for the first attempt, then fresh ones with its
    options (and framing)."""

    def make(number: int) -> MessageParser:
        if first is None:
            return MessageParser()
        return first if number == 1 else first.fresh()

    return make
