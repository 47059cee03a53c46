# mendstream: fast, unbreakable streaming from the Anthropic Messages API, and prompt-cache breakpoints
# that always fit. The core is sans-IO: it contains no networking code (bytes in, events and the
# accumulated message out); transports that move bytes in are imported only when used, so
# `import mendstream` imports neither httpx nor anthropic.
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mendstream.core.events import Data, Event
from mendstream.core.parser import MessageParser
from mendstream.core.repair import Repair
from mendstream.core.sse import ServerSentEvent, SSEDecoder
from mendstream.errors import (
    APIStreamError,
    BufferLimitError,
    CachePayloadError,
    ContentTypeError,
    EventDecodeError,
    EventStreamError,
    EventStreamLimitError,
    FixtureError,
    HTTPStatusError,
    IncompleteStreamError,
    MessageTooLargeError,
    OutputFormatError,
    OutputParseError,
    ProtocolError,
    StreamError,
    StreamReuseError,
    StreamStalledError,
    ToolInputError,
    UsageError,
)
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream
from mendstream.streaming.replay import areplay, replay
from mendstream.streaming.retry import Attempt, RestartEvent, Retry

if TYPE_CHECKING:
    # What type checkers see for the names served lazily below (at run time __getattr__ imports them on
    # first use), so `reveal_type(mendstream.stream(...))` is MessageStream rather than Any.
    from mendstream.cache import CachePlanner, CacheStats, place_cache_breakpoints
    from mendstream.transports.sdk import astream, stream

__version__ = "0.1.0"

__all__ = [
    "APIStreamError",
    "AsyncMessageStream",
    "AsyncRepairTransport",
    "Attempt",
    "BufferLimitError",
    "CachePayloadError",
    "CachePlanner",
    "CacheStats",
    "ContentTypeError",
    "Data",
    "Event",
    "EventDecodeError",
    "EventStreamDecoder",
    "EventStreamError",
    "EventStreamLimitError",
    "FixtureError",
    "HTTPStatusError",
    "IncompleteStreamError",
    "MessageParser",
    "MessageStream",
    "MessageTooLargeError",
    "OutputFormatError",
    "OutputParseError",
    "ProtocolError",
    "Repair",
    "RepairTransport",
    "RestartEvent",
    "Retry",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamError",
    "StreamReuseError",
    "StreamStalledError",
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
    "RepairTransport": ("mendstream.wire.transport", "RepairTransport"),
    "AsyncRepairTransport": ("mendstream.wire.transport", "AsyncRepairTransport"),
    "EventStreamDecoder": ("mendstream.core.eventstream", "EventStreamDecoder"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mendstream' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
