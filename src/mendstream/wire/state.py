# Where the proxy keeps each conversation's CachePlanner between requests: in the worker (the default,
# bounded in bytes) or in Redis/Valkey, shared by every worker and replica. The proxy's only calls are
# `lease = await store.checkout(conversation)`, `lease.planner.plan(payload)`, `await store.commit(lease)`.
#
# Rules (the same for both stores)
# --------------------------------
# - A conversation's state is stored under a salted key: blake2b(conversation id, key=salt). The salt is
#   per deployment: `salt=` (`--state-salt` / MENDSTREAM_STATE_SALT), else for Redis a random value that
#   the first worker stores once under `{prefix}:salt` (SET NX: every worker reads the same), else (in
#   process) random per process. Key names thus reveal nothing and cannot be confirmed by guessing a prompt.
# - Versions: every stored state has a version, 1, 2, ... A lease remembers the version it read; commit
#   is a compare-and-set (in Redis one Lua script, atomic): it stores the new state only if the version is
#   still the one read, else the commit is dropped and counted as a "conflict". So of two requests of one
#   conversation planned at the same time the first to commit wins, and a request that read an old state
#   (it was slow) can never rewind the conversation. A state is one value written whole: never torn.
# - A state is at most `state_bytes` (CachePlanner.export_state thins a larger one, counted "degraded").
#   In Redis it lives as long as the longest cache TTL its request planned (5 m, or 1 h when a 1h marker
#   was placed), extended, never shortened, by each commit: after that no cache entry it knows of exists.
# - Redis is never allowed to fail or hold up a request: every call has a short timeout (default 100 ms);
#   on an error or a timeout the request is planned by a fresh planner (the stateless fallback), the
#   store logs ONE warning and reports "store_down"; while down it does not touch the network except for
#   one probe per `retry_interval`; the first probe that succeeds logs that it is back ("store_up").
# - In process, planners are kept live (their layout history makes the next request cheap) within
#   `max_bytes` together with the compact states; past it the least recently used planners are demoted to
#   their compact state, then the least recently used states are dropped.
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from mendstream.cache.history import STATE_BYTES
from mendstream.cache.planner import CachePlanner, PlacementReport
from mendstream.errors import PlannerStateError, UsageError

__all__ = [
    "MemoryPlannerStore",
    "PlannerLease",
    "PlannerStore",
    "RedisPlannerStore",
    "StateEvent",
    "open_planner_store",
    "planned_ttl",
]

LOGGER = logging.getLogger("mendstream.state")
LOGGER.addHandler(logging.NullHandler())

#: What a store reports to its observer (metrics): where a planner came from, what happened to a commit,
#: and the store's health. Each is reported once per occurrence.
StateEvent = Literal[
    "new",  # no state for this conversation: a fresh planner
    "memory",  # the worker's live planner was current: reused without decoding
    "restored",  # a planner decoded from the stored state
    "discarded",  # a stored state that could not be used (other options, version, corrupt): a fresh planner
    "fallback",  # the store is unreachable or slow: a fresh planner, nothing stored
    "saved",  # a commit stored its state
    "conflict",  # a commit found a newer version and was dropped (first committer wins)
    "degraded",  # a state over state_bytes was thinned to fit
    "evicted",  # in process: a conversation's state was dropped to stay within max_bytes
    "store_down",  # the store became unreachable (logged once)
    "store_up",  # the store is reachable again (logged once)
]

Origin = Literal["new", "memory", "restored", "discarded", "fallback"]

_FIVE_MINUTES: Final = 300.0
_ONE_HOUR: Final = 3600.0
#: A live planner keeps references to its request's blocks: about 1.5 times the request body's JSON size
#: (measured: 18 MB of resident memory per planner of a 12 MB request).
_LIVE_FACTOR: Final = 1.5


def planned_ttl(report: PlacementReport | None) -> float:
    """Seconds a conversation's state stays useful after a request planned with ``report``: one hour when
    a ``1h`` marker was placed, else five minutes (the default TTL; also when nothing was placed)."""
    if report is not None and any(bp.ttl == "1h" for bp in report.breakpoints):
        return _ONE_HOUR
    return _FIVE_MINUTES


def _salt_key(salt: bytes | str) -> bytes:
    raw = salt.encode() if isinstance(salt, str) else bytes(salt)
    if not raw:
        raise UsageError("the state salt must not be empty")
    return hashlib.blake2b(raw, digest_size=32, person=b"mendstream-salt").digest()


def _salted(salt_key: bytes, conversation: str) -> str:
    return hashlib.blake2b(conversation.encode("utf-8", "surrogatepass"), key=salt_key, digest_size=16).hexdigest()


