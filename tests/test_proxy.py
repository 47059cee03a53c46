"""The proxy as a real uvicorn server on 127.0.0.1 in front of a ReplayServer: the unmodified SDK through it
(ANTHROPIC_BASE_URL-style base_url) on every fixture, byte-for-byte clean streams, request planning, stats,
upstream failures as clear 502s, bad bodies as 400s, concurrency, and no secret in captures or logs."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import FIXTURE_NAMES, expected, fixture_bytes, sync_client  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.wire.proxy import create_app  # noqa: E402
from proxy_helpers import Served  # noqa: E402
from test_rewrite import is_clean, without_sdk_nulls  # noqa: E402

REQUEST = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
SECRET = "sk-ant-api03-very-secret-value"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ReplayServer]:
    from conftest import FIXTURES_DIR

    with ReplayServer(FIXTURES_DIR, select="header") as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: ReplayServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # Coalescing off: these tests hold clean streams to byte-for-byte equality (coalescing, on by default, is
    # tested in test_coalesce.py).
    served = Served(create_app(upstream.base_url, cache="planner", capture=tmp_path_factory.mktemp("cap"),
                               coalesce=0))
    yield served
    served.stop()


def sdk(proxy: Served) -> Any:
    return sync_client(api_key=SECRET, base_url=proxy.base_url)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_sdk_through_proxy_on_every_fixture(proxy: Served, name: str) -> None:
    try:
        with sdk(proxy).messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": name}) as stream:
            message = stream.get_final_message().to_dict(mode="json")
        error = None
    except Exception as exc:
        message, error = None, exc
    exp = expected(name)
    if exp["error"] is None:
        assert error is None, f"{name}: {error!r}"
        assert without_sdk_nulls(message or {}, exp["message"]) == exp["message"]
    else:
        assert error is not None, f"{name}: silent truncation"


def test_sdk_finds_the_proxy_through_anthropic_base_url(proxy: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", proxy.base_url)
    client = sync_client(api_key=SECRET)
    name = "fault_tool_input_control_chars"
    with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": name}) as stream:
        message = stream.get_final_message().to_dict(mode="json")
    assert without_sdk_nulls(message, expected(name)["message"]) == expected(name)["message"]


def test_clean_streams_byte_for_byte(proxy: Served) -> None:
    for name in [n for n in FIXTURE_NAMES if is_clean(fixture_bytes(n))]:
        response = httpx.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                              headers={"x-mendstream-fixture": name})
        assert response.content == fixture_bytes(name), name


def test_six_markers_arrive_with_at_most_four(upstream: ReplayServer, proxy: Served) -> None:
    blocks = [{"type": "text", "text": f"part {i} " * 400, "cache_control": {"type": "ephemeral"}}
              for i in range(6)]
    payload = {**REQUEST, "stream": True, "messages": [{"role": "user", "content": blocks}]}
    httpx.post(proxy.base_url + "/v1/messages", json=payload, headers={"x-mendstream-fixture": "text_basic"})
    body = upstream.requests[-1].body
    assert sum("cache_control" in b for b in body["messages"][0]["content"]) <= 4
    assert [b["text"] for b in body["messages"][0]["content"]] == [b["text"] for b in blocks]


def test_stats(proxy: Served) -> None:
    httpx.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
               headers={"x-mendstream-fixture": "fault_control_chars_in_event_json"})
    httpx.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
               headers={"x-mendstream-fixture": "usage_cache_fields"})
    stats = httpx.get(proxy.base_url + "/mendstream/stats").json()
    assert stats["requests"] >= 2 and stats["repairs"]["control_characters"] >= 4
    assert stats["cache"]["cache_read_input_tokens"] > 0 and 0 < stats["cache"]["hit_ratio"] <= 1
    assert "conversations" not in stats  # per-conversation usage only for the holder of the stats token


def test_non_json_body_is_400_in_api_shape(proxy: Served) -> None:
    response = httpx.post(proxy.base_url + "/v1/messages", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"


def test_unreachable_upstream_is_502_in_api_shape() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    served = Served(create_app(f"http://127.0.0.1:{dead}"))
    try:
        with pytest.raises(anthropic.InternalServerError) as info:
            sync_client(base_url=served.base_url).messages.create(**REQUEST)
        assert info.value.status_code == 502 and "unreachable" in info.value.body["error"]["message"]
    finally:
        served.stop()


def test_upstream_http_errors_pass_as_sent(upstream: ReplayServer, proxy: Served) -> None:
    response = httpx.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                          headers={"x-mendstream-fixture": "no_such_fixture"})
    direct = httpx.post(upstream.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                        headers={"x-mendstream-fixture": "no_such_fixture"})
    assert response.status_code == direct.status_code >= 400 and response.content == direct.content


def test_invalid_options_are_usage_errors() -> None:
    from mendstream import UsageError

    with pytest.raises(UsageError, match="cache must be one of"):
        create_app("http://x", cache="sometimes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="http"):
        create_app("ftp://x")


def test_200_concurrent_streams(proxy: Served) -> None:
    async def run() -> list[bytes]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=60) as client:
            async def one(i: int) -> bytes:
                r = await client.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                                      headers={"x-mendstream-fixture": "text_basic"})
                return r.content
            return await asyncio.gather(*(one(i) for i in range(200)))

    bodies = asyncio.run(run())
    assert bodies == [fixture_bytes("text_basic")] * 200


def test_secret_never_in_captures_or_logs(proxy: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with sdk(proxy).messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": "text_basic"}) as s:
        s.get_final_message()
    capture_dir = Path(proxy.app.capture)
    deadline = time.monotonic() + 5  # the proxy writes a capture's sidecar after the client has the stream
    while not list(capture_dir.glob("*.capture.json")) or list(capture_dir.glob(".*.tmp")):
        assert time.monotonic() < deadline, sorted(p.name for p in capture_dir.iterdir())
        time.sleep(0.02)
    files = list(capture_dir.glob("*.sse")) + list(capture_dir.glob("*.capture.json"))
    assert files and all(SECRET.encode() not in f.read_bytes() for f in files)
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(proxy.app.stats())


async def _faulty_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An upstream that answers 529 with an API error body, or cuts its stream mid-event (by path)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"].startswith("/overloaded"):
        body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        await send({"type": "http.response.start", "status": 529,
                    "headers": [(b"content-type", b"application/json"), (b"request-id", b"req_1")]})
        await send({"type": "http.response.body", "body": body.encode()})
        return
    data = fixture_bytes("text_basic")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": data[: data.index(b"event: content_block_stop") + 20],
                "more_body": True})
    raise RuntimeError("upstream dies mid-stream")  # uvicorn drops the connection


def test_upstream_error_status_and_cut_stream() -> None:
    upstream = Served(_faulty_upstream)
    served = Served(create_app(upstream.base_url))
    try:
        client = sync_client(base_url=served.base_url + "/overloaded")
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(**REQUEST)
        assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
        assert info.value.response.headers["request-id"] == "req_1"
        client = sync_client(base_url=served.base_url + "/cut")
        with pytest.raises(anthropic.APIStatusError, match="incomplete_stream_error"), \
                client.messages.stream(**REQUEST) as stream:
            stream.get_final_message()
    finally:
        served.stop()
        upstream.stop()


def test_proxy_subcommand_serves_until_stopped(upstream: ReplayServer) -> None:
    import subprocess
    import sys

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    bad = subprocess.run([sys.executable, "-m", "mendstream", "proxy", "--upstream", "ftp://x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "http:// or https://" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.startswith("mendstream proxy: ")
    proc = subprocess.Popen([sys.executable, "-m", "mendstream", "proxy", "--upstream", upstream.base_url, "--port",
                             str(port), "--cache", "planner"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                stats = httpx.get(f"http://127.0.0.1:{port}/mendstream/stats").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert stats["requests"] == 0
        client = sync_client(api_key=SECRET, base_url=f"http://127.0.0.1:{port}")
        with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": "framing_data_only"}) as s:
            assert s.get_final_message().stop_reason == expected("framing_data_only")["message"]["stop_reason"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert SECRET.encode() not in err  # uvicorn's access log names paths, never credentials


class _Listener:
    """A TCP listener on 127.0.0.1 that records whatever arrives (a stand-in for a host a request must never
    steer the proxy to)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(65536))
            except OSError:
                self.received.append(b"")
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def _raw_request(base_url: str, request_line: bytes, body: bytes = b"{}") -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request_line + b"\r\nhost: 127.0.0.1\r\nx-api-key: " + SECRET.encode()
                     + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
                     + b"\r\nconnection: close\r\n\r\n" + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("target", [
    b"@127.0.0.1:{port}/v1/messages",            # userinfo trick: the upstream's host becomes userinfo
    b":{port}/v1/messages",                      # switches the port
    b".localhost:{port}/v1/messages",            # extends the upstream's host name
    b"http://127.0.0.1:{port}/v1/messages",      # absolute-form
    b"127.0.0.1:{port}",                         # authority-form (CONNECT)
])
def test_request_target_never_steers_the_proxy_to_another_host(upstream: ReplayServer, target: bytes) -> None:
    listener = _Listener()
    served = Served(create_app(upstream.base_url))
    try:
        method = b"CONNECT" if b"/" not in target else b"POST"
        answer = _raw_request(served.base_url, method + b" " + target.replace(b"{port}", str(listener.port).encode())
                              + b" HTTP/1.1")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"origin-form" in answer and b"Traceback" not in answer
        time.sleep(0.3)
        assert listener.received == []  # nothing, and so no x-api-key, reached the other listener
    finally:
        served.stop()
        listener.close()


