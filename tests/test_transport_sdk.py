# The SDK transport (mendstream.stream / astream) with the real anthropic client, over the replay server on
# 127.0.0.1 and over the in-process mock transport: the SDK surface, mid-stream errors as the SDK's classes,
# HTTP errors exactly as the SDK raises them, retries, early close, beta routing, the cache hook, refused
# clients. Runs under anthropic 0.x (httpx) and >= 1.0 (httpx2).
from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import mendstream
from conftest import BASIC_MESSAGE, BASIC_SSE, TRUNCATED_SSE, error_sse
from mendstream.errors import APIStreamError, ContentTypeError, IncompleteStreamError, UsageError
from mendstream.testing import Fixture, ReplayServer, anthropic_client, async_anthropic_client, sdk_http_module
from mendstream.transports.sdk import _reject_non_sse_client, astream, sdk_error_class, stream

anthropic = pytest.importorskip("anthropic")

PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def pick(name: str) -> dict[str, Any]:
    return {"extra_headers": {"x-mendstream-fixture": name}}


def sync_client(server: ReplayServer, **options: Any) -> Any:
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", **options)


def test_top_level_astream_is_the_sdk_transport() -> None:
    import mendstream.transports.sdk as sdk

    assert mendstream.astream is sdk.astream


def test_top_level_stream_is_the_sdk_transport() -> None:
    import mendstream.transports.sdk as sdk

    assert mendstream.stream is sdk.stream


