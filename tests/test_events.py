"""Stream events and payload views have the SDK's public surface and nothing else: declared fields only, no
tuple behaviour, optional fields read None, model_dump honours its arguments. Messages handed out are fresh
copies, and delta kinds are dispatched by one table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mendstream import MessageParser, UsageError
from mendstream.core.events import (
    ContentBlockDeltaEvent,
    Data,
    MessageStopEvent,
    TextEvent,
    content_block_delta_event,
    text_event,
)
from mendstream.testing import FIXTURES as BUNDLED_FIXTURES

FIXTURES = BUNDLED_FIXTURES


def events_of(name: str) -> list[Any]:
    parser = MessageParser()
    events = parser.feed((FIXTURES / name).read_bytes())
    events += parser.end()
    return events


def test_events_are_not_tuples() -> None:
    for event in events_of("text_citations.sse"):
        assert not isinstance(event, tuple)
        with pytest.raises(TypeError):
            len(event)
        with pytest.raises(TypeError):
            iter(event)
        with pytest.raises(TypeError):  # as a pydantic model: not JSON-serialisable as such
            json.dumps(event)
        with pytest.raises(AttributeError):
            event.count  # noqa: B018 - reading it is the point
        if event.type in ("text", "citation", "message_start", "message_delta", "message_stop", "signature"):
            with pytest.raises(AttributeError):  # not tuple.index: these events have no index
                event.index  # noqa: B018
        with pytest.raises(AttributeError):
            event.not_a_field  # noqa: B018


def test_declared_fields_read_like_the_sdk_and_cannot_be_reassigned_or_added() -> None:
    events = events_of("text_basic.sse")
    text = next(e for e in events if e.type == "text")
    delta = next(e for e in events if e.type == "content_block_delta")
    assert isinstance(text.text, str) and text.snapshot.endswith(text.text)
    assert isinstance(delta.index, int) and delta.delta.type == "text_delta"
    with pytest.raises(AttributeError):
        text.text = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        text.extra = 1  # type: ignore[attr-defined]
    assert text.to_dict() == {"type": "text", "text": text.text, "snapshot": text.snapshot}


def test_fast_factories_build_the_same_event_as_the_constructor() -> None:
    source = type("Source", (), {"snapshot_at": lambda self, n: "ab"[:n]})()
    assert text_event("b", source, 2) == TextEvent("b", source, 2)
    assert content_block_delta_event(3, {"type": "x"}) == ContentBlockDeltaEvent(3, {"type": "x"})
    assert text_event("b", source, 2) != TextEvent("c", source, 2)
    assert repr(TextEvent("b", source, 2)) == "TextEvent(text='b')"


def test_data_views_raise_for_undeclared_fields_and_read_none_for_optional_ones() -> None:
    text = Data({"type": "text", "text": "hi"})
    assert text.text == "hi" and text.citations is None  # citations: optional in the SDK's TextBlock
    with pytest.raises(AttributeError):
        text.nonexistent  # noqa: B018
    usage = Data({"input_tokens": 1, "output_tokens": 2})  # no type: the usage models
    assert usage.cache_read_input_tokens is None
    with pytest.raises(AttributeError):
        usage.bogus  # noqa: B018
    unknown = Data({"type": "brand_new_block", "a": 1})
    assert unknown.a == 1
    with pytest.raises(AttributeError):
        unknown.citations  # noqa: B018 - not declared for a type the SDK does not know
    with pytest.raises(KeyError):
        text["citations"]


def test_model_dump_honours_exclude_none_and_mode_and_rejects_the_rest() -> None:
    payload = {"type": "text", "text": "hi", "citations": None, "nested": {"a": None, "b": [1, {"c": None}]}}
    view = Data(payload)
    assert view.model_dump() == payload and view.model_dump() is not payload
    assert view.model_dump(exclude_none=True) == {"type": "text", "text": "hi", "nested": {"b": [1, {}]}}
    assert view.model_dump(mode="json") == payload
    dumped = view.model_dump()
    dumped["nested"]["b"].append(2)
    assert payload["nested"]["b"] == [1, {"c": None}]  # a copy all the way down
    with pytest.raises(UsageError):
        view.model_dump(mode="xml")
    with pytest.raises(UsageError):
        view.model_dump(by_alias=True)


def test_the_message_is_a_fresh_copy_every_time() -> None:
    parser = MessageParser()
    events = parser.feed((FIXTURES / "tool_use_parallel.sse").read_bytes())  # tool inputs: nested dicts
    parser.end()
    before = parser.message
    message = parser.message
    message["content"][0]["mutated"] = True
    message["content"].append({"type": "text", "text": "injected"})
    message["usage"]["output_tokens"] = -1
    for block in message["content"]:
        for value in block.values():
            if isinstance(value, (dict, list)):
                value.clear()
    assert parser.message == before
    stop = next(e for e in events if isinstance(e, MessageStopEvent))
    assert stop.message.to_dict() == before


def test_an_unknown_delta_type_changes_nothing_and_is_not_filed_as_thinking() -> None:
    start = (FIXTURES / "text_basic.sse").read_bytes().split(b"event: content_block_delta", 1)[0]
    parser = MessageParser()
    parser.feed(start)
    events = parser.feed(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"future_text_delta","text":"new kind"}}\n\n'
    )
    assert [e.type for e in events] == ["content_block_delta"]
    assert "new kind" not in json.dumps(parser.message)


def test_a_compaction_delta_replaces_the_compaction_content() -> None:
    parser = MessageParser()
    parser.feed((FIXTURES / "text_basic.sse").read_bytes().split(b"event: content_block_start", 1)[0])
    parser.feed(
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"compaction","content":null}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"compaction_delta","content":"summary so far"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"compaction_delta","content":"final summary","encrypted_content":"e"}}\n\n'
    )
    block = parser.message["content"][0]
    assert block == {"type": "compaction", "content": "final summary", "encrypted_content": "e"}
