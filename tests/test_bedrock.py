"""Bedrock (issue 11): every SSE fixture converted to AWS event-stream frames must give, through
BedrockParser, exactly the events, message and error of the SSE (whole, byte by byte, hypothesis splits),
and the same through the real AnthropicBedrock / AsyncAnthropicBedrock clients against a uvicorn server on
127.0.0.1 (SigV4 with fake credentials). Exception frames become APIStreamErrors that are also the SDK's
class; broken and cut frames raise EventStreamError / IncompleteStreamError with what was received."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mendstream
from cloud_server import CloudServer
from conftest import (
    BASIC_MESSAGE,
    BASIC_SSE,
    FIXTURE_NAMES,
    check_outcome,
    closed_after_test,
    error_sse,
    expected,
    fixture_bytes,
)
from mendstream import APIStreamError, IncompleteStreamError, MessageParser, UsageError
from mendstream.core.bedrock import (
    BedrockParser,
    chunk_frame,
    exception_frame,
    is_event_stream,
    response_for_path,
    sse_to_event_stream,
)
from mendstream.core.eventstream import EventStreamDecoder, encode_message
from mendstream.errors import EventDecodeError, EventStreamError
from mendstream.recording.capture import sidecar_path
from sdk_reference import comparable
from splitting import feed_all, split_at

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("botocore")

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
OLD_SDK = int(anthropic.__version__.split(".")[0]) < 1  # anthropic 0.x (CI runs these tests under both)
PARAMS: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

# Repairs that only SSE framing can need (the event-stream carries the event JSON, not the SSE text).
SSE_ONLY_REPAIRS = {"bom", "event_name_mismatch", "split_data_line", "unterminated_final_event"}


def run(parser: MessageParser, chunks: list[bytes]) -> dict[str, Any]:
    events, error = feed_all(parser, chunks)
    result: dict[str, Any] = {
        "events": [e.to_dict() for e in events],
        "repairs": [r.kind for r in parser.repairs if r.kind not in SSE_ONLY_REPAIRS],
        "message": parser.message if error is None else None,
        "error": None if error is None else (type(error).__name__, error.snapshot, getattr(error, "error_type", None)),
    }
    return result


def sse_outcome(name: str) -> dict[str, Any]:
    return run(MessageParser(), [fixture_bytes(name)])


# -- sans-IO: the parser over converted fixtures -----------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_converted_fixture_matches_sse(name: str) -> None:
    body = sse_to_event_stream(fixture_bytes(name))
    assert is_event_stream(body[:12]) or not body
    outcome = run(BedrockParser(), [body])
    assert outcome == sse_outcome(name)
    exp = expected(name)
    assert outcome["message"] == exp["message"]


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if len(sse_to_event_stream(fixture_bytes(n))) < 6000])
def test_converted_fixture_byte_by_byte(name: str) -> None:
    body = sse_to_event_stream(fixture_bytes(name))
    whole = run(BedrockParser(), [body])
    assert run(BedrockParser(), [body[i : i + 1] for i in range(len(body))]) == whole


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FIXTURE_NAMES), st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
def test_converted_fixture_random_splits(name: str, points: list[int]) -> None:
    body = sse_to_event_stream(fixture_bytes(name))
    assert run(BedrockParser(), split_at(body, points)) == run(BedrockParser(), [body])


def test_corpus_streams_match_sse() -> None:
    if not CORPUS.is_dir():
        pytest.skip("no ../shared/corpus")
    bodies = sorted(CORPUS.iterdir())[:178]
    assert bodies
    for path in bodies:
        sse = path.read_bytes()
        sse_result = run(MessageParser(), [sse])
        converted = run(BedrockParser(), [sse_to_event_stream(sse)])
        assert converted == sse_result, path.name


def test_replay_reads_event_stream_bytes_files_and_chunks(tmp_path: Path) -> None:
    body = sse_to_event_stream(BASIC_SSE)
    (tmp_path / "bedrock.bin").write_bytes(body)
    for source in (body, tmp_path / "bedrock.bin", [body[i : i + 5] for i in range(0, len(body), 5)]):
        with mendstream.replay(source) as stream:
            assert stream.get_final_message().to_dict() == BASIC_MESSAGE
            assert isinstance(stream.parser, BedrockParser) and stream.parser.framing == "event-stream"
    # SSE still reads as SSE, however short its chunks
    stream = mendstream.replay([BASIC_SSE[i : i + 3] for i in range(0, len(BASIC_SSE), 3)])
    assert stream.get_final_message().to_dict() == BASIC_MESSAGE
    assert stream.parser.framing == "sse"  # type: ignore[attr-defined]


async def test_areplay_reads_event_stream() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    stream = mendstream.areplay(body)
    assert (await stream.get_final_message()).to_dict() == BASIC_MESSAGE


def test_replay_of_a_short_sse_body_ends_as_sse() -> None:
    with pytest.raises(IncompleteStreamError):
        mendstream.replay(b"data: {}").until_done()
    stream = mendstream.replay(b"")
    with pytest.raises(IncompleteStreamError):
        stream.until_done()
    assert stream.parser.framing == "sse"  # type: ignore[attr-defined]


# -- exception frames, broken and cut frames ------------------------------------------------------------------

HEAD_FRAMES = sse_to_event_stream(BASIC_SSE[: BASIC_SSE.index(b"event: content_block_delta", BASIC_SSE.index(b"Hello"))])


def snapshot_after_hello() -> dict[str, Any]:
    return run(MessageParser(), [error_sse("overloaded_error")])["error"][1]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "exception_type",
    ["throttlingException", "modelStreamErrorException", "internalServerException", "serviceUnavailableException",
     "modelTimeoutException", "validationException", "somethingNewException"],
)
def test_exception_frame_mid_stream(exception_type: str) -> None:
    frame = exception_frame(exception_type, "Too many tokens", originalStatusCode=429)
    body = HEAD_FRAMES + frame + chunk_frame(b'{"type":"message_stop"}')
    parser = BedrockParser()
    events: list[Any] = []
    with pytest.raises(APIStreamError) as info:
        for i in range(len(body)):
            events += parser.feed(body[i : i + 1])
    error = info.value
    events += error.events
    assert error.error_type == exception_type
    assert error.body == {
        "type": "error",
        "error": {"type": exception_type, "message": "Too many tokens", "originalStatusCode": 429},
    }
    assert error.snapshot == snapshot_after_hello()
    assert error.snapshot["content"][0]["text"] == "Hello"
    assert error.offset == len(HEAD_FRAMES)  # the exception frame's offset in the body
    assert [e.type for e in events][-1] == "text"
    assert parser.error is error
    with pytest.raises(APIStreamError):
        parser.feed(b"more")


def test_error_frame_with_error_code_headers() -> None:
    frame = encode_message(b"", {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"})
    with pytest.raises(APIStreamError) as info:
        mendstream.replay(HEAD_FRAMES + frame).until_done()
    assert info.value.error_type == "InternalFailure"
    assert info.value.body == {"type": "error", "error": {"type": "InternalFailure", "message": "oops"}}


def test_corrupted_crc_mid_stream_keeps_the_partial_message() -> None:
    body = bytearray(sse_to_event_stream(BASIC_SSE))
    frames = EventStreamDecoder().feed(bytes(body))
    target = frames[4]  # the second text delta
    body[target.offset + target.size - 1] ^= 0x01  # its message CRC
    parser = BedrockParser()
    with pytest.raises(EventStreamError, match="message CRC mismatch") as info:
        parser.feed(bytes(body))
    error = info.value
    assert error.offset == target.offset
    assert error.raw == bytes(body[target.offset : target.offset + target.size])
    assert error.snapshot["content"][0]["text"] == "Hello"
    assert [e.type for e in error.events].count("text") == 1
    assert parser.error is error
    with pytest.raises(EventStreamError):
        parser.end()


def test_sse_given_to_the_bedrock_parser_fails_on_the_prelude() -> None:
    with pytest.raises(EventStreamError, match="prelude CRC mismatch") as info:
        BedrockParser().feed(BASIC_SSE)
    assert info.value.offset == 0 and info.value.raw == BASIC_SSE[:12]


def test_truncated_frames() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    frames = EventStreamDecoder().feed(body)
    last = frames[-1]
    # cut inside message_stop: message_delta had the stop reason, so the cut frame is tolerated
    result = run(BedrockParser(), [body[: last.offset + 7]])
    assert result["message"] == BASIC_MESSAGE
    parser = BedrockParser()
    run(parser, [body[: last.offset + 7]])
    assert [r.kind for r in parser.repairs] == ["truncated_final_frame", "missing_message_stop"]
    assert parser.repairs[0].offset == last.offset
    # cut inside a text delta: incomplete, with the partial message and the cut frame as the cause
    cut = frames[4].offset + 20
    with pytest.raises(IncompleteStreamError) as info:
        mendstream.replay(body[:cut]).until_done()
    assert info.value.snapshot["content"][0]["text"] == "Hello"
    assert isinstance(info.value.__cause__, EventStreamError)
    assert info.value.__cause__.raw == body[frames[4].offset : cut]


def test_chunk_without_bytes_is_an_event_decode_error() -> None:
    bad = encode_message(b'{"nobytes":1}', {":message-type": "event", ":event-type": "chunk"})
    with pytest.raises(EventDecodeError) as info:
        BedrockParser().feed(HEAD_FRAMES + bad)
    assert info.value.raw == b'{"nobytes":1}'
    assert info.value.offset == len(HEAD_FRAMES)
    assert info.value.snapshot["content"][0]["text"] == "Hello"


def test_unknown_event_types_and_message_types_are_skipped() -> None:
    other = encode_message(b"{}", {":message-type": "event", ":event-type": "metadata"})
    odd = encode_message(b"{}", {":message-type": "mystery"})
    body = sse_to_event_stream(BASIC_SSE)
    assert run(BedrockParser(), [other + body + odd])["message"] == BASIC_MESSAGE


def test_repair_offsets_are_frame_offsets() -> None:
    name = "fault_control_chars_in_event_json"
    body = sse_to_event_stream(fixture_bytes(name))
    parser = BedrockParser()
    run(parser, [body])
    offsets = {f.offset for f in EventStreamDecoder().feed(body)}
    assert parser.repairs and all(r.offset in offsets for r in parser.repairs)


def test_options_are_checked() -> None:
    with pytest.raises(UsageError):
        BedrockParser(framing="sse")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        BedrockParser(max_frame_bytes=3)
    with pytest.raises(UsageError):
        BedrockParser().feed("text")  # type: ignore[arg-type]


def test_response_for_path() -> None:
    content_type, body = response_for_path("/model/anthropic.claude-x%3A0/invoke-with-response-stream", BASIC_SSE)
    assert content_type == "application/vnd.amazon.eventstream" and body == sse_to_event_stream(BASIC_SSE)
    assert response_for_path("/v1/messages", BASIC_SSE)[1] == BASIC_SSE
    assert response_for_path("/v1/messages", body) == ("application/vnd.amazon.eventstream", body)


# -- the real AnthropicBedrock client ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudServer]:
    with CloudServer() as server:
        yield server


def bedrock(server: CloudServer, cls: Any = None, **options: Any) -> Any:
    """A Bedrock client; a sync one is closed when the test ends (an async one by the test)."""
    client = (cls or anthropic.AnthropicBedrock)(
        aws_access_key="AKIDEXAMPLE", aws_secret_key="fake-secret", aws_region="us-east-1",
        base_url=server.base_url, max_retries=0, **options,
    )
    return client if cls is not None and cls.__name__.startswith("Async") else closed_after_test(client)


def outcome_of(stream_factory: Any) -> tuple[dict[str, Any] | None, BaseException | None, list[Any]]:
    events: list[Any] = []
    try:
        with stream_factory() as stream:
            for event in stream:
                events.append(event.to_dict())
            return stream.message, None, events
    except Exception as exc:  # the stream yields every event decoded before its error
        return None, exc, events


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_bedrock_client_every_fixture(cloud: CloudServer, name: str) -> None:
    client = bedrock(cloud)
    message, error, events = outcome_of(lambda: mendstream.stream(client, model=name, **PARAMS))
    check_outcome(name, message, error)
    sse = sse_outcome(name)
    assert events == sse["events"]
    request = cloud.requests[-1]
    assert request["path"] == f"/model/{name}/invoke-with-response-stream"
    assert request["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "anthropic_version" in request["body"] and "model" not in request["body"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_async_bedrock_client_every_fixture(cloud: CloudServer, name: str) -> None:
    client = bedrock(cloud, anthropic.AsyncAnthropicBedrock)
    message: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        async with mendstream.astream(client, model=name, extra_headers={"x-chunk-size": "7"}, **PARAMS) as stream:
            async for _ in stream:
                pass
            message = stream.message
    except Exception as exc:
        error = exc
    finally:
        await client.close()
    check_outcome(name, message, error)


def _load_check_sdk() -> Any:
    spec = importlib.util.spec_from_file_location("check_sdk", Path(__file__).resolve().parent.parent / "tools" / "check_fixtures_sdk.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_sdk", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_sdk = _load_check_sdk()
SDK_COMPATIBLE = [n for n in FIXTURE_NAMES if expected(n).get("sdk_compatible") and expected(n)["error"] is None]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns serialising unknown block types
@pytest.mark.parametrize("name", SDK_COMPATIBLE)
def test_bedrock_client_agrees_with_the_sdks_bedrock_stream(cloud: CloudServer, name: str) -> None:
    client = bedrock(cloud)
    chunk = "1" if len(fixture_bytes(name)) < 4000 else "61"
    with mendstream.stream(client, model=name, extra_headers={"x-chunk-size": chunk}, **PARAMS) as stream:
        our_events = [comparable(event) for event in stream]
        ours = stream.message
    with client.messages.stream(model=name, **PARAMS) as sdk_stream:
        their_events = [comparable(event) for event in sdk_stream]
        theirs = sdk_stream.get_final_message().to_dict(mode="json")
    if OLD_SDK:
        # anthropic 0.x drops events of unknown types instead of passing them on, over SSE as over Bedrock
        # (test_fixtures.OLD_SDK_DIFFERS); mendstream passes them on whatever the SDK: compare the rest.
        unknown = [e for e in our_events if e[0] not in KNOWN_EVENT_TYPES]
        assert all(e[0] not in {t[0] for t in their_events} for e in unknown)
        our_events = [e for e in our_events if e[0] in KNOWN_EVENT_TYPES]
    assert our_events == their_events
    # the SDK's model classes fill keys they know with None (e.g. stop_details); the rest must be equal
    assert ours == check_sdk.normalize_sdk_message(theirs, ours) == expected(name)["message"]


KNOWN_EVENT_TYPES = {
    "message_start", "message_delta", "message_stop", "content_block_start", "content_block_delta",
    "content_block_stop", "text", "citation", "thinking", "signature", "input_json",
}

EXCEPTION_CLASSES = {
    "throttlingException": "RateLimitError",
    "serviceUnavailableException": "ServiceUnavailableError",
    "internalServerException": "InternalServerError",
    "validationException": "BadRequestError",
    # anthropic 0.x has no RequestTimeoutError (a 408 is a plain APIStatusError there)
    "modelTimeoutException": "RequestTimeoutError" if hasattr(anthropic, "RequestTimeoutError") else "APIStatusError",
    "modelStreamErrorException": "APIStatusError",
}


@pytest.mark.parametrize("exception_type", sorted(EXCEPTION_CLASSES))
def test_bedrock_exception_frame_raises_the_sdk_class(cloud: CloudServer, exception_type: str) -> None:
    cloud.bodies[f"exc-{exception_type}"] = (
        "application/vnd.amazon.eventstream",
        HEAD_FRAMES + exception_frame(exception_type, "slow down"),
    )
    client = bedrock(cloud)
    with pytest.raises(APIStreamError) as info:
        mendstream.stream(client, model=f"exc-{exception_type}", **PARAMS).until_done()
    error = info.value
    sdk_class = getattr(anthropic, EXCEPTION_CLASSES[exception_type])
    assert isinstance(error, sdk_class) and isinstance(error, anthropic.APIStatusError)
    assert error.error_type == exception_type
    assert error.body == {"type": "error", "error": {"type": exception_type, "message": "slow down"}}
    assert error.snapshot["content"][0]["text"] == "Hello"
    # the SDK's own Bedrock stream says only that something failed: anthropic >= 1 an APIStatusError, 0.x a
    # bare `ValueError: Bad response code` from its botocore-based frame decoder (anthropic/lib/bedrock/
    # _stream_decoder.py), which mendstream does not use (it reads the response's raw bytes)
    sdk_failure = ValueError if OLD_SDK else anthropic.APIStatusError
    with pytest.raises(sdk_failure), client.messages.stream(model=f"exc-{exception_type}", **PARAMS) as s:
        s.until_done()


async def test_async_bedrock_exception_frame(cloud: CloudServer) -> None:
    cloud.bodies["exc-async"] = ("application/vnd.amazon.eventstream", HEAD_FRAMES + exception_frame("throttlingException"))
    client = bedrock(cloud, anthropic.AsyncAnthropicBedrock)
    with pytest.raises(anthropic.RateLimitError) as info:
        async with mendstream.astream(client, model="exc-async", **PARAMS) as stream:
            await stream.until_done()
    assert isinstance(info.value, APIStreamError) and info.value.snapshot["content"][0]["text"] == "Hello"


def test_bedrock_corrupted_and_cut_bodies(cloud: CloudServer) -> None:
    body = bytearray(sse_to_event_stream(BASIC_SSE))
    frames = EventStreamDecoder().feed(bytes(body))
    body[frames[4].offset + 30] ^= 0x20
    cloud.bodies["corrupt"] = ("application/vnd.amazon.eventstream", bytes(body))
    cloud.bodies["cut"] = ("application/vnd.amazon.eventstream", bytes(body[: frames[4].offset + 9]))
    client = bedrock(cloud)
    with pytest.raises(EventStreamError) as info:
        mendstream.stream(client, model="corrupt", extra_headers={"x-chunk-size": "5"}, **PARAMS).until_done()
    assert info.value.offset == frames[4].offset and info.value.snapshot["content"][0]["text"] == "Hello"
    with pytest.raises(IncompleteStreamError) as cut:
        mendstream.stream(client, model="cut", **PARAMS).until_done()
    assert cut.value.snapshot["content"][0]["text"] == "Hello"


def test_bedrock_wrong_content_type_is_refused(cloud: CloudServer) -> None:
    cloud.bodies["json"] = ("application/json", b'{"type":"message"}')
    cloud.bodies["untyped"] = (None, sse_to_event_stream(BASIC_SSE))
    client = bedrock(cloud)
    with pytest.raises(mendstream.errors.ContentTypeError, match="application/json"):
        mendstream.stream(client, model="json", **PARAMS)
    assert mendstream.stream(client, model="untyped", **PARAMS).get_final_message().to_dict() == BASIC_MESSAGE


def test_bedrock_capture_replays(cloud: CloudServer, tmp_path: Path) -> None:
    client = bedrock(cloud)
    capture = tmp_path / "bedrock.stream"
    with mendstream.stream(client, model="tool_use_parallel", capture=capture, **PARAMS) as stream:
        live = stream.get_final_message().to_dict()
    raw = capture.read_bytes()
    assert is_event_stream(raw[:12])
    sidecar = json.loads(sidecar_path(capture).read_text())
    assert "application/vnd.amazon.eventstream" in json.dumps(sidecar)
    assert mendstream.replay(capture).get_final_message().to_dict() == live == expected("tool_use_parallel")["message"]


def test_bedrock_full_message_stream_api(cloud: CloudServer) -> None:
    client = bedrock(cloud)
    with mendstream.stream(client, model="text_multiple_blocks", **PARAMS) as stream:
        text = "".join(stream.text_stream)
        assert stream.get_final_text() == text
        assert stream.current_message_snapshot.to_dict() == expected("text_multiple_blocks")["message"]
        assert stream.response.headers["content-type"] == "application/vnd.amazon.eventstream"


def test_bedrock_rejects_a_plain_message_parser(cloud: CloudServer) -> None:
    with pytest.raises(UsageError, match="BedrockParser"):
        mendstream.stream(bedrock(cloud), model="text_basic", parser=MessageParser(), **PARAMS)
    parser = BedrockParser(partial_mode="trailing-strings")
    stream = mendstream.stream(bedrock(cloud), model="text_basic", parser=parser, **PARAMS)
    assert stream.parser is parser and stream.get_final_message().to_dict() == expected("text_basic")["message"]


def test_bedrock_without_botocore_is_a_usage_error(cloud: CloudServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = bedrock(cloud)
    monkeypatch.setitem(sys.modules, "botocore", None)
    before = len(cloud.requests)
    with pytest.raises(UsageError, match=r"pip install 'mendstream\[bedrock\]'"):
        mendstream.stream(client, model="text_basic", **PARAMS)
    assert len(cloud.requests) == before


def test_bedrock_mantle_streams_sse(cloud: CloudServer) -> None:
    mantle_cls = getattr(anthropic, "AnthropicBedrockMantle", None)
    if mantle_cls is None:
        pytest.skip("this SDK has no AnthropicBedrockMantle")
    client = mantle_cls(api_key="fake-key", aws_region="us-east-1", base_url=cloud.base_url, max_retries=0)
    with mendstream.stream(client, model="text_citations", **PARAMS) as stream:
        assert stream.get_final_message().to_dict() == expected("text_citations")["message"]
    assert cloud.requests[-1]["path"].endswith("/v1/messages")
    assert isinstance(stream.parser, MessageParser) and not isinstance(stream.parser, BedrockParser)


def test_bedrock_modules_stay_light() -> None:
    import subprocess

    code = (
        "import sys, mendstream, mendstream.core.bedrock, mendstream.core.eventstream, mendstream.transports.cloud\n"
        "from mendstream.core.bedrock import BedrockParser, sse_to_event_stream\n"
        "from conftest import BASIC_SSE\n"
        "p = BedrockParser(); p.feed(sse_to_event_stream(BASIC_SSE)); p.end(); assert p.complete\n"
        "heavy = [m for m in ('botocore', 'boto3', 'anthropic', 'httpx', 'httpx2', 'google.auth', 'uvicorn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    tests_dir = Path(__file__).resolve().parent
    env_path = f"{tests_dir.parent / 'src'}:{tests_dir}"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path}, cwd=tests_dir, timeout=60)


def test_cli_replays_an_event_stream_capture(tmp_path: Path) -> None:
    from mendstream.cli import main

    path = tmp_path / "bedrock.stream"
    path.write_bytes(sse_to_event_stream(fixture_bytes("tool_use_parallel")))
    assert main(["replay", str(path)]) == 0


def test_end_twice_and_feed_after_end() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    parser = BedrockParser()
    parser.feed(body[:-5])
    parser.end()
    assert parser.end() == []
    assert [r.kind for r in parser.repairs] == ["truncated_final_frame", "missing_message_stop"]
    with pytest.raises(UsageError):
        parser.feed(b"x")
    cut = BedrockParser()
    cut.feed(body[:40])
    for _ in range(2):
        with pytest.raises(IncompleteStreamError):
            cut.end()


# -- the direct frame → accumulator path: what SSE line splitting did, limits, options ------------------------


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b" ", b"a", b"\t"]), max_size=6), st.booleans())
def test_line_breaks_in_the_event_json_read_as_over_sse(breaks: list[bytes], in_string: bool) -> None:
    # A CR or CRLF inside the JSON reaches the core as LF, as SSE's data lines (rejoined with LF) leave it.
    filler = b"".join(breaks)
    if in_string:
        delta = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x' + filler + b'"}}'
    else:
        delta = b'{"type":"content_block_delta",' + filler + b'"index":0,"delta":{"type":"text_delta","text":"x"}}'
    head = BASIC_SSE[: BASIC_SSE.index(b"event: content_block_delta")]
    tail = BASIC_SSE[BASIC_SSE.index(b"event: content_block_stop") :]
    lines = delta.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    sse = head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n" + tail
    body = sse_to_event_stream(head) + chunk_frame(delta) + sse_to_event_stream(tail)
    assert run(BedrockParser(), [body]) == run(MessageParser(), [sse])


def test_max_event_bytes_bounds_the_decoded_event() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    largest = max(len(e) for e in BASIC_SSE.split(b"\n\n"))
    assert run(BedrockParser(max_event_bytes=largest), [body])["message"] == BASIC_MESSAGE
    parser = BedrockParser(max_event_bytes=60)
    with pytest.raises(mendstream.errors.BufferLimitError) as info:
        parser.feed(body)
    assert info.value.limit == 60 and info.value.offset == 0  # message_start is the first, and too large
    assert parser.error is info.value


def test_max_message_bytes_and_fresh_keep_the_options() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    parser = BedrockParser(max_message_bytes=len(body) - 1, partial_mode="trailing-strings", max_frame_bytes=4096)
    half = len(body) // 2
    events = parser.feed(body[:half])
    with pytest.raises(mendstream.errors.MessageTooLargeError) as info:
        parser.feed(body[half:])
    assert events and info.value.snapshot["content"][0]["text"] == "Hello world"
    again = parser.fresh()
    assert type(again) is BedrockParser and again._options == parser._options
    assert again._max_message_bytes == len(body) - 1 and again._frames._limit == 4096
    ok = BedrockParser(max_message_bytes=len(body))
    assert run(ok, [body])["message"] == BASIC_MESSAGE


def test_errors_and_repairs_name_frame_offsets_and_event_ordinals() -> None:
    name = "fault_control_chars_in_event_json"
    body = sse_to_event_stream(fixture_bytes(name))
    frames = EventStreamDecoder().feed(body)
    parser = BedrockParser()
    run(parser, [body])
    by_offset = {f.offset: i for i, f in enumerate(frames)}
    assert parser.repairs
    for repair in parser.repairs:
        assert by_offset[repair.offset] == repair.event_index


# -- request ids: Bedrock answers with x-amzn-requestid, not request-id ------------------------------------


def test_request_id_of_reads_bedrocks_header() -> None:
    from mendstream.errors import request_id_of
    from mendstream.transports.failures import status_error

    assert request_id_of({"x-amzn-requestid": "amzn-1"}) == "amzn-1"
    assert request_id_of({"request-id": "req_1", "x-amzn-requestid": "amzn-1"}) == "req_1"
    assert request_id_of({"request-id": ""}) is None and request_id_of({}) is None and request_id_of(None) is None
    error = status_error(429, b'{"message":"Too many requests"}', {"x-amzn-requestid": "amzn-2"}, None)
    assert error.request_id == "amzn-2" and "amzn-2" in str(error)


def test_bedrock_stream_and_errors_carry_the_amazon_request_id(cloud: CloudServer) -> None:
    client = bedrock(cloud)
    with mendstream.stream(client, model="text_basic", **PARAMS) as stream:
        stream.until_done()
        assert stream.request_id == "req-bedrock-1"  # the test server's x-amzn-requestid
    cloud.bodies["exc-request-id"] = (
        "application/vnd.amazon.eventstream", HEAD_FRAMES + exception_frame("throttlingException")
    )
    with pytest.raises(APIStreamError) as info:
        mendstream.stream(client, model="exc-request-id", **PARAMS).until_done()
    assert isinstance(info.value, anthropic.RateLimitError) and info.value.request_id == "req-bedrock-1"


async def test_async_bedrock_stream_carries_the_amazon_request_id(cloud: CloudServer) -> None:
    cloud.bodies["exc-request-id"] = (
        "application/vnd.amazon.eventstream", HEAD_FRAMES + exception_frame("throttlingException")
    )
    client = bedrock(cloud, anthropic.AsyncAnthropicBedrock)
    async with mendstream.astream(client, model="text_basic", **PARAMS) as stream:
        await stream.until_done()
        assert stream.request_id == "req-bedrock-1"
    with pytest.raises(APIStreamError) as info:
        async with mendstream.astream(client, model="exc-request-id", **PARAMS) as failing:
            await failing.until_done()
    assert info.value.request_id == "req-bedrock-1"


# -- the hot path (whole chunk frames walked by BedrockParser itself, once the decoder has read the first) ----


def frame_chunks(body: bytes, per_chunk: int = 1) -> list[bytes]:
    """``body`` cut at frame boundaries, ``per_chunk`` frames a chunk (what the hot path takes whole)."""
    try:
        starts = [f.offset for f in EventStreamDecoder().feed(body)]
    except EventStreamError as exc:  # a cut final frame: its start is a boundary too
        starts = [f.offset for f in exc.events]
    starts = [*starts[::per_chunk], len(body)]
    if starts[0] != 0:
        starts.insert(0, 0)
    return [body[a:b] for a, b in itertools.pairwise(starts) if b > a] or [body]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_converted_fixture_frame_by_frame_matches_sse(name: str) -> None:
    body = sse_to_event_stream(fixture_bytes(name))
    for per_chunk in (1, 3):
        assert run(BedrockParser(), frame_chunks(body, per_chunk)) == sse_outcome(name), per_chunk


def test_corpus_streams_frame_by_frame_match_sse() -> None:
    if not CORPUS.is_dir():
        pytest.skip("no ../shared/corpus")
    bodies = sorted(CORPUS.glob("*.sse"))
    assert bodies
    for path in bodies:
        sse = path.read_bytes()
        assert run(BedrockParser(), frame_chunks(sse_to_event_stream(sse))) == run(MessageParser(), [sse]), path.name


def outcome_with_offsets(chunks: list[bytes]) -> tuple[Any, ...]:
    parser = BedrockParser()
    result = run(parser, chunks)
    error = parser.error
    repairs = [(r.kind, r.offset, r.event_index) for r in parser.repairs]
    return result, repairs, None if error is None else (type(error).__name__, error.offset, str(error))


def test_hot_path_bit_flips_fail_as_the_decoder_does() -> None:
    body = sse_to_event_stream(BASIC_SSE)
    cuts = [0]
    for piece in frame_chunks(body):
        cuts.append(cuts[-1] + len(piece))
    for position in range(0, len(body), 3):
        for bit in (0x01, 0x80):
            broken = bytearray(body)
            broken[position] ^= bit
            data = bytes(broken)
            # cut where the intact body has its frame boundaries: the hot path meets the broken frame
            pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
            assert outcome_with_offsets(pieces) == outcome_with_offsets([data]), (position, bit)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FIXTURE_NAMES), st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
def test_hot_path_split_invariance(name: str, points: list[int]) -> None:
    # whole frames first (the hot path engaged), then arbitrary cuts: repairs and errors name the same
    # frame offsets and event ordinals as one whole feed
    body = sse_to_event_stream(fixture_bytes(name))
    chunks = frame_chunks(body, 2)
    mixed = chunks[:2] + split_at(b"".join(chunks[2:]), points)
    assert outcome_with_offsets(mixed) == outcome_with_offsets([body])


def test_hot_path_hashes_each_frame_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    from mendstream.core import bedrock as bedrock_module
    from mendstream.core import eventstream

    hashed = [0]

    def counting_crc32(data: Any, value: int = 0) -> int:
        hashed[0] += len(data)
        return zlib.crc32(data, value)

    exception = encode_message(b'{"message":"x"}', {":message-type": "exception", ":exception-type": "throttlingException"})
    body = sse_to_event_stream(BASIC_SSE)
    last = EventStreamDecoder().feed(body)[-1]
    body = body[: last.offset] + exception  # another kind of frame after the chunk frames: the decoder's
    chunks = frame_chunks(body)
    frames = len(chunks)
    monkeypatch.setattr(eventstream, "_crc32", counting_crc32)
    monkeypatch.setattr(bedrock_module, "_crc32", counting_crc32)
    with pytest.raises(APIStreamError):
        run_strict(BedrockParser(), chunks)
    assert len(body) - 8 * frames < hashed[0] <= len(body) + 8 * frames


def run_strict(parser: BedrockParser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        parser.feed(chunk)
    parser.end()
