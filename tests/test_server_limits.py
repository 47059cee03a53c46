# The replay server's limits and HTTP hygiene against real sockets on 127.0.0.1: malformed requests get 400,
# Expect: 100-continue is answered, slow or idle connections are closed, oversized bodies and heads get
# 413/431, a connection cap keeps 1,100 idle connections from exhausting descriptors, the request log is
# bounded, deeply nested JSON gets 400, symlinks out of the fixture directory are not served, and an
# aborting fixture cuts the body. Every wait is bounded by a socket timeout.
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from conftest import BASIC_SSE, TRUNCATED_SSE
from mendstream.errors import FixtureError, UsageError
from mendstream.testing import Fixture, ReplayServer, ServerLimits, load_fixtures

BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
PAYLOAD = json.dumps(BODY).encode()


def connect(server: ReplayServer, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout and ``limit``)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def request(body: bytes = PAYLOAD, extra: bytes = b"") -> bytes:
    return (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%b"
            b"content-length: %d\r\n\r\n%b" % (extra, len(body), body))


@pytest.fixture
def server() -> ReplayServer:
    limits = ServerLimits(header_timeout=0.5, idle_timeout=0.5, body_timeout=0.5, max_body_bytes=4096,
                          max_header_bytes=2048, max_headers=20, request_log=5)
    with ReplayServer({"basic": BASIC_SSE, "cut": Fixture("cut", TRUNCATED_SSE, abort=True)},
                      select="order", limits=limits) as srv:
        yield srv  # type: ignore[misc]


def test_malformed_request_gets_400(server: ReplayServer) -> None:
    for garbage in (b"GARBAGE\r\n\r\n", b"POST /v1/messages HTTP/1.1\r\nbad header line\r\n\r\n",
                    b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n"):
        with connect(server) as sock:
            sock.sendall(garbage)
            assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    assert post_ok(server)


def post_ok(server: ReplayServer) -> bool:
    with httpx.Client(timeout=5) as client:
        response = client.post(server.url, json=BODY, headers={"x-mendstream-fixture": "basic"})
    return response.status_code == 200 and response.content == BASIC_SSE


def test_expect_100_continue_is_answered(server: ReplayServer) -> None:
    with connect(server) as sock:
        head = request(b"", b"expect: 100-continue\r\nx-mendstream-fixture: basic\r\n")
        sock.sendall(head.replace(b"content-length: 0", b"content-length: %d" % len(PAYLOAD)))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(PAYLOAD)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    # a body over the limit is refused before the client sends it
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 99999\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 413 ")


def test_slow_and_silent_connections_are_closed(server: ReplayServer) -> None:
    silent = [connect(server) for _ in range(20)]
    slow = [connect(server) for _ in range(20)]
    for sock in slow:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
    start = time.monotonic()
    try:
        assert all(read_until_closed(s) == b"" for s in silent)
        answers = [read_until_closed(s) for s in slow]
        assert all(a.startswith(b"HTTP/1.1 408 ") and b"timeout_error" in a for a in answers)
        assert time.monotonic() - start < 4.5  # the header deadline (0.5 s), not the socket timeout (5 s)
    finally:
        for sock in silent + slow:
            sock.close()


def test_trickled_head_is_cut_at_the_deadline(server: ReplayServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # a header byte every 0.1 s: 4 s of trickle against a 0.5 s deadline
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        assert closed or read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_idle_keep_alive_connection_is_closed(server: ReplayServer) -> None:
    with connect(server) as sock:
        sock.sendall(request(extra=b"x-mendstream-fixture: basic\r\n"))
        data = read_until_closed(sock)  # served, then closed after 0.5 s idle
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"0\r\n\r\n")


def test_body_limit_gives_413(server: ReplayServer) -> None:
    big = json.dumps({**BODY, "pad": "x" * 10_000}).encode()
    with httpx.Client(timeout=5) as client:
        response = client.post(server.url, content=big)
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"

        def chunks():  # type: ignore[no-untyped-def]  # chunked: no content-length to check up front
            for _ in range(10):
                yield b"x" * 1000

        assert client.post(server.url, content=chunks()).status_code == 413
    assert server.requests[-1].status == 413
    assert post_ok(server)


def test_slow_body_gives_408(server: ReplayServer) -> None:
    with connect(server) as sock:
        sock.sendall(request()[:-5])  # the head and all but 5 body bytes
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_oversized_head_and_too_many_headers_give_431(server: ReplayServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4000)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    many = b"".join(b"x-h: %d\r\n" % i for i in range(50))
    with connect(server) as sock:
        sock.sendall(request(extra=many))
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 431 ") and b"header fields" in answer
    # 16,000 repeated headers: refused at the size limit, in linear time
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\n" + b"x-h: 1\r\n" * 16_000 + b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors")
def test_idle_connections_cannot_exhaust_descriptors() -> None:
    limits = ServerLimits(max_connections=64, header_timeout=30)
    with ReplayServer({"basic": BASIC_SSE}, limits=limits) as server:
        before = open_fds()
        socks = []
        try:
            for _ in range(1100):
                socks.append(socket.create_connection((server.host, server.port), timeout=5))
            time.sleep(0.3)
            # the 1,100 client sockets are ours; the server holds at most 64 beyond its listener
            assert open_fds() - before <= 1100 + 64 + 8
            refused = socks[-1]
            refused.settimeout(5)
            answer = read_until_closed(refused)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"open connections" in answer
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 5
        while not post_ok(server):  # slots free as soon as the idle connections are gone
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_request_log_is_bounded(server: ReplayServer) -> None:
    with httpx.Client(timeout=5) as client:
        for i in range(12):
            client.post(server.url, json={**BODY, "n": i}, headers={"x-mendstream-fixture": "basic"})
    assert len(server.requests) == 5
    assert [r.body["n"] for r in server.requests] == [7, 8, 9, 10, 11]


