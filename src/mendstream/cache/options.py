# The `cache=` keyword, read in one place for every caller (`mendstream.stream` / `astream`,
# `mendstream.httpx`, `RepairTransport`, the proxy's `--cache`), so that one vocabulary means the same
# everywhere and a bad value is a UsageError naming what is allowed:
#
#   None, False, "off"          leave requests alone
#   True, "default"             at most 4 breakpoints per request, by the default strategy (stateless)
#   a strategy name             the same with that strategy (see cache/strategies.py)
#   a dict                      keyword options for place_cache_breakpoints (strategy, model, ttl, ...)
#   "planner"                   a CachePlanner that learns the conversation from request to request: where
#                               a caller sees one conversation (a transport, the proxy per conversation)
#   a CachePlanner              that planner (made with the caller's options)
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mendstream.cache.planner import CachePlanner, place_cache_breakpoints
from mendstream.cache.strategies import STRATEGIES
from mendstream.errors import UsageError

__all__ = ["PLACE_OPTIONS", "CacheSetting", "apply_cache", "parse_cache"]

PLACE_OPTIONS: Final = ("strategy", "model", "ttl", "min_tokens", "automatic", "provider", "lookback")
"""The keys a dict given as ``cache=`` may hold (the options of ``place_cache_breakpoints``)."""

CacheMode = Literal["off", "stateless", "planner"]


@dataclass(frozen=True, slots=True)
class CacheSetting:
    """What a ``cache=`` value asks for.

    ``mode`` is ``"off"``, ``"stateless"`` (each request planned alone with ``options``) or ``"planner"``
    (``planner``, or a new CachePlanner per conversation when ``planner`` is None).
    """

    mode: CacheMode
    options: Mapping[str, Any] = field(default_factory=dict)
    planner: CachePlanner | None = None

    @property
    def off(self) -> bool:
        return self.mode == "off"

    def apply(self, payload: dict[str, Any], planner: CachePlanner | None = None) -> dict[str, Any]:
        """``payload`` planned as this setting says (``planner``: the conversation's, in planner mode with no
        planner of its own). Copy-on-write: the payload is never mutated; ``off`` returns it as is."""
        if self.mode == "off":
            return payload
        if self.mode == "stateless":
            try:
                return place_cache_breakpoints(payload, **self.options)
            except UsageError:
                raise
            except (TypeError, ValueError) as exc:  # an option value the planner refuses (e.g. ttl="2h")
                raise UsageError(f"cache: {exc}") from None
        chosen = self.planner if self.planner is not None else planner
        if chosen is None:
            raise UsageError("cache='planner' needs a CachePlanner for the conversation")
        return chosen.place(payload)


_OFF = CacheSetting("off")
_DEFAULT = CacheSetting("stateless")
_NAMES = ("off", "default", "planner")


def parse_cache(value: object, /, *, planner_ok: bool = True) -> CacheSetting:
    """The :class:`CacheSetting` for a ``cache=`` value (see the table at the top of this module).

    ``planner_ok=False`` refuses ``"planner"`` (a caller that sees one request at a time, like
    ``mendstream.stream``: pass a CachePlanner to share across calls instead).

    Raises:
        UsageError: a value outside the vocabulary, an unknown strategy or option, naming what is allowed.
    """
    if value is None or value is False or value == "off":
        return _OFF
    if value is True or value == "default":
        return _DEFAULT
    if isinstance(value, CachePlanner):
        return CacheSetting("planner", planner=value)
    if isinstance(value, str):
        if value == "planner":
            if not planner_ok:
                raise UsageError(
                    "cache='planner' needs requests of one conversation to learn from; here each call is planned "
                    "alone: pass cache=mendstream.CachePlanner() and reuse it across the conversation's calls"
                )
            return CacheSetting("planner")
        if value not in STRATEGIES:
            raise UsageError(
                f"cache: unknown value {value!r}; allowed: {', '.join(_NAMES)}, a strategy name "
                f"({', '.join(STRATEGIES)}), True/False/None, a CachePlanner or a dict of options"
            )
        return CacheSetting("stateless", {"strategy": value})
    if isinstance(value, Mapping):
        unknown = sorted(str(key) for key in value if key not in PLACE_OPTIONS)
        if unknown:
            raise UsageError(f"cache: unknown option(s) {unknown}; allowed: {', '.join(PLACE_OPTIONS)}")
        strategy = value.get("strategy")
        if strategy is not None and strategy not in STRATEGIES:
            raise UsageError(f"cache: unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        return CacheSetting("stateless", dict(value))
    raise UsageError(
        f"cache must be one of {', '.join(_NAMES)}, a strategy name ({', '.join(STRATEGIES)}), True/False/None, "
        f"a CachePlanner or a dict of options; got {type(value).__name__} {value!r:.80}"
    )


def apply_cache(payload: dict[str, Any], cache: object) -> dict[str, Any]:
    """Apply the ``cache=`` argument of ``mendstream.stream`` to a request body (copy-on-write).

    ``None`` / ``False`` / ``"off"``: ``payload`` itself, unchanged. ``True`` / ``"default"``: the default
    stateless strategy. A strategy name: that strategy. A dict: keyword options for
    :func:`place_cache_breakpoints`. A :class:`CachePlanner`: ``planner.place(payload)``.

    Raises:
        UsageError: any other value (``"planner"`` included: pass a CachePlanner to reuse across calls), an
            unknown strategy name or option, an option value the planner refuses.
    """
    return parse_cache(cache, planner_ok=False).apply(payload)
