"""Testing an agent offline: the replay server, fault plans and the in-process mock client, under pytest.

The agent below is what you would test: it answers a question, running tools until the model stops asking
for them, and survives broken streams with `Retry`. The tests point it at the fixtures that ship with
mendstream, break responses on purpose, and check what it sent. No network, no key.

    python -m pytest examples/test_agent_offline.py
"""

from typing import Any

import anthropic, mendstream, pytest
from mendstream.testing import (
    FIXTURES,
    ReplayServer,
    anthropic_client,
    parse_fault_spec,
    replay_server_fixture,
)

MODEL = "claude-sonnet-4-5"
TOOLS = [{"name": "get_weather", "description": "The weather in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def run_tool(name: str, tool_input: Any) -> str:
    return f"{name}: sunny, 21°C"


def run_agent(client: anthropic.Anthropic, question: str, *, max_turns: int = 5) -> str:
    """The agent under test: the answer's text after any tool calls."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    retry = mendstream.Retry(max_attempts=4, backoff=0.01, on_partial="restart")  # agents running tools restart
    for _ in range(max_turns):
        with mendstream.stream(client, model=MODEL, max_tokens=1024, tools=TOOLS, messages=messages,
                               retry=retry) as stream:
            message = stream.get_final_message()
        messages.append({"role": "assistant", "content": [block.to_dict() for block in message.content]})
        if message.stop_reason != "tool_use":
            return "".join(block.text for block in message.content if block.type == "text")
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": block.id, "content": run_tool(block.name, block.input)}
            for block in message.content if block.type == "tool_use"]})
    raise RuntimeError(f"no answer after {max_turns} turns")


# One server for the module: by header, a test picks the recorded answer it wants.
replay_server = replay_server_fixture(FIXTURES, scope="module")


def client_for(server: ReplayServer, fixture: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0,
                               default_headers={"x-mendstream-fixture": fixture})


def test_the_agent_answers(replay_server: ReplayServer) -> None:
    with client_for(replay_server, "text_basic") as client:
        assert run_agent(client, "Hello").startswith("Hello!")
    sent = replay_server.requests[-1].body
    assert sent["tools"][0]["name"] == "get_weather" and sent["messages"][-1]["content"] == "Hello"


def test_the_agent_reads_a_stream_the_sdk_would_refuse(replay_server: ReplayServer) -> None:
    with client_for(replay_server, "fault_control_chars_in_event_json") as client:
        assert "Column A\tColumn B" in run_agent(client, "Show me the table.")


def test_the_agent_survives_an_overload_and_a_cut_tool_call() -> None:
    # request 1: an overloaded_error mid-stream; request 2: the connection dropped inside the tool input;
    # request 3 and later: as recorded.
    faults = parse_fault_spec("error(type=overloaded_error,after_events=3);cut(in=tool)")
    with ReplayServer(FIXTURES, faults=faults) as server, client_for(server, "tool_use_small_fragments") as client:
        with mendstream.stream(client, model=MODEL, max_tokens=1024, tools=TOOLS,
                               messages=[{"role": "user", "content": "Weather in Paris?"}],
                               retry=mendstream.Retry(max_attempts=4, backoff=0.01, on_partial="restart")) as stream:
            message = stream.get_final_message()
        assert [a.mode for a in stream.attempts] == ["first", "restart", "restart"]
        assert [r.fault for r in server.requests] == [
            "error(type=overloaded_error,after_events=3)", "cut(in=tool)", None]
    assert message.stop_reason == "tool_use"


def test_without_a_socket() -> None:
    client = anthropic_client(FIXTURES)            # an anthropic.Anthropic answered in process
    try:
        assert run_agent(client, "Hello")          # the next clean recorded answer, tools run as needed
        assert client._client._transport.requests  # what the agent sent
    finally:
        client.close()


def test_the_agent_gives_up_cleanly_when_every_attempt_fails() -> None:
    faults = parse_fault_spec("status(code=529)")
    with ReplayServer(FIXTURES, faults=faults) as server, client_for(server, "text_basic") as client:
        with pytest.raises(anthropic.APIStatusError) as failure:
            run_agent(client, "Hello")
        assert failure.value.status_code == 529
        assert len(server.requests) == 4           # Retry(max_attempts=4)
