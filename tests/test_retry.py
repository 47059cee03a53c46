# The retry policy without a network: Retry's validation and backoff, fault classification, and the attempt
# loop driven by in-memory openers (each attempt's body a list of chunks), so stitching a continuation can be
# checked with hypothesis over every cut point and every way of splitting the bytes.
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mendstream
from mendstream.core.parser import MessageParser
from mendstream.errors import APIStreamError, HTTPStatusError, IncompleteStreamError, UsageError
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream, Opened
from mendstream.streaming.machine import Continuation, Open
from mendstream.streaming.retry import DEFAULT_RETRY_ON, Fault, RestartEvent, Retry, classify
from mendstream.testing.faults import ErrorEvent, PlannedResponse, continuation_body, split_events
from mendstream.transports.capturing import attempt_capture_path
from splitting import split_at
from streams import text_stream

REQUEST: dict[str, Any] = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}


# -- Retry ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"backoff": -1}, "backoff"),
        ({"cap": float("inf")}, "cap"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -3}, "deadline"),
        ({"on_partial": "resume"}, "on_partial"),
        ({"jitter": "half"}, "jitter"),
        ({"retry_on": {"invalid_request_error"}}, "invalid_request_error"),
        ({"retry_on": {401}}, "401"),
        ({"retry_on": {"bogus"}}, "bogus"),
        ({"retry_on": "stalled"}, "retry_on"),
    ],
)
def test_invalid_policy_values_raise_usage_error_naming_them(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(UsageError, match=named) as info:
        Retry(**kwargs)
    assert isinstance(info.value, ValueError)


def test_invalid_keywords_on_the_transports_raise_usage_error() -> None:
    from mendstream.streaming.machine import check_stream_options

    with pytest.raises(UsageError, match="idle_timeout"):
        check_stream_options(None, -1, None)
    with pytest.raises(UsageError, match="progress_timeout"):
        check_stream_options(None, None, float("nan"))
    with pytest.raises(UsageError, match=r"mendstream\.Retry"):
        check_stream_options(3, None, None)
    check_stream_options(None, None, None)


def test_backoff_is_full_jitter_exponential_capped_and_reproducible() -> None:
    policy = Retry(backoff=0.5, cap=3.0, seed=11)
    delays = [[policy.delay(n) for n in range(1, 8)] for _ in range(200)]
    for row in delays:
        for n, delay in enumerate(row, start=1):
            assert 0.0 <= delay <= min(3.0, 0.5 * 2 ** (n - 1))
    # Full jitter spreads over the whole range, not around the bound.
    firsts = sorted(row[0] for row in delays)
    assert firsts[20] < 0.1 and firsts[-20] > 0.4
    again = Retry(backoff=0.5, cap=3.0, seed=11)
    assert [again.delay(n) for n in range(1, 8)] == delays[0]
    assert Retry(jitter="none", backoff=1, cap=5).delay(4) == 5.0


def test_retry_after_replaces_the_computed_wait() -> None:
    policy = Retry(backoff=10, jitter="none")
    assert policy.delay(1, Fault("status", status=529, retry_after=0.25)) == 0.25


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def _status(status: int, headers: dict[str, str] | None = None, error_type: str = "api_error") -> HTTPStatusError:
    body = {"type": "error", "error": {"type": error_type, "message": "x"}}
    return HTTPStatusError("x", status_code=status, body=body, response=_Response(headers or {}))


def test_classify_names_every_fault_and_reads_the_retry_hints() -> None:
    assert classify(APIStreamError("x", error_type="overloaded_error", body={})).kind == "overloaded_error"
    assert classify(IncompleteStreamError("x")).kind == "truncated"
    cut = IncompleteStreamError("x")
    cut.transport_error = OSError("reset")  # type: ignore[attr-defined]
    assert classify(cut).kind == "read_error"
    assert classify(mendstream.StreamStalledError("x", kind="idle", waited=1, timeout=1)).kind == "stalled"
    assert classify(_status(529, {"retry-after-ms": "1500"})).retry_after == 1.5
    assert classify(_status(429, {"retry-after": "3"})).retry_after == 3.0
    assert classify(_status(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})).retry_after == 0.0
    assert classify(_status(503, {"retry-after": "soon"})).retry_after is None
    assert classify(ConnectionResetError()).kind == "connection"
    assert classify(KeyError("x")).kind == "other"
    done = APIStreamError("x", error_type="api_error", body={}, snapshot={"stop_reason": "end_turn"})
    assert classify(done).complete


