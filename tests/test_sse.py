"""The SSE decoder: WHATWG framing, identical results however the bytes are split, and agreement with
httpx-sse (the reference) on well-formed streams."""

from __future__ import annotations

import pytest
from httpx_sse._decoders import SSEDecoder as RefDecoder
from httpx_sse._decoders import SSELineDecoder as RefLineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from mendstream.core.sse import ServerSentEvent, SSEDecoder
from mendstream.errors import BufferLimitError
from splitting import split_at


def decode(chunks: list[bytes], **options: int) -> tuple[list[ServerSentEvent], SSEDecoder]:
    decoder = SSEDecoder(**options)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.end()
    return events, decoder


def simple(events: list[ServerSentEvent]) -> list[tuple[str | None, str, str | None]]:
    return [(e.event, e.data, e.id) for e in events]


def reference(text: str) -> list[tuple[str | None, str, str | None]]:
    """httpx-sse's reading of the same text (it does not strip a BOM; callers strip it first)."""
    line_decoder, decoder = RefLineDecoder(), RefDecoder()
    out = []
    for line in line_decoder.decode(text) + line_decoder.flush():
        sse = decoder.decode(line)
        if sse is not None:
            out.append((sse.event, sse.data, sse.id or None))
    return out


# -- hand-written cases -------------------------------------------------------------------------------------


def test_basic_event_and_offsets() -> None:
    data = b'event: a\ndata: {"x": 1}\n\nevent: b\ndata: 2\n\n'
    events, _ = decode([data])
    assert simple(events) == [("a", '{"x": 1}', None), ("b", "2", None)]
    assert [e.offset for e in events] == [0, data.index(b"event: b")]
    assert [e.ordinal for e in events] == [0, 1]


def test_every_terminator_and_split_cr_lf() -> None:
    for term in (b"\n", b"\r\n", b"\r"):
        data = b"event: a" + term + b"data: x" + term + term + b"data: y" + term + term
        whole = simple(decode([data])[0])
        assert whole == [("a", "x", None), (None, "y", None)], term
        assert simple(decode([bytes([b]) for b in data])[0]) == whole


def test_cr_at_chunk_end_then_lf_is_one_terminator() -> None:
    events, _ = decode([b"data: x\r", b"\n\r", b"\n"])
    assert simple(events) == [(None, "x", None)]
    # A CR ending a chunk followed by a blank-line CR is two terminators.
    events, _ = decode([b"data: x\r", b"\rdata: y\r\r"])
    assert simple(events) == [(None, "x", None), (None, "y", None)]


