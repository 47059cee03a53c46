# The stream machine at the HTTP boundary, in memory: each attempt's body a list of chunks, answered as the
# replay server answers (a continuation request gets the rest of the text), the client's view being the bytes
# forwarded, read by the SDK's own accumulator and by mendstream. Checked with hypothesis over every cut point
# and every way of splitting the bytes: an invisible retry sends one message_start, a continuation neither
# repeats nor loses a character, anything that cannot continue ends in an error event the SDK raises.
from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mendstream import MessageParser, Retry, UsageError
from mendstream.core.sse import SSEDecoder
from mendstream.streaming.drivers import Opened, SyncRun
from mendstream.streaming.machine import Open
from mendstream.testing.faults import Cut, ErrorEvent, PlannedResponse, continuation_body, split_events
from mendstream.wire.boundary import Survival, UpstreamStatusError, boundary_machine
from mendstream.wire.rewrite import error_event
from splitting import split_at
from streams import text_stream, tool_stream
from test_rewrite import sdk_outcome

REQUEST: dict[str, Any] = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}


class WireOpener:
    """Answers attempts from a full SSE body through per-attempt fault plans (None: as is); a continuation
    (an assistant prefill) is answered with the rest of the text, as the replay server answers it."""

    def __init__(self, full: bytes, plans: list[Any], splits: list[int] | None = None) -> None:
        self.full = full
        self.plans = plans
        self.splits = splits or []
        self.requests: list[dict[str, Any]] = []

    def __call__(self, action: Open) -> Opened:
        request = REQUEST if action.continuation is None else {
            **REQUEST, "messages": action.continuation.apply(REQUEST["messages"])}
        ordinal = len(self.requests)
        self.requests.append(request)
        body = continuation_body(request, self.full) or self.full
        plan = self.plans[ordinal] if ordinal < len(self.plans) else None
        if plan is not None:
            planned = plan.apply(ordinal, PlannedResponse(200, (), ((0.0, body),)))
            if planned.status != 200:
                error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}).encode()
                raise UpstreamStatusError(planned.status, [], error, None)
            body = b"".join(c for _, c in planned.chunks)
        return Opened(None, iter(split_at(body, self.splits)), lambda: None)


def forward(opener: WireOpener, survival: Survival) -> tuple[bytes, SyncRun]:
    """What a client receives: the bytes of the stream, ended by an error event when the boundary gives up."""
    run = SyncRun(opener, boundary_machine(survival, now=time.monotonic()), fail_as=error_event)
    return b"".join(run.events()), run


def wire_events(out: bytes) -> list[str]:
    return [e.event or "" for e in SSEDecoder().feed(out)]


def full_text(out: bytes) -> str:
    parser = MessageParser()
    parser.feed(out)
    parser.end()
    return "".join(b.get("text", "") for b in parser.message["content"] if b["type"] == "text")


CONTINUE = Survival(Retry(on_partial="continue", backoff=0))


def test_restart_is_refused_at_the_boundary() -> None:
    with pytest.raises(UsageError, match="restart"):
        Survival(Retry(on_partial="restart"))


def test_a_fault_before_content_is_retried_invisibly() -> None:
    full = text_stream("hello there world", pieces=3)
    for plan in (ErrorEvent(after_events=1), Cut(after_events=1)):
        opener = WireOpener(full, [plan])
        out, run = forward(opener, CONTINUE)
        assert wire_events(out).count("message_start") == 1, plan
        assert sdk_outcome(out)[0] == sdk_outcome(full)[0]
        assert [a.mode for a in run.machine.attempts] == ["first", "retry"]


def test_a_fault_after_an_empty_block_start_sends_the_request_again_and_splices_its_answer() -> None:
    full = text_stream("hello there world", pieces=3)
    opener = WireOpener(full, [ErrorEvent(after_events=2)])  # message_start and block 0's start were sent
    out, run = forward(opener, CONTINUE)
    events = wire_events(out)
    assert events.count("message_start") == 1 and events.count("content_block_start") == 1
    assert full_text(out) == "hello there world" and opener.requests[1] == REQUEST  # no prefill: nothing to say
    assert [a.mode for a in run.machine.attempts] == ["first", "continue"]


