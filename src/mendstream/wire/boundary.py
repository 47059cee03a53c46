# Survival at the HTTP boundary: a Messages stream forwarded to a client that parses SSE itself (code behind
# RepairTransport, any agent behind the proxy), driven through its attempts by the same stream machine as
# mendstream.stream (streaming/machine.py). Here an attempt's reader is the response rewriter (bytes in,
# repaired SSE bytes out) and the presenter works on those bytes:
#
#   - before anything the client could act on was forwarded (nothing past message_start and ping), a fault
#     (an `error` event, a cut, a stall, a 429/5xx answer) is retried invisibly: the retry's own
#     message_start is not sent again;
#   - after content, with on_partial="continue", a text-only partial is resumed with an assistant prefill and
#     the continuation spliced into the same response: the text goes on in the same block with no character
#     missing or repeated, indexes stay as the client knows them, usage is summed over the attempts;
#   - otherwise (tool input or thinking under way, on_partial="raise", the budget spent) the client gets an
#     `event: error` saying what happened, so its own error handling runs. A client cannot be told to forget
#     what it received, so nothing here restarts.
#
# What the client is answered when the first attempt never streams (an HTTP error, a connection failure) is
# the caller's business (BoundaryFailure); a boundary that gave up on a retriable answer says so with
# `x-should-retry: false`, so that the client's SDK does not multiply the attempts.
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jiter import from_json

from mendstream.core.accumulate import TOOL_BLOCK_TYPES
from mendstream.core.repair import Repair
from mendstream.errors import StreamError, UsageError
from mendstream.streaming.machine import (
    Continuation,
    StreamMachine,
    check_stream_options,
    delta_usage,
    skip_held,
    sum_usage,
)
from mendstream.streaming.retry import Attempt, Retry
from mendstream.wire.rewrite import ResponseRewriter, encode_event

__all__ = [
    "PROXY_SURVIVAL",
    "NotAStream",
    "Survival",
    "UpstreamStatusError",
    "WirePresenter",
    "WireReader",
    "boundary_machine",
]


@dataclass(frozen=True, slots=True)
class Survival:
    """What the boundary does about faults.

    Args:
        retry: the policy (None: one attempt). ``on_partial`` may be ``"raise"`` or ``"continue"``; a restart
            cannot be shown to a client that parses the stream itself.
        idle_timeout: seconds without a byte after which an attempt has stalled (None: off).
        progress_timeout: seconds without an event other than ``ping`` after which it has stalled (None: off).
        hold_tools: with ``on_partial="continue"``, hold each tool block back until it is complete (True, the
            default): a fault inside a tool call then leaves the client with text it can be continued from,
            and the model makes the call again; False streams tool input as it is written (a fault inside it
            then ends the stream with an error).

    Raises:
        UsageError: a value outside what is allowed, naming it.
    """

    retry: Retry | None = None
    idle_timeout: float | None = None
    progress_timeout: float | None = None
    hold_tools: bool = True

    def __post_init__(self) -> None:
        check_stream_options(self.retry, self.idle_timeout, self.progress_timeout)
        if self.retry is not None and self.retry.on_partial == "restart":
            raise UsageError(
                "on_partial='restart' cannot be done at the HTTP boundary: the client has already parsed what it "
                "received and cannot be told to forget it; use 'continue' (text is resumed, else an error event) "
                "or 'raise'"
            )

    @property
    def off(self) -> bool:
        return self.retry is None and self.idle_timeout is None and self.progress_timeout is None

    def to_json(self) -> str:
        """The policy as JSON (how ``mendstream proxy --workers N`` hands it to each worker)."""
        retry = self.retry
        data: dict[str, Any] = {"idle_timeout": self.idle_timeout, "progress_timeout": self.progress_timeout,
                                "hold_tools": self.hold_tools, "retry": None}
        if retry is not None:
            data["retry"] = {name: getattr(retry, name) for name in _RETRY_FIELDS}
            data["retry"]["retry_on"] = sorted(retry.retry_on, key=str)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Survival:
        """The policy from :meth:`to_json`'s format.

        Raises:
            UsageError: not that format, or a value outside what is allowed.
        """
        try:
            data = json.loads(text)
        except ValueError:
            raise UsageError(f"a survival policy must be JSON; got {text[:100]!r}") from None
        if not isinstance(data, dict) or not set(data) <= {"retry", "idle_timeout", "progress_timeout", "hold_tools"}:
            raise UsageError("a survival policy must be a JSON object of retry, idle_timeout, progress_timeout "
                             f"and hold_tools; got {text[:100]!r}")
        retry = data.get("retry")
        if retry is not None:
            if not isinstance(retry, dict) or not set(retry) <= set(_RETRY_FIELDS):
                raise UsageError(f"a survival policy's retry must be an object of {', '.join(_RETRY_FIELDS)}")
            if "retry_on" in retry:
                if not isinstance(retry["retry_on"], list):
                    raise UsageError("a survival policy's retry_on must be a list")
                retry = {**retry, "retry_on": frozenset(retry["retry_on"])}
            try:
                retry = Retry(**retry)
            except TypeError as exc:
                raise UsageError(f"a survival policy's retry is invalid: {exc}") from None
        return cls(retry, idle_timeout=data.get("idle_timeout"), progress_timeout=data.get("progress_timeout"),
                   hold_tools=bool(data.get("hold_tools", True)))


