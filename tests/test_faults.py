# Fault plans as plain data: each plan's output checked by parsing it with the real parser (the error it must
# produce, the bytes it must keep), schedules and seeded mixes, the SPEC syntax (good and bad specs), and the
# prefill continuation helper.
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mendstream.core.parser import MessageParser
from mendstream.errors import APIStreamError, IncompleteStreamError, UsageError
from mendstream.testing.faults import (
    Cut,
    ErrorEvent,
    HTTPError,
    PlannedResponse,
    RandomMix,
    Schedule,
    Stall,
    Trickle,
    Unchanged,
    body_of,
    continuation_body,
    parse_fault_spec,
    split_events,
)
from streams import text_stream, tool_stream

TEXT = "Resilient streams do not repeat themselves."
FULL = text_stream(TEXT, pieces=6)
TOOL = tool_stream()


def planned(body: bytes) -> PlannedResponse:
    return PlannedResponse(200, (("content-type", "text/event-stream"),), ((0.0, body),))


def parse(body: bytes) -> tuple[list[Any], BaseException | None, MessageParser]:
    parser = MessageParser()
    events: list[Any] = []
    try:
        events += parser.feed(body)
        events += parser.end()
    except Exception as exc:
        return events + list(getattr(exc, "events", [])), exc, parser
    return events, None, parser


@given(st.binary(max_size=300))
def test_split_events_keeps_every_byte(body: bytes) -> None:
    pieces = split_events(body)
    assert b"".join(pieces) == body
    for piece in pieces[:-1]:
        assert piece.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))


def test_error_event_after_n_events_and_after_n_bytes() -> None:
    out = ErrorEvent(after_events=5).apply(0, planned(FULL))
    assert out.status == 200 and out.end == "close"
    events, error, _ = parse(body_of(out))
    assert [e.type for e in events][:1] == ["message_start"]
    assert isinstance(error, APIStreamError) and error.error_type == "overloaded_error"
    assert body_of(out).startswith(b"".join(split_events(FULL)[:5]))
    by_bytes = ErrorEvent(error_type="api_error", after_events=None, after_bytes=300).apply(0, planned(FULL))
    _, error, _ = parse(body_of(by_bytes))
    assert isinstance(error, APIStreamError) and error.error_type == "api_error"


def test_cut_mid_event_and_mid_tool_input() -> None:
    out = Cut(after_bytes=200).apply(0, planned(FULL))
    assert out.end == "cut" and body_of(out) == FULL[:200]
    tool = Cut(in_tool_input=True).apply(0, planned(TOOL))
    _, error, _ = parse(body_of(tool))
    assert isinstance(error, IncompleteStreamError)
    assert error.raw_tool_inputs == {} or all(isinstance(v, str) for v in error.raw_tool_inputs.values())
    assert error.snapshot is not None and error.snapshot["content"][1]["type"] == "tool_use"
    # The cut falls inside the first input_json_delta event.
    first = next(e for e in split_events(TOOL) if b"input_json_delta" in e)
    cut_at = len(body_of(tool))
    start = TOOL.index(first)
    assert start < cut_at < start + len(first)
    mid = Cut(after_events=4).apply(0, planned(FULL))
    events = split_events(FULL)
    assert sum(map(len, events[:4])) < len(body_of(mid)) < sum(map(len, events[:5]))


def test_stall_silent_and_with_pings() -> None:
    silent = Stall(seconds=2.0, after_events=3).apply(0, planned(FULL))
    assert sum(d for d, _ in silent.chunks) == pytest.approx(2.0) and body_of(silent) == FULL
    pings = Stall(seconds=1.0, after_events=3, ping_every=0.25).apply(0, planned(FULL))
    ping_chunks = [c for d, c in pings.chunks if b"ping" in c and d == 0.25]
    assert len(ping_chunks) == 3
    assert sum(d for d, _ in pings.chunks) == pytest.approx(1.0)
    _, error, parser = parse(body_of(pings))
    assert error is None and parser.message["content"][0]["text"] == TEXT


