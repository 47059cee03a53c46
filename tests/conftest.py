# Shared test fixtures: the bundled stream fixtures (mendstream.testing.FIXTURES: *.sse with their expectations), a
# session-wide replay server on 127.0.0.1 serving them (chosen by the x-mendstream-fixture header), and
# helpers to compare a stream's outcome with a fixture's `.expected.json`. Nothing here imports anthropic
# or httpx at module level, so suites that need neither still collect without them.
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

from mendstream.testing import FIXTURES, ReplayServer

# CI runs the property tests on the same examples every time for a given commit (HYPOTHESIS_PROFILE=ci), so
# its verdict is reproducible; a plain `pytest` explores new examples on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

FIXTURES_DIR = FIXTURES
FIXTURE_NAMES = sorted(p.name[: -len(".sse")] for p in FIXTURES_DIR.glob("*.sse"))

# Small hand-written streams, so transport tests do not depend on the fixture set's details.
BASIC_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_t1","type":"message",'
    b'"role":"assistant","model":"claude-test","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" world"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":4}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
BASIC_MESSAGE = {
    "id": "msg_t1",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "Hello world"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 4},
}
# Cut off before message_delta: incomplete.
TRUNCATED_SSE = BASIC_SSE[: BASIC_SSE.index(b"event: content_block_stop")]


def error_sse(error_type: str, message: str = "boom", request_id: str | None = "req_in_body") -> bytes:
    """BASIC_SSE cut after the first delta, then an ``error`` event of ``error_type``."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    second_delta = BASIC_SSE.index(b"event: content_block_delta", BASIC_SSE.index(b"text_delta"))
    head = BASIC_SSE[:second_delta]
    return head + b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


def expected(name: str) -> dict[str, Any]:
    """The parsed ``<name>.expected.json`` of the bundled fixtures."""
    result: dict[str, Any] = json.loads((FIXTURES_DIR / f"{name}.expected.json").read_text(encoding="utf-8"))
    return result


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES_DIR / f"{name}.sse").read_bytes()


_OPEN_CLIENTS: list[Any] = []  # sync SDK clients made by the current test (see sync_client)


@pytest.fixture(autouse=True)
def _close_sync_clients() -> Iterator[None]:
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


def sync_client(**options: Any) -> Any:
    """An ``anthropic.Anthropic`` (api_key "k", no retries unless given) closed when the test ends, so that its
    kept-alive sockets do not outlive the test."""
    import anthropic

    return closed_after_test(anthropic.Anthropic(**{"api_key": "k", "max_retries": 0, **options}))


def closed_after_test(client: Any) -> Any:
    """``client`` (any sync SDK client), closed when the current test ends."""
    _OPEN_CLIENTS.append(client)
    return client


def error_class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def check_outcome(name: str, message: dict[str, Any] | None, error: BaseException | None) -> None:
    """Assert that a stream of fixture ``name`` ended as its ``.expected.json`` says."""
    exp = expected(name)
    if exp["error"] is None:
        assert error is None, f"{name}: unexpected {type(error).__name__}: {error}"
        assert message == exp["message"], name
        return
    assert error is not None, f"{name}: expected {exp['error']['class']}, got a message"
    assert exp["error"]["class"] in error_class_names(error), (name, type(error).__mro__)
    if "error_type" in exp["error"]:
        assert getattr(error, "error_type", None) == exp["error"]["error_type"]
    assert getattr(error, "snapshot", None) == exp["error"]["snapshot"], name


@pytest.fixture(scope="session")
def replay_server() -> Iterator[ReplayServer]:
    """A ReplayServer over the bundled fixtures (select by header) for the whole session."""
    with ReplayServer(FIXTURES_DIR, select="header") as server:
        yield server


@pytest.fixture
def small_server() -> Iterator[ReplayServer]:
    """A per-test ReplayServer over the hand-written streams (basic, truncated, overloaded)."""
    streams = {"basic": BASIC_SSE, "truncated": TRUNCATED_SSE, "overloaded": error_sse("overloaded_error")}
    with ReplayServer(streams) as server:
        yield server
