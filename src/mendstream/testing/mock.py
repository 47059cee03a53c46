# Helpers for testing an agent offline. `replay_transport(...)` is an in-process httpx / httpx2 transport
# that answers Messages requests from fixtures through the replay server's own routing (mendstream.testing's
# Router: same selection, same error answers, same fault plans, no socket); `anthropic_client(...)` /
# `async_anthropic_client(...)` wrap it in an unmodified SDK client; and `replay_server_fixture(...)` makes a
# pytest fixture that runs a real ReplayServer on 127.0.0.1. The HTTP library is the one the installed SDK
# runs on (httpx2 for anthropic >= 1.0, httpx for 0.x) unless given.
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any, Literal

from mendstream.errors import UsageError
from mendstream.recording.fixtures import FixtureSelector, Select, load_fixtures
from mendstream.testing.faults import FaultPlan, PlannedResponse
from mendstream.testing.routing import Router
from mendstream.testing.server import ReplayServer
from mendstream.wire.http import http_library

__all__ = [
    "anthropic_client",
    "async_anthropic_client",
    "replay_server_fixture",
    "replay_transport",
    "sdk_http_module",
]

FixtureSource = str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any]
Library = Literal["httpx", "httpx2"] | ModuleType | None
# Framing is the HTTP library's business; a planned response's values for these would contradict it.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def sdk_http_module() -> ModuleType:
    """The HTTP library the installed ``anthropic`` SDK runs on: ``httpx2`` (>= 1.0) or ``httpx`` (0.x); without
    the SDK, httpx2, else httpx (see :func:`mendstream.wire.http.http_library`)."""
    return http_library("sdk")


def _module(library: Library) -> ModuleType:
    if isinstance(library, ModuleType):
        return library
    if library is None:
        return sdk_http_module()
    if library not in ("httpx", "httpx2"):
        raise UsageError(f"library must be 'httpx', 'httpx2' or a module; got {library!r}")
    import importlib

    return importlib.import_module(library)


_transport_classes: dict[str, type] = {}


def _cut_message(planned: PlannedResponse) -> str:
    sent = sum(len(c) for _, c in planned.chunks)
    return f"peer closed connection without sending complete message body (cut after {sent} bytes)"


