# Transports move bytes from somewhere into the sans-IO core; this package is their face. `sdk` sends the
# request through an anthropic client, `httpx` (public as `mendstream.httpx`) through httpx or httpx2. What
# they share lives in modules named for it: `failures` (responses that cannot be streamed become
# HTTPStatusError / ContentTypeError), `pump` (body chunks into a MessageStream, capture tee, how a stream
# ends), `reaper` (closing streams dropped without close(), outside any finaliser), `opener` (what
# `astream(...)` returns) and `capturing` (starting a capture for a request). Nothing here imports an HTTP
# library or the SDK.
from __future__ import annotations

from mendstream.errors import ContentTypeError, HTTPStatusError
from mendstream.transports.capturing import CapturePath, capture_error_response, capture_writer, request_json
from mendstream.transports.failures import (
    check_content_type,
    content_type_error,
    decode_body,
    error_message_of,
    is_transport_error,
    status_error,
)
from mendstream.transports.opener import AsyncStreamOpener
from mendstream.transports.pump import DRAIN_LIMIT, BodyPump

__all__ = [
    "DRAIN_LIMIT",
    "AsyncStreamOpener",
    "BodyPump",
    "CapturePath",
    "ContentTypeError",
    "HTTPStatusError",
    "capture_error_response",
    "capture_writer",
    "check_content_type",
    "content_type_error",
    "decode_body",
    "error_message_of",
    "is_transport_error",
    "request_json",
    "status_error",
]
