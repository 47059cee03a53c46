"""MessageParser's one framing interface: framing="auto" reads every fixture and corpus stream, as SSE and
converted to AWS event-stream, exactly as the explicit framing does (events, repairs with their offsets,
message, error), whole, byte by byte and at random splits; the SSE decoder's spans tile every stream.

"auto" decides from the first 12 bytes and then reads with the very framing the explicit option makes, so on
the corpus (3 MB as SSE, 5 MB as event-stream) the byte-by-byte reading covers the bytes the decision is made
on and the rest is split at random; the explicit framings' own byte-by-byte reading of the corpus is
test_corpus.py's (SSE). Fixtures are read byte by byte whole.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BASIC_SSE, FIXTURE_NAMES, fixture_bytes
from mendstream import MessageParser, UsageError
from mendstream.core.bedrock import sse_to_event_stream
from mendstream.core.framing import FramingName
from mendstream.core.sse import SSEDecoder
from splitting import feed_all, split_at

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.sse")) if CORPUS.is_dir() else []
FRAMINGS: dict[str, FramingName] = {"sse": "sse", "event-stream": "event-stream"}


def body_of(name: str, framing: str) -> bytes:
    sse = fixture_bytes(name)
    return sse if framing == "sse" else sse_to_event_stream(sse)


def outcome(chunks: list[bytes], framing: FramingName) -> dict[str, Any]:
    parser = MessageParser(framing=framing)
    events, error = feed_all(parser, chunks)
    return {
        "events": [e.to_dict() for e in events],
        "repairs": parser.repairs,  # every field: kind, detail, offset, event_index, index, raw
        "message": parser.message,
        "error": None if error is None else (type(error).__name__, str(error), error.offset, error.snapshot),
        "complete": parser.complete,
        "framing": parser.framing,
    }


def assert_auto_reads_as(chunks: list[bytes], framing: FramingName, reference: dict[str, Any]) -> None:
    auto = outcome(chunks, "auto")
    if len(b"".join(chunks)) < 12:  # too short to be an event-stream prelude: SSE, whatever it is
        assert auto["framing"] == "sse"
        return
    assert auto == reference


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_auto_reads_every_fixture_as_the_explicit_framing(name: str, framing: FramingName) -> None:
    body = body_of(name, framing)
    reference = outcome([body], framing)
    assert reference["framing"] == framing
    assert_auto_reads_as([body], framing, reference)
    assert_auto_reads_as([body[i : i + 1] for i in range(len(body))], framing, reference)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(FIXTURE_NAMES),
    framing=st.sampled_from(list(FRAMINGS)),
    points=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
)
def test_auto_reads_fixtures_at_random_splits(name: str, framing: FramingName, points: list[int]) -> None:
    body = body_of(name, framing)
    assert_auto_reads_as(split_at(body, points), framing, outcome([body], framing))


@pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus is absent (it is not part of the repository)")
@pytest.mark.parametrize("framing", FRAMINGS)
def test_auto_reads_every_corpus_stream_as_the_explicit_framing(framing: FramingName) -> None:
    for path in CORPUS_FILES:
        sse = path.read_bytes()
        body = sse if framing == "sse" else sse_to_event_stream(sse)
        reference = outcome([body], framing)
        assert_auto_reads_as([body], framing, reference)
        head = [body[i : i + 1] for i in range(min(64, len(body)))]
        rng = random.Random(path.name)
        rest = split_at(body[64:], [rng.randrange(len(body) + 1) for _ in range(20)])
        assert_auto_reads_as(head + rest, framing, reference)
        assert_auto_reads_as(split_at(body, [rng.randrange(len(body) + 1) for _ in range(40)]), framing, reference)


def test_auto_decides_once_and_fresh_parsers_decide_again() -> None:
    parser = MessageParser(framing="auto")
    assert parser.framing == "auto"
    body = sse_to_event_stream(BASIC_SSE)
    assert parser.feed(body[:11]) == [] and parser.framing == "auto"  # one byte short of a prelude
    parser.feed(body[11:])
    parser.end()
    assert parser.framing == "event-stream" and parser.complete
    again = parser.fresh()
    assert again.framing == "auto"
    again.feed(BASIC_SSE)
    assert again.framing == "sse"


def test_a_body_too_short_for_a_prelude_is_read_as_sse() -> None:
    for body in (b"data: {}\n\n", b"", b"\xef\xbb\xbfdata:", b"\xef\xbb\xbf", b"data: {\"type\": 1}"):
        reference = outcome([body], "sse")
        assert outcome([body], "auto") == reference, body
        assert outcome([body[i : i + 1] for i in range(len(body))], "auto") == reference, body
    assert [r.kind for r in outcome([b"\xef\xbb\xbf"], "auto")["repairs"]] == ["bom"]
    assert len(outcome([b"data: {}\n\n"], "auto")["events"]) == 1  # an unnamed event, dispatched


def test_max_message_bytes_holds_while_auto_decides() -> None:
    from mendstream.errors import MessageTooLargeError

    parser = MessageParser(framing="auto", max_message_bytes=5)
    with pytest.raises(MessageTooLargeError) as info:
        parser.feed(b"data: {")  # 7 bytes, held until the 12th: the bound is checked all the same
    assert info.value.limit == 5 and parser.bytes_fed == 7 and parser.error is info.value


def test_framing_is_checked() -> None:
    with pytest.raises(UsageError, match="'sse', 'event-stream', 'auto'"):
        MessageParser(framing="SSE")  # type: ignore[arg-type]


# -- the SSE decoder's spans on real streams ---------------------------------------------------------------


def spans(chunks: list[bytes]) -> tuple[list[tuple[int, int]], int]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    decoder.end()
    return [(e.start, e.end) for e in events], decoder.boundary


@pytest.mark.parametrize(
    "path",
    [*(Path(fixture) for fixture in sorted((Path(__file__).parents[1] / "fixtures").glob("*.sse"))), *CORPUS_FILES],
    ids=lambda p: p.stem,
)
def test_spans_tile_every_stream(path: Path) -> None:
    data = path.read_bytes()
    whole, boundary = spans([data])
    assert b"".join(data[a:b] for a, b in whole) == data[:boundary]
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(whole)) and (not whole or whole[0][0] == 0)
    assert SSEDecoder().feed(data[boundary:]) == []  # what follows the last event (comments, a cut one)
    rng = random.Random(path.name)
    split = spans(split_at(data, [rng.randrange(len(data) + 1) for _ in range(30)]))
    if b"\r\n" not in data:  # (CRLF: a cut between CR and LF moves one LF to the next span; see test_sse)
        assert split == (whole, boundary)
