# CacheStats: adds up the usage fields of real responses across a session, so users can watch what the
# cache actually did (hit ratio, write volume, relative input cost) next to what the simulator predicts.
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mendstream.cache.simulate import PRICE_READ, PRICE_WRITE_1H, PRICE_WRITE_5M

__all__ = ["CacheStats"]


def _field(usage: Any, name: str, converse: str | None = None) -> Any:
    """``usage[name]``, falling back to the Bedrock Converse spelling ``converse`` when absent."""
    for key in (name, converse):
        if key is None:
            continue
        value = usage.get(key) if isinstance(usage, Mapping) else getattr(usage, key, None)
        if value is not None:
            return value
    return None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class CacheStats:
    """Running totals of Messages API ``usage`` objects (dicts or SDK ``Usage`` models), or of Bedrock
    Converse ``usage`` (``inputTokens``, ``outputTokens``, ``cacheReadInputTokens``,
    ``cacheWriteInputTokens``; Converse does not split writes by TTL, so they count as 5m).

    ``add(usage)`` once per response (the final usage: ``message.usage`` or the last ``message_delta``).
    When ``cache_creation`` splits writes into ``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``
    that split is used; otherwise all writes count as 5m.
    """

    requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0

    def add(self, usage: Any) -> None:
        """Add one response's usage. Missing or non-numeric fields count as 0; never raises."""
        self.requests += 1
        self.input_tokens += _int(_field(usage, "input_tokens", "inputTokens"))
        self.cache_read_tokens += _int(_field(usage, "cache_read_input_tokens", "cacheReadInputTokens"))
        self.output_tokens += _int(_field(usage, "output_tokens", "outputTokens"))
        created = _int(_field(usage, "cache_creation_input_tokens", "cacheWriteInputTokens"))
        split = _field(usage, "cache_creation")
        one_hour = _int(_field(split, "ephemeral_1h_input_tokens")) if split is not None else 0
        five = _int(_field(split, "ephemeral_5m_input_tokens")) if split is not None else 0
        if split is None or five + one_hour == 0:
            five, one_hour = created, 0
        self.cache_write_5m_tokens += five
        self.cache_write_1h_tokens += one_hour

    @property
    def total_input_tokens(self) -> int:
        """Uncached + written + read input tokens."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def hit_ratio(self) -> float:
        """Share of input tokens served from the cache (0.0 when nothing was added)."""
        total = self.total_input_tokens
        return self.cache_read_tokens / total if total else 0.0

    @property
    def relative_cost(self) -> float:
        """Input cost with caching over the same input without caching (1.25x/2x writes, 0.1x reads)."""
        total = self.total_input_tokens
        if not total:
            return 1.0
        cost = (
            self.input_tokens
            + PRICE_WRITE_5M * self.cache_write_5m_tokens
            + PRICE_WRITE_1H * self.cache_write_1h_tokens
            + PRICE_READ * self.cache_read_tokens
        )
        return cost / total

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.requests} requests, {self.total_input_tokens} input tokens: "
            f"read {self.cache_read_tokens}, written {self.cache_write_5m_tokens} (5m) + "
            f"{self.cache_write_1h_tokens} (1h), uncached {self.input_tokens}; hit ratio {self.hit_ratio:.1%}, "
            f"relative input cost {self.relative_cost:.3f}"
        )