_RETRY_FIELDS = ("max_attempts", "backoff", "cap", "deadline", "retry_on", "on_partial", "jitter", "seed")


MAX_TRACKED_TEXT = 1 << 22
"""Characters of forwarded text the boundary keeps for a continuation's prefill (4 Mi: far past any answer's
``max_tokens``); past it the text is let go and a fault is answered with an ``event: error``."""
MAX_HELD_TOOL_BYTES = 1 << 24
"""Bytes of one tool block held back until it is complete (``hold_tools``); past it the block is sent as it
is and streams on, as with ``hold_tools=False``."""

PROXY_SURVIVAL = Survival(Retry(max_attempts=3, on_partial="continue"), idle_timeout=120.0, progress_timeout=600.0)
"""The proxy's defaults: up to 3 attempts, text continued after a fault, and stall timeouts no healthy stream
trips (the API sends bytes at least every few seconds while a response is in progress, pings included, so
120 s of silence is a dead connection; 10 minutes of nothing but pings is longer than any server-side tool
run the API allows)."""


class UpstreamStatusError(Exception):
    """The upstream answered an attempt with an HTTP error before streaming (its body read and kept).

    ``status_code``, ``headers`` (a list of raw pairs), ``body`` (bytes), ``response`` (the HTTP library's
    response: the retry policy reads ``retry-after`` / ``x-should-retry`` from it).
    """

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes, response: Any) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = body
        self.response = response if response is not None and hasattr(response, "headers") else _Answer(headers)
        try:
            decoded: Any = json.loads(body) if body else None
        except (ValueError, RecursionError):
            decoded = None
        self.body = decoded if isinstance(decoded, dict) else None
        error = self.body.get("error") if self.body is not None else None
        self.error_type = error.get("type") if isinstance(error, dict) else None
        super().__init__(f"HTTP {status_code} from the upstream" + (f" ({self.error_type})" if self.error_type else ""))


