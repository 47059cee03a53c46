# The I/O drivers of DeltaCoalescer (wire/coalesce.py): they move rewritten response bytes through it and
# honour its deadline when the upstream goes quiet, so that a held delta never waits past the window.
#
# Async (the proxy, AsyncRepairTransport): a reader task per stream moves upstream chunks into a short queue;
# the consumer waits for them or for one timer set at the coalescer's deadline (a timer per held run, not a
# timeout per read, which cost the proxy about 30 us per chunk). The window never cancels a read (cancelling
# an HTTP library's read mid-body breaks its connection); only aclose() does.
#
# Sync (RepairTransport): the client's thread blocks in the HTTP library's read, so nothing could flush at the
# deadline from that thread. One reader thread per coalescing stream reads the upstream (and runs the
# rewriter) and hands chunks over a small bounded channel that the client's thread waits on with a timeout.
# Cost: a thread per open stream (asleep in recv most of the time), a lock handoff per chunk, and chunks that
# queued while the client was busy are merged together (the slower the client, the fewer its events).
# Cheaper designs were rejected: polling the socket before each read misses bytes the HTTP library already
# buffered (with chunked transfer coding it would wait a whole window per buffered chunk), and a socket
# timeout ends the connection. Closing the stream early shuts the socket down (HTTP/1.1 only: an HTTP/2
# connection is shared) so the reader's blocked read returns at once and the thread ends; the reader alone
# touches the upstream stream and releases it.
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable
from typing import Any

from mendstream.streaming.stall import socket_waker
from mendstream.wire.coalesce import DeltaCoalescer

__all__ = ["AsyncCoalescing", "ThreadedCoalescing", "socket_waker"]

Clock = Callable[[], float]

_JOIN_TIMEOUT = 5.0
"""Most seconds close() waits for a woken reader thread to finish."""

_DATA, _END, _ERROR, _CUT = 0, 1, 2, 3  # what a reader hands over: a chunk, the end, a failure, a cut


class _Driver:
    """What both drivers share: the upstream body ``chunks``, the response rewriter's ``rewrite(chunk)`` and
    ``finish()``, the exceptions that mean the upstream cut the body (``cut``: ``on_cut(exc)`` is told, the
    input then ends and ``finish()`` decides how the stream ends), the coalescer and the clock."""

    def __init__(self, chunks: Any, coalescer: DeltaCoalescer, *, rewrite: Callable[[bytes], bytes],
                 finish: Callable[[], bytes], cut: tuple[type[BaseException], ...],
                 on_cut: Callable[[BaseException], None] | None, clock: Clock) -> None:
        self._chunks = chunks
        self._coalescer = coalescer
        self._rewrite = rewrite
        self._finish = finish
        self._cut = cut
        self._on_cut = on_cut
        self._clock = clock
        self._closed = False

    def _was_cut(self, exc: BaseException) -> None:
        if self._on_cut is not None:
            self._on_cut(exc)


