# The httpx transport (mendstream.httpx) for Anthropic-compatible endpoints: request building and error
# handling with respx, the same over httpx2 through mendstream.testing's mock transport, and async twins.
from __future__ import annotations

import json

import httpx
import pytest
import respx

import mendstream.httpx as mh
from conftest import BASIC_MESSAGE, BASIC_SSE
from mendstream.errors import UsageError
from mendstream.testing import ReplayServer, replay_transport

BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
SSE_HEADERS = {"content-type": "text/event-stream", "request-id": "req_1"}


@respx.mock
def test_request_headers_url_and_body() -> None:
    route = respx.post("https://example.test/anthropic/v1/messages").mock(
        return_value=httpx.Response(200, headers=SSE_HEADERS, content=BASIC_SSE)
    )
    with mh.stream(
        BODY, base_url="https://example.test/anthropic/", api_key="sk-ant-key1234567", headers={"X-Extra": "1"},
        client=httpx.Client(),
    ) as s:
        assert s.get_final_text() == "Hello world"
        assert s.message == BASIC_MESSAGE
        assert s.request_id == "req_1"
    request = route.calls.last.request
    assert request.headers["x-api-key"] == "sk-ant-key1234567"
    assert request.headers["anthropic-version"] == mh.DEFAULT_ANTHROPIC_VERSION
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-extra"] == "1"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {**BODY, "stream": True}
    assert s.response.is_closed


@respx.mock
def test_bearer_token_header_removal_and_full_url() -> None:
    route = respx.post("https://gw.test/v1/messages").mock(
        return_value=httpx.Response(200, headers=SSE_HEADERS, content=BASIC_SSE)
    )
    mh.stream(
        BODY, base_url="https://gw.test/v1/messages", auth_token="tok", anthropic_version=None,
        headers={"accept": ""}, client=httpx.Client(),
    ).until_done()
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer tok"
    assert "anthropic-version" not in request.headers
    assert request.headers.get("accept") != "text/event-stream"


@respx.mock
def test_non_2xx_raises_with_status_and_message() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    respx.post("https://x.test/v1/messages").mock(
        return_value=httpx.Response(529, json=body, headers={"request-id": "req_9"})
    )
    with pytest.raises(mh.HTTPStatusError) as info:
        mh.stream(BODY, base_url="https://x.test", client=httpx.Client())
    err = info.value
    assert err.status_code == 529
    assert err.error_type == "overloaded_error"
    assert err.error_message == "Overloaded"
    assert err.request_id == "req_9"
    assert err.body == body
    assert "529" in str(err) and "Overloaded" in str(err) and "req_9" in str(err)


@respx.mock
def test_non_json_error_body() -> None:
    respx.post("https://x.test/v1/messages").mock(return_value=httpx.Response(502, text="Bad gateway"))
    with pytest.raises(mh.HTTPStatusError, match="HTTP 502: Bad gateway"):
        mh.stream(BODY, base_url="https://x.test", client=httpx.Client())


@respx.mock
@pytest.mark.parametrize(
    ("content_type", "content", "needle"),
    [
        ("application/json", b'{"type":"error","error":{"type":"api_error","message":"nope"}}', "api_error: nope"),
        ("application/json", b'{"type":"message","content":[]}', "ignored"),
        ("text/html", b"<html>login</html>", "<html>login"),
    ],
)
def test_wrong_content_type(content_type: str, content: bytes, needle: str) -> None:
    respx.post("https://x.test/v1/messages").mock(
        return_value=httpx.Response(200, headers={"content-type": content_type}, content=content)
    )
    with pytest.raises(mh.ContentTypeError) as info:
        mh.stream(BODY, base_url="https://x.test", client=httpx.Client())
    assert info.value.status_code == 200
    assert content_type in str(info.value) and needle in str(info.value)


@respx.mock
def test_strict_content_type_option() -> None:
    respx.post("https://x.test/v1/messages").mock(
        return_value=httpx.Response(200, headers={"content-type": "text/plain"}, content=BASIC_SSE)
    )
    with pytest.raises(mh.ContentTypeError):
        mh.stream(BODY, base_url="https://x.test", client=httpx.Client())
    s = mh.stream(BODY, base_url="https://x.test", client=httpx.Client(), strict_content_type=False)
    assert s.get_final_text() == "Hello world"


