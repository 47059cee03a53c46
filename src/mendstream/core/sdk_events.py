# Turning mendstream's events into the official SDK's own event objects, for code that checks
# `isinstance(event, anthropic.types.RawMessageStartEvent)` or the MessageStream event types. The SDK is
# imported only when a conversion is asked for, so importing this module stays light. Only the events'
# public surface (`type`, `to_dict()`) is read, so the core may represent events however it likes.
from __future__ import annotations

import contextlib
import importlib
from functools import cache
from typing import Any

__all__ = ["sdk_event_class", "to_sdk_event", "to_sdk_message"]

# For each event type: where the SDK's class is, for the standard and the beta API. The first name that
# the installed SDK has wins (names moved between SDK versions).
_CLASSES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "message_start": (
        (("anthropic.types", "RawMessageStartEvent"),),
        (("anthropic.types.beta", "BetaRawMessageStartEvent"),),
    ),
    "content_block_start": (
        (("anthropic.types", "RawContentBlockStartEvent"),),
        (("anthropic.types.beta", "BetaRawContentBlockStartEvent"),),
    ),
    "content_block_delta": (
        (("anthropic.types", "RawContentBlockDeltaEvent"),),
        (("anthropic.types.beta", "BetaRawContentBlockDeltaEvent"),),
    ),
    "message_delta": (
        (("anthropic.types", "RawMessageDeltaEvent"),),
        (("anthropic.types.beta", "BetaRawMessageDeltaEvent"),),
    ),
    "content_block_stop": (
        (("anthropic.lib.streaming", "ContentBlockStopEvent"), ("anthropic.types", "RawContentBlockStopEvent")),
        (("anthropic.lib.streaming", "BetaContentBlockStopEvent"),
         ("anthropic.types.beta", "BetaRawContentBlockStopEvent")),
    ),
    "message_stop": (
        (("anthropic.lib.streaming", "MessageStopEvent"), ("anthropic.types", "RawMessageStopEvent")),
        (("anthropic.lib.streaming", "BetaMessageStopEvent"), ("anthropic.types.beta", "BetaRawMessageStopEvent")),
    ),
    "text": (
        (("anthropic.lib.streaming", "TextEvent"),),
        (("anthropic.lib.streaming", "BetaTextEvent"), ("anthropic.lib.streaming._beta_types", "ParsedBetaTextEvent")),
    ),
    "input_json": (
        (("anthropic.lib.streaming", "InputJsonEvent"),),
        (("anthropic.lib.streaming", "BetaInputJsonEvent"),),
    ),
    "thinking": (
        (("anthropic.lib.streaming", "ThinkingEvent"), ("anthropic.lib.streaming._types", "ThinkingEvent")),
        (("anthropic.lib.streaming._beta_types", "BetaThinkingEvent"),),
    ),
    "signature": (
        (("anthropic.lib.streaming", "SignatureEvent"), ("anthropic.lib.streaming._types", "SignatureEvent")),
        (("anthropic.lib.streaming._beta_types", "BetaSignatureEvent"),),
    ),
    "citation": (
        (("anthropic.lib.streaming", "CitationEvent"), ("anthropic.lib.streaming._types", "CitationEvent")),
        (("anthropic.lib.streaming._beta_types", "BetaCitationEvent"),),
    ),
    # Only the beta SDK has a compaction event; the standard stream gets the same class (there is no other).
    "compaction": (
        (("anthropic.lib.streaming._beta_types", "BetaCompactionEvent"),),
        (("anthropic.lib.streaming._beta_types", "BetaCompactionEvent"),),
    ),
}


@cache
def sdk_event_class(event_type: str, beta: bool = False) -> type[Any] | None:
    """The SDK's class for events of ``event_type`` (its beta variant with ``beta``), or ``None`` when the
    type is not one the SDK models or the SDK is not installed."""
    places = _CLASSES.get(event_type)
    if places is None:
        return None
    for module_name, name in places[1 if beta else 0]:
        try:
            found = getattr(importlib.import_module(module_name), name, None)
        except ImportError:
            continue
        if isinstance(found, type):
            return found
    return None


