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


# -- issue 18: limits the audit found short -------------------------------------------------------------------


def test_oversized_head_in_a_single_read_gives_431() -> None:
    """A 100 KB head sent in one piece arrived in one or two reads, which h11 parsed whole before the size
    check ran: it was served despite the 64 KiB limit. The head is now measured before h11 sees it."""
    with ReplayServer({"basic": BASIC_SSE}) as server:  # the default limits: 64 KiB
        for size in (100_000, 70_000, 65_536):
            with connect(server) as sock:
                sock.sendall(request(extra=b"x-mendstream-fixture: basic\r\nx-big: " + b"a" * size + b"\r\n"))
                answer = read_until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 431 "), (size, answer[:80])
                assert b"request head over 65536 bytes" in answer
        # a head just under the limit is served, however many body bytes come in the same read
        body = json.dumps({**BODY, "pad": "p" * 200_000}).encode()
        extra = b"x-mendstream-fixture: basic\r\nx-big: " + b"a" * 64_000 + b"\r\n"
        with connect(server) as sock:
            sock.sendall(request(body, extra))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
        # a head whose end straddles two reads is measured across them: 65,537 bytes, the first read 65,535
        pad = b"a" * 65_400
        head = request(b"", b"x-mendstream-fixture: basic\r\nx-big: " + pad + b"\r\n")
        head = head.replace(pad, b"a" * (65_400 + 65_537 - len(head)))
        assert len(head) == 65_537
        for cut in (len(head) - 2, len(head) - 1, len(head) - 3):
            with connect(server) as sock:
                sock.sendall(head[:cut])
                time.sleep(0.2)
                sock.sendall(head[cut:])
                assert read_until_closed(sock).startswith(b"HTTP/1.1 431 "), cut


def test_oversized_head_gets_431_from_the_app_under_any_server() -> None:
    """The ASGI app checks the head's size itself too (for a server without the protocol's check)."""
    import asyncio

    from mendstream.recording.fixtures import FixtureSelector
    from mendstream.testing import ReplayApp, Router

    router = Router(FixtureSelector(load_fixtures({"basic": BASIC_SSE})))
    app = ReplayApp(router, ServerLimits(max_header_bytes=2048))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": PAYLOAD, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/messages", "raw_path": b"/v1/messages",
             "query_string": b"", "headers": [(b"host", b"x"), (b"x-big", b"a" * 3000)]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 431 and b"request head of" in sent[1]["body"]  # type: ignore[operator]
    assert router.requests[-1].status == 431 and router.requests[-1].headers == {}


def test_request_log_is_bounded_in_bytes() -> None:
    """500 requests of 195 KB grew the server by 96 MiB (every body kept): the log now keeps the newest
    within ``request_log_bytes`` and counts what it dropped. Measured with tracemalloc on the router (what
    the server keeps), then checked through a real server."""
    import gc
    import tracemalloc

    from mendstream.recording.fixtures import FixtureSelector
    from mendstream.testing import Router
    from mendstream.testing.routing import record_weight

    budget = 4 * 1024 * 1024
    router = Router(FixtureSelector(load_fixtures({"basic": BASIC_SSE})), request_log_bytes=budget)
    bodies = [json.dumps({**BODY, "n": i, "pad": [f"word {j}" for j in range(12_000)]}).encode() for i in range(4)]
    assert len(bodies[0]) > 150_000
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            router.answer("POST", "/v1/messages", {"x-mendstream-fixture": "basic"}, bodies[i % 4])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < budget + 512 * 1024, grown  # 200 x 195 KB decoded would be about 60 MB
    kept = len(router.requests)
    assert 0 < kept < 200 and router.requests_dropped == 200 - kept
    assert router.requests[-1].body["n"] == 199 % 4 and router.requests[-1].body_bytes == len(bodies[3])
    assert sum(record_weight(bodies[r.body["n"]], r.headers, r.path) for r in router.requests) <= budget
    # one request larger than the whole budget is kept, without its body
    huge = json.dumps({**BODY, "pad": "x" * (budget + 1)}).encode()
    router.answer("POST", "/v1/messages", {}, huge)
    assert router.requests[-1].body is None and router.requests[-1].body_bytes == len(huge)
    assert len(router.requests) >= 1
    # the same through a server: newest kept, drops counted, reset forgets both
    limits = ServerLimits(request_log_bytes=int(2.5 * record_weight(bodies[0], {"x": "y" * 300}, "/v1/messages")))
    with ReplayServer({"basic": BASIC_SSE}, limits=limits) as server, httpx.Client(timeout=10) as client:
        for i in range(12):
            client.post(server.url, content=bodies[i % 4], headers={"x-mendstream-fixture": "basic"})
        assert len(server.requests) == 2 and server.requests_dropped == 10
        assert server.requests[-1].body["n"] == 11 % 4
        server.reset()
        assert len(server.requests) == 0 and server.requests_dropped == 0


