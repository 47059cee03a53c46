"""The replay server (ReplayServer, `mendstream serve`) answers the cloud clients as Bedrock and Vertex do (issue
11 §2): the real AnthropicBedrock client gets AWS event-stream frames on `/model/{id}/invoke-with-response-stream`
and a whole message on `/model/{id}/invoke`; AnthropicVertex gets SSE on `:streamRawPredict`. The model named in
the path picks the fixture. Every fixture, read through mendstream, ends as its expectation says; the unmodified
SDK streams clean fixtures; faults reach Bedrock clients as frames; request ids come as `x-amzn-requestid`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mendstream
from conftest import FIXTURE_NAMES, FIXTURES_DIR, check_outcome, expected
from mendstream.errors import APIStreamError
from mendstream.testing import ReplayServer
from mendstream.testing.faults import parse_fault_spec

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("botocore")

PARAMS: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CLEAN = [n for n in FIXTURE_NAMES if expected(n).get("sdk_compatible") and expected(n)["error"] is None]


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES_DIR) as replay:
        yield replay


def bedrock(base_url: str, cls: Any = None) -> Any:
    return (cls or anthropic.AnthropicBedrock)(
        aws_access_key="AKIDEXAMPLE", aws_secret_key="fake-secret", aws_region="us-east-1", base_url=base_url,
        max_retries=0,
    )


def vertex(base_url: str, cls: Any = None) -> Any:
    return (cls or anthropic.AnthropicVertex)(
        region="us-east5", project_id="proj-1", access_token="ya29.fake", base_url=base_url + "/v1", max_retries=0,
    )


def outcome(client: Any, name: str) -> tuple[dict[str, Any] | None, BaseException | None]:
    try:
        with mendstream.stream(client, model=name, **PARAMS) as stream:
            for _ in stream:
                pass
            return stream.message, None
    except Exception as exc:
        return None, exc
    finally:
        client.close()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_bedrock_client_every_fixture(server: ReplayServer, name: str) -> None:
    message, error = outcome(bedrock(server.base_url), name)
    check_outcome(name, message, error)
    request = server.requests[-1]
    assert request.path == f"/model/{name}/invoke-with-response-stream" and request.fixture == name


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_vertex_client_every_fixture(server: ReplayServer, name: str) -> None:
    message, error = outcome(vertex(server.base_url), name)
    check_outcome(name, message, error)
    assert server.requests[-1].path.endswith(f"/models/{name}:streamRawPredict")


def test_async_clients_on_faulty_fixtures(server: ReplayServer) -> None:
    names = ["fault_control_chars_in_event_json", "fault_tool_input_invalid_escape", "truncated_eof_in_tool_input",
             "tool_input_multiple_objects"]

    async def run(client: Any, name: str) -> tuple[dict[str, Any] | None, BaseException | None]:
        try:
            async with mendstream.astream(client, model=name, **PARAMS) as stream:
                await stream.until_done()
                return stream.message, None
        except Exception as exc:
            return None, exc
        finally:
            await client.close()

    for name in names:
        for make in (lambda: bedrock(server.base_url, anthropic.AsyncAnthropicBedrock),
                     lambda: vertex(server.base_url, anthropic.AsyncAnthropicVertex)):
            check_outcome(name, *asyncio.run(run(make(), name)))


@pytest.mark.parametrize("name", CLEAN[:6])
def test_the_unmodified_sdk_streams_from_the_server(server: ReplayServer, name: str) -> None:
    for client in (bedrock(server.base_url), vertex(server.base_url)):
        with client, client.messages.stream(model=name, **PARAMS) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == expected(name)["message"]["stop_reason"]


def test_bedrock_invoke_answers_the_whole_message(server: ReplayServer) -> None:
    with bedrock(server.base_url) as client:
        message = client.messages.create(model="text_basic", **PARAMS)
    assert server.requests[-1].path == "/model/text_basic/invoke"
    assert message.content[0].text == expected("text_basic")["message"]["content"][0]["text"]


def test_bedrock_request_id_and_faults_as_frames() -> None:
    faults = parse_fault_spec("error(type=overloaded_error,after_events=4);cut(after_events=4)")
    with ReplayServer(FIXTURES_DIR, faults=faults) as replay, bedrock(replay.base_url) as client:
        with pytest.raises(APIStreamError) as info, mendstream.stream(client, model="text_basic", **PARAMS) as s:
            s.until_done()
        assert info.value.error_type == "overloaded_error"
        assert isinstance(info.value, anthropic.APIStatusError)  # the SDK's class for it, too
        assert info.value.snapshot is not None  # what arrived before the error
        with pytest.raises(mendstream.IncompleteStreamError), mendstream.stream(
            client, model="text_basic", **PARAMS
        ) as s:
            s.until_done()
        with mendstream.stream(client, model="text_basic", **PARAMS) as s:
            s.until_done()
            assert s.request_id is not None and s.request_id.startswith("req_replay_text_basic")
        assert replay.requests[-1].headers["authorization"].startswith("AWS4-HMAC-SHA256")


def test_mendstream_serve_answers_a_bedrock_client() -> None:
    """The CLI's server, in its own process, as a user would run it: `mendstream serve DIR`."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "mendstream", "serve", str(FIXTURES_DIR), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "mendstream serve did not start"
                time.sleep(0.05)
        message, error = outcome(bedrock(f"http://127.0.0.1:{port}"), "fault_tool_input_control_chars")
        check_outcome("fault_tool_input_control_chars", message, error)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_bedrock_paths_answer_event_stream_frames(server: ReplayServer) -> None:
    import httpx

    from mendstream.core.eventstream import EventStreamDecoder

    response = httpx.post(server.base_url + "/model/text_basic/invoke-with-response-stream", json=PARAMS)
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-requestid"].startswith("req_replay_text_basic")
    assert "request-id" not in response.headers  # as Bedrock: its own header only
    frames = EventStreamDecoder().feed(response.content)
    assert frames and all(f.headers[":event-type"] == "chunk" for f in frames)
    sse = httpx.post(server.base_url + "/v1/messages", json={**PARAMS, "model": "m", "stream": True},
                     headers={"x-mendstream-fixture": "text_basic"})
    assert sse.headers["content-type"].startswith("text/event-stream") and "x-amzn-requestid" not in sse.headers


