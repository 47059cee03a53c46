# Releasing connections of streams that were garbage-collected without close(). A finaliser may run
# anywhere, including inside an HTTP library's connection-pool lock during the next request, so it must not
# do I/O or take a lock: it only puts the release job on a queue (queue.SimpleQueue.put is documented as
# safe to call from finalisers), and one daemon thread started with the first stream runs the jobs. A job
# that blocks on the pool lock then waits for the request holding it instead of deadlocking it.
#
# Interpreter exit is the other place a finaliser can deadlock: at shutdown the interpreter collects what is
# left, and closing an HTTP library's body iterator (httpcore's PoolByteStream closes itself from its
# generator's `except BaseException`) takes the pool lock, which a daemon thread frozen mid-request may hold
# for ever. So every open body is *held* here until it is released (read to the end, closed, or reaped): the
# reference lives in the reaper thread's own frame, which the interpreter never tears down (daemon threads
# are stopped, not unwound), so nothing of ours is finalised at exit. And an exit handler waits (briefly,
# bounded) until the reaper has finished its queue, so it holds no pool lock when the interpreter stops it.
from __future__ import annotations

import atexit
import contextlib
import queue
import threading
from collections.abc import Callable

__all__ = ["hold", "release", "start", "submit", "wait_idle"]

_jobs: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()
# Bodies held until released; the reaper thread's frame holds this dict too (see the comment above).
_held: dict[int, object] = {}
_EXIT_WAIT = 2.0
"""Seconds an exiting interpreter waits for the reaper to finish the releases it has queued."""


def start() -> None:
    """Start the reaper thread if it is not running (call when a stream is made, never in a finaliser)."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _start_lock:
        if _thread is None or not _thread.is_alive():  # not alive: e.g. in a child after fork()
            _thread = threading.Thread(target=_run, args=(_held,), name="mendstream-reaper", daemon=True)
            _thread.start()


def hold(body: object) -> None:
    """Keep ``body`` (an HTTP body iterator) alive until :func:`release`, so that it is never finalised at
    interpreter exit. O(1); takes no lock (a dict store is atomic)."""
    _held[id(body)] = body


def release(body: object) -> None:
    """Stop holding ``body`` (it was closed or read to the end). O(1); takes no lock."""
    _held.pop(id(body), None)


def submit(job: Callable[[], object]) -> None:
    """Queue ``job`` to run on the reaper thread. Safe in a finaliser: no lock, no I/O, never blocks."""
    _jobs.put(job)


def wait_idle(timeout: float) -> bool:
    """Wait until every job queued before this call has run; False if ``timeout`` seconds passed first.

    For tests and orderly shutdown; starts the thread if needed.
    """
    start()
    done = threading.Event()
    _jobs.put(done.set)
    return done.wait(timeout)


def _run(held: dict[int, object]) -> None:
    # `held` stays referenced by this frame for the life of the (daemon) thread: see the comment above.
    while True:
        job = _jobs.get()
        # Closing an abandoned connection may fail (the peer is gone); nobody is left to tell.
        with contextlib.suppress(Exception):
            job()


@atexit.register
def _drain_at_exit() -> None:
    if _thread is not None and _thread.is_alive():
        wait_idle(_EXIT_WAIT)
