# A tiny fault-injecting server for the resilience tests: a uvicorn ASGI app on 127.0.0.1 that answers
# every POST with a fixture (chosen by the x-mendstream-fixture header) sent through a FaultPlan: it sleeps
# each chunk's delay, sends the chunks, and drops the connection when the plan ends with "cut". A request
# ending with an assistant prefill gets the continuation of the fixture's text (faults.continuation_body).
# ReplayServer(faults=...) offers the same to users (prefill continuations included); this one swaps plans
# between tests and counts their ordinals afresh, which the resilience matrix needs.
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from mendstream.faults import FaultPlan, PlannedResponse, continuation_body


class _Cut(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-body."""


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def text_stream(text: str, *, pieces: int = 8, msg_id: str = "msg_f1", input_tokens: int = 10) -> bytes:
    """A complete SSE body answering ``text`` in ``pieces`` deltas (a ping after message_start)."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": "claude-test", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in parts),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": len(parts)}},
        {"type": "message_stop"},
    ]
    return b"".join(sse(e) for e in events)


def tool_stream(msg_id: str = "msg_tool") -> bytes:
    """A complete SSE body: a short text block, then a tool_use block whose input arrives in 4 fragments."""
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": "claude-test", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 1}}
    fragments = ['{"city": ', '"Par', 'is", "unit": ', '"celsius"}']
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        *({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": f}}
          for f in fragments),
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    return b"".join(sse(e) for e in events)


class FaultServer:
    """``with FaultServer(fixtures) as server:``; set ``server.plan`` (and ``server.reset()``) per test."""

    def __init__(self, fixtures: dict[str, bytes], plan: FaultPlan | None = None) -> None:
        self.fixtures = fixtures
        self.plan = plan
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self._app, log_level="critical", access_log=False, lifespan="off", interface="asgi3",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def reset(self, plan: FaultPlan | None = None) -> None:
        with self._lock:
            self.plan = plan
            self.requests = []

    def __enter__(self) -> FaultServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def response_for(self, headers: dict[str, str], body: dict[str, Any]) -> PlannedResponse:
        fixture = self.fixtures[headers.get("x-mendstream-fixture", next(iter(self.fixtures)))]
        fixture = continuation_body(body, fixture) or fixture
        with self._lock:
            ordinal = len(self.requests)
            self.requests.append(body)
            plan = self.plan
        planned = PlannedResponse(
            200, (("content-type", "text/event-stream"), ("request-id", f"req_{ordinal}")), ((0.0, fixture),)
        )
        return plan.apply(ordinal, planned) if plan is not None else planned

    async def _app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        planned = self.response_for(headers, json.loads(raw or b"{}"))
        if planned.head_delay > 0:  # faults.Stall(headers=True): nothing at all for a while
            await asyncio.sleep(planned.head_delay)
        await send({"type": "http.response.start", "status": planned.status,
                    "headers": [(k.encode(), v.encode()) for k, v in planned.headers]})
        for delay, chunk in planned.chunks:
            if delay > 0:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if planned.end == "cut":
            raise _Cut("planned cut")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def busy_connections(http_client: Any) -> int:
    """Connections of an httpx/httpx2 client's pool that are neither idle nor closed (i.e. leaked)."""
    pool = getattr(getattr(http_client, "_transport", None), "_pool", None)
    if pool is None:
        return 0
    return sum(1 for c in pool.connections if not (c.is_idle() or c.is_closed()))
