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
from pathlib import Path
from typing import Any

import pytest

import mendstream.capture as capture_module
import mendstream.httpx as mh
import mendstream.recording.scrub as scrub_module
from conftest import BASIC_SSE, FIXTURES_DIR
from mendstream.capture import CaptureWriter, redact_secret_bytes, redact_secret_values, scrub_json, sidecar_path
from mendstream.errors import StreamError
from mendstream.server import Fixture, ReplayServer
from mendstream.streaming import replay

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
