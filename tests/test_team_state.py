# The proxy's state for a team. (1) CachePlanner state that leaves the process: a 20-turn agent session
# planned by one planner, by planners restored from the exported state before every request, and by two
# planner objects taking turns, gives byte-identical request bodies; the encoding is bounded, thinned as
# documented, and refuses anything it did not write with PlannerStateError only. (2) The planner-state
# stores: in process (bounded in bytes: the 30 x 12 MB case of issue 18), and Redis (a real redis-server on
# a free port: two stores as two workers give the bodies of one planner; Redis killed mid-session: every
# request is still planned, one log line, the events a metric counts; Redis back: shared state resumes).
from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mendstream.cache import CachePlanner
from mendstream.cache.history import HASH_BYTES, STATE_BYTES, PlannerMemory, SparseChain
from mendstream.errors import PlannerStateError, UsageError
from mendstream.wire.rewrite import count_markers
from mendstream.wire.state import MemoryPlannerStore, planned_ttl

VOCAB = ["the", "function", "returns", "value", "when", "config", "file", "path", "error", "test", "module", "import", "class", "data", "list"]


def words(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(tokens))


def agent_session(turns: int = 20, seed: int = 0) -> Iterator[dict[str, Any]]:
    """The requests of an agent loop, yielded as it sends them (the history list and its blocks are shared
    and edited between requests, as agent loops do): 12 tools, a static system block and one that changes
    every 7 turns, assistant turns with thinking, text and 1-3 tool calls (14 parallel ones in turn 11:
    more than the 20-block lookback), tool results; a reminder appended to the newest user message every
    5 turns (not kept in the history), an old tool result cleared in turn 15, a caller marker in turn 9."""
    rng = random.Random(seed)
    tools = [
        {"name": f"tool_{i}", "description": words(rng, 120),
         "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
        for i in range(12)
    ]
    static = {"type": "text", "text": words(rng, 1500)}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test in " + words(rng, 40)}]
    calls = 0
    for turn in range(turns):
        sent = messages
        if turn % 5 == 3:
            last = messages[-1]
            content = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
            reminder = {"type": "text", "text": f"<reminder>{turn}</reminder>"}
            sent = [*messages[:-1], {"role": "user", "content": [*content, reminder]}]
        if turn == 15:
            messages[4]["content"] = [{**messages[4]["content"][0], "content": "[cleared]"}]
        env = {"type": "text", "text": f"<env>epoch {turn // 7}</env>"}
        payload = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "tools": tools, "system": [static, env],
                   "messages": list(sent)}
        if turn == 9:
            payload["messages"][-1] = copy.deepcopy(payload["messages"][-1])
            payload["messages"][-1]["content"][-1]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
        yield payload
        n = 14 if turn == 11 else rng.randint(1, 3)
        content = [{"type": "thinking", "thinking": words(rng, 50), "signature": "sig"},
                   {"type": "text", "text": words(rng, 20)}]
        ids = []
        for _ in range(n):
            calls += 1
            ids.append(f"toolu_{calls:04d}")
            content.append({"type": "tool_use", "id": ids[-1], "name": f"tool_{rng.randrange(12)}",
                            "input": {"path": words(rng, 4)}})
        messages.append({"role": "assistant", "content": content})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": i, "content": words(rng, rng.randint(50, 800))} for i in ids]})


