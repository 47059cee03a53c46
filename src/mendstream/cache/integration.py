# The cache package's integration point for transports: the one call through which `mendstream.stream`,
# `astream` and `mendstream.httpx` apply a `cache=` plan to a request before sending it.
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["apply_cache"]


def apply_cache(params: dict[str, Any], cache: Any) -> dict[str, Any]:
    """``params`` with the plan ``cache`` applied by ``mendstream.cache.apply_cache``; ``None``: unchanged.

    ``mendstream.cache.apply_cache`` is looked up when called (not bound at import), so the package's
    public function is the single definition of what a plan does.
    """
    if cache is None:
        return params
    package = importlib.import_module("mendstream.cache")
    return dict(package.apply_cache(params, cache))
