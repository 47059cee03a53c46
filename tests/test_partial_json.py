# Tests for ToolInputParser: snapshots against jiter on every prefix, final values against
# json.loads(strict=False), identical results however the text is split, independent snapshots, the
# tolerated faults, several top-level values, and a fuzzer that allows no exception but PartialJSONError.
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
from typing import Any

import jiter
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mendstream.core.partial_json import MAX_NESTING_DEPTH, MISSING, PartialJSONError, ToolInputParser
from workcount import count_work

MODES = ("on", "trailing-strings")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------
# Helpers


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (1 vs 1.0 vs True), float signs and NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def jiter_snapshot(prefix: str, mode: str) -> Any:
    try:
        return jiter.from_json(prefix.encode(), partial_mode=True if mode == "on" else "trailing-strings")
    except ValueError:
        return MISSING


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def feed_all(fragments: list[str], mode: str = "on") -> ToolInputParser:
    parser = ToolInputParser(partial_mode=mode)  # type: ignore[arg-type]
    for fragment in fragments:
        parser.feed(fragment)
    return parser


def outcome(parser: ToolInputParser) -> tuple[str, Any]:
    try:
        return ("ok", parser.finish())
    except PartialJSONError as exc:
        return ("error", (exc.reason, exc.position))


# ---------------------------------------------------------------------------------------------------
# Strategies producing JSON text directly, so that escapes, number spellings and whitespace vary


WS = st.sampled_from(["", "", "", " ", "  ", "\n", "\t", "\r\n", "\n    "])
SHORT_ESCAPES = ['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]
PLAIN_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters='"\\' + "".join(map(chr, range(0x20))))


def _u_escape(code: int, upper: bool) -> str:
    text = f"\\u{code:04x}"
    return text.upper().replace("\\U", "\\u") if upper else text


def _astral_pair(char: str, upper: bool) -> str:
    code = ord(char) - 0x10000
    return _u_escape(0xD800 + (code >> 10), upper) + _u_escape(0xDC00 + (code & 0x3FF), upper)


STRING_PIECES = st.one_of(
    PLAIN_CHARS,
    st.text(alphabet=PLAIN_CHARS, min_size=1, max_size=20),
    st.sampled_from(SHORT_ESCAPES),
    st.builds(
        _u_escape,
        st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]).map(ord),
        st.booleans(),
    ),
    st.builds(_astral_pair, st.characters(min_codepoint=0x10000), st.booleans()),
)
STRING = st.lists(STRING_PIECES, max_size=8).map(lambda pieces: '"' + "".join(pieces) + '"')
NUMBER = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
LITERAL = st.sampled_from(["true", "false", "null"])
SCALAR = st.one_of(STRING, NUMBER, LITERAL)


