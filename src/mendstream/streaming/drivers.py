# The sync and async drivers of the stream machine, with the SDK's MessageStream surface. Each driver asks
# the machine (machine.py) what to do, does it, and reports back with the time; everything they share (the
# surface, the attempt bookkeeping, releasing) lives in _Driver. The only twins left are the waits: a
# blocking read bounded by the watchdog thread (stall.py) and `threading.Event` for backoff, against
# `asyncio.timeout_at` and `asyncio.Event`.
#
# How a stream ends: read to the end or failed, it releases its attempt itself; `close()` / `with` release
# it (the transport may drain a failed capture first); dropped without either, a finaliser warns
# (ResourceWarning, as files do) and hands the attempt's `abandon` to the reaper thread (reaper.py), which
# closes it outside any finaliser. The event generators never release anything when they are closed
# (GeneratorExit): a generator is closed by the garbage collector at an arbitrary point, possibly inside the
# HTTP library's pool lock.
from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self, cast

from mendstream.core.events import Event
from mendstream.core.parser import MessageParser
from mendstream.core.repair import Repair
from mendstream.core.sdk_events import to_sdk_event, to_sdk_message
from mendstream.errors import StreamError, StreamStalledError, UsageError, request_id_of
from mendstream.streaming import reaper
from mendstream.streaming.machine import (
    Action,
    EventPresenter,
    Fail,
    Finish,
    Open,
    Read,
    Sleep,
    StreamMachine,
    check_stream_options,
    parser_factory,
)
from mendstream.streaming.pause import PauseResumer
from mendstream.streaming.retry import Attempt, Retry
from mendstream.streaming.stall import SyncGuard, socket_of, socket_waker

__all__ = [
    "AsyncMessageStream",
    "AsyncOpener",
    "AsyncRun",
    "MessageStream",
    "Opened",
    "Opener",
    "Run",
    "SyncRun",
    "watch",
]


@dataclass(slots=True)
class Opened:
    """One attempt's open response, as a transport's opener returns it.

    ``body`` yields the body chunks (an iterable for sync streams, an async iterable for async ones); a
    transport error while reading must end it quietly (the machine then judges the stream as cut).
    ``release`` closes the response when the attempt is over (for async streams it may return an
    awaitable); ``abandon`` closes it without draining anything, from the reaper thread, for a stream
    dropped without ``close()`` (None: nothing to close). ``convert`` maps a mendstream error of this
    attempt to what is raised (the SDK transport mixes in the SDK's classes and attaches the transport's
    error).
    """

    response: Any
    body: Any
    release: Callable[[], object]
    abandon: Callable[[], object] | None = None
    convert: Callable[[StreamError], BaseException] | None = None
    trace: Callable[[Callable[[], Any]], Any] | None = None
    """Given a function returning the message so far (as the SDK's message, or None), returns what watches
    this attempt: an object with ``events(list)`` (shown every event list the attempt delivers) and
    ``failed(error)`` (the error that ended it), e.g. the SDK's tracing span fed as the SDK's own stream feeds
    it; None (or returning None): nothing watches."""
    parser: MessageParser | None = None
    """The parser for this attempt when the transport chose it (None: the stream's own)."""
    complete: Callable[[], object] | None = None
    """Told that the attempt read a whole message (before ``release``), when the machine stopped reading at
    its end rather than at the end of the body (a capture then records the outcome "complete")."""


Opener = Callable[[Open], Opened]
"""``opener(action)``: send attempt ``action.attempt.number``'s request (with ``action.continuation`` appended
to its messages when not None; bounding the wait for the response head by ``action.timeout`` when the
transport can) and return the open response; raise what the transport raises before streaming."""
AsyncOpener = Callable[[Open], Awaitable[Opened]]


class _Slot:
    """The attempt a stream holds open; shared with the stream's finaliser (which must not see the stream)."""

    __slots__ = ("opened",)

    def __init__(self) -> None:
        self.opened: Opened | None = None


def watch(owner: object, run: Run) -> weakref.finalize[Any, Any]:
    """A finaliser that hands ``run``'s open attempt to the reaper if ``owner`` (what the user holds: a stream,
    a response body) is collected before it released it. Detach it once the run is over."""
    finalizer = weakref.finalize(owner, _abandoned, run.slot)
    finalizer.atexit = False  # at interpreter exit the process takes its connections with it
    return finalizer


