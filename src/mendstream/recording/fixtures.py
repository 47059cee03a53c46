# Fixtures and their selection: what a recorded response is (`NAME.sse` plus an optional `NAME.capture.json`
# sidecar written by mendstream.recording.capture), how a directory of them is loaded (never following a symlink out of
# the directory), and how the fixture for a request is chosen (header, body match, request order). Shared by
# the replay server and the in-process mock transports of mendstream.testing; no HTTP here.
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mendstream.errors import FixtureError, StreamError, UsageError
from mendstream.recording.capture import scrub_json, sidecar_path
from mendstream.wire.http import is_messages_path

__all__ = [
    "FIXTURES",
    "FIXTURE_HEADER",
    "Fixture",
    "FixtureSelector",
    "MissingFixtureError",
    "NoFixtureError",
    "Select",
    "fixture_paths",
    "is_messages_path",
    "load_fixtures",
    "not_sse_reason",
    "prefill_of",
]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
"""The directory of the fixtures that ship with mendstream (``*.sse`` streams, each with its
``.expected.json`` outcome and a README listing them): clean answers of every content block type, API
errors, and the broken streams mendstream repairs. ``mendstream serve`` without a directory serves it."""

FIXTURE_HEADER = "x-mendstream-fixture"
"""Request header naming the fixture to serve (its file name, with or without ``.sse``)."""

Select = Literal["auto", "header", "body", "order"]
_SELECT_VALUES = ("auto", "header", "body", "order")
# Headers the server computes itself; a sidecar's values for them describe the original connection (the
# body in the fixture is already decoded, so e.g. content-encoding must not be replayed).
_HOP_HEADERS = frozenset(
    {"connection", "content-encoding", "content-length", "keep-alive", "transfer-encoding", "date", "server"}
)
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class MissingFixtureError(FixtureError, FileNotFoundError):
    """The fixture directory or file does not exist (also a ``FileNotFoundError``)."""


def _field(meta: Mapping[str, Any], name: str, default: Any) -> Any:
    """``meta[name]``, or ``default`` when absent or null (a falsy wrong type is still reported)."""
    value = meta.get(name)
    return default if value is None else value


