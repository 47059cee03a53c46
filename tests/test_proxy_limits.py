"""Issue 18, the proxy's items: every finding of the audit as a regression test, run as an attacker would, on
127.0.0.1 only, each bounded in count and time. Connections (header/idle/body deadlines, the connection cap
under a small file limit, 413/431, no traceback flood), request bodies (a limit refused up front, JSON values
counted before decoding, depth), the keep-alive race, a client that goes away, responses that end after
message_stop while the upstream keeps its connection, gzip, hop-by-hop headers, Content-Length, the stats
endpoint's access control and salted keys, query strings in the access log."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import FIXTURES_DIR, expected, fixture_bytes, sync_client  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.wire.proxy import ProxyLimits, conversation_key, create_app  # noqa: E402
from proxy_helpers import REQUEST, ProxyProcess, Served, exchange, free_port  # noqa: E402

SECRET = "sk-ant-api03-very-secret-value"
STREAM = {**REQUEST, "stream": True}


@pytest.fixture(scope="module")
def upstream() -> Any:
    with ReplayServer(FIXTURES_DIR, select="header") as server:
        yield server


# -- fake upstreams ---------------------------------------------------------------------------------------------


async def _read_all(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


class Upstream:
    """A fake upstream whose answer depends on the path; it records what it saw and when clients left."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.active = 0
        self.left = 0
        self.chunks_sent = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_all(receive)
        path = scope["path"]
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        self.seen.append({"method": scope["method"], "path": path, "headers": headers, "body": body})
        self.active += 1
        try:
            await getattr(self, "answer_" + path.strip("/").split("/")[0])(scope, receive, send)
        finally:
            self.active -= 1

    async def _until_gone(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left += 1

    async def answer_echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen = self.seen[-1]
        body = json.dumps({"headers": seen["headers"], "length": len(seen["body"])}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"x-resp-hop"), (b"x-resp-hop", b"1"), (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b"Basic"), (b"x-kept", b"yes")]})
        await send({"type": "http.response.body", "body": body})

    async def answer_head(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"1234")]})
        await send({"type": "http.response.body", "body": b""})

    async def answer_silent(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._until_gone(receive)  # never answers

    async def answer_endless(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.ensure_future(self._until_gone(receive))
        head = fixture_bytes("text_basic").split(b"event: content_block_stop")[0]
        await send({"type": "http.response.body", "body": head, "more_body": True})
        while not gone.done():
            await send({"type": "http.response.body", "body": b'event: ping\ndata: {"type": "ping"}\n\n',
                        "more_body": True})
            self.chunks_sent += 1
            await asyncio.sleep(0.001)

    async def answer_hang(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A whole stream (or one ending in an error event), then the connection kept open."""
        data = fixture_bytes("text_basic")
        if "error" in scope["query_string"].decode():
            data = data.split(b"event: content_block_stop")[0] + (
                b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n')
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": data, "more_body": True})
        await self._until_gone(receive)

    async def answer_trailing(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A whole stream, then, a moment later, more events after message_stop, then the end."""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": fixture_bytes("text_basic"), "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b'event: ping\ndata: {"type": "ping"}\n\n', "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def answer_gzip(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Messages requests: a repairable SSE stream gzip-encoded anyway; others: gzip JSON with a length."""
        if scope["path"].endswith("/v1/messages"):
            data = gzip.compress(fixture_bytes("fault_control_chars_in_event_json"))
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]})
            for i in range(0, len(data), 100):  # in pieces, as a network delivers it
                await send({"type": "http.response.body", "body": data[i:i + 100], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = gzip.compress(b'{"ok": true}')
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-encoding", b"gzip"),
            (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def answer_usage(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A stream whose usage numbers are not numbers."""
        data = fixture_bytes("text_basic").replace(b'"input_tokens":', b'"input_tokens":"abc","x":', 1)
        data = data.replace(b'"output_tokens":', b'"output_tokens":{"n":1},"y":')
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": data})

    async def answer_cut(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A JSON body announced with a content-length, cut half way."""
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
        raise RuntimeError("the upstream dies")  # uvicorn drops the connection


@pytest.fixture(scope="module")
def fake() -> Any:
    upstream = Upstream()
    with Served(upstream) as served:
        served.upstream = upstream  # type: ignore[attr-defined]
        yield served


@pytest.fixture(scope="module")
def proxy(fake: Served) -> Any:
    with Served(create_app(fake.base_url, limits=ProxyLimits(upstream_read_timeout=30))) as served:
        yield served


# -- request bodies ---------------------------------------------------------------------------------------------


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(proxy: Served) -> None:
    head = (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 10000000000\r\n\r\n")
    started = time.monotonic()
    answer = exchange(proxy.port, head, timeout=10)  # no body sent at all: the answer cannot wait for it
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b"request_too_large" in answer and b"33554432" in answer and b"connection: close" in answer.lower()


def test_a_body_growing_over_the_limit_while_read_is_refused(fake: Served) -> None:
    with Served(create_app(fake.base_url, limits=ProxyLimits(max_body_bytes=100_000))) as served:
        def chunks() -> Any:
            for _ in range(50):
                yield b"x" * 10_000  # chunked: no content-length to refuse it by

        response = httpx.post(served.base_url + "/v1/messages", content=chunks(), timeout=30)
        assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"
        assert fake.upstream.seen == [] or fake.upstream.seen[-1]["path"] != "/v1/messages"  # type: ignore[attr-defined]


def test_the_default_body_limit_is_the_messages_apis_32_mb() -> None:
    assert ProxyLimits().max_body_bytes == 32 * 1024 * 1024


def test_millions_of_empty_arrays_are_refused_before_decoding_and_others_are_served(proxy: Served,
                                                                                    upstream: ReplayServer) -> None:
    body = b'{"model":"m","max_tokens":1,"messages":[' + b"[]," * 9_000_000 + b"[]]}"  # 27 MB, 9M values
    assert len(body) < ProxyLimits().max_body_bytes

    async def run() -> tuple[httpx.Response, list[float]]:
        async with httpx.AsyncClient(timeout=60) as client:
            big = asyncio.ensure_future(client.post(proxy.base_url + "/echo/v1/messages", content=body))
            small: list[float] = []
            while not big.done():  # other clients are served meanwhile
                t0 = time.monotonic()
                r = await client.get(proxy.base_url + "/echo/x")
                assert r.status_code == 200
                small.append(time.monotonic() - t0)
                await asyncio.sleep(0.01)
            return await big, small

    response, small = asyncio.run(run())
    assert response.status_code == 413 and "JSON containers" in response.json()["error"]["message"]
    assert small and max(small) < 5  # generous: the refusal costs one linear count, not a decode


def test_json_5000_deep_is_a_400(proxy: Served) -> None:
    body = b'{"model":"m","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(proxy.base_url + "/echo/v1/messages", content=body)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]


def test_too_many_header_fields_is_431(proxy: Served) -> None:
    headers = {f"x-h{i}": "1" for i in range(150)}
    response = httpx.get(proxy.base_url + "/echo/x", headers=headers)
    assert response.status_code == 431


def test_an_oversized_head_is_431(proxy: Served) -> None:
    head = b"GET /echo/x HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = exchange(proxy.port, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_a_slow_body_gets_408(fake: Served) -> None:
    with Served(create_app(fake.base_url, limits=ProxyLimits(body_timeout=0.5))) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as conn:
            conn.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
            started = time.monotonic()
            answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5


# -- protocol correctness ---------------------------------------------------------------------------------------


def test_hop_by_hop_headers_never_cross_either_way(proxy: Served, fake: Served) -> None:
    response = httpx.post(proxy.base_url + "/echo/x", content=b"{}", headers={
        "connection": "x-hop, keep-alive", "x-hop": "1", "keep-alive": "timeout=5",
        "proxy-authorization": "Basic c2VjcmV0OnNlY3JldA==", "te": "trailers", "x-end-to-end": "kept"})
    seen = dict(response.json()["headers"])
    assert {"x-hop", "keep-alive", "proxy-authorization", "te", "upgrade"}.isdisjoint(seen)
    assert seen.get("connection", "keep-alive") == "keep-alive"  # the proxy's own, never the client's
    assert seen["x-end-to-end"] == "kept"
    assert "x-resp-hop" not in response.headers and "keep-alive" not in response.headers
    assert "proxy-authenticate" not in response.headers and response.headers["x-kept"] == "yes"


def test_content_length_is_kept_where_the_body_passes_unmodified(proxy: Served) -> None:
    response = httpx.post(proxy.base_url + "/echo/x", content=b"{}")
    assert int(response.headers["content-length"]) == len(response.content)
    head = httpx.head(proxy.base_url + "/head/x")
    assert head.headers["content-length"] == "1234" and head.content == b""


def test_the_response_ends_after_message_stop_while_the_upstream_keeps_its_connection(proxy: Served) -> None:
    for query, ending in (("", b"event: message_stop"), ("?error", b"event: error")):
        started = time.monotonic()
        response = httpx.post(proxy.base_url + "/hang/v1/messages" + query, json=STREAM, timeout=15)
        assert time.monotonic() - started < 5
        assert ending in response.content and response.content.rstrip().endswith(b"}")
    with sync_client(base_url=proxy.base_url + "/hang") as client:
        assert client.messages.create(**REQUEST, stream=False) is not None or True
        with client.messages.stream(**REQUEST) as stream:
            assert stream.get_final_message().stop_reason == "end_turn"


@pytest.mark.parametrize("coalesce", [0, 0.01])
def test_what_follows_message_stop_never_costs_the_client_its_connection(fake: Served, coalesce: float) -> None:
    """Events after message_stop are read and dropped after the client has its answer; the client's
    keep-alive connection stays usable (a failure there once cut it: the next request found it closed)."""
    with Served(create_app(fake.base_url, coalesce=coalesce)) as served, httpx.Client(timeout=10) as client:
        for _ in range(4):
            response = client.post(served.base_url + "/trailing/v1/messages", json=STREAM)
            assert response.status_code == 200 and response.content.endswith(b'{"type":"message_stop"}\n\n')
            assert b"ping" not in response.content.split(b"message_stop")[-1]
        time.sleep(0.7)  # past the proxy's reading on
        assert client.post(served.base_url + "/trailing/v1/messages", json=STREAM).status_code == 200
        assert served.app.errors == 0


def test_gzip_messages_stream_is_decoded_and_repaired(proxy: Served) -> None:
    name = "fault_control_chars_in_event_json"
    response = httpx.post(proxy.base_url + "/gzip/v1/messages", json=STREAM)
    assert "content-encoding" not in response.headers and b"event: message_stop" in response.content
    with sync_client(base_url=proxy.base_url + "/gzip") as client, client.messages.stream(**REQUEST) as stream:
        message = stream.get_final_message().to_dict(mode="json")
    assert message["content"][0]["text"] == expected(name)["message"]["content"][0]["text"]
    other = httpx.get(proxy.base_url + "/gzip/other")  # not a Messages stream: passed as sent, length kept
    assert other.headers["content-encoding"] == "gzip" and other.json() == {"ok": True}
    assert int(other.headers["content-length"]) == len(gzip.compress(b'{"ok": true}'))


def test_non_numeric_usage_is_not_an_error(proxy: Served) -> None:
    response = httpx.post(proxy.base_url + "/usage/v1/messages", json=STREAM)
    assert response.status_code == 200 and b"event: message_stop" in response.content
    stats = httpx.get(proxy.base_url + "/mendstream/stats").json()
    assert stats["requests"] >= 1


def test_a_cut_pass_through_body_cuts_the_client(proxy: Served) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(proxy.base_url + "/cut/x")
    assert httpx.get(proxy.base_url + "/echo/x").status_code == 200  # and the proxy is fine


def test_connect_absolute_form_and_options_asterisk_are_clean_4xx(proxy: Served) -> None:
    for request_line in (b"CONNECT 127.0.0.1:443 HTTP/1.1", b"OPTIONS * HTTP/1.1",
                         b"POST http://127.0.0.1:1/v1/messages HTTP/1.1"):
        answer = exchange(proxy.port, request_line + b"\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), (request_line, answer[:200])
        assert b"Traceback" not in answer and b"invalid_request_error" in answer


# -- a client that goes away ------------------------------------------------------------------------------------


def test_clients_that_leave_close_their_upstream_requests(proxy: Served, fake: Served) -> None:
    upstream: Upstream = fake.upstream  # type: ignore[attr-defined]
    before = upstream.left
    conns = []
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        conn.sendall(b"POST /silent/v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 2\r\n\r\n{}")
        conns.append(conn)
    deadline = time.monotonic() + 10
    while upstream.active < 20:
        assert time.monotonic() < deadline, upstream.active
        time.sleep(0.01)
    for conn in conns:
        conn.close()
    left_at = time.monotonic()
    while upstream.left - before < 20:
        assert time.monotonic() - left_at < 1.0, f"{upstream.left - before} of 20 upstream requests closed"
        time.sleep(0.01)


def test_an_endless_upstream_stops_being_read_when_the_client_leaves(proxy: Served, fake: Served) -> None:
    upstream: Upstream = fake.upstream  # type: ignore[attr-defined]
    before = upstream.left
    with httpx.Client(timeout=10) as client, client.stream("POST", proxy.base_url + "/endless/v1/messages",
                                                          json=STREAM) as response:
        for _ in response.iter_raw():
            if upstream.chunks_sent > 50:
                break
    left_at = time.monotonic()
    while upstream.left == before:
        assert time.monotonic() - left_at < 1.0, "the upstream is still being read"
        time.sleep(0.01)


# -- connections ------------------------------------------------------------------------------------------------


def _still_open(conns: list[socket.socket]) -> int:
    count = 0
    for conn in conns:
        conn.settimeout(0.05)
        try:
            while conn.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            continue
        except TimeoutError:
            count += 1
    return count


def test_silent_and_trickling_connections_only_displace_themselves(upstream: ReplayServer) -> None:
    """256 files (a cap of 64 connections): 300 silent and 100 partial-head connections; real requests are
    answered at once meanwhile, and after the header deadline no attacker is left open."""
    args = ["--upstream", upstream.base_url, "--header-timeout", "1", "--no-access-log"]
    with ProxyProcess(args, nofile=256) as proxy:
        attackers: list[socket.socket] = []
        try:
            for i in range(400):
                conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                if i >= 300:
                    conn.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
                attackers.append(conn)
            with sync_client(base_url=proxy.base_url) as client:
                for _ in range(3):
                    with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": "text_basic"}) as s:
                        assert s.get_final_message().stop_reason == "end_turn"
            time.sleep(1.5)
            assert _still_open(attackers) == 0
        finally:
            for conn in attackers:
                conn.close()
        log = proxy.log()
    assert "Traceback" not in log and len(log.splitlines()) < 30, log[-3000:]


def test_a_connection_flood_under_a_small_file_limit_never_takes_the_proxy_offline(upstream: ReplayServer) -> None:
    """256 files: 500 slow-body connections (each holds a request, so none can be displaced). Those over
    the cap get 503 in the API's shape at once; the rest get 408 at the body deadline; then real requests
    are served. No traceback, a handful of log lines."""
    args = ["--upstream", upstream.base_url, "--header-timeout", "1", "--body-timeout", "1", "--no-access-log"]
    with ProxyProcess(args, nofile=256) as proxy:
        attackers: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(500):
                conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    conn.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
                attackers.append(conn)
            for conn in attackers:
                conn.settimeout(5)
                try:
                    answer = conn.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    answer = b""
                assert answer.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408", b"")), answer[:100]
                refused += answer.startswith(b"HTTP/1.1 503")
            assert refused >= 500 - 64 - 5
            assert _still_open(attackers) == 0
            with sync_client(base_url=proxy.base_url) as client, client.messages.stream(
                    **REQUEST, extra_headers={"x-mendstream-fixture": "text_basic"}) as s:
                assert s.get_final_message().stop_reason == "end_turn"
        finally:
            for conn in attackers:
                conn.close()
        log = proxy.log()
    assert "Traceback" not in log and len(log.splitlines()) < 30, log[-3000:]


def test_keep_alive_race_200_clients_800_requests_no_reset(upstream: ReplayServer) -> None:
    """200 keep-alive clients (httpx: idle connections kept 5 s) make 4 requests each, pausing 4.5-5.5 s in
    between: around both their own pool's expiry and the upstream's. The proxy keeps idle connections
    longer than the clients do (75 s), so a client never sends into a connection the proxy is closing."""
    with Served(create_app(upstream.base_url)) as proxy:
        errors: list[str] = []

        async def client(i: int) -> None:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1)) as c:
                for j in range(4):
                    try:
                        r = await c.post(proxy.base_url + "/v1/messages", json=STREAM,
                                         headers={"x-mendstream-fixture": "text_basic"})
                        if r.status_code != 200 or not r.content.endswith(b"}\n\n"):
                            errors.append(f"status {r.status_code}")
                    except httpx.HTTPError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    if j < 3:
                        await asyncio.sleep(4.5 + (i % 100) / 100)

        async def run() -> None:
            await asyncio.gather(*(client(i) for i in range(200)))

        asyncio.run(run())
    assert errors == []


def test_default_keepalive_timeout_outlives_client_pools() -> None:
    # httpx / the anthropic SDK keep idle connections 5 s, aiohttp 15 s, Node's undici 4 s
    assert ProxyLimits().keepalive_timeout > 15


# -- stats, logs ------------------------------------------------------------------------------------------------


def test_stats_are_totals_for_anyone_conversations_only_with_the_token(fake: Served, upstream: ReplayServer) -> None:
    token = "t" * 32
    payload = {**STREAM, "system": "a secret system prompt"}
    with Served(create_app(upstream.base_url, stats_token=token)) as served:
        httpx.post(served.base_url + "/v1/messages", json=payload, headers={"x-mendstream-fixture": "text_basic"})
        assert httpx.get(served.base_url + "/mendstream/stats").status_code == 401
        assert httpx.get(served.base_url + "/mendstream/stats",
                         headers={"authorization": "Bearer " + "u" * 32}).status_code == 401
        stats = httpx.get(served.base_url + "/mendstream/stats", headers={"authorization": f"Bearer {token}"}).json()
        assert stats["requests"] == 1 and len(stats["conversations"]) == 1
        shown = next(iter(stats["conversations"]))
        assert shown != conversation_key(payload)  # salted: a guessed prompt cannot be confirmed
    with Served(create_app(upstream.base_url)) as served:
        httpx.post(served.base_url + "/v1/messages", json=payload, headers={"x-mendstream-fixture": "text_basic"})
        stats = httpx.get(served.base_url + "/mendstream/stats").json()
        assert stats["requests"] == 1 and "conversations" not in stats
    with Served(create_app(upstream.base_url, stats=False)) as served:
        assert httpx.get(served.base_url + "/mendstream/stats").status_code == 404
    with pytest.raises(Exception, match="16 characters"):
        create_app(upstream.base_url, stats_token="short")


def test_query_strings_never_reach_the_log(upstream: ReplayServer) -> None:
    with ProxyProcess(["--upstream", upstream.base_url]) as proxy:
        httpx.post(proxy.base_url + f"/v1/messages?key={SECRET}", json=STREAM,
                   headers={"x-mendstream-fixture": "text_basic", "x-api-key": SECRET})
        httpx.get(proxy.base_url + f"/v1/models?api_key={SECRET}")
        time.sleep(0.3)
        log = proxy.log()
    assert "/v1/messages?[redacted]" in log and SECRET not in log


def test_failures_are_one_line_each_and_rate_limited(fake: Served) -> None:
    port = free_port()  # nothing listens there
    with ProxyProcess(["--upstream", f"http://127.0.0.1:{port}", "--no-access-log", "--retry", "1"]) as proxy:
        for _ in range(200):
            assert httpx.post(proxy.base_url + "/v1/messages", json=STREAM).status_code == 502
        log = proxy.log()
    assert "Traceback" not in log
    assert sum("unreachable" in line for line in log.splitlines()) <= 3, log
