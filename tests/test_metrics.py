# The proxy's Prometheus metrics (mendstream/wire/metrics.py): every metric family the proxy promises,
# scraped and parsed with prometheus_client's own parser; the human stats assembled from the same values;
# hostile usage values; the state store's events counted (a real redis-server killed: one fallback per
# request, the store-up gauge at 0); and multiprocess mode under a real `uvicorn --workers 2`, where
# whichever worker answers /metrics reports every worker's requests.
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="pip install 'mendstream[metrics]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mendstream.errors import UsageError  # noqa: E402
from mendstream.wire.metrics import METRIC_NAMES, ProxyMetrics, path_class  # noqa: E402

TYPES = {
    "mendstream_requests": "counter",
    "mendstream_errors": "counter",
    "mendstream_upstream_responses": "counter",
    "mendstream_streams": "counter",
    "mendstream_streams_in_progress": "gauge",
    "mendstream_repairs": "counter",
    "mendstream_retries": "counter",
    "mendstream_stalls": "counter",
    "mendstream_time_to_first_byte_seconds": "histogram",
    "mendstream_stream_duration_seconds": "histogram",
    "mendstream_tokens": "counter",
    "mendstream_bytes": "counter",
    "mendstream_state_events": "counter",
    "mendstream_state_fallbacks": "counter",
    "mendstream_state_store_up": "gauge",
}


