# The exception hierarchy. Every failure the parser can meet raises a subclass of StreamError, and every
# StreamError keeps what was received: the partial message, and where it applies the raw text and offset.
from __future__ import annotations

from typing import Any

__all__ = [
    "APIStreamError",
    "BufferLimitError",
    "EventDecodeError",
    "IncompleteStreamError",
    "MessageTooLargeError",
    "ProtocolError",
    "StreamError",
    "ToolInputError",
    "UsageError",
]


class StreamError(Exception):
    """Root of every error mendstream raises.

    Attributes:
        snapshot: the message accumulated so far, as a Messages API dict (``None`` when nothing usable
            arrived, e.g. before ``message_start``).
        offset: byte offset in the stream where the problem was found, when known.
        events: the events decoded by the same ``feed``/``end`` call before the error, so that nothing is
            lost however the input was split.
    """

    def __init__(self, message: str, *, snapshot: dict[str, Any] | None = None, offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.snapshot = snapshot
        self.offset = offset
        self.events: list[Any] = []


class UsageError(StreamError, ValueError):
    """The caller misused the API (fed data after ``end()``, gave a bad option). Not the peer's fault."""


class ProtocolError(StreamError):
    """The peer sent something that no repair can turn into a valid stream."""


class BufferLimitError(ProtocolError):
    """One unfinished SSE event grew past ``max_event_bytes``; ``limit`` holds the bound."""

    def __init__(self, message: str, *, limit: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.limit = limit


class EventDecodeError(ProtocolError):
    """An event's ``data`` is not JSON even after repair. ``raw`` holds the exact data bytes."""

    def __init__(self, message: str, *, raw: bytes, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.raw = raw


class IncompleteStreamError(ProtocolError):
    """The stream ended before ``message_stop`` (and before any ``message_delta`` with a stop_reason).

    ``raw_tool_inputs`` maps the index of every unfinished tool block to its raw input text so far.
    """

    def __init__(self, message: str, *, raw_tool_inputs: dict[int, str] | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.raw_tool_inputs: dict[int, str] = raw_tool_inputs or {}


class ToolInputError(ProtocolError):
    """A tool block's input JSON cannot be parsed by any repair.

    ``raw`` holds the exact concatenation of the block's ``partial_json`` fragments; ``index`` the block.
    """

    def __init__(self, message: str, *, raw: str, index: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.raw = raw
        self.index = index


class APIStreamError(StreamError):
    """The server sent an ``error`` event mid-stream (the HTTP status was already 200).

    Attributes:
        error_type: the error's ``type``, e.g. ``"overloaded_error"`` (``"unknown_error"`` if absent).
        body: the decoded event body (or the raw data string if it was not JSON).
        request_id: the request id from the body or the transport, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        body: object,
        request_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(message, **kwargs)
        self.error_type = error_type
        self.body = body
        self.request_id = request_id


class MessageTooLargeError(BufferLimitError):
    """The stream grew past the parser's optional ``max_message_bytes``; ``limit`` holds the bound and
    ``snapshot`` the message accumulated before it."""