def test_bad_body() -> None:
    with pytest.raises(UsageError, match="always streams"):
        mh.stream({**BODY, "stream": False})
    with pytest.raises(UsageError, match="mapping"):
        mh.stream([1, 2])  # type: ignore[arg-type]


def test_httpx2_client_through_mock_transport() -> None:
    httpx2 = pytest.importorskip("httpx2")
    transport = replay_transport({"basic": BASIC_SSE}, library="httpx2")
    client = httpx2.Client(transport=transport)
    s = mh.stream(BODY, base_url="http://mock.test", api_key="k", client=client)
    assert s.get_final_text() == "Hello world"
    assert isinstance(s.response, httpx2.Response)
    assert transport.requests[-1].headers["x-api-key"] == "k"


def test_default_client_against_the_replay_server() -> None:
    with ReplayServer({"basic": BASIC_SSE}) as server:
        assert mh.stream(BODY, base_url=server.base_url).get_final_text() == "Hello world"
        assert mh.stream(BODY, base_url=server.base_url, timeout=5.0).get_final_text() == "Hello world"


@respx.mock
async def test_async_with_respx() -> None:
    respx.post("https://x.test/v1/messages").mock(
        return_value=httpx.Response(200, headers=SSE_HEADERS, content=BASIC_SSE)
    )
    async with httpx.AsyncClient() as client:
        async with mh.astream(BODY, base_url="https://x.test", client=client) as s:
            assert [t async for t in s.text_stream] == ["Hello", " world"]
        assert s.response.is_closed
        s = await mh.astream(BODY, base_url="https://x.test", client=client)
        assert (await s.get_final_message()).content[0].text == "Hello world"


@respx.mock
async def test_async_errors() -> None:
    respx.post("https://x.test/v1/messages").mock(return_value=httpx.Response(401, json={"error": "bad key"}))
    async with httpx.AsyncClient() as client:
        with pytest.raises(mh.HTTPStatusError, match="HTTP 401: bad key"):
            await mh.astream(BODY, base_url="https://x.test", client=client)


async def test_async_default_client_and_httpx2() -> None:
    with ReplayServer({"basic": BASIC_SSE}) as server:
        async with mh.astream(BODY, base_url=server.base_url) as s:
            assert await s.get_final_text() == "Hello world"
    httpx2 = pytest.importorskip("httpx2")
    async with httpx2.AsyncClient(transport=replay_transport({"b": BASIC_SSE}, library="httpx2")) as client:
        s = await mh.astream(BODY, base_url="http://mock.test", client=client)
        assert await s.get_final_text() == "Hello world"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_endless_body_that_cannot_be_streamed_is_read_only_so_far(mode: str) -> None:
    # A 2xx JSON answer that never ends: its error is raised after at most ERROR_BODY_BYTES, not buffered for
    # ever. A plain socket server counts what the kernel accepted: it stops when the client closes.
    import asyncio
    import socket
    import threading

    from mendstream.errors import ContentTypeError
    from mendstream.transports.failures import ERROR_BODY_BYTES

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent = 0

    def serve() -> None:
        nonlocal sent
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
            try:
                while sent < 256 * ERROR_BODY_BYTES:  # a bound for the test; a hostile endpoint has none
                    conn.sendall(chunk)
                    sent += 65536
            except OSError:
                pass  # the client closed: it stopped reading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    base_url = f"http://127.0.0.1:{port}"
    with pytest.raises(ContentTypeError, match="application/json"):
        if mode == "sync":
            with mh.stream(body, base_url=base_url, api_key="k") as stream:
                stream.get_final_message()
        else:
            async def main() -> None:
                async with mh.astream(body, base_url=base_url, api_key="k") as stream:
                    await stream.get_final_message()
            asyncio.run(main())
    thread.join(10)
    listener.close()
    assert not thread.is_alive()
    assert sent < 32 * ERROR_BODY_BYTES, sent  # 1 MiB read, plus what the socket buffers took
