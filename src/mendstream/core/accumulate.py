# Accumulation: decoded SSE events in, stream events and the message state out. Knows the Messages API's
# event grammar (message_start, content_block_start/delta/stop, message_delta, message_stop, ping, error)
# and passes anything else through. No I/O, no framing.
#
# Cost model: every handler does O(1) work plus the size of what it receives. Text and tool-input deltas
# are appended to lists; snapshots are built only when an event's `.snapshot` or the message is read. The
# tool-input parser is advanced lazily, fragment by fragment, so reading every snapshot in order costs
# O(n) parsing in total (see partial_json.py).
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from jiter import from_json

from mendstream.core.events import (
    CitationEvent,
    CompactionEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Data,
    Event,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    SignatureEvent,
    UnknownEvent,
    content_block_delta_event,
    copy_json,
    input_json_event,
    text_event,
    thinking_event,
)
from mendstream.core.partial_json import MAX_NESTING_DEPTH, MISSING, PartialJSONError, ToolInputParser, loads
from mendstream.core.repair import Repair
from mendstream.errors import APIStreamError, IncompleteStreamError, ProtocolError, ToolInputError, UsageError

__all__ = [
    "INPUT_INCOMPLETE",
    "MAX_REPAIRS",
    "TOOL_BLOCK_TYPES",
    "WHOLE_OUTPUT_STOP_REASONS",
    "MessageAccumulator",
    "PartialMode",
    "check_partial_mode",
    "cuts_output",
]

PartialMode = Literal["on", "trailing-strings"]
MAX_REPAIRS = 10_000

#: The key set to True on a tool block (``tool_use``, ``server_tool_use``, ...) whose input was cut short by
#: the stop reason: its ``input`` is what parses of the partial JSON, and must not be run as if whole.
#: :func:`mendstream.core.sdk_events.to_sdk_message` turns it into an attribute of the SDK's block that is never
#: serialized (so a message sent back to the API stays valid).
INPUT_INCOMPLETE = "input_incomplete"

#: Stop reasons after which the model's output is whole: a tool input that does not parse is then a fault
#: (ToolInputError). Every other stop reason, including ones this version does not know, may end the output
#: in the middle of a tool input (``max_tokens``, ``model_context_window_exceeded``, ``refusal``, a
#: ``stop_sequence``, ``pause_turn``, the beta ``compaction``): see docs/stop-reasons.md.
WHOLE_OUTPUT_STOP_REASONS = frozenset(("end_turn", "tool_use"))


def cuts_output(stop_reason: object) -> bool:
    """Whether a message that stopped for ``stop_reason`` may end in the middle of a tool input."""
    if stop_reason is None:
        return False
    return not (type(stop_reason) is str and stop_reason in WHOLE_OUTPUT_STOP_REASONS)
_MISSING_SNAPSHOT: Any = object()
_MESSAGE_DELTA_OWN = frozenset(("type", "delta", "usage"))
_STOP_DETAILS = ("stop_sequence", "stop_details")