class AsyncCoalescing(_Driver):
    """``async for out in driver``: the bytes to send for the async iterator ``chunks``, rewritten and
    coalesced, held deltas included when their deadline passes with no input. At the end, a cut or a failure
    everything held is yielded first (a failure is then re-raised). ``aclose()`` cancels the upstream read in
    flight and closes ``chunks`` (when it has ``aclose``); idempotent. Needs an asyncio event loop, whose
    clock it uses (``clock`` is ignored).

    A reader task moves chunks into a short queue and wakes the consumer; one timer per held run (not per
    chunk) wakes it at the coalescer's deadline. Chunks that queued while the consumer was sending are
    coalesced together. The reader waits while ``max_queued`` chunks are queued (backpressure).
    """

    def __init__(self, chunks: AsyncIterator[bytes], coalescer: DeltaCoalescer, *,
                 rewrite: Callable[[bytes], bytes], finish: Callable[[], bytes],
                 cut: tuple[type[BaseException], ...] = (), on_cut: Callable[[BaseException], None] | None = None,
                 clock: Clock = time.monotonic, max_queued: int = 64) -> None:
        super().__init__(chunks, coalescer, rewrite=rewrite, finish=finish, cut=cut, on_cut=on_cut, clock=clock)
        self._queue: deque[tuple[int, Any]] = deque()
        self._max_queued = max_queued
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # set for self._armed; None once it has fired
        self._armed = 0.0

    def _on_timer(self) -> None:
        self._timer = None
        self._wake.set()

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        return self._run()

    async def _read(self) -> None:
        queue, wake, space = self._queue, self._wake, self._space
        try:
            try:
                async for chunk in self._chunks:
                    queue.append((_DATA, chunk))
                    wake.set()
                    while len(queue) >= self._max_queued:
                        space.clear()
                        await space.wait()
            except self._cut as exc:  # the upstream dropped the connection: the end of the input
                queue.append((_CUT, exc))
            queue.append((_END, None))
        except Exception as exc:
            queue.append((_ERROR, exc))
        wake.set()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        coalescer, rewrite, queue, wake = self._coalescer, self._rewrite, self._queue, self._wake
        self._reader = loop.create_task(self._read())
        try:
            while True:
                if not queue:
                    wake.clear()
                    await wake.wait()
                if not queue:  # the timer fired: the held deltas' deadline has come, the upstream is quiet
                    due = coalescer.deadline()
                    if due is not None and due <= self._armed:
                        out = coalescer.flush()
                        if out:
                            yield out
                else:
                    now = loop.time()
                    parts: list[bytes] = []
                    failure: BaseException | None = None
                    finished = False
                    while queue:
                        kind, value = queue.popleft()
                        if kind == _DATA:
                            parts.append(coalescer.feed(rewrite(value), now))
                        elif kind == _CUT:
                            self._was_cut(value)
                        else:
                            finished = True
                            failure = value if kind == _ERROR else None
                            if failure is None:
                                parts.append(coalescer.feed(self._finish(), now))
                            parts.append(coalescer.end())  # nothing held back past the end or a failure
                            break
                    self._space.set()
                    out = b"".join(parts)
                    if out:
                        yield out
                    if failure is not None:
                        raise failure
                    if finished:
                        return
                # A timer, not a timeout per read: set when something is held and no timer is set for that time
                # or earlier; one that fires before a deadline that moved later (idle) is just set again.
                due, timer = coalescer.deadline(), self._timer
                if due is None:
                    if timer is not None:
                        timer.cancel()
                        self._timer = None
                elif timer is None or due < self._armed:
                    if timer is not None:
                        timer.cancel()
                    self._armed = due
                    self._timer = loop.call_at(due, self._on_timer)
        except Exception:
            out = coalescer.end()  # nothing held back past a failure
            if out:
                yield out
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # our own task was cancelled meanwhile
                    raise
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


# -- sync ----------------------------------------------------------------------------------------------------