def test_an_http_error_before_streaming_is_retried() -> None:
    full = text_stream("hello there world", pieces=3)
    from mendstream.testing.faults import HTTPError

    opener = WireOpener(full, [HTTPError(529), HTTPError(503)])
    out, _ = forward(opener, Survival(Retry(max_attempts=3, backoff=0)))
    assert sdk_outcome(out)[0] == sdk_outcome(full)[0] and len(opener.requests) == 3


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab \n.é")), min_size=1, max_size=60),
    pieces=st.integers(1, 12),
    cut_events=st.integers(3, 14),
    splits=st.lists(st.integers(0, 5000), max_size=6),
)
def test_a_continuation_continues_the_text_with_nothing_repeated_or_lost(
    text: str, pieces: int, cut_events: int, splits: list[int]
) -> None:
    full = text_stream(text, pieces=pieces)
    assume(cut_events < len(split_events(full)) - 2)  # before message_delta: after it the stream is complete
    opener = WireOpener(full, [ErrorEvent(after_events=cut_events)], splits)
    out, run = forward(opener, CONTINUE)
    message, error = sdk_outcome(out)
    assert error is None, error
    assert message is not None and [b["type"] for b in message["content"]] == ["text"]
    assert message["content"][0]["text"] == text == full_text(out)
    events = wire_events(out)
    assert events.count("message_start") == 1 and events.count("content_block_start") == 1
    if [a.mode for a in run.machine.attempts][-1:] == ["continue"] and opener.requests[-1] != REQUEST:
        prefill = opener.requests[-1]["messages"][-1]["content"]
        assert prefill == prefill.rstrip() and text.startswith(prefill)
        # usage summed over the attempts: the client's message_delta counts both
        assert message["usage"]["output_tokens"] > sdk_outcome(full)[0]["usage"]["output_tokens"] - 1  # type: ignore[index]


def test_a_tool_call_cut_while_held_back_is_made_again_by_the_continuation() -> None:
    # hold_tools (the default with "continue"): the tool block reaches the client only when complete, so a
    # fault inside it leaves the client with text; the continuation goes on from the text and the model makes
    # the call again.
    full = tool_stream()
    cut = next(i for i, e in enumerate(split_events(full)) if b"input_json_delta" in e) + 1
    opener = WireOpener(full, [Cut(after_events=cut)])
    out, run = forward(opener, CONTINUE)
    message, error = sdk_outcome(out)
    expected, _ = sdk_outcome(full)
    assert error is None and message is not None and expected is not None
    assert message["content"] == expected["content"]
    assert [a.mode for a in run.machine.attempts] == ["first", "continue"]
    events = wire_events(out)
    assert events.count("content_block_start") == 2 and events.count("message_start") == 1


def test_a_tool_call_streamed_as_written_ends_in_an_error_event_the_sdk_raises() -> None:
    full = tool_stream()
    cut = next(i for i, e in enumerate(split_events(full)) if b"input_json_delta" in e) + 1
    opener = WireOpener(full, [ErrorEvent(after_events=cut)])
    out, run = forward(opener, Survival(Retry(on_partial="continue", backoff=0), hold_tools=False))
    assert wire_events(out)[-1] == "error" and len(opener.requests) == 1
    _, error = sdk_outcome(out)
    assert error is not None and "overloaded_error" in str(error)
    assert run.machine.note is not None and "tool_use" in run.machine.note


def test_raise_policy_forwards_the_upstream_error_event_as_sent() -> None:
    full = text_stream("hello there world", pieces=3)
    opener = WireOpener(full, [ErrorEvent(after_events=5)])
    out, _ = forward(opener, Survival(Retry(backoff=0)))
    planned = ErrorEvent(after_events=5).apply(0, PlannedResponse(200, (), ((0.0, full),)))
    upstream_error = split_events(b"".join(chunk for _, chunk in planned.chunks))[-1]
    assert out.endswith(upstream_error) and len(opener.requests) == 1


