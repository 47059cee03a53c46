"""The proxy's upstream client (mendstream.wire.upstream) against a scripted HTTP/1.1 server on 127.0.0.1:
connection reuse, an upstream that closes idle connections (its own keep-alive timeout: the race the proxy
must not lose), Keep-Alive hints, HEAD, chunked / content-length / close-delimited bodies, timeouts,
cancellation, flow control; and the proxy on httpx (used behind an HTTP(S)_PROXY) giving the same bytes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("httptools")
httpx = pytest.importorskip("httpx")

from conftest import FIXTURE_NAMES, fixture_bytes  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.wire import proxy as proxy_module  # noqa: E402
from mendstream.wire.proxy import UpstreamError, create_app  # noqa: E402
from mendstream.wire.upstream import UpstreamPool, env_proxy_for  # noqa: E402
from proxy_helpers import REQUEST, Served  # noqa: E402

Handler = Callable[[str, bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """An HTTP/1.1 server whose answer to each request is ``handler(path, body, writer)`` (True: keep the
    connection for another request). Counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.closed = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                match = re.search(rb"content-length: *(\d+)", head, re.I)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                self.requests += 1
                path = head.split(b" ", 2)[1].decode()
                if not await self.handler(path, body, writer):
                    return
        finally:
            self.closed += 1
            writer.close()

    async def __aenter__(self) -> tuple[Scripted, UpstreamPool]:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.pool = UpstreamPool("http", "127.0.0.1", port, read_timeout=2.0, keepalive=30.0)
        return self, self.pool

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.aclose()
        self.server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def read(response: Any) -> bytes:
    out = b""
    async for chunk in response.chunks():
        out += chunk
    await response.aclose()
    return out


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_connections_are_reused() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"hello " + body))
        return True

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            for i in range(20):
                response = await pool.request("POST", "/x", [], b"%d" % i)
                assert response.status == 200 and await read(response) == b"hello %d" % i
            assert server.connections == 1 and server.requests == 20

    run(main())


def test_an_upstream_closing_idle_connections_never_fails_a_request() -> None:
    """The upstream closes each connection 50 ms after answering (its keep-alive timeout); requests come
    every 0-100 ms, so some find their pooled connection closed a moment ago, some race its close."""
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"ok"))
        await writer.drain()
        await asyncio.sleep(0.05)
        return False  # then closes, as an idle timeout would

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            for i in range(60):
                response = await pool.request("POST", "/x", [], b"{}")
                assert await read(response) == b"ok"
                await asyncio.sleep((i % 11) / 100)
            assert server.requests == 60  # each answered once
            assert pool.stale_retries > 0  # the race happened (requests sent into a connection being closed)

    run(main())


def test_when_every_pooled_connection_went_stale_the_retry_takes_a_new_one() -> None:
    """Two connections pooled; the upstream then drops a request on any connection it has answered before
    (as when its idle timer closes connections whose answers it finished sending long before a busy reader
    finished reading them: several at once). The retry must not take the other stale pooled connection."""
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        served = getattr(writer, "served", 0)
        if served:
            return False  # closes without answering
        writer.served = 1  # type: ignore[attr-defined]
        if path == "/slow":
            await asyncio.sleep(0.1)
        writer.write(ok(b"ok"))
        return True

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            first = await asyncio.gather(*(pool.request("GET", "/slow", [], b"") for _ in range(2)))
            for response in first:
                assert await read(response) == b"ok"
            assert len(pool._idle_conns) == 2
            assert await read(await pool.request("GET", "/x", [], b"")) == b"ok"
            assert pool.stale_retries == 1 and server.connections == 3

    run(main())


def test_keep_alive_hint_is_honoured() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"ok", b"keep-alive: timeout=1\r\n"))  # kept 0 s by us: the upstream closes first
        return True

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            for _ in range(3):
                assert await read(await pool.request("GET", "/x", [], b"")) == b"ok"
            assert server.connections == 3

    run(main())


def test_bodies_chunked_content_length_close_delimited_and_head() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            return True
        if path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
            return False
        if path == "/head":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
            return True
        writer.write(ok(b"plain"))
        return True

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            assert await read(await pool.request("GET", "/chunked", [], b"")) == b"hello world"
            assert await read(await pool.request("GET", "/plain", [], b"")) == b"plain"
            assert server.connections == 1
            head = await pool.request("HEAD", "/head", [], b"")
            assert (b"content-length", b"1234") in head.headers and await read(head) == b""
            assert await read(await pool.request("GET", "/close", [], b"")) == b"until the end"
            assert await read(await pool.request("GET", "/plain", [], b"")) == b"plain"

    run(main())


