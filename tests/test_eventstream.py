"""The AWS event-stream decoder: every header type round-trips, frames decode as botocore decodes them, the
result is the same whole, byte by byte and at hypothesis-chosen splits, every corruption and cut raises
EventStreamError with what was received (never another exception, fuzzed), oversize frames are refused from
their prelude, and the work is linear (counted: bytes hashed by CRC32)."""

from __future__ import annotations

import importlib.util
import struct
import sys
import types
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mendstream.core import eventstream
from mendstream.core.eventstream import (
    EventStreamDecoder,
    EventStreamMessage,
    HeaderType,
    encode_message,
    looks_like_event_stream,
)
from mendstream.errors import BufferLimitError, EventStreamError, EventStreamLimitError, UsageError
from splitting import split_at


def _load_fuzz_target() -> types.ModuleType:
    # The fuzz target lives with the parser's in fuzz/ (run there under atheris); the suite runs its check.
    path = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_eventstream.py"
    spec = importlib.util.spec_from_file_location("fuzz_eventstream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_eventstream"] = module
    spec.loader.exec_module(module)
    return module


_fuzz = _load_fuzz_target()
SEED, fuzz_one = _fuzz.SEED, _fuzz.fuzz_one


VALUES: dict[HeaderType, Any] = {
    HeaderType.BOOL_TRUE: st.just(True),
    HeaderType.BOOL_FALSE: st.just(False),
    HeaderType.BYTE: st.integers(-(2**7), 2**7 - 1),
    HeaderType.SHORT: st.integers(-(2**15), 2**15 - 1),
    HeaderType.INTEGER: st.integers(-(2**31), 2**31 - 1),
    HeaderType.LONG: st.integers(-(2**63), 2**63 - 1),
    HeaderType.BYTES: st.binary(max_size=300),
    HeaderType.STRING: st.text(max_size=100),
    HeaderType.TIMESTAMP: st.integers(-(2**63), 2**63 - 1),
    HeaderType.UUID: st.uuids(),
}
header = st.sampled_from(list(HeaderType)).flatmap(lambda kind: VALUES[kind].map(lambda v: (kind, v)))
headers_st = st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256), header, max_size=6)
frame_st = st.tuples(st.binary(max_size=600), headers_st)


def decode_all(chunks: list[bytes], **options: Any) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder(**options)
    out: list[EventStreamMessage] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    out += decoder.end()
    return out