@dataclass(slots=True)
class PlannerLease:
    """A conversation's planner for one request. Plan with ``planner``, then ``await store.commit(lease)``;
    a lease that is not committed (planning failed) changes nothing in the store.

    ``key`` is the salted conversation key (None in a fallback taken before the salt was known),
    ``version`` the stored version it continues (0: none), ``origin`` where the planner came from.
    """

    planner: CachePlanner
    key: str | None
    version: int
    origin: Origin


class PlannerStore:
    """The interface both stores implement (see the rules at the top of this module)."""

    planner_options: Mapping[str, Any]
    state_bytes: int

    def __init__(
        self,
        planner_options: Mapping[str, Any] | None,
        state_bytes: int,
        observer: Callable[[StateEvent], None] | None,
    ) -> None:
        options = dict(planner_options or {})
        options.setdefault("warn", False)
        CachePlanner(**options)  # a bad option is a UsageError now, not on the first request
        if isinstance(state_bytes, bool) or not isinstance(state_bytes, int) or state_bytes < 1024:
            raise UsageError(f"state_bytes must be an integer of at least 1024; got {state_bytes!r}")
        self.planner_options = options
        self.state_bytes = state_bytes
        self._observer = observer or (lambda event: None)

    def _new_planner(self) -> CachePlanner:
        return CachePlanner(**self.planner_options)

    def _restore(self, data: bytes) -> CachePlanner | None:
        try:
            return CachePlanner.from_state(data, max_bytes=self.state_bytes, **self.planner_options)
        except PlannerStateError as exc:
            LOGGER.debug("planner state not used (%s): %s", exc.reason, exc)
            return None

    def _export(self, planner: CachePlanner) -> bytes:
        data = planner.export_state(max_bytes=self.state_bytes)
        if planner.state_size() > self.state_bytes:
            self._observer("degraded")
        return data

    async def checkout(self, conversation: str, /) -> PlannerLease:
        """The planner for the next request of ``conversation`` (any stable id, e.g. the proxy's
        conversation key). Never raises because of the store and never waits longer than its timeout."""
        raise NotImplementedError

    async def commit(self, lease: PlannerLease, /, *, retained: int = 0) -> None:
        """Store the state of ``lease.planner`` after it planned its request (compare-and-set on the
        version read). ``retained``: the request body's size, what the live planner keeps referenced
        (charged against an in-process budget). Never raises because of the store."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections (the in-process store has none)."""


class _LivePlanners:
    """Live planners by key, each with the stored version it continues and the bytes charged for it, least
    recently used first. Taking a planner removes it: a planner is used by one request at a time."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[int, CachePlanner, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def take(self, key: str) -> tuple[int, CachePlanner] | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[2]
        return item[0], item[1]

    def put(self, key: str, version: int, planner: CachePlanner, charge: int) -> None:
        self.take(key)
        self._items[key] = (version, planner, charge)
        self.bytes += charge

    def drop_oldest(self) -> None:
        _, (_, _, charge) = self._items.popitem(last=False)
        self.bytes -= charge

    def shrink(self, max_bytes: int) -> None:
        while self.bytes > max_bytes and self._items:
            self.drop_oldest()


def _live_charge(retained: int) -> int:
    return int(max(0, retained) * _LIVE_FACTOR) + 4096


class MemoryPlannerStore(PlannerStore):
    """Planners kept in this worker: an LRU bounded in bytes (``max_bytes``, 256 MiB by default), counting
    each conversation's compact state (at most ``state_bytes``) and, while it is kept live, its planner
    (1.5 times the ``retained`` bytes given to :meth:`commit`, plus 4 KiB). Over budget, the least
    recently used live planners are demoted to their compact state (the next request decodes it: same
    placements, one full layout build), then the least recently used states are dropped (counted
    "evicted": that conversation starts afresh). A planner charged more than a quarter of the budget is
    not kept live. Not thread-safe: use it from one event loop.

    Raises:
        UsageError: a bad planner option, ``state_bytes`` under 1024 or ``max_bytes`` under ``state_bytes``.
    """

    def __init__(
        self,
        planner_options: Mapping[str, Any] | None = None,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        state_bytes: int = STATE_BYTES,
        salt: bytes | str | None = None,
        observer: Callable[[StateEvent], None] | None = None,
    ) -> None:
        super().__init__(planner_options, state_bytes, observer)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < state_bytes:
            raise UsageError(f"max_bytes must be an integer of at least state_bytes ({state_bytes}); got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._salt = _salt_key(salt if salt is not None else secrets.token_bytes(32))
        self._states: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # key -> (version, state), LRU first
        self._state_bytes = 0
        self._live = _LivePlanners()

    def __len__(self) -> int:
        return len(self._states)

    @property
    def bytes(self) -> int:
        """Bytes charged now (states plus live planners); at most ``max_bytes`` after every commit."""
        return self._state_bytes + self._live.bytes

    async def checkout(self, conversation: str, /) -> PlannerLease:
        key = _salted(self._salt, conversation)
        stored = self._states.get(key)
        if stored is None:
            self._observer("new")
            return PlannerLease(self._new_planner(), key, 0, "new")
        self._states.move_to_end(key)
        version, state = stored
        live = self._live.take(key)  # taken out: a concurrent checkout decodes the state instead
        if live is not None and live[0] == version:
            self._observer("memory")
            return PlannerLease(live[1], key, version, "memory")
        restored = self._restore(state)
        if restored is None:
            self._observer("discarded")
            return PlannerLease(self._new_planner(), key, version, "discarded")
        self._observer("restored")
        return PlannerLease(restored, key, version, "restored")

    async def commit(self, lease: PlannerLease, /, *, retained: int = 0) -> None:
        key = lease.key
        if key is None:
            return
        stored = self._states.get(key)
        if (stored[0] if stored is not None else 0) != lease.version:
            self._observer("conflict")
            return
        state = self._export(lease.planner)
        self._state_bytes += len(state) - (len(stored[1]) if stored is not None else 0)
        self._states[key] = (lease.version + 1, state)
        self._states.move_to_end(key)
        charge = _live_charge(retained)
        if charge <= self.max_bytes // 4:
            self._live.put(key, lease.version + 1, lease.planner, charge)
        self._observer("saved")
        while self.bytes > self.max_bytes and len(self._live):
            self._live.drop_oldest()
        while self.bytes > self.max_bytes and self._states:
            old, (_, dropped) = self._states.popitem(last=False)
            self._state_bytes -= len(dropped)
            self._live.take(old)
            self._observer("evicted")


# Compare-and-set of one conversation's state (a hash with fields v: version, s: state).
# KEYS[1] the state; ARGV: the version read, the new state, its TTL in ms, the byte cap.
# Returns {1, new version} when stored, {0, current version} when the version moved on, {-1, 0} when the
# state is over the cap. The key's TTL is extended to the new TTL, never shortened.
_COMMIT: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
if string.len(ARGV[2]) > tonumber(ARGV[4]) then return {-1, 0} end
local ttl = tonumber(ARGV[3])
local left = redis.call('PTTL', KEYS[1])
if left > ttl then ttl = left end
redis.call('HSET', KEYS[1], 'v', current + 1, 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, current + 1}
"""

