# The replay server: a small HTTP/1.1 server on asyncio that answers `POST /v1/messages` from recorded
# fixtures, so the official `anthropic` client (only `base_url` changed) and any agent built on it can run
# offline. A fixture is `NAME.sse` (the exact response body) plus an optional `NAME.capture.json` sidecar
# (written by mendstream.capture) whose chunk sizes, timings, status and headers are replayed. Fixtures
# are chosen by a header, by matching the request body, or in request order (FixtureSelector, shared with
# the in-process mock transports of mendstream.testing). The server runs its own event loop in a thread
# (`with ReplayServer(dir) as srv: srv.base_url`), or in the foreground for `mendstream serve`.
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from mendstream.capture import scrub_json, sidecar_path

__all__ = [
    "FIXTURE_HEADER",
    "Fixture",
    "FixtureSelector",
    "NoFixtureError",
    "RecordedRequest",
    "ReplayServer",
    "is_messages_path",
    "load_fixtures",
]

FIXTURE_HEADER = "x-mendstream-fixture"
"""Request header naming the fixture to serve (its file name, with or without ``.sse``)."""

Select = Literal["auto", "header", "body", "order"]
Pace = Literal["fast", "captured"]
_SELECT_VALUES = ("auto", "header", "body", "order")
_PACE_VALUES = ("fast", "captured")
# Headers the server computes itself; a sidecar's values for them describe the original connection (the
# body in the fixture is already decoded, so e.g. content-encoding must not be replayed).
_HOP_HEADERS = frozenset(
    {"connection", "content-encoding", "content-length", "keep-alive", "transfer-encoding", "date", "server"}
)
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True, slots=True)
class Fixture:
    """One recorded response.

    Attributes:
        name: the fixture's name (file name without ``.sse``).
        body: the exact response body bytes.
        chunks: ``(size, ms since the response began)`` per chunk as captured; empty when unknown, in which
            case the body is sent one SSE event per chunk.
        status: HTTP status to answer with.
        headers: extra response headers (lowercase names), e.g. ``request-id``.
        request_body: the captured request body (scrubbed), used for body matching.
        match: a partial request body; when given, a request matches if it contains all of these fields.
        abort: end the connection without finishing the body (replays a capture whose connection broke).
    """

    name: str
    body: bytes
    chunks: tuple[tuple[int, float], ...] = ()
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    request_body: Any = None
    match: Any = None
    abort: bool = False

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Fixture:
        """Load ``NAME.sse`` and its sidecar ``NAME.capture.json`` when present.

        Raises ``FileNotFoundError`` for a missing body and ``ValueError`` for an unreadable sidecar.
        """
        p = Path(path)
        body = p.read_bytes()
        name = p.name[: -len(".sse")] if p.name.endswith(".sse") else p.name
        side = sidecar_path(p)
        if not side.exists():
            return cls(name=name, body=body)
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{side}: not a JSON capture sidecar ({exc})") from exc
        return cls.from_sidecar(name, body, meta)

    @classmethod
    def from_sidecar(cls, name: str, body: bytes, meta: Mapping[str, Any]) -> Fixture:
        """Build a fixture from body bytes and a parsed sidecar dict (see mendstream.capture)."""
        response = meta.get("response") or {}
        chunks = tuple((int(s), float(t)) for s, t in meta.get("chunks") or ())
        if sum(s for s, _ in chunks) != len(body):
            chunks = ()  # the body was edited after capture; the recorded chunking no longer applies
        headers = tuple(
            (str(k).lower(), str(v))
            for k, v in (response.get("headers") or {}).items()
            if str(k).lower() not in _HOP_HEADERS
        )
        request = meta.get("request") or {}
        return cls(
            name=name,
            body=body,
            chunks=chunks,
            status=int(response.get("status") or 200),
            headers=headers,
            request_body=request.get("body"),
            match=meta.get("match"),
            abort=meta.get("outcome") == "error",
        )

    def iter_chunks(self) -> Iterator[tuple[bytes, float]]:
        """``(chunk, seconds since the response began)`` in order; the chunks concatenate to ``body``."""
        if self.chunks:
            pos = 0
            for size, ms in self.chunks:
                yield self.body[pos : pos + size], ms / 1000.0
                pos += size
            return
        pos = 0
        for m in _EVENT_END.finditer(self.body):
            yield self.body[pos : m.end()], 0.0
            pos = m.end()
        if pos < len(self.body):
            yield self.body[pos:], 0.0

    @property
    def content_type(self) -> str:
        for k, v in self.headers:
            if k == "content-type":
                return v
        return "text/event-stream; charset=utf-8"