def test_what_is_retried_by_default() -> None:
    policy = Retry()
    assert policy.retry_on == DEFAULT_RETRY_ON
    for exc in (_status(529), _status(500), _status(429), IncompleteStreamError("x")):
        assert policy.retries(classify(exc)), exc
    assert not policy.retries(classify(_status(400, error_type="invalid_request_error")))
    assert not policy.retries(classify(_status(401, error_type="authentication_error")))
    assert not policy.retries(classify(_status(403, error_type="permission_error")))
    assert not policy.retries(classify(APIStreamError("x", error_type="invalid_request_error", body={})))
    assert not policy.retries(classify(_status(529, {"x-should-retry": "false"})))
    assert policy.retries(classify(_status(409, {"x-should-retry": "true"})))
    assert not policy.retries(classify(KeyError("x")))
    # a wait longer than a minute is not waited for (the SDK stops honouring retry-after there too)
    assert policy.retries(classify(_status(429, {"retry-after": "60"})))
    assert not policy.retries(classify(_status(429, {"retry-after": "61"})))
    assert not policy.retries(classify(_status(529, {"retry-after-ms": "3600000", "x-should-retry": "true"})))


def test_restart_event_shape() -> None:
    event = RestartEvent(attempt=2, error=IncompleteStreamError("cut"))
    assert event.type == "restart"
    assert event.to_dict() == {"type": "restart", "attempt": 2, "error": "IncompleteStreamError: cut"}


def test_prefill_and_capture_paths() -> None:
    prefill = Continuation.prefill
    assert prefill("ab").apply([{"role": "user", "content": "q"}]) == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "ab"}
    ]
    assert prefill("y").apply([{"role": "assistant", "content": "x"}]) == [{"role": "assistant", "content": "xy"}]
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
    assert prefill("y").apply(blocks) == [
        {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}
    ]
    assert blocks == [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]  # never mutated
    assert attempt_capture_path("d/turn.sse", 1) == "d/turn.sse"
    assert str(attempt_capture_path("d/turn.sse", 3)) == str(Path("d/turn.attempt-3.sse"))


# -- the attempt loop, in memory -----------------------------------------------------------------------------


class MemoryOpener:
    """Serves a full SSE body through a list of per-attempt plans (None: as is) and answers prefills with
    the continuation of the text, as the fault server does, but without HTTP."""

    def __init__(self, full: bytes, plans: list[Any], splits: list[int] | None = None) -> None:
        self.full = full
        self.plans = plans
        self.splits = splits or []
        self.requests: list[dict[str, Any]] = []

    def body(self, continuation: Continuation | None) -> bytes:
        request = {**REQUEST, "messages": continuation.apply(REQUEST["messages"])} if continuation else REQUEST
        ordinal = len(self.requests)
        self.requests.append(request)
        body = continuation_body(request, self.full) or self.full
        plan = self.plans[ordinal] if ordinal < len(self.plans) else None
        if plan is not None:
            planned = plan.apply(ordinal, PlannedResponse(200, (), ((0.0, body),)))
            if planned.status != 200:
                raise _status(planned.status)
            body = b"".join(c for _, c in planned.chunks)
        return body

    def __call__(self, action: Open) -> Opened:
        chunks = split_at(self.body(action.continuation), self.splits)
        return Opened(None, iter(chunks), lambda: None)

    async def aopen(self, action: Open) -> Opened:
        chunks = split_at(self.body(action.continuation), self.splits)

        async def agen() -> Any:
            for chunk in chunks:
                yield chunk

        async def release() -> None:
            return None

        return Opened(None, agen(), release)


def full_message(body: bytes) -> dict[str, Any]:
    parser = MessageParser()
    parser.feed(body)
    parser.end()
    return parser.message


def shown_text(events: list[Any]) -> str:
    """What a UI shows: text deltas, cleared at each RestartEvent."""
    text = ""
    for event in events:
        if isinstance(event, RestartEvent):
            text = ""
        elif event.type == "text":
            text += event.text
    return text


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab \n.é")), min_size=1, max_size=60),
    pieces=st.integers(1, 12),
    cut_events=st.integers(3, 14),
    splits=st.lists(st.integers(0, 5000), max_size=6),
)
def test_continue_stitches_without_duplicated_or_missing_characters(
    text: str, pieces: int, cut_events: int, splits: list[int]
) -> None:
    full = text_stream(text, pieces=pieces)
    assume(cut_events < len(split_events(full)) - 2)  # before message_delta: after it the stream is complete
    opener = MemoryOpener(full, [ErrorEvent(after_events=cut_events)], splits)
    stream = MessageStream(opener, retry=Retry(on_partial="continue", backoff=0))
    events = list(stream)
    restarted = any(isinstance(e, RestartEvent) for e in events)
    assert shown_text(events) == text
    # Every text event's snapshot is everything shown so far.
    seen = ""
    for event in events:
        if isinstance(event, RestartEvent):
            seen = ""
        elif event.type == "text":
            seen += event.text
            assert event.snapshot == seen
    final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == text
    assert events[-1].type == "message_stop" and events[-1].message.to_dict() == stream.message  # usage too
    prefilled = opener.requests[-1]["messages"][-1]["role"] == "assistant"
    if not restarted and len(stream.attempts) == 2 and stream.attempts[1].mode == "continue" and prefilled:
        prefill = opener.requests[1]["messages"][-1]["content"]
        assert prefill == prefill.rstrip() and text.startswith(prefill)
        assert final.usage.input_tokens == 20
        cont = full_message(continuation_body(opener.requests[1], full) or b"")
        assert final.usage.output_tokens == 1 + cont["usage"]["output_tokens"]
    elif restarted:
        assert stream.attempts[1].note is not None and "continue not possible" in stream.attempts[1].note
        assert stream.message == full_message(full)


