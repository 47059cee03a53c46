"""RepairTransport under an agent framework (pydantic-ai) that calls the SDK itself.

The framework never calls mendstream: the repair happens in its HTTP client. Offline, a replay server in this
process answers with a bundled stream whose event JSON holds raw control characters (as some
Anthropic-compatible gateways send it). Without the transport the agent fails; with it, the agent gets the
whole answer. Needs pydantic-ai (`pip install 'pydantic-ai-slim[anthropic]'`).

    python examples/repair_transport_agent.py
"""

import asyncio

import httpx2, mendstream
from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.providers.anthropic import AnthropicProvider

from mendstream.testing import FIXTURES, ReplayServer

BROKEN = {"x-mendstream-fixture": "fault_control_chars_in_event_json"}   # which fixture the server answers with


async def ask(base_url: str, transport: object) -> str:
    http_client = httpx2.AsyncClient(transport=transport, headers=BROKEN)
    provider = AnthropicProvider(api_key="test", base_url=base_url, http_client=http_client)
    agent = Agent(AnthropicModel("claude-sonnet-4-6", provider=provider))
    async with http_client:
        result = await agent.run("Show me the table.")
    return result.output


async def main() -> None:
    with ReplayServer(FIXTURES) as server:
        try:
            await ask(server.base_url, httpx2.AsyncHTTPTransport())
            print("without RepairTransport: answered (unexpected)")
        except Exception as exc:             # what the framework raises for the broken stream
            print(f"without RepairTransport: {type(exc).__name__}")
        text = await ask(server.base_url, mendstream.AsyncRepairTransport(cache=True))
        print(f"with RepairTransport: {text!r}")


asyncio.run(main())
