# Prompt-cache breakpoint planning for Messages API requests: where to put cache_control markers
# (planner, strategies), what they would save (simulate) and what they did save (stats). Pure Python,
# no I/O except in the CLI. From the rest of mendstream it imports only mendstream.errors (its errors
# belong to the one hierarchy: UsageError, CachePayloadError); importing it stays light (no httpx,
# anthropic or matplotlib).
from __future__ import annotations

from mendstream.cache.options import CacheSetting, apply_cache, parse_cache
from mendstream.cache.planner import (
    MAX_BREAKPOINTS,
    Breakpoint,
    CacheMarkerWarning,
    CachePlanner,
    DroppedMarker,
    PlacementReport,
    place_cache_breakpoints,
    plan_cache_breakpoints,
)
from mendstream.cache.simulate import RequestResult, SessionEntry, SimulationReport, ceiling, load_session, simulate
from mendstream.cache.stats import CacheStats
from mendstream.cache.strategies import STRATEGIES
from mendstream.cache.tokens import MIN_CACHEABLE_TOKENS, estimate_block_tokens, min_cacheable_tokens

__all__ = [
    "MAX_BREAKPOINTS",
    "MIN_CACHEABLE_TOKENS",
    "STRATEGIES",
    "Breakpoint",
    "CacheSetting",
    "CacheStats",
    "CacheMarkerWarning",
    "CachePlanner",
    "DroppedMarker",
    "PlacementReport",
    "RequestResult",
    "SessionEntry",
    "SimulationReport",
    "apply_cache",
    "ceiling",
    "estimate_block_tokens",
    "load_session",
    "min_cacheable_tokens",
    "parse_cache",
    "place_cache_breakpoints",
    "plan_cache_breakpoints",
    "simulate",
]
