# A corpus of realistic agent sessions for the cache benchmark, generated from fixed seeds: chat, a
# sequential tool loop, parallel tool calls, thinking blocks, instructions that change every turn, a
# reminder appended to the newest user message, a tool definition that changes every turn, mid-session
# compaction and idle gaps longer than the 5-minute TTL. Each session is a list of SessionEntry with
# timestamps; history lists are shared between requests, as a real agent loop would build them.
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from mendstream.cache.simulate import SessionEntry

MODEL = "claude-sonnet-4-5"
VOCAB = ["the", "function", "returns", "value", "when", "config", "file", "path", "error", "test", "module", "import", "class", "data", "list", "item", "request", "response", "cache", "token", "stream", "block", "message", "user", "system", "tool", "result", "read", "write", "update", "async", "await", "def", "self", "return", "None", "True", "False", "if", "else", "for", "while", "try", "except", "raise"]


def words(rng: random.Random, tokens: int) -> str:
    """About ``tokens`` tokens of code-like prose (4 characters a token, as the estimate assumes)."""
    out: list[str] = []
    length = 0
    while length < tokens * 4:
        w = rng.choice(VOCAB)
        out.append(w)
        length += len(w) + 1
    return " ".join(out)


def tool_defs(rng: random.Random, n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "name": f"tool_{i}",
            "description": words(rng, rng.randint(150, 400)),
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"}}},
        }
        for i in range(n)
    ]


class Session:
    """Builds one conversation request by request."""

    def __init__(self, seed: int, *, tools: bool = True, system_tokens: int = 2500) -> None:
        self.rng = random.Random(seed)
        self.tools = tool_defs(self.rng) if tools else None
        self.system: list[dict[str, Any]] = [{"type": "text", "text": words(self.rng, system_tokens)}]
        self.messages: list[dict[str, Any]] = []
        self.entries: list[SessionEntry] = []
        self.now = 0.0
        self.calls = 0

    def send(
        self,
        *,
        gap: tuple[float, float] = (5, 40),
        extra: dict[str, Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        system: list[dict[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        payload: dict[str, Any] = {"model": MODEL, "max_tokens": 8000}
        if (tools or self.tools) is not None:
            payload["tools"] = tools or self.tools
        payload["system"] = system or self.system
        payload["messages"] = messages if messages is not None else list(self.messages)
        payload.update(extra or {})
        if self.entries:
            self.now += self.rng.uniform(*gap)
        self.entries.append(SessionEntry(payload, self.now))

    def user(self, tokens: int) -> None:
        self.messages.append({"role": "user", "content": words(self.rng, tokens)})

    def assistant_text(self, tokens: int, thinking: bool = False) -> None:
        content: list[dict[str, Any]] = []
        if thinking:
            content.append({"type": "thinking", "thinking": words(self.rng, 300), "signature": "sig" * 20})
        content.append({"type": "text", "text": words(self.rng, tokens)})
        self.messages.append({"role": "assistant", "content": content})

    def tool_round(self, calls: int, *, thinking: bool = False, result_tokens: tuple[int, int] = (100, 1500)) -> None:
        content: list[dict[str, Any]] = []
        if thinking:
            content.append({"type": "thinking", "thinking": words(self.rng, 400), "signature": "sig" * 20})
        content.append({"type": "text", "text": words(self.rng, 30)})
        ids = []
        for _ in range(calls):
            self.calls += 1
            ids.append(f"toolu_{self.calls:05d}")
            content.append(
                {
                    "type": "tool_use",
                    "id": ids[-1],
                    "name": f"tool_{self.rng.randrange(12)}",
                    "input": {"path": words(self.rng, 8), "n": self.rng.randint(1, 99)},
                }
            )
        self.messages.append({"role": "assistant", "content": content})
        self.messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": i,
                        "content": words(self.rng, self.rng.randint(*result_tokens)),
                    }
                    for i in ids
                ],
            }
        )


def chat() -> list[SessionEntry]:
    s = Session(1, tools=False, system_tokens=1500)
    for _ in range(30):
        s.user(s.rng.randint(20, 300))
        s.send(gap=(20, 120))
        s.assistant_text(s.rng.randint(100, 600))
    return s.entries


def tool_loop() -> list[SessionEntry]:
    s = Session(2)
    s.user(200)
    s.send()
    for _ in range(40):
        s.tool_round(1)
        s.send()
    return s.entries


def parallel_tools() -> list[SessionEntry]:
    s = Session(3)
    s.user(200)
    s.send()
    for _ in range(15):
        s.tool_round(s.rng.randint(8, 14), result_tokens=(50, 600))
        s.send()
    return s.entries


def thinking() -> list[SessionEntry]:
    s = Session(4)
    s.user(200)
    s.send(extra={"thinking": {"type": "enabled", "budget_tokens": 4000}})
    for _ in range(25):
        s.tool_round(s.rng.randint(1, 3), thinking=True)
        s.send(extra={"thinking": {"type": "enabled", "budget_tokens": 4000}})
    return s.entries


def changing_instructions() -> list[SessionEntry]:
    """The last system block (date, todo list, git status) is regenerated every turn."""
    s = Session(5)
    s.user(200)
    for turn in range(26):
        dynamic = {"type": "text", "text": f"<env>turn {turn}; time {s.now:.0f}; todo: {words(s.rng, 150)}</env>"}
        s.send(system=[*s.system, dynamic])
        s.tool_round(1)
    return s.entries


def volatile_reminder() -> list[SessionEntry]:
    """A reminder block is appended to the newest user message and not kept in the stored history."""
    s = Session(6)
    s.user(200)
    for turn in range(26):
        last = s.messages[-1]
        content = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
        reminder = {"type": "text", "text": f"<system-reminder>turn {turn}: {words(s.rng, 60)}</system-reminder>"}
        s.send(messages=[*s.messages[:-1], {"role": "user", "content": [*content, reminder]}])
        s.tool_round(1)
    return s.entries


def changing_tool() -> list[SessionEntry]:
    """Tool 9 of 12 lists the open files, so its definition changes every turn."""
    s = Session(7)
    assert s.tools is not None
    s.user(200)
    for turn in range(26):
        tools = list(s.tools)
        tools[9] = {**tools[9], "description": f"Open files ({turn}): {words(s.rng, 80)}"}
        s.send(tools=tools)
        s.tool_round(1)
    return s.entries


def compaction() -> list[SessionEntry]:
    """40 rounds; after round 20 the history is replaced by a summary and the loop continues."""
    s = Session(8)
    s.user(200)
    s.send()
    for turn in range(40):
        if turn == 20:
            s.messages = [{"role": "user", "content": "Summary of the work so far: " + words(s.rng, 1500)}]
            s.send()
        s.tool_round(1)
        s.send()
    return s.entries


def idle_gaps() -> list[SessionEntry]:
    """A chat-like tool session where the user steps away for 6 to 15 minutes every few turns."""
    s = Session(9)
    s.user(200)
    s.send()
    for turn in range(30):
        s.tool_round(1)
        s.send(gap=(360, 900) if turn % 6 == 5 else (5, 40))
    return s.entries


SESSIONS: dict[str, Callable[[], list[SessionEntry]]] = {
    "chat": chat,
    "tool-loop": tool_loop,
    "parallel-8-14": parallel_tools,
    "thinking": thinking,
    "changing-instructions": changing_instructions,
    "volatile-reminder": volatile_reminder,
    "changing-tool": changing_tool,
    "compaction": compaction,
    "idle-gaps": idle_gaps,
}
