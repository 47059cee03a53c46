# SSE bodies for the resilience and fault tests (a text answer in N deltas, a tool call) and a check for leaked
# pooled connections. The server those tests run against is the product's own ReplayServer(faults=...).
from __future__ import annotations

import json
from typing import Any


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


def busy_connections(http_client: Any) -> int:
    """Connections of an httpx/httpx2 client's pool that are neither idle nor closed (i.e. leaked)."""
    pool = getattr(getattr(http_client, "_transport", None), "_pool", None)
    if pool is None:
        return 0
    return sum(1 for c in pool.connections if not (c.is_idle() or c.is_closed()))