class _Channel:
    """A bounded FIFO from one producer thread to one consumer, that either side can close."""

    def __init__(self, size: int) -> None:
        self._items: deque[tuple[int, Any]] = deque()
        self._size = size
        self._cond = threading.Condition()
        self.closed = False

    def put(self, kind: int, value: Any) -> bool:
        """Append; waits while full. False when the channel was closed (the item is dropped)."""
        with self._cond:
            while len(self._items) >= self._size and not self.closed:
                self._cond.wait(1.0)
            if self.closed:
                return False
            self._items.append((kind, value))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> list[tuple[int, Any]]:
        """Every item available, waiting up to ``timeout`` seconds (None: until one arrives or the channel
        closes) for the first; ``[]`` on timeout or when closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait_for(lambda: self._items or self.closed, timeout)
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()


class ThreadedCoalescing(_Driver):
    """The sync driver: ``for out in driver`` yields the bytes to send for the iterator ``chunks``, rewritten
    and coalesced (``chunks`` is read and rewritten by a reader thread started on the first iteration), held
    deltas included when their deadline passes with no input. At the end, a cut or a failure everything held
    is yielded first (a failure is then re-raised in the client's thread).

    Args:
        chunks, rewrite, finish, cut, on_cut: the upstream body and the response rewriter (see ``_Driver``);
            here ``rewrite``, ``finish`` and ``on_cut`` run in the reader thread.
        release: closes the upstream body and anything tied to it (a capture file). Called exactly once: by the
            reader thread when it finishes, or by :meth:`close` when no reader was started.
        wake: makes a read blocked in ``chunks`` return (see :func:`socket_waker`); called by :meth:`close`
            only while the reader is still reading the body. Without one, a closed stream's reader thread ends
            when its blocked read returns (at the latest at the upstream's read timeout).
        max_queued: rewritten chunks read ahead of the client before the reader waits (backpressure).
    """

    def __init__(self, chunks: Iterable[bytes], coalescer: DeltaCoalescer, *, rewrite: Callable[[bytes], bytes],
                 finish: Callable[[], bytes], cut: tuple[type[BaseException], ...] = (),
                 on_cut: Callable[[BaseException], None] | None = None,
                 release: Callable[[], None], wake: Callable[[], None] | None = None,
                 clock: Clock = time.monotonic, max_queued: int = 64) -> None:
        super().__init__(chunks, coalescer, rewrite=rewrite, finish=finish, cut=cut, on_cut=on_cut, clock=clock)
        self._release = release
        self._wake = wake
        self._channel = _Channel(max_queued)
        self._lock = threading.Lock()
        self._reading = False
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Generator[bytes, None, None]:
        if self._thread is not None or self._closed:
            raise RuntimeError("a ThreadedCoalescing is iterated once")
        self._reading = True
        self._thread = threading.Thread(target=self._read, name="mendstream-coalesce", daemon=True)
        self._thread.start()
        return self._run()

    def _stop_reading(self) -> None:
        # From here on close() must not shut the socket down: the connection may go back to its pool.
        with self._lock:
            self._reading = False

    def _read(self) -> None:
        channel, rewrite = self._channel, self._rewrite
        try:
            try:
                for chunk in self._chunks:
                    out = rewrite(chunk)
                    if (out and not channel.put(_DATA, out)) or channel.closed:
                        return
            except self._cut as exc:  # the upstream dropped the connection: the end of the input
                self._was_cut(exc)
            self._stop_reading()
            tail = self._finish()
            if not tail or channel.put(_DATA, tail):
                channel.put(_END, None)
        except BaseException as exc:
            channel.put(_ERROR, exc)
        finally:
            self._stop_reading()
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()
            finally:
                self._release()

    def _run(self) -> Generator[bytes, None, None]:
        coalescer, clock, channel = self._coalescer, self._clock, self._channel
        try:
            while True:
                deadline = coalescer.deadline()
                items = channel.get(None if deadline is None else max(0.0, deadline - clock()))
                if not items:
                    if channel.closed:
                        return
                    out = coalescer.flush()  # the upstream is quiet: the window has ended
                    if out:
                        yield out
                    continue
                now = clock()
                parts: list[bytes] = []
                failure: BaseException | None = None
                finished = False
                for kind, value in items:
                    if kind == _DATA:
                        parts.append(coalescer.feed(value, now))
                    else:
                        finished = True
                        failure = value if kind == _ERROR else None
                        parts.append(coalescer.end())  # nothing held back past the end or a failure
                        break
                out = b"".join(parts)
                if out:
                    yield out
                if failure is not None:
                    raise failure
                if finished:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop: the reader thread is told to stop, woken if it is blocked reading the body, and joined
        (unless it is blocked and cannot be woken). Idempotent; safe from any thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()
            finally:
                self._release()
            return
        self._channel.close()
        with self._lock:
            reading = self._reading
            if reading and self._wake is not None:
                self._wake()
        if (not reading or self._wake is not None) and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
