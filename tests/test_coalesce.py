"""Delta coalescing at the HTTP boundary (mendstream.wire.coalesce): the sans-IO DeltaCoalescer with a fake
clock (what merges, what flushes it, what never merges, exact bytes), property tests (the output read by
mendstream's MessageParser and by the SDK's accumulator gives the input's final message, whole, byte by byte
and at random splits and times; nothing waits past its window), and the wired paths on real servers on
127.0.0.1 with the unmodified SDK: every fixture and corpus stream through the proxy and the transports gives
the message it gives without coalescing; a failing stream delivers everything before its failure; a quiet
upstream does not hold a delta past its window; a client that closes early leaves no thread behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import FIXTURE_NAMES, fixture_bytes
from mendstream import MessageParser, StreamError, UsageError
from mendstream.wire.coalesce import DEFAULT_WINDOW, DeltaCoalescer, coalesce_window
from mendstream.wire.rewrite import ResponseRewriter, encode_event
from splitting import split_at

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.sse")) if CORPUS.is_dir() else []
REQUEST = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}

# -- building streams --------------------------------------------------------------------------------------------

MESSAGE = {"id": "msg_c", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
START = encode_event("message_start", {"type": "message_start", "message": MESSAGE})
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
END = (encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                           "stop_sequence": None},
                                      "usage": {"output_tokens": 9}})
       + encode_event("message_stop", {"type": "message_stop"}))
BLOCKS = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""},
          "tool_use": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}
DELTAS = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
          "tool_use": ("input_json_delta", "partial_json")}


def block_start(index: int, kind: str) -> bytes:
    return encode_event("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": BLOCKS[kind]})


def block_stop(index: int) -> bytes:
    return encode_event("content_block_stop", {"type": "content_block_stop", "index": index})


def delta(index: int, kind: str, fragment: str, *, spaced: bool = False, ascii_only: bool = False) -> bytes:
    dtype, field = DELTAS[kind]
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": dtype, field: fragment}}
    if not spaced and not ascii_only:
        return encode_event("content_block_delta", payload)
    data = json.dumps(payload, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    return b"event: content_block_delta\ndata: " + data.encode() + b"\n\n"


def signature(index: int) -> bytes:
    return encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "signature_delta", "signature": "c2ln"}})


def text_stream(*fragments: str) -> bytes:
    return START + block_start(0, "text") + b"".join(delta(0, "text", f) for f in fragments) + block_stop(0) + END


def events_of(data: bytes) -> list[bytes]:
    return [block + b"\n\n" for block in data.split(b"\n\n")[:-1]]


def message_of(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    parser = MessageParser()
    try:
        parser.feed(data)
        parser.end()
    except StreamError as exc:
        return exc.snapshot, type(exc).__name__
    return parser.message, None


def sdk_message(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    from sdk_reference import sdk_events

    try:
        return sdk_events(data)[1], None
    except Exception as exc:
        return None, type(exc).__name__


def coalesce_all(chunks: list[bytes], window: float = 1.0, **options: Any) -> tuple[bytes, DeltaCoalescer]:
    """Every chunk fed at time 0 (nothing is ever due), then end()."""
    coalescer = DeltaCoalescer(window, **options)
    out = b"".join(coalescer.feed(chunk, 0.0) for chunk in chunks) + coalescer.end()
    return out, coalescer


# -- unit tests, fake clock --------------------------------------------------------------------------------------


def test_a_run_goes_out_first_at_once_then_merged_when_its_window_ends() -> None:
    c = DeltaCoalescer(0.010, idle=0.010)  # no early release after a pause (see the next test)
    head = START + block_start(0, "text")
    assert c.feed(head + delta(0, "text", "Hel"), 100.0) == head + delta(0, "text", "Hel")
    assert c.deadline() is None
    assert c.feed(delta(0, "text", "lo"), 100.002) == b""
    assert c.deadline() == pytest.approx(100.012)  # the window runs from the first held fragment...
    assert c.feed(delta(0, "text", " wor"), 100.009) == b""
    assert c.deadline() == pytest.approx(100.012)  # ...not from the last one
    assert c.flush_due(100.011) == b""
    assert c.flush_due(100.012) == delta(0, "text", "lo wor")
    assert c.deadline() is None and c.merged == 1
    # The run goes on: a delta within a window of the previous one is held, for a new window.
    assert c.feed(delta(0, "text", "ld"), 100.015) == b""
    assert c.deadline() == pytest.approx(100.025)
    assert c.feed(block_stop(0), 100.016) == delta(0, "text", "ld") + block_stop(0)


def test_held_deltas_go_out_early_when_their_run_pauses() -> None:
    # A burst that ends need not wait out the window: after `idle` (a quarter of the window by default)
    # without a new delta, what is held goes out; a run that keeps coming is still bounded by the window.
    c = DeltaCoalescer(0.010)
    assert c.idle == pytest.approx(0.0025)
    c.feed(START + block_start(0, "text") + delta(0, "text", "a"), 0.0)
    assert c.feed(delta(0, "text", "b"), 0.001) == b""
    assert c.deadline() == pytest.approx(0.0035)
    assert c.feed(delta(0, "text", "c"), 0.003) == b""
    assert c.deadline() == pytest.approx(0.0055)
    assert c.feed(PING, 0.004) == b""
    assert c.deadline() == pytest.approx(0.0055)  # a ping does not keep the run going
    for i, at in enumerate((0.005, 0.007, 0.009)):
        assert c.feed(delta(0, "text", str(i)), at) == b""
    assert c.deadline() == pytest.approx(0.011)  # the window since "b" caps it
    assert c.flush_due(0.011) == delta(0, "text", "bc012") + PING
    with pytest.raises(UsageError, match="idle"):
        DeltaCoalescer(0.010, idle=0.02)
    with pytest.raises(UsageError, match="idle"):
        DeltaCoalescer(0.010, idle=-1)


def test_a_stream_slower_than_the_window_is_never_delayed() -> None:
    # Nagle-style: a delta arriving more than a window after the previous one of its run goes out at once;
    # only deltas that follow it quickly are held.
    c = DeltaCoalescer(0.010, idle=0.010)
    c.feed(START + block_start(0, "text"), 0.0)
    for i in range(5):
        assert c.feed(delta(0, "text", f"w{i}"), 0.020 * i) == delta(0, "text", f"w{i}")
        assert c.deadline() is None
    assert c.feed(delta(0, "text", "x"), 0.085) == b""  # 5 ms after the previous one: held
    assert c.deadline() == pytest.approx(0.095)
    assert c.feed(delta(0, "text", "y"), 0.200) == delta(0, "text", "x") + delta(0, "text", "y")


def test_input_after_the_deadline_first_releases_what_was_due() -> None:
    c = DeltaCoalescer(0.010, idle=0.010)
    c.feed(START + block_start(0, "text") + delta(0, "text", "a") + delta(0, "text", "b"), 0.0)
    # The driver missed the deadline: "b" goes out first, alone; "c" arrives a window after it: at once.
    assert c.feed(delta(0, "text", "c") + delta(0, "text", "d"), 0.5) == delta(0, "text", "b") + delta(0, "text", "c")
    assert c.deadline() == pytest.approx(0.51)
    assert c.end() == delta(0, "text", "d")


def test_merged_bytes_are_exact_and_compact() -> None:
    fragments = ['say "hi"\\', "\n\tx\u2028", "é😀", "\\u0041", ""]
    out, c = coalesce_all([text_stream("first", *fragments)])
    merged = events_of(out)[3]
    assert merged == (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                      b'"delta":{"type":"text_delta","text":"' + json.dumps("".join(fragments), ensure_ascii=False)
                      [1:-1].encode() + b'"}}\n\n')
    assert json.loads(merged.split(b"data: ")[1])["delta"]["text"] == "".join(fragments)
    assert c.merged == len(fragments) - 1


def test_other_spellings_are_merged_and_re_encoded_once() -> None:
    # A server that writes ", " / ": " or ASCII-only JSON: decoded, each fragment encoded once, compact.
    data = (START + block_start(0, "text") + delta(0, "text", "x") + delta(0, "text", "é \u2028", spaced=True)
            + delta(0, "text", "ü", ascii_only=True) + block_stop(0) + END)
    out, _ = coalesce_all([data])
    assert events_of(out)[3] == delta(0, "text", "é \u2028ü")
    assert message_of(out) == message_of(data)


@pytest.mark.parametrize("kind", ["text", "thinking", "tool_use"])
def test_each_kind_merges_and_keeps_its_type(kind: str) -> None:
    data = START + block_start(0, kind) + b"".join(delta(0, kind, f) for f in ['{"a"', ': [1, ', '"\\u00e9"]}'])
    data += (signature(0) if kind == "thinking" else b"") + block_stop(0) + END
    out, _ = coalesce_all([data])
    assert delta(0, kind, ': [1, "\\u00e9"]}') in out
    assert message_of(out) == message_of(data)


def test_a_size_cap_releases_a_merge_without_waiting() -> None:
    c = DeltaCoalescer(10.0, max_bytes=400)
    out = c.feed(START + block_start(0, "text") + delta(0, "text", "a"), 0.0)
    held = [delta(0, "text", "x" * 50) for _ in range(3)]
    assert c.feed(held[0] + held[1], 0.0) == b""
    assert c.feed(held[2], 0.0) == delta(0, "text", "x" * 150)  # 3 held events reach 400 bytes
    assert c.deadline() is None and out


def test_any_other_event_releases_the_merge_first_and_passes_itself_at_once() -> None:
    c = DeltaCoalescer(10.0)
    c.feed(START + block_start(0, "text") + delta(0, "text", "a") + delta(0, "text", "b") + delta(0, "text", "c"), 0)
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    assert c.feed(error, 0.001) == delta(0, "text", "bc") + error  # an error is never delayed, nothing after it
    c = DeltaCoalescer(10.0)
    c.feed(START + block_start(0, "text") + delta(0, "text", "a") + delta(0, "text", "b"), 0)
    assert c.feed(block_stop(0), 0) == delta(0, "text", "b") + block_stop(0)


def test_a_ping_rides_behind_held_deltas_without_breaking_the_run() -> None:
    c = DeltaCoalescer(0.010)
    assert c.feed(START + PING, 0) == START + PING  # nothing held: a ping passes at once
    c.feed(block_start(0, "text") + delta(0, "text", "a") + delta(0, "text", "b"), 1.0)
    assert c.feed(PING, 1.001) == b""
    assert c.feed(delta(0, "text", "c"), 1.002) == b""
    assert c.flush_due(1.010) == delta(0, "text", "bc") + PING  # the ping waited no longer than the window


def test_another_run_releases_the_merge() -> None:
    c = DeltaCoalescer(10.0)
    c.feed(START + block_start(0, "thinking") + delta(0, "thinking", "a") + delta(0, "thinking", "b"), 0)
    # A text delta on another block (or another type on the same index) starts a new run: sent at once.
    out = c.feed(delta(1, "text", "t") + delta(1, "text", "u"), 0)
    assert out == delta(0, "thinking", "b") + delta(1, "text", "t")
    assert c.end() == delta(1, "text", "u")


@pytest.mark.parametrize("other", [
    signature(0),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "citations_delta", "citation": {"type": "x"}}}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "compaction_delta", "content": "summary"}}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "thinking_delta", "thinking": "t", "estimated_tokens": 3}}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "no type"}}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0, "extra": 1,
                                         "delta": {"type": "thinking_delta", "thinking": "t"}}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": "0",
                                         "delta": {"type": "thinking_delta", "thinking": "t"}}),
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
    b'"thinking":"\\ud83d"}}\n\n',
])
def test_never_merged_deltas_pass_byte_for_byte_after_what_was_held(other: bytes) -> None:
    c = DeltaCoalescer(10.0)
    c.feed(START + block_start(0, "thinking") + delta(0, "thinking", "a") + delta(0, "thinking", "b"), 0)
    assert c.feed(other, 0) == delta(0, "thinking", "b") + other
    assert c.feed(other + other, 0) == other + other
    # After it, a thinking delta is the first of a new run again.
    assert c.feed(delta(0, "thinking", "c"), 0) == delta(0, "thinking", "c")


def test_surrogate_halves_in_separate_deltas_are_never_joined() -> None:
    # "\ud83d" + "\ude00" in two deltas are two lone surrogates to every client; merged they would be one 😀.
    high = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\\ud83d"}}\n\n'
    low = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\\ude00b"}}\n\n'
    data = START + block_start(0, "text") + delta(0, "text", "x") + high + low + block_stop(0) + END
    out, _ = coalesce_all([data])
    assert out == data
    assert message_of(out) == message_of(data)


def test_off_is_a_pass_through() -> None:
    for window in (None, 0, 0.0, False):
        c = DeltaCoalescer(window)
        data = text_stream("a", "b", "c")
        assert c.feed(data, 0.0) is data and c.deadline() is None and c.end() == b""


def test_bad_options_and_misuse_are_usage_errors() -> None:
    for window in (-1, float("nan"), float("inf"), "10ms", [0.01]):
        with pytest.raises(UsageError, match="coalesce must be"):
            DeltaCoalescer(window)  # type: ignore[arg-type]
    for size in (0, -5, True, 1.5):
        with pytest.raises(UsageError, match="max_bytes"):
            DeltaCoalescer(0.01, max_bytes=size)  # type: ignore[arg-type]
    c = DeltaCoalescer(0.01)
    with pytest.raises(UsageError, match="takes bytes"):
        c.feed("text", 0.0)  # type: ignore[arg-type]
    assert c.feed(bytearray(START), 0.0) == START
    c.end()
    with pytest.raises(UsageError, match="after end"):
        c.feed(b"", 0.0)
    assert c.end() == b""
    assert coalesce_window(True) == DEFAULT_WINDOW and coalesce_window(None) == 0.0 and coalesce_window(2) == 2.0


def test_incomplete_events_other_than_deltas_are_forwarded_as_they_arrive() -> None:
    c = DeltaCoalescer(10.0)
    big = encode_event("message_start", {"type": "message_start", "message": {**MESSAGE, "id": "x" * 5000}})
    assert c.feed(big[:1000], 0) == big[:1000]  # not a delta: forwarded without waiting for its end
    assert c.feed(big[1000:-1], 0) == big[1000:-1]
    assert c.feed(big[-1:] + block_stop(0)[:30], 0) == big[-1:] + block_stop(0)[:30]
    # A delta arriving in pieces is kept until whole (it may merge), at most max_bytes.
    c = DeltaCoalescer(10.0, max_bytes=300)
    c.feed(START + block_start(0, "text") + delta(0, "text", "a"), 0)
    piece = delta(0, "text", "b")
    assert c.feed(piece[:20], 0) == b"" and c.feed(piece[20:], 0) == b""
    long = delta(0, "text", "y" * 1000)
    assert c.feed(long[:200], 0) == b""
    assert c.feed(long[200:400], 0) == piece + long[:400]  # over max_bytes: what was held, then the rest raw
    assert c.feed(long[400:] + delta(0, "text", "z"), 0) == long[400:] + delta(0, "text", "z")


def test_framing_it_does_not_expect_passes_unchanged() -> None:
    # CRLF framing, stray line breaks, a final event without its blank line: the bytes pass as they came.
    crlf = text_stream("a", "b", "c").replace(b"\n", b"\r\n")
    for data in (crlf, b"\n\n\n" + text_stream("a", "b"), text_stream("a")[:-1], b"\r\n" * 3):
        whole, _ = coalesce_all([data])
        single, _ = coalesce_all([data[i : i + 1] for i in range(len(data))])
        assert single == whole and message_of(whole) == message_of(data)
    assert coalesce_all([crlf])[0] == crlf


def test_work_is_linear_in_the_number_of_deltas() -> None:
    from workcount import count_work

    def run(n: int) -> None:
        data = text_stream(*[f"w{i} " for i in range(n)])
        coalesce_all(split_at(data, list(range(0, len(data), 7))), max_bytes=1 << 30)

    small, large = count_work(lambda: run(500)), count_work(lambda: run(2000))
    assert large.operations < 4.6 * small.operations, (small, large)


def test_work_is_linear_in_the_size_of_one_event_fed_in_small_pieces() -> None:
    from workcount import count_work

    def run(size: int) -> None:
        data = START + block_start(0, "text") + delta(0, "text", "a") + delta(0, "text", "x" * size)
        coalesce_all([data[i : i + 10] for i in range(0, len(data), 10)], max_bytes=1 << 30)

    small, large = count_work(lambda: run(20_000)), count_work(lambda: run(80_000))
    assert large.operations < 4.4 * small.operations, (small, large)


# -- property tests ----------------------------------------------------------------------------------------------

_fragment = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ['"', "\\", "\\u", "\n", "\r\n", "\t", "\u2028", "😀", "", " ", "\x00", "é"])


@st.composite
def streams(draw: st.DrawFn, sdk_safe: bool = True) -> bytes:
    """A stream of canonical events: text / thinking / tool blocks with random fragments (tool input a JSON
    value cut at random characters, so escapes are split across fragments), pings anywhere, signatures, and
    (when not sdk_safe) deltas mendstream passes through unknown. Some deltas spelled with spaces or ASCII."""
    parts = [START]
    for index in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "thinking", "tool_use"]))
        parts.append(block_start(index, kind))
        if kind == "tool_use":
            value = draw(st.recursive(st.none() | st.integers() | _fragment,
                                      lambda inner: st.lists(inner, max_size=3)
                                      | st.dictionaries(_fragment, inner, max_size=3), max_leaves=8))
            raw = json.dumps({"v": value}, ensure_ascii=draw(st.booleans()))
            fragments = split_at(raw, draw(st.lists(st.integers(0, len(raw)), max_size=12)))
        else:
            fragments = draw(st.lists(_fragment, max_size=10))
        for fragment in fragments:
            if draw(st.integers(0, 6)) == 0:
                parts.append(PING)
            if not sdk_safe and draw(st.integers(0, 8)) == 0:
                parts.append(encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                  "delta": {"type": "mystery_delta", "x": 1}}))
            style = draw(st.integers(0, 5))
            parts.append(delta(index, kind, fragment, spaced=style == 1, ascii_only=style == 2))
        if kind == "thinking":
            parts.append(signature(index))
        parts.append(block_stop(index))
    if draw(st.booleans()):
        parts.append(END)
    return b"".join(parts)


@settings(max_examples=60, deadline=None)
@given(data=streams(), points=st.lists(st.integers(min_value=0), max_size=20), cap=st.sampled_from([64, 300, 16384]))
@example(data=text_stream("a", "b\\", "\\u00e9"), points=[], cap=16384)
def test_sdk_and_mendstream_read_the_input_message_whole_byte_by_byte_and_split(
        data: bytes, points: list[int], cap: int) -> None:
    whole, coalescer = coalesce_all([data], max_bytes=cap)
    assert coalesce_all([data[i : i + 1] for i in range(len(data))], max_bytes=cap)[0] == whole
    assert coalesce_all(split_at(data, points), max_bytes=cap)[0] == whole
    assert message_of(whole) == message_of(data)
    assert sdk_message(whole) == sdk_message(data)
    # Only deltas were merged: every other event, pings included, is there as it was, in order.
    def others(stream: bytes) -> list[bytes]:
        return [e for e in events_of(stream) if not e.startswith(b"event: content_block_delta")]
    assert others(whole) == others(data)
    assert len(events_of(whole)) == len(events_of(data)) - coalescer.merged


@settings(max_examples=60, deadline=None)
@given(data=streams(sdk_safe=False), points=st.lists(st.integers(min_value=0), max_size=30),
       gaps=st.lists(st.sampled_from([0.0, 0.001, 0.004, 0.009, 0.03]), min_size=1, max_size=30))
def test_nothing_waits_past_its_window_and_the_message_is_kept(data: bytes, points: list[int],
                                                               gaps: list[float]) -> None:
    # A driver that honours deadline(): before each chunk (arriving at its time) it releases what is due, at
    # the deadline. For every block, by the time each input fragment's window ends, the client must have all
    # of that block's text up to and including that fragment; the same for pings.
    window = 0.005
    chunks = split_at(data, points)
    coalescer = DeltaCoalescer(window)
    emitted: list[tuple[float, bytes]] = []
    arrivals: list[tuple[float, bytes]] = []
    now = 0.0
    for i, chunk in enumerate(chunks):
        now += gaps[i % len(gaps)]
        while (due := coalescer.deadline()) is not None and due <= now:
            emitted.append((due, coalescer.flush_due(due)))
        arrivals.append((now, chunk))
        emitted.append((now, coalescer.feed(chunk, now)))
    emitted.append((now, coalescer.end()))
    out = b"".join(part for _, part in emitted)
    assert message_of(out) == message_of(data)

    def progress(timed: list[tuple[float, bytes]]) -> list[tuple[float, dict[tuple[int, str], int], int]]:
        # After each whole event: (time, characters per (block, delta type) so far, pings so far).
        seen: dict[tuple[int, str], int] = {}
        pings, buf, out_list = 0, b"", []
        for at, part in timed:
            buf += part
            *done, buf = buf.split(b"\n\n")
            for block in done:
                if block.startswith(b"event: ping"):
                    pings += 1
                elif block.startswith(b"event: content_block_delta"):
                    payload = json.loads(block.split(b"\ndata: ", 1)[1])
                    d = payload["delta"]
                    field = {"text_delta": "text", "thinking_delta": "thinking",
                             "input_json_delta": "partial_json"}.get(d.get("type"))
                    if field is not None:
                        key = (payload["index"], d["type"])
                        seen[key] = seen.get(key, 0) + len(d[field])
                out_list.append((at, dict(seen), pings))
        return out_list

    sent, received = progress(arrivals), progress(emitted)
    for at, counts, pings in sent:
        later = [r for r in received if r[0] <= at + window + 1e-9]
        got_counts, got_pings = (later[-1][1], later[-1][2]) if later else ({}, 0)
        assert got_pings >= pings
        for key, n in counts.items():
            assert got_counts.get(key, 0) >= n, (at, key)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_rewritten_then_coalesced_reads_the_same(name: str) -> None:
    rewriter = ResponseRewriter()
    data = fixture_bytes(name)
    rewritten = rewriter.feed(data) + rewriter.end()
    out, _ = coalesce_all([rewritten])
    assert coalesce_all([rewritten[i : i + 1] for i in range(len(rewritten))])[0] == out
    assert message_of(out) == message_of(rewritten)
    assert sdk_message(out) == sdk_message(rewritten)


@pytest.mark.skipif(not CORPUS_FILES, reason="shared corpus not present")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_corpus_stream_rewritten_then_coalesced_reads_the_same(path: Path) -> None:
    rewriter = ResponseRewriter()
    data = path.read_bytes()
    rewritten = rewriter.feed(data) + rewriter.end()
    out, _ = coalesce_all([rewritten])
    assert coalesce_all(split_at(rewritten, [len(rewritten) // 3, len(rewritten) // 2 + 7]))[0] == out
    assert message_of(out) == message_of(rewritten)
    assert sdk_message(out) == sdk_message(rewritten)


# -- the drivers, in process --------------------------------------------------------------------------------------


class Dropped(Exception):
    """Stands for the HTTP library's error when the upstream drops the connection."""