def body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def wire(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as a proxy receives it: decoded afresh from the request's bytes."""
    loaded: dict[str, Any] = json.loads(body(payload))
    return loaded


OPTION_SETS = [
    {},
    {"ttl": {"tools": "1h", "system": "1h", "messages": "5m"}, "lookback": 10},
    {"provider": "bedrock", "memory": 3},
    {"automatic": True, "min_tokens": 0},
]


def single_planner_bodies(options: dict[str, Any], *, fresh: bool = False) -> list[str]:
    planner = CachePlanner(warn=False, **options)
    return [body(planner.plan(wire(p) if fresh else p)[0]) for p in agent_session()]


# -- (1) planner state -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", OPTION_SETS, ids=["default", "ttl-lookback", "bedrock-memory3", "automatic"])
def test_restored_planners_send_the_bodies_of_one_planner(options: dict[str, Any]) -> None:
    expected = single_planner_bodies(options)
    assert single_planner_bodies(options, fresh=True) == expected  # the payload's identity plays no part
    stateless = [body(CachePlanner(warn=False, **options).plan(p)[0]) for p in agent_session()]
    assert sum(a != b for a, b in zip(expected, stateless, strict=True)) >= 10  # the state decides a lot

    # a new planner from the exported state before every request (as a proxy worker without memory does)
    state: bytes | None = None
    restored = []
    for payload in agent_session():
        planner = CachePlanner(warn=False, **options) if state is None else CachePlanner.from_state(
            state, warn=False, **options)
        restored.append(body(planner.plan(wire(payload))[0]))
        state = planner.export_state()
    assert restored == expected

    # two planner objects taking turns, each loading the other's state (their own layout history is stale)
    pair = [CachePlanner(warn=False, **options), CachePlanner(warn=False, **options)]
    alternating = []
    for turn, payload in enumerate(agent_session()):
        planner = pair[turn % 2]
        if turn:
            planner.load_state(state)
        alternating.append(body(planner.plan(payload)[0]))
        state = planner.export_state()
    assert alternating == expected


def test_restored_planner_reports_the_same_breakpoints() -> None:
    one = CachePlanner(warn=False)
    state = None
    for payload in agent_session():
        _, expected = one.plan(payload)
        other = CachePlanner(warn=False) if state is None else CachePlanner.from_state(state, warn=False)
        _, report = other.plan(payload)
        state = other.export_state()
        assert report.breakpoints == expected.breakpoints


def test_state_is_versioned_compact_json() -> None:
    planner = CachePlanner(warn=False)
    for payload in agent_session():
        planner.plan(payload)
    data = planner.export_state()
    state = json.loads(data)
    assert state["format"] == "mendstream.cache-planner-state" and state["version"] == 1
    assert state["positions"] is None and state["length"] == len(base64.b64decode(state["chain"])) // HASH_BYTES
    assert state["options"]["provider"] == "anthropic"
    assert len(data) == planner.state_size() < 8 * 1024  # 151 blocks and 57 written prefixes: about 4 KB
    assert b"lorem" not in data and b"function" not in data  # hashes only: no request content


def test_state_over_the_cap_is_thinned_and_stays_valid() -> None:
    one = CachePlanner(warn=False)
    expected = [body(one.plan(p)[0]) for p in agent_session()]
    for cap in (1024, 1500, 2048):
        state = None
        same = 0
        for payload, want in zip(agent_session(), expected, strict=True):
            planner = CachePlanner(warn=False) if state is None else CachePlanner.from_state(state, warn=False)
            out, _ = planner.plan(payload)
            assert count_markers(out) <= 4
            same += body(out) == want
            state = planner.export_state(max_bytes=cap)
            assert len(state) <= cap
        # thinning keeps the tail's window and the newest writes: most requests are planned the same
        assert same >= 17, (cap, same)
    with pytest.raises(UsageError, match="at least 1024"):
        one.export_state(max_bytes=1000)


def test_state_with_other_options_is_refused() -> None:
    planner = CachePlanner(warn=False, ttl="1h")
    planner.plan(next(agent_session()))
    data = planner.export_state()
    with pytest.raises(PlannerStateError, match="ttl") as info:
        CachePlanner.from_state(data, ttl="5m")
    assert info.value.reason == "options" and info.value.data is data
    assert isinstance(info.value, UsageError)
    CachePlanner.from_state(data, ttl="1h", memory=2, warn=False)  # memory and warn do not decide placements


def test_restored_planner_with_less_memory_keeps_the_newest_writes() -> None:
    planner = CachePlanner(warn=False)
    for payload in agent_session():
        planner.plan(payload)
    small = CachePlanner.from_state(planner.export_state(), memory=3, warn=False)
    assert list(small._written) == list(planner._written)[-3:]


def test_state_refuses_what_it_did_not_write() -> None:
    planner = CachePlanner(warn=False)
    planner.plan(next(agent_session()))
    good = json.loads(planner.export_state())
    cases: list[tuple[Any, str]] = [
        (b"\x80\x81", "format"),
        (b"[]", "format"),
        (b"{}", "format"),
        (pickle_like := b"\x80\x04\x95", "format"),
        ({**good, "version": 2}, "version"),
        ({**good, "version": "1"}, "version"),
        ({**good, "options": []}, "format"),
        ({**good, "length": -1}, "format"),
        ({**good, "length": True}, "format"),
        ({**good, "length": good["length"] + 1}, "format"),
        ({**good, "tail": good["length"]}, "format"),
        ({**good, "tail_back": -1}, "format"),
        ({**good, "chain": "not base64!"}, "format"),
        ({**good, "chain": base64.b64encode(b"x" * 15).decode()}, "format"),
        ({**good, "written": None}, "format"),
        ({**good, "positions": 5}, "format"),
        ({**good, "positions": base64.b64encode(b"\x80").decode()}, "format"),
        ({**good, "positions": base64.b64encode(b"\x00").decode()}, "format"),
        (b"[" * 60_000, "format"),
        (b" " * (STATE_BYTES + 1), "size"),
    ]
    assert pickle_like
    for value, reason in cases:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        with pytest.raises(PlannerStateError) as info:
            CachePlanner.from_state(data)
        assert info.value.reason == reason, (value, info.value)
        assert info.value.data is data
    with pytest.raises(PlannerStateError, match="bytes, not int"):
        CachePlanner.from_state(5)  # type: ignore[arg-type]
    untouched = CachePlanner(warn=False)
    untouched.plan(next(agent_session()))
    before = untouched.export_state()
    with pytest.raises(PlannerStateError):
        untouched.load_state(b"{}")
    assert untouched.export_state() == before  # a refused state leaves the planner as it was


def hash_chain(tokens: list[int]) -> list[bytes]:
    out, state = [], b""
    for t in tokens:
        state = hashlib_blake(state + bytes([t]))
        out.append(state)
    return out


def hashlib_blake(data: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.lists(st.integers(0, 3), min_size=1, max_size=300),
    change=st.integers(0, 400),
    grow=st.lists(st.integers(0, 3), max_size=30),
    keep=st.integers(0, 60),
    tail_back=st.integers(0, 5),
)
@example(base=[0] * 300, change=10, grow=[], keep=4, tail_back=0)
def test_sparse_chain_answers_the_last_kept_agreeing_position(
    base: list[int], change: int, grow: list[int], keep: int, tail_back: int
) -> None:
    previous = hash_chain(base)
    tokens = [*base[:change], 9, *grow] if change < len(base) else base + grow
    chain = hash_chain(tokens)
    tail = max(0, len(base) - 1 - tail_back)
    memory = PlannerMemory(previous, tail, 0, [], {})
    cap = len(memory._encode(b"", b"", b"")) + 30 * keep
    decoded = PlannerMemory.decode(memory.encode(max(cap, 1024)), max_bytes=STATE_BYTES)
    full = next((p for p in range(min(len(chain), len(previous)) - 1, -1, -1) if chain[p] == previous[p]), None)
    sparse = decoded.previous
    if isinstance(sparse, list):
        assert sparse == previous
        return
    kept = sparse.positions
    assert decoded.tail is None or decoded.tail in kept
    assert all(sparse[p] == previous[p] for p in kept)
    assert kept[-1] == len(previous) - 1 or not kept
    want = max((p for p in kept if full is not None and p <= full and p < len(chain)), default=None)
    assert sparse.common_prefix(chain) == want


MEMORIES = st.builds(
    lambda n, w, tail, back, sparse: (n, w, tail, back, sparse),
    st.integers(0, 3000), st.integers(0, 300), st.integers(0, 3000), st.integers(0, 40), st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(shape=MEMORIES, cap=st.integers(1024, 80_000), seed=st.integers(0, 2**32))
def test_encode_is_bounded_and_decode_inverts_it(shape: tuple[int, int, int, int, bool], cap: int, seed: int) -> None:
    n, w, tail, back, sparse = shape
    rng = random.Random(seed)
    hashes = [rng.randbytes(HASH_BYTES) for _ in range(n)]
    previous: list[bytes] | SparseChain = hashes
    tail_value = tail % n if n else None
    if sparse and n:
        positions = sorted(set(rng.sample(range(n), k=rng.randint(1, n))) | {tail_value})
        previous = SparseChain(n, positions, [hashes[p] for p in positions])
    memory = PlannerMemory(previous, tail_value, back, [rng.randbytes(HASH_BYTES) for _ in range(w)],
                           {"provider": "anthropic", "ttl": {}})
    full = memory.encode(10**8)
    assert len(full) == memory.size()
    data = memory.encode(cap)
    assert len(data) <= cap
    decoded = PlannerMemory.decode(data, max_bytes=cap)
    assert decoded.options == memory.options and decoded.tail_back == back
    if len(full) <= cap:
        assert data == full
        assert decoded.written == memory.written and decoded.tail == memory.tail
        if isinstance(previous, SparseChain):
            assert isinstance(decoded.previous, SparseChain)
            assert decoded.previous.positions == previous.positions and decoded.previous.hashes == previous.hashes
        else:
            assert decoded.previous == previous
        return
    # thinned: the newest writes, a subset of the chain with the right hashes, the tail kept
    assert decoded.written == memory.written[len(memory.written) - len(decoded.written):]
    assert len(decoded.written) >= min(len(memory.written), 16)
    assert decoded.tail == tail_value
    sparse_chain = decoded.previous
    if isinstance(sparse_chain, list):  # only the written prefixes had to go
        assert sparse_chain == hashes and len(decoded.written) < w
        return
    assert len(sparse_chain) == n
    assert all(sparse_chain[p] == hashes[p] for p in sparse_chain.positions)
    available = len(previous.positions) if isinstance(previous, SparseChain) else n
    assert len(sparse_chain.positions) >= min(available, 16)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_of_hostile_bytes_raises_only_planner_state_error(data: st.DataObject) -> None:
    planner = CachePlanner(warn=False)
    if not hasattr(test_decode_of_hostile_bytes_raises_only_planner_state_error, "good"):
        for payload in agent_session(turns=4):
            planner.plan(payload)
        test_decode_of_hostile_bytes_raises_only_planner_state_error.good = planner.export_state(  # type: ignore[attr-defined]
            max_bytes=1200)
    good: bytes = test_decode_of_hostile_bytes_raises_only_planner_state_error.good  # type: ignore[attr-defined]
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        restored = CachePlanner.from_state(bytes(raw), warn=False)
    except PlannerStateError:
        return
    out, _ = restored.plan(wire(next(agent_session())))  # whatever was accepted plans a valid request
    assert count_markers(out) <= 4


def test_planned_ttl_follows_the_markers_placed() -> None:
    planner = CachePlanner(warn=False)
    _, report = planner.plan(next(agent_session()))
    assert planned_ttl(report) == 300 and planned_ttl(None) == 300
    long = CachePlanner(warn=False, ttl={"tools": "1h"})
    _, report = long.plan(next(agent_session()))
    assert planned_ttl(report) == 3600


# -- (2) the in-process store ----------------------------------------------------------------------------------

def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def store_bodies(stores: list[Any], *, retained: bool = True) -> list[str]:
    out = []
    for turn, payload in enumerate(agent_session()):
        store = stores[turn % len(stores)]
        lease = await store.checkout("conversation-1")
        planned, _ = lease.planner.plan(wire(payload))
        await store.commit(lease, retained=len(body(payload)) if retained else 0)
        out.append(body(planned))
    return out


def test_memory_store_gives_the_bodies_of_one_planner() -> None:
    events: Counter[str] = Counter()
    store = MemoryPlannerStore(observer=lambda e: events.update([e]))
    assert run(store_bodies([store])) == single_planner_bodies({})
    assert events == {"new": 1, "memory": 19, "saved": 20}
    # a budget that keeps no live planner: every request decodes the state, same bodies
    tight = MemoryPlannerStore(max_bytes=64 * 1024, observer=lambda e: events.update([e]))
    events.clear()
    assert run(store_bodies([tight])) == single_planner_bodies({})
    assert events["restored"] == 19 and events["memory"] == 0


def test_memory_store_bounds_memory_in_bytes() -> None:
    """Issue 18: 30 conversations of 12 MB requests took 776 MB. The store charges each live planner
    1.5 x its request and demotes the least recently used to their compact state past max_bytes."""
    store = MemoryPlannerStore(max_bytes=96 * 1024 * 1024)

    async def go() -> None:
        for c in range(30):
            lease = await store.checkout(f"conversation-{c}")
            lease.planner.plan(next(agent_session(seed=c)))
            await store.commit(lease, retained=12 * 1024 * 1024)
            assert store.bytes <= store.max_bytes
        assert len(store) == 30  # every conversation kept, most as compact state
        assert len(store._live) == 5  # 5 x 18 MB live within 96 MB: the 5 most recent

    run(go())
    tiny = MemoryPlannerStore(max_bytes=4096, state_bytes=1024)
    events: Counter[str] = Counter()
    tiny._observer = lambda e: events.update([e])

    async def fill() -> None:
        for c in range(6):
            for payload in agent_session(turns=8, seed=c):
                lease = await tiny.checkout(f"c{c}")
                lease.planner.plan(payload)
                await tiny.commit(lease)
                assert tiny.bytes <= 4096
                assert len(tiny._states[lease.key][1]) <= 1024  # type: ignore[index]

    run(fill())
    assert events["evicted"] >= 2 and events["degraded"] >= 6 and len(tiny) <= 4


def test_memory_store_conflicts_first_committer_wins() -> None:
    store = MemoryPlannerStore()
    events: Counter[str] = Counter()
    store._observer = lambda e: events.update([e])
    payloads = list(map(wire, agent_session(turns=3)))

    async def go() -> None:
        first = await store.checkout("c")
        first.planner.plan(payloads[0])
        await store.commit(first)
        a = await store.checkout("c")  # two requests of one conversation at once
        b = await store.checkout("c")
        assert a.origin == "memory" and b.origin == "restored" and a.planner is not b.planner
        a.planner.plan(payloads[1])
        b.planner.plan(payloads[2])
        await store.commit(b)
        await store.commit(a)  # read version 1, but b made it 2: dropped
        assert events["conflict"] == 1
        c = await store.checkout("c")
        assert c.version == 2
        assert c.planner.export_state() == b.planner.export_state()

    run(go())


def test_memory_store_salts_keys_per_deployment() -> None:
    async def key(store: MemoryPlannerStore) -> str | None:
        return (await store.checkout("conversation")).key

    a, b = MemoryPlannerStore(), MemoryPlannerStore()
    assert run(key(a)) != run(key(b))  # random per process when not given
    c, d = MemoryPlannerStore(salt="team-secret"), MemoryPlannerStore(salt="team-secret")
    assert run(key(c)) == run(key(d)) and "conversation" not in str(run(key(c)))
    with pytest.raises(UsageError, match="salt"):
        MemoryPlannerStore(salt="")
    with pytest.raises(UsageError, match="state_bytes"):
        MemoryPlannerStore(state_bytes=10)
    with pytest.raises(UsageError, match="provider"):
        MemoryPlannerStore({"provider": "nope"})


# -- (2) Redis ---------------------------------------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (Debian: apt-get install -y redis-server)")
pytest.importorskip("redis", reason="the redis client is not installed (pip install 'mendstream[redis]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of our own on 127.0.0.1, no persistence, in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server did not answer PING within 10 s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def redis_store(server: RedisServer, events: Counter[str] | None = None, **options: Any) -> Any:
    from mendstream.wire.state import RedisPlannerStore

    observer = None if events is None else (lambda e: events.update([e]))
    return RedisPlannerStore(server.url, observer=observer, **options)


@needs_redis
def test_two_workers_on_redis_send_the_bodies_of_one_planner(redis_server: RedisServer) -> None:
    expected = single_planner_bodies({})
    events: Counter[str] = Counter()

    async def go(pattern: list[int]) -> list[str]:
        workers = [redis_store(redis_server, events), redis_store(redis_server, events)]
        try:
            out = []
            for turn, payload in enumerate(agent_session()):
                store = workers[pattern[turn % len(pattern)]]
                lease = await store.checkout("conversation-1")
                planned, _ = lease.planner.plan(wire(payload))
                await store.commit(lease, retained=len(body(payload)))
                out.append(body(planned))
            return out
        finally:
            for w in workers:
                await w.aclose()

    assert run(go([0, 1])) == expected  # alternating: every request decodes the other worker's state
    assert events == {"new": 1, "restored": 19, "saved": 20}
    redis_server.client().flushdb()
    events.clear()
    assert run(go([0, 0, 1, 1, 1])) == expected  # a worker reuses its live planner while it is current
    assert events["memory"] >= 10 and events["restored"] >= 6 and events["saved"] == 20
    keys = {k.decode() for k in redis_server.client().keys("*")}
    assert "mendstream:salt" in keys and len(keys) == 2
    assert not any("conversation" in k for k in keys)


WORKER = textwrap.dedent("""
    import asyncio, json, sys
    from mendstream.wire.state import RedisPlannerStore

    async def main():
        store = RedisPlannerStore(sys.argv[1])
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            lease = await store.checkout("conversation-1")
            planned, _ = lease.planner.plan(json.loads(line))
            await store.commit(lease, retained=len(line))
            print(json.dumps([lease.origin, json.dumps(planned, ensure_ascii=False, separators=(",", ":"))]),
                  flush=True)
        await store.aclose()

    asyncio.run(main())
""")


@needs_redis
def test_two_worker_processes_share_state_and_salt_through_redis(redis_server: RedisServer) -> None:
    expected = single_planner_bodies({})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, redis_server.url], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env) for _ in range(2)]
    try:
        bodies, origins = [], []
        for turn, payload in enumerate(agent_session()):
            proc = workers[turn % 2]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(body(payload).encode() + b"\n")
            proc.stdin.flush()
            origin, planned = json.loads(proc.stdout.readline())
            origins.append(origin)
            bodies.append(planned)
        assert bodies == expected
        assert origins == ["new"] + ["restored"] * 19
    finally:
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=20)