def test_stall_with_ping_zero_is_a_silent_stall() -> None:
    """``ping=0`` used to plan pings for ever (2 GB in 9 s): it is a stall without pings."""
    for plan in (parse_fault_spec("stall(seconds=5,ping=0)"), Stall(seconds=5.0, ping_every=0)):
        out = plan.apply(0, planned(FULL))
        assert body_of(out) == FULL and len(out.chunks) == len(split_events(FULL))  # nothing added
        assert sum(d for d, _ in out.chunks) == pytest.approx(5.0)
    assert parse_fault_spec("stall(seconds=5,ping=0)") == Stall(seconds=5.0, ping_every=0.0)
    most = Stall(seconds=10_000.0, ping_every=1.0).apply(0, planned(FULL))  # exactly at the limit
    assert len(most.chunks) == len(split_events(FULL)) + 9_999


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"seconds": -1.0}, "seconds must be a finite number >= 0"),
        ({"seconds": float("nan")}, "seconds must be a finite number"),
        ({"seconds": 1.0, "ping_every": float("inf")}, "ping_every must be a finite number"),
        ({"seconds": 1.0, "ping_every": -0.5}, "ping_every must be a finite number"),
        ({"seconds": 100.0, "ping_every": 0.001}, "100000 pings; at most 10000"),
    ],
)
def test_stall_arguments_are_checked(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        Stall(**kwargs)


def test_random_mix_seed_is_bounded() -> None:
    with pytest.raises(UsageError, match=r"int within \[-2\*\*63, 2\*\*63\); got an int of 16610 bits"):
        RandomMix(((0.5, ErrorEvent()),), seed=10**5000)
    with pytest.raises(UsageError, match="got '7'"):
        RandomMix(((0.5, ErrorEvent()),), seed="7")  # type: ignore[arg-type]
    assert RandomMix((), seed=-(2**63)).pick(3) is None


def test_stall_that_never_resumes_ends_with_a_cut() -> None:
    out = Stall(seconds=1.0, after_events=3, ping_every=0.4, cut=True).apply(0, planned(FULL))
    assert out.end == "cut" and sum(d for d, _ in out.chunks) == pytest.approx(1.0)
    assert body_of(out) == b"".join(split_events(FULL)[:3]) + b'event: ping\ndata: {"type": "ping"}\n\n' * 2
    assert parse_fault_spec("stall(seconds=1,ping=0.4,after_events=3,cut=true)") == Stall(
        seconds=1.0, ping_every=0.4, cut=True
    )


def test_stall_before_the_headers() -> None:
    out = Stall(seconds=1.5, headers=True).apply(0, planned(FULL))
    assert out.head_delay == 1.5 and out.chunks == planned(FULL).chunks and out.end == "close"
    refused = Stall(seconds=1.5, headers=True).apply(0, HTTPError(529).apply(0, planned(FULL)))
    assert refused.head_delay == 1.5 and refused.status == 529  # silence comes before any status
    cut = Stall(seconds=2.0, headers=True, cut=True).apply(0, planned(FULL))
    assert cut.head_delay == 2.0 and cut.chunks == () and cut.end == "cut"
    assert parse_fault_spec("stall(seconds=2,headers=true,cut=true)") == Stall(seconds=2.0, headers=True, cut=True)


def test_trickle_sends_the_same_bytes_slowly() -> None:
    out = Trickle(chunk_bytes=7, delay=0.01).apply(0, planned(FULL))
    assert body_of(out) == FULL and all(len(c) <= 7 and d == 0.01 for d, c in out.chunks)


def test_http_error_status_with_retry_hints() -> None:
    out = HTTPError(529, retry_after=2, retry_after_ms=1500, should_retry=True).apply(4, planned(FULL))
    headers = dict(out.headers)
    assert out.status == 529 and headers["retry-after"] == "2" and headers["retry-after-ms"] == "1500"
    assert headers["x-should-retry"] == "true" and headers["content-type"] == "application/json"
    body = json.loads(body_of(out))
    assert body["error"]["type"] == "overloaded_error" and body["request_id"] == "req_fault_4"
    assert json.loads(body_of(HTTPError(429).apply(0, planned(FULL))))["error"]["type"] == "rate_limit_error"


def test_plans_leave_error_responses_alone() -> None:
    error = HTTPError(500).apply(0, planned(FULL))
    for plan in (ErrorEvent(), Cut(after_bytes=3), Stall(seconds=1), Trickle()):
        assert plan.apply(0, error) == error


def test_schedule_per_request_ordinal() -> None:
    plan = Schedule((HTTPError(529), None, ErrorEvent()), then=Cut(after_bytes=10))
    statuses = [plan.apply(i, planned(FULL)) for i in range(5)]
    assert statuses[0].status == 529
    assert statuses[1] == planned(FULL)
    assert b"overloaded_error" in body_of(statuses[2])
    assert statuses[3].end == statuses[4].end == "cut"


def test_random_mix_is_seeded_per_ordinal_and_follows_its_rates() -> None:
    mix = RandomMix(((0.2, ErrorEvent()), (0.05, HTTPError(529))), seed=7)
    picks = [mix.pick(i) for i in range(20000)]
    assert picks == [RandomMix(mix.choices, seed=7).pick(i) for i in range(20000)]
    assert picks[100:200] == [mix.pick(i) for i in range(100, 200)]  # any order, same answer
    assert abs(sum(isinstance(p, ErrorEvent) for p in picks) / 20000 - 0.2) < 0.015
    assert abs(sum(isinstance(p, HTTPError) for p in picks) / 20000 - 0.05) < 0.01
    assert picks != [RandomMix(mix.choices, seed=8).pick(i) for i in range(20000)]
    with pytest.raises(UsageError, match="more than 1"):
        RandomMix(((0.7, ErrorEvent()), (0.5, Cut())))


@pytest.mark.parametrize(
    ("spec", "plan"),
    [
        ("ok", Unchanged()),
        ("error", ErrorEvent()),
        ("error(type=api_error,after_events=2)", ErrorEvent(error_type="api_error", after_events=2)),
        ("cut(in=tool)", Cut(in_tool_input=True)),
        ("cut(after_bytes=120)", Cut(after_bytes=120)),
        ("stall(seconds=2,ping=0.5)", Stall(seconds=2.0, ping_every=0.5)),
        ("trickle(bytes=4,delay=0.02)", Trickle(chunk_bytes=4, delay=0.02)),
        ("status(code=429,retry_after=1,should_retry=true)", HTTPError(429, retry_after=1.0, should_retry=True)),
        ("status(code=529);error;ok", Schedule((HTTPError(529), ErrorEvent(), Unchanged()))),
        (
            "mix(seed=7):0.2*error+0.05*stall(seconds=2,ping=0.5)+0.05*cut(in=tool)+0.05*status(code=529)",
            RandomMix(
                ((0.2, ErrorEvent()), (0.05, Stall(seconds=2.0, ping_every=0.5)), (0.05, Cut(in_tool_input=True)),
                 (0.05, HTTPError(529))),
                seed=7,
            ),
        ),
    ],
)
def test_spec_syntax(spec: str, plan: Any) -> None:
    assert parse_fault_spec(spec) == plan


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("explode", "unknown fault 'explode'"),
        ("error(kind=x)", "unknown argument 'kind=x'"),
        ("stall", "seconds"),
        ("stall(seconds=-1)", "must be >= 0"),
        ("cut(after_bytes=ten)", "not an integer"),
        ("cut(in=text)", "in= must be 'tool'"),
        ("status(code=200)", "400..599"),
        ("status(should_retry=maybe)", "true or false"),
        ("mix(seed=1):error", "RATE\\*FAULT"),
        ("mix(seed=1):0.8*error+0.8*cut", "more than 1"),
        ("", "non-empty"),
        # issue 18: these were "internal error" (int() refuses 5,000 digits) or an endless loop (ping=0 once
        # planned pings for ever; a tiny interval plans millions)
        ("mix(seed=" + "9" * 5000 + "):0.5*error", "mix seed takes at most 19 digits"),
        ("mix(seed=" + "9" * 20 + "):0.5*error", "at most 19 digits"),
        ("error(after_events=" + "9" * 5000 + ")", "after_events takes at most 40 characters"),
        ("stall(seconds=" + "9" * 5000 + ")", "seconds takes at most 40 characters"),
        ("stall(seconds=5,ping=0.0000001)", "plans 50000000 pings; at most 10000"),
        ("stall(seconds=1e308,ping=1)", "at most 10000"),
    ],
)
def test_bad_specs_raise_usage_error_naming_the_problem(spec: str, named: str) -> None:
    with pytest.raises(UsageError, match=named):
        parse_fault_spec(spec)


def test_continuation_body_streams_the_rest_of_the_text() -> None:
    request = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": TEXT[:11]}]}
    body = continuation_body(request, FULL, delta_chars=5)
    assert body is not None
    _, error, parser = parse(body)
    assert error is None and parser.message["content"] == [{"type": "text", "text": TEXT[11:]}]
    assert parser.message["stop_reason"] == "end_turn"
    assert continuation_body({"messages": [{"role": "user", "content": "q"}]}, FULL) is None
    wrong = {"messages": [{"role": "assistant", "content": "Something else"}]}
    assert continuation_body(wrong, FULL) is None
    # After the text, the recorded answer goes on: the tool call and its stop reason.
    tool = continuation_body({"messages": [{"role": "assistant", "content": "Check"}]}, TOOL)
    assert tool is not None
    _, error, parser = parse(tool)
    assert error is None and parser.message["stop_reason"] == "tool_use"
    assert parser.message["content"][0] == {"type": "text", "text": "ing."}
    assert parser.message["content"][1]["input"] == {"city": "Paris", "unit": "celsius"}
