# Resuming a paused turn (stop_reason "pause_turn"), sans-IO. When server tools (web search, web fetch, code
# execution) run long, the API pauses its own tool loop and ends the response with stop_reason "pause_turn",
# sometimes with a server tool call whose result has not come yet. The API's documented way on is to send the
# request again with the paused assistant content appended, unchanged, and no new user message: the model then
# continues the same turn. This module holds the decisions and rewrites for doing that inside one stream, the
# way Retry(on_partial="continue") stitches a continuation: building each continuation request, and turning
# the events and messages of every request of the turn into those of one message. The driver (the stream
# machine) does the I/O: it sends what `PauseResumer.next_request` returns and feeds `PauseResumer.events`.
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from mendstream.core.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Data,
    Event,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    content_block_delta_event,
)
from mendstream.errors import UsageError

__all__ = [
    "PAUSE_TURN",
    "PauseResumer",
    "check_resume_pause_turn",
    "continuation_request",
    "stitch_messages",
    "sum_usage",
]

PAUSE_TURN = "pause_turn"
_MARKERS = ("input_incomplete",)  # mendstream's own keys on blocks (accumulate.INPUT_INCOMPLETE): never sent


def check_resume_pause_turn(value: object) -> int:
    """``value`` (the ``resume_pause_turn`` option: continuation requests allowed) as an int >= 0;
    :class:`~mendstream.errors.UsageError` naming it otherwise (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"resume_pause_turn must be an int >= 0 (continuation requests; 0: off), not {value!r}")
    return value


def continuation_request(params: Mapping[str, Any], paused: Mapping[str, Any]) -> dict[str, Any]:
    """The request that resumes the turn ``paused`` (a message that stopped with ``pause_turn``) answered to
    ``params`` (the request that produced it, as given to ``messages.create``).

    As the API documents: the same request (model, tools, system, every option) with the paused assistant
    content appended to ``messages`` as it came, and no new user message. When ``params`` already ends with an
    assistant message (a prefill, or the content of an earlier pause), the paused content is added to that
    message, so the turn stays one assistant message. The paused message's ``container`` (code execution)
    is passed on as ``container`` unless the request names one, so that the continuation runs in the same
    container. mendstream's own markers (``input_incomplete``) and empty text blocks (which the API refuses
    in a request) are left out. ``params`` and ``paused`` are not modified.

    Raises UsageError when ``paused`` did not stop with ``pause_turn`` or ``params`` has no ``messages`` list.
    """
    if paused.get("stop_reason") != PAUSE_TURN:
        raise UsageError(f"only a message that stopped with pause_turn is resumed, not {paused.get('stop_reason')!r}")
    messages = params.get("messages")
    if not isinstance(messages, list):
        raise UsageError(f"the request to resume has no messages list (messages={messages!r})")
    content = [_sendable(block) for block in paused.get("content") or [] if _kept(block)]
    history = list(messages)
    last = history[-1] if history else None
    if isinstance(last, Mapping) and last.get("role") == "assistant":
        earlier = last.get("content")
        blocks = [{"type": "text", "text": earlier}] if isinstance(earlier, str) else list(earlier or [])
        history[-1] = {**last, "content": [*blocks, *content]}
    else:
        history.append({"role": "assistant", "content": content})
    out = {**params, "messages": history}
    container = paused.get("container")
    container_id = container.get("id") if isinstance(container, Mapping) else None
    if isinstance(container_id, str) and out.get("container") is None:
        out["container"] = container_id
    return out


def _kept(block: Any) -> bool:
    return not (isinstance(block, Mapping) and block.get("type") == "text" and block.get("text") == "")


def _sendable(block: Any) -> Any:
    if isinstance(block, Mapping) and any(marker in block for marker in _MARKERS):
        block = {k: v for k, v in block.items() if k not in _MARKERS}
    return copy.deepcopy(block)


def sum_usage(total: Mapping[str, Any], usage: Any) -> dict[str, Any]:
    """``total`` plus ``usage``: numbers added (each request of the turn is billed), nested objects
    (``cache_creation``, ``server_tool_use``) summed the same way, anything else (``service_tier``) the
    later one's. A fresh dict; neither argument is modified."""
    out = dict(total)
    if not isinstance(usage, Mapping):
        return out
    for key, value in usage.items():
        old = out.get(key)
        if isinstance(value, bool) or value is None:
            out.setdefault(key, value)
        elif isinstance(value, int | float):
            out[key] = (old if isinstance(old, int | float) and not isinstance(old, bool) else 0) + value
        elif isinstance(value, Mapping):
            out[key] = sum_usage(old if isinstance(old, Mapping) else {}, value)
        else:
            out[key] = value
    return out


def stitch_messages(first: Mapping[str, Any], *later: Mapping[str, Any]) -> dict[str, Any]:
    """One message for a turn answered by ``first`` (paused) and the ``later`` continuations, in order: the
    id, role and type of the first (what the consumer saw start), every request's content in order, the last
    one's stop (``stop_reason``, ``stop_sequence``, ``stop_details``), model, container and any other field,
    and the usage summed over all (:func:`sum_usage`). A fresh dict."""
    out = copy.deepcopy(dict(first))
    content = list(out.get("content") or [])
    usage: dict[str, Any] = dict(out.get("usage") or {})
    for message in later:
        for key, value in message.items():
            if key in ("id", "type", "role", "content", "usage"):
                continue
            out[key] = copy.deepcopy(value)
        content.extend(copy.deepcopy(message.get("content") or []))
        usage = sum_usage(usage, message.get("usage"))
    out["content"] = content
    out["usage"] = usage
    return out


