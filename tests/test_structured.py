"""Issue 19 §9: structured outputs, ``output_format=`` on stream / astream / replay, against the SDK's own
``messages.stream(output_format=...)`` on the same bytes (the replay server on 127.0.0.1, the real client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import mendstream
from mendstream.errors import OutputFormatError, OutputParseError, UsageError
from mendstream.streaming.structured import OutputFormat
from mendstream.testing import ReplayServer
from streams import sse

anthropic = pytest.importorskip("anthropic")
ParsedBetaMessage = pytest.importorskip("anthropic.types.beta.parsed_beta_message").ParsedBetaMessage
pydantic = pytest.importorskip("pydantic")


class Weather(pydantic.BaseModel):
    city: str
    temperature: int
    tags: list[str] = pydantic.Field(default_factory=list)


def answer(pieces: list[str], stop_reason: str = "end_turn") -> bytes:
    events = [
        {"type": "message_start", "message": {
            "id": "msg_so", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
         "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
    ]
    return b"".join(sse(e) for e in events)


WHOLE = ['{"city": "Par', 'is", "temper', 'ature": 21, "tags": ["su', 'nny"]}']
STREAMS = {
    "whole": answer(WHOLE),
    "not_json": answer(["I cannot ", "answer that."]),
    "cut": answer(WHOLE[:2], stop_reason="max_tokens"),
    "refused": answer(["I won't help with that."], stop_reason="refusal"),
}
PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64,
                          "messages": [{"role": "user", "content": "weather in Paris as JSON"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(STREAMS, select="header") as srv:
        yield srv


def pick(name: str, betas: list[str] | None = None) -> dict[str, Any]:
    out = {**PARAMS, "extra_headers": {"x-mendstream-fixture": name}}
    if betas is not None:
        out["betas"] = betas
    return out


def client_for(server: ReplayServer) -> Any:
    return anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)


def sdk_stream(client: Any, beta: Any, **params: Any) -> Any:
    messages = client.beta.messages if beta else client.messages
    return messages.stream(**params)


@pytest.mark.parametrize("betas", [None, ["x-beta"]], ids=["messages", "beta"])
def test_the_request_and_the_parsed_message_are_the_sdks(server: ReplayServer, betas: list[str] | None) -> None:
    with client_for(server) as client:
        with sdk_stream(client, bool(betas), **pick("whole", betas), output_format=Weather) as s:
            their_snapshots = [e.parsed_snapshot() for e in s if e.type == "text"]
            theirs = s.get_final_message()
        their_request = server.requests[-1].body
        with mendstream.stream(client, **pick("whole", betas), output_format=Weather) as s:
            our_snapshots = [e.parsed_snapshot() for e in s if e.type == "text"]
            ours = s.get_final_message()
        our_request = server.requests[-1].body
    assert our_request == their_request
    assert our_request["output_config"]["format"]["type"] == "json_schema"
    parsed_class = ParsedBetaMessage if betas else anthropic.types.ParsedMessage
    assert isinstance(ours, parsed_class) and isinstance(theirs, parsed_class)
    assert ours.parsed_output == theirs.parsed_output == Weather(city="Paris", temperature=21, tags=["sunny"])
    assert ours.content[0].parsed_output == theirs.content[0].parsed_output
    assert ours.to_dict(exclude_none=True) == theirs.to_dict(exclude_none=True)  # parsed_output never serialized
    assert our_snapshots == their_snapshots


async def test_async_and_sdk_events(server: ReplayServer) -> None:
    async with anthropic.AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0) as client:
        async with client.messages.stream(**pick("whole"), output_format=Weather) as s:
            theirs = [e async for e in s]
        async with mendstream.astream(client, **pick("whole"), output_format=Weather, sdk_events=True) as s:
            ours = [e async for e in s]
            final = await s.get_final_message()
    assert [type(e).__name__ for e in ours] == [type(e).__name__ for e in theirs]
    (our_stop,) = [e for e in ours if e.type == "content_block_stop"]
    (their_stop,) = [e for e in theirs if e.type == "content_block_stop"]
    assert our_stop.content_block.parsed_output == their_stop.content_block.parsed_output == final.parsed_output
    assert ours[-1].message.parsed_output == theirs[-1].message.parsed_output


@pytest.mark.parametrize("via", ["replay", "areplay"])
async def test_replay_takes_output_format(via: str) -> None:
    if via == "replay":
        with mendstream.replay(STREAMS["whole"], output_format=Weather) as s:
            final = s.get_final_message()
    else:
        async with mendstream.areplay(STREAMS["whole"], output_format=Weather, beta=True) as s:
            final = await s.get_final_message()
        assert isinstance(final, ParsedBetaMessage)
    assert final.parsed_output.city == "Paris"


def test_a_whole_answer_that_does_not_validate_is_an_error_keeping_the_message(server: ReplayServer) -> None:
    with client_for(server) as client:
        with pytest.raises(pydantic.ValidationError), sdk_stream(client, False, **pick("not_json"),
                                                                 output_format=Weather) as s:
            s.until_done()
        with mendstream.stream(client, **pick("not_json"), output_format=Weather) as s:
            s.until_done()
            with pytest.raises(OutputParseError) as info:
                s.get_final_message()
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err.__cause__, pydantic.ValidationError)
    assert err.text == "I cannot answer that." and err.index == 0
    assert err.snapshot["content"][0]["text"] == "I cannot answer that."


@pytest.mark.parametrize("name", ["cut", "refused"])
def test_a_cut_answer_completes_with_no_parsed_output(server: ReplayServer, name: str) -> None:
    # The SDK raises ValidationError and the message is gone; the stop reason says the answer was cut short.
    with client_for(server) as client:
        with pytest.raises(pydantic.ValidationError), sdk_stream(client, False, **pick(name),
                                                                 output_format=Weather) as s:
            s.until_done()
        with mendstream.stream(client, **pick(name), output_format=Weather) as s:
            final = s.get_final_message()
            snapshot = s.current_message_snapshot
    assert final.parsed_output is None and final.content[0].parsed_output is None
    assert final.stop_reason in ("max_tokens", "refusal")
    assert isinstance(snapshot, anthropic.types.ParsedMessage)


def test_output_format_and_output_config_format(server: ReplayServer) -> None:
    other = {"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"}
    with client_for(server) as client:
        # The standard helper lets output_format win and keeps the other fields...
        with sdk_stream(client, False, **pick("whole"), output_config=other, output_format=Weather) as s:
            s.until_done()
        theirs = server.requests[-1].body
        with mendstream.stream(client, **pick("whole"), output_config=other, output_format=Weather) as s:
            s.until_done()
        assert server.requests[-1].body == theirs and theirs["output_config"]["effort"] == "low"
        # ...the beta one refuses both.
        with pytest.raises(anthropic.AnthropicError, match="Both output_format"):
            sdk_stream(client, True, **pick("whole", ["x-beta"]), output_config=other, output_format=Weather)
        with pytest.raises(OutputFormatError, match="Both output_format"):
            mendstream.stream(client, **pick("whole", ["x-beta"]), output_config=other, output_format=Weather)


@pytest.mark.parametrize("bad", [{"type": "object"}, "Weather"])
def test_a_schema_or_a_name_is_not_an_output_format(bad: Any) -> None:
    with pytest.raises(OutputFormatError, match="must be a type") as info:
        OutputFormat(bad)
    assert isinstance(info.value, TypeError) and isinstance(info.value, UsageError)


def test_the_schema_is_the_sdks_transformation() -> None:
    from anthropic.lib._parse._transform import transformed_json_schema

    assert OutputFormat(Weather).schema == transformed_json_schema(pydantic.TypeAdapter(Weather))
    assert OutputFormat(list[int]).parse("[1, 2]") == [1, 2]
    assert json.loads(json.dumps(OutputFormat(Weather).schema))  # plain JSON, sendable