def _array(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    item = st.tuples(WS, children, WS).map("".join)
    return st.tuples(WS, st.lists(item, max_size=5)).map(lambda t: "[" + (",".join(t[1]) if t[1] else t[0]) + "]")


def _object(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    member = st.tuples(WS, STRING, WS, st.just(":"), WS, children, WS).map("".join)
    return st.tuples(WS, st.lists(member, max_size=5)).map(lambda t: "{" + (",".join(t[1]) if t[1] else t[0]) + "}")


VALUE = st.recursive(SCALAR, lambda c: st.one_of(_array(c), _object(c)), max_leaves=16)
CONTAINER = st.one_of(_object(VALUE), _array(VALUE))
DOC = st.tuples(WS, st.one_of(CONTAINER, CONTAINER, CONTAINER, VALUE), WS).map("".join)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


# ---------------------------------------------------------------------------------------------------
# Snapshots against jiter


@FAST
@given(doc=DOC, mode=st.sampled_from(MODES))
def test_every_prefix_matches_jiter_char_by_char(doc: str, mode: str) -> None:
    parser = ToolInputParser(partial_mode=mode)  # type: ignore[arg-type]
    kept: list[tuple[Any, Any]] = []
    for k, char in enumerate(doc, 1):
        parser.feed(char)
        got = parser.snapshot()
        expected = jiter_snapshot(doc[:k], mode)
        assert same(got, expected) or (expected is MISSING and got is MISSING), (doc[:k], got, expected)
        kept.append((got, copy.deepcopy(got)))
    assert parser.failed is None
    # Snapshots are independent: nothing fed later changed one already handed out.
    for got, frozen in kept:
        assert same(got, frozen) or got is MISSING


@FAST
@given(doc=DOC, cuts=CUTS, mode=st.sampled_from(MODES))
def test_prefixes_at_random_splits_match_jiter(doc: str, cuts: list[int], mode: str) -> None:
    parser = ToolInputParser(partial_mode=mode)  # type: ignore[arg-type]
    seen = ""
    for fragment in split_at(doc, cuts):
        parser.feed(fragment)
        seen += fragment
        expected = jiter_snapshot(seen, mode)
        got = parser.snapshot()
        assert same(got, expected) or (expected is MISSING and got is MISSING), (seen, got, expected)
        assert parser.snapshot() is got  # cached until the next feed


# ---------------------------------------------------------------------------------------------------
# Final values against json.loads


@FAST
@given(doc=DOC, cuts=CUTS)
def test_final_value_matches_json_loads_however_split(doc: str, cuts: list[int]) -> None:
    expected = json.loads(doc, strict=False)
    for fragments in ([doc], list(doc), split_at(doc, cuts)):
        parser = feed_all(fragments)
        assert same(parser.finish(), expected)
        assert len(parser.values) == 1
        assert parser.failed is None
        assert parser.repairs == []


@SLOW
@given(doc=DOC, cuts=CUTS)
def test_final_snapshot_is_the_final_value(doc: str, cuts: list[int]) -> None:
    for mode in MODES:
        parser = feed_all(split_at(doc, cuts), mode)
        final = parser.finish()
        assert same(parser.snapshot(), final)


# ---------------------------------------------------------------------------------------------------
# Tolerated faults: raw control characters and invalid escapes

CONTROL = st.characters(max_codepoint=0x1F)
# (raw text, decoded text, repair kind or None)
TOLERANT_PIECES = st.one_of(
    PLAIN_CHARS.map(lambda c: (c, c, None)),
    CONTROL.map(lambda c: (c, c, "control_character")),
    st.sampled_from(SHORT_ESCAPES).map(lambda e: (e, json.loads(f'"{e}"'), None)),
    st.sampled_from(list("HdUqxa0 '\n\t")).map(lambda c: ("\\" + c, "\\" + c, "invalid_escape")),
    st.sampled_from(["\\u", "\\u1", "\\u12", "\\u12a"]).map(lambda e: (e + "z", e + "z", "invalid_escape")),
    st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\uDFFF"]).map(
        lambda e: (e + "z", chr(int(e[2:], 16)) + "z", None)
    ),
)
TOLERANT_STRING = st.lists(TOLERANT_PIECES, max_size=10)


def _join_pieces(pieces: list[tuple[str, str, str | None]]) -> tuple[str, str]:
    return '"' + "".join(p[0] for p in pieces) + '"', "".join(p[1] for p in pieces)


@FAST
@given(key=TOLERANT_STRING, value=TOLERANT_STRING, item=TOLERANT_STRING, cuts=CUTS)
def test_control_characters_and_invalid_escapes_are_kept(
    key: list[tuple[str, str, str | None]],
    value: list[tuple[str, str, str | None]],
    item: list[tuple[str, str, str | None]],
    cuts: list[int],
) -> None:
    (key_raw, key_text), (value_raw, value_text), (item_raw, item_text) = map(_join_pieces, (key, value, item))
    doc = "{" + key_raw + ": " + value_raw + ', "list": [1, ' + item_raw + "]}"
    expected = {key_text: value_text, "list": [1, item_text]}
    if key_text == "list":
        expected = {"list": [1, item_text]}
    kinds = {p[2] for p in key + value + item} - {None}

    results = []
    for fragments in ([doc], list(doc), split_at(doc, cuts)):
        parser = feed_all(fragments)
        assert same(parser.finish(), expected)
        assert {kind for kind, _, _ in parser.repairs} == kinds
        for kind, position, _detail in parser.repairs:
            assert doc[position] == "\\" if kind == "invalid_escape" else ord(doc[position]) < 0x20
        results.append(parser.repairs)
    assert results[0] == results[1] == results[2]
    if "invalid_escape" not in kinds:
        assert same(json.loads(doc, strict=False), expected)
    else:
        with pytest.raises(ValueError):
            json.loads(doc, strict=False)


@FAST
@given(pieces=TOLERANT_STRING, cuts=CUTS)
def test_tolerant_snapshots_are_the_same_however_split(
    pieces: list[tuple[str, str, str | None]], cuts: list[int]
) -> None:
    raw, _ = _join_pieces(pieces)
    doc = '{"a": [' + raw + ", " + raw + "]}"
    split = ToolInputParser(partial_mode="trailing-strings")
    seen = ""
    for fragment in split_at(doc, cuts):
        split.feed(fragment)
        seen += fragment
        whole = ToolInputParser(partial_mode="trailing-strings")
        whole.feed(seen)
        assert same(split.snapshot(), whole.snapshot()), seen


@pytest.mark.parametrize(
    ("doc", "expected", "kinds"),
    [
        ('{"path": "C:\\Users\\Hi"}', {"path": "C:\\Users\\Hi"}, ["invalid_escape", "invalid_escape"]),
        ('{"re": "\\d+\\s"}', {"re": "\\d+\\s"}, ["invalid_escape", "invalid_escape"]),
        ('{"u": "\\u12"}', {"u": "\\u12"}, ["invalid_escape"]),
        ('{"u": "\\uzzzz"}', {"u": "\\uzzzz"}, ["invalid_escape"]),
        ('{"u": "\\u"}', {"u": "\\u"}, ["invalid_escape"]),
        ('{"u": "\\U0001F600"}', {"u": "\\U0001F600"}, ["invalid_escape"]),
        ('{"t": "a\tb\nc"}', {"t": "a\tb\nc"}, ["control_character", "control_character"]),
        ('{"t": "\x00\x1b\x08"}', {"t": "\x00\x1b\x08"}, ["control_character"]),
        ('{"s": "\\ud800"}', {"s": "\ud800"}, []),
        ('{"s": "\\udc00\\ud800x"}', {"s": "\udc00\ud800x"}, []),
        ('{"s": "\\ud83d\\ude00"}', {"s": "\U0001f600"}, []),
        ('{"s": "\\ud83d\\u0041"}', {"s": "\ud83dA"}, []),
        ('{"s": "\\ud83d\\ud83d\\ude00"}', {"s": "\ud83d\U0001f600"}, []),
        ('{"s": "\\ud83d\\n"}', {"s": "\ud83d\n"}, []),
        ('{"s": "\\ud83d\\H"}', {"s": "\ud83d\\H"}, ["invalid_escape"]),
        ('{"s": "\\ud83d\\u12"}', {"s": "\ud83d\\u12"}, ["invalid_escape"]),
    ],
)
def test_tolerated_faults(doc: str, expected: Any, kinds: list[str]) -> None:
    for fragments in ([doc], list(doc)):
        parser = feed_all(fragments)
        assert same(parser.finish(), expected)
        assert [kind for kind, _, _ in parser.repairs] == kinds
    if "invalid_escape" not in kinds:
        assert same(json.loads(doc, strict=False), expected)


def test_repair_details() -> None:
    parser = feed_all(['{"a": "x\\', "H\t\t", 'y"}'])
    assert parser.finish() == {"a": "x\\H\t\ty"}
    assert parser.repairs == [("invalid_escape", 8, "\\H"), ("control_character", 10, "\\t\\t")]


# ---------------------------------------------------------------------------------------------------
# Several top-level values


@FAST
@given(docs=st.lists(DOC, min_size=2, max_size=4), cuts=CUTS, mode=st.sampled_from(MODES))
def test_several_top_level_values(docs: list[str], cuts: list[int], mode: str) -> None:
    text = " ".join(docs)
    expected = [json.loads(d, strict=False) for d in docs]
    parser = ToolInputParser(partial_mode=mode)  # type: ignore[arg-type]
    seen = ""
    for fragment in split_at(text, cuts):
        parser.feed(fragment)
        seen += fragment
        jiter_value = jiter_snapshot(seen, mode)
        if jiter_value is not MISSING:
            assert same(parser.snapshot(), jiter_value), seen
    with pytest.raises(PartialJSONError) as info:
        parser.finish()
    assert info.value.reason == "multiple values"
    assert same(parser.values, expected)
    assert same(parser.snapshot(), expected[0])


def test_concatenated_objects() -> None:
    parser = ToolInputParser()
    parser.feed('{"a":1}')
    assert parser.values == [{"a": 1}]
    parser.feed("{")
    assert parser.snapshot() == {"a": 1} == jiter.from_json(b'{"a":1}{', partial_mode=True)
    parser.feed('"b":2}')
    assert parser.values == [{"a": 1}, {"b": 2}]
    with pytest.raises(PartialJSONError, match="multiple values"):
        parser.finish()


def test_top_level_number_is_completed_by_finish() -> None:
    parser = feed_all(['{"a":1} 1', "2"])
    assert parser.values == [{"a": 1}]
    with pytest.raises(PartialJSONError, match="multiple values"):
        parser.finish()
    assert parser.values == [{"a": 1}, 12]


# ---------------------------------------------------------------------------------------------------
# Garbage: never any exception but PartialJSONError, and the same outcome however split

JSONISH = st.text(alphabet='{}[]",:0123456789.eE+-tfnrulsaINiy \\u\n\tHd\x00', max_size=60)


def _mutate(doc: str, edits: list[tuple[int, int, str]]) -> str:
    for position, kind, char in edits:
        k = position % (len(doc) + 1)
        if kind == 0:
            doc = doc[:k] + char + doc[k:]
        elif kind == 1:
            doc = doc[:k] + doc[k + 1 :]
        else:
            doc = doc[:k] + char + doc[k + 1 :]
    return doc


MUTATED = st.builds(
    _mutate,
    DOC,
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.sampled_from(list('{}[]",: \\0-.eatn'))),
        min_size=1,
        max_size=3,
    ),
)