class PauseResumer:
    """The policy and the rewriting for resuming a paused turn within one stream (no I/O, no clock).

    A driver sends ``params``, feeds every list of events its parser returns through :meth:`events` and shows
    what comes out; when a request's stream has completed it calls :meth:`next_request` with that request's
    final message (``parser.message``): a dict of params means "send this and keep going", None means the
    turn is over. The consumer then has seen one ``message_start``, the blocks of every request with indexes
    that continue from one request to the next, and one ``message_delta`` / ``message_stop`` (the last
    request's stop, the usage summed over the turn, the stitched message). :meth:`message` stitches the
    current request's message onto the earlier ones (for snapshots and errors).

    At most ``max_continuations`` continuation requests are sent; a turn still paused after them ends as it
    came (``stop_reason: "pause_turn"``, nothing lost), for the caller to resume or not. If a continuation
    fails, :meth:`withheld` gives the ``message_delta`` / ``message_stop`` held back from the paused request
    (so a driver can end the stream as it would have ended without resuming) and :meth:`message` the turn so
    far, for the error's snapshot.
    """

    def __init__(self, params: Mapping[str, Any], *, max_continuations: int) -> None:
        if isinstance(max_continuations, bool) or not isinstance(max_continuations, int) or max_continuations < 0:
            raise UsageError(f"max_continuations must be an int >= 0, got {max_continuations!r}")
        self.max_continuations = max_continuations
        self.first: dict[str, Any] = dict(params)
        """The turn's first request (what :meth:`reset` goes back to)."""
        self.request: dict[str, Any] = dict(params)
        self.continuations = 0  # continuation requests sent so far
        self._done: list[dict[str, Any]] = []  # the messages of the finished (paused) requests
        self._offset = 0  # blocks the consumer has from earlier requests: the index shift of this one
        self._usage: dict[str, Any] = {}  # usage of the finished requests, summed
        self._withheld: list[Event] = []
        self._holding = False
        self._started: dict[str, Any] = {}  # the running request's usage as its message_start gave it

    @property
    def resuming(self) -> bool:
        """True while the running request is a continuation (its events are rewritten, the turn's message is
        stitched); False for the turn's first request, also after :meth:`reset`."""
        return bool(self._done)

    def reset(self) -> None:
        """The turn starts again from its first request (a restart: the consumer was told to forget what it
        was shown). The continuations already sent still count against ``max_continuations``, so that
        restarts and continuations cannot take turns for ever."""
        self.request = dict(self.first)
        self._done = []
        self._offset = 0
        self._usage = {}
        self._withheld = []
        self._holding = False
        self._started = {}

    def _may_continue(self) -> bool:
        return self.continuations < self.max_continuations

    def events(self, events: list[Event]) -> list[Event]:
        """The running request's ``events`` as the consumer must see them (a new list; ``events`` unchanged)."""
        out: list[Event] = []
        offset = self._offset
        for event in events:
            if isinstance(event, MessageStartEvent):
                usage = event.message.to_dict().get("usage")
                self._started = dict(usage) if isinstance(usage, Mapping) else {}
                if self.resuming:
                    continue  # the consumer has the turn's message_start
            elif isinstance(event, MessageDeltaEvent):
                pausing = event.delta.get("stop_reason") == PAUSE_TURN and self._may_continue()
                if self.resuming:
                    # The delta's usage is the request's so far (its start's counts, those the delta sends
                    # replacing them): the turn's is that plus the earlier requests'.
                    sent = {k: v for k, v in event.usage.to_dict().items() if v is not None}
                    event = MessageDeltaEvent(event.delta, Data(sum_usage(self._usage, {**self._started, **sent})))
                if pausing:
                    self._holding = True
                    self._withheld.append(event)
                    continue
            elif isinstance(event, MessageStopEvent):
                if self.resuming:
                    event = MessageStopEvent(Data(self.message(event.message.to_dict())))
                if self._holding:
                    self._withheld.append(event)
                    continue
            elif offset:
                if isinstance(event, ContentBlockDeltaEvent):
                    event = content_block_delta_event(event.index + offset, event.delta.to_dict())
                elif isinstance(event, ContentBlockStartEvent):
                    event = ContentBlockStartEvent(event.index + offset, event.content_block)
                elif isinstance(event, ContentBlockStopEvent):
                    event = ContentBlockStopEvent(event.index + offset, event.content_block)
            out.append(event)
        return out

    def next_request(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """After the running request's stream completed with ``message``: the params of the continuation to
        send next, or None when the turn is over (it did not pause, or the continuations are used up)."""
        if message.get("stop_reason") != PAUSE_TURN or not self._may_continue():
            return None
        self.request = continuation_request(self.request, message)
        self._done.append(dict(message))
        self._offset += len(message.get("content") or [])
        self._usage = sum_usage(self._usage, message.get("usage"))
        self.continuations += 1
        self._withheld = []
        self._holding = False
        return self.request

    def message(self, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The turn's message: the finished requests' messages with ``current`` (the running request's message
        so far) stitched on (:func:`stitch_messages`); ``current`` alone before any continuation."""
        parts = [*self._done, *([current] if current else [])]
        if not parts:
            return {}
        return stitch_messages(parts[0], *parts[1:])

    def withheld(self) -> list[Event]:
        """The ``message_delta`` / ``message_stop`` held back from the paused request (the turn would have
        ended with them), for a driver whose continuation failed; empty when nothing is held."""
        return list(self._withheld)

