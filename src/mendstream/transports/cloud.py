# What the SDK transport needs to read the cloud clients: which clients answer AWS event-stream (Bedrock's
# InvokeModelWithResponseStream) and get a MessageParser(framing="event-stream"), the content types they may
# answer with, the SDK error classes for Bedrock's exception types, and a clear UsageError when the extra a
# client needs for its authentication (botocore for SigV4, google-auth for Vertex) is missing.
# transports/sdk.py calls in here; nothing here imports botocore, google-auth or the SDK.
from __future__ import annotations

import importlib.util
import sys
from typing import Any

from mendstream.core.bedrock import EVENT_STREAM_CONTENT_TYPE
from mendstream.core.parser import MessageParser
from mendstream.errors import UsageError
from mendstream.transports.failures import HeadersLike, check_content_type

__all__ = [
    "BEDROCK_SDK_ERROR_NAMES",
    "check_client",
    "content_type_problem",
    "is_event_stream_client",
    "parser_for",
]

# The SDK class for each Bedrock exception type (first name the installed SDK has wins; none: the SDK's
# APIStatusError). HTTP statuses from the Bedrock runtime API reference (InvokeModelWithResponseStream).
BEDROCK_SDK_ERROR_NAMES: dict[str, tuple[str, ...]] = {
    "throttlingException": ("RateLimitError",),  # 429
    "modelNotReadyException": ("RateLimitError",),  # 429
    "serviceUnavailableException": ("ServiceUnavailableError", "InternalServerError"),  # 503
    "internalServerException": ("InternalServerError",),  # 500
    "validationException": ("BadRequestError",),  # 400
    "modelTimeoutException": ("RequestTimeoutError",),  # 408
    "accessDeniedException": ("PermissionDeniedError",),  # 403
    "resourceNotFoundException": ("NotFoundError",),  # 404
    # modelStreamErrorException / modelErrorException (424) have no SDK class: APIStatusError.
}

# Known by name when the SDK cannot build its decoder to tell us (botocore missing).
_EVENT_STREAM_CLIENTS = frozenset({"AnthropicBedrock", "AsyncAnthropicBedrock"})
_VERTEX_CLIENTS = frozenset({"AnthropicVertex", "AsyncAnthropicVertex"})


def _class_names(client: Any) -> set[str]:
    return {cls.__name__ for cls in type(client).__mro__}


def is_event_stream_client(client: Any) -> bool:
    """True for clients whose streaming endpoint answers AWS event-stream (``AnthropicBedrock`` and its
    async twin; not ``AnthropicBedrockMantle``, which speaks SSE)."""
    make_decoder = getattr(client, "_make_sse_decoder", None)
    if make_decoder is not None:
        try:
            return type(make_decoder()).__name__ == "AWSEventStreamDecoder"
        except Exception:  # the SDK's decoder needs botocore; fall back to the class name
            pass
    return bool(_class_names(client) & _EVENT_STREAM_CLIENTS)


def _missing(module: str) -> bool:
    if module in sys.modules:  # imported already, or blocked (None): what `import` would do
        return sys.modules[module] is None
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def check_client(client: Any) -> None:
    """Raise UsageError, before anything is sent, when ``client`` needs an extra that is not installed."""
    names = _class_names(client)
    if names & _EVENT_STREAM_CLIENTS and getattr(client, "api_key", None) is None and _missing("botocore"):
        raise UsageError(
            f"{type(client).__name__} signs requests with SigV4, which needs botocore: "
            "pip install 'mendstream[bedrock]'"
        )
    if names & _VERTEX_CLIENTS and getattr(client, "access_token", None) is None and (
        getattr(client, "credentials", None) is None and _missing("google.auth")
    ):
        raise UsageError(
            f"{type(client).__name__} without access_token= authenticates with google-auth: "
            "pip install 'mendstream[vertex]'"
        )


def parser_for(client: Any, parser: MessageParser | None) -> MessageParser | None:
    """The parser for ``client``'s stream: ``MessageParser(framing="event-stream")`` for event-stream clients
    (``parser`` itself if it reads event-stream: ``framing="event-stream"`` or ``"auto"``), else ``parser``
    unchanged. An SSE parser given for an event-stream client is a UsageError (it cannot read the frames)."""
    if not is_event_stream_client(client):
        return parser
    if parser is None:
        return MessageParser(framing="event-stream")
    if parser.framing != "sse":
        return parser
    raise UsageError(
        f"{type(client).__name__} answers AWS event-stream: pass parser=MessageParser(framing=\"event-stream\", ...)"
    )


def content_type_problem(parser: MessageParser | None, headers: HeadersLike) -> str | None:
    """``None`` when a 2xx response with ``headers`` can be read by ``parser``, else its content type.

    A parser with ``framing="event-stream"`` reads ``application/vnd.amazon.eventstream`` (and a response
    without a content type); ``framing="auto"`` that or SSE; an SSE parser (or None) is checked as SSE.
    """
    framing = "sse" if parser is None else parser.framing
    if framing != "sse":
        content_type = str(headers.get("content-type") or "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media in ("", EVENT_STREAM_CONTENT_TYPE):
            return None
        if framing == "event-stream":
            return content_type
    return check_content_type(headers, strict=False)