def _abandoned(slot: _Slot) -> None:
    # Runs in a finaliser: warn as an unclosed file does, then hand the close to the reaper thread (no I/O,
    # no lock here).
    opened = slot.opened
    if opened is None:
        return
    slot.opened = None
    abandon = opened.abandon
    if abandon is None:  # nothing external to close (a recording in memory)
        reaper.release(opened)
        return
    warnings.warn(
        "a mendstream stream was garbage-collected without close(); its connection is closed without "
        "reading the rest of the body (use `with` / `async with`, or call close())",
        ResourceWarning,
        stacklevel=2,
    )

    def job() -> None:
        try:
            abandon()
        finally:
            reaper.release(opened)

    reaper.submit(job)


class Run:
    """What both drivers share: the machine and the attempt held open. The public stream objects hold a run
    and iterate its generator; nothing here refers back to them, so a stream dropped by its owner is freed at
    once by reference counting (no cycle waits for the garbage collector) and its finaliser runs then."""

    def __init__(
        self,
        machine: StreamMachine[Any],
        *,
        first_parser: MessageParser | None = None,
        beta: bool = False,
        fail_as: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.machine = machine
        self.fail_as = fail_as
        """Set: a failure after the first attempt opened is delivered as ``fail_as(error)``, the last item,
        instead of raised (a boundary ends the client's stream with an ``error`` event)."""
        self.presenter: Any = machine.presenter
        self.first_parser = first_parser
        self.beta = beta
        self.slot = _Slot()
        self.response: Any = None
        self.closing = False
        self.watcher: Any = None  # what watches the current attempt (Opened.trace)
        self.structured: Any = None
        """A :class:`~mendstream.streaming.structured.OutputFormat` (with ``output_format=``): the SDK's
        ParsedMessage and parsed events."""
        self.live: Any = None  # the current_message_snapshot object, once asked for

    def message(self) -> dict[str, Any]:
        machine = self.machine
        reader = machine.reader
        if reader is not None:
            return self.presenter.stitch(reader.message)  # type: ignore[no-any-return]
        # Between the requests of a resumed paused turn (or after one failed to open): the turn so far.
        return self.presenter.stitch({}) if machine.request is not None else {}

    def sdk_message(self, message: dict[str, Any], *, final: bool = False) -> Any:
        """``message`` as the SDK's message (its ``ParsedMessage``, parsed, with ``output_format``)."""
        if self.structured is not None:
            return self.structured.message(message, final=final)
        return to_sdk_message(message, beta=self.beta)

    def sdk_event(self, event: Event) -> Any:
        """``event`` as the SDK's (with the parsed outputs the SDK's helper adds, with ``output_format``)."""
        if self.structured is not None:
            return self.structured.sdk_event(event)
        return to_sdk_event(event, beta=self.beta)

    def sdk_snapshot(self) -> Any:
        """The message so far as the SDK's message, or None before message_start."""
        message = self.message()
        return self.sdk_message(message) if message else None

    def progress(self) -> tuple[int, int, bool]:
        """Changes whenever the message may have: the live snapshot's cue to rebuild."""
        reader = self.machine.reader
        if not isinstance(reader, MessageParser):
            return (0, 0, False)
        return id(reader), reader.bytes_fed, reader.complete

    def hold(self, opened: Opened) -> None:
        self.slot.opened = opened
        self.response = opened.response
        self.watcher = opened.trace(self.sdk_snapshot) if opened.trace is not None else None
        reaper.hold(opened)

    def attempt_over(self) -> None:
        """The current attempt ended: tell its watcher how (before its response is released), and the
        transport when it read a whole message."""
        opened = self.slot.opened
        if opened is not None and opened.complete is not None and self.machine.attempt_complete:
            opened.complete()
        watcher, self.watcher = self.watcher, None
        attempt = self.machine.attempt
        if watcher is not None and attempt is not None and attempt.error is not None:
            watcher.failed(attempt.error)

    def take(self) -> Opened | None:
        """The attempt held open, no longer held (the caller releases it)."""
        opened = self.slot.opened
        self.slot.opened = None
        return opened

    @property
    def finished(self) -> bool:
        """Nothing more will be opened."""
        return self.machine.state in ("done", "failed", "closed")

    def fail(self, action: Fail) -> NoReturn:
        error = action.error
        if self.machine.request is not None or getattr(self.presenter, "continuing", False):
            # A continuation (of a text cut short, or a request of a resumed paused turn) failed: the error's
            # snapshot is everything shown so far, stitched (set on any error that takes an attribute: the
            # SDK's status errors too), not only the failed attempt's part.
            with contextlib.suppress(AttributeError, TypeError):
                error.snapshot = self.message() or None  # type: ignore[attr-defined]
        raise error from error.__cause__


class SyncRun(Run):
    """The sync driver: blocking reads bounded by the watchdog thread, backoff on a ``threading.Event``."""

    def __init__(self, opener: Opener, machine: StreamMachine[Any], **options: Any) -> None:
        super().__init__(machine, **options)
        self.opener = opener
        self.body: Iterator[bytes] | None = None
        self.guard: SyncGuard | None = None
        self.wake = threading.Event()

    def start(self) -> None:
        """Send the first attempt; raise its error when it is not retried."""
        machine = self.machine
        action = machine.next_action()
        if isinstance(action, Open):
            self.open(action)
            action = machine.next_action()
        if isinstance(action, Fail):
            self.fail(action)

    def open_until_streaming(self) -> Action:
        """Open attempts (sleeping between them) until one streams, or the stream fails or is closed: the
        action then due (Read, Fail or Finish). For a boundary that must know before it answers."""
        machine = self.machine
        while True:
            action = machine.next_action()
            if isinstance(action, Open):
                self.open(action)
            elif isinstance(action, Sleep):
                self.sleep(action.seconds)
            else:
                return action

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.wake.wait(seconds)
        if self.closing:
            self.machine.close()
        else:
            self.machine.slept(time.monotonic())

    def interrupt(self) -> None:
        """Make a read blocked on the current attempt's connection return (its socket shut down: HTTP/1.1
        only), from any thread; the machine then judges the end of the body."""
        opened = self.slot.opened
        wake = socket_waker(getattr(opened.response, "extensions", None)) if opened is not None else None
        if wake is not None:
            wake()

    def close(self, events: Generator[Any, None, None] | None) -> None:
        """Stop: no attempt starts after this; a backoff sleep ends at once; ``events`` (the generator of
        :meth:`events`) is closed unless another thread runs it; the current attempt is released."""
        self.closing = True
        self.wake.set()
        if events is not None:
            with contextlib.suppress(ValueError):  # running in another thread: it returns when the sleep wakes
                events.close()
        self.release()

    def open(self, action: Open) -> None:
        machine = self.machine
        try:
            opened = self.opener(action)
        except Exception as exc:
            machine.open_failed(exc, time.monotonic())
            return
        machine.opened(time.monotonic(), convert=opened.convert, reader=opened.parser)
        self.hold(opened)
        self.body = iter(opened.body)
        self.guard = None
        if machine.stall_enabled:
            sock = socket_of(opened.response)
            if sock is not None:
                self.guard = SyncGuard(sock, machine.read_deadline)

    def events(self) -> Generator[Any, None, None]:
        machine = self.machine
        try:
            while True:
                action = machine.next_action()
                if isinstance(action, Read):
                    if machine.clock is None and self.watcher is None:
                        # The hot loop, inline (a generator less per event): one machine call per chunk.
                        received = machine.received
                        body = self.body
                        assert body is not None
                        for chunk in body:
                            events = received(chunk, 0.0)
                            if events:
                                yield from events
                            if machine.state != "read":
                                break
                        else:
                            events = machine.ended(time.monotonic())  # once per attempt
                            if events:
                                yield from events
                        self.attempt_done()
                    else:
                        yield from self.read()
                elif isinstance(action, Open):
                    if action.restart is not None:
                        yield action.restart
                    self.open(action)
                elif isinstance(action, Sleep):
                    self.sleep(action.seconds)
                elif isinstance(action, Finish):
                    return
                elif self.fail_as is not None:
                    yield self.fail_as(action.error)
                    return
                else:
                    self.fail(action)
        except GeneratorExit:
            raise  # closed by close() or by the garbage collector: they release the source, not this frame
        except BaseException:
            self.release()
            raise

    def read(self) -> Generator[Any, None, None]:
        """The current attempt's events until it ends, when a stall timeout or a watcher is set (see events()
        for the loop without them)."""
        machine = self.machine
        body = self.body
        guard = self.guard
        assert body is not None
        received = machine.received
        watcher = self.watcher
        observe = watcher.events if watcher is not None else None
        monotonic = time.monotonic
        if guard is not None:
            guard.arm()
        try:
            for chunk in body:
                events = received(chunk, monotonic())
                if events:
                    if observe is not None:
                        observe(events)
                    yield from events
                if machine.state != "read":
                    break
                if guard is not None:
                    guard.arm()
            else:
                events = machine.ended(monotonic())
                if events:
                    if observe is not None:
                        observe(events)
                    yield from events
        finally:
            if guard is not None:
                guard.disarm()
        self.attempt_done()

    def attempt_done(self) -> None:
        if self.closing:
            self.machine.close()
        self.attempt_over()
        self.release()

    def release(self) -> None:
        opened = self.take()
        self.body = None
        if opened is None:
            return
        try:
            opened.release()
        finally:
            reaper.release(opened)


class AsyncRun(Run):
    """The async driver: reads under ``asyncio.timeout_at``, backoff on an ``asyncio.Event``."""

    def __init__(self, opener: AsyncOpener, machine: StreamMachine[Any], **options: Any) -> None:
        super().__init__(machine, **options)
        self.opener = opener
        self.body: AsyncIterator[bytes] | None = None
        self.wake: asyncio.Event | None = None

    async def start(self) -> None:
        machine = self.machine
        action = machine.next_action()
        if isinstance(action, Open):
            await self.open(action)
            action = machine.next_action()
        if isinstance(action, Fail):
            self.fail(action)

    async def open_until_streaming(self) -> Action:
        """The async twin of :meth:`SyncRun.open_until_streaming`."""
        machine = self.machine
        while True:
            action = machine.next_action()
            if isinstance(action, Open):
                await self.open(action)
            elif isinstance(action, Sleep):
                await self.sleep(action.seconds)
            else:
                return action

    async def sleep(self, seconds: float) -> None:
        await self.pause(seconds)
        if self.closing:
            self.machine.close()
        else:
            self.machine.slept(time.monotonic())

    async def close(self, events: AsyncGenerator[Any, None] | None) -> None:
        """The async twin of :meth:`SyncRun.close`."""
        self.closing = True
        if self.wake is not None:
            self.wake.set()
        if events is not None:
            with contextlib.suppress(RuntimeError):  # iterated by another task now: it returns when the sleep wakes
                await events.aclose()
        await self.release()

    async def open(self, action: Open) -> None:
        machine = self.machine
        try:
            if action.timeout is None:
                opened = await self.opener(action)
            else:
                try:
                    async with asyncio.timeout(action.timeout):
                        opened = await self.opener(action)
                except TimeoutError:
                    machine.timed_out_opening(time.monotonic())
                    return
        except Exception as exc:
            machine.open_failed(exc, time.monotonic())
            return
        machine.opened(time.monotonic(), convert=opened.convert, reader=opened.parser)
        self.hold(opened)
        self.body = aiter(opened.body)

    async def events(self) -> AsyncGenerator[Any, None]:
        machine = self.machine
        try:
            while True:
                action = machine.next_action()
                if isinstance(action, Read):
                    async for event in self.read():
                        yield event
                elif isinstance(action, Open):
                    if action.restart is not None:
                        yield action.restart
                    await self.open(action)
                elif isinstance(action, Sleep):
                    await self.sleep(action.seconds)
                elif isinstance(action, Finish):
                    return
                elif self.fail_as is not None:
                    yield self.fail_as(action.error)
                    return
                else:
                    self.fail(action)
        except GeneratorExit:
            raise  # see SyncRun.events
        except BaseException:
            await self.release()
            raise

    async def read(self) -> AsyncGenerator[Any, None]:
        machine = self.machine
        body = self.body
        assert body is not None
        monotonic = time.monotonic
        bounded = machine.stall_enabled
        loop = asyncio.get_running_loop()
        watcher = self.watcher
        observe = watcher.events if watcher is not None else None
        last: list[Event] = []
        while True:
            try:
                if bounded:
                    deadline = machine.read_deadline()
                    assert deadline is not None
                    async with asyncio.timeout_at(loop.time() + (deadline - monotonic())):
                        chunk = await anext(body)
                else:
                    chunk = await anext(body)
            except StopAsyncIteration:
                last = machine.ended(monotonic())
                break
            except TimeoutError:
                last = machine.timed_out(monotonic())
                break
            events = machine.received(chunk, monotonic())
            if events and observe is not None:
                observe(events)
            for event in events:
                yield event
            if machine.state != "read":
                break
        if last and observe is not None:
            observe(last)
        for event in last:
            yield event
        if self.closing:
            machine.close()
        self.attempt_over()
        await self.release()

    async def pause(self, seconds: float) -> None:
        if seconds <= 0 or self.closing:
            return
        self.wake = asyncio.Event()
        try:
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        except TimeoutError:
            pass
        finally:
            self.wake = None

    async def release(self) -> None:
        opened = self.take()
        self.body = None  # the transport's release closes it (after draining a failed capture)
        if opened is None:
            return
        try:
            result = opened.release()
            if inspect.isawaitable(result):
                await result
        finally:
            reaper.release(opened)


class _Surface:
    """The SDK MessageStream surface, shared by both stream classes, read from their run."""

    _run: Run

    def __init__(self, run: Run) -> None:
        self._run = run
        self._finalizer = watch(self, run)

    @property
    def message(self) -> dict[str, Any]:
        """The message so far as a Messages API dict (stitched across continuations); reading it never
        reads the stream.

        Before iteration this is ``{}``; after ``get_final_message()`` / ``until_done()`` (which read to the
        end) it is the final message, equal to ``get_final_message()`` as a dict.
        """
        return self._run.message()

    @property
    def repairs(self) -> list[Repair]:
        """Everything mendstream mended or tolerated in this stream, over every attempt."""
        return self._run.machine.repairs

    @property
    def attempts(self) -> list[Attempt]:
        """One record per attempt so far (see :class:`~mendstream.streaming.retry.Attempt`)."""
        return self._run.machine.attempts

    @property
    def parser(self) -> MessageParser:
        """The current attempt's parser (the first one's before anything was opened)."""
        reader = self._run.machine.reader
        if isinstance(reader, MessageParser):
            return reader
        return self._run.first_parser if self._run.first_parser is not None else MessageParser()

    @property
    def response(self) -> Any:
        """The transport's response of the current (or last) attempt (e.g. an httpx response), or None."""
        return self._run.response

    @property
    def request_id(self) -> str | None:
        return request_id_of(getattr(self._run.response, "headers", None))

    @property
    def workspace_id(self) -> str | None:
        """The ``anthropic-workspace-id`` response header, as the SDK's ``MessageStream.workspace_id`` (None
        for replays and responses without it)."""
        headers = getattr(self._run.response, "headers", None)
        value = headers.get("anthropic-workspace-id") if headers is not None else None
        return value if isinstance(value, str) else None

    @property
    def current_message_snapshot(self) -> Any:
        """The message so far, as an ``anthropic.types.Message`` when the SDK is installed. As with the SDK it
        is one object that keeps updating while the stream is read (UsageError before message_start)."""
        run = self._run
        if run.live is None:
            if not run.message():
                raise UsageError("no message_start has been received yet")
            from mendstream.streaming.snapshot import live_message

            run.live = live_message(run.message, run.progress, beta=run.beta, build=run.sdk_message)
        return run.live

    def _settle(self) -> None:
        """Detach the finaliser once nothing more will be opened and nothing is held."""
        if self._run.finished and self._run.slot.opened is None:
            self._finalizer.detach()

    def _final_message(self) -> Any:
        self._settle()
        reader = self._run.machine.reader
        if reader is None or not getattr(reader, "complete", False):
            raise UsageError("the stream has not completed")
        return self._run.sdk_message(self.message, final=True)

    def _final_text(self) -> str:
        self._settle()
        message = self.message
        texts = [b.get("text", "") for b in message.get("content", []) if b.get("type") == "text"]
        if not texts:
            kinds = ",".join(str(b.get("type")) for b in message.get("content", []))
            raise RuntimeError(
                ".get_final_text() can only be called when the API returns a `text` content block.\n"
                f"The API returned {kinds} content block type(s) that you can access by calling "
                "get_final_message().content"
            )
        return "".join(texts)


class MessageStream(_Surface):
    """The stream of one Messages request, over as many attempts as ``retry`` allows; the SDK's
    ``MessageStream`` surface.

    Iterating yields the events of one clean stream (plus a :class:`~mendstream.RestartEvent` before a
    restarted attempt); ``attempts`` records every attempt. The first attempt is sent when the stream is
    made (an error before streaming that is not retried is raised there); later attempts while iterating.
    Closing it (from any thread) during a backoff sleep stops at once, and no attempt starts after close.
    Errors are :class:`~mendstream.StreamError` subclasses (or what the transport makes of them), raised
    after every event decoded before them has been yielded, ``from`` their ``__cause__``.

    ``pause``: a :class:`~mendstream.streaming.pause.PauseResumer` over the request the opener sends
    (``resume_pause_turn``): a turn that stops with ``pause_turn`` is resumed within this stream, the opener
    sending each ``Open.request`` it is given.
    """

    _run: SyncRun

    def __init__(
        self,
        opener: Opener,
        *,
        retry: Retry | None = None,
        idle_timeout: float | None = None,
        progress_timeout: float | None = None,
        parser: MessageParser | None = None,
        convert_stall: Callable[[StreamStalledError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
        output_format: Any = None,
        request_changes: tuple[Any, ...] = (),
        pause: PauseResumer | None = None,
    ) -> None:
        machine = _event_machine(retry, idle_timeout, progress_timeout, parser, convert_stall, pause)
        run = SyncRun(opener, machine, first_parser=parser, beta=beta)
        run.structured = _structured(output_format, beta)
        super().__init__(run)
        self.request_changes = request_changes
        """What sanitising changed in the request before it was sent (``sanitize=True``; empty otherwise)."""
        reaper.start()
        events = run.events()
        # With sdk_events the items are the SDK's objects; statically they stay typed as Event (documented).
        self._iterator = cast("Generator[Event, None, None]", _sdk_events(events, run)) if sdk_events else events
        self.text_stream: Iterator[str] = _text(self._iterator)
        try:
            run.start()
        except BaseException:
            self._settle()
            raise

    def __iter__(self) -> Iterator[Event]:
        return self._iterator

    def __next__(self) -> Event:
        return next(self._iterator)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading, release the connection, cut a backoff sleep short (idempotent, any thread)."""
        self._run.close(self._iterator)
        self._finalizer.detach()

    def until_done(self) -> None:
        """Read the stream to its end."""
        for _ in self._iterator:
            pass

    def get_final_message(self) -> Any:
        """Read to the end; return the final message (``anthropic.types.Message`` if the SDK is installed,
        else the dict)."""
        self.until_done()
        return self._final_message()

    def get_final_text(self) -> str:
        """Read to the end; return the text blocks joined. RuntimeError if there are none (as the SDK)."""
        self.until_done()
        return self._final_text()


class AsyncMessageStream(_Surface):
    """The async twin of :class:`MessageStream`: reads are bounded with ``asyncio.timeout_at``; cancelling
    the task or closing the stream during a backoff sleep stops at once. Made by an opener
    (:class:`~mendstream.streaming.opener.AsyncStreamOpener`), which sends the first attempt with
    :meth:`start`."""

    _run: AsyncRun

    def __init__(
        self,
        opener: AsyncOpener,
        *,
        retry: Retry | None = None,
        idle_timeout: float | None = None,
        progress_timeout: float | None = None,
        parser: MessageParser | None = None,
        convert_stall: Callable[[StreamStalledError], BaseException] | None = None,
        sdk_events: bool = False,
        beta: bool = False,
        output_format: Any = None,
        request_changes: tuple[Any, ...] = (),
        pause: PauseResumer | None = None,
    ) -> None:
        machine = _event_machine(retry, idle_timeout, progress_timeout, parser, convert_stall, pause)
        run = AsyncRun(opener, machine, first_parser=parser, beta=beta)
        run.structured = _structured(output_format, beta)
        super().__init__(run)
        self.request_changes = request_changes
        """What sanitising changed in the request before it was sent (``sanitize=True``; empty otherwise)."""
        reaper.start()
        events = run.events()
        self._iterator = cast("AsyncGenerator[Event, None]", _asdk_events(events, run)) if sdk_events else events
        self.text_stream: AsyncIterator[str] = _atext(self._iterator)

    async def start(self) -> Self:
        """Send the first attempt (as the SDK's ``stream()`` does when entered); raise its error when it is
        not retried. Called once, by the opener."""
        try:
            await self._run.start()
        except BaseException:
            self._settle()
            raise
        return self

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterator

    async def __anext__(self) -> Event:
        return await anext(self._iterator)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading, release the connection, cut a backoff sleep short (idempotent)."""
        await self._run.close(self._iterator)
        self._finalizer.detach()

    async def until_done(self) -> None:
        async for _ in self._iterator:
            pass

    async def get_final_message(self) -> Any:
        await self.until_done()
        return self._final_message()

    async def get_final_text(self) -> str:
        await self.until_done()
        return self._final_text()


def _event_machine(
    retry: Retry | None,
    idle_timeout: float | None,
    progress_timeout: float | None,
    parser: MessageParser | None,
    convert_stall: Callable[[StreamStalledError], BaseException] | None,
    pause: PauseResumer | None = None,
) -> StreamMachine[list[Event]]:
    """The machine of a stream read as events (options checked: a bad one is a UsageError); with ``pause``,
    a turn that pauses is resumed within the stream (``resume_pause_turn``)."""
    check_stream_options(retry, idle_timeout, progress_timeout)
    if parser is not None and not isinstance(parser, MessageParser):
        raise UsageError(f"parser must be a mendstream.MessageParser, not {type(parser).__name__}")
    return StreamMachine(
        retry,
        reader=parser_factory(parser),
        presenter=EventPresenter(pause),
        now=time.monotonic(),
        idle_timeout=idle_timeout,
        progress_timeout=progress_timeout,
        convert_stall=convert_stall,
    )


def _structured(output_format: Any, beta: bool) -> Any:
    """The :class:`~mendstream.streaming.structured.OutputFormat` for ``output_format`` (a type, as the SDK's
    ``messages.stream(output_format=...)`` takes it, or an OutputFormat already made), or None."""
    if output_format is None:
        return None
    from mendstream.streaming.structured import OutputFormat

    return output_format if isinstance(output_format, OutputFormat) else OutputFormat(output_format, beta=beta)


def _text(events: Iterator[Any]) -> Iterator[str]:
    for event in events:
        if event.type == "text":  # mendstream's or the SDK's TextEvent
            yield event.text


async def _atext(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for event in events:
        if event.type == "text":
            yield event.text


def _sdk_events(events: Iterator[Event], run: Run) -> Generator[Any, None, None]:
    for event in events:
        yield run.sdk_event(event)


async def _asdk_events(events: AsyncIterator[Event], run: Run) -> AsyncGenerator[Any, None]:
    async for event in events:
        yield run.sdk_event(event)


def iterable_opener(chunks: Iterable[bytes]) -> Opener:
    """An opener that answers its only attempt with ``chunks`` (a recording); releasing it closes ``chunks``
    when it is a generator."""

    def opener(action: Open) -> Opened:
        if action.attempt.number > 1:  # a recording is read once (replay takes no retry)
            raise UsageError("a recorded stream can only be read once")
        iterator = iter(chunks)
        close = getattr(iterator, "close", None)
        return Opened(None, iterator, close if callable(close) else (lambda: None))

    return opener


def async_iterable_opener(chunks: AsyncIterable[bytes]) -> AsyncOpener:
    """The async twin of :func:`iterable_opener`."""

    async def opener(action: Open) -> Opened:
        if action.attempt.number > 1:
            raise UsageError("a recorded stream can only be read once")
        iterator = aiter(chunks)
        aclose = getattr(iterator, "aclose", None)
        return Opened(None, iterator, aclose if callable(aclose) else (lambda: None))

    return opener
