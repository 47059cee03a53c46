# Helpers for testing an agent offline. `replay_transport(...)` is an in-process httpx / httpx2 transport
# that answers Messages requests from fixtures (same selection rules as the replay server, no socket);
# `anthropic_client(...)` / `async_anthropic_client(...)` wrap it in an unmodified SDK client; and
# `replay_server_fixture(...)` makes a pytest fixture that runs a real ReplayServer on 127.0.0.1. The HTTP
# library is the one the installed SDK runs on (httpx2 for anthropic >= 1.0, httpx for 0.x) unless given.
from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any, Literal

from mendstream.server import (
    Fixture,
    FixtureSelector,
    NoFixtureError,
    RecordedRequest,
    ReplayServer,
    Select,
    error_body,
    is_messages_path,
    load_fixtures,
    whole_message,
)

__all__ = [
    "anthropic_client",
    "async_anthropic_client",
    "replay_server_fixture",
    "replay_transport",
    "sdk_http_module",
]

FixtureSource = str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any]
Library = Literal["httpx", "httpx2"] | ModuleType | None


def sdk_http_module() -> ModuleType:
    """The HTTP library the installed ``anthropic`` SDK runs on: ``httpx2`` (>= 1.0) or ``httpx`` (0.x).

    Without the SDK: ``httpx`` if installed, else ``httpx2``.
    """
    try:
        from anthropic import _base_client
    except ImportError:
        from mendstream.httpx import http_module

        return http_module()
    found = getattr(_base_client, "httpx2", None) or getattr(_base_client, "httpx", None)
    if not isinstance(found, ModuleType):  # pragma: no cover - an SDK layout we do not know
        raise ImportError("cannot tell which HTTP library the installed anthropic SDK uses")
    return found


def _module(library: Library) -> ModuleType:
    if isinstance(library, ModuleType):
        return library
    if library is None:
        return sdk_http_module()
    if library not in ("httpx", "httpx2"):
        raise ValueError(f"library must be 'httpx', 'httpx2' or a module; got {library!r}")
    import importlib

    return importlib.import_module(library)


_transport_classes: dict[str, type] = {}