def _timed_chunks() -> list[tuple[float, bytes]]:
    """(delay before, chunk): a block start, 20 deltas 1 ms apart, then 0.6 s of silence, then the end."""
    chunks = [(0.0, START + block_start(0, "text"))]
    chunks += [(0.001, delta(0, "text", f"<{i}>")) for i in range(20)]
    chunks.append((0.6, block_stop(0) + END))
    return chunks


def _arrivals(received: list[tuple[float, bytes]]) -> dict[str, float]:
    """When each "<i>" marker reached the consumer."""
    seen: dict[str, float] = {}
    so_far = b""
    for at, out in received:
        so_far += out
        for i in range(20):
            if f"<{i}>" not in seen and f"<{i}>".encode() in so_far:
                seen[f"<{i}>"] = at
    return seen


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_drivers_release_held_deltas_within_the_window_while_the_upstream_is_quiet(mode: str) -> None:
    from mendstream.wire.coalesce_drivers import AsyncCoalescing, ThreadedCoalescing

    window = 0.02
    sent: dict[str, float] = {}
    received: list[tuple[float, bytes]] = []

    def note(chunk: bytes) -> None:
        for i in range(20):
            if f"<{i}>".encode() in chunk:
                sent[f"<{i}>"] = time.monotonic()

    if mode == "async":
        async def source() -> Any:
            for wait, chunk in _timed_chunks():
                await asyncio.sleep(wait)
                note(chunk)
                yield chunk

        async def run() -> None:
            driver = AsyncCoalescing(source(), DeltaCoalescer(window), rewrite=lambda b: b, finish=lambda: b"")
            async for out in driver:
                received.append((time.monotonic(), out))

        asyncio.run(run())
    else:
        def sync_source() -> Iterator[bytes]:
            for wait, chunk in _timed_chunks():
                time.sleep(wait)
                note(chunk)
                yield chunk

        released: list[bool] = []
        threaded = ThreadedCoalescing(sync_source(), DeltaCoalescer(window), rewrite=lambda b: b,
                                      finish=lambda: b"", release=lambda: released.append(True))
        for out in threaded:
            received.append((time.monotonic(), out))
        assert released == [True]
    body = b"".join(out for _, out in received)
    assert message_of(body) == message_of(b"".join(chunk for _, chunk in _timed_chunks()))
    assert len(events_of(body)) < len(events_of(b"".join(c for _, c in _timed_chunks())))  # something merged
    arrived = _arrivals(received)
    late = {k: arrived[k] - sent[k] for k in sent if arrived[k] - sent[k] > window + 0.25}
    assert not late, late  # within the window (plus scheduling slack), not behind the 0.6 s of silence