def test_bom_stripped_even_when_split() -> None:
    data = b"\xef\xbb\xbfdata: x\n\n"
    for chunks in ([data], [data[:1], data[1:2], data[2:]], [bytes([b]) for b in data]):
        events, decoder = decode(chunks)
        assert simple(events) == [(None, "x", None)]
        assert decoder.bom_stripped
    # Only one BOM is stripped; a second belongs to the field name.
    events, _ = decode([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"])
    assert events == []


def test_utf8_split_across_chunks_and_unicode_separators_kept() -> None:
    text = "data: caf\u00e9 \u2028 \u0085 \U0001f600\n\n".encode()
    events = decode([bytes([b]) for b in text])[0]
    assert events[0].data == "caf\u00e9 \u2028 \u0085 \U0001f600"


def test_field_rules() -> None:
    data = (
        b": a comment\n"
        b"data\n"  # no colon: a data field with an empty value
        b"data:no space\n"
        b"data:  two spaces\n"
        b"unknown: ignored\n"
        b"id: 7\n"
        b"retry: 1500\n"
        b"\n"
        b"event: only a name\n\n"  # no data: not dispatched
        b"id: a\x00b\ndata: z\n\n"  # an id with NUL is ignored
    )
    events, decoder = decode([data])
    assert simple(events) == [(None, "\nno space\n two spaces", "7"), (None, "z", "7")]
    assert decoder.retry == 1500


def test_unfinished_event_is_not_dispatched_but_kept() -> None:
    events, decoder = decode([b"data: a\n\nevent: message_stop\ndata: {\"type\":"])
    assert simple(events) == [(None, "a", None)]
    assert decoder.unfinished == b'event: message_stop\ndata: {"type":'


def test_bound_on_unfinished_event() -> None:
    with pytest.raises(BufferLimitError) as info:
        decode([b"data: " + b"x" * 100], max_event_bytes=50)
    assert info.value.limit == 50
    with pytest.raises(BufferLimitError):
        decode([b"data: x\n"] * 20, max_event_bytes=50)
    with pytest.raises(BufferLimitError):  # comments count too
        decode([b": keepalive\n"] * 20, max_event_bytes=50)
    with pytest.raises(BufferLimitError):  # a complete event larger than the bound
        decode([b"data: " + b"x" * 100 + b"\n\n"], max_event_bytes=50)
    # Many small complete events never trip it.
    events, _ = decode([b"data: x\n\n"] * 100, max_event_bytes=50)
    assert len(events) == 100


def test_split_data_line_is_recorded_as_stray() -> None:
    events, _ = decode([b'data: {"text": "a\nb"}\n\n'])
    assert events[0].raw_data == b'{"text": "a'
    assert events[0].stray_lines == ((True, b'{"text": "a'), (False, b'b"}'))


# -- properties ---------------------------------------------------------------------------------------------

_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
)
_field_line = st.one_of(
    st.tuples(st.just("data"), _value),
    st.tuples(st.just("event"), _value),
    st.tuples(st.just("id"), _value.filter(lambda v: "\x00" not in v)),
    st.tuples(st.just(""), _value),  # a comment
    st.tuples(st.just("retry"), st.integers(0, 10_000).map(str)),
)
_event_block = st.tuples(st.lists(_field_line, max_size=5), st.tuples(st.just("data"), _value))


def serialise(blocks: list, terminators: list[str]) -> str:
    lines: list[str] = []
    for fields, data in blocks:
        for name, value in [*fields, data]:
            lines.append(f":{value}" if name == "" else f"{name}:{value}" if value[:1] != " " else f"{name}: {value}")
        lines.append("")
    out = []
    for i, line in enumerate(lines):
        out.append(line + terminators[i % len(terminators)])
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(_event_block, max_size=8),
    terminators=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=4),
    points=st.lists(st.integers(min_value=0), max_size=12),
    bom=st.booleans(),
)
def test_matches_httpx_sse_however_split(blocks: list, terminators: list[str], points: list[int], bom: bool) -> None:
    text = serialise(blocks, terminators)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    whole = decode([data])[0]
    # httpx-sse names unnamed events "message", as the WHATWG dispatch step does.
    assert [(name or "message", d, i or None) for name, d, i in simple(whole)] == reference(text)
    assert decode(split_at(data, points))[0] == whole
    assert decode([bytes([b]) for b in data])[0] == whole


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), points=st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_split_invariance(data: bytes, points: list[int]) -> None:
    whole, decoder = decode([data])
    split, split_decoder = decode(split_at(data, points))
    assert split == whole
    assert split_decoder.unfinished == decoder.unfinished


# -- the fast entry -----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.one_of(st.none(), st.sampled_from(["content_block_delta", "ping", "x y", ""])), max_size=6),
    values=st.lists(_value, min_size=6, max_size=6),
    odd=st.sampled_from([b"", b"id: 7\n", b": comment\n", b"data: second line\n"]),
)
def test_whole_events_is_feed_or_none(names: list[str | None], values: list[str], odd: bytes) -> None:
    chunk = b"".join(
        (f"event: {name}\n".encode() if name is not None else b"") + b"data: " + value.encode() + b"\n\n"
        for name, value in zip(names, values, strict=False)
    )
    chunk = chunk + (odd + b"data: z\n\n" if odd else b"")
    fast, slow = SSEDecoder(), SSEDecoder()
    for decoder in (fast, slow):
        decoder.feed(b"data: first\n\n")
    before = (fast.position, fast.dispatched)
    whole = fast.whole_events(chunk)
    reference = slow.feed(chunk)
    if whole is None:  # not the ordinary form (an odd block, or nothing): nothing consumed, feed() decodes it
        assert odd or not chunk
        assert (fast.position, fast.dispatched) == before
        assert fast.feed(chunk) == reference
    else:
        assert whole == [(e.event, e.raw_data, e.offset, e.ordinal) for e in reference]
        assert (fast.position, fast.dispatched) == (slow.position, slow.dispatched)
