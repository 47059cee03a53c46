"""RepairTransport / AsyncRepairTransport with the real anthropic SDK against a ReplayServer on 127.0.0.1:
every fixture through the unmodified messages.stream() ends as mendstream reads it (or the SDK raises where
mendstream raises); clean streams pass byte for byte; requests are cache-planned; other paths untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")

from conftest import FIXTURE_NAMES, expected, fixture_bytes, sync_client  # noqa: E402
from mendstream import AsyncRepairTransport, Repair, RepairTransport  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from sdk_reference import sdk_http_module  # noqa: E402
from test_rewrite import is_clean, without_sdk_nulls  # noqa: E402

http = sdk_http_module()
REQUEST = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def client_for(server: ReplayServer, transport: Any) -> Any:
    return sync_client(api_key="sk-ant-secret-key", base_url=server.base_url, http_client=http.Client(transport=transport))


def sdk_stream(client: Any, fixture: str) -> tuple[dict[str, Any] | None, BaseException | None]:
    try:
        with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": fixture}) as stream:
            for _ in stream:
                pass
            return stream.get_final_message().to_dict(mode="json"), None
    except Exception as exc:
        return None, exc


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_sdk_through_transport_on_every_fixture(replay_server: ReplayServer, name: str) -> None:
    repairs: list[Repair] = []
    client = client_for(replay_server, RepairTransport(on_repair=repairs.append))
    message, error = sdk_stream(client, name)
    exp = expected(name)
    if exp["error"] is None:
        assert error is None, f"{name}: {error!r}"
        assert message is not None and without_sdk_nulls(message, exp["message"]) == exp["message"]
        # Bytes after message_stop are dropped unread, so a repair they would have caused is not reported.
        kinds = [r.kind for r in repairs if r.kind != "sse_framing"]
        assert kinds == [k for k in exp["repairs"] if k != "event_after_message_stop"]
    else:
        assert error is not None, f"{name}: the SDK returned a message where mendstream raises"


@pytest.mark.parametrize("name", ["fault_control_chars_in_event_json", "fault_tool_input_control_chars",
                                  "tool_input_multiple_objects", "fault_missing_message_start"])
def test_same_fixtures_fail_or_differ_without_the_transport(replay_server: ReplayServer, name: str) -> None:
    # The reason the transport exists: the bare SDK raises, or silently returns a different message.
    client = sync_client(base_url=replay_server.base_url, http_client=http.Client())
    message, error = sdk_stream(client, name)
    exp = expected(name)["message"]
    assert error is not None or without_sdk_nulls(message or {}, exp) != exp


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if is_clean(fixture_bytes(n))][:8])
def test_clean_streams_pass_byte_for_byte(replay_server: ReplayServer, name: str) -> None:
    with http.Client(transport=RepairTransport()) as client:
        response = client.post(replay_server.base_url + "/v1/messages", json={**REQUEST, "stream": True},
                               headers={"x-mendstream-fixture": name})
        assert response.content == fixture_bytes(name)


def test_request_with_six_markers_arrives_with_at_most_four() -> None:
    blocks = [{"type": "text", "text": f"part {i} " * 400, "cache_control": {"type": "ephemeral"}}
              for i in range(6)]
    payload = {**REQUEST, "messages": [{"role": "user", "content": blocks}]}
    with ReplayServer({"basic": fixture_bytes("text_basic")}) as server:
        client = client_for(server, RepairTransport(cache=True))
        client.messages.create(**payload, stream=True).close()
        body = server.requests[-1].body
    markers = sum("cache_control" in b for b in body["messages"][0]["content"])
    assert markers <= 4
    for block in body["messages"][0]["content"]:
        block.pop("cache_control", None)
    assert body["messages"][0]["content"] == [{"type": "text", "text": b["text"]} for b in blocks]


def test_other_paths_are_untouched(replay_server: ReplayServer) -> None:
    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append((request.url.path, request.content))
        return http.Response(200, headers={"content-type": "text/event-stream"}, content=b"data: raw\n\n")

    with http.Client(transport=RepairTransport(http.MockTransport(handler), cache=True)) as client:
        response = client.post("http://x.test/v1/messages/count_tokens", content=b"not json")
    assert response.content == b"data: raw\n\n" and seen == [("/v1/messages/count_tokens", b"not json")]


def test_capture_writes_original_bytes_and_no_secret(replay_server: ReplayServer, tmp_path: Path) -> None:
    client = client_for(replay_server, RepairTransport(capture=tmp_path))
    sdk_stream(client, "fault_leading_bom")
    files = sorted(tmp_path.iterdir())
    bodies = [f for f in files if f.suffix == ".sse"]
    assert len(bodies) == 1 and bodies[0].read_bytes() == fixture_bytes("fault_leading_bom")
    assert [f.name for f in files] == [bodies[0].name.removesuffix(".sse") + ".capture.json", bodies[0].name]
    assert all(b"sk-ant-secret-key" not in f.read_bytes() for f in files)


def test_upstream_http_error_reaches_the_sdk_as_sent() -> None:
    def handler(request: Any) -> Any:
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return http.Response(529, json=body)

    client = sync_client(base_url="http://x.test",
                         http_client=http.Client(transport=RepairTransport(http.MockTransport(handler))))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(**REQUEST, stream=True)
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"


def test_cut_connection_becomes_an_sdk_error() -> None:
    data = fixture_bytes("text_basic")
    cut = data[: data.index(b"event: content_block_stop")]

    class Cut(http.SyncByteStream):
        def __iter__(self) -> Any:
            yield cut
            raise http.ReadError("connection reset")

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, stream=Cut())

    client = sync_client(base_url="http://x.test",
                         http_client=http.Client(transport=RepairTransport(http.MockTransport(handler))))
    with pytest.raises(anthropic.APIStatusError, match="incomplete_stream_error"), \
            client.messages.stream(**REQUEST) as stream:
        stream.get_final_message()


async def test_async_transport_on_faulty_fixtures(replay_server: ReplayServer) -> None:
    client = anthropic.AsyncAnthropic(api_key="k", base_url=replay_server.base_url, max_retries=0,
                                      http_client=http.AsyncClient(transport=AsyncRepairTransport()))
    for name in ["fault_tool_input_invalid_escape", "framing_data_only", "truncated_eof_in_tool_input",
                 "tool_input_cumulative_objects"]:
        exp = expected(name)
        try:
            async with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": name}) as s:
                message = (await s.get_final_message()).to_dict(mode="json")
            error = None
        except Exception as exc:
            message, error = None, exc
        if exp["error"] is None:
            assert error is None and without_sdk_nulls(message or {}, exp["message"]) == exp["message"], name
        else:
            assert error is not None, name
    await client.close()


def test_inner_of_another_family_is_rejected() -> None:
    from mendstream import UsageError

    with pytest.raises(UsageError, match="httpx or httpx2"):
        RepairTransport(object())
    with pytest.raises(UsageError, match="cache: unknown value"):
        RepairTransport(cache="sometimes")


def test_json_response_of_a_messages_endpoint_is_untouched() -> None:
    body = json.dumps({"id": "m", "type": "message"}).encode()

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "application/json"}, content=body)

    with http.Client(transport=RepairTransport(http.MockTransport(handler))) as client:
        assert client.post("http://x.test/v1/messages", json=REQUEST).content == body


# -- frameworks that call the SDK themselves (optional test dependencies) ----------------------------------

FRAMEWORK_FIXTURES = ["fault_control_chars_in_event_json", "fault_raw_lf_splits_data_line", "framing_data_only"]


def _expected_text(name: str) -> str:
    return "".join(b.get("text", "") for b in expected(name)["message"]["content"] if b["type"] == "text")


async def _pydantic_ai_text(base_url: str, name: str, transport: Any) -> str:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    http_client = http.AsyncClient(transport=transport, headers={"x-mendstream-fixture": name})
    provider = AnthropicProvider(api_key="k", base_url=base_url, http_client=http_client)
    agent = Agent(AnthropicModel("claude-test", provider=provider))
    async with agent.run_stream("hi") as result:
        text = await result.get_output()
    await http_client.aclose()
    return str(text)


@pytest.mark.parametrize("name", FRAMEWORK_FIXTURES)
async def test_pydantic_ai_through_transport(replay_server: ReplayServer, name: str) -> None:
    pytest.importorskip("pydantic_ai")
    text = await _pydantic_ai_text(replay_server.base_url, name, AsyncRepairTransport())
    assert text == _expected_text(name)
    try:
        bare: str | None = await _pydantic_ai_text(replay_server.base_url, name, http.AsyncHTTPTransport())
    except Exception:
        bare = None
    assert bare != _expected_text(name)  # without the transport it fails or loses text


def _langchain_text(base_url: str, name: str, transport: Any) -> str:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model="claude-test", api_key="k", base_url=base_url, max_retries=0,
                        default_headers={"x-mendstream-fixture": name})
    # ChatAnthropic builds its own SDK client; give it one whose HTTP client repairs the stream.
    llm.__dict__["_client"] = sync_client(
        base_url=base_url, default_headers={"x-mendstream-fixture": name}, http_client=http.Client(transport=transport))
    return "".join(chunk.text for chunk in llm.stream("hi"))


@pytest.mark.parametrize("name", FRAMEWORK_FIXTURES)
def test_langchain_through_transport(replay_server: ReplayServer, name: str) -> None:
    pytest.importorskip("langchain_anthropic")
    assert _langchain_text(replay_server.base_url, name, RepairTransport()) == _expected_text(name)
    try:
        bare: str | None = _langchain_text(replay_server.base_url, name, http.HTTPTransport())
    except Exception:
        bare = None
    assert bare != _expected_text(name)