def test_off_is_one_attempt_that_passes_a_clean_stream_byte_for_byte() -> None:
    full = text_stream("hello there world", pieces=3)
    opener = WireOpener(full, [], splits=[7, 100, 101])
    out, run = forward(opener, Survival())
    assert out == full and len(run.machine.attempts) == 1


def test_a_continuation_that_goes_straight_to_a_tool_call_is_shifted_after_the_text() -> None:
    # The model's continuation may start with a tool call instead of more text: the client's text block 0 is
    # stopped and the continuation's blocks move one index up.
    first = text_stream("Let me check the weather.", pieces=4)
    tool_only = tool_stream().replace(b'"index": 1', b'"index": 9')  # a stream whose blocks we re-number below
    import json as _json

    from streams import sse

    events = [_json.loads(e.split(b"data: ", 1)[1]) for e in split_events(tool_only)]
    events = [e for e in events if e.get("index") not in (0,)]  # drop the text block: the tool call only
    for e in events:
        if e.get("index") == 9:
            e["index"] = 0
    answer = b"".join(sse(e) for e in events)

    class Opener(WireOpener):
        def __call__(self, action: Open) -> Opened:
            if action.continuation is None:
                return super().__call__(action)
            self.requests.append({})
            return Opened(None, iter([answer]), lambda: None)

    cut = next(i for i, e in enumerate(split_events(first)) if b"content_block_stop" in e)
    out, _ = forward(Opener(first, [Cut(after_events=cut)]), CONTINUE)
    message, error = sdk_outcome(out)
    assert error is None and message is not None
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["content"][0]["text"] == "Let me check the weather."
    assert message["content"][1]["input"] == {"city": "Paris", "unit": "celsius"}


def test_the_text_kept_for_a_continuation_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past MAX_TRACKED_TEXT the boundary lets the text go: a later fault ends in an error event, said why.
    import mendstream.wire.boundary as boundary

    monkeypatch.setattr(boundary, "MAX_TRACKED_TEXT", 10)
    full = text_stream("hello there world, a longer answer", pieces=6)
    opener = WireOpener(full, [ErrorEvent(after_events=7)])
    out, run = forward(opener, CONTINUE)
    assert wire_events(out)[-1] == "error" and len(opener.requests) == 1
    assert run.machine.note is not None and "MAX_TRACKED_TEXT" in run.machine.note
    assert run.machine.presenter._shown.text == []  # type: ignore[attr-defined]
    short = WireOpener(text_stream("hello there", pieces=2), [ErrorEvent(after_events=4)])
    assert full_text(forward(short, CONTINUE)[0]) == "hello there"  # under the bound: continued


def test_a_tool_block_held_back_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past MAX_HELD_TOOL_BYTES the held tool block is sent as it is and streams on; the message is the same.
    import mendstream.wire.boundary as boundary

    full = tool_stream()

    def chunks() -> list[bytes]:
        opener = WireOpener(full, [], splits=list(range(0, len(full), 16)))
        run = SyncRun(opener, boundary_machine(CONTINUE, now=time.monotonic()), fail_as=error_event)
        received = list(run.events())
        assert sdk_outcome(b"".join(received))[0] == sdk_outcome(full)[0]
        return received

    def first(received: list[bytes], needle: bytes) -> int:
        return next(i for i, chunk in enumerate(received) if needle in chunk)

    held = chunks()  # the default bound: the tool block goes out whole, with its stop
    assert first(held, b"input_json_delta") == first(held, b'"content_block_stop", "index": 1')
    monkeypatch.setattr(boundary, "MAX_HELD_TOOL_BYTES", 200)
    streamed = chunks()
    assert first(streamed, b"input_json_delta") < first(streamed, b'"content_block_stop", "index": 1')