def load_fixtures(source: str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any]) -> list[Fixture]:
    """Fixtures from a directory (every ``*.sse``, sorted by name), a list of paths or Fixtures, or a mapping
    of name to body bytes (or Fixture).

    Raises ``FileNotFoundError`` when a directory or file does not exist, ``ValueError`` when a directory
    holds no ``*.sse`` file.
    """
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"fixture directory or file not found: {p}")
        if p.is_file():
            return [Fixture.from_path(p)]
        paths = sorted(p.glob("*.sse"))
        if not paths:
            raise ValueError(f"no *.sse fixtures in {p}")
        return [Fixture.from_path(x) for x in paths]
    if isinstance(source, Mapping):
        return [
            v if isinstance(v, Fixture) else Fixture(name=str(k), body=bytes(v)) for k, v in source.items()
        ]
    out: list[Fixture] = []
    for item in source:
        out.append(item if isinstance(item, Fixture) else Fixture.from_path(item))
    return out


class NoFixtureError(LookupError):
    """No fixture fits the request; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def is_messages_path(path: str) -> bool:
    """True for a Messages endpoint path: ``.../v1/messages`` or Vertex AI's ``...:streamRawPredict`` /
    ``...:rawPredict`` (the query string must already be removed)."""
    return path.endswith(("/v1/messages", ":streamRawPredict", ":rawPredict"))


def _normalize_body(body: Any) -> Any:
    if isinstance(body, Mapping):
        body = {k: v for k, v in body.items() if k != "stream"}
    return scrub_json(body)


def _contains(whole: Any, part: Any) -> bool:
    if isinstance(part, Mapping):
        if not isinstance(whole, Mapping):
            return False
        return all(k in whole and _contains(whole[k], v) for k, v in part.items())
    return bool(whole == part)


class FixtureSelector:
    """Chooses the fixture for each request. Thread-safe.

    ``select``:
        ``"header"``: the ``x-mendstream-fixture`` header names it (required).
        ``"body"``: the first fixture whose ``match`` is contained in the request body, or whose captured
            request body equals it (both scrubbed, ``stream`` ignored).
        ``"order"``: the next fixture in order, per request; after the last, start over if ``cycle``
            else fail with 404.
        ``"auto"`` (default): the header when sent, else a body match when one exists, else order.
    """

    def __init__(self, fixtures: Sequence[Fixture], *, select: Select = "auto", cycle: bool = True) -> None:
        if select not in _SELECT_VALUES:
            raise ValueError(f"select must be one of {', '.join(_SELECT_VALUES)}; got {select!r}")
        if not fixtures:
            raise ValueError("at least one fixture is needed")
        self.fixtures = list(fixtures)
        self.select = select
        self.cycle = cycle
        self._by_name = {f.name: f for f in self.fixtures}
        self._next = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start request order from the first fixture again."""
        with self._lock:
            self._next = 0

    def choose(self, headers: Mapping[str, str], body: Any) -> Fixture:
        """The fixture for a request with lowercase-named ``headers`` and decoded JSON ``body``.

        Raises :class:`NoFixtureError` when none fits.
        """
        name = headers.get(FIXTURE_HEADER)
        if name is not None or self.select == "header":
            if name is None:
                raise NoFixtureError(f"missing {FIXTURE_HEADER} header", 400)
            found = self._by_name.get(name.removesuffix(".sse"))
            if found is None:
                raise NoFixtureError(f"no fixture named {name!r}; have {', '.join(sorted(self._by_name))}")
            return found
        if self.select in ("body", "auto"):
            found = self._match_body(body)
            if found is not None:
                return found
            if self.select == "body":
                raise NoFixtureError("no fixture matches the request body")
        with self._lock:
            if self._next >= len(self.fixtures):
                if not self.cycle:
                    raise NoFixtureError(f"all {len(self.fixtures)} fixtures have been served")
                self._next = 0
            found = self.fixtures[self._next]
            self._next += 1
        return found

    def _match_body(self, body: Any) -> Fixture | None:
        normalized: Any = None
        for f in self.fixtures:
            if f.match is not None:
                if _contains(body, f.match):
                    return f
            elif f.request_body is not None:
                if normalized is None:
                    normalized = _normalize_body(body)
                if _normalize_body(f.request_body) == normalized:
                    return f
        return None


