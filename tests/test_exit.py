# A program that drops streams without closing them must still exit. The interleaving that hung: a shared
# client, streams abandoned after one event, garbage collections run while httpcore holds its pool lock, and
# at interpreter exit a generator finalised in the main thread that closes a body and waits for the pool lock
# a frozen daemon thread holds. Each case runs the program in a subprocess and requires it to print its result
# and exit in time (no hang, exit status 0), for httpx and httpx2, sync and async.
from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from conftest import BASIC_SSE
from mendstream.testing import ReplayServer

LIBRARIES = [name for name in ("httpx", "httpx2") if importlib.util.find_spec(name) is not None]

PROGRAM = textwrap.dedent("""
    import asyncio, gc, sys, warnings
    import {lib} as http
    import mendstream.httpx as mh

    warnings.simplefilter("ignore", ResourceWarning)
    BODY = {{"model": "m", "max_tokens": 5, "messages": [{{"role": "user", "content": "hi"}}]}}
    base_url = sys.argv[1]

    class CollectingLock:
        # a collection while the pool's (non-reentrant) lock is held: where a finaliser must not close a body
        def __init__(self, lock):
            self._lock = lock
        def __enter__(self):
            self._lock.__enter__()
            gc.collect(1)
            return self
        def __exit__(self, *exc):
            return self._lock.__exit__(*exc)

    def sync():
        transport = http.HTTPTransport(limits=http.Limits(max_connections=32, max_keepalive_connections=8))
        transport._pool._optional_thread_lock = CollectingLock(transport._pool._optional_thread_lock)
        client = http.Client(transport=transport)  # shared by every stream, never closed
        kept = []
        for i in range(40):
            stream = mh.stream(BODY, base_url=base_url, client=client)
            next(iter(stream))  # one event, then dropped (every third kept alive until exit)
            if i % 3 == 0:
                kept.append(stream)
        print("sync done", flush=True)

    async def asynchronous():
        client = http.AsyncClient(limits=http.Limits(max_connections=32, max_keepalive_connections=8))
        kept = []
        for i in range(40):
            stream = await mh.astream(BODY, base_url=base_url, client=client)
            await stream.__anext__()
            if i % 3 == 0:
                kept.append(stream)
            gc.collect(1)
        print("async done", flush=True)
        globals()["left"] = kept  # alive until the interpreter exits

    sync() if sys.argv[2] == "sync" else asyncio.run(asynchronous())
""")


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer({"basic": BASIC_SSE}) as srv:
        yield srv


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("lib", LIBRARIES)
def test_a_program_that_drops_streams_exits(server: ReplayServer, lib: str, mode: str) -> None:
    try:
        out = subprocess.run([sys.executable, "-c", PROGRAM.format(lib=lib), server.base_url, mode],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the program hung at exit: stdout={exc.stdout!r} stderr={exc.stderr!r}")
    assert out.stdout.strip() == f"{mode} done", out.stderr[-2000:]
    assert out.returncode == 0, out.stderr[-2000:]
