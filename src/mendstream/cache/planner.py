# The breakpoint planner: turns a strategy's proposals and the caller's own cache_control markers into at
# most four valid markers (budget, cacheable blocks, minimum prefix length, TTL order), reports what it
# dropped or corrected, and rewrites the payload copy-on-write. Stateless entry points and the
# per-conversation CachePlanner share one selection routine (_Planning), so they give the same guarantees.
#
# Theory of operation (one _Planning method per step)
# ---------------------------------------------------
# 1. Flatten the payload (layout.py): tools, then system, then message blocks, each with a position.
#    A malformed payload stops here with a CachePayloadError naming the field.
# 2. Read the caller's markers (caller_markers): every cache_control counts, including those nested in a
#    tool_result's content (the API counts them too: a kept one moves to the enclosing block). A marker
#    that is not an object is dropped; a fixable one (bad type or ttl, extra keys) is corrected. Both
#    are reported.
# 3. Decide the top-level automatic marker (top_level): kept, added, or removed according to
#    `automatic` and the provider profile. It costs one of the four slots and covers the tail.
# 4. Build one priority list (priorities): the caller's tools/system markers (at most two), the
#    strategy's proposals whose prefix reaches the model's minimum, the caller's remaining tools/system
#    markers, then the caller's message markers newest first.
# 5. Take positions in that order until the budget is spent (select). Caller markers that did not fit,
#    or sit on blocks that cannot carry a marker, are dropped and reported; this is what makes markers
#    accumulated in a stored history harmless.
# 6. Enforce TTL order (assign_ttls): once a 5m marker appears, a later 1h marker is lowered to 5m.
# 7. A top-level marker the provider cannot take passes its job (the tail) to an explicit marker
#    (replace_top_level).
# 8. Rewrite (layout.rewrite_markers): only containers holding a changed block are copied; report.
from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mendstream.cache.converse import ConverseMap, shadow_of, write_cache_points
from mendstream.cache.history import STATE_BYTES, History, PlannerMemory, SparseChain
from mendstream.cache.layout import (
    MESSAGES,
    REGION_NAMES,
    SYSTEM,
    TOOLS,
    TTLS,
    Layout,
    marker_ttl,
    normalise_marker,
    rewrite_markers,
)
from mendstream.cache.strategies import (
    STRATEGIES,
    Candidate,
    StrategyContext,
    StrategyName,
    default_strategy,
    region_end,
    tail,
)
from mendstream.cache.tokens import min_cacheable_tokens
from mendstream.errors import CachePayloadError, PlannerStateError, UsageError

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
    "place_cache_breakpoints",
    "plan_cache_breakpoints",
]

#: The API rejects a request with more block markers (including the top-level one) than this.
MAX_BREAKPOINTS: Final = 4

Region = Literal["tools", "system", "messages"]
Source = Literal["strategy", "caller", "automatic"]
TTL = Literal["5m", "1h"]
#: ``anthropic``: block markers and top-level automatic caching, 20-block lookback.
#: ``bedrock`` / ``vertex``: block markers only (a top-level marker is replaced by an explicit tail marker);
#: on Bedrock a ``1h`` TTL only for the models AWS lists for it (Claude 4.5 and later; see docs/cache.md).
#: ``bedrock-converse``: Bedrock's Converse API: ``{"cachePoint": ...}`` blocks instead of markers.
#: ``prefix-auto``: providers that cache by prefix and ignore markers (DeepSeek, Kimi, MiniMax M3):
#: every marker is removed so that nothing downstream can count more than four.
Provider = Literal["anthropic", "bedrock", "bedrock-converse", "vertex", "prefix-auto"]
PROVIDERS: Final = ("anthropic", "bedrock", "bedrock-converse", "vertex", "prefix-auto")
_BEDROCK: Final = ("bedrock", "bedrock-converse")
_CLAUDE_VERSION: Final = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d)(?!\d))?")
_CLAUDE_3: Final = re.compile(r"claude-(?:3|instant|v2)")