def _transport_class(module: ModuleType) -> type:
    """A transport class for ``module`` (created once per library), both sync and async."""
    cls = _transport_classes.get(module.__name__)
    if cls is not None:
        return cls

    class SyncChunks(module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: list[bytes]) -> None:
            self._chunks = chunks

        def __iter__(self) -> Iterator[bytes]:
            yield from self._chunks

    class AsyncChunks(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: list[bytes]) -> None:
            self._chunks = chunks

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for chunk in self._chunks:
                yield chunk

    class ReplayTransport(module.BaseTransport, module.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Answers ``POST .../v1/messages`` from fixtures; records every request in ``requests``."""

        def __init__(self, selector: FixtureSelector) -> None:
            self.selector = selector
            self.requests: list[RecordedRequest] = []

        def _answer(self, request: Any, wrap: Callable[[list[bytes]], Any]) -> Any:
            raw = request.read() if hasattr(request, "read") else request.content
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in request.headers.items()}
            record = RecordedRequest(request.method, str(request.url), headers, body)
            self.requests.append(record)
            try:
                if not is_messages_path(request.url.path):
                    raise NoFixtureError(f"only POST /v1/messages is mocked, not {request.url.path}")
                if not isinstance(body, dict):
                    raise NoFixtureError("request body must be a JSON object", 400)
                fixture = self.selector.choose(headers, body)
            except NoFixtureError as exc:
                record.status = exc.status
                etype = "invalid_request_error" if exc.status == 400 else "not_found_error"
                return module.Response(
                    exc.status,
                    headers={"content-type": "application/json"},
                    content=error_body(etype, str(exc)),
                    request=request,
                )
            record.fixture, record.status = fixture.name, fixture.status
            headers_out = _response_headers(fixture)
            if body.get("stream") is not True and fixture.status == 200:
                headers_out["content-type"] = "application/json"
                payload = whole_message(fixture)
                return module.Response(200, headers=headers_out, content=payload, request=request)
            chunks = [c for c, _ in fixture.iter_chunks()]
            return module.Response(fixture.status, headers=headers_out, stream=wrap(chunks), request=request)

        def handle_request(self, request: Any) -> Any:
            return self._answer(request, SyncChunks)

        async def handle_async_request(self, request: Any) -> Any:
            if not hasattr(request, "read"):
                await request.aread()
            return self._answer(request, AsyncChunks)

    _transport_classes[module.__name__] = ReplayTransport
    return ReplayTransport


def _response_headers(fixture: Fixture) -> dict[str, str]:
    headers = dict(fixture.headers)
    headers["content-type"] = fixture.content_type
    headers.setdefault("request-id", f"req_mock_{fixture.name}")
    return headers


def replay_transport(
    source: FixtureSource,
    *,
    select: Select = "auto",
    cycle: bool = True,
    library: Library = None,
) -> Any:
    """An in-process transport serving fixtures, for ``httpx.Client(transport=...)`` (sync or async).

    ``source`` and ``select``/``cycle`` as for :class:`~mendstream.server.ReplayServer` (a directory, paths,
    or a mapping name → bytes). ``library``: ``"httpx"``, ``"httpx2"`` or the module; default: the SDK's.
    The transport's ``requests`` lists what it received. Bodies are delivered in the fixtures' captured
    chunks (or one SSE event per chunk), without pacing.
    """
    module = _module(library)
    selector = FixtureSelector(load_fixtures(source), select=select, cycle=cycle)
    return _transport_class(module)(selector)


def anthropic_client(source: FixtureSource, *, select: Select = "auto", **client_options: Any) -> Any:
    """An ``anthropic.Anthropic`` whose requests are answered from fixtures (no network).

    ``client_options`` go to the client (``max_retries`` defaults to 0). The transport is at
    ``client._client._transport``; its ``requests`` list what was sent.
    """
    import anthropic

    module = sdk_http_module()
    transport = replay_transport(source, select=select, library=module)
    client_options.setdefault("api_key", "sk-ant-test")
    client_options.setdefault("base_url", "http://mendstream.test")
    client_options.setdefault("max_retries", 0)
    return anthropic.Anthropic(http_client=module.Client(transport=transport), **client_options)


def async_anthropic_client(source: FixtureSource, *, select: Select = "auto", **client_options: Any) -> Any:
    """The async twin of :func:`anthropic_client` (an ``anthropic.AsyncAnthropic``)."""
    import anthropic

    module = sdk_http_module()
    transport = replay_transport(source, select=select, library=module)
    client_options.setdefault("api_key", "sk-ant-test")
    client_options.setdefault("base_url", "http://mendstream.test")
    client_options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(http_client=module.AsyncClient(transport=transport), **client_options)


def replay_server_fixture(
    source: FixtureSource,
    *,
    scope: Literal["session", "package", "module", "class", "function"] = "session",
    name: str | None = None,
    **server_options: Any,
) -> Any:
    """A pytest fixture running a :class:`~mendstream.server.ReplayServer` on 127.0.0.1 for ``scope``.

    In a ``conftest.py``::

        replay_server = replay_server_fixture("tests/fixtures", pace="fast")

        def test_agent(replay_server):
            client = anthropic.Anthropic(base_url=replay_server.base_url, api_key="test")

    ``server_options`` go to ``ReplayServer`` (``select``, ``pace``, ``speed``, ``cycle``). Each test
    of a wider scope shares one server; call ``server.selector.reset()`` to restart request order.
    """
    import pytest

    def _server() -> Iterator[ReplayServer]:
        with ReplayServer(source, **server_options) as server:
            yield server

    return pytest.fixture(scope=scope, name=name)(_server)