def scrape(text: str) -> dict[str, Any]:
    """{family name: family}, and the samples as {(sample name, sorted labels without pid): value}."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    total = 0.0
    found = False
    for s in families[family].samples:
        if s.name == (sample or family + ("_total" if TYPES.get(family) == "counter" else "")) and all(
            s.labels.get(k) == v for k, v in labels.items()
        ):
            total += s.value
            found = True
    assert found, (family, sample, labels)
    return total


def record_a_day(metrics: ProxyMetrics) -> None:
    """What a proxy records for: 3 Messages streams (clean, repaired, cut), a count_tokens call, a 529, an
    unreachable upstream, a retry and a continuation, an idle stall, and a state store that went down."""
    for status in (200, 200, 200):
        metrics.request("POST", "/v1/messages", status)
        metrics.upstream(status)
    metrics.request("POST", "/v1/messages/count_tokens", 200)
    metrics.upstream(200)
    metrics.request("POST", "/v1/messages", 529)
    metrics.upstream(529)
    metrics.request("POST", "/v1/messages", 502)
    metrics.upstream(None)
    metrics.error("upstream_unreachable")
    metrics.request("GET", "/mendstream/stats", 200)
    metrics.request("BREW", "/../etc/passwd", 400)
    for ttfb in (0.3, 0.8, 2.5):
        metrics.first_byte(ttfb)
    usage = {"input_tokens": 12, "cache_read_input_tokens": 9000, "cache_creation_input_tokens": 1500,
             "output_tokens": 300}
    metrics.stream_started()
    metrics.stream_finished(4.0, repairs={}, usage=usage)
    metrics.stream_started()
    metrics.stream_finished(12.0, repairs={"control_characters": 2, "bom": 1}, usage=usage)
    metrics.stream_started()
    metrics.stream_finished(40.0, repairs={"control_characters": 1}, usage=None, failed=True)
    metrics.error("stream_error")
    metrics.stream_started()  # one still running
    metrics.retry("retry")
    metrics.retry("continuation")
    metrics.stall("idle")
    metrics.transferred(client_request=5000, upstream_request=5100)
    metrics.transferred(upstream_response=20_000, client_response=20_050)
    for event in ("new", "saved", "restored", "saved", "store_down", "fallback", "fallback"):
        metrics.state_event(event)


def check_a_day(families: dict[str, Any], times: int = 1) -> None:
    assert set(METRIC_NAMES) == set(TYPES)
    for name, kind in TYPES.items():
        assert name in families, name
        assert families[name].type == kind, name
    assert value(families, "mendstream_requests", method="POST", path="messages", status="200") == 3 * times
    assert value(families, "mendstream_requests", path="count_tokens") == times
    assert value(families, "mendstream_requests", method="other", path="other", status="400") == times
    assert value(families, "mendstream_upstream_responses", status="529") == times
    assert value(families, "mendstream_upstream_responses", status="unreachable") == times
    assert value(families, "mendstream_errors", kind="upstream_unreachable") == times
    assert value(families, "mendstream_streams", outcome="clean") == times
    assert value(families, "mendstream_streams", outcome="repaired") == times
    assert value(families, "mendstream_streams", outcome="failed") == times
    assert value(families, "mendstream_streams_in_progress", "mendstream_streams_in_progress") == times
    assert value(families, "mendstream_repairs", kind="control_characters") == 3 * times
    assert value(families, "mendstream_repairs", kind="bom") == times
    assert value(families, "mendstream_retries", kind="retry") == times
    assert value(families, "mendstream_retries", kind="continuation") == times
    assert value(families, "mendstream_stalls", kind="idle") == times
    ttfb = "mendstream_time_to_first_byte_seconds"
    assert value(families, ttfb, ttfb + "_count") == 3 * times
    assert value(families, ttfb, ttfb + "_bucket", le="1.0") == 2 * times
    assert value(families, ttfb, ttfb + "_sum") == pytest.approx(3.6 * times)
    duration = "mendstream_stream_duration_seconds"
    assert value(families, duration, duration + "_count") == 3 * times
    assert value(families, duration, duration + "_bucket", le="30.0") == 2 * times
    assert value(families, "mendstream_tokens", kind="cache_read") == 18_000 * times
    assert value(families, "mendstream_tokens", kind="cache_write") == 3000 * times
    assert value(families, "mendstream_tokens", kind="input") == 24 * times
    assert value(families, "mendstream_tokens", kind="output") == 600 * times
    assert value(families, "mendstream_bytes", direction="client_request") == 5000 * times
    assert value(families, "mendstream_bytes", direction="client_response") == 20_050 * times
    assert value(families, "mendstream_state_events", event="saved") == 2 * times
    assert value(families, "mendstream_state_fallbacks") == 2 * times
    assert value(families, "mendstream_state_store_up", "mendstream_state_store_up") == 0


def test_every_metric_is_scraped_with_its_type_and_value() -> None:
    metrics = ProxyMetrics()
    record_a_day(metrics)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    check_a_day(scrape(body.decode()))
    other = ProxyMetrics()  # a private registry each: two instances never collide
    assert value(scrape(other.render()[0].decode()), "mendstream_streams", outcome="clean") == 0


def test_stats_are_assembled_from_the_metrics() -> None:
    metrics = ProxyMetrics()
    record_a_day(metrics)
    stats = metrics.stats()
    assert stats["requests"] == 7  # the stats request itself is not counted
    assert stats["errors"] == 2
    assert stats["repairs"] == {"control_characters": 3, "bom": 1}
    assert stats["streams"] == {"clean": 1, "repaired": 1, "failed": 1}
    assert stats["cache"] == {"cache_read_input_tokens": 18_000, "cache_creation_input_tokens": 3000,
                              "uncached_input_tokens": 24, "hit_ratio": pytest.approx(18_000 / 21_024)}
    assert stats["upstream_status"] == {"200": 4, "529": 1, "unreachable": 1}
    assert stats["state"]["fallback"] == 2
    json.dumps(stats)
    assert ProxyMetrics().stats()["cache"]["hit_ratio"] is None


def test_hostile_usage_and_paths_stay_bounded() -> None:
    metrics = ProxyMetrics()
    for usage in ({"input_tokens": "12"}, {"input_tokens": 1e300}, {"input_tokens": True}, {"input_tokens": -5},
                  {"input_tokens": None}, ["input_tokens"], "usage", 7, {"output_tokens": [1]}):
        metrics.usage(usage)
    families = scrape(metrics.render()[0].decode())
    assert all(value(families, "mendstream_tokens", kind=k) == 0 for k in ("input", "output", "cache_read"))
    for path in ("/v1/messages/", "/v1/models/claude-x", "/model/arn%3Aaws/invoke", "/v1/projects/p/x", "/" + "a" * 5000):
        metrics.request("POST", path, 200)
    classes = {s.labels["path"] for s in scrape(metrics.render()[0].decode())["mendstream_requests"].samples}
    assert classes == {"messages", "models", "bedrock", "vertex", "other"}
    assert path_class("/metrics") == "metrics" and path_class("") == "other"


def test_multiprocess_dir_set_too_late_or_missing_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="not a directory"):
        ProxyMetrics()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="before the proxy starts"):
        ProxyMetrics()  # prometheus_client was imported in this process without it


def test_state_store_events_are_counted_when_redis_dies(tmp_path: Path) -> None:
    from test_team_state import REDIS_SERVER, RedisServer, agent_session, wire

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    from mendstream.wire.state import RedisPlannerStore

    server = RedisServer(tmp_path)
    metrics = ProxyMetrics()

    async def go() -> None:
        store = RedisPlannerStore(server.url, timeout=0.1, retry_interval=60, observer=metrics.state_event)
        try:
            for turn, payload in enumerate(agent_session(turns=6)):
                if turn == 3:
                    server.kill()
                lease = await asyncio.wait_for(store.checkout("c"), 5)
                lease.planner.plan(wire(payload))
                await asyncio.wait_for(store.commit(lease), 5)
        finally:
            await store.aclose()

    try:
        asyncio.run(go())
    finally:
        server.kill()
    families = scrape(metrics.render()[0].decode())
    assert value(families, "mendstream_state_fallbacks") == 3
    assert value(families, "mendstream_state_events", event="store_down") == 1
    assert value(families, "mendstream_state_events", event="saved") == 3
    assert value(families, "mendstream_state_store_up", "mendstream_state_store_up") == 0


APP = textwrap.dedent("""
    # A stand-in for the proxy's request path: what it records per request, /metrics and /mendstream/stats.
    import json, os
    from mendstream.wire.metrics import ProxyMetrics

    metrics = ProxyMetrics()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/metrics":
            body, content_type = metrics.render()
        elif scope["path"] == "/mendstream/stats":
            body, content_type = json.dumps(metrics.stats()).encode(), "application/json"
        else:
            metrics.upstream(200)
            metrics.stream_started()
            metrics.stream_finished(0.5, repairs={"bom": 1}, usage={"input_tokens": 3, "cache_read_input_tokens": 7})
            body, content_type = str(os.getpid()).encode(), "text/plain"
        metrics.request(scope["method"], scope["path"], 200)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