def bedrock_supports_1h(model: str) -> bool:
    """Whether Bedrock accepts a ``1h`` cache TTL for ``model`` (Claude 4.5 and later, per AWS's prompt
    caching guide). Ids it cannot read (custom ARNs, other vendors) are given the benefit of the doubt."""
    if _CLAUDE_3.search(model):
        return False
    match = _CLAUDE_VERSION.search(model)
    if match is None:
        return True
    return (int(match.group(1)), int(match.group(2) or 0)) >= (4, 5)
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
    """A ``cache_control`` the caller placed that is not in the output as placed, and why.

    ``marker`` is the caller's value. ``path`` locates a marker nested inside the content of the
    ``tool_result`` at ``location`` (e.g. ``messages[3].content[0].content[1]``); ``None`` otherwise.
    """

    position: int
    region: Region
    location: tuple[int, int]
    block_type: str
    marker: Any
    reason: str
    path: str | None = None


@dataclass(frozen=True, slots=True)
class PlacementReport:
    """What the planner did to one payload.

    ``breakpoints`` in prefix order (the top-level automatic marker last); ``dropped`` caller markers;
    ``ttl_lowered`` positions whose ``1h`` TTL became ``5m`` to keep longer TTLs first (``-1`` is the
    top-level marker); ``too_short`` strategy proposals skipped because their prefix is under
    ``min_tokens``; ``normalised`` caller markers that are in the output in a corrected form (an invalid
    ``type``/``ttl`` fixed, or moved out of a ``tool_result``'s content to the enclosing block).
    """

    strategy: str
    provider: str
    min_tokens: int
    breakpoints: tuple[Breakpoint, ...]
    dropped: tuple[DroppedMarker, ...] = ()
    ttl_lowered: tuple[int, ...] = ()
    too_short: tuple[Candidate, ...] = ()
    automatic: bool = False
    normalised: tuple[DroppedMarker, ...] = ()

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
            where = d.path or _where(d.region, d.location)
            lines.append(f"dropped caller marker at {where} ({d.block_type}): {d.reason}")
        for d in self.normalised:
            lines.append(f"corrected caller marker at {d.path or _where(d.region, d.location)}: {d.reason}")
        for c in self.too_short:
            lines.append(f"skipped position {c.position} ({c.reason}): prefix under {self.min_tokens} tokens")
        for pos in self.ttl_lowered:
            lines.append(f"lowered ttl 1h -> 5m at position {pos} (longer TTLs must come first)")
        return "\n".join(lines)


def _where(region: str, location: tuple[int, int]) -> str:
    outer, inner = location
    if region == "messages":
        return f"messages[{outer}]" + ("" if inner < 0 else f".content[{inner}]")
    if outer < 0:
        return "top-level"
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