def test_sdk_surface_over_http(small_server: ReplayServer) -> None:
    client = sync_client(small_server)
    with stream(client, **PARAMS, **pick("basic")) as s:
        types_seen = [event.type for event in s]
        final = s.get_final_message()
        assert isinstance(final, anthropic.types.Message)
        assert final.content[0].text == "Hello world"
        assert s.get_final_text() == "Hello world"
        assert s.current_message_snapshot.id == "msg_t1"
        assert s.message == BASIC_MESSAGE
        assert s.repairs == []
        assert s.request_id is not None and s.request_id.startswith("req_replay_basic")
        assert s.response.status_code == 200
    assert types_seen == [
        "message_start", "content_block_start", "content_block_delta", "text", "content_block_delta", "text",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert s.response.is_closed
    s2 = stream(client, **PARAMS, **pick("basic"))
    assert "".join(s2.text_stream) == "Hello world"
    s2.until_done()
    assert s2.response.is_closed


def test_request_goes_through_messages_create(small_server: ReplayServer) -> None:
    client = sync_client(small_server, default_headers={"x-team": "t1"})
    stream(client, **PARAMS, **pick("basic"), system="be brief").until_done()
    request = small_server.requests[-1]
    assert request.body == {**PARAMS, "system": "be brief", "stream": True}
    assert request.headers["x-team"] == "t1"
    assert request.headers["user-agent"].startswith("Anthropic/Python")
    assert request.path == "/v1/messages"


def test_betas_use_the_beta_resource(small_server: ReplayServer) -> None:
    stream(sync_client(small_server), **PARAMS, **pick("basic"), betas=["x-beta"]).until_done()
    request = small_server.requests[-1]
    assert request.path.startswith("/v1/messages")
    assert request.headers["anthropic-beta"] == "x-beta"


def test_bad_arguments() -> None:
    client = anthropic_client({"basic": BASIC_SSE})
    with pytest.raises(UsageError, match="always streams"):
        stream(client, **PARAMS, stream=False)
    with pytest.raises(UsageError, match="output_config"):
        stream(client, **PARAMS, output_format={"type": "object"})  # a schema dict belongs in output_config


@pytest.mark.parametrize(
    ("error_type", "sdk_class"),
    [
        ("overloaded_error", "OverloadedError"),
        ("rate_limit_error", "RateLimitError"),
        ("api_error", "InternalServerError"),
        ("invalid_request_error", "BadRequestError"),
        ("authentication_error", "AuthenticationError"),
        ("permission_error", "PermissionDeniedError"),
        ("not_found_error", "NotFoundError"),
        ("something_new_error", "APIStatusError"),
    ],
)
def test_mid_stream_errors_are_the_sdks_classes(error_type: str, sdk_class: str) -> None:
    client = anthropic_client({"e": error_sse(error_type, "it broke")})
    s = stream(client, **PARAMS)
    with pytest.raises(APIStreamError) as info:
        s.get_final_message()
    err = info.value
    assert isinstance(err, getattr(anthropic, sdk_class))
    assert isinstance(err, anthropic.APIStatusError)
    assert err.error_type == error_type
    assert err.request_id == "req_mock_e"  # the request-id header before the body's, as SDK 2.17 reads it
    assert err.body == {"type": "error", "error": {"type": error_type, "message": "it broke"}, "request_id": "req_in_body"}
    assert err.snapshot["content"] == [{"type": "text", "text": "Hello"}]
    assert err.response is s.response
    assert s.response.is_closed
    assert "it broke" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and again.error_type == error_type


def test_error_request_id_falls_back_to_the_header() -> None:
    client = anthropic_client({"e": error_sse("overloaded_error", request_id=None)})
    with pytest.raises(anthropic.OverloadedError) as info:
        stream(client, **PARAMS).until_done()
    assert info.value.request_id == "req_mock_e"


def test_sdk_error_class_is_cached() -> None:
    assert sdk_error_class("overloaded_error") is sdk_error_class("overloaded_error")
    assert issubclass(sdk_error_class("rate_limit_error"), anthropic.RateLimitError)


def test_http_errors_surface_exactly_as_the_sdk_raises_them(tmp_path: Path) -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    (tmp_path / "e429.sse").write_text(json.dumps(body))
    headers = {"content-type": "application/json", "request-id": "req_429"}
    (tmp_path / "e429.capture.json").write_text(json.dumps({"response": {"status": 429, "headers": headers}}))
    with ReplayServer(tmp_path) as server:
        client = sync_client(server)
        with pytest.raises(anthropic.RateLimitError) as ours:
            stream(client, **PARAMS)
        with pytest.raises(anthropic.RateLimitError) as theirs, client.messages.stream(**PARAMS) as s:
            s.until_done()
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    assert ours.value.request_id == "req_429"
    assert not isinstance(ours.value, APIStreamError)


def test_retries_before_the_first_byte_follow_the_client() -> None:
    overloaded = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "later"}})
    fixtures = {
        "a": Fixture("a", overloaded.encode(), status=529,
                     headers=(("content-type", "application/json"), ("retry-after-ms", "1"))),
        "b": Fixture("b", BASIC_SSE),
    }
    with ReplayServer(fixtures, select="order") as server:
        s = stream(sync_client(server, max_retries=1), **PARAMS)
        assert s.get_final_text() == "Hello world"
        assert [r.status for r in server.requests] == [529, 200]
        assert server.requests[1].headers["x-stainless-retry-count"] == "1"
        server.selector.reset()
        with pytest.raises(anthropic.OverloadedError):
            stream(sync_client(server, max_retries=0), **PARAMS)


def test_breaking_out_and_closing_release_the_connection(small_server: ReplayServer) -> None:
    client = sync_client(small_server)
    with stream(client, **PARAMS, **pick("basic")) as s:
        for event in s:
            if event.type == "text":
                break
        assert not s.response.is_closed
    assert s.response.is_closed
    s = stream(client, **PARAMS, **pick("basic"))
    next(iter(s))
    s.close()
    s.close()
    assert s.response.is_closed
    # the pool got the connection back: a later request still works
    assert stream(client, **PARAMS, **pick("basic")).get_final_text() == "Hello world"


def test_incomplete_stream_keeps_the_partial_message() -> None:
    client = anthropic_client({"t": TRUNCATED_SSE})
    with pytest.raises(IncompleteStreamError) as info:
        stream(client, **PARAMS).get_final_message()
    assert info.value.snapshot["content"] == [{"type": "text", "text": "Hello world"}]


