# No secret reaches a capture (issue 12 §4): credentials planted by value (Anthropic, AWS, Google, GitHub
# keys, a JWT, Bearer and Basic values, SAS signatures) in the URL query, in headers of any name, in the
# request body, in response headers, in the streamed response text and in an error body, across every
# capture path (httpx transport sync/async, success/HTTP error/not-SSE/closed early, SDK transport
# success/HTTP error). Every byte written under the capture directory is searched. Also: masks keep the
# body's length (chunk sizes stay true, the capture still replays), the scrubbers produce no false
# positive on the repository's fixtures and the real-stream corpus, a secret split across chunks is
# caught, the custom-rule hook works, and scrubbing stays linear on hostile input.
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import stat
import string
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mendstream.httpx as mh
import mendstream.recording.capture as capture_module
import mendstream.recording.scrub as scrub_module
from conftest import BASIC_SSE, FIXTURES_DIR
from mendstream import replay
from mendstream.core.bedrock import sse_to_event_stream
from mendstream.core.eventstream import EventStreamDecoder
from mendstream.errors import StreamError, UsageError
from mendstream.recording.capture import (
    CaptureWriter,
    redact_secret_bytes,
    redact_secret_values,
    scrub_json,
    sidecar_path,
)
from mendstream.recording.files import CaptureDirectory, create_private
from mendstream.recording.scrub import LINE_LIMIT, BodyScrubber, scrub_body
from mendstream.testing import Fixture, ReplayServer

ANTHROPIC = "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe9Dc8Ba7Zx6Yw5Vu4Ts3"
AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_STS = "ASIAY34FZKBOKMUTVV7A"
GOOGLE = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
GITHUB = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
GITHUB_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
BEARER = "tok_9f8e7d6c5b4a39210fedcba"
BASIC = base64.b64encode(b"alice:s3cret-pw").decode()
SAS_SIG = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"
SESSION = "sess_8d7f6e5a4b3c2d1e"
PLANTED = [ANTHROPIC, AWS, AWS_STS, GOOGLE, GITHUB, GITHUB_PAT, JWT, BEARER, BASIC, SAS_SIG, SESSION]