def _choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _resolve(
    strategy: Any,
    model: Any,
    ttl: Any,
    min_tokens: Any,
    automatic: Any,
    provider: Any,
    lookback: Any,
) -> _Options:
    """Check every option once, before any work. Raises UsageError naming the argument and what is allowed."""
    _choice("cache strategy", strategy, list(STRATEGIES))
    _choice("provider", provider, PROVIDERS)
    if model is not None and not isinstance(model, str):
        raise UsageError(f"model must be a model id string or None, not {model!r}")
    if isinstance(ttl, str) or ttl is None:
        ttl_map: dict[str, str] = {} if ttl is None else dict.fromkeys(REGION_NAMES, ttl)
    elif isinstance(ttl, Mapping):
        unknown = set(map(str, ttl)) - set(REGION_NAMES)
        if unknown:
            raise UsageError(f"unknown ttl region(s) {sorted(unknown)}; allowed: {', '.join(REGION_NAMES)}")
        ttl_map = dict(ttl)
    else:
        raise UsageError(f"ttl must be '5m', '1h', None or a mapping of region to ttl, not {ttl!r}")
    for value in ttl_map.values():
        if not isinstance(value, str) or value not in TTLS:
            raise UsageError(f"unknown ttl {value!r}; allowed: 5m, 1h")
    if isinstance(min_tokens, Mapping):
        for key, value in min_tokens.items():
            if not isinstance(key, str) or not _count(value):
                raise UsageError(
                    f"min_tokens must map model-id prefixes to non-negative integers; got {key!r}: {value!r}"
                )
    elif min_tokens is not None and not _count(min_tokens):
        raise UsageError(
            f"min_tokens must be a non-negative integer, a mapping of model-id prefix to integer, or None; "
            f"got {min_tokens!r}"
        )
    if automatic is not None and not isinstance(automatic, bool):
        raise UsageError(f"automatic must be True, False or None, not {automatic!r}")
    if not _count(lookback) or lookback < 1:
        raise UsageError(f"lookback must be a positive integer, not {lookback!r}")
    if strategy == "automatic" and provider != "anthropic":
        raise UsageError(f"strategy 'automatic' is not available for provider {provider!r}")
    if automatic and provider != "anthropic":
        raise UsageError(f"provider {provider!r} has no top-level automatic caching; use automatic=False/None")
    return _Options(strategy, model, ttl_map, min_tokens, automatic, provider, lookback)


def _marker(ttl: str | None) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}


@dataclass(slots=True)
class _CallerMarker:
    """The caller's request for a breakpoint at one block: the marker to send (normalised) and every
    original it stands for, as ``(path or None, value, what was corrected or None)``."""

    marker: Any
    originals: list[tuple[str | None, Any, str | None]]


@dataclass(slots=True)
class _Plan:
    payload: dict[str, Any]
    report: PlacementReport
    layout: Layout
    chosen: list[int] = field(default_factory=list)
    tail: int | None = None
    #: position -> the marker the output carries there
    markers: dict[int, Any] = field(default_factory=dict)


