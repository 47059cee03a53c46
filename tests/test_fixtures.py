"""Every bundled fixture (mendstream.testing.FIXTURES) replayed whole, byte by byte and at hypothesis-chosen split points must give
its expected message (or error) and repairs, and identical events; fixtures the SDK can read must give the
SDK's own final message and event sequence."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mendstream
from mendstream import MessageParser
from mendstream.testing import FIXTURES as BUNDLED_FIXTURES
from sdk_reference import comparable, sdk_events
from splitting import feed_all, split_at

FIXTURES = BUNDLED_FIXTURES
NAMES = sorted(p.stem for p in FIXTURES.glob("*.sse"))


def _load_check_sdk() -> Any:
    spec = importlib.util.spec_from_file_location("check_sdk", Path(__file__).resolve().parent.parent / "tools" / "check_fixtures_sdk.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_sdk"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_sdk = _load_check_sdk()


def load(name: str) -> tuple[bytes, dict[str, Any]]:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return data, expected


def run(chunks: list[bytes]) -> dict[str, Any]:
    """Parse the chunks; return everything observable: events (forced), message, repairs, error."""
    parser = MessageParser()
    events, error = feed_all(parser, chunks)
    result: dict[str, Any] = {
        "events": [e.to_dict() for e in events],
        "repairs": [r.kind for r in parser.repairs],
        "message": parser.message if error is None else None,
        "error": None,
    }
    if error is not None:
        result["error"] = {"class": type(error).__name__, "snapshot": error.snapshot}
        if isinstance(error, mendstream.APIStreamError):
            result["error"]["error_type"] = error.error_type
        if isinstance(error, mendstream.ToolInputError):
            result["error"]["raw"] = error.raw
    return result


def test_fixtures_exist() -> None:
    assert len(NAMES) >= 40
    for name in NAMES:
        assert (FIXTURES / f"{name}.expected.json").exists(), name


@pytest.mark.parametrize("name", NAMES)
def test_fixture_whole_matches_expected(name: str) -> None:
    data, expected = load(name)
    got = run([data])
    assert got["repairs"] == expected["repairs"]
    if expected["error"] is None:
        assert got["error"] is None, got["error"]
        assert got["message"] == expected["message"]
        assert got["events"][-1]["type"] == "message_stop"
        assert got["events"][-1]["message"] == expected["message"]
    else:
        assert got["error"] is not None
        for key, value in expected["error"].items():
            assert got["error"][key] == value, key


@pytest.mark.parametrize("name", NAMES)
def test_fixture_byte_by_byte_is_identical(name: str) -> None:
    data, _ = load(name)
    assert run([data[i : i + 1] for i in range(len(data))]) == run([data])


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), points=st.lists(st.integers(min_value=0), max_size=20))
def test_fixture_random_splits_are_identical(name: str, points: list[int]) -> None:
    data, _ = load(name)
    assert run(split_at(data, points)) == run([data])


def test_fixture_repairs_are_readable() -> None:
    data, _ = load("fault_control_chars_in_event_json")
    parser = MessageParser()
    parser.feed(data)
    parser.end()
    repair = parser.repairs[0]
    assert repair.kind == "control_characters"
    assert "U+" in repair.detail
    assert repair.offset is not None and data[repair.offset : repair.offset + 6] in (b"event:", b"data: ")
    data, _ = load("tool_input_multiple_objects")
    parser = MessageParser()
    parser.feed(data)
    parser.end()
    (repair,) = parser.repairs
    assert repair.raw is not None and repair.raw.count("{") >= 2 and repair.index is not None


# -- against the SDK ----------------------------------------------------------------------------------------

SDK_NAMES = [n for n in NAMES if load(n)[1]["sdk_compatible"]]


# Where anthropic 0.x itself behaves differently from the current SDK the fixtures were checked against.
OLD_SDK_DIFFERS = {
    "framing_named_empty_data": "anthropic 0.x raises JSONDecodeError on a named event with empty data",
    "unknown_event_block_delta": "anthropic 0.x drops events of unknown types instead of passing them on",
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", SDK_NAMES)
def test_fixture_matches_the_sdk(name: str) -> None:
    import anthropic

    if name in OLD_SDK_DIFFERS and int(anthropic.__version__.split(".")[0]) < 1:
        pytest.xfail(OLD_SDK_DIFFERS[name])
    data, expected = load(name)
    theirs, sdk_message = sdk_events(data)
    with mendstream.replay(data) as stream:
        ours = [comparable(event) for event in stream]
        message = stream.message
    assert ours == theirs
    assert message == check_sdk.normalize_sdk_message(sdk_message, message)
    assert message == expected["message"]


def test_sdk_fails_where_we_do_not() -> None:
    """The reason mendstream exists: fixtures the SDK cannot read or reads wrongly, all read here."""
    broken = []
    for name in NAMES:
        data, expected = load(name)
        if expected["sdk_compatible"] or expected["error"] is not None:
            continue
        result = check_sdk.sdk_stream(data)
        sdk_message = None if result.message is None else check_sdk.normalize_sdk_message(
            result.message, expected["message"]
        )
        if result.error is not None or sdk_message != expected["message"]:
            broken.append(name)
        assert run([data])["message"] == expected["message"], name
    assert len(broken) >= 10, broken


# -- the stream surface over fixtures -----------------------------------------------------------------------


def test_replay_from_path_bytes_and_chunks_agree() -> None:
    path = FIXTURES / "tool_use_small_fragments.sse"
    data = path.read_bytes()
    messages = []
    for source in (path, str(path), data, [data[i : i + 7] for i in range(0, len(data), 7)]):
        with mendstream.replay(source) as stream:
            messages.append(stream.get_final_message().to_dict(mode="json", exclude_unset=True))
    assert all(m == messages[0] for m in messages)


def test_areplay_matches_replay() -> None:
    data = (FIXTURES / "thinking_signature_then_text.sse").read_bytes()

    async def chunks() -> Any:
        for i in range(0, len(data), 5):
            yield data[i : i + 5]

    async def main() -> tuple[list[str], str, dict[str, Any]]:
        async with mendstream.areplay(chunks()) as stream:
            texts = [t async for t in stream.text_stream]
            return texts, await stream.get_final_text(), stream.message

    texts, final_text, message = asyncio.run(main())
    with mendstream.replay(data) as stream:
        assert list(stream.text_stream) == texts
        assert stream.get_final_text() == final_text
        assert stream.message == message