@SLOW
@given(text=st.one_of(st.text(), JSONISH, MUTATED), cuts=CUTS, mode=st.sampled_from(MODES))
def test_garbage_never_raises_anything_but_partial_json_error(text: str, cuts: list[int], mode: str) -> None:
    outcomes = []
    for fragments in ([text], list(text), split_at(text, cuts)):
        parser = ToolInputParser(partial_mode=mode)  # type: ignore[arg-type]
        for fragment in fragments:
            parser.feed(fragment)
            parser.snapshot()
            assert isinstance(parser.values, list)
        failed = parser.failed
        outcomes.append((outcome(parser), failed and (failed.reason, failed.position), parser.repairs))
    assert all(same(o, outcomes[0]) for o in outcomes[1:]), outcomes
    try:
        reference = json.loads(text, strict=False)
    except (ValueError, RecursionError):
        return
    # The tolerant parser accepts everything json.loads(strict=False) accepts, with the same value.
    assert outcomes[0][0][0] == "ok"
    assert same(outcomes[0][0][1], reference)


def test_failure_is_sticky_and_keeps_the_last_good_snapshot() -> None:
    parser = ToolInputParser()
    parser.feed('{"a": [1, 2')
    parser.feed("] x")
    assert parser.failed is not None
    assert parser.failed.position == 13
    assert parser.failed.reason == "expected ',' or '}'"
    assert parser.snapshot() == {"a": [1, 2]}
    parser.feed('}, "b": 3}')
    assert parser.snapshot() == {"a": [1, 2]}
    with pytest.raises(PartialJSONError) as info:
        parser.finish()
    assert info.value is parser.failed


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("", "no value", 0),
        ("   \n", "no value", 4),
        ('{"a": 1', "incomplete", 7),
        ('"abc', "incomplete", 4),
        ("tru", "incomplete", 3),
        ("[1,]", "expected a value", 3),
        ('{"a": 1,}', "expected a key string", 8),
        ('{"a" 1}', "expected ':'", 5),
        ("[01]", "invalid number", 1),
        ("[1.]", "invalid number", 1),
        ("-", "invalid number", 0),
        ("[tru]", "expected 'true'", 4),
        ("[nan]", "expected 'null'", 2),
        ("]", "expected a value", 0),
        ("{1: 2}", "expected a key string", 1),
        ('{"a": 1}]', "expected a value", 8),
    ],
)
def test_errors(text: str, reason: str, position: int) -> None:
    for fragments in ([text], list(text)):
        with pytest.raises(PartialJSONError) as info:
            feed_all(fragments).finish()
        assert (info.value.reason, info.value.position) == (reason, position)
        assert isinstance(info.value, ValueError)