@pytest.mark.parametrize("mode", ["async", "threaded"])
@pytest.mark.parametrize("failure", ["cut", "bug"])
def test_drivers_deliver_everything_held_before_a_cut_or_a_failure(mode: str, failure: str) -> None:
    from mendstream.wire.coalesce_drivers import AsyncCoalescing, ThreadedCoalescing

    head = START + block_start(0, "text") + b"".join(delta(0, "text", f"<{i}>") for i in range(5))
    tail = b"event: error\n" if failure == "cut" else b""

    def finish() -> bytes:  # what the rewriter says at the end: here, a marker for "a cut was judged"
        return tail

    error = Dropped() if failure == "cut" else RuntimeError("a bug")
    cuts: list[BaseException] = []
    got: list[bytes] = []
    raised: BaseException | None = None
    if mode == "async":
        async def source() -> Any:
            yield head
            raise error

        async def run() -> None:
            async for out in AsyncCoalescing(source(), DeltaCoalescer(60.0), rewrite=lambda b: b, finish=finish,
                                             cut=(Dropped,), on_cut=cuts.append):
                got.append(out)

        try:
            asyncio.run(run())
        except RuntimeError as exc:
            raised = exc
    else:
        def sync_source() -> Iterator[bytes]:
            yield head
            raise error

        try:
            for out in ThreadedCoalescing(sync_source(), DeltaCoalescer(60.0), rewrite=lambda b: b, finish=finish,
                                          cut=(Dropped,), on_cut=cuts.append, release=lambda: None):
                got.append(out)
        except RuntimeError as exc:
            raised = exc
    body = b"".join(got)
    assert body.startswith(START) and all(f"<{i}>".encode() in body for i in range(5))  # nothing held back
    assert body.endswith(tail)
    assert (raised is error) == (failure == "bug")
    assert cuts == ([error] if failure == "cut" else [])


