# The small HTTP facts every room needs, written once: which HTTP library to use, which paths carry the
# Messages API (first party, gateways, Bedrock, Vertex), and the API's error bodies. No I/O; the HTTP
# libraries are imported only when asked for.
from __future__ import annotations

import importlib
import json
import re
from types import ModuleType
from typing import Any, Literal
from urllib.parse import unquote

from mendstream.errors import UsageError

__all__ = [
    "ERROR_TYPES_BY_STATUS",
    "bedrock_path",
    "error_body",
    "error_type_for",
    "http_library",
    "is_messages_path",
    "library_of",
    "model_in_path",
    "vertex_stream_path",
]

LIBRARIES = ("httpx", "httpx2")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def http_library(prefer: Literal["sdk", "pool"] = "sdk") -> ModuleType:
    """The HTTP library (httpx or httpx2, which share one API) to make clients with.

    ``"sdk"``: the one the installed anthropic SDK runs on (httpx2 from 1.0 on, httpx before), so that our
    clients and transports fit the user's SDK; without the SDK, httpx2, else httpx. ``"pool"``: httpx2 when
    installed, whatever the SDK: its connection pool checks a kept-alive connection's expiry without a system
    call, where httpx's polls the socket of every pooled connection on every request (most of a proxy's CPU
    at 50 concurrent streams), so a server that makes many requests prefers it.

    Raises:
        UsageError: neither library is installed.
    """
    order: tuple[str, ...] = ("httpx2", "httpx")
    if prefer == "sdk":
        try:
            from anthropic import _base_client

            sdk = getattr(_base_client, "httpx2", None) or getattr(_base_client, "httpx", None)
        except ImportError:
            sdk = None
        if isinstance(sdk, ModuleType):
            return sdk
    elif prefer != "pool":
        raise UsageError(f"prefer must be 'sdk' or 'pool', not {prefer!r}")
    for name in order:
        module = _import(name)
        if module is not None:
            return module
    raise UsageError("mendstream needs httpx or httpx2 for HTTP: pip install httpx2 (or mendstream's [proxy] extra)")


def library_of(obj: object) -> ModuleType | None:
    """httpx or httpx2, whichever ``obj`` (a client, transport or response) belongs to; None if neither."""
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in LIBRARIES:
            return importlib.import_module(root)
    return None


def is_messages_path(path: str, /) -> bool:
    """True for the paths whose requests and responses a boundary may rewrite as Messages API ones:
    ``.../v1/messages`` (first party, Bedrock Mantle, gateways that keep the path under a prefix) and Vertex
    AI's ``:streamRawPredict`` / ``:rawPredict``. ``/v1/messages/count_tokens`` and ``/v1/messages/batches``
    are not (their bodies and answers differ), nor Bedrock's ``/model/{id}/invoke...`` (SigV4 signs the body:
    rewriting it would break the signature; see :func:`bedrock_path`). A query string is ignored."""
    path = path.split("?", 1)[0].rstrip("/")
    return path.endswith(("/v1/messages", ":streamRawPredict", ":rawPredict"))


_BEDROCK_PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<kind>invoke|invoke-with-response-stream)$")
_VERTEX_PATH = re.compile(
    r"^/(?:v1/)?projects/[^/]+/locations/[^/]+/publishers/anthropic/models/(?P<model>[^/:]+)"
    r":(?P<kind>streamRawPredict|rawPredict)$"
)


def bedrock_path(path: str, /) -> tuple[str, Literal["stream", "invoke"]] | None:
    """``(model, "stream")`` for Bedrock's ``/model/{id}/invoke-with-response-stream``, ``(model, "invoke")``
    for ``/model/{id}/invoke`` (the model as it is in the path: URL-encoded), else None."""
    match = _BEDROCK_PATH.match(path)
    if match is None:
        return None
    return match.group("model"), "stream" if match.group("kind") == "invoke-with-response-stream" else "invoke"


def vertex_stream_path(path: str, /) -> str | None:
    """The model when ``path`` is Vertex's ``.../publishers/anthropic/models/{model}:streamRawPredict`` (or
    ``:rawPredict``), else None."""
    match = _VERTEX_PATH.match(path)
    return match.group("model") if match else None


def model_in_path(path: str, /) -> str | None:
    """The model a Bedrock or Vertex path names (URL-decoded), else None."""
    bedrock = bedrock_path(path)
    model = bedrock[0] if bedrock is not None else vertex_stream_path(path)
    return unquote(model) if model is not None else None


ERROR_TYPES_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "request_too_large",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""The error ``type`` for each HTTP status: the Messages API's own (its errors page: 400, 401, 403, 404, 413,
429, 500, 504, 529, and 409 seen), and for the statuses a server of ours answers itself (405 a wrong method,
408 a request too slow, 431 a head too large, 503 no capacity)."""


def error_type_for(status: int) -> str:
    """The error ``type`` for an HTTP ``status`` (``api_error`` for other 5xx, ``invalid_request_error`` for
    other 4xx)."""
    return ERROR_TYPES_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(error_type: str, message: str, *, request_id: str | None = None) -> bytes:
    """An error body in the API's shape: ``{"type": "error", "error": {"type", "message"}}`` (and the
    ``request_id`` when given), as JSON bytes."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body).encode()