def test_a_bedrock_status_error_carries_the_amazon_request_id() -> None:
    with ReplayServer(FIXTURES_DIR, faults=parse_fault_spec("status(code=529)")) as replay, \
            bedrock(replay.base_url) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            mendstream.stream(client, model="text_basic", **PARAMS)
        assert info.value.status_code == 529
        assert info.value.request_id == "req_fault_0"  # from x-amzn-requestid: the SDK reads only request-id


def test_a_captured_event_stream_body_is_served_as_such_and_a_header_stall_survives_conversion() -> None:
    import httpx

    from mendstream.core.bedrock import sse_to_event_stream
    from mendstream.testing.faults import Stall

    frames = sse_to_event_stream(fixture_bytes_of("text_basic"))
    with ReplayServer({"captured": frames, "text_basic": fixture_bytes_of("text_basic")},
                      faults=Stall(0.3, headers=True)) as replay:
        response = httpx.post(replay.base_url + "/model/captured/invoke-with-response-stream", json=PARAMS)
        assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
        assert response.content == frames
        started = time.monotonic()
        converted = httpx.post(replay.base_url + "/model/text_basic/invoke-with-response-stream", json=PARAMS)
        assert time.monotonic() - started >= 0.3
        # the same events (frame padding varies, as Bedrock's does)
        assert mendstream.replay(converted.content).get_final_message() == mendstream.replay(frames).get_final_message()


def fixture_bytes_of(name: str) -> bytes:
    return (FIXTURES_DIR / f"{name}.sse").read_bytes()