# -- the wired paths on real servers -----------------------------------------------------------------------------

anthropic = pytest.importorskip("anthropic")
uvicorn = pytest.importorskip("uvicorn")

from conftest import FIXTURES_DIR, sync_client  # noqa: E402
from mendstream import AsyncRepairTransport, RepairTransport  # noqa: E402
from mendstream.testing import ReplayServer  # noqa: E402
from mendstream.testing.faults import Cut, ErrorEvent, Stall  # noqa: E402
from mendstream.wire.proxy import create_app  # noqa: E402
from sdk_reference import sdk_http_module  # noqa: E402
from test_proxy import Served  # noqa: E402

http = sdk_http_module()


@pytest.fixture(scope="module")
def fixtures_server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES_DIR, select="header") as server:
        yield server


@pytest.fixture(scope="module")
def proxies(fixtures_server: ReplayServer) -> Iterator[dict[str, Served]]:
    """The proxy as created by default (coalescing) and with coalescing off."""
    served = {"on": Served(create_app(fixtures_server.base_url)), "off": Served(create_app(fixtures_server.base_url,
                                                                                         coalesce=0))}
    yield served
    for s in served.values():
        s.stop()


@pytest.fixture(scope="module")
def corpus_servers() -> Iterator[tuple[ReplayServer, dict[str, Served]]]:
    if not CORPUS_FILES:
        pytest.skip("shared corpus not present")
    with ReplayServer({p.stem: p.read_bytes() for p in CORPUS_FILES}, select="header") as server:
        served = {"on": Served(create_app(server.base_url)), "off": Served(create_app(server.base_url, coalesce=0))}
        yield server, served
        for s in served.values():
            s.stop()