# The deployment's salt: stored once by whichever worker comes first, then read by all.
_SALT: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""


class RedisPlannerStore(PlannerStore):
    """Planner states in Redis or Valkey (``redis://[:password@]host:port/db``, ``rediss://`` for TLS,
    ``unix:///path.sock?db=N``), shared by every worker and replica pointed at it.

    Per request: one ``HMGET`` at checkout and one Lua compare-and-set at commit, each bounded by
    ``timeout`` seconds (socket connect and read timeouts too; the client's own retries are off). The
    worker also keeps its last committed planners live (an LRU of ``local_bytes``, 64 MiB by default):
    when the stored version is still the one this worker wrote, the planner is reused without decoding.
    Keys: ``{prefix}:salt`` and ``{prefix}:c:{salted key}``. Needs ``pip install 'mendstream[redis]'``.

    Raises:
        UsageError: the redis package is missing, a URL that is not redis://, rediss:// or unix://, a bad
            planner option or a non-positive timeout.
    """

    def __init__(
        self,
        url: str,
        planner_options: Mapping[str, Any] | None = None,
        *,
        state_bytes: int = STATE_BYTES,
        salt: bytes | str | None = None,
        timeout: float = 0.1,
        retry_interval: float = 1.0,
        prefix: str = "mendstream",
        local_bytes: int = 64 * 1024 * 1024,
        observer: Callable[[StateEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(planner_options, state_bytes, observer)
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise UsageError(f"the state store URL must start with redis://, rediss:// or unix://; got {url!r}")
        for name, value in (("timeout", timeout), ("retry_interval", retry_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UsageError(f"{name} must be a positive number of seconds; got {value!r}")
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise UsageError(
                f"--state redis:// needs the redis package ({exc}): pip install 'mendstream[redis]'"
            ) from None
        self._errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError, TimeoutError)
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._commit_script: Any = self._redis.register_script(_COMMIT)
        self._salt_script: Any = self._redis.register_script(_SALT)
        self.url = _redacted(url)
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.prefix = prefix
        self._salt = None if salt is None else _salt_key(salt)
        self._salt_value: bytes | None = None  # the value read from Redis (None: given, or not read yet)
        self._clock = clock
        self._down_until: float | None = None  # None: up; else no network call before this time
        self._probing = False
        self._salt_stale = False
        self.local_bytes = local_bytes
        self._live = _LivePlanners()

    @property
    def up(self) -> bool:
        """False from a failed call until the next successful one."""
        return self._down_until is None

    async def _network(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, result)`` of ``await call()`` within the timeout, or ``(False, None)``: it failed, or
        the store is down and this is not the one probe due now (then nothing is sent)."""
        if self._down_until is not None:
            if self._probing or self._clock() < self._down_until:
                return False, None
            self._probing = True
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except self._errors as exc:
            if self._down_until is None:
                LOGGER.warning(
                    "planner state store %s unreachable (%s: %s); planning without shared state until it is "
                    "back (checked every %.3g s)", self.url, type(exc).__name__, exc or "timed out",
                    self.retry_interval)
                self._observer("store_down")
            self._down_until = self._clock() + self.retry_interval
            self._salt_stale = True
            return False, None
        finally:
            self._probing = False
        if self._down_until is not None:
            self._down_until = None
            LOGGER.warning("planner state store %s is back; shared planner state resumes", self.url)
            self._observer("store_up")
        return True, result

    def _fallback(self, conversation: str) -> PlannerLease:
        self._observer("fallback")
        key = None if self._salt is None else _salted(self._salt, conversation)
        return PlannerLease(self._new_planner(), key, 0, "fallback")

    async def checkout(self, conversation: str, /) -> PlannerLease:
        async def read() -> tuple[str, Any, Any]:
            if self._salt is None or (self._salt_value is not None and self._salt_stale):
                # first contact, or back after an outage (a restarted Redis without persistence has lost
                # the salt: the value every worker holds is stored again, so workers started later agree)
                offer = self._salt_value or secrets.token_hex(32).encode()
                value = await self._salt_script(keys=[f"{self.prefix}:salt"], args=[offer])
                self._salt_value, self._salt, self._salt_stale = value, _salt_key(value), False
            assert self._salt is not None
            key = _salted(self._salt, conversation)
            version, state = await self._redis.hmget(f"{self.prefix}:c:{key}", "v", "s")
            return key, version, state

        ok, result = await self._network(read)
        if not ok:
            return self._fallback(conversation)
        key, version, state = result
        version = int(version or 0)
        live = self._live.take(key)
        if live is not None and live[0] == version:
            self._observer("memory")
            return PlannerLease(live[1], key, version, "memory")
        if not version or not state:
            self._observer("new")
            return PlannerLease(self._new_planner(), key, version, "new")
        restored = self._restore(state)
        if restored is None:
            self._observer("discarded")
            return PlannerLease(self._new_planner(), key, version, "discarded")
        self._observer("restored")
        return PlannerLease(restored, key, version, "restored")

    async def commit(self, lease: PlannerLease, /, *, retained: int = 0) -> None:
        if lease.origin == "fallback" or lease.key is None:
            return
        key = lease.key
        state = self._export(lease.planner)
        ttl_ms = int(planned_ttl(lease.planner.last_report) * 1000)
        ok, result = await self._network(lambda: self._commit_script(
            keys=[f"{self.prefix}:c:{key}"], args=[lease.version, state, ttl_ms, self.state_bytes]))
        if not ok:
            return
        stored, version = result
        if stored != 1:
            self._observer("conflict")
            return
        self._observer("saved")
        # kept live for this worker's next request of the conversation: reused when no other worker's
        # commit has moved the version on since
        charge = _live_charge(retained)
        if charge <= self.local_bytes // 4:
            self._live.put(key, int(version), lease.planner, charge)
            self._live.shrink(self.local_bytes)

    async def aclose(self) -> None:
        await self._redis.aclose()


def _redacted(url: str) -> str:
    """``url`` without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{netloc}").geturl()


def open_planner_store(
    spec: str | None,
    planner_options: Mapping[str, Any] | None = None,
    *,
    salt: bytes | str | None = None,
    observer: Callable[[StateEvent], None] | None = None,
    **options: Any,
) -> PlannerStore:
    """The store ``--state`` names: ``None`` or ``"memory"`` for :class:`MemoryPlannerStore`, a
    ``redis://``, ``rediss://`` or ``unix://`` URL for :class:`RedisPlannerStore`. ``salt`` defaults to
    ``MENDSTREAM_STATE_SALT`` when set. Other keyword options go to the store's constructor.

    Raises:
        UsageError: any other spec, or a bad option of the store.
    """
    if salt is None:
        salt = os.environ.get("MENDSTREAM_STATE_SALT") or None
    if spec is None or spec == "memory":
        return MemoryPlannerStore(planner_options, salt=salt, observer=observer, **options)
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisPlannerStore(spec, planner_options, salt=salt, observer=observer, **options)
    raise UsageError(f"--state must be 'memory' or a redis://HOST:PORT/DB URL; got {spec!r}")
