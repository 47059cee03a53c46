# One routing function: the replay server (real HTTP on 127.0.0.1) and the in-process mock transports of
# mendstream.testing give the same answer to the same request, and both honour a FaultPlan the same way
# (status replaced, delays waited, body cut so the client sees an incomplete read), with the real SDK too.
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import BASIC_SSE, TRUNCATED_SSE, error_sse
from mendstream.testing import (
    Fixture,
    ReplayServer,
    anthropic_client,
    async_anthropic_client,
    replay_transport,
    sdk_http_module,
)
from mendstream.testing.faults import PlannedResponse

FIXTURES = {"basic": BASIC_SSE, "truncated": TRUNCATED_SSE, "overloaded": error_sse("overloaded_error")}
BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
PARAMS: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
OVERLOADED = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "planned"}}).encode()


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


CASES: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("get", "GET", "/v1/messages", {}, b""),
    ("head", "HEAD", "/v1/messages", {}, b""),
    ("wrong path", "POST", "/v1/complete?x=1", {}, encode(BODY)),
    ("not json", "POST", "/v1/messages", {}, b"not json"),
    ("binary", "POST", "/v1/messages", {}, b"\xff\xfe\x00"),
    ("json list", "POST", "/v1/messages", {}, b"[1, 2]"),
    ("too deep", "POST", "/v1/messages", {}, b"[" * 5000),
    ("unknown fixture", "POST", "/v1/messages", {"x-mendstream-fixture": "nope"}, encode(BODY)),
    ("stream", "POST", "/v1/messages", {"x-mendstream-fixture": "basic"}, encode(BODY)),
    ("vertex", "POST", "/v1/projects/p/models/m:streamRawPredict", {"x-mendstream-fixture": "basic"},
     encode(BODY)),
    ("whole message", "POST", "/v1/messages", {"x-mendstream-fixture": "basic"}, encode({**BODY, "stream": False})),
    ("whole message of a broken stream", "POST", "/v1/messages", {"x-mendstream-fixture": "truncated"},
     encode({**BODY, "stream": False})),
    ("error stream", "POST", "/v1/messages", {"x-mendstream-fixture": "overloaded"}, encode(BODY)),
]


def answer(client: httpx.Client, base: str, method: str, path: str, headers: dict[str, str],
           content: bytes) -> tuple[int, str, bytes]:
    response = client.request(method, base + path, headers=headers, content=content)
    return response.status_code, response.headers.get("content-type", ""), response.content


@pytest.mark.parametrize(("case", "method", "path", "headers", "content"), CASES, ids=[c[0] for c in CASES])
def test_server_and_mock_transport_answer_alike(
    case: str, method: str, path: str, headers: dict[str, str], content: bytes
) -> None:
    with ReplayServer(FIXTURES) as server, httpx.Client(timeout=5) as client:
        real = answer(client, server.base_url, method, path, headers, content)
    with httpx.Client(transport=replay_transport(FIXTURES, library="httpx")) as client:
        mocked = answer(client, "http://mendstream.test", method, path, headers, content)
    assert mocked == real
    status, content_type, body = real
    if status >= 400 and method != "HEAD":
        assert content_type == "application/json"
        assert json.loads(body)["type"] == "error"
    expected_status = {"get": 405, "head": 405, "wrong path": 404, "not json": 400, "binary": 400,
                       "json list": 400, "too deep": 400, "unknown fixture": 404,
                       "whole message of a broken stream": 500}.get(case, 200)
    assert status == expected_status


# -- fault plans -------------------------------------------------------------------------------------------


@dataclass
class FailFirst:
    """Answers 529 overloaded to the first ``n`` requests, then lets them through."""

    n: int

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if ordinal >= self.n:
            return response
        headers = (("content-type", "application/json"), ("retry-after-ms", "1"))
        return PlannedResponse(529, headers, ((0.0, OVERLOADED),))


@dataclass
class CutAfter:
    """Keeps the first ``keep`` chunks of every response and drops the connection."""

    keep: int

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        return PlannedResponse(response.status, response.headers, response.chunks[: self.keep], "cut")


@dataclass
class Stall:
    """Waits ``seconds`` before the second chunk of request ``ordinal`` 0."""

    seconds: float

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
        if ordinal != 0 or len(response.chunks) < 2:
            return response
        (d0, c0), (d1, c1), *rest = response.chunks
        return PlannedResponse(response.status, response.headers, ((d0, c0), (d1 + self.seconds, c1), *rest))


def first_chunks(keep: int) -> bytes:
    return b"".join(c for c, _ in list(Fixture("b", BASIC_SSE).iter_chunks())[:keep])


