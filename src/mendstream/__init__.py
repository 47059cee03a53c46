# mendstream: fast, unbreakable streaming from the Anthropic Messages API, and prompt-cache breakpoints
# that always fit. The core is sans-IO: it contains no networking code (bytes in, events and the
# accumulated message out); transports that move bytes in are imported only when used, so
# `import mendstream` imports neither httpx nor anthropic.
from __future__ import annotations

from typing import Any

from .errors import (
    APIStreamError,
    BufferLimitError,
    EventDecodeError,
    IncompleteStreamError,
    MessageTooLargeError,
    ProtocolError,
    StreamError,
    ToolInputError,
    UsageError,
)
from .events import Data, Event
from .parser import MessageParser
from .repair import Repair
from .sse import ServerSentEvent, SSEDecoder
from .streaming import AsyncMessageStream, MessageStream, areplay, replay

__version__ = "0.1.0"

__all__ = [
    "APIStreamError",
    "AsyncMessageStream",
    "BufferLimitError",
    "CachePlanner",
    "CacheStats",
    "Data",
    "Event",
    "EventDecodeError",
    "IncompleteStreamError",
    "MessageTooLargeError",
    "MessageParser",
    "MessageStream",
    "ProtocolError",
    "Repair",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamError",
    "ToolInputError",
    "UsageError",
    "areplay",
    "astream",
    "place_cache_breakpoints",
    "replay",
    "stream",
]

# Names served lazily, so that importing mendstream stays light (no anthropic, no httpx).
_LAZY = {
    "stream": ("mendstream.transports.sdk", "stream"),
    "astream": ("mendstream.transports.sdk", "astream"),
    "place_cache_breakpoints": ("mendstream.cache", "place_cache_breakpoints"),
    "CachePlanner": ("mendstream.cache", "CachePlanner"),
    "CacheStats": ("mendstream.cache", "CacheStats"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mendstream' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