def test_connection_dropped_mid_body(tmp_path: Path) -> None:
    (tmp_path / "cut.sse").write_bytes(TRUNCATED_SSE)
    (tmp_path / "cut.capture.json").write_text(json.dumps({"outcome": "error"}))
    (tmp_path / "whole.sse").write_bytes(BASIC_SSE)
    (tmp_path / "whole.capture.json").write_text(json.dumps({"outcome": "error"}))
    with ReplayServer(tmp_path, select="header") as server:
        client = sync_client(server)
        with pytest.raises(IncompleteStreamError) as info:
            stream(client, **PARAMS, **pick("cut")).until_done()
        assert type(info.value.transport_error).__name__ == "RemoteProtocolError"
        assert "RemoteProtocolError" in "".join(info.value.__notes__)
        assert info.value.snapshot["content"][0]["text"] == "Hello world"
        # a complete message followed by a reset connection is still a complete message
        assert stream(client, **PARAMS, **pick("whole")).get_final_message().to_dict() == BASIC_MESSAGE


def test_non_sse_responses_are_refused(tmp_path: Path) -> None:
    (tmp_path / "html.sse").write_bytes(b"<html>proxy error</html>")
    (tmp_path / "html.capture.json").write_text(json.dumps({"response": {"headers": {"content-type": "text/html"}}}))
    with ReplayServer(tmp_path) as server, pytest.raises(ContentTypeError, match="text/html"):
        stream(sync_client(server), **PARAMS)


def test_bedrock_without_botocore_is_refused_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 11: AnthropicBedrock is now read (tests/test_bedrock.py); only a missing extra is refused.
    named = type("AnthropicBedrock", (), {"api_key": None})()
    _reject_non_sse_client(named)
    monkeypatch.setitem(sys.modules, "botocore", None)  # as if not installed: `import botocore` fails
    with pytest.raises(UsageError, match=r"pip install 'mendstream\[bedrock\]'"):
        _reject_non_sse_client(named)
    _reject_non_sse_client(anthropic_client({"b": BASIC_SSE}))


def test_vertex_and_foundry_clients_stream_sse(small_server: ReplayServer) -> None:
    module = sdk_http_module()
    vertex = anthropic.AnthropicVertex(
        region="us-east5", project_id="p", access_token="tok", base_url=small_server.base_url + "/v1",
        http_client=module.Client(), max_retries=0,
    )
    assert stream(vertex, **PARAMS, **pick("basic")).get_final_text() == "Hello world"
    assert small_server.requests[-1].path.endswith("claude-test:streamRawPredict")
    if hasattr(anthropic, "AnthropicFoundry"):
        foundry = anthropic.AnthropicFoundry(api_key="k", base_url=small_server.base_url + "/anthropic")
        assert stream(foundry, **PARAMS, **pick("basic")).get_final_text() == "Hello world"


def test_cache_plan_is_applied_before_sending(small_server: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def apply_cache(params: dict[str, Any], cache: Any) -> dict[str, Any]:
        calls.append(cache)
        return {**params, "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}

    fake = types.ModuleType("mendstream.cache.options")
    fake.apply_cache = apply_cache  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mendstream.cache.options", fake)
    client = sync_client(small_server)
    stream(client, **PARAMS, **pick("basic"), cache="auto").until_done()
    assert calls == ["auto"]
    assert small_server.requests[-1].body["system"][0]["cache_control"] == {"type": "ephemeral"}
    stream(client, **PARAMS, **pick("basic")).until_done()
    assert calls == ["auto"] and "system" not in small_server.requests[-1].body


async def test_async_surface(small_server: ReplayServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=small_server.base_url, api_key="sk-ant-test", max_retries=0)
    async with astream(client, **PARAMS, **pick("basic")) as s:
        texts = [t async for t in s.text_stream]
        assert texts == ["Hello", " world"]
        assert (await s.get_final_message()).content[0].text == "Hello world"
        assert s.message == BASIC_MESSAGE
    assert s.response.is_closed
    s = await astream(client, **PARAMS, **pick("basic"))
    assert await s.get_final_text() == "Hello world"
    opener = astream(client, **PARAMS, **pick("basic"))
    s = await opener
    await s.close()
    assert s.response.is_closed
    with pytest.raises(RuntimeError, match="already been sent"):
        await opener


async def test_async_errors() -> None:
    client = async_anthropic_client({"e": error_sse("overloaded_error")})
    with pytest.raises(anthropic.OverloadedError) as info:
        async with astream(client, **PARAMS) as s:
            await s.until_done()
    assert isinstance(info.value, APIStreamError)
    assert info.value.snapshot["content"][0]["text"] == "Hello"
    assert s.response.is_closed