def test_options_asterisk_is_a_clean_400(proxy: Served) -> None:
    answer = _raw_request(proxy.base_url, b"OPTIONS * HTTP/1.1", body=b"")
    assert answer.startswith(b"HTTP/1.1 400") and b"Traceback" not in answer


def test_upstream_with_credentials_or_no_host_is_refused() -> None:
    from mendstream import UsageError

    with pytest.raises(UsageError, match="credentials"):
        create_app("http://svcuser:secret@127.0.0.1:9")
    with pytest.raises(UsageError, match="no host"):
        create_app("http://")
    with pytest.raises(UsageError, match="not a valid URL"):
        create_app("http://127.0.0.1:99999")


async def _echo_target(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"raw_path": scope["raw_path"].decode("latin-1"),
                       "query": scope["query_string"].decode("latin-1")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_path_and_query_reach_the_upstream_undecoded_under_its_base_path() -> None:
    echo = Served(_echo_target)
    served = Served(create_app(echo.base_url + "/gateway/"))
    try:
        target = "/model/arn%3Aaws%3Abedrock%2Fprofile/invoke%3Fx%23y?a=%2F&b=1"
        seen = httpx.get(served.base_url + target).json()
        assert seen == {"raw_path": "/gateway/model/arn%3Aaws%3Abedrock%2Fprofile/invoke%3Fx%23y", "query": "a=%2F&b=1"}
        seen = httpx.get(served.base_url + "//evil.example/v1/messages").json()
        assert seen["raw_path"] == "/gateway//evil.example/v1/messages"  # a path, not a host
    finally:
        served.stop()
        echo.stop()
