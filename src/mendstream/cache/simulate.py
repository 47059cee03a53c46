# A replay of the documented prompt-cache rules over a sequence of request payloads: prefix hashes per
# block, writes only at breakpoints whose prefix reaches the model's minimum, reads walking back at most
# `lookback` blocks from each breakpoint, TTL expiry refreshed on use, and the 400s a request would get.
# Also the "ceiling": the best hit ratio any placement could reach on the same requests. No I/O except
# load_session (reads a file) and SimulationReport.chart (writes a PNG, importing matplotlib lazily).
from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mendstream.cache.converse import is_converse, shadow_of
from mendstream.cache.layout import REGION_NAMES, Layout, marker_ttl, normalise_marker
from mendstream.cache.planner import MAX_BREAKPOINTS
from mendstream.cache.tokens import min_cacheable_tokens
from mendstream.errors import UsageError

__all__ = [
    "PRICE_READ",
    "PRICE_WRITE_1H",
    "PRICE_WRITE_5M",
    "RequestResult",
    "SessionEntry",
    "SessionFormatError",
    "SimulationReport",
    "ceiling",
    "load_session",
    "simulate",
]

#: Price multipliers relative to one uncached input token.
PRICE_WRITE_5M: Final = 1.25
PRICE_WRITE_1H: Final = 2.0
PRICE_READ: Final = 0.1
TTL_SECONDS: Final = {"5m": 300.0, "1h": 3600.0}


class SessionFormatError(UsageError):
    """A SESSION.jsonl line is not a payload or a ``{"payload": ...}`` record. ``.line`` is 1-based.
    Part of mendstream's hierarchy (a :class:`~mendstream.UsageError`, hence also a ``ValueError``)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One request of a recorded session: the payload as sent, when (seconds, any epoch) and, optionally,
    the ``usage`` the API returned (used to scale the token estimates to the real total)."""

    payload: Mapping[str, Any]
    timestamp: float | None = None
    usage: Mapping[str, Any] | None = None


def _entry(item: Any) -> SessionEntry:
    if isinstance(item, SessionEntry):
        return item
    if isinstance(item, Mapping):
        if "payload" in item and isinstance(item["payload"], Mapping):
            ts = item.get("timestamp")
            usage = item.get("usage")
            return SessionEntry(
                item["payload"],
                None if ts is None else float(ts),
                usage if isinstance(usage, Mapping) else None,
            )
        return SessionEntry(item)
    raise TypeError(f"a session entry must be a payload dict or a SessionEntry, not {type(item).__name__}")


def load_session(path: str | Path) -> list[SessionEntry]:
    """Read SESSION.jsonl: one request per line, either the payload itself or
    ``{"payload": {...}, "timestamp": seconds, "usage": {...}}``. Blank lines are skipped.

    Raises:
        OSError: the file cannot be read. SessionFormatError: a line is not valid JSON or not an object
            with ``messages`` (or a ``payload`` holding one).
    """
    entries: list[SessionEntry] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SessionFormatError(f"not JSON ({exc.msg} at column {exc.colno})", number) from None
            if not isinstance(item, dict):
                raise SessionFormatError("expected a JSON object", number)
            entry = _entry(item)
            if not isinstance(entry.payload.get("messages"), list):
                raise SessionFormatError("no 'messages' list (expected a Messages API request body)", number)
            entries.append(entry)
    return entries


