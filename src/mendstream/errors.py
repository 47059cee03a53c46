# The exception hierarchy: every failure mendstream reports (the core's, the transports', a caller's misuse)
# is a subclass of StreamError, and every StreamError keeps what was received: the partial message, and
# where it applies the raw text, the body and the offset. How a transport failure becomes one of these, where
# the SDK's class is mixed in and where the cause is kept: see "The error pipeline" in docs/transports.md.
from __future__ import annotations

from typing import Any

__all__ = [
    "APIStreamError",
    "BufferLimitError",
    "CachePayloadError",
    "ContentTypeError",
    "EventDecodeError",
    "EventStreamError",
    "EventStreamLimitError",
    "FixtureError",
    "HTTPStatusError",
    "IncompleteStreamError",
    "MessageTooLargeError",
    "OutputFormatError",
    "OutputParseError",
    "PlannerStateError",
    "ProtocolError",
    "StreamError",
    "StreamReuseError",
    "StreamStalledError",
    "ToolInputError",
    "UsageError",
    "request_id_of",
]

# Response headers that carry the request id, in order: the Anthropic API's, then Bedrock's (AWS answers
# InvokeModelWithResponseStream and its errors with `x-amzn-requestid`, never `request-id`).
REQUEST_ID_HEADERS = ("request-id", "x-amzn-requestid")


def request_id_of(headers: Any, /) -> str | None:
    """The request id that response ``headers`` (any mapping with ``get``, case-insensitive as HTTP
    libraries' are, or None) carry: ``request-id``, else Bedrock's ``x-amzn-requestid``; None if neither."""
    if headers is None:
        return None
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


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
    """The caller misused the API (fed data after ``end()``, gave a bad option). Not the peer's fault.

    It stays under :class:`StreamError` on purpose, so that ``except mendstream.StreamError`` is the one
    clause that catches everything mendstream raises; it is also a ``ValueError`` (what Python code raises
    for a bad argument), so ``except ValueError`` keeps working. Tell it apart from the peer's failures with
    ``except ProtocolError`` (the stream was bad) or ``except UsageError`` (the call was).
    """


class StreamReuseError(UsageError, RuntimeError):
    """A one-shot object was used twice (an ``astream(...)`` opener awaited again).

    Also a ``RuntimeError``, as the SDK raises for the same misuse.
    """


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


class StreamStalledError(StreamError):
    """The stream stopped making progress: no byte for ``idle_timeout`` seconds (``kind == "idle"``), or
    no event other than ``ping`` for ``progress_timeout`` seconds (``kind == "progress"``).

    Attributes:
        kind: ``"idle"`` or ``"progress"``.
        waited: seconds since the last byte (idle) or the last non-ping event (progress) when it fired.
        timeout: the timeout that expired.
        pings_only: True when bytes kept arriving (pings) but no other event did.
    """

    def __init__(
        self, message: str, *, kind: str, waited: float, timeout: float, pings_only: bool = False, **kwargs: Any
    ):
        super().__init__(message, **kwargs)
        self.kind = kind
        self.waited = waited
        self.timeout = timeout
        self.pings_only = pings_only


class EventStreamError(ProtocolError):
    """An AWS event-stream frame (``application/vnd.amazon.eventstream``, Bedrock) is broken: a prelude or
    message CRC32 mismatch, an impossible length, a malformed header, or a frame cut by the end of input.

    Attributes:
        raw: the bytes received of the offending frame (at most the frame's own length, so bounded by
            ``max_frame_bytes``; for a CRC mismatch the whole frame).
        offset: byte offset of the frame's first byte in the stream.
    """

    def __init__(self, message: str, *, raw: bytes, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.raw = raw


class EventStreamLimitError(EventStreamError, BufferLimitError):
    """An event-stream frame announces more than ``max_frame_bytes``; refused before buffering it.

    ``raw`` holds the frame's 12-byte prelude; ``limit`` the bound.
    """


class FixtureError(UsageError):
    """A fixture (``NAME.sse`` and its ``NAME.capture.json`` sidecar) cannot be used: a missing path, an empty
    directory, a sidecar that is not the JSON object mendstream.recording.capture writes. ``path`` names the file."""

    def __init__(self, message: str, *, path: str | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.path = path


class CachePayloadError(UsageError, TypeError):
    """A request body given to the cache planner or simulator has the wrong shape; the message names the
    field (``messages[3].content``: a number where a string or a list of blocks belongs). Also a
    ``TypeError``, which is what a payload that is not a mapping raised before. ``field`` holds the path."""

    def __init__(self, message: str, *, field: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.field = field


class PlannerStateError(UsageError):
    """Bytes given to :meth:`CachePlanner.from_state <mendstream.cache.CachePlanner.from_state>` are not a
    planner state it can use: not the JSON it writes, another format version, a field of the wrong shape, over
    the size limit, or made with other planner options. ``reason`` is one of ``"format"``, ``"version"``,
    ``"size"``, ``"options"``; ``data`` is what was received (as given, never copied)."""

    def __init__(self, message: str, *, reason: str, data: bytes | bytearray | memoryview | str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.reason = reason
        self.data = data


class HTTPStatusError(StreamError):
    """The endpoint answered with a non-2xx status before any stream began (``mendstream.httpx``).

    The SDK transport (``mendstream.stream``) lets the SDK's own ``anthropic.APIStatusError`` subclasses
    through instead, as the SDK raises them before the first byte.

    Attributes:
        status_code: the HTTP status.
        body: the decoded JSON body, or the body text when it is not JSON.
        error_type: ``error.type`` from an Anthropic-style error body, when present.
        error_message: ``error.message`` from the body, when present.
        request_id: the ``request-id`` header (or the body's ``request_id``), when present.
        response: the HTTP library's response object (already read and closed).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: object,
        response: object = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.response = response
        self.request_id = request_id
        error = body.get("error") if isinstance(body, dict) else None
        self.error_type: str | None = error.get("type") if isinstance(error, dict) else None
        self.error_message: str | None = error.get("message") if isinstance(error, dict) else None


class ContentTypeError(ProtocolError):
    """A 2xx response whose content type is not an SSE stream (JSON, HTML, AWS event-stream, ...).

    Attributes: ``status_code``, ``content_type``, ``body`` (decoded JSON or up to 4 KiB of text),
    ``response``.
    """

    def __init__(
        self, message: str, *, status_code: int, content_type: str, body: object, response: object = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.content_type = content_type
        self.body = body
        self.response = response


class MessageTooLargeError(BufferLimitError):
    """The stream grew past the parser's optional ``max_message_bytes``; ``limit`` holds the bound and
    ``snapshot`` the message accumulated before it."""


class OutputFormatError(UsageError, TypeError):
    """``output_format=`` cannot be used: not a type (a schema dict belongs in ``output_config``), a type
    pydantic cannot make a JSON schema of, or given together with ``output_config["format"]`` on a beta
    request. Also a ``TypeError``, as the SDK raises for the same misuse."""


class OutputParseError(ProtocolError, ValueError):
    """With ``output_format=``, a text block of a message that stopped normally (``end_turn``, ``tool_use``)
    does not validate against the format. The pydantic ``ValidationError`` is the ``__cause__`` (the SDK raises
    that one itself; this is also a ``ValueError``, as it is).

    Attributes: ``text`` (the block's text), ``index`` (the block), and ``snapshot`` (the whole message).
    A message cut short (``max_tokens``, ``refusal``, ...) is not an error: its unparsable text gets
    ``parsed_output`` None.
    """

    def __init__(self, message: str, *, text: str, index: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.text = text
        self.index = index
