# Releasing connections of streams that were garbage-collected without close(). A finaliser may run
# anywhere, including inside an HTTP library's connection-pool lock during the next request, so it must not
# do I/O or take a lock: it only puts the release job on a queue (queue.SimpleQueue.put is documented as
# safe to call from finalisers), and one daemon thread started with the first stream runs the jobs. A job
# that blocks on the pool lock then waits for the request holding it instead of deadlocking it.
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

__all__ = ["start", "submit", "wait_idle"]

_jobs: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()


def start() -> None:
    """Start the reaper thread if it is not running (call when a stream is made, never in a finaliser)."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _start_lock:
        if _thread is None or not _thread.is_alive():  # not alive: e.g. in a child after fork()
            _thread = threading.Thread(target=_run, name="mendstream-reaper", daemon=True)
            _thread.start()


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


def _run() -> None:
    while True:
        job = _jobs.get()
        # Closing an abandoned connection may fail (the peer is gone); nobody is left to tell.
        with contextlib.suppress(Exception):
            job()
