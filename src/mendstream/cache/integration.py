# The cache package's integration point for transports: the one call through which `mendstream.stream`,
# `astream` and `mendstream.httpx` apply a `cache=` plan to a request before sending it.
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["apply_cache"]


def apply_cache(params: dict[str, Any], cache: Any) -> dict[str, Any]:
    """``params`` with the plan ``cache`` applied by ``mendstream.cache.apply_cache``; ``None``: unchanged.

    The cache package is imported only when a plan is given (it is the heavier part of the package), and
    ``mendstream.cache.options`` is the single definition of what a ``cache=`` value means.
    """
    if cache is None:
        return params
    options = importlib.import_module("mendstream.cache.options")
    return dict(options.apply_cache(params, cache))
