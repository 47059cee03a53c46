# The breakpoint planner: turns a strategy's proposals and the caller's own cache_control markers into at
# most four valid markers (budget, cacheable blocks, minimum prefix length, TTL order), reports what it
# dropped, and rewrites the payload copy-on-write. Stateless entry points and the per-conversation
# CachePlanner share one selection routine, so they give the same guarantees.
#
# Theory of operation
# -------------------
# 1. Flatten the payload (layout.py): tools, then system, then message blocks, each with a position.
# 2. Decide the top-level automatic marker: kept, added, or removed according to `automatic` and the
#    provider profile. It costs one of the four slots and covers the tail.
# 3. Build one priority list: the caller's tools/system markers (at most two), the strategy's proposals
#    whose prefix reaches the model's minimum, the caller's remaining tools/system markers, then the
#    caller's message markers newest first. Take positions in that order until the budget is spent.
#    Caller markers that did not fit, or sit on blocks that cannot carry a marker, are dropped and
#    reported; this is what makes markers accumulated in a stored history harmless.
# 4. Enforce TTL order: once a 5m marker appears, a later 1h marker is lowered to 5m (reported).
# 5. Rewrite: only containers holding a changed block are copied (layout.rewrite_markers).
from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .layout import MESSAGES, REGION_NAMES, SYSTEM, TOOLS, Layout, rewrite_markers
from .strategies import (
    STRATEGIES,
    Candidate,
    StrategyContext,
    StrategyName,
    default_strategy,
    region_end,
    tail,
)
from .tokens import min_cacheable_tokens

__all__ = [
    "MAX_BREAKPOINTS",
    "Breakpoint",
    "CacheMarkerWarning",
    "CachePlanner",
    "DroppedMarker",
    "PlacementReport",
    "Provider",
    "Region",
    "TTL",
    "apply_cache",
    "place_cache_breakpoints",
    "plan_cache_breakpoints",
]

#: The API rejects a request with more block markers (including the top-level one) than this.
MAX_BREAKPOINTS: Final = 4

Region = Literal["tools", "system", "messages"]
Source = Literal["strategy", "caller", "automatic"]
TTL = Literal["5m", "1h"]
#: ``anthropic``: block markers and top-level automatic caching, 20-block lookback.
#: ``bedrock`` / ``vertex``: block markers only (a top-level marker is replaced by an explicit tail marker).
#: ``prefix-auto``: providers that cache by prefix and ignore markers (DeepSeek, Kimi, MiniMax M3):
#: every marker is removed so that nothing downstream can count more than four.
Provider = Literal["anthropic", "bedrock", "vertex", "prefix-auto"]
PROVIDERS: Final = ("anthropic", "bedrock", "vertex", "prefix-auto")
_TTLS: Final = ("5m", "1h")
_CALLER_PREFIX_FIRST: Final = 2