def test_connection_cap_follows_the_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    resource = pytest.importorskip("resource")
    from mendstream.testing import app

    monkeypatch.setattr(app, "_open_descriptors", lambda: 6)
    # (soft limit, cap, backlog): backlog min(128, max(16, left // 8)), cap (left - 3 * backlog) // 2
    for soft, cap, backlog in ((256, 78, 31), (1024, 318, 127), (4096, 512, 128), (20_000, 512, 128),
                               (100, 23, 16), (10, 1, 16)):
        monkeypatch.setattr(resource, "getrlimit", lambda _which, soft=soft: (soft, 1 << 20))
        assert app.descriptor_plan(ServerLimits()) == (cap, backlog), soft
        assert app.connection_cap(ServerLimits()) == cap
    assert app.descriptor_plan(ServerLimits(max_connections=900, backlog=7)) == (900, 7)  # explicit wins
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert app.descriptor_plan(ServerLimits()) == (512, 128)


_SERVE_WITH_FEW_FILES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from mendstream.testing import ReplayServer, ServerLimits
server = ReplayServer({"basic": sys.stdin.buffer.read()}, limits=ServerLimits(header_timeout=60.0))
server.serve_forever(on_ready=lambda s: print(s.port, flush=True))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs RLIMIT_NOFILE and /proc")
def test_idle_connections_cannot_take_a_server_with_few_files_offline() -> None:
    """With a file limit below the old fixed cap of 512, idle connections made the server run out of
    descriptors (accept failed with EMFILE, logged a traceback a second, nothing was answered: the client's
    connect timed out). By default the cap now stays below the limit: connections over it get a 503, and
    the server serves again once the idle ones are gone."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _SERVE_WITH_FEW_FILES], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    socks: list[socket.socket] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(BASIC_SSE)
        proc.stdin.close()
        port = int(proc.stdout.readline())
        server = types_namespace(host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}/v1/messages")
        for _ in range(300):  # more than the 256 files the server may open
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        last = socks[-1]
        last.settimeout(5)
        answer = read_until_closed(last)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"open connections" in answer
        cap = int(answer.split(b"more than ")[1].split(b" open")[0])
        assert cap <= 256 // 3
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 10
        while not post_ok(server):  # type: ignore[arg-type]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert b"Too many open files" not in err and b"Traceback" not in err, err[-2000:]


def types_namespace(**fields: object) -> object:
    import types

    return types.SimpleNamespace(**fields)


def test_stall_with_ping_zero_is_served_as_a_silent_stall() -> None:
    """``--fault 'stall(seconds=5,ping=0)'`` planned pings for ever (2 GB in 9 s): now a plain stall."""
    from mendstream.testing.faults import parse_fault_spec

    plan = parse_fault_spec("stall(seconds=0.3,ping=0,after_events=1)")
    with ReplayServer({"basic": BASIC_SSE}, faults=plan) as server, httpx.Client(timeout=10) as client:
        start = time.monotonic()
        response = client.post(server.url, json=BODY)
        assert response.status_code == 200 and response.content == BASIC_SSE
        assert 0.3 <= time.monotonic() - start < 5
