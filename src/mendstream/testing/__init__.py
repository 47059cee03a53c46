# Offline testing of agents, as products: a replay server that answers Messages requests from recorded
# fixtures (server: ReplayServer's lifecycle on uvicorn; app: the ASGI application and its limits; routing:
# the one function deciding every answer), fault plans that break responses on purpose (faults), in-process
# mock transports and pytest helpers built on the same routing (mock), and FIXTURES, the directory of the
# fixtures bundled with the package. Importing this package imports neither uvicorn, httpx nor the SDK: they
# load when a server starts or a mock client is made.
from __future__ import annotations

from mendstream.recording.fixtures import FIXTURES, Fixture, FixtureSelector, NoFixtureError, Select, load_fixtures
from mendstream.testing.app import ReplayApp, ServerLimits
from mendstream.testing.faults import FaultPlan, PlannedResponse, parse_fault_spec
from mendstream.testing.mock import (
    anthropic_client,
    async_anthropic_client,
    replay_server_fixture,
    replay_transport,
    sdk_http_module,
)
from mendstream.testing.routing import RecordedRequest, Router
from mendstream.testing.server import ReplayServer

__all__ = [
    "FIXTURES",
    "FaultPlan",
    "Fixture",
    "FixtureSelector",
    "NoFixtureError",
    "PlannedResponse",
    "RecordedRequest",
    "ReplayApp",
    "ReplayServer",
    "Router",
    "Select",
    "ServerLimits",
    "anthropic_client",
    "async_anthropic_client",
    "load_fixtures",
    "parse_fault_spec",
    "replay_server_fixture",
    "replay_transport",
    "sdk_http_module",
]