def _sidecar_error(side: Path, what: str) -> FixtureError:
    return FixtureError(f"{side}: {what} (expected the JSON object a capture writes)", path=str(side))


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

        Raises :class:`MissingFixtureError` (a ``FileNotFoundError``) for a missing body and
        :class:`~mendstream.errors.FixtureError` (a ``ValueError``) naming the file for an unreadable body
        or sidecar, and for a body that should be a stream (:meth:`is_stream`) but cannot be one
        (:func:`not_sse_reason`: empty, binary, JSON, no ``data:`` line).
        """
        p = Path(path)
        try:
            body = p.read_bytes()
        except FileNotFoundError:
            raise MissingFixtureError(f"fixture not found: {p}", path=str(p)) from None
        except OSError as exc:
            raise FixtureError(f"cannot read {p}: {exc.strerror or exc}", path=str(p)) from None
        name = p.name[: -len(".sse")] if p.name.endswith(".sse") else p.name
        side = sidecar_path(p)
        if not side.exists():
            fixture = cls(name=name, body=body)
        else:
            try:
                meta = json.loads(side.read_bytes())
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise _sidecar_error(side, f"not JSON ({exc})") from None
            except OSError as exc:
                raise FixtureError(f"cannot read {side}: {exc.strerror or exc}", path=str(side)) from None
            try:
                fixture = cls.from_sidecar(name, body, meta)
            except FixtureError as exc:
                raise _sidecar_error(side, exc.message) from None
        if fixture.is_stream():
            # The check `mendstream replay` makes, so that serve and replay agree on what a stream is.
            reason = not_sse_reason(body)
            if reason is not None:
                raise FixtureError(f"{p} is not an SSE stream: {reason}", path=str(p))
        return fixture

    @classmethod
    def from_sidecar(cls, name: str, body: bytes, meta: Any) -> Fixture:
        """Build a fixture from body bytes and a parsed sidecar dict (see mendstream.recording.capture).

        Raises :class:`~mendstream.errors.FixtureError` saying which field is malformed.
        """
        if not isinstance(meta, Mapping):
            raise FixtureError(f"the sidecar is a JSON {type(meta).__name__}, not an object")
        response = _field(meta, "response", {})
        if not isinstance(response, Mapping):
            raise FixtureError("'response' must be an object")
        raw_chunks = _field(meta, "chunks", ())
        if not isinstance(raw_chunks, list | tuple):
            raise FixtureError("'chunks' must be a list of [size, ms] pairs")
        chunks: list[tuple[int, float]] = []
        for item in raw_chunks:
            if (
                not isinstance(item, list | tuple)
                or len(item) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in item)
                or item[0] < 0
            ):
                raise FixtureError(f"'chunks' must be a list of [size, ms] pairs; found {item!r:.60}")
            chunks.append((int(item[0]), float(item[1])))
        if sum(s for s, _ in chunks) != len(body):
            chunks = []  # the body was edited after capture; the recorded chunking no longer applies
        raw_headers = _field(response, "headers", {})
        if not isinstance(raw_headers, Mapping):
            raise FixtureError("'response.headers' must be an object")
        headers = tuple(
            (str(k).lower(), str(v)) for k, v in raw_headers.items() if str(k).lower() not in _HOP_HEADERS
        )
        status = _field(response, "status", 200)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise FixtureError(f"'response.status' must be an HTTP status (100-599); found {status!r:.60}")
        request = _field(meta, "request", {})
        if not isinstance(request, Mapping):
            raise FixtureError("'request' must be an object")
        return cls(
            name=name,
            body=body,
            chunks=tuple(chunks),
            status=status,
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

    def is_stream(self) -> bool:
        """True when this fixture answers with a stream: status 200, not an aborted capture, and an SSE or AWS
        event-stream content type (a fixture without a sidecar is an SSE stream)."""
        return (
            self.status == 200
            and not self.abort
            and self.content_type.startswith(("text/event-stream", "application/vnd.amazon.eventstream"))
        )

    def is_clean(self) -> bool:
        """True when this fixture is a successful stream a plain SDK client accepts as is: status 200, not
        aborted, every event named, and it parses to a complete message with no repair and no error event."""
        if self.status != 200 or self.abort or not self.content_type.startswith("text/event-stream"):
            return False
        from mendstream.core.parser import MessageParser  # the core, imported only when auto selection needs it
        from mendstream.core.sse import SSEDecoder

        parser = MessageParser()
        decoder = SSEDecoder()
        try:
            parser.feed(self.body)
            parser.end()
            events = decoder.feed(self.body) + decoder.end()
        except StreamError:
            return False
        # strict SSE consumers (the SDK) dispatch on the event name: a data-only event is not clean
        return not parser.repairs and all(e.event for e in events if e.raw_data.strip())


_READ_SIZE = 1 << 20


def _pieces(source: bytes | str | os.PathLike[str]) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    with open(source, "rb") as fh:
        while piece := fh.read(_READ_SIZE):
            yield piece


def not_sse_reason(source: bytes | str | os.PathLike[str]) -> str | None:
    """Why ``source`` (a recorded response body, or the path of a file holding one) cannot be a recorded
    stream, or None if it may be one: an SSE stream has at least one ``data:`` line, and an AWS event-stream
    body (a captured Bedrock answer) starts with a valid prelude. The reasons: ``"it is empty"``, ``"it
    looks like JSON (...)"``, ``"it looks like a binary file"``, ``"it has no 'data:' line"``.

    One check for every reader of fixtures: ``mendstream replay`` refuses such a file and
    :meth:`Fixture.from_path` (so ``mendstream serve`` and ``ReplayServer``) refuses it as a stream. A file is
    read in 1 MiB pieces, stopping at the first ``data:`` (O(size) time, O(1 MiB) memory). Raises
    ``OSError`` when the file cannot be read.
    """
    from mendstream.core.eventstream import looks_like_event_stream

    overlap = b""
    head = b""
    for piece in _pieces(source):
        if not head:
            head = piece[:4096]
            if looks_like_event_stream(piece[:12]):
                return None  # a captured Bedrock body (AWS event-stream): replay reads it too
        if b"data:" in overlap + piece[:8] or b"data:" in piece:
            return None
        overlap = piece[-4:]
    if not head:
        return "it is empty"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "it looks like JSON (an SSE stream is lines of 'event: ...' and 'data: ...')"
    if b"\x00" in head:
        return "it looks like a binary file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4 KiB boundary
            return "it looks like a binary file"
    return "it has no 'data:' line"


def fixture_paths(directory: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """The ``*.sse`` files of ``directory`` sorted by name, and those skipped because they (or their sidecar)
    resolve outside the directory through a symlink: a fixture directory never serves other files."""
    root = Path(directory).resolve()
    kept: list[Path] = []
    skipped: list[Path] = []
    for p in sorted(Path(directory).glob("*.sse")):
        side = sidecar_path(p)
        inside = p.resolve().is_relative_to(root) and (not side.exists() or side.resolve().is_relative_to(root))
        (kept if inside else skipped).append(p)
    return kept, skipped


def load_fixtures(source: str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any]) -> list[Fixture]:
    """Fixtures from a directory (every ``*.sse``, sorted by name, except files reached through a symlink
    that points outside it), a file, a list of paths or Fixtures, or a mapping of name to body bytes (or
    Fixture).

    Raises :class:`MissingFixtureError` (a ``FileNotFoundError``) when a directory or file does not exist,
    :class:`~mendstream.errors.FixtureError` (a ``ValueError``) when a directory holds no usable ``*.sse``
    file or a sidecar is malformed.
    """
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if not p.exists():
            raise MissingFixtureError(f"fixture directory or file not found: {p}", path=str(p))
        if not p.is_dir():
            return [Fixture.from_path(p)]
        paths, skipped = fixture_paths(p)
        if not paths:
            extra = f" (skipped {len(skipped)} symlinked outside it)" if skipped else ""
            raise FixtureError(f"no *.sse fixtures in {p}{extra}", path=str(p))
        return [Fixture.from_path(x) for x in paths]
    if isinstance(source, Mapping):
        return [
            v if isinstance(v, Fixture) else Fixture(name=str(k), body=bytes(v)) for k, v in source.items()
        ]
    out: list[Fixture] = []
    for item in source:
        out.append(item if isinstance(item, Fixture) else Fixture.from_path(item))
    return out


class NoFixtureError(StreamError, LookupError):
    """No fixture fits the request; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status



