"""Issue 21 in the proxy: shared planner state on a real redis-server, several proxy processes and workers,
Prometheus metrics on /metrics (scraped with prometheus_client's own parser). Each test starts its own
redis-server on a free 127.0.0.1 port and is skipped, saying why, where the binary is missing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from conftest import FIXTURES_DIR  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.wire.proxy import create_app  # noqa: E402
from proxy_helpers import ProxyProcess, Served, redis_server  # noqa: E402

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (apt-get install redis-server)")
FIXTURE = {"x-mendstream-fixture": "usage_cache_fields"}


@pytest.fixture()
def upstream() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES_DIR, select="header") as server:
        yield server


def session(turns: int = 20) -> Iterator[dict[str, Any]]:
    """An agent session: a long system prompt and tools, then turns that each add an answer and a tool
    result, so the planner has a growing prefix to place breakpoints on."""
    system = [{"type": "text", "text": "You are a careful coding agent. " * 300}]
    tools = [{"name": f"tool_{i}", "description": "Reads and edits files. " * 60,
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}} for i in range(4)]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test. " * 200}]
    for turn in range(turns):
        yield {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "system": system, "tools": tools,
               "messages": json.loads(json.dumps(messages))}
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {turn}: reading the next file. " * 20},
            {"type": "tool_use", "id": f"toolu_{turn}", "name": "tool_0", "input": {"path": f"src/f{turn}.py"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{turn}", "content": f"line {turn}\n" * (150 + 40 * turn)}]})


def run_session(upstream: ReplayServer, proxies: list[str], *, turns: int = 20, after: Any = None) -> list[Any]:
    """Send the session's turns round-robin over ``proxies``; returns the bodies the upstream received."""
    start = len(upstream.requests)
    for turn, payload in enumerate(session(turns)):
        if after is not None:
            after(turn)
        response = httpx.post(proxies[turn % len(proxies)] + "/v1/messages", json=payload, headers=FIXTURE,
                              timeout=30)
        assert response.status_code == 200 and b"event: message_stop" in response.content, response.content[:300]
    return [r.body for r in list(upstream.requests)[start:]]


def markers(body: Any) -> int:
    return json.dumps(body).count('"cache_control"')


def scrape(base_url: str) -> dict[str, list[Any]]:
    """/metrics parsed by prometheus_client: family name -> samples."""
    text = httpx.get(base_url + "/metrics").text
    return {family.name: family.samples for family in parser.text_string_to_metric_families(text)}


def total(families: dict[str, list[Any]], sample_name: str, **labels: str) -> float:
    name = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    return sum(s.value for s in families.get(name, []) if s.name == sample_name
               and all(s.labels.get(k) == v for k, v in labels.items()))


@needs_redis
def test_two_proxies_sharing_redis_send_what_one_proxy_sends(upstream: ReplayServer) -> None:
    with ProxyProcess(["--upstream", upstream.base_url, "--cache", "planner", "--no-access-log"]) as single:
        expected = run_session(upstream, [single.base_url])
    assert sum(markers(body) for body in expected) > 20  # the planner placed breakpoints on every turn

    with redis_server() as redis:
        args = ["--upstream", upstream.base_url, "--cache", "planner", "--state", redis.url, "--metrics",
                "--no-access-log"]
        with ProxyProcess(args) as a, ProxyProcess(args) as b:
            shared = run_session(upstream, [a.base_url, b.base_url])
            metrics = [scrape(a.base_url), scrape(b.base_url)]
    assert shared == expected  # same markers in the same places, turn for turn
    requests = sum(total(m, "mendstream_requests_total", path="messages", status="200") for m in metrics)
    assert requests == 20
    assert sum(total(m, "mendstream_streams_total") for m in metrics) == 20
    saved = sum(total(m, "mendstream_state_events_total", event="saved") for m in metrics)
    assert saved == 20

    # without shared state, the same alternation plans differently (each proxy saw half the session)
    with ProxyProcess(["--upstream", upstream.base_url, "--cache", "planner", "--no-access-log"]) as a, \
            ProxyProcess(["--upstream", upstream.base_url, "--cache", "planner", "--no-access-log"]) as b:
        apart = run_session(upstream, [a.base_url, b.base_url])
    assert apart != expected


@needs_redis
def test_redis_killed_mid_session_every_request_still_succeeds(upstream: ReplayServer) -> None:
    with redis_server() as redis:
        args = ["--upstream", upstream.base_url, "--cache", "planner", "--state", redis.url, "--metrics",
                "--no-access-log"]
        with ProxyProcess(args) as a, ProxyProcess(args) as b:

            def kill_at_ten(turn: int) -> None:
                if turn == 10:
                    redis.kill()

            bodies = run_session(upstream, [a.base_url, b.base_url], after=kill_at_ten)
            metrics = [scrape(a.base_url), scrape(b.base_url)]
            logs = a.log() + b.log()
    assert len(bodies) == 20 and all(markers(body) for body in bodies)
    assert sum(total(m, "mendstream_state_fallbacks_total") for m in metrics) == 10
    assert all(total(m, "mendstream_state_store_up") == 0 for m in metrics)
    assert logs.count("unreachable") == 2 and "Traceback" not in logs  # said once per proxy


