# mendstream: fast, unbreakable streaming from the Anthropic Messages API, and prompt-cache breakpoints
# that always fit. The package is laid out in rooms (see docs/design.md): core/ is sans-IO (bytes in,
# events and the accumulated message out; no networking), streaming/ drives a stream through its attempts,
# transports/ opens one attempt over the SDK or httpx, wire/ is the HTTP boundary (RepairTransport, the
# proxy), cache/ plans cache breakpoints, recording/ and testing/ capture and replay traffic, cli/ is the
# command line. This module is the public face: the names a user needs; everything else is importable from
# its room. `import mendstream` imports neither httpx nor anthropic: the names below that need more of the
# package load on first use, and `dir()`, `help()` and type checkers see them all.
from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from mendstream.core.events import Event, RestartEvent
from mendstream.core.parser import MessageParser
from mendstream.core.repair import Repair
from mendstream.errors import (
    APIStreamError,
    IncompleteStreamError,
    ProtocolError,
    StreamError,
    StreamStalledError,
    ToolInputError,
    UsageError,
)
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream
from mendstream.streaming.replay import areplay, replay
from mendstream.streaming.retry import Retry

if TYPE_CHECKING:  # what type checkers see for the names served on first use by __getattr__ below
    from mendstream.cache import CachePlanner, place_cache_breakpoints
    from mendstream.transports.sdk import astream, stream
    from mendstream.wire.transport import AsyncRepairTransport, RepairTransport

__version__ = "0.1.0"

__all__ = [
    "APIStreamError",
    "AsyncMessageStream",
    "AsyncRepairTransport",
    "CachePlanner",
    "Event",
    "IncompleteStreamError",
    "MessageParser",
    "MessageStream",
    "ProtocolError",
    "Repair",
    "RepairTransport",
    "RestartEvent",
    "Retry",
    "StreamError",
    "StreamStalledError",
    "ToolInputError",
    "UsageError",
    "areplay",
    "astream",
    "place_cache_breakpoints",
    "replay",
    "stream",
]

# Served on first use, so that importing mendstream stays light.
_LAZY = {
    "stream": "mendstream.transports.sdk",
    "astream": "mendstream.transports.sdk",
    "place_cache_breakpoints": "mendstream.cache",
    "CachePlanner": "mendstream.cache",
    "RepairTransport": "mendstream.wire.transport",
    "AsyncRepairTransport": "mendstream.wire.transport",
}

# Names this module exported before the rooms: still served (with a DeprecationWarning naming the room),
# never listed.
_MOVED = {
    "Attempt": "mendstream.streaming.retry",
    "BedrockParser": "mendstream.core.bedrock",
    "BufferLimitError": "mendstream.errors",
    "CachePayloadError": "mendstream.errors",
    "CacheStats": "mendstream.cache",
    "ContentTypeError": "mendstream.errors",
    "Data": "mendstream.core.events",
    "EventDecodeError": "mendstream.errors",
    "EventStreamDecoder": "mendstream.core.eventstream",
    "EventStreamError": "mendstream.errors",
    "EventStreamLimitError": "mendstream.errors",
    "FixtureError": "mendstream.errors",
    "HTTPStatusError": "mendstream.errors",
    "MessageTooLargeError": "mendstream.errors",
    "OutputFormatError": "mendstream.errors",
    "OutputParseError": "mendstream.errors",
    "SSEDecoder": "mendstream.core.sse",
    "ServerSentEvent": "mendstream.core.sse",
    "StreamReuseError": "mendstream.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    module = _MOVED.get(name)
    if module is not None:
        warnings.warn(
            f"mendstream.{name} moved: import it from {module}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'mendstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