def test_fail_first_plan_with_the_sdk_retrying() -> None:
    anthropic = pytest.importorskip("anthropic")
    with ReplayServer({"basic": BASIC_SSE}, faults=FailFirst(2)) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=2)
        with client.messages.stream(**PARAMS) as s:
            assert s.get_final_text() == "Hello world"
        assert [r.status for r in server.requests] == [529, 529, 200]
    client = anthropic_client({"basic": BASIC_SSE}, faults=FailFirst(2), max_retries=2)
    with client.messages.stream(**PARAMS) as s:
        assert s.get_final_text() == "Hello world"
    assert [r.status for r in client._client._transport.requests] == [529, 529, 200]
    with pytest.raises(anthropic.OverloadedError):
        anthropic_client({"basic": BASIC_SSE}, faults=FailFirst(1)).messages.create(**PARAMS)


def read_cut(client: httpx.Client, url: str) -> bytes:
    received = b""
    with client.stream("POST", url, json=BODY) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    return received


def test_cut_plan_on_the_server_and_the_mock_transports() -> None:
    with ReplayServer({"basic": BASIC_SSE}, faults=CutAfter(3)) as server, httpx.Client(timeout=5) as client:
        assert read_cut(client, server.url) == first_chunks(3)
        assert [r.status for r in server.requests] == [200]
    with httpx.Client(transport=replay_transport({"basic": BASIC_SSE}, library="httpx", faults=CutAfter(3))) as c:
        assert read_cut(c, "http://mendstream.test/v1/messages") == first_chunks(3)
    httpx2 = pytest.importorskip("httpx2")
    transport = replay_transport({"basic": BASIC_SSE}, library="httpx2", faults=CutAfter(3))
    with httpx2.Client(transport=transport) as c2, c2.stream("POST", "http://t/v1/messages", json=BODY) as r:
        received = b""
        with pytest.raises(httpx2.RemoteProtocolError):
            for chunk in r.iter_raw():
                received += chunk
        assert received == first_chunks(3)

    async def run() -> None:
        transport = replay_transport({"basic": BASIC_SSE}, library="httpx", faults=CutAfter(2))
        async with httpx.AsyncClient(transport=transport) as ac, ac.stream(
            "POST", "http://t/v1/messages", json=BODY
        ) as response:
            received = b""
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in response.aiter_raw():
                    received += chunk
            assert received == first_chunks(2)

    asyncio.run(run())


def test_cut_plan_surfaces_as_an_sdk_error() -> None:
    anthropic = pytest.importorskip("anthropic")
    # the SDK lets a read error after the head through as its HTTP library's own exception
    broken = (anthropic.APIConnectionError, sdk_http_module().RemoteProtocolError)
    with ReplayServer({"basic": BASIC_SSE}, faults=CutAfter(3)) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)
        with pytest.raises(broken), client.messages.stream(**PARAMS) as s:
            s.until_done()

    async def run() -> None:
        client = async_anthropic_client({"basic": BASIC_SSE}, faults=CutAfter(3))
        with pytest.raises(broken):
            async with client.messages.stream(**PARAMS) as s:
                await s.until_done()

    asyncio.run(run())


def test_delay_plan_is_waited() -> None:
    with ReplayServer({"basic": BASIC_SSE}, faults=Stall(0.3)) as server, httpx.Client(timeout=5) as client:
        with client.stream("POST", server.url, json=BODY) as response:
            start = time.monotonic()
            body = b"".join(response.iter_raw())
            assert time.monotonic() - start >= 0.25
        assert body == BASIC_SSE
        start = time.monotonic()
        assert client.post(server.url, json=BODY).content == BASIC_SSE  # ordinal 1: no stall
    transport = replay_transport({"basic": BASIC_SSE}, library="httpx", faults=Stall(0.3))
    with httpx.Client(transport=transport) as client:
        start = time.monotonic()
        assert client.post("http://t/v1/messages", json=BODY).content == BASIC_SSE
        assert time.monotonic() - start >= 0.25


def test_plan_sees_the_fixture_response_and_ordinals() -> None:
    seen: list[tuple[int, int, str, bool]] = []

    class Spy:
        def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse:
            body = b"".join(c for _, c in response.chunks)
            seen.append((ordinal, response.status, response.end, body == TRUNCATED_SSE))
            return response

    fixtures = {"basic": Fixture("basic", BASIC_SSE), "cut": Fixture("cut", TRUNCATED_SSE, abort=True)}
    with ReplayServer(fixtures, select="header", faults=Spy()) as server, httpx.Client(timeout=5) as client:
        client.post(server.url, json=BODY, headers={"x-mendstream-fixture": "basic"})
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(server.url, json=BODY, headers={"x-mendstream-fixture": "cut"})
        client.post(server.url, json=BODY)  # no header in header mode: a 400, still a Messages request
        client.get(server.base_url + "/health")  # not a Messages request: no ordinal
    assert seen == [(0, 200, "close", False), (1, 200, "cut", True), (2, 400, "close", False)]