def test_depth_limit_and_no_recursion() -> None:
    parser = ToolInputParser(max_depth=3)
    parser.feed("[[[")
    assert parser.failed is None
    parser.feed("[")
    assert parser.failed is not None
    assert parser.failed.reason == "maximum depth exceeded"
    assert parser.snapshot() == [[[]]]

    deep = 100_000
    parser = ToolInputParser(max_depth=deep)
    parser.feed("[" * deep)
    assert isinstance(parser.snapshot(), list)  # built iteratively
    parser.feed("]" * deep)
    assert isinstance(parser.finish(), list)

    parser = ToolInputParser()
    parser.feed('{"a":' * deep)
    assert parser.failed is not None
    assert parser.failed.reason == "maximum depth exceeded"


# ---------------------------------------------------------------------------------------------------
# Hand-written jiter behaviours and edge cases

JITER_CASES = [
    # text, mode "on", mode "trailing-strings"
    ('{"a": 1.', {}, {}),
    ('{"a": 12', {"a": 12}, {"a": 12}),
    ('{"a": "x', {}, {"a": "x"}),
    ('{"a": "x\\u00', {}, {"a": "x"}),
    ('{"a": "x\\', {}, {"a": "x"}),
    ('["a\\ud83d', [], ["a"]),
    ('["a\\ud83d\\ude', [], ["a"]),
    ('["ab', [], ["ab"]),
    ('["', [], [""]),
    ('{"a": [', {"a": []}, {"a": []}),
    ('{"a": {}, ', {"a": {}}, {"a": {}}),
    ('{"a": {}, "b', {"a": {}}, {"a": {}}),
    ('{"a', {}, {}),
    ('{"a"', {}, {}),
    ('{"a": ', {}, {}),
    ('{"a": 1, "a": "x', {"a": 1}, {"a": "x"}),
    ('{"a": 1, "a": [', {"a": []}, {"a": []}),
    ("[1, tr", [1], [1]),
    ("[1, -", [1], [1]),
    ("[1, 1e", [1], [1]),
    ("[1, 1e+", [1], [1]),
    ("[1.5e-3", [0.0015], [0.0015]),
    ("[-0", [0], [0]),
    ("[-0.0", [-0.0], [-0.0]),
    ("[-I", [], []),
    ("[-Infinity", [float("-inf")], [float("-inf")]),
    ("[NaN", [float("nan")], [float("nan")]),
    ("[1E400", [float("inf")], [float("inf")]),
    ("[123456789012345678901234567890", [123456789012345678901234567890] * 1, [123456789012345678901234567890]),
    ("[[[[", [[[[]]]], [[[[]]]]),
    ('{"a": [1, {"b": "c', {"a": [1, {}]}, {"a": [1, {"b": "c"}]}),
    ('{"a":1}{', {"a": 1}, {"a": 1}),
    ('"abc', MISSING, "abc"),
    ('"abc"', "abc", "abc"),
    ("12", 12, 12),
    ("1.", MISSING, MISSING),
    ("tr", MISSING, MISSING),
    ("nul", MISSING, MISSING),
    ("-", MISSING, MISSING),
    ("1e", MISSING, MISSING),
    ("", MISSING, MISSING),
    (" \n", MISSING, MISSING),
    ("true", True, True),
    ("NaN", float("nan"), float("nan")),
]