def sdk_read(client: Any, name: str, beta: bool = False) -> tuple[Any, int, str | None]:
    """(final message, number of SDK events, error class) for the stream ``name`` through ``client``."""
    messages = client.beta.messages if beta else client.messages
    count = 0
    try:
        with messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": name}) as stream:
            for _ in stream:
                count += 1
            return stream.get_final_message().to_dict(mode="json"), count, None
    except Exception as exc:
        return None, count, type(exc).__name__


async def async_sdk_read(client: Any, name: str) -> tuple[Any, int, str | None]:
    count = 0
    try:
        async with client.messages.stream(**REQUEST, extra_headers={"x-mendstream-fixture": name}) as stream:
            async for _ in stream:
                count += 1
            return (await stream.get_final_message()).to_dict(mode="json"), count, None
    except Exception as exc:
        return None, count, type(exc).__name__


def transport_client(server: ReplayServer, coalesce: float | None) -> Any:
    return sync_client(base_url=server.base_url, http_client=http.Client(transport=RepairTransport(coalesce=coalesce)))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_through_proxy_and_transports_gives_the_same_message(
        fixtures_server: ReplayServer, proxies: dict[str, Served], name: str) -> None:
    fixtures = fixtures_server
    off = sdk_read(transport_client(fixtures, None), name)
    on = sdk_read(transport_client(fixtures, 0.05), name)
    assert on[0] == off[0] and on[2] == off[2], name
    assert sdk_read(sync_client(base_url=proxies["on"].base_url), name)[::2] == \
        sdk_read(sync_client(base_url=proxies["off"].base_url), name)[::2] == off[::2]

    async def through_async() -> tuple[Any, int, str | None]:
        async with http.AsyncClient(transport=AsyncRepairTransport(coalesce=0.05)) as client:
            sdk = anthropic.AsyncAnthropic(api_key="k", base_url=fixtures.base_url, max_retries=0, http_client=client)
            return await async_sdk_read(sdk, name)

    assert asyncio.run(through_async())[::2] == off[::2]