def _empty_message() -> dict[str, Any]:
    return {
        "id": "",
        "type": "message",
        "role": "assistant",
        "model": "",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


class _Joined:
    """A growing string kept as parts; snapshot k is the join of the first k parts. The latest snapshot is
    cached, so reading them in order joins only the new parts (plus the copy any new str costs)."""

    __slots__ = ("_cache", "_cache_n", "parts")

    def __init__(self, initial: str) -> None:
        self.parts: list[str] = [initial] if initial else []
        self._cache = ""
        self._cache_n = 0

    def snapshot_at(self, n: int) -> str:
        if n == self._cache_n:
            return self._cache
        if n > self._cache_n:
            value = self._cache + "".join(self.parts[self._cache_n : n])
        else:
            value = "".join(self.parts[:n])
        self._cache, self._cache_n = value, n
        return value

    def value(self) -> str:
        return self.snapshot_at(len(self.parts))


class _Citations:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def snapshot_at(self, n: int) -> list[Any]:
        return [Data(c) if type(c) is dict else c for c in self.items[:n]]


class _ToolInput:
    """The fragments of one tool block's input, and a parser advanced only as far as snapshots are read.

    ``start`` is the ``input`` of the block's ``content_block_start``, or MISSING when it had none (then a
    snapshot before any value has arrived is None, as in the SDK, and the block gets no ``input`` unless
    fragments bring one)."""

    __slots__ = ("_cache", "_parser", "_parser_n", "_shown_start", "_start", "fragments", "mode")

    def __init__(self, start: Any, mode: PartialMode) -> None:
        self._start = start
        self._shown_start = None if start is MISSING else start
        self.mode: PartialMode = mode
        self.fragments: list[str] = []
        self._parser: ToolInputParser | None = None
        self._parser_n = 0
        self._cache: dict[int, Any] = {}

    def raw(self) -> str:
        return "".join(self.fragments)

    def size(self) -> int:
        """Characters of input received."""
        return sum(map(len, self.fragments))

    def current(self) -> Any:
        """The input as far as it has arrived (a partial snapshot)."""
        return self.snapshot_at(len(self.fragments))

    def partial(self) -> Any:
        """What the SDK's snapshot holds for an input that failed to parse: jiter's partial parse of the raw
        text. Raises ValueError when the text is broken rather than cut short."""
        mode = True if self.mode == "on" else self.mode
        return from_json(self.raw().encode("utf-8", "surrogatepass"), partial_mode=mode)

    def snapshot_at(self, n: int) -> Any:
        cached = self._cache.get(n, _MISSING_SNAPSHOT)
        if cached is not _MISSING_SNAPSHOT:
            return cached
        value = self._compute(n)
        if len(self._cache) >= 4:  # keep the few most recent: events are usually read in order, once or twice
            del self._cache[next(iter(self._cache))]
        self._cache[n] = value
        return value

    def _compute(self, n: int) -> Any:
        if n < self._parser_n:  # an old event's snapshot read late: parse that prefix afresh
            parser = ToolInputParser(partial_mode=self.mode)
            parser.feed("".join(self.fragments[:n]))
            value = parser.snapshot()
        else:
            if self._parser is None:
                self._parser = ToolInputParser(partial_mode=self.mode)
            parser = self._parser
            for fragment in self.fragments[self._parser_n : n]:
                parser.feed(fragment)
            self._parser_n = n
            value = parser.snapshot()
        return self._shown_start if value is MISSING else value

    def finish(self) -> tuple[Any, list[tuple[str, str]]]:
        """The final input and the repairs it needed, as (kind, detail). Raises PartialJSONError, also for
        an input nested too deep for the standard library's parser (a RecursionError there)."""
        try:
            return self._finish()
        except RecursionError:
            raise PartialJSONError(0, "nested deeper than Python's recursion limit allows") from None

    def _finish(self) -> tuple[Any, list[tuple[str, str]]]:
        text = "".join(self.fragments)
        repairs: list[tuple[str, str]] = []
        if not text.strip():
            return self._start, repairs
        if _replaces_start(self._start):
            repairs.append(("tool_input_replaced_start", f"start input {json.dumps(self._start)[:200]}"))
        # Strict first (the common case, one C pass). jiter is 4x faster than json.loads here and, on complete
        # documents, either returns what json.loads returns or raises (lone surrogates, very deep nesting), so
        # json.loads decides then. strict=False accepts raw control characters in strings, which is then the
        # only difference, and a repair to report.
        try:
            return from_json(text.encode("utf-8", "surrogatepass")), repairs
        except ValueError:
            pass
        try:
            return loads(text), repairs  # json.loads that refuses nesting past MAX_NESTING_DEPTH
        except ValueError:
            pass
        try:
            value = loads(text, strict=False)
        except ValueError:
            pass
        else:
            repairs.append(("tool_input_control_characters", "raw control characters kept in strings"))
            return value, repairs
        parser = ToolInputParser(partial_mode=self.mode)
        parser.feed(text)
        try:
            value = parser.finish()
        except PartialJSONError as exc:
            values = parser.values
            if exc.reason != "multiple values" or not values or not all(type(v) is dict for v in values):
                raise
            value = {}
            for part in values:
                value.update(part)
            repairs.append(("tool_input_multiple_values", f"merged {len(values)} JSON objects in order"))
        repairs.extend(_parser_repairs(parser))
        return value, repairs


class _Discard:
    """The parts of a text block whose content is not kept (``keep_content=False``): appends vanish."""

    __slots__ = ()

    def append(self, part: str, /) -> None:
        pass


class _ToolCheck:
    """A tool input whose content is not kept (``keep_content=False``): each fragment is checked as it
    arrives by a ToolInputParser that builds no value, so a broken input is still found (the same errors
    and repair kinds as _ToolInput) in memory bounded by the nesting depth. The value is the start value."""

    __slots__ = ("_parser", "_seen", "_size", "_start")

    def __init__(self, start: Any, mode: PartialMode) -> None:
        self._start = start
        self._parser = ToolInputParser(partial_mode=mode, keep_values=False)
        self._seen = False  # a fragment with more than whitespace arrived
        self._size = 0

    def append(self, fragment: str, /) -> None:
        if not self._seen and fragment.strip():
            self._seen = True
        self._size += len(fragment)
        self._parser.feed(fragment)

    def raw(self) -> str:
        return ""  # not kept

    def size(self) -> int:
        """Characters of input received (counted, not kept)."""
        return self._size

    @property
    def failed(self) -> PartialJSONError | None:
        return self._parser.failed

    def current(self) -> Any:
        return self._start

    def partial(self) -> Any:
        # As _ToolInput.partial decides with jiter's partial parse of the raw text, from the parser's state.
        if self._parser.jiter_refuses():
            raise ValueError("jiter's partial parse refuses the text")
        return self._start

    def finish(self) -> tuple[Any, list[tuple[str, str]]]:
        repairs: list[tuple[str, str]] = []
        if not self._seen:
            return self._start, repairs
        if _replaces_start(self._start):
            repairs.append(("tool_input_replaced_start", f"start input {json.dumps(self._start)[:200]}"))
        parser = self._parser
        try:
            parser.finish()
        except PartialJSONError as exc:
            if exc.reason != "multiple values" or not parser.only_objects:
                raise
            repairs.append(("tool_input_multiple_values", f"merged {parser.value_count} JSON objects in order"))
        repairs.extend(_parser_repairs(parser))
        return self._start, repairs


def _replaces_start(start: Any) -> bool:
    """Whether deltas replacing ``start`` (a tool block's start input) discard something: a non-empty value."""
    return start is not MISSING and start not in ({}, None)


def _parser_repairs(parser: ToolInputParser) -> list[tuple[str, str]]:
    """The repairs a tool input needed, from the repairs its ToolInputParser recorded."""
    repairs: list[tuple[str, str]] = []
    kinds = {kind for kind, _, _ in parser.repairs}
    if "control_character" in kinds:
        repairs.append(("tool_input_control_characters", "raw control characters kept in strings"))
    if "invalid_escape" in kinds:
        count = sum(1 for kind, _, _ in parser.repairs if kind == "invalid_escape")
        repairs.append(("tool_input_invalid_escape", f"kept {count} invalid escape(s) literally"))
    return repairs


# Block kinds. A closed block has kind _CLOSED, so no delta handler changes it.
_TEXT, _THINKING, _TOOL, _OTHER, _CLOSED = 0, 1, 2, 3, 4
_NO_PARTS: list[str] = []
# Text-like block types: the kind, and the field their deltas append to.
_TEXT_LIKE = {"text": (_TEXT, "text"), "thinking": (_THINKING, "thinking")}
# Block types whose input the SDK builds from input_json_delta fragments even when their content_block_start
# has no `input` (the SDK's TRACKS_TOOL_INPUT, beta included). A block of any type that has an `input` is
# tracked too.
TOOL_BLOCK_TYPES = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))
# Block types whose content_block_start MessageAccumulator._check_start looks at.
_START_CHECKS = TOOL_BLOCK_TYPES | {"fallback"} | _TEXT_LIKE.keys()