class _Planning:
    """One planning pass over one payload. Each method is one step of the theory of operation above;
    they run in the order :func:`_plan` calls them and share what earlier steps found."""

    def __init__(self, payload: Mapping[str, Any], opts: _Options, layout: Layout) -> None:
        self.opts = opts
        self.layout = layout
        model = opts.model or str(payload.get("model") or "")
        self.minimum = min_cacheable_tokens(model, opts.min_tokens)
        self.allow_1h = opts.provider not in _BEDROCK or bedrock_supports_1h(model)
        self.dropped: list[DroppedMarker] = []
        self.normalised: list[DroppedMarker] = []
        self.lowered: list[int] = []
        self.too_short: list[Candidate] = []
        self.caller: dict[int, _CallerMarker] = {}
        self.chosen: dict[int, tuple[Source, str]] = {}
        self.wanted: dict[int, Any] = {}
        self.top_raw = payload.get("cache_control")
        self.top: Any = None  # the caller's top-level marker, normalised (None: absent or unreadable)
        self.top_value: Any = None  # the top-level marker of the output
        self.use_auto = False

    # -- reporting helpers -------------------------------------------------------------------------
    def _note(self, into: list[DroppedMarker], pos: int, path: str | None, value: Any, reason: str) -> None:
        layout = self.layout
        into.append(
            DroppedMarker(
                pos,
                REGION_NAMES[layout.region[pos]],
                (layout.outer[pos], layout.inner[pos]),
                layout.block_type(pos),
                value,
                reason,
                path,
            )
        )

    def drop_caller(self, pos: int, reason: str) -> None:
        for path, value, _ in self.caller.pop(pos).originals:
            self._note(self.dropped, pos, path, value, reason)

    # -- step 2 ------------------------------------------------------------------------------------
    def caller_markers(self) -> None:
        layout = self.layout
        for pos, value in layout.markers.items():
            marker, fault = normalise_marker(value)
            if marker is None:
                self._note(self.dropped, pos, None, value, str(fault))
            else:
                self.caller[pos] = _CallerMarker(marker, [(None, value, fault)])
        for pos, found in layout.nested.items():
            for path, value in found:
                marker, fault = normalise_marker(value)
                if marker is None:
                    self._note(self.dropped, pos, path, value, str(fault))
                    continue
                moved = "inside a tool_result's content: moved to the enclosing tool_result block"
                reason = moved if fault is None else f"{moved}; {fault}"
                entry = self.caller.get(pos)
                if entry is None:
                    self.caller[pos] = _CallerMarker(marker, [(path, value, reason)])
                else:  # one block carries one marker: the others asked for the same prefix
                    entry.originals.append((path, value, reason + " (merged with another marker there)"))
        if self.top_raw is not None:
            self.top, fault = normalise_marker(self.top_raw)
            if self.top is None:
                self.dropped.append(DroppedMarker(-1, "messages", (-1, -1), "top-level", self.top_raw, str(fault)))
            elif fault is not None:
                self.normalised.append(DroppedMarker(-1, "messages", (-1, -1), "top-level", self.top_raw, fault))

    def strip_all(self) -> None:
        """Strategy ``none`` and prefix-caching providers: every block marker goes, without warning."""
        why = (
            "strategy 'none' disables caching"
            if self.opts.strategy == "none"
            else "provider caches by prefix and ignores markers"
        )
        for pos in sorted(self.caller):
            self.drop_caller(pos, why)
        self.dropped.sort(key=lambda d: d.position)

    # -- step 3 ------------------------------------------------------------------------------------
    def top_level(self) -> None:
        opts = self.opts
        if opts.strategy == "automatic":
            self.use_auto = True
        elif opts.automatic is None:
            self.use_auto = self.top is not None and opts.provider == "anthropic"
        else:
            self.use_auto = opts.automatic
        if self.use_auto:
            self.top_value = self.top if self.top is not None else _marker(opts.ttl.get("messages"))

    @property
    def budget(self) -> int:
        return MAX_BREAKPOINTS - (1 if self.use_auto else 0)

    # -- step 4 ------------------------------------------------------------------------------------
    def priorities(self, propose: Callable[[StrategyContext], list[Candidate]]) -> list[tuple[int, Source, str]]:
        layout = self.layout
        region = layout.region
        caller_prefix = sorted((p for p in self.caller if region[p] != MESSAGES), key=lambda p: (-region[p], -p))
        caller_messages = sorted((p for p in self.caller if region[p] == MESSAGES), reverse=True)
        order: list[tuple[int, Source, str]] = []  # (position, source, reason)
        order += [(p, "caller", "caller's marker (tools/system)") for p in caller_prefix[:_CALLER_PREFIX_FIRST]]
        for cand in propose(StrategyContext(layout, self.opts.lookback, self.use_auto)):
            pos = layout.last_cacheable(cand.position)
            if pos is None:
                continue
            if not layout.reaches(pos, self.minimum):
                self.too_short.append(cand)
                continue
            order.append((pos, "strategy", cand.reason))
        order += [(p, "caller", "caller's marker (tools/system)") for p in caller_prefix[_CALLER_PREFIX_FIRST:]]
        order += [(p, "caller", "caller's marker (messages)") for p in caller_messages]
        return order

    # -- step 5 ------------------------------------------------------------------------------------
    def select(self, order: list[tuple[int, Source, str]]) -> None:
        layout, chosen, budget = self.layout, self.chosen, self.budget
        for pos, source, reason in order:
            if pos in chosen or (source == "caller" and pos not in self.caller):
                continue
            if source == "caller" and not layout.cacheable[pos]:
                self.drop_caller(pos, "this block type cannot carry cache_control")
                continue
            if len(chosen) < budget:
                chosen[pos] = (source, reason)
            elif source == "caller":
                self.drop_caller(pos, f"over the limit of {MAX_BREAKPOINTS} breakpoints")
        for pos in sorted(self.caller):
            if pos not in chosen:  # every caller marker is in `order`; this only guards the invariant
                self.drop_caller(pos, f"over the limit of {MAX_BREAKPOINTS} breakpoints")

    # -- step 6 ------------------------------------------------------------------------------------
    def assign_ttls(self) -> None:
        seen_short = False
        for pos in sorted(self.chosen):
            entry = self.caller.get(pos)
            if entry is not None:
                marker = entry.marker  # the caller's own marker, TTL included, wins over ours
                for path, value, fault in entry.originals:
                    if fault is not None:
                        self._note(self.normalised, pos, path, value, fault)
            else:
                marker = _marker(self.opts.ttl.get(REGION_NAMES[self.layout.region[pos]]))
            if marker_ttl(marker) == "1h" and (seen_short or not self.allow_1h):
                marker = {**marker, "ttl": "5m"}
                self.lowered.append(pos)
            elif marker_ttl(marker) != "1h":
                seen_short = True
            self.wanted[pos] = marker
        if self.top_value is not None and marker_ttl(self.top_value) == "1h" and (seen_short or not self.allow_1h):
            self.top_value = {**self.top_value, "ttl": "5m"}
            self.lowered.append(-1)

    # -- step 7 ------------------------------------------------------------------------------------
    def replace_top_level(self) -> None:
        if self.top is None or self.top_value is not None:
            return
        if self.opts.provider != "anthropic":
            why = f"provider {self.opts.provider!r} has no top-level automatic caching"
        else:
            why = "automatic=False removes the top-level marker"
        self.dropped.append(DroppedMarker(-1, "messages", (-1, -1), "top-level", self.top_raw, why))
        # its job (covering the tail) passes to an explicit marker when the budget allows
        layout, chosen, wanted = self.layout, self.chosen, self.wanted
        t = tail(layout)
        if t is not None and t not in chosen and len(chosen) < self.budget and layout.reaches(t, self.minimum):
            chosen[t] = ("strategy", "current tail (replaces the top-level marker)")
            wanted[t] = _marker(self.opts.ttl.get("messages"))
            shorter_before = any(marker_ttl(wanted[p]) != "1h" for p in wanted if p < t)
            if marker_ttl(wanted[t]) == "1h" and (shorter_before or not self.allow_1h):
                wanted[t] = _marker("5m")
                self.lowered.append(t)

    # -- step 8 ------------------------------------------------------------------------------------
    def output(self) -> dict[str, Any]:
        if self.top_value is None:
            top_arg: Any = None if self.top_raw is not None else ...
        else:
            top_arg = ... if self.top_value is self.top_raw else self.top_value
        return rewrite_markers(self.layout, self.wanted, top_level=top_arg)

    def report(self, *, estimate: bool) -> tuple[PlacementReport, int | None]:
        layout, chosen = self.layout, self.chosen
        prefix = layout.prefix_tokens() if estimate else None
        breakpoints = [
            Breakpoint(
                pos,
                REGION_NAMES[layout.region[pos]],
                (layout.outer[pos], layout.inner[pos]),
                layout.roles[pos],
                layout.block_type(pos),
                marker_ttl(self.wanted[pos]),
                chosen[pos][1],
                chosen[pos][0],
                None if prefix is None else prefix[pos],
            )
            for pos in sorted(chosen)
        ]
        auto_pos = tail(layout) if self.use_auto else None
        if self.top_value is not None:
            breakpoints.append(
                Breakpoint(
                    -1 if auto_pos is None else auto_pos,
                    "messages",
                    (-1, -1),
                    "",
                    "top-level",
                    marker_ttl(self.top_value),
                    "automatic caching: the API marks the last cacheable block",
                    "automatic",
                    None if prefix is None or auto_pos is None else prefix[auto_pos],
                )
            )
        report = PlacementReport(
            self.opts.strategy,
            self.opts.provider,
            self.minimum,
            tuple(breakpoints),
            tuple(self.dropped),
            tuple(self.lowered),
            tuple(self.too_short),
            self.use_auto,
            tuple(self.normalised),
        )
        return report, auto_pos