def test_coalescing_does_cut_the_events_a_client_handles(fixtures_server: ReplayServer,
                                                         proxies: dict[str, Served]) -> None:
    fixtures = fixtures_server
    name = "tool_use_64kb_input"
    _, plain, _ = sdk_read(transport_client(fixtures, None), name)
    _, via_transport, _ = sdk_read(transport_client(fixtures, 0.05), name)
    _, via_proxy, _ = sdk_read(sync_client(base_url=proxies["on"].base_url), name)
    assert via_transport * 10 < plain and via_proxy * 10 < plain, (plain, via_transport, via_proxy)


@pytest.mark.skipif(not CORPUS_FILES, reason="shared corpus not present")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_corpus_stream_through_proxy_and_transport_gives_the_same_message(
        corpus_servers: tuple[ReplayServer, dict[str, Served]], path: Path) -> None:
    corpus, proxied = corpus_servers
    name = path.stem
    off = sdk_read(transport_client(corpus, None), name, beta=True)
    assert sdk_read(transport_client(corpus, 0.05), name, beta=True)[::2] == off[::2]
    assert sdk_read(sync_client(base_url=proxied["on"].base_url), name, beta=True)[::2] == \
        sdk_read(sync_client(base_url=proxied["off"].base_url), name, beta=True)[::2] == off[::2]


