# Turning mendstream's events into the official SDK's own event objects, for code that checks
# `isinstance(event, anthropic.types.RawMessageStartEvent)` or the MessageStream event types. The SDK is
# imported only when a conversion is asked for, so importing this module stays light. Only the events'
# public surface (`type`, `to_dict()`) is read, so the core may represent events however it likes.
from __future__ import annotations

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

    return construct_type(type_=cls, value=event.to_dict())


def to_sdk_message(message: dict[str, Any], *, beta: bool = False) -> Any:
    """``message`` as an ``anthropic.types.Message`` (``anthropic.types.beta.BetaMessage`` with ``beta``)
    when the SDK is importable, else the dict itself. Built without validation, so unknown blocks survive.
    """
    try:
        from anthropic._models import construct_type

        module = importlib.import_module("anthropic.types.beta" if beta else "anthropic.types")
    except ImportError:
        return message
    return construct_type(type_=getattr(module, "BetaMessage" if beta else "Message"), value=message)