def _plan(
    payload: Mapping[str, Any],
    opts: _Options,
    propose: Callable[[StrategyContext], list[Candidate]],
    *,
    estimate: bool,
    layout: Layout | None = None,
) -> _Plan:
    """Run the steps of the theory of operation on a Messages-shaped ``payload`` (for Converse, on its
    shadow: see :func:`_converse_in`). Raises CachePayloadError (step 1)."""
    layout = layout or Layout.of(payload)
    try:
        work = _Planning(payload, opts, layout)
        work.caller_markers()
        if opts.strategy == "none" or opts.provider == "prefix-auto":
            work.strip_all()
            out = rewrite_markers(layout, {}, top_level=None if work.top_raw is not None else ...)
            report = PlacementReport(opts.strategy, opts.provider, work.minimum, (), tuple(work.dropped))
            return _Plan(out, report, layout)
        work.top_level()
        work.select(work.priorities(propose))
        work.assign_ttls()
        work.replace_top_level()
        out = work.output()
        report, auto_pos = work.report(estimate=estimate)
    except RecursionError:
        # a block nested deeper than the interpreter can walk (hashing and token estimates recurse)
        raise CachePayloadError(
            "payload nested too deeply to plan (a tool input or block deeper than Python's recursion limit)",
            field="payload",
        ) from None
    return _Plan(out, report, layout, sorted(work.chosen), auto_pos, work.wanted)