@needs_redis
def test_redis_killed_mid_session_falls_back_once_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mendstream.state")
    payloads = [wire(p) for p in agent_session()]
    expected = single_planner_bodies({})
    events: Counter[str] = Counter()

    async def go() -> None:
        store = redis_store(redis_server, events, timeout=0.1, retry_interval=0.2)
        try:
            origins = []
            for turn, payload in enumerate(payloads):
                if turn == 8:
                    salt = redis_server.client().get("mendstream:salt")
                    assert salt
                    redis_server.kill()
                if turn == 14:
                    redis_server.start()  # an empty server: the salt this worker holds stays the same
                    await asyncio.sleep(0.6)  # well past retry_interval, also on a loaded machine
                lease = await asyncio.wait_for(store.checkout("conversation-1"), 5)
                planned, _ = lease.planner.plan(payload)
                await asyncio.wait_for(store.commit(lease), 5)
                origins.append(lease.origin)
                if lease.origin == "fallback":  # planned statelessly: a fresh planner's body
                    assert body(planned) == body(CachePlanner(warn=False).plan(payload)[0])
                elif turn < 8:
                    assert body(planned) == expected[turn]
                assert count_markers(planned) <= 4
            assert origins[:8] == ["new"] + ["memory"] * 7
            assert origins[8:14] == ["fallback"] * 6
            assert origins[14:] == ["new"] + ["memory"] * 5
            assert store.up
            assert redis_server.client().get("mendstream:salt") == salt  # stored again for later workers
        finally:
            await store.aclose()

    run(go())
    assert events["store_down"] == 1 and events["store_up"] == 1 and events["fallback"] == 6
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "resumes" in r.getMessage()]
    assert len(down) == 1 and len(back) == 1 and len(caplog.records) == 2
    assert f"127.0.0.1:{redis_server.port}" in down[0].getMessage()