""")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("uvicorn")
    (tmp_path / "metrics_app.py").write_text(APP)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "metrics_app:app", "--workers", "2", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/metrics", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("uvicorn --workers 2 did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_metrics_are_summed_over_uvicorn_workers(two_workers: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> str:
        request = urllib.request.Request(two_workers + "/v1/messages", method="POST", data=b"{}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    pids: list[str] = []
    deadline = time.monotonic() + 60
    # Rounds of concurrent connections until both workers have answered: one at a time, an idle worker can
    # win every accept() on a busy machine; eight at once keep the first worker busy enough.
    with ThreadPoolExecutor(8) as pool:
        while len(set(pids)) < 2 and time.monotonic() < deadline:
            pids.extend(pool.map(post, range(8)))
    assert len(set(pids)) == 2, "the kernel gave every connection to one worker"
    made = len(pids)
    for _ in range(4):  # whichever worker answers reports every worker's requests
        families = scrape(urllib.request.urlopen(two_workers + "/metrics", timeout=10).read().decode())
        assert value(families, "mendstream_requests", method="POST", path="messages", status="200") == made
        assert value(families, "mendstream_streams", outcome="repaired") == made
        assert value(families, "mendstream_tokens", kind="cache_read") == 7 * made
        assert value(families, "mendstream_stream_duration_seconds", "mendstream_stream_duration_seconds_count") == made
        assert value(families, "mendstream_state_store_up", "mendstream_state_store_up") == 1
        stats = json.loads(urllib.request.urlopen(two_workers + "/mendstream/stats", timeout=10).read())
        assert stats["requests"] == made and stats["repairs"] == {"bom": made} and stats["workers"] == "all"