@pytest.mark.parametrize(("text", "on", "trailing"), JITER_CASES)
def test_jiter_behaviours(text: str, on: Any, trailing: Any) -> None:
    for mode, expected in zip(MODES, (on, trailing), strict=True):
        assert same(jiter_snapshot(text, mode), expected) or expected is MISSING
        for fragments in ([text], list(text)):
            got = feed_all(fragments, mode).snapshot()
            assert got is expected if expected is MISSING else same(got, expected), (mode, fragments)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NaN", float("nan")),
        ("[Infinity, -Infinity, NaN]", [float("inf"), float("-inf"), float("nan")]),
        ("12345678901234567890123456789012345678901234567890", 12345678901234567890123456789012345678901234567890),
        ("1.7976931348623157e309", float("inf")),
        ("0.1e-400", 0.0),
        ("-0", 0),
        (' {"a" : [ ] , "b" : { } } ', {"a": [], "b": {}}),
        ('"\\u00e9\\u00C9\\/"', "éÉ/"),
        ('{"a":1,"a":2}', {"a": 2}),
    ],
)
def test_final_values(text: str, expected: Any) -> None:
    assert same(json.loads(text, strict=False), expected)
    for fragments in ([text], list(text)):
        assert same(feed_all(fragments).finish(), expected)