@settings(max_examples=60, deadline=None)
@given(cut_events=st.integers(1, 12), splits=st.lists(st.integers(0, 5000), max_size=6))
def test_restart_shows_one_restart_marker_and_ends_with_the_last_attempt(cut_events: int, splits: list[int]) -> None:
    text = "one two three four five six seven"
    full = text_stream(text, pieces=6)
    assume(cut_events < len(split_events(full)) - 2)
    opener = MemoryOpener(full, [ErrorEvent(after_events=cut_events)], splits)
    stream = MessageStream(opener, retry=Retry(on_partial="restart", backoff=0))
    events = list(stream)
    markers = [e for e in events if isinstance(e, RestartEvent)]
    shown_content = any(e.type != "message_start" for e in events[: events.index(markers[0])]) if markers else False
    # A restart marker appears exactly when content had been shown before the fault.
    n_before = len(split_events(full)[:cut_events])
    assert len(markers) == (1 if shown_content else 0)
    assert n_before >= 1
    assert [e.type for e in events].count("message_start") == 1 + len(markers)
    assert shown_text(events) == text
    assert stream.message == full_message(full)
    assert len(opener.requests) == 2


def test_raise_policy_raises_with_the_partial_message_after_content() -> None:
    full = text_stream("hello there world", pieces=3)
    opener = MemoryOpener(full, [ErrorEvent(after_events=5)])
    stream = MessageStream(opener, retry=Retry(backoff=0))
    events: list[Any] = []
    with pytest.raises(APIStreamError) as info:
        for event in stream:
            events.append(event)
    assert info.value.snapshot is not None
    assert info.value.snapshot["content"][0]["text"] == shown_text(events) != ""
    assert len(opener.requests) == 1 and stream.attempts[0].error is info.value


def test_fault_before_content_is_invisible_in_every_policy() -> None:
    full = text_stream("hello there world", pieces=3)
    for policy in ("raise", "restart", "continue"):
        opener = MemoryOpener(full, [ErrorEvent(after_events=1), ErrorEvent(after_events=1)])
        stream = MessageStream(opener, retry=Retry(on_partial=policy, backoff=0))  # type: ignore[arg-type]
        events = list(stream)
        assert [e.type for e in events] == [e.type for e in mendstream.replay(full)], policy
        assert [a.mode for a in stream.attempts] == ["first", "retry", "retry"]
        assert stream.message == full_message(full)


def test_async_twin_matches_sync_in_memory() -> None:
    full = text_stream("the same words in both twins", pieces=5)

    async def collect() -> tuple[list[Any], dict[str, Any]]:
        opener = MemoryOpener(full, [ErrorEvent(after_events=5)])
        stream = await AsyncMessageStream(opener.aopen, retry=Retry(on_partial="continue", backoff=0)).start()
        events = [e async for e in stream]
        return events, stream.message

    events, message = asyncio.run(collect())
    sync = MessageStream(MemoryOpener(full, [ErrorEvent(after_events=5)]), retry=Retry(on_partial="continue", backoff=0))
    assert [e.to_dict() for e in events] == [e.to_dict() for e in sync]
    assert message == sync.message
    assert json.dumps(message)  # plain data


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("xy \n")), min_size=1, max_size=40),
    cut_events=st.integers(3, 10),
    second_cut=st.integers(1, 3),
    splits=st.lists(st.integers(0, 3000), max_size=4),
)
def test_a_continuation_that_fails_again_is_continued_again(
    text: str, cut_events: int, second_cut: int, splits: list[int]
) -> None:
    full = text_stream(text, pieces=5)
    assume(cut_events < len(split_events(full)) - 2)
    opener = MemoryOpener(full, [ErrorEvent(after_events=cut_events), ErrorEvent(after_events=second_cut)], splits)
    stream = MessageStream(opener, retry=Retry(on_partial="continue", backoff=0, max_attempts=4))
    events = list(stream)
    assert shown_text(events) == text
    assert stream.get_final_message().content[0].text == text
    if not any(isinstance(e, RestartEvent) for e in events):
        assert [e.type for e in events].count("message_start") == 1
        assert len(stream.attempts) == 3