def test_workers_share_one_port_and_their_metrics_and_stats_add_up(upstream: ReplayServer) -> None:
    args = ["--upstream", upstream.base_url, "--workers", "2", "--metrics", "--no-access-log"]
    with ProxyProcess(args) as proxy:
        for _ in range(30):  # a new connection each: the kernel spreads them over the workers
            response = httpx.post(proxy.base_url + "/v1/messages", json={**next(session(1))}, headers=FIXTURE)
            assert response.status_code == 200
        workers = set()
        for _ in range(20):  # whichever worker answers, it reports every worker's counts
            assert total(scrape(proxy.base_url), "mendstream_requests_total", path="messages") == 30
            stats = httpx.get(proxy.base_url + "/mendstream/stats").json()
            assert stats["requests"] == 30 and stats["workers"] == "all"
            workers.add(stats["answered_by"])
        assert len(workers) == 2  # connections are spread over both workers
        assert proxy.stop() in (0, 130)
        log = proxy.log()
    assert "Traceback" not in log


def test_metrics_scraped_with_prometheus_parser_name_every_metric_of_the_issue(upstream: ReplayServer) -> None:
    with Served(create_app(upstream.base_url, metrics=True, cache="planner")) as proxy:
        for name in ("usage_cache_fields", "fault_control_chars_in_event_json", "no_such_fixture"):
            httpx.post(proxy.base_url + "/v1/messages", json=next(session(1)),
                       headers={"x-mendstream-fixture": name})
        httpx.get(proxy.base_url + "/v1/models")
        families = scrape(proxy.base_url)
    # requests, streams, repairs by kind, retries/continuations/stalls, upstream status codes, time to first
    # byte and stream duration histograms, cache read/write/input tokens from usage, bytes
    for name in ("mendstream_requests", "mendstream_streams", "mendstream_repairs", "mendstream_retries",
                 "mendstream_stalls", "mendstream_upstream_responses", "mendstream_time_to_first_byte_seconds",
                 "mendstream_stream_duration_seconds", "mendstream_tokens", "mendstream_bytes",
                 "mendstream_errors", "mendstream_state_events", "mendstream_state_store_up"):
        assert name in families, name
    assert total(families, "mendstream_requests_total", path="messages") == 3
    assert total(families, "mendstream_requests_total", path="models") == 1
    assert total(families, "mendstream_streams_total", outcome="repaired") == 1
    assert total(families, "mendstream_repairs_total", kind="control_characters") >= 4
    assert total(families, "mendstream_upstream_responses_total", status="200") == 2
    assert total(families, "mendstream_upstream_responses_total", status="404") == 2  # no fixture; /v1/models
    assert total(families, "mendstream_time_to_first_byte_seconds_count") == 4
    assert total(families, "mendstream_stream_duration_seconds_count") == 2
    assert total(families, "mendstream_tokens_total", kind="cache_read") > 0
    assert total(families, "mendstream_tokens_total", kind="input") > 0
    assert total(families, "mendstream_bytes_total", direction="client_request") > 0
    assert total(families, "mendstream_bytes_total", direction="client_response") > 0


def test_metrics_and_stats_need_the_token_when_one_is_set(upstream: ReplayServer) -> None:
    token = "s" * 24
    with Served(create_app(upstream.base_url, metrics=True, stats_token=token)) as proxy:
        assert httpx.get(proxy.base_url + "/metrics").status_code == 401
        response = httpx.get(proxy.base_url + "/metrics", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200 and "mendstream_requests_total" in response.text


def test_planner_memory_is_bounded_in_bytes(upstream: ReplayServer) -> None:
    """30 conversations of 300 KB requests through --cache planner with an 8 MiB budget: the store keeps
    live planners (charged 1.5 times their request) up to the budget and demotes the oldest past it."""
    budget = 8 * 1024 * 1024
    app = create_app(upstream.base_url, cache="planner", state_options={"max_bytes": budget})
    with Served(app) as proxy:
        peak = 0
        for conversation in range(30):
            payload = {**next(session(1)), "system": f"conversation {conversation} " + "x" * 300_000}
            response = httpx.post(proxy.base_url + "/v1/messages", json=payload, headers=FIXTURE, timeout=30)
            assert response.status_code == 200
            peak = max(peak, app.store.bytes)
        assert peak <= budget and len(app.store) == 30  # every conversation's compact state kept
        assert 0 < len(app.store._live) < 30  # the most recent planners live, the older demoted