def test_closed_containers_are_shared_not_copied() -> None:
    parser = ToolInputParser()
    parser.feed('{"big": [' + ",".join(["1"] * 1000) + '], "x": [1, ')
    first = parser.snapshot()
    parser.feed("2, ")
    second = parser.snapshot()
    assert first["big"] is second["big"]  # closed: shared, never copied again
    assert first["x"] == [1] and second["x"] == [1, 2]
    assert first is not second


def test_empty_fragments_keep_the_cached_snapshot() -> None:
    parser = ToolInputParser()
    parser.feed('{"a": [1')
    first = parser.snapshot()
    parser.feed("")
    assert parser.snapshot() is first


def test_values_is_a_copy() -> None:
    parser = feed_all(["[1]"])
    parser.values.append(2)
    assert parser.values == [[1]]


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="partial_mode"):
        ToolInputParser(partial_mode="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth"):
        ToolInputParser(max_depth=0)


def test_missing_is_a_singleton() -> None:
    assert copy.deepcopy(MISSING) is MISSING
    assert copy.copy(MISSING) is MISSING
    assert repr(MISSING) == "MISSING"
    assert type(MISSING)() is MISSING


# ---------------------------------------------------------------------------------------------------
# Nesting limit and linear work on hostile tool input

def test_default_depth_limit_is_the_documented_nesting_limit() -> None:
    parser = ToolInputParser()
    parser.feed("[" * MAX_NESTING_DEPTH + "]" * MAX_NESTING_DEPTH)
    assert parser.failed is None
    parser = ToolInputParser()
    parser.feed("[" * (MAX_NESTING_DEPTH + 1))
    assert parser.failed is not None
    assert (parser.failed.reason, parser.failed.position) == ("maximum depth exceeded", MAX_NESTING_DEPTH)