BODY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": f"my key is {ANTHROPIC} and {GITHUB}, aws {AWS}"}],
    "metadata": {"user_id": "u1", "note": f"jwt {JWT} pat {GITHUB_PAT}"},
}
REQUEST_HEADERS = {
    "x-upstream": f"Basic {BASIC}",
    "x-aws-key-id": AWS_STS,
    "x-session-id": SESSION,
    "x-forward": f"Bearer {BEARER}",
}
QUERY_PATH = f"/v1/messages?key={GOOGLE}&sig={SAS_SIG}%3D%3D&beta=true"
LEAKY_SSE = BASIC_SSE.replace(
    b'"text":"Hello"', f'"text":"Hello {ANTHROPIC} {GITHUB} {AWS} {JWT} Basic {BASIC}"'.encode()
)
ERROR_BODY = json.dumps(
    {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {ANTHROPIC}"}}
).encode()
LEAKY_HEADERS = (("content-type", "text/event-stream"), ("x-echo", f"Bearer {BEARER}"), ("x-amz-id", AWS))


def assert_nothing_planted(directory: Path) -> None:
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files, "nothing was captured"
    for path in files:
        data = path.read_bytes()
        for secret in PLANTED:
            assert secret.encode() not in data, (path.name, secret)


@pytest.fixture
def leaky_server() -> Any:
    fixtures = {
        "leaky": Fixture("leaky", LEAKY_SSE, headers=LEAKY_HEADERS),
        "e401": Fixture("e401", ERROR_BODY, status=401, headers=(("content-type", "application/json"),)),
        "html": Fixture("html", f"<p>{ANTHROPIC}</p>".encode(), headers=(("content-type", "text/html"),)),
    }
    with ReplayServer(fixtures, select="header") as server:
        yield server


def pick(name: str) -> dict[str, str]:
    return {**REQUEST_HEADERS, "x-mendstream-fixture": name}


def test_httpx_transport_paths(leaky_server: ReplayServer, tmp_path: Path) -> None:
    out = tmp_path / "caps"
    base = leaky_server.base_url
    with mh.stream(BODY, base_url=base, path=QUERY_PATH, api_key=ANTHROPIC, headers=pick("leaky"),
                   capture=out / "ok.sse") as s:
        s.until_done()
        live = s.message
    assert ANTHROPIC in live["content"][0]["text"]  # the caller still gets what was sent
    with mh.stream(BODY, base_url=base, path=QUERY_PATH, auth_token=BEARER, headers=pick("leaky"),
                   capture=out / "early.sse") as s:
        next(iter(s))
    with pytest.raises(mh.HTTPStatusError) as info:
        mh.stream(BODY, base_url=base, path=QUERY_PATH, api_key=ANTHROPIC, headers=pick("e401"),
                  capture=out / "e401.sse")
    assert ANTHROPIC in str(info.value.body)
    with pytest.raises(mh.ContentTypeError):
        mh.stream(BODY, base_url=base, path=QUERY_PATH, api_key=ANTHROPIC, headers=pick("html"),
                  capture=out / "html.sse", strict_content_type=True)
    assert_nothing_planted(out)
    meta = json.loads(sidecar_path(out / "ok.sse").read_text())
    assert "key=" not in meta["request"]["url"] and "beta=true" in meta["request"]["url"]
    assert "x-session-id" not in meta["request"]["headers"]
    assert meta["request"]["headers"]["x-upstream"] == "Basic [REDACTED]"
    # masks keep the length: the chunk sizes add up and the capture replays, with the secrets masked
    assert meta["body_bytes"] == (out / "ok.sse").stat().st_size == len(LEAKY_SSE)
    with replay(out / "ok.sse") as again:
        again.until_done()
        assert "[REDACTED" in again.message["content"][0]["text"]


async def test_async_httpx_transport_paths(leaky_server: ReplayServer, tmp_path: Path) -> None:
    out = tmp_path / "caps"
    base = leaky_server.base_url
    async with mh.astream(BODY, base_url=base, path=QUERY_PATH, api_key=ANTHROPIC, headers=pick("leaky"),
                          capture=out / "ok.sse") as s:
        await s.until_done()
    with pytest.raises(mh.HTTPStatusError):
        await mh.astream(BODY, base_url=base, path=QUERY_PATH, api_key=ANTHROPIC, headers=pick("e401"),
                         capture=out / "e401.sse")
    assert_nothing_planted(out)


def test_sdk_transport_paths(leaky_server: ReplayServer, tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    import mendstream

    out = tmp_path / "caps"
    client = anthropic.Anthropic(base_url=leaky_server.base_url, api_key=ANTHROPIC, max_retries=0)
    params: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": BODY["messages"],
                              "metadata": {"user_id": "u1"}, "extra_query": {"key": GOOGLE, "sig": SAS_SIG}}
    mendstream.stream(client, **params, extra_headers=pick("leaky"), capture=out / "ok.sse").until_done()
    with pytest.raises(anthropic.AuthenticationError):
        mendstream.stream(client, **params, extra_headers=pick("e401"), capture=out / "e401.sse")
    assert (out / "e401.sse").exists()
    assert_nothing_planted(out)


def test_value_scrubbers() -> None:
    for secret in PLANTED[:7]:
        assert redact_secret_values(f"x {secret} y") == "x [REDACTED] y", secret
        masked = redact_secret_bytes(f'"{secret}"'.encode())
        assert len(masked) == len(secret) + 2 and secret.encode() not in masked, secret
    assert redact_secret_values(f"Authorization: Basic {BASIC}") == "Authorization: Basic [REDACTED]"
    assert redact_secret_values(f"bearer {BEARER}") == "[REDACTED]"
    for prose in ("Basic understanding of thermodynamics", "the Bearer instruments", "AKIA is a word",
                  "sk-ant- alone", "eyJ only"):
        assert redact_secret_values(prose) == prose
        assert redact_secret_bytes(prose.encode()) == prose.encode()
    assert scrub_json({"a": {"session_id": SESSION, "b": [f"k={GOOGLE}"]}}) == {"a": {"b": ["k=[REDACTED]"]}}


def test_deeply_nested_request_body_is_scrubbed_without_recursion() -> None:
    nested: Any = f"deep {ANTHROPIC}"
    for _ in range(100_000):
        nested = [{"x": nested}]
    out = scrub_json(nested)
    for _ in range(100_000):
        out = out[0]["x"]
    assert out == "deep [REDACTED]"


def test_secret_split_across_chunks_and_long_lines(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "split.sse")
    writer.start_response(200, {})
    data = b"data: " + b"a" * 3_000_000 + f" {ANTHROPIC} ".encode() + b"b" * 10 + b"\n\n"
    for i in range(0, len(data), 7):
        writer.write(data[i : i + 7])
    writer.finish()
    written = (tmp_path / "split.sse").read_bytes()
    assert len(written) == len(data) and ANTHROPIC.encode() not in written
    assert written.startswith(b"data: aaa") and written.endswith(b"bbbbbbbbbb\n\n")


def test_custom_rule_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrub_module, "_extra_patterns", [])
    monkeypatch.setattr(scrub_module, "_SECRET_VALUE", scrub_module._SECRET_VALUE)
    monkeypatch.setattr(scrub_module, "_SECRET_VALUE_BYTES", scrub_module._SECRET_VALUE_BYTES)
    capture_module.add_secret_pattern(r"acme-[0-9a-f]{12}")  # the old home of the hook still works
    writer = CaptureWriter(tmp_path / "c.sse", request_body={"t": "acme-0123456789ab"})
    writer.write(b"data: acme-0123456789ab\n\n")
    writer.finish()
    for path in (tmp_path / "c.sse", tmp_path / "c.capture.json"):
        assert b"acme-0123456789ab" not in path.read_bytes()


def test_no_false_positive_on_real_streams() -> None:
    corpus = FIXTURES_DIR.parent.parent / "shared" / "corpus"
    paths = sorted(FIXTURES_DIR.glob("*.sse")) + (sorted(corpus.rglob("*.sse")) if corpus.is_dir() else [])
    for path in paths:
        data = path.read_bytes()
        assert redact_secret_bytes(data) == data, path.name


