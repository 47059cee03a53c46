"""Cache breakpoints that always fit: `place_cache_breakpoints` and `CachePlanner` on an agent conversation.

An agent marks every tool result with `cache_control`; after a few turns the request has more than the API's
4 markers and the API answers 400. The planner rewrites each request (never mutating yours) to at most 4
markers, placed where the next request will read them. Pure computation: no network, no key.

    python examples/cache_planning.py
"""

import copy
import warnings

from mendstream.cache import CacheMarkerWarning, CachePlanner, place_cache_breakpoints, plan_cache_breakpoints

# The planner warns when it drops a marker the caller placed; this agent places too many on purpose.
warnings.simplefilter("ignore", CacheMarkerWarning)

TOOLS = [{"name": "read_file", "description": "Read a file. " * 40,
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
SYSTEM = [{"type": "text", "text": "You are a careful coding agent. " * 200}]


def markers(value: object) -> int:
    """How many cache_control markers a request carries (tool results included)."""
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(markers(v) for v in value.values())
    if isinstance(value, list):
        return sum(markers(v) for v in value)
    return 0


def conversation(turns: int) -> dict:
    """The request of turn `turns`: every tool result marked, as naive agents do."""
    messages: list[dict] = [{"role": "user", "content": "Fix the failing test."}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_{i}", "name": "read_file", "input": {"path": f"src/m{i}.py"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"def f{i}(): ...\n" * 300,
             "cache_control": {"type": "ephemeral"}}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "tools": TOOLS, "system": SYSTEM,
            "messages": messages}


request = conversation(turns=6)
original = copy.deepcopy(request)
planned = place_cache_breakpoints(request)
assert request == original                                 # the caller's request is never mutated
print(f"markers as sent: {markers(request)}, as planned: {markers(planned)}")

planned, report = plan_cache_breakpoints(request)
print(report.table())

planner = CachePlanner()                                   # one per conversation, every request in order
for turn in range(1, 8):
    body = planner.place(conversation(turns=turn))
    assert markers(body) <= 4
print("CachePlanner: 7 requests, never more than 4 markers")