class _Block:
    __slots__ = (
        "append", "block", "citations", "field", "index", "kind", "orphan", "parts", "source", "text", "tool",
    )

    def __init__(self, index: int, block: dict[str, Any], mode: PartialMode, keep: bool = True) -> None:
        self.index = index
        self.block = block
        self.orphan = False  # tool input for a block that never started: an error at its stop
        self.text: _Joined | None = None
        self.field: str | None = None  # the text-like field that deltas grow ("text", "thinking")
        self.tool: _ToolInput | _ToolCheck | None = None
        self.citations: _Citations | None = None
        # What append deltas grow (text parts or tool-input fragments) and the snapshot source over them.
        self.parts: Any = _NO_PARTS
        self.source: _Joined | _ToolInput | None = None
        btype = block.get("type")
        text_like = _TEXT_LIKE.get(btype) if type(btype) is str else None  # (a dict or list is unhashable)
        if text_like is not None and type(block.get(text_like[1], "")) is str:
            self.kind, self.field = text_like
            if keep:
                self.text = self.source = _Joined(block.get(self.field) or "")
                self.parts = self.text.parts
            else:
                self.parts = _DISCARD
        elif "input" in block or (type(btype) is str and btype in TOOL_BLOCK_TYPES):
            self.kind = _TOOL
            start = block.get("input", MISSING)
            if keep:
                self.tool = self.source = _ToolInput(start, mode)
                self.parts = self.tool.fragments
            else:
                self.tool = self.parts = _ToolCheck(start, mode)
        else:
            self.kind = _OTHER
        # The append delta this block takes (dtype, field, event factory), from _DELTAS: the hot path.
        # Without content kept, appends go to _DISCARD / _ToolCheck and make no derived event (factory None).
        self.append = _APPENDS.get(self.kind) if keep else _LEAN_APPENDS.get(self.kind)

    @property
    def closed(self) -> bool:
        return self.kind == _CLOSED

    def materialize(self) -> dict[str, Any]:
        """The open block as a Messages API dict, its tool input as a partial snapshot."""
        out = dict(self.block)
        if self.text is not None and self.field is not None:
            out[self.field] = self.text.value()
        if self.citations is not None:
            out["citations"] = list(self.citations.items)
        if self.tool is not None:
            value = self.tool.current()
            if value is not MISSING and not (value is None and "input" not in self.block):
                out["input"] = value
        return out