def test_scrubbing_is_linear_on_hostile_input() -> None:
    # Counting, not timing: the masks' regexes bound every repetition, so the work per byte is bounded;
    # here the hostile prefixes just have to come out unchanged and whole.
    for hostile in (b"eyJ" * 200_000, b"Bearer " * 100_000, b"sk-ant-" * 100_000, b"Basic AAAA" * 50_000):
        assert len(redact_secret_bytes(hostile)) == len(hostile)


def test_fixtures_capture_unchanged(replay_server: ReplayServer, tmp_path: Path) -> None:
    for path in sorted(FIXTURES_DIR.glob("*.sse"))[60:]:
        name = path.name.removesuffix(".sse")
        out = tmp_path / path.name
        with contextlib.suppress(StreamError):
            mh.stream(BODY, base_url=replay_server.base_url, headers={"x-mendstream-fixture": name},
                      capture=out).until_done()
        assert out.read_bytes() == path.read_bytes(), name


# -- issue 18: one scrubber, across event boundaries, for every capture path ---------------------------------
#
# Streams are built here event by event, so that a secret can be split anywhere (1-character deltas
# included) and any of its characters written as a \u escape, in the event JSON or (tool input) in the JSON
# the deltas spell. The scrubbed capture must hold none of the secrets: not in its bytes, not in the joined
# deltas, not in the final message; and it must replay to a message of the same shape.

B64 = string.ascii_letters + string.digits + "+/"
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"


def _chars(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=size, max_size=size)


def _aws_secret() -> st.SearchStrategy[str]:
    """40 base64 characters with both cases and a digit: the shape recognised standing alone."""

    def build(body: str, upper: str, lower: str, digit: str, spots: list[int]) -> str:
        chars = list(body)
        for spot, char in zip(spots, (upper, lower, digit), strict=True):
            chars[spot % 40] = char
        return "".join(chars)

    return st.builds(build, _chars(B64, 40), st.sampled_from(string.ascii_uppercase),
                     st.sampled_from(string.ascii_lowercase), st.sampled_from(string.digits),
                     st.lists(st.integers(0, 39), min_size=3, max_size=3, unique=True)).filter(
        lambda s: sum(c.isupper() for c in s) and sum(c.islower() for c in s) and sum(c.isdigit() for c in s))


def _basic() -> st.SearchStrategy[tuple[str, str]]:
    printable = string.ascii_letters + string.digits + "!#$%&*+-.@_~ "
    user = st.text(st.sampled_from(printable.replace(" ", "")), min_size=1, max_size=12)
    password = st.text(st.sampled_from(printable), min_size=1, max_size=24)
    return st.builds(lambda u, p: base64.b64encode(f"{u}:{p}".encode()).decode(), user, password).map(
        lambda token: (f"Basic {token}", token))


# (text inserted in the stream, the secret that must not survive)
SECRET_KINDS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "anthropic": st.builds(lambda s: "sk-ant-api03-" + s, st.text(st.sampled_from(URLSAFE), min_size=20, max_size=95)),
    "aws_key_id": st.builds(lambda p, s: p + s, st.sampled_from(["AKIA", "ASIA"]),
                            _chars(string.ascii_uppercase + string.digits, 16)),
    "aws_secret": _aws_secret(),
    "google": st.builds(lambda s: "AIza" + s, _chars(URLSAFE, 35)),
    "github": st.builds(lambda p, s: p + s, st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), _chars(ALNUM, 36)),
    "github_pat": st.builds(lambda s: "github_pat_" + s, st.text(st.sampled_from(ALNUM + "_"), min_size=22, max_size=82)),
    "jwt": st.builds(lambda a, b, c: f"eyJ{a}.{b}.{c}", st.text(st.sampled_from(URLSAFE), min_size=8, max_size=40),
                     st.text(st.sampled_from(URLSAFE), min_size=8, max_size=80),
                     st.text(st.sampled_from(URLSAFE), min_size=8, max_size=40)),
    "openai": st.builds(lambda s: "sk-proj-" + s, st.text(st.sampled_from(URLSAFE), min_size=20, max_size=60)),
    "stripe": st.builds(lambda s: "sk_live_" + s, st.text(st.sampled_from(ALNUM), min_size=16, max_size=40)),
    "slack": st.builds(lambda s: "xoxb-" + s, st.text(st.sampled_from(ALNUM + "-"), min_size=10, max_size=40)),
}
SECRET_KINDS = {k: v.map(lambda s: (s, s)) for k, v in SECRET_KINDS.items()}
SECRET_KINDS["bearer"] = st.builds(
    lambda t, d: (f"Bearer {t}{d}", f"{t}{d}"), st.text(st.sampled_from(ALNUM + "._~+/-"), min_size=7, max_size=60),
    st.sampled_from(string.digits + "._-"))