def to_sdk_event(event: Any, *, beta: bool = False) -> Any:
    """``event`` as an instance of the SDK's own class for it (``anthropic.types.RawMessageStartEvent``,
    ``anthropic.lib.streaming.TextEvent``, ...; the ``Beta`` variants with ``beta=True``).

    Built without validation, as the SDK builds its own events, so unknown block and delta types survive.
    Events the SDK has no class for (unknown wire events) and every event when the SDK is not installed
    are returned unchanged.
    """
    cls = sdk_event_class(event.type, beta)
    if cls is None:
        return event
    from anthropic._models import construct_type

    value = event.to_dict()
    kind = event.type
    if kind == "content_block_stop" and _marked(value.get("content_block")):
        value = {**value, "content_block": _unmarked(value["content_block"])}
        sdk_event = construct_type(type_=cls, value=value)
        _mark(getattr(sdk_event, "content_block", None))
        return sdk_event
    if kind == "message_stop" and type(value.get("message")) is dict:
        message = value["message"]
        marked = _marked_indexes(message)
        if marked:
            value = {**value, "message": _without_markers(message, marked)}
            sdk_event = construct_type(type_=cls, value=value)
            _mark_blocks(getattr(sdk_event, "message", None), marked)
            return sdk_event
    return construct_type(type_=cls, value=value)


def to_sdk_message(message: dict[str, Any], *, beta: bool = False, parsed: bool = False) -> Any:
    """``message`` as an ``anthropic.types.Message`` (``anthropic.types.beta.BetaMessage`` with ``beta``)
    when the SDK is importable, else the dict itself. Built without validation, so unknown blocks survive.

    A tool block marked ``"input_incomplete": True`` (its input was cut short by the stop reason) becomes
    the SDK's block with an ``input_incomplete`` attribute that is True; the attribute is not a model field,
    so ``model_dump()``, ``to_dict()`` and a request that sends the block back never carry it (the API
    refuses unknown fields). Read it with ``getattr(block, "input_incomplete", False)``.

    ``parsed=True`` builds the SDK's ``ParsedMessage`` (``ParsedBetaMessage``), whose text blocks have a
    ``parsed_output`` (None here; see :mod:`mendstream.streaming.structured`).
    """
    try:
        from anthropic._models import construct_type

        if parsed:
            name = "anthropic.types.beta.parsed_beta_message" if beta else "anthropic.types.parsed_message"
            cls = getattr(importlib.import_module(name), "ParsedBetaMessage" if beta else "ParsedMessage")
        else:
            module = importlib.import_module("anthropic.types.beta" if beta else "anthropic.types")
            cls = getattr(module, "BetaMessage" if beta else "Message")
    except (ImportError, AttributeError):
        return message
    marked = _marked_indexes(message)
    if not marked:
        return construct_type(type_=cls, value=message)
    sdk_message = construct_type(type_=cls, value=_without_markers(message, marked))
    _mark_blocks(sdk_message, marked)
    return sdk_message


# -- the input_incomplete marker: a key in mendstream's dicts, a non-field attribute on the SDK's models -----

_INPUT_INCOMPLETE = "input_incomplete"  # accumulate.INPUT_INCOMPLETE (not imported: this module stays apart)


def _marked(block: object) -> bool:
    return type(block) is dict and block.get(_INPUT_INCOMPLETE) is True


def _unmarked(block: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != _INPUT_INCOMPLETE}


def _marked_indexes(message: dict[str, Any]) -> list[int]:
    content = message.get("content")
    if type(content) is not list:
        return []
    return [i for i, block in enumerate(content) if _marked(block)]


def _without_markers(message: dict[str, Any], marked: list[int]) -> dict[str, Any]:
    content = list(message["content"])
    for i in marked:
        content[i] = _unmarked(content[i])
    return {**message, "content": content}


def _mark_blocks(sdk_message: Any, marked: list[int]) -> None:
    content = getattr(sdk_message, "content", None)
    if isinstance(content, list):
        for i in marked:
            if i < len(content):
                _mark(content[i])


@cache
def _pydantic_v1() -> bool:
    import pydantic

    return str(getattr(pydantic, "VERSION", "2")).startswith("1.")


def _mark(block: Any) -> None:
    """Set ``input_incomplete = True`` on an SDK block without making it a field (pydantic serializes its
    fields and extras, never other instance attributes)."""
    if block is None or _pydantic_v1():  # pydantic 1 serializes every instance attribute: leave it unmarked
        return
    with contextlib.suppress(AttributeError, TypeError):  # a model without an instance __dict__: unmarked
        object.__setattr__(block, _INPUT_INCOMPLETE, True)
