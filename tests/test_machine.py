# The stream machine on its own, with the time passed in by hand (no sockets, no threads, no sleeping): each
# test plays a driver, asking next_action() and reporting what happened at chosen instants, and checks the
# decisions: attempts and their modes, stall kinds and when they fire, backoff and retry-after, the deadline,
# continuation vs restart, and refusing inputs a driver may not give in the current state.
from __future__ import annotations

from typing import Any

import pytest

from mendstream import Retry, UsageError
from mendstream.errors import APIStreamError, HTTPStatusError, IncompleteStreamError, StreamStalledError
from mendstream.streaming.machine import EventPresenter, Fail, Finish, Open, Read, Sleep, StreamMachine, parser_factory
from streams import text_stream

TEXT = "hello there, world"
FULL = text_stream(TEXT, pieces=3)
EVENTS = [e + b"\n\n" for e in FULL.split(b"\n\n") if e]
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
OVERLOADED = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'


def machine(retry: Retry | None = None, **options: Any) -> StreamMachine[list[Any]]:
    return StreamMachine(retry, reader=parser_factory(None), presenter=EventPresenter(), now=0.0, **options)


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def status_529(retry_after: str | None = None) -> HTTPStatusError:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return HTTPStatusError("overloaded", status_code=529, body={"type": "error"}, response=_Response(headers))


def test_without_retry_one_attempt_reads_to_the_end() -> None:
    m = machine()
    action = m.next_action()
    assert isinstance(action, Open) and action.attempt.mode == "first" and action.timeout is None
    m.opened(0.0)
    assert isinstance(m.next_action(), Read) and m.read_deadline() is None
    shown = [e for chunk in EVENTS for e in m.received(chunk, 0.0)] + m.ended(0.0)
    assert types(shown)[0] == "message_start" and types(shown)[-1] == "message_stop"
    assert isinstance(m.next_action(), Finish)
    assert [a.mode for a in m.attempts] == ["first"] and m.attempts[0].error is None


def test_without_retry_a_fault_fails_with_the_events_before_it() -> None:
    m = machine()
    m.next_action()
    m.opened(0.0)
    shown = m.received(b"".join(EVENTS[:4]), 0.0) + m.received(OVERLOADED, 0.0)
    assert "text" in types(shown)
    action = m.next_action()
    assert isinstance(action, Fail) and isinstance(action.error, APIStreamError)
    assert action.error.error_type == "overloaded_error"


def test_idle_stall_fires_at_the_idle_deadline_and_is_retried_invisibly_before_content() -> None:
    m = machine(Retry(backoff=0), idle_timeout=5.0)
    assert m.next_action().timeout == 5.0  # type: ignore[union-attr]  # the head may take as long
    m.opened(1.0)
    m.received(EVENTS[0], 2.0)  # message_start only: nothing the consumer could act on
    assert m.read_deadline() == 7.0  # the last byte + idle_timeout
    assert m.timed_out(7.0) == []
    sleep = m.next_action()
    assert isinstance(sleep, Sleep) and sleep.seconds == 0
    error = m.attempts[0].error
    assert isinstance(error, StreamStalledError) and error.kind == "idle" and error.waited == pytest.approx(5.0)
    m.slept(7.0)
    again = m.next_action()
    assert isinstance(again, Open) and again.attempt.mode == "retry"
    m.opened(7.5)
    shown = [e for chunk in EVENTS for e in m.received(chunk, 8.0)] + m.ended(8.0)
    assert types(shown).count("message_start") == 0  # the consumer already has the first attempt's
    assert isinstance(m.next_action(), Finish)


def test_pings_do_not_count_as_progress() -> None:
    m = machine(Retry(max_attempts=1), idle_timeout=5.0, progress_timeout=10.0)
    m.next_action()
    m.opened(0.0)
    m.received(b"".join(EVENTS[:4]), 0.0)  # content shown at t=0
    for t in range(1, 10):
        assert m.received(PING, float(t)) == []  # a ping is no event for the consumer
        assert m.reading and m.read_deadline() == min(t + 5.0, 10.0)  # it keeps the idle clock quiet...
    # ...but not the progress clock, whose deadline (t=10) stays
    m.received(PING, 10.5)  # a ping that arrives past the progress deadline ends it
    action = m.next_action()
    assert isinstance(action, Fail) and isinstance(action.error, StreamStalledError)
    assert action.error.kind == "progress" and action.error.pings_only


def test_backoff_grows_honours_retry_after_and_stops_at_max_attempts() -> None:
    m = machine(Retry(max_attempts=3, backoff=1.0, cap=8.0, jitter="none"))
    delays = []
    for n, retry_after in enumerate(["2.5", None, None]):
        assert isinstance(m.next_action(), Open)
        m.open_failed(status_529(retry_after), float(n))
        action = m.next_action()
        if isinstance(action, Fail):
            break
        assert isinstance(action, Sleep)
        delays.append(action.seconds)
        m.slept(float(n))
    assert delays == [2.5, 2.0]  # retry-after first, then the backoff's second step
    assert isinstance(m.next_action(), Fail) and len(m.attempts) == 3


def test_the_deadline_stops_before_another_attempt() -> None:
    m = machine(Retry(max_attempts=10, backoff=0, deadline=30.0))
    m.next_action()
    m.open_failed(status_529(), 10.0)
    m.next_action()
    m.slept(20.0)
    assert isinstance(m.next_action(), Open)
    m.open_failed(status_529(), 25.0)
    assert isinstance(m.next_action(), Sleep)
    m.slept(31.0)  # past the deadline: no third attempt
    action = m.next_action()
    assert isinstance(action, Fail) and isinstance(action.error, HTTPStatusError) and len(m.attempts) == 2


def test_after_content_continue_sends_a_prefill_and_restart_a_restart_event() -> None:
    for policy, mode in (("continue", "continue"), ("restart", "restart")):
        m = machine(Retry(on_partial=policy, backoff=0))  # type: ignore[arg-type]
        m.next_action()
        m.opened(0.0)
        m.received(b"".join(EVENTS[:5]), 0.0)
        m.ended(0.0)  # cut: the connection closed mid-text
        assert isinstance(m.attempts[0].error, IncompleteStreamError)
        m.next_action()
        m.slept(0.0)
        action = m.next_action()
        assert isinstance(action, Open) and action.attempt.mode == mode
        if policy == "continue":
            assert action.continuation is not None and TEXT.startswith(action.continuation.text)
            assert action.restart is None
        else:
            assert action.continuation is None and action.restart is not None


def test_a_restart_is_a_failure_where_restarts_cannot_be_shown() -> None:
    m = machine(Retry(on_partial="restart", backoff=0), restarts=False)
    m.next_action()
    m.opened(0.0)
    m.received(b"".join(EVENTS[:5]) + OVERLOADED, 0.0)
    action = m.next_action()
    assert isinstance(action, Fail) and isinstance(action.error, APIStreamError)


def test_inputs_out_of_turn_are_usage_errors() -> None:
    m = machine()
    with pytest.raises(UsageError):
        m.received(EVENTS[0], 0.0)  # nothing opened yet
    m.next_action()
    with pytest.raises(UsageError):
        m.slept(0.0)
    m.opened(0.0)
    with pytest.raises(UsageError):
        m.opened(0.0)


def test_close_ends_the_stream_without_another_attempt() -> None:
    m = machine(Retry(backoff=0))
    m.next_action()
    m.open_failed(status_529(), 0.0)
    assert isinstance(m.next_action(), Sleep)
    m.close()
    assert isinstance(m.next_action(), Finish)