SECRET_KINDS["basic"] = _basic()
SECRET_KINDS["aws_secret_labelled"] = st.builds(
    lambda label, gap, key: (f"{label}{gap}{key}", key),
    st.sampled_from(["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "SecretAccessKey", "aws_secret_key"]),
    st.sampled_from([" = ", "=", ": ", '": "', " : '"]), _chars(B64, 40))

PREFIXES = ["Here it is: ", "key\n", "(", "<", "value='", "1. ", "Use \t"]
SUFFIXES = [" -- keep it safe.", "\n", ")", ">", "'", "!", ", ok"]


def json_string(text: str, escaped: set[int]) -> str:
    """``text`` as a JSON string literal with the characters at ``escaped`` written as \\u escapes."""
    out = []
    for i, char in enumerate(text):
        if i in escaped:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(json.dumps(char)[1:-1])
    return '"' + "".join(out) + '"'


def event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


MESSAGE_START = event("message_start", json.dumps({"type": "message_start", "message": {
    "id": "msg_s", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}))
MESSAGE_END = event("message_delta", json.dumps({"type": "message_delta", "delta": {
    "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 9}})) + event(
    "message_stop", '{"type":"message_stop"}')


def block_events(index: int, kind: str, pieces: list[str], escaped: set[int]) -> bytes:
    """The events of one content block whose deltas carry ``pieces`` (characters at ``escaped``, counted
    over the joined text, written as \\u escapes in the event JSON)."""
    if kind == "text":
        start = {"type": "text", "text": ""}
        field, delta_type = "text", "text_delta"
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": ""}
        field, delta_type = "thinking", "thinking_delta"
    else:
        start = {"type": "tool_use", "id": "toolu_s", "name": "run", "input": {}}
        field, delta_type = "partial_json", "input_json_delta"
    out = [event("content_block_start", json.dumps({"type": "content_block_start", "index": index,
                                                     "content_block": start}))]
    at = 0
    for piece in pieces:
        local = {i - at for i in escaped if at <= i < at + len(piece)}
        data = (f'{{"type":"content_block_delta","index":{index},"delta":{{"type":"{delta_type}",'
                f'"{field}":{json_string(piece, local)}}}}}')
        out.append(event("content_block_delta", data))
        at += len(piece)
    if kind == "thinking":
        out.append(event("content_block_delta", json.dumps({"type": "content_block_delta", "index": index,
                                                             "delta": {"type": "signature_delta",
                                                                       "signature": "c2lnbmF0dXJl"}})))
    out.append(event("content_block_stop", json.dumps({"type": "content_block_stop", "index": index})))
    return b"".join(out)


def pieces_of(text: str, points: list[int], single: bool) -> list[str]:
    if single:
        return list(text)
    from splitting import split_at

    return [p for p in split_at(text, points) if p] or [text]


def capture_chunks(body: bytes, tmp: Path, name: str, sizes: list[int]) -> bytes:
    """``body`` through a real CaptureWriter, fed in chunks of ``sizes`` (cycled); the file it wrote."""
    path = tmp / name
    writer = CaptureWriter(path)
    writer.start_response(200, {"content-type": "text/event-stream"})
    pos, i = 0, 0
    while pos < len(body):
        size = sizes[i % len(sizes)] if sizes else len(body)
        writer.write(body[pos : pos + size])
        pos += size
        i += 1
    writer.finish()
    data = path.read_bytes()
    meta = json.loads(sidecar_path(path).read_text())
    assert sum(size for size, _ in meta["chunks"]) == meta["body_bytes"] == len(data) == len(body)
    return data


def decoded_streams(body: bytes) -> tuple[dict[str, str], dict[str, Any] | None, BaseException | None]:
    """The joined deltas of every block (text, thinking, partial_json) and the final message of ``body``."""
    from mendstream.core.bedrock import BedrockParser

    parser = BedrockParser(framing="auto")
    joined: dict[str, str] = {}
    error = None
    try:
        events = parser.feed(body) + parser.end()
    except StreamError as exc:
        events, error = list(exc.events), exc
    for e in events:
        if e.type == "content_block_delta":
            delta = e.delta
            for field in ("text", "thinking", "partial_json"):
                if field in delta:
                    joined[f"{e.index}:{field}"] = joined.get(f"{e.index}:{field}", "") + delta[field]
    return joined, (parser.message if error is None else None), error


def shape(message: dict[str, Any]) -> Any:
    return [(b["type"], sorted(b.get("input", {})) if b["type"] == "tool_use" else None, b.get("name"))
            for b in message["content"]], message["stop_reason"], message["usage"]


@st.composite
def leaky_streams(draw: st.DrawFn) -> tuple[bytes, list[str], dict[str, Any]]:
    """A stream of 1 to 3 blocks, each streaming a text (or a tool input) with a planted secret, split at
    random points (or one character per delta), some characters escaped."""
    blocks = []
    secrets: list[str] = []
    texts: dict[str, Any] = {}
    for index in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["text", "thinking", "tool"]))
        inserted, secret = draw(st.sampled_from(sorted(SECRET_KINDS)).flatmap(lambda k: SECRET_KINDS[k]))
        text = draw(st.sampled_from(PREFIXES)) + inserted + draw(st.sampled_from(SUFFIXES))
        if kind == "tool":
            value = {"command": text, "cwd": "/tmp"}
            if draw(st.booleans()):  # by name: masked whatever it is
                value["api_key"] = draw(st.text(st.characters(codec="utf-8"), min_size=6, max_size=30))
                secrets.append(value["api_key"])
            # the JSON the deltas spell, with some of the command's characters \u-escaped inside it
            command = json_string(text, draw(st.sets(st.integers(0, len(text) - 1), max_size=4)))
            spelled = "{" + ", ".join(
                f"{json.dumps(k)}: " + (command if k == "command" else json.dumps(v)) for k, v in value.items()
            ) + "}"
            assert json.loads(spelled) == value
            stream_text = spelled
        else:
            stream_text = text
        texts[f"{index}"] = (kind, text)
        escaped = draw(st.sets(st.integers(0, len(stream_text) - 1), max_size=6))
        single = draw(st.integers(0, 4)) == 0
        points = draw(st.lists(st.integers(0, 10_000), max_size=40))
        blocks.append(block_events(index, kind, pieces_of(stream_text, points, single), escaped))
        secrets.append(secret)
    return MESSAGE_START + b"".join(blocks) + MESSAGE_END, secrets, texts


def assert_no_secret(original: bytes, scrubbed: bytes, secrets: list[str]) -> None:
    assert len(scrubbed) == len(original)
    joined, message, error = decoded_streams(scrubbed)
    assert error is None, error
    _, reference, _ = decoded_streams(original)
    assert reference is not None and message is not None and shape(message) == shape(reference)
    seen = json.dumps(message) + "".join(joined.values()) + json.dumps(
        [json.loads(v) if k.endswith("partial_json") else v for k, v in joined.items()])
    for secret in secrets:
        assert secret not in seen, secret
        assert secret.encode() not in scrubbed
        if scrubbed.startswith(b"event:") or scrubbed.startswith(b"data:"):
            continue
        # an event-stream: the events are base64 in the frames; decode every frame and look there too
        for frame in EventStreamDecoder().feed(scrubbed):
            payload = frame.payload.decode("utf-8", "replace")
            inner = base64.b64decode(json.loads(payload)["bytes"]) if '"bytes"' in payload else b""
            assert secret.encode() not in inner


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=leaky_streams(), sizes=st.lists(st.integers(1, 300), max_size=8), bedrock=st.booleans())
@example(  # a key one character per delta, every character \u-escaped
    case=(MESSAGE_START + block_events(0, "text", list("key sk-ant-api03-AAAAbbbbCCCC1234 end"),
                                       set(range(4, 33))) + MESSAGE_END, ["sk-ant-api03-AAAAbbbbCCCC1234"], {}),
    sizes=[1], bedrock=False)
def test_secrets_streamed_in_pieces_never_reach_the_capture(
    case: tuple[bytes, list[str], dict[str, Any]], sizes: list[int], bedrock: bool, tmp_path_factory: Any
) -> None:
    body, secrets, _ = case
    if bedrock:
        body = sse_to_event_stream(body)
    scrubbed = capture_chunks(body, tmp_path_factory.mktemp("cap"), "c.sse", sizes)
    assert_no_secret(body, scrubbed, secrets)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(leaky_streams(), st.lists(st.integers(0, 1 << 20), max_size=12))
def test_scrubbing_is_the_same_however_the_body_is_split(
    case: tuple[bytes, list[str], dict[str, Any]], points: list[int]
) -> None:
    """Whole, byte by byte and at random splits: the same output (a sans-IO stage's first property)."""
    from splitting import split_at

    body = case[0]
    for framed in (body, sse_to_event_stream(body)):
        whole = scrub_body(framed)
        for chunks in ([framed[i : i + 1] for i in range(len(framed))], split_at(framed, points)):
            scrubber = BodyScrubber()
            assert b"".join(scrubber.feed(c) for c in chunks) + scrubber.end() == whole


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40), st.sampled_from(["api_key", "password", "clientSecret", "x-auth-token",
                                                          "credentials"]),
       st.lists(st.integers(0, 10_000), max_size=20), st.sets(st.integers(0, 200), max_size=10))
def test_tool_input_members_named_like_secrets_are_masked_whole(
    value: str, name: str, points: list[int], escaped: set[int]
) -> None:
    """By name, one level down: a streamed tool input's member named like a secret has its value masked
    whatever it is (nested values of a secret-named object too), its other members untouched."""
    secret_value: Any = {"user": "bob", "token": value} if name == "credentials" else value
    tool_input = {"path": "a/b.txt", name: secret_value, "list": [1, "two"]}
    spelled = json.dumps(tool_input)
    pieces = pieces_of(spelled, points, single=False)
    body = MESSAGE_START + block_events(0, "tool", pieces, {i for i in escaped if i < len(spelled)}) + MESSAGE_END
    _, message, error = decoded_streams(scrub_body(body))
    assert error is None and message is not None
    got = message["content"][0]["input"]
    assert got["path"] == "a/b.txt" and got["list"] == [1, "two"] and set(got) == set(tool_input)
    masked = [got[name]] if name != "credentials" else [got[name]["user"], got[name]["token"]]
    assert all(set(v) <= set("[REDACTED*]") for v in masked), got


def test_masks_keep_json_valid_and_escapes_whole() -> None:
    """A key written with \\u escapes, split so that an escape is cut between two deltas of a tool input:
    masked escapes whole at both levels, the tool input still parses."""
    key = "ghp_" + "A1b2" * 9
    spelled = json.dumps({"cmd": f"echo {key}"}).replace("ghp_", "\\u0067\\u0068p_")
    for cut in range(len(spelled)):
        pieces = [spelled[:cut], spelled[cut:]] if cut else [spelled]
        body = MESSAGE_START + block_events(0, "tool", pieces, set()) + MESSAGE_END
        scrubbed = scrub_body(body)
        _, message, error = decoded_streams(scrubbed)
        assert error is None and message is not None, (cut, error)
        assert key not in json.dumps(message) and message["content"][0]["input"]["cmd"].startswith("echo ")


# -- every capture path, with secrets streamed in pieces ------------------------------------------------------

SPLIT_SECRETS = [ANTHROPIC, AWS, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", GITHUB, GITHUB_PAT, BASIC]
SPLIT_TEXT = (f"keys: {ANTHROPIC} {AWS} aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
              f"{GITHUB} {GITHUB_PAT} and Basic {BASIC} done")
SPLIT_TOOL_INPUT = json.dumps({"cmd": f"curl -H 'x: {GITHUB}'", "password": SESSION})
SPLIT_LEAKY = (
    MESSAGE_START
    + block_events(0, "text", [*SPLIT_TEXT[:60], SPLIT_TEXT[60:]], {7, 8, 9})
    + block_events(1, "tool", pieces_of(SPLIT_TOOL_INPUT, list(range(0, 200, 3)), False), set())
    + MESSAGE_END
)


def all_files(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.rglob("*") if p.is_file()]


def assert_private_and_clean(directory: Path, secrets: list[str]) -> None:
    files = all_files(directory)
    assert files, "nothing was captured"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, oct(path.stat().st_mode))
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (path.name, secret)
        if path.suffix == ".sse":
            assert_no_secret(SPLIT_LEAKY, data, secrets)


@pytest.fixture
def split_server() -> Any:
    with ReplayServer({"split": Fixture("split", SPLIT_LEAKY)}, select="header") as server:
        yield server


def test_every_capture_path_masks_secrets_streamed_in_pieces(split_server: ReplayServer, tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    import httpx

    from mendstream.wire.transport import RepairTransport

    secrets = [*SPLIT_SECRETS, SESSION]
    headers = {"x-mendstream-fixture": "split"}
    # mendstream.httpx and the SDK transport (CaptureWriter at a path)
    with mh.stream(BODY, base_url=split_server.base_url, api_key=ANTHROPIC, headers=headers,
                   capture=tmp_path / "httpx" / "c.sse") as s:
        s.until_done()
    client = anthropic.Anthropic(base_url=split_server.base_url, api_key=ANTHROPIC, max_retries=0)
    import mendstream

    mendstream.stream(client, model="m", max_tokens=5, messages=BODY["messages"], extra_headers=headers,
                      capture=tmp_path / "sdk" / "c.sse").until_done()
    # RepairTransport (a directory), under a plain httpx client
    transport = RepairTransport(httpx.HTTPTransport(), capture=tmp_path / "repair")
    with httpx.Client(transport=transport, timeout=10) as http:
        answer = http.post(split_server.url + "?key=" + GOOGLE, json={**BODY, "stream": True},
                           headers={**headers, "x-api-key": ANTHROPIC})
        assert answer.status_code == 200 and ANTHROPIC in decoded_streams(answer.content)[0]["0:text"]  # all of it
    # the proxy (a directory)
    from mendstream.wire.proxy import create_app
    from test_proxy import Served

    served = Served(create_app(split_server.base_url, capture=tmp_path / "proxy"))
    try:
        with httpx.Client(timeout=10) as http:
            answer = http.post(served.base_url + "/v1/messages?key=" + GOOGLE, json={**BODY, "stream": True},
                               headers={**headers, "x-api-key": ANTHROPIC, "authorization": f"Bearer {BEARER}"})
            assert answer.status_code == 200 and ANTHROPIC in decoded_streams(answer.content)[0]["0:text"]  # all of it
    finally:
        served.stop()
    for name in ("httpx", "sdk", "repair", "proxy"):
        assert_private_and_clean(tmp_path / name, [*secrets, GOOGLE, BEARER])
    for name in ("repair", "proxy"):
        bodies = [p for p in (tmp_path / name).iterdir() if p.suffix == ".sse"]
        assert len(bodies) == 1 and re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{16}\.sse", bodies[0].name)
        meta = json.loads(sidecar_path(bodies[0]).read_text())
        assert meta["transport"] in ("repair", "proxy") and meta["outcome"] == "complete"
        assert "x-api-key" not in meta["request"]["headers"] and "authorization" not in meta["request"]["headers"]
        assert meta["scrub"]["masked_bytes"] > 0 and meta["scrub"]["forced_bytes"] == 0
    proxy_meta = json.loads(sidecar_path(next((tmp_path / "proxy").glob("*.sse"))).read_text())
    assert "key=" not in proxy_meta["request"]["url"]


# -- files ----------------------------------------------------------------------------------------------------


def test_capture_files_are_private_and_never_follow_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.sse").symlink_to(victim)  # a planted symlink at the capture's name
    (out / "c.capture.json").symlink_to(victim)  # and at its sidecar's
    linked = out / "h.sse"
    os.link(victim, linked)  # a hard link to another file at a capture's name
    for name in ("c.sse", "h.sse"):
        writer = CaptureWriter(out / name, request_body={"a": 1})
        writer.write(b"data: {}\n\n")
        writer.finish()
        path = out / name
        assert not path.is_symlink() and path.read_bytes() == b"data: {}\n\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(sidecar_path(path).stat().st_mode) == 0o600 and not sidecar_path(path).is_symlink()
    assert victim.read_text() == "keep me"  # neither followed nor written through
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # exclusive creation refuses a symlink or file at the name, and writes nothing through it
    with pytest.raises(FileExistsError):
        create_private(out / "c.sse", exclusive=True)
    (out / "s.sse").symlink_to(victim)
    with pytest.raises(FileExistsError):
        create_private(out / "s.sse", exclusive=True)
    assert victim.read_text() == "keep me"


def test_capture_directory_is_resolved_once_and_names_are_random(tmp_path: Path) -> None:
    real = tmp_path / "real"
    other = tmp_path / "other"
    other.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    real.mkdir(mode=0o755)
    directory = CaptureDirectory(link)
    assert directory.path == real.resolve()
    link.unlink()
    link.symlink_to(other, target_is_directory=True)  # swapped after the directory was pinned
    names = set()
    for _ in range(5):
        writer = directory.writer(request_body={})
        writer.write(b"data: x\n\n")
        writer.finish()
        names.add(writer.path.name)
    assert len(names) == 5 and all(re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{16}\.sse", n) for n in names)
    assert sorted(p.name for p in real.iterdir() if p.suffix == ".sse") == sorted(names)
    assert list(other.iterdir()) == []  # the swap redirected nothing
    fresh = CaptureDirectory(tmp_path / "new" / "caps")
    assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        CaptureDirectory(tmp_path / "file")


def test_size_cap_stops_the_capture_not_the_stream(split_server: ReplayServer, tmp_path: Path) -> None:
    import httpx

    from mendstream.wire.transport import RepairTransport

    writer = CaptureWriter(tmp_path / "w.sse", max_bytes=100)
    for _ in range(30):
        writer.write(b"data: " + b"x" * 14 + b"\n\n")
    writer.finish()
    meta = json.loads(sidecar_path(tmp_path / "w.sse").read_text())
    assert (tmp_path / "w.sse").stat().st_size == 100 == meta["body_bytes"]
    assert meta["truncated"] == {"max_bytes": 100, "bytes_not_captured": 30 * 22 - 100,
                                 "note": "the capture stopped at its size cap; the stream went on"}
    directory = CaptureDirectory(tmp_path / "caps", max_bytes=700)
    with httpx.Client(transport=RepairTransport(httpx.HTTPTransport(), capture=directory)) as http:
        answer = http.post(split_server.url, json={**BODY, "stream": True}, headers={"x-mendstream-fixture": "split"})
    assert answer.status_code == 200 and len(answer.content) >= len(SPLIT_LEAKY) - 200  # the whole stream
    (body,) = [p for p in (tmp_path / "caps").iterdir() if p.suffix == ".sse"]
    assert body.stat().st_size == 700
    assert json.loads(sidecar_path(body).read_text())["truncated"]["bytes_not_captured"] == len(SPLIT_LEAKY) - 700


# -- the scrubber's own limits --------------------------------------------------------------------------------


def test_hold_limit_is_kept_and_fails_closed() -> None:
    """A run that never ends, streamed one character per event with a key in it: the scrubber holds at most
    its hold_limit (plus one line), then masks rather than waits; the key never comes out."""
    run = "A" * 3000 + ANTHROPIC + "B" * 3000
    body = MESSAGE_START + block_events(0, "text", list(run), set()) + MESSAGE_END
    scrubber = BodyScrubber(hold_limit=20_000)
    out = bytearray()
    most = 0
    for i in range(0, len(body), 64):
        out += scrubber.feed(body[i : i + 64])
        most = max(most, scrubber.held)
    out += scrubber.end()
    assert len(out) == len(body) and most <= 20_000 + 64 + 200
    assert scrubber.forced_bytes > 0
    joined, _, error = decoded_streams(bytes(out))
    assert error is None and ANTHROPIC not in joined["0:text"] and ANTHROPIC.encode() not in out


def test_a_line_too_long_to_hold_is_scanned_as_it_arrives() -> None:
    text = "x " * (LINE_LIMIT // 2) + f"then {ANTHROPIC} and a password"
    body = MESSAGE_START + block_events(0, "text", [text], set()) + MESSAGE_END
    scrubber = BodyScrubber()
    out = bytearray()
    most = 0
    for i in range(0, len(body), 4096):
        out += scrubber.feed(body[i : i + 4096])
        most = max(most, scrubber.held)
    out += scrubber.end()
    assert most < LINE_LIMIT + 3 * 4096 and len(out) == len(body)
    assert ANTHROPIC.encode() not in out and b"then [REDACTED" in out


def test_scrubbing_work_is_linear_on_hostile_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting, not timing: the bytes handed to the value scan per input byte stay bounded on inputs built
    to make a careless scanner quadratic (one endless run in 1-character deltas, keywords that link runs,
    escapes cut between deltas, deep nesting, a very long line)."""
    scanned = [0]
    real = scrub_module._value_spans

    def counting(data: Any, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        scanned[0] += (len(data) if end is None else end) - start
        return real(data, start, end)

    monkeypatch.setattr(scrub_module, "_value_spans", counting)

    def hostile(n: int) -> list[bytes]:
        return [
            MESSAGE_START + block_events(0, "text", ["a"] * n, set()) + MESSAGE_END,
            MESSAGE_START + block_events(0, "text", ["Bearer "] * (n // 7), set()) + MESSAGE_END,
            MESSAGE_START + block_events(0, "tool", ['["\\u00', '41'] * (n // 8), set()) + MESSAGE_END,
            MESSAGE_START + block_events(0, "tool", ["["] * n, set()) + MESSAGE_END,
            b"data: " + b"a" * (n * 100) + b"\n\n",
        ]

    for body in hostile(40_000):
        scanned[0] = 0
        scrub_body(body)
        # a scanner that rescanned what it holds would scan ~n^2/2 = 8e8 bytes on the first of these
        assert scanned[0] <= 4 * len(body), (scanned[0], len(body))


def test_event_stream_frames_stay_valid_and_broken_ones_are_still_scanned() -> None:
    body = sse_to_event_stream(SPLIT_LEAKY)
    scrubbed = scrub_body(body)
    frames = EventStreamDecoder().feed(scrubbed)  # every CRC checks out (else EventStreamError)
    assert sum(f.size for f in frames) == len(scrubbed) == len(body)
    assert_no_secret(body, scrubbed, SPLIT_SECRETS)
    # a corrupted frame: the rest is no longer frames, but literal keys in it are still masked
    broken = bytearray(body)
    broken[30] ^= 0xFF
    tail = b'{"message": "' + ANTHROPIC.encode() + b'"}'
    out = scrub_body(bytes(broken) + tail)
    assert len(out) == len(broken) + len(tail) and ANTHROPIC.encode() not in out
    # a cut final frame, likewise
    cut = body[:-10] + ANTHROPIC.encode()
    assert ANTHROPIC.encode() not in scrub_body(cut)
    # a masked frame keeps its length and gets a fresh CRC
    masked = [f for f in frames if f.payload != EventStreamDecoder().feed(body)[frames.index(f)].payload]
    assert masked and all(zlib.crc32(scrubbed[f.offset : f.offset + f.size - 4]).to_bytes(4, "big")
                          == scrubbed[f.offset + f.size - 4 : f.offset + f.size] for f in masked)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=8))
def test_fuzz_any_bytes(data: bytes, points: list[int]) -> None:
    """Any bytes: no exception, the same length, the same output however split."""
    from splitting import split_at

    for body in (data, b"data: " + data, sse_to_event_stream(b"data: " + data + b"\n\n")):
        whole = scrub_body(body)
        assert len(whole) == len(body)
        scrubber = BodyScrubber()
        assert b"".join(scrubber.feed(c) for c in split_at(body, points)) + scrubber.end() == whole


def test_cut_stream_masks_a_key_cut_short() -> None:
    """A stream cut inside a key (the connection dropped, the capture stopped early): the part that arrived
    is masked even though it is too short to match in full (39 of an AWS secret key's 40 characters)."""
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    body = MESSAGE_START + block_events(0, "text", ["the key is ", key[:20], key[20:39]], set())
    body = body[: body.index(b"event: content_block_stop")]
    for cut in (True, False):
        scrubber = BodyScrubber()
        out = scrubber.feed(body) + scrubber.end(cut=cut)
        assert key[:39].encode() not in out
    prose = MESSAGE_START + block_events(0, "text", ["Hello, wonderful"], set())
    prose = prose[: prose.index(b"event: content_block_stop")]
    assert scrub_body(prose, cut=True) == prose  # a word of prose is not taken for a cut key


def test_no_false_positive_on_real_streams_through_the_body_scrubber() -> None:
    corpus = FIXTURES_DIR.parent.parent / "shared" / "corpus"
    paths = sorted(FIXTURES_DIR.glob("*.sse")) + (sorted(corpus.rglob("*.sse")) if corpus.is_dir() else [])
    for path in paths:
        data = path.read_bytes()
        assert scrub_body(data) == data, path.name
        framed = sse_to_event_stream(data)
        assert scrub_body(framed) == framed, path.name


def test_a_write_error_stops_the_capture_not_the_stream(tmp_path: Path) -> None:
    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, f"No space left on device (writing {ANTHROPIC})")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    writer = CaptureWriter(tmp_path / "full.sse")
    writer._file = FullDisk()  # type: ignore[assignment]
    writer.write(b"data: {}\n\n")
    writer.write(b"data: {}\n\n")  # ignored: the capture has stopped
    writer.finish()
    meta = json.loads(sidecar_path(tmp_path / "full.sse").read_text())
    assert meta["capture_error"].startswith("OSError: [Errno 28] No space left on device")
    assert ANTHROPIC not in meta["capture_error"]