# -- delta rules: one per delta type, in _DELTAS ------------------------------------------------------------
# A rule is (block kind it applies to, delta field, event class, handler). Most deltas append a string to the
# block (text, thinking, tool-input fragments): their rule has no handler, and the accumulator appends the
# delta's `field` to the block's parts and emits `event class(value, snapshot source, count)`. Any other
# delta has a handler that applies it. A delta that does not fit its block (a text_delta on a tool block, a
# value of the wrong type) or of an unknown type leaves the block unchanged; the raw ContentBlockDeltaEvent
# carries it. Adding a delta type is one rule (and a handler if it does not append).

_DeltaHandler = Callable[[_Block, dict[str, Any], list[Event]], None]


def _on_signature_delta(block: _Block, delta: dict[str, Any], out: list[Event]) -> None:
    signature = delta.get("signature")
    if type(signature) is str:
        block.block["signature"] = signature
        out.append(SignatureEvent(signature))


def _on_citations_delta(block: _Block, delta: dict[str, Any], out: list[Event]) -> None:
    citation = delta.get("citation")
    if citation is not None:
        citations = block.citations
        if citations is None:
            existing = block.block.get("citations")
            citations = block.citations = _Citations(list(existing) if type(existing) is list else [])
        citations.items.append(citation)
        view = Data(citation) if type(citation) is dict else citation
        out.append(CitationEvent(view, citations, len(citations.items)))


def _on_compaction_delta(block: _Block, delta: dict[str, Any], out: list[Event]) -> None:
    # As the beta SDK: each compaction_delta replaces the block's content and encrypted_content, and is
    # followed by a `compaction` event holding them.
    if block.block.get("type") == "compaction":
        content = block.block["content"] = delta.get("content")
        encrypted = block.block["encrypted_content"] = delta.get("encrypted_content")
        out.append(CompactionEvent(content, encrypted))


_DELTAS: dict[object, tuple[int, str, Any, _DeltaHandler | None]] = {
    "text_delta": (_TEXT, "text", text_event, None),
    "thinking_delta": (_THINKING, "thinking", thinking_event, None),
    "input_json_delta": (_TOOL, "partial_json", input_json_event, None),
    "signature_delta": (_THINKING, "signature", None, _on_signature_delta),
    "citations_delta": (_TEXT, "citation", None, _on_citations_delta),
    "compaction_delta": (_OTHER, "content", None, _on_compaction_delta),
}
# Each block kind's append delta, (dtype, field, event factory), derived from the table above.
_APPENDS: dict[int, tuple[str, str, Any]] = {
    kind: (str(dtype), field, factory) for dtype, (kind, field, factory, handler) in _DELTAS.items() if handler is None
}
_LEAN_APPENDS: dict[int, tuple[str, str, Any]] = {
    kind: (dtype, field, None) for kind, (dtype, field, _) in _APPENDS.items()
}
_DISCARD = _Discard()

# The block a delta for a never-started index synthesizes, by delta type.
_SYNTHESIZED: dict[object, Callable[[], dict[str, Any]]] = {
    "text_delta": lambda: {"type": "text", "text": ""},
    "citations_delta": lambda: {"type": "text", "text": ""},
    "thinking_delta": lambda: {"type": "thinking", "thinking": "", "signature": ""},
    "signature_delta": lambda: {"type": "thinking", "thinking": "", "signature": ""},
    "input_json_delta": lambda: {"type": "tool_use", "id": "", "name": "", "input": {}},
}