def _transport_class(module: ModuleType) -> type:
    """A transport class for ``module`` (created once per library), both sync and async."""
    cls = _transport_classes.get(module.__name__)
    if cls is not None:
        return cls

    class SyncChunks(module.SyncByteStream):  # type: ignore[name-defined,misc]
        """Sends a planned body: real sleeps for its delays, the library's read error for a cut."""

        def __init__(self, planned: PlannedResponse, request: Any) -> None:
            self._planned = planned
            self._request = request

        def __iter__(self) -> Iterator[bytes]:
            for delay, chunk in self._planned.chunks:
                if delay > 0:
                    time.sleep(delay)
                yield chunk
            if self._planned.end == "cut":
                raise module.RemoteProtocolError(_cut_message(self._planned), request=self._request)

    class AsyncChunks(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        """The async twin of SyncChunks."""

        def __init__(self, planned: PlannedResponse, request: Any) -> None:
            self._planned = planned
            self._request = request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for delay, chunk in self._planned.chunks:
                if delay > 0:
                    await asyncio.sleep(delay)
                yield chunk
            if self._planned.end == "cut":
                raise module.RemoteProtocolError(_cut_message(self._planned), request=self._request)

    class ReplayTransport(module.BaseTransport, module.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Answers requests as the replay server would (mendstream.testing.Router); ``requests`` lists the
        most recent requests received."""

        def __init__(self, router: Router) -> None:
            self.router = router
            self.requests = router.requests

        def _plan(self, request: Any, raw: bytes) -> PlannedResponse:
            headers = {k.lower(): v for k, v in request.headers.items()}
            target = request.url.raw_path.decode("ascii")
            return self.router.answer(request.method, target, headers, raw)[1]

        def _respond(self, request: Any, planned: PlannedResponse, stream_class: type) -> Any:
            out = [(k, v) for k, v in planned.headers if k.lower() not in _FRAMING]
            if request.method == "HEAD":  # as an HTTP server does: the head only
                return module.Response(planned.status, headers=out, content=b"", request=request)
            simple = planned.end == "close" and all(d == 0 for d, _ in planned.chunks)
            if simple and not dict(out).get("content-type", "").startswith("text/event-stream"):
                body = b"".join(c for _, c in planned.chunks)
                return module.Response(planned.status, headers=out, content=body, request=request)
            return module.Response(planned.status, headers=out, stream=stream_class(planned, request),
                                   request=request)

        def handle_request(self, request: Any) -> Any:
            planned = self._plan(request, request.read())
            if planned.head_delay > 0:  # nothing at all for a while: the client waits for the headers
                time.sleep(planned.head_delay)
            return self._respond(request, planned, SyncChunks)

        async def handle_async_request(self, request: Any) -> Any:
            planned = self._plan(request, await request.aread())
            if planned.head_delay > 0:
                await asyncio.sleep(planned.head_delay)
            return self._respond(request, planned, AsyncChunks)

    _transport_classes[module.__name__] = ReplayTransport
    return ReplayTransport


def replay_transport(
    source: FixtureSource,
    *,
    select: Select = "auto",
    cycle: bool = True,
    library: Library = None,
    faults: FaultPlan | None = None,
    validate: bool = False,
) -> Any:
    """An in-process transport serving fixtures, for ``httpx.Client(transport=...)`` (sync or async).

    ``source`` and ``select``/``cycle`` as for :class:`~mendstream.testing.ReplayServer` (a directory, paths,
    or a mapping name → bytes); it answers every request exactly as the replay server would (the same
    routing function), without pacing. ``library``: ``"httpx"``, ``"httpx2"`` or the module; default: the
    SDK's. ``faults``: a :class:`~mendstream.testing.faults.FaultPlan` applied to every Messages response as the
    server applies it (delays are real sleeps; a cut raises the library's ``RemoteProtocolError`` from the
    response stream). ``validate=True`` answers requests that break the API's rules with its 400, as
    ``ReplayServer(validate=True)`` does. The transport's ``requests`` lists what it received.
    """
    module = _module(library)
    selector = FixtureSelector(load_fixtures(source), select=select, cycle=cycle)
    return _transport_class(module)(Router(selector, faults=faults, id_format="req_mock_{name}", validate=validate))


def _client(
    async_: bool, source: FixtureSource, select: Select, faults: FaultPlan | None, validate: bool,
    options: dict[str, Any],
) -> Any:
    import anthropic

    module = sdk_http_module()
    transport = replay_transport(source, select=select, library=module, faults=faults, validate=validate)
    options.setdefault("api_key", "sk-ant-test")
    options.setdefault("base_url", "http://mendstream.test")
    options.setdefault("max_retries", 0)
    if async_:
        return anthropic.AsyncAnthropic(http_client=module.AsyncClient(transport=transport), **options)
    return anthropic.Anthropic(http_client=module.Client(transport=transport), **options)


def anthropic_client(
    source: FixtureSource,
    *,
    select: Select = "auto",
    faults: FaultPlan | None = None,
    validate: bool = False,
    **client_options: Any,
) -> Any:
    """An ``anthropic.Anthropic`` whose requests are answered from fixtures (no network).

    ``client_options`` go to the client (``max_retries`` defaults to 0). The transport is at
    ``client._client._transport``; its ``requests`` list what was sent. ``faults`` and ``validate`` as for
    :func:`replay_transport`.
    """
    return _client(False, source, select, faults, validate, client_options)


def async_anthropic_client(
    source: FixtureSource,
    *,
    select: Select = "auto",
    faults: FaultPlan | None = None,
    validate: bool = False,
    **client_options: Any,
) -> Any:
    """:func:`anthropic_client` for ``anthropic.AsyncAnthropic``."""
    return _client(True, source, select, faults, validate, client_options)


def replay_server_fixture(
    source: FixtureSource,
    *,
    scope: Literal["session", "package", "module", "class", "function"] = "session",
    name: str | None = None,
    **server_options: Any,
) -> Any:
    """A pytest fixture running a :class:`~mendstream.testing.ReplayServer` on 127.0.0.1 for ``scope``.

    In a ``conftest.py``::

        replay_server = replay_server_fixture("tests/fixtures", pace="fast")

        def test_agent(replay_server):
            client = anthropic.Anthropic(base_url=replay_server.base_url, api_key="test")

    ``server_options`` go to ``ReplayServer`` (``select``, ``pace``, ``speed``, ``cycle``, ``limits``,
    ``faults``, ``on_request``, ``validate``). Each test
    of a wider scope shares one server; call ``server.selector.reset()`` to restart request order.
    """
    import pytest

    def _server() -> Iterator[ReplayServer]:
        with ReplayServer(source, **server_options) as server:
            yield server

    return pytest.fixture(scope=scope, name=name)(_server)