def test_every_header_type_round_trips() -> None:
    specs = {
        "t": True, "f": False, "b": (HeaderType.BYTE, -128), "s": (HeaderType.SHORT, 32767),
        "i": (HeaderType.INTEGER, -(2**31)), "l": 2**63 - 1, "y": b"\x00\xff", "str": "héllo",
        "ts": (HeaderType.TIMESTAMP, 1_700_000_000_123), "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    frame = encode_message(b"payload", specs)
    (message,) = decode_all([frame])
    assert message.payload == b"payload" and message.offset == 0 and message.size == len(frame)
    assert message.headers == {
        "t": True, "f": False, "b": -128, "s": 32767, "i": -(2**31), "l": 2**63 - 1, "y": b"\x00\xff",
        "str": "héllo", "ts": 1_700_000_000_123, "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    assert message.header("str") == "héllo" and message.header("b") is None


@settings(max_examples=150, deadline=None)
@given(st.lists(frame_st, min_size=1, max_size=5), st.lists(st.integers(min_value=0), max_size=15))
def test_round_trip_split_invariance_and_botocore_agree(frames: list[tuple[bytes, dict[str, Any]]], points: list[int]) -> None:
    from botocore.eventstream import EventStreamBuffer

    body = b"".join(encode_message(payload, hdrs) for payload, hdrs in frames)
    whole = decode_all([body])
    assert [(m.payload, m.headers) for m in whole] == [(p, {k: v for k, (_, v) in h.items()}) for p, h in frames]
    assert decode_all(split_at(body, points)) == whole
    buffer = EventStreamBuffer()
    buffer.add_data(body)
    theirs = [(m.payload, m.headers) for m in buffer]
    ours = [(m.payload, {k: v.bytes if isinstance(v, uuid.UUID) else v for k, v in m.headers.items()}) for m in whole]
    assert ours == theirs


def test_byte_by_byte_equals_whole() -> None:
    assert decode_all([SEED[i : i + 1] for i in range(len(SEED))]) == decode_all([SEED])


def test_every_bit_flip_is_an_event_stream_error() -> None:
    frame = encode_message(b'{"bytes":"eyJ0eXBlIjoicGluZyJ9"}', {":message-type": "event", ":event-type": "chunk"})
    for position in range(len(frame)):
        for bit in (0x01, 0x80):
            corrupt = bytearray(frame)
            corrupt[position] ^= bit
            with pytest.raises(EventStreamError) as info:
                decode_all([bytes(corrupt)])
            assert info.value.offset == 0
            assert "CRC" in str(info.value) or "lengths" in str(info.value) or "max_frame_bytes" in str(info.value)


def test_crc_error_keeps_the_frame_and_the_frames_before_it() -> None:
    good = encode_message(b"one", {"a": "b"})
    bad = bytearray(encode_message(b"two", {"a": "b"}))
    bad[14] ^= 0xFF
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError, match="message CRC mismatch") as info:
        decoder.feed(good + bytes(bad))
    assert info.value.raw == bytes(bad) and info.value.offset == len(good)
    assert [m.payload for m in info.value.events] == [b"one"]
    with pytest.raises(EventStreamError) as again:  # sticky
        decoder.feed(good)
    assert again.value is info.value


def test_cut_at_every_point_raises_at_end_with_what_was_received() -> None:
    first = encode_message(b"first", {})
    second = encode_message(b"second" * 10, {"h": "v"})
    body = first + second
    for cut in range(len(first) + 1, len(body)):
        decoder = EventStreamDecoder()
        assert [m.payload for m in decoder.feed(body[:cut])] == [b"first"]
        with pytest.raises(EventStreamError, match="ended inside") as info:
            decoder.end()
        assert info.value.raw == body[len(first) : cut] and info.value.offset == len(first)


def prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize(("total", "headers_len"), [(0, 0), (15, 0), (16, 1), (100, 85), (2**32 - 1, 2**32 - 1)])
def test_impossible_lengths(total: int, headers_len: int) -> None:
    with pytest.raises(EventStreamError, match="impossible") as info:
        EventStreamDecoder().feed(prelude(total, headers_len) + b"x" * 200)
    assert info.value.raw == prelude(total, headers_len)


def test_oversize_frame_is_refused_from_its_prelude() -> None:
    frame = encode_message(b"x" * 500, {})
    decoder = EventStreamDecoder(max_frame_bytes=200)
    for i in range(11):
        assert decoder.feed(frame[i : i + 1]) == []
    with pytest.raises(EventStreamLimitError) as info:
        decoder.feed(frame[11:12])
    assert isinstance(info.value, BufferLimitError) and isinstance(info.value, EventStreamError)
    assert info.value.limit == 200 and info.value.raw == frame[:12]
    assert decoder.buffered <= 12
    assert decode_all([frame], max_frame_bytes=len(frame))[0].payload == b"x" * 500


def raw_frame(headers: bytes, payload: bytes = b"") -> bytes:
    """A frame with valid CRCs around hand-made header bytes."""
    total = 12 + len(headers) + len(payload) + 4
    head = prelude(total, len(headers)) + headers + payload
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        (b"\x05ab", "name runs past"),
        (b"\x01a", "name runs past"),
        (b"\x01a\x0a", "unknown header value type 10"),
        (b"\x01a\x07\x00\x05abc", "runs past"),
        (b"\x01a\x07\x00", "length of 'a' runs past"),
        (b"\x01a\x07\x00\x02\xff\xfe", "not UTF-8"),
        (b"\x02\xff\xfe\x00", "name is not UTF-8"),
        (b"\x01a\x04\x00\x00", "runs past"),
        (b"\x01a\x09" + b"\x00" * 15, "UUID"),
    ],
)
def test_malformed_headers(headers: bytes, what: str) -> None:
    frame = raw_frame(headers, b"payload")
    with pytest.raises(EventStreamError, match=what) as info:
        EventStreamDecoder().feed(frame)
    assert info.value.raw == frame and info.value.offset == 0


def test_usage_errors() -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(UsageError):
        decoder.feed("text")  # type: ignore[arg-type]
    decoder.end()
    with pytest.raises(UsageError):
        decoder.feed(b"")
    with pytest.raises(UsageError):
        EventStreamDecoder(max_frame_bytes=15)
    with pytest.raises(UsageError):
        encode_message(b"", {"x" * 256: "v"})
    with pytest.raises(UsageError):
        encode_message(b"", {"x": 1.5})  # type: ignore[dict-item]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    frame = encode_message(b"abc", {"k": "v"})
    assert decode_all([bytearray(frame[:7]), memoryview(frame)[7:]]) == decode_all([frame])


