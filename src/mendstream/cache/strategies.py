# Named breakpoint strategies: each looks at a flattened payload and proposes positions, most valuable
# first, each with the reason it is worth a breakpoint. The planner decides what fits the budget; a
# strategy never counts markers, checks minimum lengths or touches the payload.
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from mendstream.cache.layout import SYSTEM, TOOLS, Layout

__all__ = ["STRATEGIES", "Candidate", "StrategyContext", "StrategyName"]

StrategyName = Literal["default", "system-last-two-user", "pi", "dual", "last-block", "automatic", "none"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A proposed breakpoint: the block position and why it would be read."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class StrategyContext:
    layout: Layout
    #: blocks the provider walks back from a breakpoint (20 for Anthropic, 1 for exact-match providers)
    lookback: int
    #: a top-level automatic breakpoint will sit on the tail, so the tail needs no explicit marker
    automatic: bool


def region_end(layout: Layout, region: int) -> int | None:
    """Last markable block of ``region`` (TOOLS or SYSTEM)."""
    last = None
    for pos in range(len(layout)):
        if layout.region[pos] > region:
            break
        if layout.region[pos] == region and layout.cacheable[pos]:
            last = pos
    return last


def _first_message_position(layout: Layout) -> int | None:
    if not layout.message_span:
        return None
    # message_span is filled in message order, so its first key is the smallest: O(1), not O(messages)
    return layout.message_span[next(iter(layout.message_span))][0]


def tail(layout: Layout) -> int | None:
    """Last markable message block."""
    floor = _first_message_position(layout)
    if floor is None:
        return None
    return layout.last_cacheable(len(layout) - 1, floor=floor)


def previous_tail(layout: Layout) -> int | None:
    """Where the previous request of a turn-based conversation ended: skip the trailing run of messages
    with the last message's role (this turn's input), then the other side's reply before it; the block
    before that reply is what the previous request sent last (and, under this strategy, marked)."""
    floor = _first_message_position(layout)
    if floor is None:
        return None
    messages = layout.payload.get("messages") or []
    indexes = sorted(layout.message_span)
    last_role = messages[indexes[-1]].get("role")
    k = len(indexes) - 1
    while k >= 0 and messages[indexes[k]].get("role") == last_role:
        k -= 1
    while k >= 0 and messages[indexes[k]].get("role") != last_role:
        k -= 1
    if k < 0:
        return None
    return layout.last_cacheable(layout.message_span[indexes[k]][1], floor=floor)


def _last_blocks_of_role(layout: Layout, role: str, count: int) -> list[int]:
    out: list[int] = []
    messages = layout.payload.get("messages") or []
    for m in sorted(layout.message_span, reverse=True):
        if len(out) == count:
            break
        if messages[m].get("role") == role:
            start, end = layout.message_span[m]
            pos = layout.last_cacheable(end, floor=start)
            if pos is not None:
                out.append(pos)
    return out


def _stable_prefix(layout: Layout) -> list[Candidate]:
    system_end = region_end(layout, SYSTEM)
    if system_end is not None:
        return [Candidate(system_end, "end of the stable prefix (tools + system)")]
    tools_end = region_end(layout, TOOLS)
    if tools_end is not None:
        return [Candidate(tools_end, "end of the stable prefix (tools)")]
    return []


def _tail_guard(layout: Layout, current: int | None) -> int | None:
    if current is None or layout.block_type(current) != "text":
        return None
    start, end = layout.message_span[layout.outer[current]]
    if current != end or current == start:
        return None
    return layout.last_cacheable(current - 1, floor=start)


def default_strategy(ctx: StrategyContext) -> list[Candidate]:
    """Breakpoints where they will be read.

    1. end of tools/system: survives compaction, idle history edits and a new conversation;
    2. the previous request's tail: the exact prefix the previous request wrote, a hit even for providers
       without lookback and however many blocks this turn added;
    3. the current tail: written now, read by the next request's (2);
    4. when the last message ends in a text block after other blocks (agents append reminders there and
       drop them from the stored history), the block before it: the next request's (2) reads it exactly;
    5. the end of the tool definitions when a system prompt follows them (a system change keeps tools);
    6. a stepping stone ``lookback // 2`` blocks before the tail when more than ``lookback`` blocks
       separate the two tails, so that if the next request alters its tail, walking back still lands
       on a written prefix.
    """
    layout = ctx.layout
    out = _stable_prefix(layout)
    previous = previous_tail(layout)
    current = tail(layout)
    if previous is not None:
        out.append(Candidate(previous, "previous request's tail: read exactly where it was written"))
    if current is not None and not ctx.automatic:
        out.append(Candidate(current, "current tail: written for the next request"))
    guard = _tail_guard(layout, current)
    if guard is not None:
        out.append(
            Candidate(
                guard, "block before a trailing text block: survives if that text (a reminder) is not kept in history"
            )
        )
    tools_end = region_end(layout, TOOLS)
    if tools_end is not None and region_end(layout, SYSTEM) is not None:
        out.append(Candidate(tools_end, "end of tool definitions: survives a system change"))
    if current is not None and previous is not None and current - previous > ctx.lookback:
        stone = layout.last_cacheable(current - max(1, ctx.lookback // 2), floor=previous + 1)
        if stone is not None:
            out.append(Candidate(stone, f"stepping stone: {current - previous} blocks since the last tail"))
    return out


def system_last_two_user(ctx: StrategyContext) -> list[Candidate]:
    """OpenCode / Cline / Roo: the system prompt and the last two user messages."""
    out = _stable_prefix(ctx.layout)
    for n, pos in enumerate(_last_blocks_of_role(ctx.layout, "user", 2)):
        out.append(Candidate(pos, "last user message" if n == 0 else "second-to-last user message"))
    return out


def pi_strategy(ctx: StrategyContext) -> list[Candidate]:
    """pi: system, last tool definition, last user block."""
    layout = ctx.layout
    out: list[Candidate] = []
    system_end = region_end(layout, SYSTEM)
    tools_end = region_end(layout, TOOLS)
    if system_end is not None:
        out.append(Candidate(system_end, "end of system"))
    if tools_end is not None:
        out.append(Candidate(tools_end, "last tool definition"))
    out += [Candidate(pos, "last user block") for pos in _last_blocks_of_role(layout, "user", 1)]
    return out


def dual_strategy(ctx: StrategyContext) -> list[Candidate]:
    """pi's "dual" extension: pi's markers plus the last assistant tool_use block."""
    layout = ctx.layout
    out = pi_strategy(ctx)
    floor = _first_message_position(layout)
    if floor is not None:
        for pos in range(len(layout) - 1, floor - 1, -1):
            if layout.roles[pos] == "assistant" and layout.block_type(pos) == "tool_use" and layout.cacheable[pos]:
                out.append(Candidate(pos, "last assistant tool_use"))
                break
    return out


def last_block(ctx: StrategyContext) -> list[Candidate]:
    """A single breakpoint on the last block (what most hand-written agents do)."""
    pos = tail(ctx.layout)
    return [] if pos is None else [Candidate(pos, "last block")]


def no_blocks(ctx: StrategyContext) -> list[Candidate]:
    """No block markers ("automatic" adds the top-level marker; "none" disables caching)."""
    return []


STRATEGIES: Final[dict[str, Callable[[StrategyContext], list[Candidate]]]] = {
    "default": default_strategy,
    "system-last-two-user": system_last_two_user,
    "pi": pi_strategy,
    "dual": dual_strategy,
    "last-block": last_block,
    "automatic": no_blocks,
    "none": no_blocks,
}