def raw_through(kind: str, server: ReplayServer, window: float, on_chunk: Any = None, capture: Any = None) -> bytes:
    """The response body of one streaming request through ``kind`` (sync / async transport, proxy), chunk by
    chunk (``on_chunk(bytes_so_far)`` after each)."""
    body = {**REQUEST, "stream": True}
    headers = {"x-mendstream-fixture": "text_basic"}
    received = b""
    if kind == "async":
        async def run() -> bytes:
            nonlocal received
            transport = AsyncRepairTransport(coalesce=window, capture=capture)
            async with http.AsyncClient(transport=transport, timeout=30) as client, \
                    client.stream("POST", server.url, json=body, headers=headers) as response:
                async for chunk in response.aiter_raw():
                    received += chunk
                    if on_chunk is not None:
                        on_chunk(received)
            return received
        return asyncio.run(run())
    if kind == "proxy":
        # Without survival, as the transports here: a failure must reach the client as it happened.
        served = Served(create_app(server.base_url, coalesce=window, capture=capture, survival=None))
        client = http.Client(timeout=30)
        url = served.base_url + "/v1/messages"
    else:
        served = None
        client = http.Client(transport=RepairTransport(coalesce=window, capture=capture), timeout=30)
        url = server.url
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            for chunk in response.iter_raw():
                received += chunk
                if on_chunk is not None:
                    on_chunk(received)
    finally:
        client.close()
        if served is not None:
            served.stop()
    return received


@pytest.mark.parametrize("kind", ["sync", "async", "proxy"])
def test_a_quiet_upstream_does_not_hold_a_delta_past_its_window(kind: str) -> None:
    # text_basic's first two deltas, then 2 s of silence: the first goes out at once, the second is held
    # and goes out within its window, long before the upstream speaks again.
    window = 0.05
    seen: dict[str, float] = {}

    def on_chunk(so_far: bytes) -> None:
        for marker in ("Hello! I'm ", '"Claud"'):
            if marker not in seen and marker.encode() in so_far:
                seen[marker] = time.monotonic()

    with ReplayServer(FIXTURES_DIR, select="header", faults=Stall(seconds=2.0, after_events=5)) as server:
        start = time.monotonic()
        body = raw_through(kind, server, window, on_chunk)
    assert message_of(body) == message_of(fixture_bytes("text_basic"))
    gap = seen['"Claud"'] - seen["Hello! I'm "]
    # Held (it followed the first at once), then out when the run paused (idle: a quarter of the window).
    assert window / 4 * 0.5 <= gap < window + 0.5, gap
    assert seen['"Claud"'] - start < 1.5  # and not behind the 2 s silence