def _hostile_tool_input(shape: str, n: int) -> str:
    return {
        "escaped quotes, unterminated": '{"a":"' + '\\"' * n,
        "raw control characters": '{"a":"' + "\x01" * n + '"}',
        "controls and text": '{"a":"' + "a\x02" * n + '"}',
        "invalid escapes": '{"a":"' + "\\q" * n + '"}',
        "backslash run": '{"a":"' + "\\" * (2 * n) + '"}',
        "many members": "{" + ",".join(f'"k{i}":[{i},"v"]' for i in range(n)) + "}",
        "open brackets": "[" * n,
        "huge number": "[" + "7" * n + "]",
    }[shape]


@pytest.mark.parametrize(
    "shape",
    ["escaped quotes, unterminated", "raw control characters", "controls and text", "invalid escapes",
     "backslash run", "many members", "open brackets", "huge number"],
)
@pytest.mark.parametrize("fragment", [0, 7])
def test_work_grows_linearly_on_hostile_tool_input(shape: str, fragment: int) -> None:
    # Feeding is what must stay linear. (A snapshot costs O(size of the open containers), as documented,
    # so reading one after every fragment of one huge open object is quadratic, like re-parsing with jiter.)
    def run(text: str) -> None:
        parser = ToolInputParser()
        if fragment:
            for start in range(0, len(text), fragment):
                parser.feed(text[start : start + fragment])
        else:
            parser.feed(text)
        parser.snapshot()
        with contextlib.suppress(PartialJSONError):
            parser.finish()

    small = count_work(lambda: run(_hostile_tool_input(shape, 1_000)))
    large = count_work(lambda: run(_hostile_tool_input(shape, 8_000)))
    assert large.operations <= 12 * max(small.operations, 50), (small, large)
    assert large.seconds <= 30 * small.seconds + 0.05, (small, large)  # loose, secondary


# ---------------------------------------------------------------------------------------------------
# jiter_refuses: whether jiter's partial parse of a text this parser failed on raises (what the lean check of
# MessageParser(keep_content=False) decides without keeping the text), against jiter itself


def jiter_raises(text: str, mode: str) -> bool:
    try:
        jiter.from_json(text.encode("utf-8", "surrogatepass"), partial_mode=True if mode == "on" else "trailing-strings")
    except ValueError:
        return True
    return False


def refuses(fragments: list[str], mode: str) -> bool:
    parser = ToolInputParser(partial_mode=mode, keep_values=False)  # type: ignore[arg-type]
    for fragment in fragments:
        parser.feed(fragment)
    with contextlib.suppress(PartialJSONError):
        parser.finish()  # as the accumulator asks, after finish() failed
    return parser.jiter_refuses()


ASCII_MUTATED = st.builds(
    _mutate,
    DOC.filter(str.isascii),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.sampled_from([*'{}[]",: 0-.eatnx1', "\\u", "\x01"])),
        min_size=1,
        max_size=4,
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(ASCII_MUTATED, JSONISH), cuts=CUTS, mode=st.sampled_from(MODES))
@example(text='{"k": {"a": [1}, 2}}', cuts=[], mode="on")  # jiter reads `}` as the array's end, then fails at `2`
@example(text='{"k": {"a": [1}, "b": 2}}', cuts=[9], mode="on")  # ... and here reads on to the end
@example(text='[[1e1e}, 2', cuts=[], mode="on")  # a number then garbage: the number, then `e` ends the array
@example(text='["\\u"d800"]', cuts=[5], mode="on")  # 4 characters after an invalid \u: refused, however split
@example(text='{"a": [{"b": 1], "c": "\x01"}', cuts=[], mode="on")  # a control character read on past a fault
def test_jiter_refuses_as_jiter_does(text: str, cuts: list[int], mode: str) -> None:
    expected = jiter_raises(text, mode)
    for fragments in ([text], list(text), split_at(text, cuts)):
        assert refuses(fragments, mode) == expected, fragments