def test_sniffing() -> None:
    assert looks_like_event_stream(SEED[:12])
    assert not looks_like_event_stream(b"event: message_start\n")
    assert not looks_like_event_stream(SEED[:11])
    assert not looks_like_event_stream(prelude(10, 0))


def test_work_is_linear_in_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """CRC32 is where a decoder that re-scans its buffer would spend its time: count the bytes it hashes."""
    hashed = [0]

    def counting_crc32(data: Any, value: int = 0) -> int:
        hashed[0] += len(data)
        return zlib.crc32(data, value)

    monkeypatch.setattr(eventstream, "zlib", types.SimpleNamespace(crc32=counting_crc32))
    monkeypatch.setattr(eventstream, "_crc32", counting_crc32)  # the decoder's hot loop binds it once
    big = encode_message(b"y" * 50_000, {":message-type": "event"})
    body = big * 3 + SEED
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))], split_at(body, list(range(0, len(body), 977)))):
        hashed[0] = 0
        decode_all(chunks)
        assert len(body) - len(SEED) < hashed[0] <= len(body) + 8 * 100  # each frame once, plus its prelude


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_target_random_and_mutated_bytes(data: bytes) -> None:
    fuzz_one(data)
    fuzz_one(b"\x80" + data)
    fuzz_one(bytes([0x81 | (len(data) & 0x3F)]) + data)


def big_header_frame(i: int, payload: bytes = b"{}", *, kind: str = "event") -> bytes:
    """A frame whose header block is about 256 KiB and differs from every other frame's (issue 18)."""
    headers: dict[str, Any] = {":message-type": kind, ":event-type": "chunk", ":content-type": "application/json"}
    for h in range(4):
        headers[f"x-pad-{h}"] = (HeaderType.BYTES, bytes([i % 256, h]) * 32_000)
    return encode_message(payload, headers)


def test_large_header_blocks_are_not_remembered() -> None:
    """64 frames with distinct 256 KiB header blocks: the decoder must not keep them (it used to remember up
    to 64 header blocks of any size, 2 GB with 16 MB blocks). Measured with tracemalloc while the frames are
    decoded and dropped one at a time, as a reader does."""
    import gc
    import tracemalloc

    frames = [big_header_frame(i) for i in range(64)]
    frame_size = len(frames[0])
    decoder = EventStreamDecoder(share_headers=True)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            for message in decoder.feed(frame):
                assert len(message.headers) == 7
            del message
        retained = tracemalloc.get_traced_memory()[0] - base
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert retained < 64 * 1024, retained  # nothing of the big blocks is kept between frames
    assert peak < 4 * frame_size, (peak, frame_size)  # about one frame (its block, decoded headers, payload)
    # Small header blocks are still remembered and shared (what Bedrock sends: the hot path relies on it).
    small = EventStreamDecoder(share_headers=True)
    one, two = small.feed(encode_message(b"a", {":message-type": "event"}) * 2)
    assert one.headers is two.headers and small.header_block(one.headers) is not None


def test_bedrock_parser_reads_chunk_frames_with_large_header_blocks() -> None:
    """A header block the decoder does not remember leaves the Bedrock parser's hot path (which matches
    frames by their remembered header block) off: every chunk frame is still read, by the decoder, and a
    header-less frame after them is not taken for a chunk."""
    import base64
    import json

    from conftest import BASIC_SSE
    from mendstream.core.bedrock import BedrockParser, chunk_frame

    events = [block.split(b"data: ", 1)[1] for block in BASIC_SSE.split(b"\n\n") if b"data: " in block]
    body = b"".join(
        big_header_frame(i, json.dumps({"bytes": base64.b64encode(e).decode()}).encode())
        for i, e in enumerate(events)
    )
    reference = BedrockParser()
    reference.feed(b"".join(chunk_frame(e) for e in events))
    reference.end()
    for chunks in ([body], split_at(body, list(range(0, len(body), 100_003)))):
        parser = BedrockParser()
        for chunk in chunks:
            parser.feed(chunk)
        parser.feed(encode_message(b"{}", {}))  # no headers: skipped, never read as a chunk
        parser.end()
        assert parser.message == reference.message and parser.message["content"]
