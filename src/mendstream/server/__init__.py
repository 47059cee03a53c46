# The replay server: answers `POST /v1/messages` from recorded fixtures so the official `anthropic` client
# (only `base_url` changed) and any agent built on it can run offline. A face over four modules, one concern
# each: fixtures (what a fixture is, loading, selection), routing (the one function deciding every answer,
# shared with the mock transports of mendstream.testing), app (the ASGI application and its limits) and
# replay (ReplayServer's lifecycle on uvicorn, which is imported only when a server starts).
from __future__ import annotations

from .app import ReplayApp, ServerLimits
from .fixtures import (
    FIXTURE_HEADER,
    Fixture,
    FixtureSelector,
    MissingFixtureError,
    NoFixtureError,
    Select,
    is_messages_path,
    load_fixtures,
)
from .replay import ReplayServer
from .routing import Pace, RecordedRequest, Router, error_body, whole_message

__all__ = [
    "FIXTURE_HEADER",
    "Fixture",
    "FixtureSelector",
    "MissingFixtureError",
    "NoFixtureError",
    "Pace",
    "RecordedRequest",
    "ReplayApp",
    "ReplayServer",
    "Router",
    "Select",
    "ServerLimits",
    "error_body",
    "is_messages_path",
    "load_fixtures",
    "whole_message",
]