def test_deeply_nested_json_gets_400(server: ReplayServer) -> None:
    with httpx.Client(timeout=5) as client:
        for body in (b"[" * 3000, b'{"a":' * 600 + b"1" + b"}" * 600):
            response = client.post(server.url, content=body)
            assert response.status_code == 400
            assert "nests deeper" in response.json()["error"]["message"]
    assert post_ok(server)


def test_symlinks_out_of_the_directory_are_not_served(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.sse").write_bytes(b"data: secret\n\n")
    (outside / "secret.capture.json").write_text("{}")
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "basic.sse").write_bytes(BASIC_SSE)
    (fixtures / "leak.sse").symlink_to(outside / "secret.sse")
    (fixtures / "side.sse").write_bytes(BASIC_SSE)
    (fixtures / "side.capture.json").symlink_to(outside / "secret.capture.json")
    (fixtures / "alias.sse").symlink_to(fixtures / "basic.sse")  # inside: fine
    assert [f.name for f in load_fixtures(fixtures)] == ["alias", "basic"]
    with ReplayServer(fixtures) as server, httpx.Client(timeout=5) as client:
        assert sorted(p.name for p in server.skipped) == ["leak.sse", "side.sse"]
        response = client.post(server.url, json=BODY, headers={"x-mendstream-fixture": "leak"})
        assert response.status_code == 404 and b"secret" not in response.content
    only_outside = tmp_path / "only"
    only_outside.mkdir()
    (only_outside / "leak.sse").symlink_to(outside / "secret.sse")
    with pytest.raises(FixtureError, match="symlinked outside"):
        load_fixtures(only_outside)


def test_abort_cuts_the_body_mid_stream(server: ReplayServer) -> None:
    received = b""
    with httpx.Client(timeout=5) as client, client.stream(
        "POST", server.url, json=BODY, headers={"x-mendstream-fixture": "cut"}
    ) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    assert received == TRUNCATED_SSE  # everything recorded arrived, then no end of body
    assert server.requests[-1].fixture == "cut"
    assert post_ok(server)  # the server itself is unharmed


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="header_timeout"):
        ServerLimits(header_timeout=0)
    with pytest.raises(UsageError, match="max_connections"):
        ServerLimits(max_connections=-1)
    with pytest.raises(UsageError, match="port"):
        ReplayServer({"a": BASIC_SSE}, port=99999)
    with pytest.raises(UsageError, match="speed"):
        ReplayServer({"a": BASIC_SSE}, speed=0)
    with pytest.raises(UsageError, match="faults"):
        ReplayServer({"a": BASIC_SSE}, faults=object())  # type: ignore[arg-type]


def test_paced_response_stops_when_the_client_leaves(tmp_path: Path) -> None:
    import threading

    (tmp_path / "slow.sse").write_bytes(BASIC_SSE)
    n = len(BASIC_SSE)
    sidecar = {"chunks": [[10, 0.0], [n - 20, 20_000.0], [10, 40_000.0]]}  # 40 s of captured pacing
    (tmp_path / "slow.capture.json").write_text(json.dumps(sidecar))
    finished = threading.Event()
    records = []

    def done(record: object) -> None:
        records.append(record)
        finished.set()

    with ReplayServer(tmp_path, pace="captured", on_request=done) as server:
        with connect(server) as sock:
            sock.sendall(request())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert finished.wait(5), "the server kept pacing a response nobody reads"
    assert records[0].bytes_sent == 10


def test_listening_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    from mendstream.testing._uvicorn import bind

    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; without it every response
    # waited ~40 ms (delayed ACK) between its head and body.
    sock = bind("127.0.0.1", 0, 8)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
