# The replay server against real clients on 127.0.0.1: exact bytes, chunking and pacing from sidecars,
# fixture selection (header, body, order), error answers, keep-alive, 200 concurrent connections, and the
# official SDK's own .stream() pointed at it.
from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from conftest import BASIC_MESSAGE, BASIC_SSE, FIXTURES_DIR, TRUNCATED_SSE, fixture_bytes
from mendstream.testing import Fixture, FixtureSelector, NoFixtureError, ReplayServer, load_fixtures

BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def post(server: ReplayServer, body: object = BODY, **headers: str) -> httpx.Response:
    with httpx.Client() as client:
        return client.post(server.url, json=body, headers=headers)


def test_serves_fixture_bytes_exactly(replay_server: ReplayServer) -> None:
    for name in ("text_basic", "framing_cr_only", "fault_invalid_utf8", "fault_leading_bom"):
        response = post(replay_server, **{"x-mendstream-fixture": name})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"].startswith("req_replay_")
        assert response.content == fixture_bytes(name)


def test_header_selection_errors(replay_server: ReplayServer) -> None:
    response = post(replay_server, **{"x-mendstream-fixture": "no_such_fixture"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "no_such_fixture" in response.json()["error"]["message"]
    assert post(replay_server).status_code == 400  # select="header" and no header


def test_wrong_path_method_and_body(small_server: ReplayServer) -> None:
    with httpx.Client() as client:
        assert client.post(small_server.base_url + "/v1/complete", json=BODY).status_code == 404
        assert client.get(small_server.url).status_code == 405
        assert client.post(small_server.url, content=b"not json").status_code == 400


def test_order_selection_cycles_and_can_stop() -> None:
    streams = {"a": BASIC_SSE, "b": TRUNCATED_SSE}
    with ReplayServer(streams, select="order") as server:
        bodies = [post(server).content for _ in range(3)]
        assert bodies == [BASIC_SSE, TRUNCATED_SSE, BASIC_SSE]
        assert [r.fixture for r in server.requests] == ["a", "b", "a"]
    with ReplayServer(streams, select="order", cycle=False) as server:
        assert [post(server).status_code for _ in range(3)] == [200, 200, 404]


def test_body_matching_with_sidecars(tmp_path: Path) -> None:
    for name, text in (("paris", "capital of France?"), ("rome", "capital of Italy?")):
        (tmp_path / f"{name}.sse").write_bytes(BASIC_SSE.replace(b"Hello", name.encode()))
        request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
        sidecar = {"request": {"body": {**request, "stream": True}}, "response": {"status": 200}}
        (tmp_path / f"{name}.capture.json").write_text(json.dumps(sidecar))
    (tmp_path / "partial.sse").write_bytes(BASIC_SSE.replace(b"Hello", b"partial"))
    (tmp_path / "partial.capture.json").write_text(json.dumps({"match": {"metadata": {"user_id": "u7"}}}))
    with ReplayServer(tmp_path, select="body") as server:
        for name, text in (("rome", "capital of Italy?"), ("paris", "capital of France?")):
            body = {**BODY, "messages": [{"role": "user", "content": text}]}
            assert name.encode() in post(server, body).content
        assert b"partial" in post(server, {**BODY, "metadata": {"user_id": "u7"}}).content
        assert post(server, {**BODY, "messages": [{"role": "user", "content": "?"}]}).status_code == 404


def test_selector_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="auto, header, body, order"):
        FixtureSelector([Fixture("a", b"")], select="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        FixtureSelector([])
    with pytest.raises(NoFixtureError):
        FixtureSelector([Fixture("a", b"")], select="header").choose({}, {})
    with pytest.raises(ValueError, match="fast, captured"):
        ReplayServer({"a": b""}, pace="slow")  # type: ignore[arg-type]


def test_load_fixtures_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_fixtures(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no \*\.sse"):
        load_fixtures(tmp_path)
    names = [f.name for f in load_fixtures(FIXTURES_DIR)]
    assert names == sorted(p.name.removesuffix(".sse") for p in FIXTURES_DIR.glob("*.sse"))


def test_default_chunking_is_one_event_per_chunk() -> None:
    chunks = [c for c, _ in Fixture("a", BASIC_SSE).iter_chunks()]
    assert b"".join(chunks) == BASIC_SSE
    assert len(chunks) == BASIC_SSE.count(b"\n\n")
    assert all(c.endswith(b"\n\n") for c in chunks)


def test_captured_chunking_and_pacing(tmp_path: Path) -> None:
    (tmp_path / "paced.sse").write_bytes(BASIC_SSE)
    n = len(BASIC_SSE)
    chunks = [[10, 0.0], [n - 20, 150.0], [10, 300.0]]
    (tmp_path / "paced.capture.json").write_text(json.dumps({"response": {"status": 200}, "chunks": chunks}))
    fixture = load_fixtures(tmp_path)[0]
    assert [len(c) for c, _ in fixture.iter_chunks()] == [10, n - 20, 10]
    with ReplayServer(tmp_path, pace="captured", speed=2.0) as server:
        with httpx.Client() as client, client.stream("POST", server.url, json=BODY) as response:
            start = time.perf_counter()
            body = b"".join(response.iter_raw())
            elapsed = time.perf_counter() - start
        assert body == BASIC_SSE
        assert 0.12 <= elapsed < 1.0  # 300 ms captured, at speed 2
    with ReplayServer(tmp_path, pace="fast") as server, httpx.Client() as client:
        client.post(server.url, json=BODY)  # connect first: time only the response
        start = time.perf_counter()
        assert client.post(server.url, json=BODY).content == BASIC_SSE
        assert time.perf_counter() - start < 0.12


def test_status_headers_and_abort_from_sidecar(tmp_path: Path) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    (tmp_path / "e529.sse").write_bytes(json.dumps(error).encode())
    sidecar = {
        "response": {
            "status": 529,
            "headers": {
                "content-type": "application/json",
                "request-id": "req_529",
                "content-encoding": "gzip",
            },
        }
    }
    (tmp_path / "e529.capture.json").write_text(json.dumps(sidecar))
    (tmp_path / "cut.sse").write_bytes(TRUNCATED_SSE)
    (tmp_path / "cut.capture.json").write_text(json.dumps({"outcome": "error"}))
    with ReplayServer(tmp_path, select="header") as server:
        response = post(server, **{"x-mendstream-fixture": "e529"})
        assert response.status_code == 529
        assert response.headers["request-id"] == "req_529"
        assert "content-encoding" not in response.headers  # the fixture holds decoded bytes
        assert response.json() == error
        with pytest.raises(httpx.RemoteProtocolError):
            post(server, **{"x-mendstream-fixture": "cut"})


def test_non_streaming_request_gets_the_final_message(small_server: ReplayServer) -> None:
    response = post(small_server, {**BODY, "stream": False}, **{"x-mendstream-fixture": "basic"})
    assert response.status_code == 200
    assert response.json() == BASIC_MESSAGE
    response = post(small_server, {**BODY, "stream": False}, **{"x-mendstream-fixture": "truncated"})
    assert response.status_code == 500


def test_keep_alive_serves_many_requests_on_one_connection(small_server: ReplayServer) -> None:
    with socket.create_connection((small_server.host, small_server.port)) as sock:
        payload = json.dumps(BODY).encode()
        request = (
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-mendstream-fixture: basic\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(payload), payload)
        )
        sock.sendall(request + request)
        sock.settimeout(5)
        data = b""
        while data.count(b"0\r\n\r\n") < 2:
            data += sock.recv(65536)
        assert data.count(b"HTTP/1.1 200 OK") == 2


def test_chunked_request_body(small_server: ReplayServer) -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield json.dumps(BODY).encode()

    with httpx.Client() as client:
        response = client.post(small_server.url, content=gen(), headers={"x-mendstream-fixture": "basic"})
    assert response.content == BASIC_SSE
    assert small_server.requests[-1].body == BODY


async def test_200_concurrent_connections(small_server: ReplayServer) -> None:
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> bytes:
            headers = {"x-mendstream-fixture": "basic"}
            response = await client.post(small_server.url, json=BODY, headers=headers)
            return response.content

        bodies = await asyncio.gather(*(one() for _ in range(200)))
    assert all(b == BASIC_SSE for b in bodies)


def test_start_stop_and_async_context_manager() -> None:
    server = ReplayServer({"basic": BASIC_SSE}).start()
    assert server.start() is server  # idempotent
    port = server.port
    assert post(server).content == BASIC_SSE
    server.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=BODY)

    async def run() -> None:
        async with ReplayServer({"basic": BASIC_SSE}) as srv, httpx.AsyncClient() as client:
            assert (await client.post(srv.url, json=BODY)).content == BASIC_SSE

    asyncio.run(run())


def test_port_in_use_is_reported() -> None:
    with ReplayServer({"a": BASIC_SSE}) as first, pytest.raises(OSError):
        ReplayServer({"a": BASIC_SSE}, port=first.port).start()


def test_official_sdk_streams_from_the_server(small_server: ReplayServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=small_server.base_url, api_key="sk-ant-test", max_retries=0)
    with client.messages.stream(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mendstream-fixture": "basic"},
    ) as stream:
        assert stream.get_final_text() == "Hello world"
        assert stream.request_id is not None
    message = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mendstream-fixture": "basic"},
    )
    assert message.content[0].text == "Hello world"