@pytest.mark.parametrize("kind", ["sync", "async", "proxy"])
@pytest.mark.parametrize("fault", [ErrorEvent(after_events=9), Cut(after_events=9),
                                   Stall(seconds=0.3, after_events=9, cut=True)], ids=["error", "cut", "quiet-cut"])
def test_a_stream_failing_mid_block_delivers_everything_before_the_failure(kind: str, fault: Any) -> None:
    with ReplayServer(FIXTURES_DIR, select="header", faults=fault) as server:
        on = raw_through(kind, server, 10.0)  # a window longer than the test: only the failure releases
        off = raw_through(kind, server, 0)
    (snapshot_on, error_on), (snapshot_off, error_off) = message_of(on), message_of(off)
    assert error_on == error_off is not None
    assert snapshot_on == snapshot_off and snapshot_on is not None
    assert snapshot_on["content"][0]["text"]  # some text arrived before the failure, and all of it is here
    assert on.rstrip().split(b"\n\n")[-1].startswith(b"event: error")


@pytest.mark.parametrize("kind", ["sync", "async", "proxy"])
def test_a_cut_is_recorded_in_the_capture_as_without_coalescing(kind: str, tmp_path: Path) -> None:
    with ReplayServer(FIXTURES_DIR, select="header", faults=Cut(after_events=9)) as server:
        raw_through(kind, server, 0.05, capture=tmp_path)
    deadline = time.monotonic() + 10  # the sidecar is written once the stream is closed
    while not list(tmp_path.glob("*.capture.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    (sidecar,) = tmp_path.glob("*.capture.json")
    meta = json.loads(sidecar.read_text())
    assert meta["outcome"] == "error", meta
    (body,) = tmp_path.glob("*.sse")
    assert fixture_bytes("text_basic").startswith(body.read_bytes())  # the original bytes, up to the cut


def _coalescing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mendstream-coalesce"]


def test_a_client_closing_early_ends_the_reader_thread_at_once() -> None:
    with ReplayServer(FIXTURES_DIR, select="header", faults=Stall(seconds=5.0, after_events=6)) as server, \
            http.Client(transport=RepairTransport(coalesce=0.01), timeout=30) as client:
        with client.stream("POST", server.url, json={**REQUEST, "stream": True},
                           headers={"x-mendstream-fixture": "text_basic"}) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            assert first and len(_coalescing_threads()) == 1
            start = time.monotonic()
        closed_in = time.monotonic() - start
        assert closed_in < 1.5, closed_in  # the blocked read was woken, not waited out (5 s)
        assert not _coalescing_threads()
        # The pool still serves: the shut-down connection is never reused.
        server.reset()
        response = client.post(server.url, json={**REQUEST, "stream": True}, headers={"x-mendstream-fixture": "text_basic"})
        assert message_of(response.content) == message_of(fixture_bytes("text_basic"))
    assert not _coalescing_threads()


def test_sdk_streams_read_to_the_end_leave_no_thread(fixtures_server: ReplayServer) -> None:
    client = transport_client(fixtures_server, 0.01)
    for name in ("text_basic", "tool_use_64kb_input", "truncated_eof_in_text_block"):
        sdk_read(client, name)
    deadline = time.monotonic() + 5
    while _coalescing_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _coalescing_threads()


def test_options() -> None:
    assert create_app("http://127.0.0.1:9").coalesce == DEFAULT_WINDOW  # the proxy coalesces by default
    assert create_app("http://127.0.0.1:9", coalesce=0).coalesce == 0.0
    assert create_app("http://127.0.0.1:9", coalesce=None).coalesce == 0.0
    with pytest.raises(UsageError, match="coalesce must be"):
        create_app("http://127.0.0.1:9", coalesce=-0.01)
    with pytest.raises(UsageError, match="coalesce must be"):
        RepairTransport(coalesce="fast")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="coalesce must be"):
        AsyncRepairTransport(coalesce=float("inf"))


def test_proxy_command_line_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from mendstream.cli.proxy import add_subcommand
    from mendstream.wire.proxy import app_from_env, seconds

    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    assert seconds(parser.parse_args(["proxy", "--upstream", "http://x"]).coalesce, "--coalesce") == DEFAULT_WINDOW
    assert seconds(parser.parse_args(["proxy", "--upstream", "http://x", "--coalesce", "0"]).coalesce, "x") == 0
    with pytest.raises(UsageError, match="--coalesce must be a number"):
        seconds("soon", "--coalesce")
    monkeypatch.setenv("MENDSTREAM_UPSTREAM", "http://127.0.0.1:9")
    assert app_from_env().coalesce == DEFAULT_WINDOW
    monkeypatch.setenv("MENDSTREAM_COALESCE", "0.02")
    assert app_from_env().coalesce == 0.02
    monkeypatch.setenv("MENDSTREAM_COALESCE", "-1")
    with pytest.raises(UsageError, match="MENDSTREAM_COALESCE"):
        app_from_env()