def _converse_in(payload: Mapping[str, Any], opts: _Options) -> tuple[Mapping[str, Any], ConverseMap | None]:
    """The payload the planner works on: ``payload`` itself, or for ``bedrock-converse`` its shadow."""
    if opts.provider != "bedrock-converse":
        return payload, None
    if not isinstance(payload, Mapping):
        raise CachePayloadError(f"payload must be a mapping (a Converse request), not {type(payload).__name__}",
                                field="payload")
    return shadow_of(payload)


def _converse_out(payload: Mapping[str, Any], mapping: ConverseMap | None, plan: _Plan) -> _Plan:
    """For Converse, the plan's markers written back as cachePoint blocks into the original payload."""
    if mapping is None:
        return plan
    layout = plan.layout
    containers = ("tools", "system", "messages")
    wanted = {}
    for pos, marker in plan.markers.items():
        region = layout.region[pos]
        if region == MESSAGES:
            key = ("messages", layout.outer[pos], layout.inner[pos])
        else:
            key = (containers[region], 0, layout.outer[pos])
        wanted[key] = marker
    plan.payload = write_cache_points(payload, mapping, wanted)
    return plan


def _describe(markers: tuple[DroppedMarker, ...]) -> str:
    return "; ".join(f"{d.path or _where(d.region, d.location)}: {d.reason}" for d in markers)