def test_failures_are_upstream_errors() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if path == "/silent":
            await asyncio.sleep(10)
        elif path == "/cut":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            return False
        elif path == "/garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        return False  # /gone: closes without a word

    async def main() -> None:
        async with Scripted(handler) as (_, pool):
            with pytest.raises(UpstreamError) as info:
                await pool.request("GET", "/gone", [], b"")
            assert info.value.kind == "closed"
            with pytest.raises(UpstreamError) as info:
                await pool.request("GET", "/silent", [], b"")
            assert info.value.kind == "timeout"
            with pytest.raises(UpstreamError) as info:
                await pool.request("GET", "/garbage", [], b"")
            assert info.value.kind == "protocol"
            response = await pool.request("GET", "/cut", [], b"")
            with pytest.raises(UpstreamError, match="mid-response"):
                await read(response)
        with pytest.raises(UpstreamError) as info:
            await UpstreamPool("http", "127.0.0.1", 1).request("GET", "/", [], b"")
        assert info.value.kind == "connect"

    run(main())


def test_a_cancelled_request_closes_its_connection() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with Scripted(handler) as (server, pool):
            response = await pool.request("GET", "/endless", [], b"")

            async def consume() -> None:
                async for _ in response.chunks():
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await response.aclose()
            for _ in range(100):
                if server.closed:
                    break
                await asyncio.sleep(0.01)
            assert server.closed == 1

    run(main())


def test_a_slow_reader_pauses_the_connection() -> None:
    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"x" * (8 * 1024 * 1024)))
        await writer.drain()
        return True

    async def main() -> None:
        async with Scripted(handler) as (_, pool):
            response = await pool.request("GET", "/big", [], b"")
            await asyncio.sleep(0.3)  # the body arrives while nobody reads: at most ~1 MiB is queued
            assert response._queued < 4 * 1024 * 1024
            assert len(await read(response)) == 8 * 1024 * 1024

    run(main())


def test_an_http_proxy_in_the_environment_puts_the_proxy_on_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert env_proxy_for("https", "api.anthropic.com") == "http://127.0.0.1:3128"
    assert env_proxy_for("https", "internal.example") is None
    assert env_proxy_for("http", "api.anthropic.com") is None
    app = create_app("https://api.anthropic.com")
    assert isinstance(app._make_client(), proxy_module._HttpxClient)


@pytest.mark.parametrize("client", ["pool", "httpx"])
def test_every_clean_fixture_byte_for_byte_on_either_client(client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import FIXTURES_DIR
    from test_rewrite import is_clean

    if client == "httpx":
        monkeypatch.setattr(proxy_module.ProxyApp, "_make_client",
                            lambda self: proxy_module._HttpxClient(self.upstream.origin, self.limits))
    with ReplayServer(FIXTURES_DIR, select="header") as upstream, \
            Served(create_app(upstream.base_url, coalesce=0)) as proxy, \
            httpx.Client() as http:
        for name in [n for n in FIXTURE_NAMES if is_clean(fixture_bytes(n))]:
            response = http.post(proxy.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                                 headers={"x-mendstream-fixture": name})
            assert response.content == fixture_bytes(name), name


def test_https_upstream_verified_with_ssl_cert_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS to the upstream, verified against the CA that SSL_CERT_FILE names (as httpx honours it)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)

    async def handler(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"over tls"))
        return True

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        scripted = Scripted(handler)
        server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            pool = UpstreamPool("https", "127.0.0.1", port, read_timeout=5)
            assert await read(await pool.request("GET", "/", [], b"")) == b"over tls"
            assert await read(await pool.request("GET", "/", [], b"")) == b"over tls"
            assert scripted.connections == 1
            await pool.aclose()
            monkeypatch.delenv("SSL_CERT_FILE")  # an unknown CA is refused
            with pytest.raises(UpstreamError) as info:
                await UpstreamPool("https", "127.0.0.1", port, read_timeout=5).request("GET", "/", [], b"")
            assert info.value.kind == "connect" and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        finally:
            server.close()

    run(main())
