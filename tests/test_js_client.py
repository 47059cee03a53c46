# The TypeScript SDK (@anthropic-ai/sdk, installed by `npm ci --prefix tests/js`), unmodified and with its own
# retries off, reads a ReplayServer on 127.0.0.1 that breaks its first answer on purpose. Straight to the
# server it loses the turn on every fault; through `mendstream proxy` (its default survival, stall timeouts
# shortened for the test) it ends with the fixture's message and never sees a character twice.
from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mendstream import MessageParser, Retry
from mendstream.testing import ReplayServer
from mendstream.testing.faults import Cut, ErrorEvent, FaultPlan, HTTPError, Schedule, Stall
from mendstream.wire.boundary import Survival
from mendstream.wire.proxy import create_app
from proxy_helpers import Served
from streams import text_stream, tool_stream

JS = Path(__file__).parent / "js"
if shutil.which("node") is None or not (JS / "node_modules" / "@anthropic-ai" / "sdk").is_dir():
    pytest.skip("the TypeScript SDK is not installed (node, and `npm ci --prefix tests/js`)", allow_module_level=True)

TEXT = "The quick brown fox jumps over the lazy dog.  Pack my box with five dozen liquor jugs!"
FIXTURES = {"text": text_stream(TEXT, pieces=10), "tool": tool_stream()}
STALL = 0.5

# name -> (plan for the first answer, fixture)
FAULTS: dict[str, tuple[FaultPlan, str]] = {
    "overloaded_before_content": (ErrorEvent(after_events=1), "text"),
    "overloaded_after_content": (ErrorEvent(after_events=6), "text"),
    "status_529_before_streaming": (HTTPError(529, retry_after=0.01), "text"),
    "cut_mid_text": (Cut(after_events=6), "text"),
    "cut_mid_tool": (Cut(in_tool_input=True), "tool"),
    "stall_without_bytes": (Stall(seconds=4, after_events=6), "text"),
    "stall_with_pings": (Stall(seconds=4, after_events=6, ping_every=0.05), "text"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES) as srv:
        yield srv


@pytest.fixture(scope="module")
def proxy(server: ReplayServer) -> Iterator[Served]:
    survival = Survival(Retry(on_partial="continue", backoff=0.01, seed=1), idle_timeout=STALL,
                        progress_timeout=STALL)
    with Served(create_app(server.base_url, survival=survival)) as served:
        yield served


def ts_sdk_turn(base_url: str, fixture: str, timeout: float = 60) -> dict[str, Any]:
    done = subprocess.run(["node", str(JS / "client.mjs"), base_url, fixture], capture_output=True, timeout=timeout,
                          check=True)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def fixture_message(fixture: str) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(FIXTURES[fixture])
    parser.end()
    return parser.message


@pytest.mark.parametrize("fault", list(FAULTS))
def test_ts_sdk_through_the_proxy_survives(server: ReplayServer, proxy: Served, fault: str) -> None:
    plan, fixture = FAULTS[fault]
    server.reset(Schedule((plan,)))
    started = time.monotonic()
    seen = ts_sdk_turn(proxy.base_url, fixture)
    assert "error" not in seen, seen
    expected = fixture_message(fixture)
    assert seen["message"]["content"] == expected["content"]
    assert seen["message"]["stop_reason"] == expected["stop_reason"]
    if fixture == "text":
        assert "".join(seen["texts"]) == TEXT  # nothing repeated, nothing missing
    assert len(server.requests) == 2  # one retry or continuation, by the proxy
    if isinstance(plan, Stall):
        assert time.monotonic() - started < plan.seconds, "the stall was waited out instead of detected"


@pytest.mark.parametrize("fault", [name for name in FAULTS if not name.startswith("stall")])
def test_ts_sdk_straight_to_the_server_loses_the_turn(server: ReplayServer, fault: str) -> None:
    """The evidence that the proxy is what saves the turns above (stalls are not run: they hang the SDK)."""
    plan, fixture = FAULTS[fault]
    server.reset(Schedule((plan,)))
    seen = ts_sdk_turn(server.base_url, fixture)
    assert "error" in seen and "message" not in seen, seen
    assert len(server.requests) == 1