class MessageAccumulator:
    """Turns decoded SSE events into stream events and an accumulated message.

    ``handle(name, obj, offset, ordinal, out)`` applies one decoded SSE event and appends the resulting
    stream events to ``out``; ``handle_delta`` is the same for a ``content_block_delta`` while ``streaming``;
    ``end(out)`` closes the stream. Errors raised: APIStreamError, IncompleteStreamError, ToolInputError.

    A tool input that no repair parses raises ToolInputError once the stop reason is known, unless that
    reason may cut the output short (:func:`cuts_output`: every reason but ``end_turn`` and ``tool_use``):
    then the input is kept as far as it parses, the block gets ``"input_incomplete": True`` and a
    ``tool_input_cut`` repair records the raw text. A content_block_start that repeats an index in use starts
    a new block at the next index (``block_index_repeated``), as the SDK appends it.
    """

    def __init__(self, *, partial_mode: PartialMode = "on", keep_content: bool = True) -> None:
        self.partial_mode: PartialMode = partial_mode
        self.keep_content = keep_content
        self.repairs: list[Repair] = []
        self.stopped = False  # message_stop seen
        self.streaming = False  # between message_start (or its repair) and the stop: the common state
        self.stop_reason_seen = False
        self._pending_inputs: list[ToolInputError] = []  # see _unparseable_input
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, _Block] = {}
        self._offset: int | None = None  # where the event being handled starts, for repair records
        self._ordinal: int | None = None
        self._handlers: dict[str, Callable[[dict[str, Any], list[Event]], None]] = {
            "content_block_delta": self._on_block_delta,
            "content_block_start": self._on_block_start,
            "content_block_stop": self._on_block_stop,
            "message_start": self._on_message_start,
            "message_delta": self._on_message_delta,
            "message_stop": self._on_message_stop,
            "ping": self._on_ping,
            "error": self._on_error,
        }

    # -- snapshots ---------------------------------------------------------------------------------------

    def message(self) -> dict[str, Any] | None:
        """The message so far as a fresh dict (tool inputs as partial snapshots), or None before any event.

        Fresh all the way down: every dict and list in it is a copy, so changing it never changes the
        accumulator's state (or a message returned earlier or later).
        """
        if self._message is None:
            return None
        out = dict(self._message)
        if type(out.get("usage")) is not dict:
            out.pop("usage", None)
        blocks = self._blocks
        out["content"] = [
            blocks[i].block if blocks[i].closed else blocks[i].materialize() for i in sorted(blocks)
        ]
        fresh: dict[str, Any] = copy_json(out)
        return fresh

    def raw_tool_inputs(self) -> dict[int, str]:
        return {i: b.tool.raw() for i, b in self._blocks.items() if b.tool is not None and not b.closed}

    def broken_tool_input(self, index: int, /) -> ToolInputError | None:
        """The error block ``index``'s tool input will end with whatever follows, once the text received can
        no longer become JSON that a repair or a stop reason saves (the same judgement as at its stop); else
        None. Known only to a parser that checks input as it arrives (``keep_content=False``); O(1) unless
        the input has just failed."""
        block = self._blocks.get(index)
        tool = block.tool if block is not None else None
        if not isinstance(tool, _ToolCheck) or tool.failed is None:
            return None
        assert block is not None
        try:
            tool.partial()
        except ValueError:
            return ToolInputError(
                f"tool input of block {index} is not JSON even after repair: {tool.failed.reason} "
                f"at char {tool.failed.position} of {tool.size()}",
                raw=tool.raw(),
                index=index,
                snapshot=self.message(),
                offset=self._offset,
            )
        return None

    # -- driving -----------------------------------------------------------------------------------------

    def handle(self, name: str | None, obj: Any, offset: int, ordinal: int, out: list[Event]) -> None:
        """Apply one decoded SSE event (``name`` from its ``event:`` line, ``obj`` its JSON data), appending
        the resulting stream events to ``out``. ``offset`` and ``ordinal`` locate it for repair records."""
        self._offset = offset
        self._ordinal = ordinal
        etype = obj.get("type") if type(obj) is dict else None
        # One test keeps the common case fast; everything unusual is sorted out in _handle_unusual.
        if type(etype) is not str or (name is not None and name != etype) or not self.streaming:
            self._handle_unusual(name, obj, out)
            return
        handler = self._handlers.get(etype)
        if handler is None:
            out.append(UnknownEvent(etype, Data(obj)))
        else:
            handler(obj, out)

    def _handle_unusual(self, name: str | None, obj: Any, out: list[Event]) -> None:
        if type(obj) is not dict:
            out.append(UnknownEvent(name or "unknown", Data({"type": name, "data": obj})))
            return
        etype = obj.get("type")
        if type(etype) is not str:
            etype = name or "unknown"
        elif name is not None and name != etype and name != "error":
            self._repair("event_name_mismatch", f"event name {name!r} but JSON type {etype!r}; used the JSON type")
        if name == "error":
            etype = "error"
        if self.stopped and etype != "ping":
            self._repair("event_after_message_stop", f"ignored a {etype!r} event after message_stop")
            return
        handler = self._handlers.get(etype)
        if handler is None:
            out.append(UnknownEvent(etype, Data(obj)))
            return
        if self._message is None and etype not in ("message_start", "ping", "error"):
            self._repair("missing_message_start", f"{etype!r} arrived before message_start")
            self._message = _empty_message()
            self.streaming = True
        handler(obj, out)

    def end(self, out: list[Event]) -> None:
        """End of stream: complete the message if a stop_reason arrived, else raise IncompleteStreamError."""
        if self.stopped:
            return
        if self.stop_reason_seen:
            self._close_open_blocks(out)
            self._repair("missing_message_stop", "the stream ended after message_delta without message_stop")
            self._stop(out)
            return
        if self._pending_inputs:  # a broken tool input, and no stop reason to excuse it
            raise self._pending_inputs[0]
        raise self.incomplete("the stream ended before message_stop")

    # -- handlers ----------------------------------------------------------------------------------------

    def _on_ping(self, obj: dict[str, Any], out: list[Event]) -> None:
        pass

    def _on_error(self, obj: dict[str, Any], out: list[Event]) -> None:
        err = obj.get("error")
        err = err if type(err) is dict else {}
        error_type = err.get("type") if type(err.get("type")) is str else "unknown_error"
        message = err.get("message") if type(err.get("message")) is str else ""
        request_id = obj.get("request_id")
        raise APIStreamError(
            f"{error_type}: {message}" if message else str(error_type),
            error_type=str(error_type),
            body=obj,
            request_id=request_id if type(request_id) is str else None,
            snapshot=self.message(),
            offset=self._offset,
        )

    def _on_message_start(self, obj: dict[str, Any], out: list[Event]) -> None:
        message = obj.get("message")
        if self._message is not None:
            self._repair("duplicate_message_start", "ignored a second message_start")
            return
        if type(message) is not dict:
            message = _empty_message()
        message = dict(message)
        if type(message.get("content")) is not list:
            message["content"] = []
        elif message["content"]:
            for i, block in enumerate(message["content"]):
                if type(block) is dict:
                    self._blocks[i] = _Block(i, dict(block), self.partial_mode, self.keep_content)
                    self._blocks[i].kind = _CLOSED
        if type(message.get("usage")) is not dict:
            message["usage"] = {"input_tokens": 0, "output_tokens": 0}
        self._message = message
        self.streaming = True
        sent = obj.get("message")
        out.append(MessageStartEvent(Data(sent if type(sent) is dict else message)))

    def _on_block_start(self, obj: dict[str, Any], out: list[Event]) -> None:
        index = obj.get("index")
        block = obj.get("content_block")
        if type(index) is not int or type(block) is not dict:
            out.append(UnknownEvent("content_block_start", Data(obj)))
            return
        if index in self._blocks:
            # Seen after server-tool results: the start repeats an index in use while the deltas and the stop
            # use the next one. The SDK appends every started block, so does this.
            position = max(self._blocks) + 1
            self._repair(
                "block_index_repeated",
                f"content_block_start repeated index {index}; started the block at index {position}",
                position,
            )
            index = position
        started = dict(block)
        btype = started.get("type")
        if type(btype) is str and btype in _START_CHECKS:
            self._check_start(index, btype, started)
        self._blocks[index] = _Block(index, started, self.partial_mode, self.keep_content)
        out.append(ContentBlockStartEvent(index, Data(block)))

    def _check_start(self, index: int, btype: str, started: dict[str, Any]) -> None:
        """The block types whose start needs a look (rare shapes, the fallback block), before the block opens."""
        if btype in TOOL_BLOCK_TYPES:
            if "input" not in started:
                self._repair(
                    "tool_input_missing_from_start",
                    f"the {btype} block's content_block_start has no input; it is built from the deltas",
                    index,
                )
        elif btype == "fallback":
            # As the beta SDK: the fallback block names the model that serves the rest of the response.
            to = started.get("to")
            model = to.get("model") if type(to) is dict else None
            if type(model) is str and self._message is not None:
                self._message["model"] = model
        else:
            field = _TEXT_LIKE[btype][1]
            if field in started and started[field] is None:
                started[field] = ""
                self._repair(
                    "null_text_in_start", f"the {btype} block started with {field}: null; taken as empty", index
                )

    def handle_delta(self, obj: dict[str, Any], offset: int, ordinal: int, out: list[Event]) -> None:
        """Apply one ``content_block_delta`` event, as ``handle("content_block_delta", obj, ...)`` would.

        The fast entry for the commonest event: the caller guarantees ``streaming`` is true and ``obj`` is a
        dict. One without an int ``index`` and a ``delta`` object whose ``type`` is another event's (an SSE
        name that disagrees with the JSON) is handled as that event, with the ``event_name_mismatch`` repair;
        one that has both is taken as a delta whatever its ``type`` says (no lookup on the hot path).
        """
        self._offset = offset
        self._ordinal = ordinal
        index = obj.get("index")
        delta = obj.get("delta")
        if type(index) is not int or type(delta) is not dict:
            etype = obj.get("type")
            if type(etype) is str and etype != "content_block_delta":  # named a delta by SSE, typed otherwise
                self._handle_unusual("content_block_delta", obj, out)
            else:
                out.append(UnknownEvent("content_block_delta", Data(obj)))
            return
        dtype = delta.get("type")
        block = self._blocks.get(index)
        if block is None:
            block = self._synthesize(index, dtype)
        out.append(content_block_delta_event(index, delta))
        if block is None:
            return
        append = block.append
        if append is not None and dtype == append[0]:  # the common case: text, thinking, tool input
            value = delta.get(append[1])
            if type(value) is str:
                parts = block.parts
                parts.append(value)
                factory = append[2]
                if factory is not None:
                    out.append(factory(value, block.source, len(parts)))
            return
        rule = _DELTAS.get(dtype) if type(dtype) is str else None  # (a dict or list is unhashable)
        if rule is not None and rule[3] is not None and block.kind == rule[0]:
            rule[3](block, delta, out)

    def _on_block_delta(self, obj: dict[str, Any], out: list[Event]) -> None:
        self.handle_delta(obj, self._offset, self._ordinal, out)  # type: ignore[arg-type]

    def _on_block_stop(self, obj: dict[str, Any], out: list[Event]) -> None:
        index = obj.get("index")
        block = self._blocks.get(index) if type(index) is int else None
        if block is None:
            self._repair("block_not_started", f"content_block_stop for index {index!r}, which never started")
            return
        if block.closed:
            return
        self._close(block, out)

    def _on_message_delta(self, obj: dict[str, Any], out: list[Event]) -> None:
        message = self._message
        if message is None:  # unreachable: _handle_unusual synthesizes a message first
            raise ProtocolError("message_delta before any message", offset=self._offset)
        delta = obj.get("delta")
        delta = delta if type(delta) is dict else {}
        usage = obj.get("usage")
        usage = usage if type(usage) is dict else {}
        for key, value in delta.items():
            if key == "container" and value is None:
                continue
            message[key] = value
        # Top-level fields besides delta and usage (context_management, input_transformations, any new one)
        # go on the message, as the beta SDK puts the ones it knows; a null one leaves the message's value.
        if not _MESSAGE_DELTA_OWN.issuperset(obj):
            for key, value in obj.items():
                if key not in _MESSAGE_DELTA_OWN and value is not None:
                    message[key] = value
        if "stop_reason" in delta:
            # A delta that reports the stop reports all of it: an absent stop_sequence or stop_details is null
            # (as the SDK sets them), not the value of an earlier stop. A delta without stop_reason (a
            # gateway's usage-only one) leaves the stop as it was (the SDK nulls all three).
            for key in _STOP_DETAILS:
                if key not in delta and message.get(key) is not None:
                    message[key] = None
        if delta.get("stop_reason") is not None:
            self.stop_reason_seen = True
            if self._pending_inputs:
                self._settle_pending_inputs()
        if usage:
            merged = message["usage"] = dict(message["usage"])
            for key, value in usage.items():
                if value is not None:
                    merged[key] = value
        out.append(MessageDeltaEvent(Data(delta), Data(usage)))

    def _on_message_stop(self, obj: dict[str, Any], out: list[Event]) -> None:
        self._close_open_blocks(out)
        self._settle_pending_inputs()
        self._stop(out)

    # -- helpers -----------------------------------------------------------------------------------------

    def _stop(self, out: list[Event]) -> None:
        self.stopped = True
        self.streaming = False
        message = self.message()
        assert message is not None
        out.append(MessageStopEvent(Data(message)))

    def _close_open_blocks(self, out: list[Event]) -> None:
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if not block.closed:
                self._repair("missing_content_block_stop", f"block {index} was never stopped; closed it", index)
                self._close(block, out)

    def _close(self, block: _Block, out: list[Event]) -> None:
        tool = block.tool
        if block.orphan and tool is not None:
            # A tool call whose content_block_start never came has no id and no name: no agent can run it, and
            # handing it over as if it were whole would be worse than failing. The input is kept in .raw.
            raw = tool.raw()
            raise ToolInputError(
                f"block {block.index} received tool input ({tool.size()} chars) but never started: without its "
                "content_block_start the tool call has no id or name and cannot be run",
                raw=raw,
                index=block.index,
                snapshot=self.message(),
                offset=self._offset,
            )
        if tool is not None:
            try:
                value, repairs = tool.finish()
            except PartialJSONError as exc:
                value = self._unparseable_input(block, tool, exc)
            else:
                for kind, detail in repairs:
                    self._repair(kind, detail, block.index, raw=tool.raw())
            if value is not MISSING:  # (MISSING: the start had no input and no fragment brought one)
                block.block["input"] = value
            block.tool = None
        if block.text is not None and block.field is not None:
            block.block[block.field] = block.text.value()
            block.text = None
        if block.citations is not None:
            block.block["citations"] = block.citations.items
            block.citations = None
        block.kind = _CLOSED
        block.parts = _NO_PARTS
        out.append(ContentBlockStopEvent(block.index, Data(block.block)))

    def _unparseable_input(self, block: _Block, tool: _ToolInput | _ToolCheck, exc: PartialJSONError) -> Any:
        # A tool input that no repair parses is an error, unless the stop reason says the output may have
        # been cut short (max_tokens, model_context_window_exceeded, refusal, ...: see cuts_output): then the
        # input is as far as it got (as the SDK's partial parser gives it), the block is marked
        # `input_incomplete`, and a tool_input_cut repair keeps the raw text. Which of the two is known only
        # with the stop reason, which usually comes after the block's stop: until then the error waits in
        # _pending_inputs.
        raw = tool.raw()
        limit = f" (it nests deeper than the limit of {MAX_NESTING_DEPTH} containers)" if exc.reason == (
            "maximum depth exceeded") else ""
        error = ToolInputError(
            f"tool input of block {block.index} is not JSON even after repair: {exc.reason} "
            f"at char {exc.position} of {tool.size()}{limit}",
            raw=raw,
            index=block.index,
            snapshot=self.message(),
            offset=self._offset,
        )
        try:  # what the SDK's snapshot holds: jiter's partial parse of the raw text
            partial = tool.partial()
        except ValueError:
            raise error from None  # broken, not cut: no stop reason makes it an input
        stop_reason = self._message.get("stop_reason") if self._message is not None else None
        if cuts_output(stop_reason):
            self._cut(error, stop_reason)
        elif self.stop_reason_seen:
            raise error
        else:
            self._pending_inputs.append(error)
        return partial

    def _cut(self, error: ToolInputError, stop_reason: object) -> None:
        """Keep a tool input cut short by ``stop_reason``: mark its block and record the raw text."""
        self._blocks[error.index].block[INPUT_INCOMPLETE] = True
        self._repair(
            "tool_input_cut",
            f"the input of block {error.index} was cut short (stop_reason {stop_reason!r}); kept what parses of "
            f"{len(error.raw)} chars and marked the block {INPUT_INCOMPLETE}",
            error.index,
            raw=error.raw,
        )

    def _settle_pending_inputs(self) -> None:
        """Decide the tool inputs that failed to parse, now that the stop reason is known (or never will be)."""
        pending, self._pending_inputs = self._pending_inputs, []
        stop_reason = self._message.get("stop_reason") if self._message is not None else None
        if cuts_output(stop_reason):
            for error in pending:
                self._cut(error, stop_reason)
        elif pending:
            raise pending[0]

    def _synthesize(self, index: int, dtype: object) -> _Block | None:
        template = _SYNTHESIZED.get(dtype) if type(dtype) is str else None
        if template is None:
            self._repair("block_not_started", f"{dtype!r} delta for index {index}, which never started", index)
            return None
        block = self._blocks[index] = _Block(index, template(), self.partial_mode, self.keep_content)
        if block.kind == _TOOL:
            block.orphan = True  # its input is gathered, then refused at its stop (see _close)
            return block
        self._repair(
            "block_not_started", f"{dtype} for index {index}, which never started; synthesized a block", index
        )
        return block

    def incomplete(self, detail: str) -> IncompleteStreamError:
        """The error for a stream that ended too early, with what was received."""
        return IncompleteStreamError(
            detail + (" (nothing was received)" if self._message is None else ""),
            snapshot=self.message(),
            raw_tool_inputs=self.raw_tool_inputs(),
        )

    def _repair(self, kind: str, detail: str, index: int | None = None, raw: str | None = None) -> None:
        self.add_repair(Repair(kind, detail, self._offset, self._ordinal, index=index, raw=raw))

    def add_repair(self, repair: Repair) -> None:
        if len(self.repairs) < MAX_REPAIRS:
            self.repairs.append(repair)
        elif len(self.repairs) == MAX_REPAIRS:
            self.repairs.append(Repair("repairs_truncated", f"more than {MAX_REPAIRS} repairs; stopped recording"))


def check_partial_mode(value: object) -> PartialMode:
    if value is True or value == "on":
        return "on"
    if value == "trailing-strings":
        return "trailing-strings"
    raise UsageError(f"partial_mode must be one of 'on', 'trailing-strings' (or True), got {value!r}")