def test_a_redis_that_never_answers_never_holds_a_request() -> None:
    """A listener that accepts and then says nothing (a hung Redis): each call gives up after the timeout,
    and while the store is down requests do not touch the network at all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    events: Counter[str] = Counter()
    now = [0.0]

    async def go() -> None:
        from mendstream.wire.state import RedisPlannerStore

        store = RedisPlannerStore(f"redis://127.0.0.1:{port}/0", timeout=0.05, retry_interval=30,
                                  observer=lambda e: events.update([e]), clock=lambda: now[0])
        try:
            for payload in agent_session(turns=5):
                lease = await asyncio.wait_for(store.checkout("c"), 5)
                assert lease.origin == "fallback" and lease.key is None  # no salt was ever read
                lease.planner.plan(payload)
                await asyncio.wait_for(store.commit(lease), 5)
            assert events == {"store_down": 1, "fallback": 5}
            now[0] = 31.0  # one probe is due: it times out again, still one store_down
            lease = await asyncio.wait_for(store.checkout("c"), 5)
            assert lease.origin == "fallback" and events["store_down"] == 1 and not store.up
        finally:
            await store.aclose()

    try:
        run(go())
    finally:
        listener.close()


@needs_redis
def test_redis_state_ttl_follows_the_planned_caches(redis_server: RedisServer) -> None:
    client = redis_server.client()
    payloads = list(map(wire, agent_session(turns=3)))

    async def go() -> None:
        short = redis_store(redis_server, salt="s")
        long = redis_store(redis_server, salt="s", planner_options={"ttl": {"tools": "1h"}})
        try:
            lease = await short.checkout("c1")
            lease.planner.plan(payloads[0])
            await short.commit(lease)
            (key,) = [k for k in client.keys("mendstream:c:*")]
            assert 290_000 < client.pttl(key) <= 300_000
            lease = await long.checkout("c2")
            lease.planner.plan(payloads[0])
            await long.commit(lease)
            (key2,) = [k for k in client.keys("mendstream:c:*") if k != key]
            assert 3_590_000 < client.pttl(key2) <= 3_600_000
            client.pexpire(key, 3_000_000)  # a 1h write 10 minutes ago: a later 5m commit keeps it
            lease = await short.checkout("c1")
            lease.planner.plan(payloads[1])
            await short.commit(lease)
            assert client.pttl(key) > 2_990_000 and client.hget(key, "v") == b"2"
        finally:
            await short.aclose()
            await long.aclose()

    run(go())
    assert client.get("mendstream:salt") is None  # a given salt is never stored


@needs_redis
def test_redis_concurrent_commits_first_wins_and_bad_states_are_discarded(redis_server: RedisServer) -> None:
    client = redis_server.client()
    payloads = list(map(wire, agent_session(turns=3)))
    events: Counter[str] = Counter()

    async def go() -> None:
        a, b = redis_store(redis_server, events), redis_store(redis_server, events)
        try:
            lease = await a.checkout("c")
            lease.planner.plan(payloads[0])
            await a.commit(lease)
            first, second = await a.checkout("c"), await b.checkout("c")
            assert first.version == second.version == 1
            first.planner.plan(payloads[1])
            second.planner.plan(payloads[2])
            await asyncio.gather(b.commit(second), a.commit(first))  # one of them finds version 2
            assert events["conflict"] == 1
            (key,) = client.keys("mendstream:c:*")
            assert client.hget(key, "v") == b"2"
            stored = client.hget(key, "s")
            assert stored in (first.planner.export_state(), second.planner.export_state())
            # someone writes garbage (or another version) into the state: discarded, never an error
            client.hset(key, "s", b'{"format": "something else"}')
            lease = await a.checkout("c")
            assert lease.origin == "discarded" and lease.version == 2
            lease.planner.plan(payloads[2])
            await a.commit(lease)
            assert client.hget(key, "v") == b"3"
            assert (await b.checkout("c")).origin == "restored"
        finally:
            await a.aclose()
            await b.aclose()

    run(go())


def test_open_planner_store_chooses_by_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from mendstream.wire.state import RedisPlannerStore, open_planner_store

    assert isinstance(open_planner_store(None), MemoryPlannerStore)
    assert isinstance(open_planner_store("memory", {"ttl": "1h"}), MemoryPlannerStore)
    store = open_planner_store("redis://:hunter2@127.0.0.1:1/0")
    assert isinstance(store, RedisPlannerStore) and "hunter2" not in store.url
    run(store.aclose())
    monkeypatch.setenv("MENDSTREAM_STATE_SALT", "from-env")
    a, b = open_planner_store(None), open_planner_store("memory")
    assert run(a.checkout("x")).key == run(b.checkout("x")).key
    for bad in ("http://127.0.0.1:6379", "redis", ""):
        with pytest.raises(UsageError, match="--state"):
            open_planner_store(bad)
    with pytest.raises(UsageError, match="timeout"):
        open_planner_store("redis://127.0.0.1:1/0", timeout=0)