def test_a_prefill_request_gets_the_rest_of_the_answer_so_continue_shows_nothing_twice() -> None:
    """With faults, Retry(on_partial="continue") resends the request with the text shown so far as an
    assistant prefill; the server answers with what follows it, so the stitched message is the fixture's."""
    anthropic = pytest.importorskip("anthropic")
    import mendstream
    from mendstream.testing.faults import parse_fault_spec

    long_text = fixture_bytes("text_basic")
    with ReplayServer({"text_basic": long_text}, faults=parse_fault_spec("cut(after_events=6);ok")) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
        retry = mendstream.Retry(max_attempts=3, backoff=0, on_partial="continue")
        params = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        with mendstream.stream(client, **params, retry=retry) as stream:
            shown = "".join(stream.text_stream)
            final = stream.get_final_message()
        expected_text = mendstream.replay(long_text).get_final_message().content[0].text
        assert [(a.mode, a.error is None) for a in stream.attempts] == [("first", False), ("continue", True)]
        assert shown == final.content[0].text == expected_text
        second = server.requests[-1].body
        assert second["messages"][-1]["role"] == "assistant"  # the prefill was sent


@pytest.mark.parametrize("mode", ["server", "mock transport"])
def test_a_server_that_says_nothing_is_caught_by_idle_timeout_and_retried(mode: str) -> None:
    """stall(headers=true): no status line for a while. With idle_timeout the client gives up on that attempt
    (a StreamStalledError) and Retry's next attempt succeeds."""
    anthropic = pytest.importorskip("anthropic")
    import mendstream
    from mendstream.testing import replay_transport
    from mendstream.testing.faults import parse_fault_spec
    from sdk_reference import sdk_http_module

    faults = parse_fault_spec("stall(seconds=3,headers=true);ok")
    params = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    retry = mendstream.Retry(max_attempts=2, backoff=0)
    if mode == "server":
        server = ReplayServer({"text_basic": fixture_bytes("text_basic")}, faults=faults).start()
        client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    else:
        http = sdk_http_module()
        transport = replay_transport({"text_basic": fixture_bytes("text_basic")}, faults=faults, library=http)
        client = anthropic.Anthropic(base_url="http://x.test", api_key="k", max_retries=0,
                                     http_client=http.Client(transport=transport))
    try:
        started = time.monotonic()
        if mode == "server":  # a real socket: the read timeout ends the wait
            with mendstream.stream(client, **params, retry=retry, idle_timeout=0.5) as stream:
                text = "".join(stream.text_stream)
            assert time.monotonic() - started < 2.5
            assert isinstance(stream.attempts[0].error, mendstream.StreamStalledError)  # also the SDK's timeout
            assert text == text_basic_text()
        else:  # in process the silence is a plain sleep: the stream simply starts late
            with mendstream.stream(client, **params) as stream:
                text = "".join(stream.text_stream)
            assert time.monotonic() - started >= 3.0 and text == text_basic_text()
    finally:
        client.close()
        if mode == "server":
            server.stop()


def text_basic_text() -> str:
    import mendstream

    return str(mendstream.replay(fixture_bytes("text_basic")).get_final_message().content[0].text)
