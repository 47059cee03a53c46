"""Vertex AI (issue 11): the real AnthropicVertex / AsyncAnthropicVertex clients against a uvicorn server on
127.0.0.1 answering `...:streamRawPredict` with every SSE fixture, sync and async, authenticated offline with
an access token, a google-auth credentials object, and one that google-auth refreshes against the same
server. Outcomes must equal the fixtures' expectations and the SSE parser's events; capture= replays."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mendstream
import mendstream.recording.capture
from cloud_server import CloudServer
from conftest import FIXTURE_NAMES, check_outcome, expected, fixture_bytes
from mendstream import MessageParser, StreamError, UsageError

anthropic = pytest.importorskip("anthropic")

PARAMS: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudServer]:
    with CloudServer() as server:
        yield server


def vertex(server: CloudServer, cls: Any = None, **auth: Any) -> Any:
    cls = cls or anthropic.AnthropicVertex
    if not auth:
        auth = {"access_token": "ya29.fake-token"}
    return cls(region="us-east5", project_id="proj-1", base_url=server.base_url + "/v1", max_retries=0, **auth)


def sse_events(name: str) -> list[dict[str, Any]]:
    parser = MessageParser()
    events: list[Any] = []
    try:
        events += parser.feed(fixture_bytes(name))
        events += parser.end()
    except StreamError as exc:
        events += exc.events
    return [e.to_dict() for e in events]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_vertex_client_every_fixture(cloud: CloudServer, name: str) -> None:
    client = vertex(cloud)
    events: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        with mendstream.stream(client, model=name, extra_headers={"x-chunk-size": "97"}, **PARAMS) as stream:
            for event in stream:  # kept one by one: the events before an error are yielded first
                events.append(event.to_dict())
            message = stream.message
    except Exception as exc:
        error = exc
    check_outcome(name, message, error)
    assert events == sse_events(name)
    request = cloud.requests[-1]
    assert request["path"] == f"/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/{name}:streamRawPredict"
    assert request["headers"]["authorization"] == "Bearer ya29.fake-token"
    assert "anthropic_version" in request["body"] and request["body"]["stream"] is True


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_async_vertex_client_every_fixture(cloud: CloudServer, name: str) -> None:
    client = vertex(cloud, anthropic.AsyncAnthropicVertex)
    message: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        async with mendstream.astream(client, model=name, extra_headers={"x-chunk-size": "13"}, **PARAMS) as stream:
            await stream.until_done()
            message = stream.message
    except Exception as exc:
        error = exc
    check_outcome(name, message, error)


def test_vertex_api_error_is_the_sdk_class(cloud: CloudServer) -> None:
    with pytest.raises(anthropic.OverloadedError) as info:
        mendstream.stream(vertex(cloud), model="api_error_overloaded", **PARAMS).until_done()
    assert isinstance(info.value, mendstream.APIStreamError)
    assert info.value.snapshot == expected("api_error_overloaded")["error"]["snapshot"]


def test_vertex_with_google_credentials_objects(cloud: CloudServer) -> None:
    google_credentials = pytest.importorskip("google.oauth2.credentials")
    ready = google_credentials.Credentials(token="ya29.from-object")
    with mendstream.stream(vertex(cloud, credentials=ready), model="text_basic", **PARAMS) as stream:
        assert stream.get_final_message().to_dict() == expected("text_basic")["message"]
    assert cloud.requests[-1]["headers"]["authorization"] == "Bearer ya29.from-object"
    # no token yet: google-auth refreshes it (a real OAuth token request, to the same local server)
    stale = google_credentials.Credentials(
        token=None, refresh_token="1//refresh", client_id="cid", client_secret="secret",
        token_uri=cloud.base_url + "/token",
    )
    with mendstream.stream(vertex(cloud, credentials=stale), model="tool_use_parallel", **PARAMS) as stream:
        assert stream.get_final_message().to_dict() == expected("tool_use_parallel")["message"]
    token_request = next(r for r in reversed(cloud.requests) if r["path"] == "/token")
    assert token_request["method"] == "POST"
    assert cloud.requests[-1]["headers"]["authorization"] == "Bearer ya29.refreshed"


def test_vertex_capture_and_replay(cloud: CloudServer, tmp_path: Path) -> None:
    capture = tmp_path / "vertex.sse"
    with mendstream.stream(vertex(cloud), model="web_search_with_citations", capture=capture, **PARAMS) as stream:
        live = stream.get_final_message().to_dict()
    assert capture.read_bytes() == fixture_bytes("web_search_with_citations")
    assert mendstream.replay(capture).get_final_message().to_dict() == live
    assert live == expected("web_search_with_citations")["message"]
    sidecar = json.loads(mendstream.recording.capture.sidecar_path(capture).read_text())
    assert ":streamRawPredict" in json.dumps(sidecar)


def test_vertex_full_message_stream_api(cloud: CloudServer) -> None:
    with mendstream.stream(vertex(cloud), model="thinking_signature_then_text", **PARAMS) as stream:
        text = "".join(stream.text_stream)
        assert text and stream.get_final_text() == text
        assert stream.current_message_snapshot.to_dict() == expected("thinking_signature_then_text")["message"]


def test_vertex_without_google_auth_is_a_usage_error(cloud: CloudServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = vertex(cloud, access_token=None)
    monkeypatch.setitem(sys.modules, "google.auth", None)
    before = len(cloud.requests)
    with pytest.raises(UsageError, match=r"pip install 'mendstream\[vertex\]'"):
        mendstream.stream(client, model="text_basic", **PARAMS)
    assert len(cloud.requests) == before
    # with a token nothing from google-auth is needed
    assert mendstream.stream(vertex(cloud), model="text_basic", **PARAMS).get_final_text()