def _warn(report: PlacementReport, stacklevel: int) -> None:
    if report.dropped and report.strategy != "none":
        warnings.warn(
            f"{len(report.dropped)} cache_control marker(s) dropped: {_describe(report.dropped)}",
            CacheMarkerWarning,
            stacklevel=stacklevel + 1,
        )
    if report.normalised:
        warnings.warn(
            f"{len(report.normalised)} cache_control marker(s) corrected: {_describe(report.normalised)}",
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
    planned, mapping = _converse_in(payload, opts)
    plan = _converse_out(payload, mapping, _plan(planned, opts, STRATEGIES[strategy], estimate=True))
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
        provider: ``anthropic``, ``bedrock`` (InvokeModel: block markers, no top-level automatic caching,
            ``1h`` only for Claude 4.5 and later), ``bedrock-converse`` (a Converse request: the markers
            are ``{"cachePoint": {"type": "default"}}`` blocks after the block they close, in
            ``toolConfig.tools``, ``system`` and message ``content``; same rules as ``bedrock``),
            ``vertex`` (no top-level automatic caching) or ``prefix-auto`` (markers ignored by the
            provider: all are removed).
        lookback: blocks the provider walks back from a breakpoint (20 for Anthropic).

    Caller markers that are not valid are never passed on: one that is not an object (``"yes"``) is
    dropped; a fixable one (``ttl`` ``"2h"`` or ``3600``, ``type`` ``"persistent"``, unknown keys) is
    corrected (see :func:`~.layout.normalise_marker`); markers nested in a ``tool_result``'s content
    count against the budget and, when kept, move to the enclosing block. All of it is reported.

    Raises:
        UsageError: a bad option (an unknown strategy, provider, TTL or region, ``min_tokens`` that is not
            a non-negative integer or mapping, ``model`` that is not a string, ``automatic=True`` for a
            provider without it); the message names the argument and the allowed values.
        CachePayloadError: ``payload`` is not a mapping or one of its fields has the wrong shape
            (``"content": 5``, ``"tools": "x"``), naming the field; a subclass of UsageError and TypeError.
    """
    opts = _resolve(strategy, model, ttl, min_tokens, automatic, provider, lookback)
    planned, mapping = _converse_in(payload, opts)
    plan = _converse_out(payload, mapping, _plan(planned, opts, STRATEGIES[strategy], estimate=False))
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
    5. the end of system and of tools (and, on the first request, the system block before the last and
       the middle of the tool definitions: hedges for a block that turns out to change every turn);
    6. a stepping stone when more than ``lookback`` blocks separate the read point from the tail.

    Hashes ignore ``cache_control``, so feeding back payloads that already carry markers is fine.
    Work per request follows what changed: the layout, hashes and token sums of the unchanged leading
    messages are reused (see ``cache/history.py`` for the exact invariant: a block edited in place is
    detected when one of its fields is reassigned, deeper in-place edits by a rotating probe, and markers
    inside tool_result content are re-counted on every request). Memory: the previous request's layout
    (one hash, digest and fingerprint per block, and references to its blocks) plus ``memory`` written
    prefixes.
    Not thread-safe; use one planner per conversation.

    State that leaves the process: :meth:`export_state` writes what the placements depend on (the previous
    request's prefix hashes and tail, the written prefixes, the options) as versioned JSON bytes, at most
    ``max_bytes``; :meth:`from_state` makes a planner from them in any process. A restored planner places
    exactly what the exporting one would have placed (the layout history is only a cache of work and is
    rebuilt on the first request). Placements never depend on the clock: a state does not expire by
    itself (a store gives it the TTL of the caches it planned for).

    Raises:
        UsageError: a bad option, as :func:`place_cache_breakpoints`, or ``memory`` that is not a
            positive integer. :meth:`place` raises CachePayloadError for a malformed payload.
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
        if not _count(memory) or memory < 1:
            raise UsageError(f"memory must be a positive integer (written prefixes to remember), not {memory!r}")
        if not isinstance(warn, bool):
            raise UsageError(f"warn must be True or False, not {warn!r}")
        self._memory = memory
        self._warn = warn
        self._history = History()
        self._written: OrderedDict[bytes, None] = OrderedDict()
        self._previous: list[bytes] | SparseChain = []
        self._previous_tail: int | None = None
        self._tail_back = 0
        self.last_report: PlacementReport | None = None
        """The report of the most recent :meth:`place` / :meth:`plan` call."""

    def reset(self) -> None:
        """Forget every earlier request (e.g. after switching model or conversation)."""
        self._history.reset()
        self._written.clear()
        self._previous = []
        self._previous_tail = None
        self._tail_back = 0
        self.last_report = None

    def export_state(self, *, max_bytes: int = STATE_BYTES) -> bytes:
        """What this planner's next placements depend on, as at most ``max_bytes`` of JSON (64 KiB by
        default; never pickle): see :class:`~mendstream.cache.history.PlannerMemory` for the format and how
        a state over the cap is thinned (the oldest written prefixes, then the previous request's hashes
        away from its end). Raises UsageError: ``max_bytes`` under 1024."""
        return self._memory_state().encode(max_bytes)

    def state_size(self) -> int:
        """Bytes :meth:`export_state` would write without a cap: over the cap means a thinned state."""
        return self._memory_state().size()

    @classmethod
    def from_state(
        cls, data: bytes | bytearray | memoryview | str, /, *, max_bytes: int = STATE_BYTES, **options: Any
    ) -> CachePlanner:
        """A planner with ``options`` (as :class:`CachePlanner` takes them) continuing from ``data``, a
        state :meth:`export_state` wrote (in this process or another).

        Raises:
            UsageError: a bad option.
            PlannerStateError: ``data`` is not a state (``reason="format"``), another format version
                (``"version"``), over ``max_bytes`` (``"size"``), or made with other options than
                ``options`` (``"options"``: a state's decisions mean what they mean for its own options).
        """
        planner = cls(**options)
        planner.load_state(data, max_bytes=max_bytes)
        return planner

    def load_state(self, data: bytes | bytearray | memoryview | str, /, *, max_bytes: int = STATE_BYTES) -> None:
        """Replace what this planner remembers with ``data`` (see :meth:`from_state`; same errors). On an
        error the planner is left as it was."""
        memory = PlannerMemory.decode(data, max_bytes)
        mine = self._options_record()
        if memory.options != mine:
            changed = sorted(k for k in mine.keys() | memory.options.keys() if mine.get(k) != memory.options.get(k))
            raise PlannerStateError(
                f"planner state was made with other options ({', '.join(changed)} differ)", reason="options", data=data
            )
        self._history.reset()
        self._written = OrderedDict.fromkeys(memory.written[len(memory.written) - self._memory :])
        self._previous = memory.previous
        self._previous_tail = memory.tail
        self._tail_back = memory.tail_back
        self.last_report = None

    def _options_record(self) -> dict[str, Any]:
        """The options that decide placements, as JSON values (what a state is checked against)."""
        o = self._opts
        record = {
            "strategy": o.strategy,
            "model": o.model,
            "ttl": dict(o.ttl),
            "min_tokens": dict(o.min_tokens) if isinstance(o.min_tokens, Mapping) else o.min_tokens,
            "automatic": o.automatic,
            "provider": o.provider,
            "lookback": o.lookback,
        }
        loaded: dict[str, Any] = json.loads(json.dumps(record, sort_keys=True))
        return loaded

    def _memory_state(self) -> PlannerMemory:
        return PlannerMemory(
            self._previous, self._previous_tail, self._tail_back, list(self._written), self._options_record()
        )

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
        planned, mapping = _converse_in(payload, self._opts)
        try:
            layout, chain = self._history.build(planned)
        except RecursionError:
            self._history.reset()
            raise CachePayloadError(
                "payload nested too deeply to plan (a tool input or block deeper than Python's recursion limit)",
                field="payload",
            ) from None
        plan = _plan(planned, self._opts, lambda ctx: self._propose(ctx, chain), estimate=True, layout=layout)
        plan = _converse_out(payload, mapping, plan)
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
        if not self._previous and tools_end is not None and tools_end >= 3:
            # A hedge for what the first request cannot know yet: if one tool definition changes every
            # turn (open files, MCP listings), the next request still reads half of the tools. It is
            # written in the same request as the tools end, so it costs no extra write.
            middle = layout.last_cacheable(tools_end // 2)
            if middle is not None and middle < tools_end:
                out.append(Candidate(middle, "middle of the tool definitions (in case a later one changes)"))
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


def _common_prefix(chain: list[bytes], previous: list[bytes] | SparseChain) -> int | None:
    """Last position where two prefix-hash chains agree. Prefix hashes agree on a prefix and then never
    again, so a binary search finds the boundary in O(log n)."""
    if isinstance(previous, SparseChain):
        return previous.common_prefix(chain)
    lo, hi = 0, min(len(chain), len(previous))  # invariant: chain[:lo] agrees, chain[hi:] does not
    while lo < hi:
        mid = (lo + hi) // 2
        if chain[mid] == previous[mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


