# The public name of the httpx transport: `import mendstream.httpx` / `from mendstream.httpx import stream`.
# The code lives in mendstream.transports.httpx_client with the other transports; this module only re-exports it.
from __future__ import annotations

from mendstream.transports.httpx_client import (
    DEFAULT_ANTHROPIC_VERSION,
    DEFAULT_BASE_URL,
    ContentTypeError,
    HTTPStatusError,
    astream,
    build_headers,
    http_module,
    stream,
)

__all__ = [
    "DEFAULT_ANTHROPIC_VERSION",
    "DEFAULT_BASE_URL",
    "ContentTypeError",
    "HTTPStatusError",
    "astream",
    "build_headers",
    "http_module",
    "stream",
]