class _Answer:
    """What the retry policy reads of an answer given only its raw headers: ``headers.get(name)``."""

    __slots__ = ("headers",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


class NotAStream(Exception):
    """The upstream answered with something other than an SSE stream (JSON, HTML...): passed on as it is.
    ``response`` is the HTTP library's response, still open."""

    def __init__(self, response: Any) -> None:
        super().__init__("the upstream's answer is not an SSE stream")
        self.response = response


class WireReader:
    """One attempt's reader at the boundary: its ResponseRewriter (repairs as the core finds them; faults
    raised, not sent, so the machine may retry them)."""

    __slots__ = ("_on_repair", "rewriter")

    def __init__(self, on_repair: Callable[[Repair], None] | None = None) -> None:
        self._on_repair = on_repair
        self.rewriter = ResponseRewriter(on_repair=on_repair, errors="raise")

    def feed(self, data: bytes, /) -> list[bytes]:
        out = self.rewriter.feed(data)
        return [out] if out else []

    def end(self) -> list[bytes]:
        out = self.rewriter.end()
        return [out] if out else []

    @property
    def message(self) -> dict[str, Any]:
        return self.rewriter.message

    @property
    def repairs(self) -> list[Repair]:
        return self.rewriter.repairs

    @property
    def complete(self) -> bool:
        return self.rewriter.complete


@dataclass(slots=True)
class _Shown:
    text: list[str] = field(default_factory=list)  # text block 0 as forwarded (for a continuation's prefill)
    held: str = ""  # the whitespace the prefill had to leave out, to drop from the continuation's start
    usage: dict[str, Any] = field(default_factory=dict)  # the usage of the attempts before the current one
    start_usage: dict[str, Any] = field(default_factory=dict)  # the current one's message_start usage


class WirePresenter:
    """What a client on the wire is shown of each attempt's repaired SSE (whole canonical events, as the
    rewriter emits them): one ``message_start`` per stream, and when continuing, the continuation spliced in
    (see the module comment). ``track_text``: follow the forwarded text of block 0, which a continuation
    needs as its prefill (only when the policy may continue: it decodes every text delta). ``hold_tools``:
    hold each tool block back until its ``content_block_stop`` (then send it whole), so that a fault inside a
    tool call leaves the client with text only, which can be continued (the model then makes the call again);
    the cost is that a client sees a tool call's input at once when it is complete, not as it is written."""

    __slots__ = (
        "_held_bytes", "_holding", "_offset", "_shown", "_skipping", "_tracked", "continuing", "hold_tools",
        "shown_blocks", "shown_content", "shown_start", "skipped", "track_text", "transparent", "untracked",
    )
    resumes = False  # a client that sent one request expects one response: a paused turn is passed on as it is

    def __init__(self, *, track_text: bool = False, hold_tools: bool = False) -> None:
        self.track_text = track_text
        self.hold_tools = hold_tools
        self.shown_start = False
        self.shown_content = False
        self.continuing = False
        self.transparent = False
        self.shown_blocks: list[str] = []  # the types of the blocks whose start the client has
        self._holding: list[bytes] | None = None  # a tool block's events, held until its stop
        self._held_bytes = 0
        self._tracked = 0  # characters in _shown.text
        self.untracked: str | None = None  # why the text stopped being followed, when it did
        self._offset = 0  # added to a continuation's block indexes (1 when it does not go on with text)
        self._shown = _Shown()
        self.skipped = 0
        self._skipping = False

    def begin(self, attempt: Attempt) -> None:
        self.skipped = 0
        self._skipping = self.continuing and bool(self._shown.held)
        self._holding = None  # what a failed attempt held was never shown: it is dropped
        self._offset = 0

    def empty(self) -> list[bytes]:
        return []

    def partial(self, error: StreamError) -> list[bytes]:
        output = getattr(error, "output", b"")
        return [output] if type(output) is bytes and output else []

    def progressed(self, output: list[bytes]) -> bool:
        # Whole canonical events: one blank line each; pings are the only events that are not progress.
        return any(chunk.count(b"\n\n") > chunk.count(b"event: ping\n") for chunk in output)

    def show(self, output: list[bytes], attempt: Attempt) -> list[bytes]:
        """The bytes (one item, or none) the client is sent for an attempt's output (the same: one item)."""
        if not output or self.transparent:
            return output
        shown = self._show(output[0])
        self.transparent = (self.shown_content and not self.continuing and not self.track_text
                            and not self.hold_tools)
        return [shown] if shown else []

    def _show(self, output: bytes) -> bytes:
        kept: list[bytes] = []
        changed = False
        for block in output.split(b"\n\n")[:-1]:
            event = block + b"\n\n"
            name = block[7 : block.find(b"\n")] if block.startswith(b"event: ") else b""
            holding = self._holding
            if holding is not None:
                changed = True
                holding.append(event)
                self._held_bytes += len(event)
                if (name not in (b"content_block_stop", b"message_delta", b"message_stop", b"error")
                        and self._held_bytes <= MAX_HELD_TOOL_BYTES):
                    continue
                self._holding = None  # the tool block is whole (or the message ends): it goes out now
                for held in holding:
                    shown = self._one(held[7 : held.find(b"\n")], held)
                    if shown is not None:
                        kept.append(shown)
                continue
            if self.hold_tools and name == b"content_block_start" and self._is_tool_start(event):
                self._holding = [event]
                self._held_bytes = len(event)
                changed = True
                continue
            shown = self._one(name, event)
            if shown is not event:
                changed = True
            if shown is not None:
                kept.append(shown)
        return b"".join(kept) if changed else output

    def _one(self, name: bytes, event: bytes) -> bytes | None:
        """One event as the client must see it (None: not sent)."""
        if name == b"message_start":
            if self.shown_start:
                if self.continuing:  # its usage is part of the turn's: the continuation's delta adds it
                    payload = self._payload(event)
                    message = payload.get("message") if type(payload) is dict else None
                    usage = message.get("usage") if type(message) is dict else None
                    self._shown.start_usage = usage if type(usage) is dict else {}
                return None  # a retry or continuation: the client already has its message_start
            self.shown_start = True
            return event
        if name == b"ping":
            return event
        if self.continuing:
            rewritten = self._continued(name, event)
            if rewritten is None:
                return None
            event = rewritten
        elif self.track_text:
            self._track(name, event)
        if name == b"content_block_start":
            self.shown_blocks.append(self._block_type(event))
        self.shown_content = True
        return event

    def restart(self) -> None:  # pragma: no cover - the boundary's machine never restarts
        raise UsageError("a stream on the wire cannot restart")

    def keep(self, message: dict[str, Any]) -> None:
        if self.continuing:
            self._shown.usage = sum_usage(self._shown.usage, message.get("usage"))

    def resume(self, message: dict[str, Any]) -> dict[str, Any] | None:  # pragma: no cover - resumes is False
        return None

    def continue_from(self, message: dict[str, Any]) -> Continuation | str:
        kinds = self.shown_blocks  # what the client has: a held tool block it never saw does not count
        others = [k for k in kinds if k != "text"]
        if others:
            return f"the partial output has a {others[0]} block"
        if len(kinds) > 1:
            return "the partial output has more than one text block"
        if not self.track_text:
            return self.untracked or "the boundary did not follow the text (on_partial is not 'continue')"
        shown = "".join(self._shown.text)
        prefill = shown.rstrip()
        self._shown.usage = sum_usage(self._shown.usage, message.get("usage"))
        self._shown.held = shown[len(prefill) :]
        self.continuing = True
        self.transparent = False
        # Nothing but a block's start (or blanks) was shown: the request is sent again as it was and its answer
        # spliced in as a continuation's (the client already has message_start and block 0's start).
        return Continuation.prefill(prefill) if prefill else Continuation(())

    def stitch_usage(self, usage: Any) -> Any:
        """``usage`` of the current attempt, summed with the attempts before it (when continuing)."""
        return sum_usage(dict(self._shown.usage), usage) if self.continuing else usage

    # -- internals ------------------------------------------------------------------------------------------

    @classmethod
    def _block_type(cls, event: bytes) -> str:
        payload = cls._payload(event)
        block = payload.get("content_block") if type(payload) is dict else None
        return str(block.get("type")) if type(block) is dict else "?"

    @classmethod
    def _is_tool_start(cls, event: bytes) -> bool:
        payload = cls._payload(event)
        block = payload.get("content_block") if type(payload) is dict else None
        return type(block) is dict and (block.get("type") in TOOL_BLOCK_TYPES or "input" in block)

    @staticmethod
    def _payload(event: bytes) -> Any:
        start = event.find(b"\ndata: ")
        try:
            return from_json(event[start + 7 : -2]) if start >= 0 else None
        except ValueError:
            return None

    def _track(self, name: bytes, event: bytes) -> None:
        """Follow the text of block 0 as it is forwarded (for a later continuation's prefill)."""
        if name != b"content_block_delta":
            if name == b"content_block_start" and b'"type":"text"' not in event.replace(b" ", b""):
                self.track_text = False  # another kind of block: no continuation is possible any more
            return
        if b"text_delta" not in event:  # cheap: most events need no decoding
            return
        payload = self._payload(event)
        if type(payload) is dict and payload.get("index") == 0:
            delta = payload.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta" and type(delta.get("text")) is str:
                self._shown.text.append(delta["text"])
                self._tracked += len(delta["text"])
                if self._tracked > MAX_TRACKED_TEXT:  # bounded: let the text go, and with it a continuation
                    self.track_text = False
                    self._shown.text = []
                    self.untracked = f"the text shown is over {MAX_TRACKED_TEXT} characters (MAX_TRACKED_TEXT)"

    def _continued(self, name: bytes, event: bytes) -> bytes | None:
        """A continuation's event as the client must see it (None: dropped; the same object: unchanged).

        The continuation's block 0 goes on with the client's text block 0 when it is text (its start is
        dropped, its text deltas spliced). When it is anything else (the model went straight to a tool call),
        the client's block 0 is stopped first and every block of the continuation moves one index up."""
        if name not in (b"content_block_start", b"content_block_delta", b"content_block_stop", b"message_delta"):
            return event
        payload = self._payload(event)
        if type(payload) is not dict:
            return event
        if name == b"message_delta":
            usage = payload.get("usage")
            if type(usage) is not dict:
                return event
            shown = self._shown
            return encode_event("message_delta", {**payload, "usage": delta_usage(shown.usage, shown.start_usage,
                                                                                 usage)})
        index = payload.get("index")
        if name == b"content_block_start" and index == 0 and self._offset == 0:
            block = payload.get("content_block")
            if type(block) is dict and block.get("type") == "text":
                return None  # block 0 goes on: the client has its start
            self._offset = 1
            stop = encode_event("content_block_stop", {"type": "content_block_stop", "index": 0})
            return stop + encode_event("content_block_start", {**payload, "index": 1})
        if self._offset and type(index) is int:
            return encode_event(name.decode(), {**payload, "index": index + self._offset})
        if name != b"content_block_delta":
            return event
        delta = payload.get("delta")
        if index != 0 or type(delta) is not dict or delta.get("type") != "text_delta":
            return event
        text = delta.get("text")
        if type(text) is not str:
            return event
        if self._skipping:
            text = self._skip(text)
            if not text:
                return None
            event = encode_event("content_block_delta", {**payload, "delta": {**delta, "text": text}})
        self._shown.text.append(text)
        return event

    def _skip(self, text: str) -> str:
        rest, self.skipped, done = skip_held(text, self._shown.held, self.skipped)
        if done:
            self._skipping = False
        return rest


def boundary_machine(
    survival: Survival, *, on_repair: Callable[[Repair], None] | None = None, now: float
) -> StreamMachine[list[bytes]]:
    """The machine of one Messages stream forwarded at the boundary, with ``survival``'s policy."""
    retry = survival.retry
    continues = retry is not None and retry.on_partial == "continue"
    presenter = WirePresenter(track_text=continues, hold_tools=continues and survival.hold_tools)
    return StreamMachine(
        retry,
        reader=lambda number: WireReader(on_repair),
        presenter=presenter,
        now=now,
        idle_timeout=survival.idle_timeout,
        progress_timeout=survival.progress_timeout,
        restarts=False,
        stop_when_complete=True,
    )


def repair_counts(machine: StreamMachine[list[bytes]]) -> Counter[str]:
    """Repairs by kind over every attempt of a boundary stream."""
    counts: Counter[str] = Counter()
    for repair in machine.repairs:
        counts[repair.kind] += 1
    return counts


def attempts_summary(attempts: list[Attempt]) -> dict[str, int]:
    """How a boundary stream's attempts went: ``attempts``, ``retries`` (invisible), ``continuations``,
    ``stalls``."""
    from mendstream.errors import StreamStalledError

    return {
        "attempts": len(attempts),
        "retries": sum(1 for a in attempts if a.mode == "retry"),
        "continuations": sum(1 for a in attempts if a.mode == "continue"),
        "stalls": sum(1 for a in attempts if isinstance(a.error, StreamStalledError)),
    }


def timeout_seconds(value: float | None) -> float:
    """A timeout for an HTTP library (None: none): ``math.inf`` is not accepted by every library."""
    return value if value is not None and math.isfinite(value) else 3600.0
