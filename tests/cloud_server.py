"""A uvicorn server on 127.0.0.1 that answers the cloud clients as Bedrock and Vertex do, for tests.

The model id in the path picks the body: ``/model/{name}/invoke-with-response-stream`` (AnthropicBedrock) is
answered with the bundled fixture ``{name}.sse`` converted to AWS event-stream frames, ``...models/{name}:streamRawPredict``
(AnthropicVertex) and ``/v1/messages`` (AnthropicBedrockMantle; name in the ``model`` body field) with the SSE.
Bodies registered with ``server.bodies[name] = (content_type, bytes)`` override fixtures. The body is sent in
pieces of ``x-chunk-size`` bytes (request header) to exercise frames cut by chunk boundaries. ``/token`` is an
OAuth token endpoint (for google-auth credentials that refresh). Every request (method, path, headers, JSON
body) is kept in ``server.requests``. Path matching, content type and conversion
are mendstream.core.bedrock's, so the replay server can answer the same way.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import uvicorn

from mendstream.core.bedrock import bedrock_stream_path, response_for_path, vertex_stream_path
from mendstream.testing import FIXTURES as BUNDLED_FIXTURES

FIXTURES = BUNDLED_FIXTURES

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class CloudServer:
    def __init__(self) -> None:
        self.bodies: dict[str, tuple[str | None, bytes]] = {}
        self.requests: list[dict[str, Any]] = []
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="error", lifespan="off", interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.base_url = ""

    def __enter__(self) -> CloudServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _body_for(self, path: str, request_body: Any) -> tuple[str | None, bytes] | None:
        name = bedrock_stream_path(path) or vertex_stream_path(path)
        if name is None and path.endswith("/v1/messages") and isinstance(request_body, dict):
            name = request_body.get("model")
        if not isinstance(name, str):
            return None
        name = unquote(name)
        if name in self.bodies:
            return self.bodies[name]
        fixture = FIXTURES / f"{name}.sse"
        if not fixture.is_file():
            return None
        return response_for_path(path, fixture.read_bytes())

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            request_body = json.loads(raw) if raw else None
        except ValueError:
            request_body = raw
        path = scope["path"]
        self.requests.append({"method": scope["method"], "path": path, "headers": headers, "body": request_body})
        if path == "/token":  # an OAuth token endpoint, for google-auth credentials that refresh
            token = {"access_token": "ya29.refreshed", "expires_in": 3600, "token_type": "Bearer"}
            await _respond(send, 200, "application/json", json.dumps(token).encode())
            return
        found = self._body_for(path, request_body)
        if found is None:
            await _respond(send, 404, "application/json", b'{"message":"no such fixture"}')
            return
        content_type, body = found
        chunk = int(headers.get("x-chunk-size", "0")) or len(body) or 1
        response_headers = [(b"x-amzn-requestid", b"req-bedrock-1")]
        if content_type is not None:
            response_headers.append((b"content-type", content_type.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        for start in range(0, len(body), chunk):
            await send({"type": "http.response.body", "body": body[start : start + chunk], "more_body": True})
            if chunk < 64:
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Send, status: int, content_type: str, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})
