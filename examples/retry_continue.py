"""Streams that survive: `Retry(on_partial="continue")` and `"restart"` under injected failures.

Runs offline: a replay server in this process answers from the bundled fixtures and breaks about a third of
its responses on purpose (an `overloaded_error` event mid-stream, a connection cut inside a tool call), as
`mendstream serve --fault SPEC` would. Each turn is read as a chat UI reads it; the program checks that what
was shown is exactly the final answer (no character shown twice, none lost) and prints what it took.

    python examples/retry_continue.py
"""

import anthropic, mendstream
from mendstream.streaming.retry import Attempt
from mendstream.testing import FIXTURES, ReplayServer, parse_fault_spec

FAULTS = "mix(seed=7):0.3*error(after_events=3)+0.05*cut(in=tool)"
TURNS = 30


def chat_turn(client: anthropic.Anthropic, retry: mendstream.Retry) -> tuple[str, list[Attempt]]:
    """One turn as a chat UI shows it: text appended as it arrives, cleared on a restart."""
    shown = ""
    with mendstream.stream(client, model="claude-sonnet-4-5", max_tokens=1024,
                           messages=[{"role": "user", "content": "Hello"}], retry=retry) as stream:
        for event in stream:
            if event.type == "restart":      # only after content was shown: "restart", or "continue" falling back
                shown = ""
            elif event.type == "text":
                shown += event.text
        message = stream.get_final_message()
    final = "".join(block.text for block in message.content if block.type == "text")
    assert shown == final, (shown, final)   # what the user saw is the answer, exactly
    return shown, stream.attempts


for policy in ("continue", "restart"):
    retry = mendstream.Retry(max_attempts=8, backoff=0.01, on_partial=policy)
    with ReplayServer(FIXTURES, faults=parse_fault_spec(FAULTS)) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)
        modes: dict[str, int] = {}
        for _ in range(TURNS):
            text, attempts = chat_turn(client, retry)
            for attempt in attempts:
                modes[attempt.mode] = modes.get(attempt.mode, 0) + 1
        client.close()
        faults = sum(r.fault is not None for r in server.requests)
    print(f'on_partial="{policy}": {TURNS}/{TURNS} turns complete, {len(server.requests)} requests, '
          f"{faults} faults injected, attempts by mode: {modes}")