@dataclass(frozen=True, slots=True)
class RequestResult:
    """Billing of one simulated request, in (estimated or usage-scaled) input tokens.

    ``total_tokens = read_tokens + write_5m_tokens + write_1h_tokens + uncached_tokens`` unless ``error``
    is set (a request the API would reject with HTTP 400: nothing is billed, all counts are 0).
    """

    index: int
    timestamp: float
    blocks: int
    breakpoints: int
    total_tokens: int
    read_tokens: int
    write_5m_tokens: int
    write_1h_tokens: int
    uncached_tokens: int
    error: str | None = None

    @property
    def hit_ratio(self) -> float:
        return self.read_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def cost(self) -> float:
        """Input cost in units of one uncached input token."""
        return (
            self.uncached_tokens
            + PRICE_WRITE_5M * self.write_5m_tokens
            + PRICE_WRITE_1H * self.write_1h_tokens
            + PRICE_READ * self.read_tokens
        )


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """Per-request results and totals. Totals exclude requests that ended in an error."""

    requests: tuple[RequestResult, ...]
    lookback: int | None

    @property
    def total_tokens(self) -> int:
        return sum(r.total_tokens for r in self.requests)

    @property
    def read_tokens(self) -> int:
        return sum(r.read_tokens for r in self.requests)

    @property
    def write_5m_tokens(self) -> int:
        return sum(r.write_5m_tokens for r in self.requests)

    @property
    def write_1h_tokens(self) -> int:
        return sum(r.write_1h_tokens for r in self.requests)

    @property
    def uncached_tokens(self) -> int:
        return sum(r.uncached_tokens for r in self.requests)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if r.error)

    @property
    def hit_ratio(self) -> float:
        """Tokens read from cache over all input tokens."""
        total = self.total_tokens
        return self.read_tokens / total if total else 0.0

    @property
    def relative_cost(self) -> float:
        """Input cost with caching over input cost without caching (above 1.0: caching lost money)."""
        total = self.total_tokens
        return sum(r.cost for r in self.requests) / total if total else 1.0

    def table(self) -> str:
        """Per-request rows and a total row, as ``mendstream cache simulate`` prints them."""
        head = (
            "#",
            "t(s)",
            "blocks",
            "bps",
            "total",
            "read",
            "write5m",
            "write1h",
            "uncached",
            "hit",
            "note",
        )
        rows = [head]
        for r in self.requests:
            rows.append(
                (
                    str(r.index),
                    f"{r.timestamp:.0f}",
                    str(r.blocks),
                    str(r.breakpoints),
                    str(r.total_tokens),
                    str(r.read_tokens),
                    str(r.write_5m_tokens),
                    str(r.write_1h_tokens),
                    str(r.uncached_tokens),
                    f"{r.hit_ratio:.1%}",
                    r.error or "",
                )
            )
        rows.append(
            (
                "all",
                "",
                "",
                "",
                str(self.total_tokens),
                str(self.read_tokens),
                str(self.write_5m_tokens),
                str(self.write_1h_tokens),
                str(self.uncached_tokens),
                f"{self.hit_ratio:.1%}",
                f"relative cost {self.relative_cost:.3f}; errors {self.errors}",
            )
        )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows
        )

    def chart(self, path: str | Path, *, title: str | None = None) -> None:
        """Write a PNG of read / written / uncached tokens per request (stacked bars).

        Raises:
            ImportError: matplotlib is not installed (``pip install mendstream[chart]``).
        """
        matplotlib: Any = importlib.import_module("matplotlib")  # optional: imported only here
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")

        xs = [r.index for r in self.requests]
        read = [r.read_tokens for r in self.requests]
        write = [r.write_5m_tokens + r.write_1h_tokens for r in self.requests]
        uncached = [r.uncached_tokens for r in self.requests]
        fig, ax = plt.subplots(figsize=(max(6.0, len(xs) * 0.18), 4.0))
        ax.bar(xs, read, label="read", color="#4caf50")
        ax.bar(xs, write, bottom=read, label="written", color="#ff9800")
        ax.bar(
            xs,
            uncached,
            bottom=[a + b for a, b in zip(read, write, strict=True)],
            label="uncached",
            color="#9e9e9e",
        )
        for r in self.requests:
            if r.error:
                ax.axvline(r.index, color="red", linewidth=0.8)
        ax.set_xlabel("request")
        ax.set_ylabel("input tokens")
        ax.set_title(title or f"hit ratio {self.hit_ratio:.1%}, relative cost {self.relative_cost:.3f}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _timestamps(entries: list[SessionEntry], interval: float) -> list[float]:
    out: list[float] = []
    now = 0.0
    for i, entry in enumerate(entries):
        if entry.timestamp is not None:
            now = entry.timestamp
        elif i:
            now += interval
        out.append(now)
    return out


#: Usage fields that add up to a request's whole input: Messages API names, then Bedrock Converse's.
_INPUT_FIELDS: Final = (
    ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"),
    ("inputTokens", "cacheWriteInputTokens", "cacheReadInputTokens"),
)


def _layout_of(payload: Mapping[str, Any]) -> tuple[Layout, Any]:
    """The layout and top-level marker of a Messages request, or of a Converse request's shadow."""
    if is_converse(payload):
        payload = shadow_of(payload)[0]
    return Layout.of(payload), payload.get("cache_control")


def _scaled_prefix(layout: Layout, usage: Mapping[str, Any] | None, memo: dict[int, tuple[Any, int]]) -> list[int]:
    prefix = layout.prefix_tokens(memo)
    if not usage or not prefix:
        return prefix
    actual = max(sum(_count(usage.get(k)) for k in names) for names in _INPUT_FIELDS)
    if actual <= 0:
        return prefix
    factor = actual / prefix[-1]
    return [round(p * factor) for p in prefix]


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _validate(layout: Layout, top: Any) -> str | None:
    """The 400 the API would answer, or None. Every ``cache_control`` counts, nested ones included."""
    nested = sum(len(found) for found in layout.nested.values())
    count = len(layout.markers) + nested + (top is not None)
    if count > MAX_BREAKPOINTS:
        return f"400: A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {count}."
    for pos in sorted(layout.markers):
        if not layout.cacheable[pos]:
            return f"400: cache_control cannot be set on a {layout.block_type(pos)} block (position {pos})"
    # prefix order: a nested marker closes a prefix inside its tool_result, before the block's own marker
    placed = [(p, 0, m) for p, found in layout.nested.items() for _, m in found]
    placed += [(p, 1, m) for p, m in layout.markers.items()]
    markers = [m for _, _, m in sorted(placed, key=lambda x: x[:2])] + ([top] if top is not None else [])
    for marker in markers:
        _, fault = normalise_marker(marker)
        if fault is not None:
            return f"400: {fault}"
    seen_short = False
    for marker in markers:
        ttl = marker_ttl(marker)
        if ttl == "1h" and seen_short:
            return "400: a ttl='1h' cache_control block comes after a ttl='5m' one"
        seen_short = seen_short or ttl == "5m"
    return None


def simulate(
    requests: Iterable[Mapping[str, Any] | SessionEntry],
    /,
    *,
    lookback: int = 20,
    model: str | None = None,
    min_tokens: int | Mapping[str, int] | None = None,
    interval: float = 30.0,
) -> SimulationReport:
    """Replay ``requests`` (payloads as sent, markers included) against an empty cache.

    Rules, per request at time ``t`` (its ``timestamp``, else the previous one plus ``interval`` seconds):

    * Validation: more than 4 markers (block markers, markers nested in a ``tool_result``'s content and a
      top-level ``cache_control``), a marker on a thinking/redacted_thinking/empty text block, a marker
      that is not ``{"type": "ephemeral"}`` with an optional ``ttl`` of ``5m``/``1h``, or a 1h marker after
      a 5m one: an error, nothing billed.
    * Breakpoints: every block marker (a nested marker counts at its enclosing ``tool_result``), plus the
      last cacheable block when a top-level marker is present.
    * Prefix identity: a hash chained over blocks (tools, system, messages), ``cache_control`` excluded;
      the model and ``tool_choice``/``thinking`` settings are part of it (see :meth:`Layout.prefix_hashes`).
    * Reads: from each breakpoint, walk back over at most ``lookback`` blocks (the breakpoint itself is the
      first) to the first prefix present in the cache and not expired. The longest such prefix is read.
      Every entry found has its expiry refreshed to ``t + its TTL``.
    * Writes: every breakpoint after the read point whose prefix reaches the model's minimum creates an
      entry (TTL from its marker). Tokens from the read point to the last written breakpoint are billed as
      writes, each segment at the TTL of the breakpoint that closes it; the rest is uncached input.
      A breakpoint inside the read prefix creates no entry (conservative).

    Token counts are :func:`~.tokens.estimate_block_tokens` sums, scaled per request so the total equals
    the supplied ``usage`` (input + cache creation + cache read) when a :class:`SessionEntry` has one.
    """
    entries = [_entry(r) for r in requests]
    times = _timestamps(entries, interval)
    cache: dict[bytes, tuple[float, float]] = {}  # prefix hash -> (expiry, ttl seconds)
    hash_memo: dict[tuple[int, str, bool], tuple[Any, bytes]] = {}
    token_memo: dict[int, tuple[Any, int]] = {}
    results: list[RequestResult] = []
    for index, (entry, now) in enumerate(zip(entries, times, strict=True)):
        payload = entry.payload
        layout, top = _layout_of(payload)
        prefix = _scaled_prefix(layout, entry.usage, token_memo)
        total = prefix[-1] if prefix else 0
        breakpoints = dict(layout.markers)
        for pos, inside in layout.nested.items():  # approximated by the enclosing block's prefix
            breakpoints.setdefault(pos, inside[0][1])
        if top is not None:
            auto = layout.last_cacheable(len(layout) - 1)
            if auto is not None and auto not in breakpoints:
                breakpoints[auto] = top
        error = _validate(layout, top)
        if error:
            results.append(RequestResult(index, now, len(layout), len(breakpoints), 0, 0, 0, 0, 0, error))
            continue
        chain = layout.prefix_hashes(hash_memo)
        minimum = min_cacheable_tokens(model or str(layout.payload.get("model") or ""), min_tokens)

        read_at = -1
        for b in sorted(breakpoints):
            for j in range(b, max(-1, b - lookback), -1):
                found = cache.get(chain[j])
                if found is not None and found[0] >= now:
                    cache[chain[j]] = (now + found[1], found[1])  # a hit refreshes the TTL
                    read_at = max(read_at, j)
                    break
        read = prefix[read_at] if read_at >= 0 else 0
        written = {"5m": 0, "1h": 0}
        covered = read
        for b in sorted(breakpoints):
            if b <= read_at or prefix[b] < minimum:
                continue
            ttl = marker_ttl(breakpoints[b])
            written[ttl] += prefix[b] - covered
            covered = prefix[b]
            seconds = TTL_SECONDS[ttl]
            old = cache.get(chain[b])
            cache[chain[b]] = (
                max(now + seconds, old[0] if old else 0.0),
                max(seconds, old[1] if old else 0.0),
            )
        results.append(
            RequestResult(
                index,
                now,
                len(layout),
                len(breakpoints),
                total,
                read,
                written["5m"],
                written["1h"],
                total - read - written["5m"] - written["1h"],
            )
        )
    return SimulationReport(tuple(results), lookback)


def ceiling(
    requests: Iterable[Mapping[str, Any] | SessionEntry],
    /,
    *,
    ttl: str | Mapping[str, str] | None = None,
    model: str | None = None,
    min_tokens: int | Mapping[str, int] | None = None,
    interval: float = 30.0,
) -> SimulationReport:
    """The best any placement could do on ``requests`` under :func:`simulate`'s rules (an upper bound).

    The oracle behaves as if every block of every request were a breakpoint written with the region's TTL
    (``ttl`` as in :func:`~.planner.place_cache_breakpoints`; default 5m) and as if lookback were
    unlimited: request ``i`` reads the longest of its prefixes that reaches the minimum and that appeared
    in an earlier request no more than one TTL before (each appearance refreshes it). No real placement
    can read a prefix the oracle cannot, so its hit ratio bounds every strategy, for every lookback.
    Its writes assume everything after the read point is written, so its cost is not a lower bound.
    Markers in ``requests`` are ignored.
    """
    if isinstance(ttl, str) or ttl is None:
        ttl_map = dict.fromkeys(REGION_NAMES, ttl or "5m")
    else:
        ttl_map = {r: ttl.get(r, "5m") for r in REGION_NAMES}
    entries = [_entry(r) for r in requests]
    times = _timestamps(entries, interval)
    seen: dict[bytes, float] = {}
    hash_memo: dict[tuple[int, str, bool], tuple[Any, bytes]] = {}
    token_memo: dict[int, tuple[Any, int]] = {}
    results: list[RequestResult] = []
    for index, (entry, now) in enumerate(zip(entries, times, strict=True)):
        payload = entry.payload
        layout, _ = _layout_of(payload)
        prefix = _scaled_prefix(layout, entry.usage, token_memo)
        total = prefix[-1] if prefix else 0
        chain = layout.prefix_hashes(hash_memo)
        minimum = min_cacheable_tokens(model or str(layout.payload.get("model") or ""), min_tokens)
        read_at = -1
        for j in range(len(chain) - 1, -1, -1):
            if prefix[j] < minimum:
                break
            if seen.get(chain[j], -math.inf) >= now:
                read_at = j
                break
        read = prefix[read_at] if read_at >= 0 else 0
        written = {"5m": 0, "1h": 0}
        last = len(prefix) - 1
        if prefix and prefix[last] >= minimum:
            for j in range(read_at + 1, last + 1):
                region_ttl = ttl_map[REGION_NAMES[layout.region[j]]]
                written[region_ttl] += prefix[j] - (prefix[j - 1] if j else 0)
        for j in range(len(chain)):
            if prefix[j] >= minimum:
                seconds = TTL_SECONDS[ttl_map[REGION_NAMES[layout.region[j]]]]
                seen[chain[j]] = max(seen.get(chain[j], -math.inf), now + seconds)
        results.append(
            RequestResult(
                index,
                now,
                len(layout),
                0,
                total,
                read,
                written["5m"],
                written["1h"],
                total - read - written["5m"] - written["1h"],
            )
        )
    return SimulationReport(tuple(results), None)