def _normalize_body(body: Any) -> Any:
    if isinstance(body, Mapping):
        body = {k: v for k, v in body.items() if k != "stream"}
    return scrub_json(body)


def prefill_of(request_body: Any) -> str | None:
    """The text of a request's final assistant turn (a prefill, which the model's answer continues), or None
    when the request does not end with an assistant turn of text only (a string, or text blocks)."""
    if not isinstance(request_body, Mapping):
        return None
    messages = request_body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, Mapping) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    return None


def _conversation_key(body: Any) -> bytes | None:
    """A digest of the request ``body`` without ``stream`` and without a final prefill: the same for a request
    and for every continuation of its answer (which only adds the text received to the prefill)."""
    if not isinstance(body, Mapping):
        return None
    rest = {k: v for k, v in body.items() if k != "stream"}
    if prefill_of(body) is not None:
        rest["messages"] = body["messages"][:-1]
    try:
        text = json.dumps(rest, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(slots=True)
class _Answered:
    """What a selector remembers of a request: the fixture that answered it, the prefill the request had
    itself (a continuation adds the text received to it), and whether a fault plan broke the answer."""

    name: str
    prefill: str
    broken: bool = False


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
        ``"order"``: the next fixture in order (every fixture), per request; after the last, start over if
            ``cycle`` else fail with 404.
        ``"auto"`` (default): the header when sent, else a body match when one exists, else request order
            over the *clean* fixtures only (:meth:`Fixture.is_clean`: successful streams that need no
            repair), so an agent pointed at a directory of mixed fixtures gets answers it can use; error and
            fault fixtures are still served by header or body match. When no fixture is clean, all are used.

    Continuations, in every mode but ``"header"`` (where the header decides): a request that ends with an
    assistant prefill continuing an answer this selector chose (the same request with the text received
    as its prefill, as ``Retry(on_partial="continue")`` sends it) gets the same fixture, so the client never
    stitches two answers together; it does not advance request order. Without a remembered answer (another
    server, forgotten), the first fixture whose answer begins with the prefill is chosen, clean ones first.
    The same request sent again after its answer was broken on purpose (:meth:`faulted`: a retry, a restart,
    or a continuation sent without a prefill because nothing but a block's start had arrived) also gets the
    same fixture; after an answer that was not broken, the same request again is a new turn. The selector
    remembers the fixture chosen for the last ``remember_limit`` distinct requests.

    Raises :class:`~mendstream.errors.UsageError` (a ``ValueError``) for a bad ``select`` or no fixtures.
    """

    remember_limit = 4096

    def __init__(self, fixtures: Sequence[Fixture], *, select: Select = "auto", cycle: bool = True) -> None:
        if select not in _SELECT_VALUES:
            raise UsageError(f"select must be one of {', '.join(_SELECT_VALUES)}; got {select!r}")
        if not fixtures:
            raise UsageError("at least one fixture is needed")
        self.fixtures = list(fixtures)
        self.select = select
        self.cycle = cycle
        self._by_name = {f.name: f for f in self.fixtures}
        self._rotation: list[Fixture] | None = None if select == "auto" else self.fixtures
        self._next = 0
        self._lock = threading.Lock()
        # conversation key -> the fixture that answered it; see choose()
        self._answered: OrderedDict[bytes, _Answered] = OrderedDict()
        self._first_text: dict[str, str | None] = {}

    @property
    def rotation(self) -> list[Fixture]:
        """The fixtures request order cycles through (in ``"auto"`` mode: the clean ones)."""
        with self._lock:
            return self._rotation_locked()

    def _rotation_locked(self) -> list[Fixture]:
        if self._rotation is None:
            self._rotation = [f for f in self.fixtures if f.is_clean()] or self.fixtures
        return self._rotation

    def reset(self) -> None:
        """Start request order from the first fixture again, and forget which fixture answered which
        request."""
        with self._lock:
            self._next = 0
            self._answered.clear()

    def named(self, name: str | None) -> Fixture | None:
        """The fixture called ``name`` (``.sse`` suffix optional), or None."""
        return self._by_name.get(name.removesuffix(".sse")) if name else None

    def choose(self, headers: Mapping[str, str], body: Any) -> Fixture:
        """The fixture for a request with lowercase-named ``headers`` and decoded JSON ``body`` (remembered,
        so that a continuation of its answer gets the same one).

        Raises :class:`NoFixtureError` when none fits.
        """
        fixture = self._choose(headers, body)
        self.remember(body, fixture)
        return fixture

    def remember(self, body: Any, fixture: Fixture) -> None:
        """Note that ``fixture`` answers the request ``body`` (done by :meth:`choose`; for a fixture chosen
        otherwise, e.g. by the model named in a cloud path)."""
        key = _conversation_key(body)
        if key is None:
            return
        prefill = prefill_of(body) or ""
        with self._lock:
            seen = self._answered.get(key)
            if seen is None or seen.name != fixture.name or not prefill.startswith(seen.prefill):
                self._answered[key] = _Answered(fixture.name, prefill)
            else:  # the same answer again, or a continuation of it: keep the request's own prefill
                seen.broken = False
            self._answered.move_to_end(key)
            while len(self._answered) > self.remember_limit:
                self._answered.popitem(last=False)

    def faulted(self, body: Any) -> None:
        """Note that the answer to ``body`` was broken on purpose (a fault plan kept the client from it:
        ``faults.interrupts``), so that the same request sent again (a retry, a restart, a continuation
        without a prefill) gets the same fixture."""
        key = _conversation_key(body)
        if key is None:
            return
        with self._lock:
            seen = self._answered.get(key)
            if seen is not None:
                seen.broken = True

    def prefill_for(self, body: Any, fixture: Fixture) -> str | None:
        """The part of ``fixture``'s answer the client already has when ``body`` ends with a prefill: the
        prefill less the one the request had itself when ``fixture`` first answered it (a continuation adds
        only the text received). None when ``body`` has no prefill."""
        prefill = prefill_of(body)
        if prefill is None:
            return None
        key = _conversation_key(body)
        with self._lock:
            seen = self._answered.get(key) if key is not None else None
        if seen is not None and seen.name == fixture.name and seen.prefill and prefill.startswith(seen.prefill):
            return prefill[len(seen.prefill) :] or prefill  # the request itself again: its whole prefill
        return prefill

    def _answer_text(self, fixture: Fixture) -> str | None:
        """The text of ``fixture``'s first content block when it is a text block, else None (parsed once)."""
        try:
            return self._first_text[fixture.name]
        except KeyError:
            pass
        from mendstream.core.bedrock import BedrockParser  # the core, imported only when a prefill is seen

        text: str | None = None
        parser = BedrockParser(framing="auto")
        try:
            parser.feed(fixture.body)
            parser.end()
        except StreamError:
            pass
        else:
            content = parser.message.get("content") or []
            if content and isinstance(content[0], dict) and content[0].get("type") == "text":
                text = str(content[0].get("text") or "")
        self._first_text[fixture.name] = text
        return text

    def _continued(self, body: Any) -> Fixture | None:
        """The fixture whose answer ``body`` continues (see the class docstring), or None."""
        prefill = prefill_of(body)
        key = _conversation_key(body)
        with self._lock:
            seen = self._answered.get(key) if key is not None else None
            rotation = self._rotation_locked()
        if prefill is None or not prefill.strip() or (seen is not None and prefill == seen.prefill):
            # Nothing received to continue from: the same fixture only if its answer was broken on purpose.
            return self._by_name.get(seen.name) if seen is not None and seen.broken else None
        if seen is not None and prefill.startswith(seen.prefill) and prefill[len(seen.prefill) :].strip():
            fixture = self._by_name.get(seen.name)
            text = self._answer_text(fixture) if fixture is not None else None
            if fixture is not None and text is not None and text.startswith(prefill[len(seen.prefill) :]):
                return fixture
        for fixture in (*rotation, *self.fixtures):
            if fixture.status != 200 or fixture.abort:
                continue
            text = self._answer_text(fixture)
            if text is not None and text.startswith(prefill):
                return fixture
        return None

    def _choose(self, headers: Mapping[str, str], body: Any) -> Fixture:
        name = headers.get(FIXTURE_HEADER)
        if name is not None or self.select == "header":
            if name is None:
                raise NoFixtureError(f"missing {FIXTURE_HEADER} header", 400)
            found = self._by_name.get(name.removesuffix(".sse"))
            if found is None:
                raise NoFixtureError(f"no fixture named {name!r}; have {', '.join(sorted(self._by_name))}")
            return found
        found = self._continued(body)
        if found is not None:
            return found
        if self.select in ("body", "auto"):
            found = self._match_body(body)
            if found is not None:
                return found
            if self.select == "body":
                raise NoFixtureError("no fixture matches the request body")
        with self._lock:
            rotation = self._rotation_locked()
            if self._next >= len(rotation):
                if not self.cycle:
                    raise NoFixtureError(f"all {len(rotation)} fixtures have been served")
                self._next = 0
            found = rotation[self._next]
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
