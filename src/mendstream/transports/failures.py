# Where an HTTP response that cannot be streamed becomes a mendstream error: a non-2xx status becomes
# HTTPStatusError, a 2xx response that is not SSE becomes ContentTypeError (both defined in
# mendstream.errors), and a failure of the HTTP library while reading the body is recognised as a
# transport error. Nothing here imports an HTTP library; responses are reached through duck typing.
from __future__ import annotations

import json
from typing import Any, Protocol

from mendstream.errors import ContentTypeError, HTTPStatusError, request_id_of

__all__ = [
    "ERROR_BODY_BYTES",
    "aread_head",
    "check_content_type",
    "content_type_error",
    "decode_body",
    "error_message_of",
    "is_transport_error",
    "read_head",
    "status_error",
]


class HeadersLike(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


ERROR_BODY_BYTES = 1 << 20
"""How much of a response that cannot be streamed is read for its error (an error body is a few hundred
bytes; a hostile or broken endpoint must not make the client buffer an endless one)."""


def read_head(response: Any, limit: int = ERROR_BODY_BYTES) -> bytes:
    """At most ``limit`` bytes of ``response``'s body (an httpx/httpx2 streaming response), for its error."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def aread_head(response: Any, limit: int = ERROR_BODY_BYTES) -> bytes:
    """The async twin of :func:`read_head`."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def decode_body(raw: bytes) -> object:
    """The body as JSON when it parses, else as text (replacement characters for invalid UTF-8)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a hostile, deeply nested body stays text
        return text


def error_message_of(body: object) -> str:
    """A short human description of an error body: ``"overloaded_error: Overloaded"`` or its text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            kind, msg = error.get("type"), error.get("message")
            return ": ".join(str(x) for x in (kind, msg) if x) or _short_json(body)
        if isinstance(error, str):
            return error
        msg = body.get("message")
        if isinstance(msg, str):
            return msg
        return _short_json(body)
    return str(body)[:500]


def _short_json(body: object) -> str:
    try:
        return json.dumps(body)[:500]
    except (ValueError, RecursionError):
        return repr(body)[:500]


def status_error(status: int, raw_body: bytes, headers: HeadersLike, response: object) -> HTTPStatusError:
    """The :class:`HTTPStatusError` for a non-2xx response whose body has been read into ``raw_body``."""
    body = decode_body(raw_body)
    request_id = request_id_of(headers) or (body.get("request_id") if isinstance(body, dict) else None)
    detail = error_message_of(body) if body else "(empty body)"
    suffix = f" (request-id {request_id})" if request_id else ""
    return HTTPStatusError(
        f"HTTP {status}: {detail}{suffix}",
        status_code=status,
        body=body,
        response=response,
        request_id=request_id,
    )


# Content types that certainly are not an Anthropic SSE stream. Anything else is accepted when
# `strict=False`, because some compatible servers send SSE as text/plain or without a content type.
_NOT_SSE = ("application/json", "text/html", "application/vnd.amazon.eventstream", "application/xml")


def check_content_type(headers: HeadersLike, *, strict: bool) -> str | None:
    """``None`` when the response may carry SSE, else the offending content type.

    With ``strict`` only ``text/event-stream`` (or no content type at all) passes.
    """
    content_type = str(headers.get("content-type") or "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not media or media == "text/event-stream":
        return None
    if strict or media in _NOT_SSE:
        return content_type
    return None


def content_type_error(status: int, content_type: str, raw_body: bytes, response: object) -> ContentTypeError:
    """The :class:`ContentTypeError` for a 2xx response that is not SSE, naming its content type."""
    body = decode_body(raw_body[:4096])
    if "amazon.eventstream" in content_type:
        hint = (
            "this is AWS event-stream framing (the Bedrock InvokeModelWithResponseStream API), not SSE; "
            "mendstream.stream(AnthropicBedrock(...), ...) reads it, as does "
            "MessageParser(framing='event-stream') (or framing='auto')"
        )
    elif isinstance(body, dict) and body.get("type") == "error":
        hint = f"the body is an error: {error_message_of(body)}"
    elif isinstance(body, dict) and body.get("type") == "message":
        hint = "the endpoint ignored \"stream\": true and sent a whole message"
    else:
        hint = f"body starts with {str(body)[:200]!r}"
    return ContentTypeError(
        f"expected text/event-stream from the endpoint (HTTP {status}), got {content_type!r}: {hint}",
        status_code=status,
        content_type=content_type,
        body=body,
        response=response,
    )


def is_transport_error(exc: BaseException) -> bool:
    """True for httpx / httpx2 ``TransportError`` (connection reset, read timeout, incomplete chunk)."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "TransportError" and cls.__module__.split(".", 1)[0] in ("httpx", "httpx2"):
            return True
    return False