class CacheMarkerWarning(UserWarning):
    """Emitted by :func:`place_cache_breakpoints` / :meth:`CachePlanner.place` when markers the caller
    placed were dropped or changed. The same facts are in :class:`PlacementReport`."""


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One marker in the planned payload.

    ``location`` is ``(tool index, -1)``, ``(system block index, -1)`` or ``(message index, block index)``;
    ``prefix_tokens`` is the estimated length of the cached prefix (``None`` when not estimated);
    ``source`` says who asked for it: the strategy, the caller, or top-level automatic caching.
    """

    position: int
    region: Region
    location: tuple[int, int]
    role: str
    block_type: str
    ttl: str
    reason: str
    source: Source
    prefix_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class DroppedMarker:
    """A ``cache_control`` the caller placed that is not in the output, and why."""

    position: int
    region: Region
    location: tuple[int, int]
    block_type: str
    marker: Any
    reason: str


@dataclass(frozen=True, slots=True)
class PlacementReport:
    """What the planner did to one payload.

    ``breakpoints`` in prefix order (the top-level automatic marker last); ``dropped`` caller markers;
    ``ttl_lowered`` positions whose ``1h`` TTL became ``5m`` to keep longer TTLs first (``-1`` is the
    top-level marker); ``too_short`` strategy proposals skipped because their prefix is under
    ``min_tokens``.
    """

    strategy: str
    provider: str
    min_tokens: int
    breakpoints: tuple[Breakpoint, ...]
    dropped: tuple[DroppedMarker, ...] = ()
    ttl_lowered: tuple[int, ...] = ()
    too_short: tuple[Candidate, ...] = ()
    automatic: bool = False

    def table(self) -> str:
        """A plain-text table of the breakpoints and drops, as ``mendstream cache plan`` prints it."""
        rows = [("pos", "region", "where", "role", "block", "~prefix tok", "ttl", "reason")]
        for bp in self.breakpoints:
            where = "top-level" if bp.source == "automatic" else _where(bp.region, bp.location)
            tokens = "" if bp.prefix_tokens is None else str(bp.prefix_tokens)
            rows.append((str(bp.position), bp.region, where, bp.role, bp.block_type, tokens, bp.ttl, bp.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]
        lines.append(
            f"{len(self.breakpoints)}/{MAX_BREAKPOINTS} breakpoints; minimum cacheable prefix "
            f"{self.min_tokens} tokens; strategy {self.strategy}; provider {self.provider}"
        )
        for d in self.dropped:
            lines.append(f"dropped caller marker at {_where(d.region, d.location)} ({d.block_type}): {d.reason}")
        for c in self.too_short:
            lines.append(f"skipped position {c.position} ({c.reason}): prefix under {self.min_tokens} tokens")
        for pos in self.ttl_lowered:
            lines.append(f"lowered ttl 1h -> 5m at position {pos} (longer TTLs must come first)")
        return "\n".join(lines)


def _where(region: str, location: tuple[int, int]) -> str:
    outer, inner = location
    if region == "messages":
        return f"messages[{outer}]" + ("" if inner < 0 else f".content[{inner}]")
    if region == "system" and inner == -2:
        return "system"
    return f"{region}[{outer}]"


@dataclass(frozen=True, slots=True)
class _Options:
    strategy: str
    model: str | None
    ttl: Mapping[str, str]
    min_tokens: int | Mapping[str, int] | None
    automatic: bool | None
    provider: str
    lookback: int


def _resolve(
    strategy: str,
    model: str | None,
    ttl: str | Mapping[Any, str] | None,
    min_tokens: int | Mapping[str, int] | None,
    automatic: bool | None,
    provider: str,
    lookback: int,
) -> _Options:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown cache strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; allowed: {', '.join(PROVIDERS)}")
    if isinstance(ttl, str) or ttl is None:
        ttl_map: dict[str, str] = {} if ttl is None else dict.fromkeys(REGION_NAMES, ttl)
    else:
        unknown = set(ttl) - set(REGION_NAMES)
        if unknown:
            raise ValueError(f"unknown ttl region(s) {sorted(unknown)}; allowed: {', '.join(REGION_NAMES)}")
        ttl_map = dict(ttl)
    for value in ttl_map.values():
        if value not in _TTLS:
            raise ValueError(f"unknown ttl {value!r}; allowed: 5m, 1h")
    if not isinstance(lookback, int) or lookback < 1:
        raise ValueError("lookback must be a positive integer")
    if strategy == "automatic" and provider != "anthropic":
        raise ValueError(f"strategy 'automatic' is not available for provider {provider!r}")
    if automatic and provider in ("bedrock", "vertex", "prefix-auto"):
        raise ValueError(f"provider {provider!r} has no top-level automatic caching; use automatic=False/None")
    return _Options(strategy, model, ttl_map, min_tokens, automatic, provider, lookback)


def _marker(ttl: str | None) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}


def _ttl_of(marker: Any) -> str:
    if isinstance(marker, Mapping):
        return str(marker.get("ttl", "5m"))
    return "5m"


def _dropped(layout: Layout, pos: int, reason: str) -> DroppedMarker:
    return DroppedMarker(
        pos,
        REGION_NAMES[layout.region[pos]],
        (layout.outer[pos], layout.inner[pos]),
        layout.block_type(pos),
        layout.markers[pos],
        reason,
    )


@dataclass(slots=True)
class _Plan:
    payload: dict[str, Any]
    report: PlacementReport
    layout: Layout
    chosen: list[int] = field(default_factory=list)
    tail: int | None = None


def _plan(
    payload: Mapping[str, Any],
    opts: _Options,
    propose: Callable[[StrategyContext], list[Candidate]],
    *,
    estimate: bool,
    layout: Layout | None = None,
) -> _Plan:
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping (a Messages API request body), not {type(payload).__name__}")
    layout = layout or Layout.of(payload)
    minimum = min_cacheable_tokens(opts.model or str(payload.get("model") or ""), opts.min_tokens)
    top = payload.get("cache_control")
    dropped: list[DroppedMarker] = []
    lowered: list[int] = []

    strip_all = opts.strategy == "none" or opts.provider == "prefix-auto"
    if strip_all:
        why = (
            "strategy 'none' disables caching"
            if opts.strategy == "none"
            else "provider caches by prefix and ignores markers"
        )
        dropped = [_dropped(layout, pos, why) for pos in sorted(layout.markers)]
        out = rewrite_markers(layout, {}, top_level=None if top is not None else ...)
        report = PlacementReport(opts.strategy, opts.provider, minimum, (), tuple(dropped))
        return _Plan(out, report, layout)

    auto_allowed = opts.provider == "anthropic"
    if opts.strategy == "automatic":
        use_auto = True
    elif opts.automatic is None:
        use_auto = top is not None and auto_allowed
    else:
        use_auto = opts.automatic
    top_value: Any
    if use_auto:
        top_value = top if top is not None else _marker(opts.ttl.get("messages"))
    else:
        top_value = None

    budget = MAX_BREAKPOINTS - (1 if use_auto else 0)
    ctx = StrategyContext(layout, opts.lookback, use_auto)
    region = layout.region

    caller_prefix = sorted((p for p in layout.markers if region[p] != MESSAGES), key=lambda p: (-region[p], -p))
    caller_messages = sorted((p for p in layout.markers if region[p] == MESSAGES), reverse=True)
    order: list[tuple[int, Source, str]] = []  # (position, source, reason)
    order += [(p, "caller", "caller's marker (tools/system)") for p in caller_prefix[:_CALLER_PREFIX_FIRST]]
    too_short: list[Candidate] = []
    for cand in propose(ctx):
        pos = layout.last_cacheable(cand.position)
        if pos is None:
            continue
        if not layout.reaches(pos, minimum):
            too_short.append(cand)
            continue
        order.append((pos, "strategy", cand.reason))
    order += [(p, "caller", "caller's marker (tools/system)") for p in caller_prefix[_CALLER_PREFIX_FIRST:]]
    order += [(p, "caller", "caller's marker (messages)") for p in caller_messages]

    chosen: dict[int, tuple[Source, str]] = {}
    for pos, source, reason in order:
        if pos in chosen:
            continue
        if source == "caller" and not layout.cacheable[pos]:
            dropped.append(_dropped(layout, pos, "this block type cannot carry cache_control"))
            continue
        if len(chosen) < budget:
            chosen[pos] = (source, reason)
        elif source == "caller":
            dropped.append(_dropped(layout, pos, f"over the limit of {MAX_BREAKPOINTS} breakpoints"))

    wanted: dict[int, Any] = {}
    seen_short = False
    for pos in sorted(chosen):
        if pos in layout.markers and layout.cacheable[pos]:
            marker = layout.markers[pos]  # the caller's own marker, TTL included, wins over ours
        else:
            marker = _marker(opts.ttl.get(REGION_NAMES[region[pos]]))
        if _ttl_of(marker) == "1h" and seen_short:
            marker = {**marker, "ttl": "5m"}
            lowered.append(pos)
        elif _ttl_of(marker) != "1h":
            seen_short = True
        wanted[pos] = marker
    if top_value is not None and _ttl_of(top_value) == "1h" and seen_short:
        top_value = {**top_value, "ttl": "5m"}
        lowered.append(-1)

    if top is not None and top_value is None:
        if opts.provider != "anthropic":
            why = f"provider {opts.provider!r} has no top-level automatic caching"
        else:
            why = "automatic=False removes the top-level marker"
        dropped.append(DroppedMarker(-1, "messages", (-1, -1), "top-level", top, why))
        # its job (covering the tail) passes to an explicit marker when the budget allows
        t = tail(layout)
        if t is not None and t not in chosen and len(chosen) < budget and layout.reaches(t, minimum):
            chosen[t] = ("strategy", "current tail (replaces the top-level marker)")
            wanted[t] = _marker(opts.ttl.get("messages"))
            if _ttl_of(wanted[t]) == "1h" and any(_ttl_of(wanted[p]) != "1h" for p in wanted if p < t):
                wanted[t] = _marker("5m")
                lowered.append(t)
    top_arg: Any = ... if top_value is top else top_value
    out = rewrite_markers(layout, wanted, top_level=top_arg)

    prefix = layout.prefix_tokens() if estimate else None
    breakpoints = [
        Breakpoint(
            pos,
            REGION_NAMES[region[pos]],
            (layout.outer[pos], layout.inner[pos]),
            layout.roles[pos],
            layout.block_type(pos),
            _ttl_of(wanted[pos]),
            chosen[pos][1],
            chosen[pos][0],
            None if prefix is None else prefix[pos],
        )
        for pos in sorted(chosen)
    ]
    auto_pos = tail(layout) if use_auto else None
    if top_value is not None:
        breakpoints.append(
            Breakpoint(
                -1 if auto_pos is None else auto_pos,
                "messages",
                (-1, -1),
                "",
                "top-level",
                _ttl_of(top_value),
                "automatic caching: the API marks the last cacheable block",
                "automatic",
                None if prefix is None or auto_pos is None else prefix[auto_pos],
            )
        )
    report = PlacementReport(
        opts.strategy,
        opts.provider,
        minimum,
        tuple(breakpoints),
        tuple(dropped),
        tuple(lowered),
        tuple(too_short),
        use_auto,
    )
    plan = _Plan(out, report, layout, sorted(chosen), auto_pos)
    return plan


def _warn(report: PlacementReport, stacklevel: int) -> None:
    if report.dropped and report.strategy != "none":
        detail = "; ".join(
            f"{_where(d.region, d.location)}: {d.reason}" if d.position >= 0 else f"top-level: {d.reason}"
            for d in report.dropped
        )
        warnings.warn(
            f"{len(report.dropped)} cache_control marker(s) dropped: {detail}",
            CacheMarkerWarning,
            stacklevel=stacklevel + 1,
        )
    if report.ttl_lowered:
        warnings.warn(
            f"cache ttl lowered from 1h to 5m at positions {list(report.ttl_lowered)} "
            "(longer TTLs must come before shorter ones)",
            CacheMarkerWarning,
            stacklevel=stacklevel + 1,
        )


def plan_cache_breakpoints(
    payload: Mapping[str, Any],
    /,
    *,
    strategy: StrategyName = "default",
    model: str | None = None,
    ttl: TTL | Mapping[Region, TTL] | None = None,
    min_tokens: int | Mapping[str, int] | None = None,
    automatic: bool | None = None,
    provider: Provider = "anthropic",
    lookback: int = 20,
) -> tuple[dict[str, Any], PlacementReport]:
    """Like :func:`place_cache_breakpoints`, but return ``(new_payload, report)`` and never warn.

    The report carries estimated prefix tokens for every breakpoint (an O(n) estimate that
    :func:`place_cache_breakpoints` skips).
    """
    opts = _resolve(strategy, model, ttl, min_tokens, automatic, provider, lookback)
    plan = _plan(payload, opts, STRATEGIES[strategy], estimate=True)
    return plan.payload, plan.report


def place_cache_breakpoints(
    payload: Mapping[str, Any],
    /,
    *,
    strategy: StrategyName = "default",
    model: str | None = None,
    ttl: TTL | Mapping[Region, TTL] | None = None,
    min_tokens: int | Mapping[str, int] | None = None,
    automatic: bool | None = None,
    provider: Provider = "anthropic",
    lookback: int = 20,
) -> dict[str, Any]:
    """Return a copy of a Messages API request body with ``cache_control`` markers placed by ``strategy``.

    Guarantees: at most 4 breakpoints (tools, system, message blocks and a top-level ``cache_control``
    together); no marker on thinking, redacted_thinking or empty text blocks; a ``1h`` marker never after
    a ``5m`` one; the output differs from ``payload`` only in ``cache_control`` keys (a string ``content``
    or ``system`` becomes a one-block list where a marker goes). ``payload`` is never mutated; only the
    lists and dicts on the path to a changed marker are copied, everything else is shared.

    Markers already in ``payload`` are requests: kept while they fit the budget (the caller's first two
    tools/system markers first, then the strategy's proposals, then the caller's message markers newest
    first). Dropped markers and lowered TTLs raise a :class:`CacheMarkerWarning`; use
    :func:`plan_cache_breakpoints` to get them as a :class:`PlacementReport` instead.

    Args:
        strategy: ``default`` (where they will be read: see :func:`~.strategies.default_strategy`), or a
            peer's strategy for comparison: ``system-last-two-user``, ``pi``, ``dual``, ``last-block``,
            ``automatic`` (top-level marker only) and ``none`` (remove every marker).
        model: picks the minimum cacheable length; defaults to ``payload["model"]``.
        ttl: ``"5m"``/``"1h"`` for every marker the planner adds, or per region, e.g.
            ``{"tools": "1h", "system": "1h", "messages": "5m"}``. ``None`` adds no ``ttl`` key (5m).
        min_tokens: a number for every model, or model-prefix overrides of the table in ``tokens.py``.
            Proposals whose prefix is estimated under it are skipped: such a prefix is never cached.
        automatic: ``True`` adds a top-level ``cache_control`` (costs one slot, covers the tail);
            ``False`` removes one; ``None`` keeps whatever ``payload`` has.
        provider: ``anthropic``, ``bedrock``, ``vertex`` (no top-level automatic caching) or
            ``prefix-auto`` (markers ignored by the provider: all are removed).
        lookback: blocks the provider walks back from a breakpoint (20 for Anthropic).

    Raises:
        ValueError: an unknown strategy, provider, TTL or region, or ``automatic=True`` for a provider
            without it. TypeError: ``payload`` is not a mapping.
    """
    opts = _resolve(strategy, model, ttl, min_tokens, automatic, provider, lookback)
    plan = _plan(payload, opts, STRATEGIES[strategy], estimate=False)
    _warn(plan.report, stacklevel=2)
    return plan.payload


class CachePlanner:
    """Stateful placement for one conversation: call :meth:`place` on every request, in order.

    Same guarantees as :func:`place_cache_breakpoints`. In addition it remembers, for recent requests,
    the prefix hash at every block and where it put breakpoints, and proposes (most valuable first):

    1. the longest prefix of this request that an earlier request wrote (an exact hit; no lookback needed);
    2. if the previous request's tail did not survive into this one (a reminder appended to the last
       user message, an edited last block), the block as far from the tail as that change was;
    3. the current tail, written for the next request;
    4. the end of the longest prefix unchanged since the previous request (a tool definition that changes
       every turn, alternating instructions, compacted history: the part before the change);
    5. the end of system and of tools (and, on the first request, the system block before the last);
    6. a stepping stone when more than ``lookback`` blocks separate the read point from the tail.

    Hashes ignore ``cache_control``, so feeding back payloads that already carry markers is fine.
    Memory: one hash per block of the previous request plus ``memory`` written prefixes.
    Not thread-safe; use one planner per conversation.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        ttl: TTL | Mapping[Region, TTL] | None = None,
        min_tokens: int | Mapping[str, int] | None = None,
        automatic: bool | None = None,
        provider: Provider = "anthropic",
        lookback: int = 20,
        memory: int = 256,
        warn: bool = True,
    ) -> None:
        self._opts = _resolve("default", model, ttl, min_tokens, automatic, provider, lookback)
        self._memory = memory
        self._warn = warn
        self._written: OrderedDict[bytes, None] = OrderedDict()
        self._previous: list[bytes] = []
        self._previous_tail: int | None = None
        self._tail_back = 0
        self.last_report: PlacementReport | None = None
        """The report of the most recent :meth:`place` / :meth:`plan` call."""

    def reset(self) -> None:
        """Forget every earlier request (e.g. after switching model or conversation)."""
        self._written.clear()
        self._previous = []
        self._previous_tail = None
        self._tail_back = 0
        self.last_report = None

    def place(self, payload: Mapping[str, Any], /) -> dict[str, Any]:
        """Plan ``payload`` (the next request of this conversation) and return the new payload.

        Warns :class:`CacheMarkerWarning` for dropped caller markers unless ``warn=False``.
        """
        out, report = self.plan(payload)
        if self._warn:
            _warn(report, stacklevel=2)
        return out

    def plan(self, payload: Mapping[str, Any], /) -> tuple[dict[str, Any], PlacementReport]:
        """Like :meth:`place` but return ``(new_payload, report)`` and never warn."""
        layout = Layout.of(payload) if isinstance(payload, Mapping) else None
        if layout is None:
            raise TypeError(f"payload must be a mapping, not {type(payload).__name__}")
        chain = layout.prefix_hashes()
        plan = _plan(payload, self._opts, lambda ctx: self._propose(ctx, chain), estimate=True, layout=layout)
        self._remember(chain, plan)
        self.last_report = plan.report
        return plan.payload, plan.report

    def _propose(self, ctx: StrategyContext, chain: list[bytes]) -> list[Candidate]:
        layout = ctx.layout
        n = len(layout)
        written = self._written
        read = next((p for p in range(n - 1, -1, -1) if chain[p] in written and layout.cacheable[p]), None)
        common = _common_prefix(chain, self._previous)  # last position equal to the previous request's
        current = tail(layout)

        # Did the previous request's tail survive? If not, learn how far back the change reached.
        prev_tail = self._previous_tail
        if prev_tail is not None and self._previous:
            survived = prev_tail < n and chain[prev_tail] == self._previous[prev_tail]
            if survived:
                self._tail_back = 0
            elif common is not None and layout.region[common] == MESSAGES and prev_tail - common <= ctx.lookback:
                self._tail_back = prev_tail - common
            else:
                self._tail_back = 0

        out: list[Candidate] = []
        if read is not None:
            out.append(Candidate(read, "exact read: longest prefix an earlier request wrote"))
        if current is not None and self._tail_back:
            stable = layout.last_cacheable(current - self._tail_back, floor=max(0, current - ctx.lookback))
            if stable is not None:
                out.append(
                    Candidate(
                        stable,
                        f"{self._tail_back} block(s) before the tail: the last request's "
                        "tail changed, this part survives",
                    )
                )
        if current is not None and not ctx.automatic:
            out.append(Candidate(current, "current tail: written for the next request"))
        if common is not None and common != read and (current is None or common < current):
            pos = layout.last_cacheable(common)
            if pos is not None:
                out.append(Candidate(pos, "end of the longest prefix unchanged since the previous request"))
        system_end = region_end(layout, SYSTEM)
        tools_end = region_end(layout, TOOLS)
        if system_end is not None:
            out.append(Candidate(system_end, "end of the stable prefix (tools + system)"))
        if tools_end is not None:
            out.append(Candidate(tools_end, "end of tool definitions"))
        if not self._previous and system_end is not None:
            before = layout.last_cacheable(system_end - 1)
            if before is not None and layout.region[before] == SYSTEM:
                out.append(Candidate(before, "system block before the last (in case the last one changes)"))
        anchor = read if read is not None else common
        if current is not None and anchor is not None and current - anchor > ctx.lookback:
            stone = layout.last_cacheable(current - max(1, ctx.lookback // 2), floor=anchor + 1)
            if stone is not None:
                out.append(Candidate(stone, f"stepping stone: {current - anchor} blocks since the read point"))
        if not out:
            return default_strategy(ctx)
        return out

    def _remember(self, chain: list[bytes], plan: _Plan) -> None:
        written = self._written
        positions = list(plan.chosen)
        if plan.tail is not None:
            positions.append(plan.tail)
        for pos in positions:
            key = chain[pos]
            written[key] = None
            written.move_to_end(key)
        while len(written) > self._memory:
            written.popitem(last=False)
        self._previous = chain
        self._previous_tail = tail(plan.layout)


def _common_prefix(chain: list[bytes], previous: list[bytes]) -> int | None:
    """Last position where two prefix-hash chains agree. Prefix hashes agree on a prefix and then never
    again, so a binary search finds the boundary in O(log n)."""
    lo, hi = 0, min(len(chain), len(previous))  # invariant: chain[:lo] agrees, chain[hi:] does not
    while lo < hi:
        mid = (lo + hi) // 2
        if chain[mid] == previous[mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


_APPLY_OPTIONS: Final = ("strategy", "model", "ttl", "min_tokens", "automatic", "provider", "lookback")


def apply_cache(payload: dict[str, Any], cache: object) -> dict[str, Any]:
    """Apply the ``cache=`` argument of ``mendstream.stream`` to a request body.

    ``None`` / ``False``: ``payload`` itself, unchanged. ``True``: the default stateless strategy. A strategy
    name: that strategy. A :class:`CachePlanner`: ``planner.place(payload)``. A dict: keyword options for
    :func:`place_cache_breakpoints`.

    Raises:
        ValueError: any other value, an unknown strategy name or an unknown option key.
    """
    if cache is None or cache is False:
        return payload
    if cache is True:
        return place_cache_breakpoints(payload)
    if isinstance(cache, CachePlanner):
        return cache.place(payload)
    if isinstance(cache, str):
        if cache not in STRATEGIES:
            raise ValueError(f"unknown cache strategy {cache!r}; allowed: {', '.join(STRATEGIES)}")
        return place_cache_breakpoints(payload, strategy=cache)  # type: ignore[arg-type]
    if isinstance(cache, Mapping):
        unknown = set(cache) - set(_APPLY_OPTIONS)
        if unknown:
            raise ValueError(f"unknown cache option(s) {sorted(unknown)}; allowed: {', '.join(_APPLY_OPTIONS)}")
        return place_cache_breakpoints(payload, **cache)
    raise ValueError(
        "cache must be one of the allowed values: None, False, True, a strategy name "
        f"({', '.join(STRATEGIES)}), a CachePlanner or a dict of options; got {type(cache).__name__}"
    )