@dataclass(slots=True)
class RecordedRequest:
    """A request the server received: method, path, lowercase headers, decoded body, fixture served."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fixture: str | None = None
    status: int = 200


def error_body(error_type: str, message: str) -> bytes:
    """An Anthropic-style error JSON body."""
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


_STATUS_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    529: "Overloaded",
}


def whole_message(fixture: Fixture) -> bytes:
    """The final message of ``fixture`` as JSON, for clients that asked for ``"stream": false``."""
    from mendstream.parser import MessageParser

    parser = MessageParser()
    parser.feed(fixture.body)
    parser.end()
    return json.dumps(parser.message).encode()


@dataclass
class _ServerState:
    loop: asyncio.AbstractEventLoop | None = None
    server: asyncio.Server | None = None
    thread: threading.Thread | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ReplayServer:
    """Serves fixtures on ``http://127.0.0.1:PORT/v1/messages`` (any path ending in ``/v1/messages``, and
    Vertex AI's ``:streamRawPredict`` paths).

    ``source``: a directory of ``*.sse`` fixtures, a list of paths, or a mapping name → bytes/Fixture.
    ``port=0`` picks a free port. ``pace="captured"`` replays the captured chunk timings (divided by
    ``speed``); ``"fast"`` sends the captured chunks without waiting. See :class:`FixtureSelector` for
    ``select`` and ``cycle``. Requests with ``"stream": false`` get the fixture's final message as JSON.
    Every request is appended to :attr:`requests`.

    Use as a context manager (``with ReplayServer(d) as srv: srv.base_url``), or ``start()``/``stop()``;
    the server then runs in a daemon thread with its own event loop. ``serve_forever()`` runs it in the
    calling thread (the CLI). HTTP/1.1 keep-alive and chunked responses; hundreds of concurrent
    connections are fine.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        select: Select = "auto",
        pace: Pace = "fast",
        speed: float = 1.0,
        cycle: bool = True,
    ) -> None:
        if pace not in _PACE_VALUES:
            raise ValueError(f"pace must be one of {', '.join(_PACE_VALUES)}; got {pace!r}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0; got {speed!r}")
        self.fixtures = load_fixtures(source)
        self.selector = FixtureSelector(self.fixtures, select=select, cycle=cycle)
        self.host = host
        self.port = port
        self.pace = pace
        self.speed = speed
        self.requests: list[RecordedRequest] = []
        self._state = _ServerState()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: what to pass as ``base_url`` to the SDK."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The full messages endpoint URL."""
        return f"{self.base_url}/v1/messages"

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is bound."""
        if self._state.thread is not None:
            return self
        self._ready.clear()
        thread = threading.Thread(target=self._thread_main, name="mendstream-replay-server", daemon=True)
        self._state.thread = thread
        thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._state.thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and join the thread. Idempotent."""
        state = self._state
        if state.thread is None or state.loop is None:
            return
        loop = state.loop
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        state.thread.join(timeout=10)
        state.thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._state.loop = loop
        try:
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            self._shutdown(loop)

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self._state
        if state.server is not None:
            state.server.close()
        for task in list(state.tasks):
            task.cancel()
        if state.tasks:
            loop.run_until_complete(asyncio.gather(*state.tasks, return_exceptions=True))
        if state.server is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(state.server.wait_closed())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        state.server = None
        state.loop = None

    async def _bind(self) -> None:
        server = await asyncio.start_server(self._on_connection, self.host, self.port, backlog=1024)
        self._state.server = server
        self.port = server.sockets[0].getsockname()[1]

    def serve_forever(self, *, on_ready: Any = None) -> None:
        """Serve in the calling thread until interrupted (KeyboardInterrupt ends it quietly).

        ``on_ready(server)`` is called once the port is bound.
        """
        loop = asyncio.new_event_loop()
        self._state.loop = loop
        try:
            loop.run_until_complete(self._bind())
            if on_ready is not None:
                on_ready(self)
            loop.run_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown(loop)

    # -- HTTP ------------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._state.tasks.add(task)
        try:
            while True:
                keep_alive = await self._serve_one(reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._state.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line.strip():
            return False
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            bad = error_body("invalid_request_error", "bad request line")
            await self._send_simple(writer, 400, bad, False)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            hline = await reader.readline()
            if hline in (b"\r\n", b"\n", b""):
                break
            name, _, value = hline.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        raw = await self._read_body(reader, headers)
        keep_alive = version.upper() == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0]
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(method=method.upper(), path=target, headers=headers, body=body)
        self.requests.append(record)

        if not is_messages_path(path):
            record.status = 404
            msg = f"the replay server serves POST /v1/messages only, not {target}"
            await self._send_simple(writer, 404, error_body("not_found_error", msg), keep_alive)
            return keep_alive
        if record.method != "POST":
            record.status = 405
            msg = f"method {method} not allowed; use POST"
            await self._send_simple(writer, 405, error_body("invalid_request_error", msg), keep_alive)
            return keep_alive
        if not isinstance(body, dict):
            record.status = 400
            msg = "request body must be a JSON object"
            await self._send_simple(writer, 400, error_body("invalid_request_error", msg), keep_alive)
            return keep_alive
        try:
            fixture = self.selector.choose(headers, body)
        except NoFixtureError as exc:
            record.status = exc.status
            etype = _STATUS_ERROR_TYPES.get(exc.status, "not_found_error")
            await self._send_simple(writer, exc.status, error_body(etype, str(exc)), keep_alive)
            return keep_alive
        record.fixture = fixture.name
        record.status = fixture.status
        if body.get("stream") is not True and fixture.status == 200:
            try:
                payload = whole_message(fixture)
            except Exception as exc:
                record.status = 500
                err = error_body("api_error", f"fixture {fixture.name} has no complete message: {exc}")
                await self._send_simple(writer, 500, err, keep_alive)
                return keep_alive
            extra = [(k, v) for k, v in fixture.headers if k != "content-type"]
            await self._send_simple(writer, 200, payload, keep_alive, extra)
            return keep_alive
        return await self._send_fixture(writer, fixture, keep_alive)

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readline()
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""

    @staticmethod
    def _head(status: int, headers: Iterable[tuple[str, str]], keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        keep_alive: bool,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(payload))), *extra]
        writer.write(self._head(status, headers, keep_alive) + payload)
        await writer.drain()

    async def _send_fixture(self, writer: asyncio.StreamWriter, fixture: Fixture, keep_alive: bool) -> bool:
        headers = [("content-type", fixture.content_type)]
        names = {k for k, _ in fixture.headers}
        headers.extend((k, v) for k, v in fixture.headers if k != "content-type")
        if "request-id" not in names:
            headers.append(("request-id", f"req_replay_{fixture.name}_{len(self.requests)}"))
        headers.append(("cache-control", "no-cache"))
        headers.append(("transfer-encoding", "chunked"))
        keep_alive = keep_alive and not fixture.abort
        writer.write(self._head(fixture.status, headers, keep_alive))
        paced = self.pace == "captured"
        start = time.monotonic()
        for chunk, at in fixture.iter_chunks():
            if paced and at > 0:
                delay = start + at / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if chunk:
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await writer.drain()
        if fixture.abort:
            # The capture ended in a broken connection: replay that by closing without the last chunk.
            with contextlib.suppress(Exception):
                writer.transport.abort()
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive
