# Capture end to end: record from the replay server through every transport, check the bytes are exact, the
# capture replays to the identical message (directly and when served again with its own chunking), and the
# sidecar holds chunk sizes, timings, status, headers and the request body with every secret removed.
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

import mendstream.httpx as mh
from conftest import BASIC_SSE, FIXTURES_DIR, TRUNCATED_SSE, expected, fixture_bytes
from mendstream import replay
from mendstream.errors import IncompleteStreamError, StreamError
from mendstream.recording.capture import (
    CaptureWriter,
    is_secret_name,
    redact_secret_values,
    scrub_headers,
    scrub_json,
    scrub_url,
    sidecar_path,
)
from mendstream.testing import Fixture, ReplayServer, load_fixtures

SECRET = "sk-ant-api03-SECRETSECRETSECRET"
BODY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
    "metadata": {"user_id": "u1", "api_key": SECRET},
}


def test_secret_names() -> None:
    for name in ("x-api-key", "Authorization", "proxy-authorization", "cookie", "Set-Cookie", "apiKey",
                 "AWS_SECRET_ACCESS_KEY", "x-amz-security-token", "password", "client_secret", "access_key",
                 "x-goog-api-key", "refresh_token", "credentials"):
        assert is_secret_name(name), name
    for name in ("max_tokens", "input_tokens", "key", "model", "content-type", "anthropic-version",
                 "cache_control", "signature", "request-id", "keyboard"):
        assert not is_secret_name(name), name


def test_scrubbing() -> None:
    headers = scrub_headers([("X-Api-Key", SECRET), ("Cookie", "a=b"), ("Accept", "x"), ("X-Note", f"k={SECRET}")])
    assert headers == {"accept": "x", "x-note": "k=[REDACTED]"}
    body = scrub_json({"a": [{"password": "p", "text": f"Bearer {SECRET}"}], "key": "kept", "n": 1.5})
    assert body == {"a": [{"text": "[REDACTED]"}], "key": "kept", "n": 1.5}
    # Issue 12 §4 changed this: `key` in a URL query is a credential (Google API keys travel as ?key=).
    assert scrub_url("https://user:pw@h.test/v1/messages?key=1&api_key=2&beta=true") == (
        "https://h.test/v1/messages?beta=true"
    )
    assert redact_secret_values("no secrets here") == "no secrets here"
    assert sidecar_path("a/b.sse") == Path("a/b.capture.json")
    assert sidecar_path("a/b.bin") == Path("a/b.bin.capture.json")


def assert_no_secret(path: Path) -> None:
    for p in (path, sidecar_path(path)):
        assert SECRET.encode() not in p.read_bytes(), p
        assert b"sk-ant-test-key" not in p.read_bytes(), p


def check_sidecar(path: Path, source: bytes, *, transport: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(sidecar_path(path).read_text())
    assert meta["format"] == "mendstream-capture/1"
    assert meta["transport"] == transport
    assert meta["outcome"] == "complete"
    assert meta["response"]["status"] == 200
    assert meta["response"]["headers"]["content-type"].startswith("text/event-stream")
    assert meta["body_bytes"] == len(source) == sum(size for size, _ in meta["chunks"])
    times = [t for _, t in meta["chunks"]]
    assert times == sorted(times)
    assert meta["request"]["body"]["metadata"] == {"user_id": "u1"}
    assert meta["request"]["body"]["stream"] is True
    for name in ("x-api-key", "authorization", "cookie"):
        assert name not in meta["request"]["headers"]
    return meta


@pytest.mark.parametrize("name", ["text_basic", "tool_use_parallel", "fault_control_chars_in_event_json"])
def test_capture_through_the_httpx_transport(replay_server: ReplayServer, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.sse"
    headers = {"x-mendstream-fixture": name, "cookie": "session=abc", "x-trace": SECRET}
    with mh.stream(BODY, base_url=replay_server.base_url, api_key=SECRET, headers=headers, capture=out) as s:
        s.until_done()
        live = s.message
    assert out.read_bytes() == fixture_bytes(name)
    assert live == expected(name)["message"]
    check_sidecar(out, fixture_bytes(name), transport="httpx")
    assert_no_secret(out)
    with replay(out) as again:
        again.until_done()
        assert again.message == live


def test_capture_through_the_sdk_transport_and_serve_it_again(replay_server: ReplayServer, tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    from mendstream.transports.sdk import stream

    client = anthropic.Anthropic(base_url=replay_server.base_url, api_key="sk-ant-test-key", max_retries=0)
    out = tmp_path / "captured.sse"
    s = stream(
        client, model="m", max_tokens=5, messages=BODY["messages"], metadata=BODY["metadata"],
        extra_headers={"x-mendstream-fixture": "tool_use_small_fragments", "authorization": f"Bearer {SECRET}"},
        capture=out,
    )
    live = dict(s.get_final_message().to_dict())
    assert out.read_bytes() == fixture_bytes("tool_use_small_fragments")
    meta = check_sidecar(out, out.read_bytes(), transport="sdk")
    assert meta["request"]["url"].endswith("/v1/messages")
    assert_no_secret(out)
    # the capture, served again, replays with its recorded chunking to the identical message
    fixture = load_fixtures([out])[0]
    assert [len(c) for c, _ in fixture.iter_chunks()] == [size for size, _ in meta["chunks"]]
    with ReplayServer(tmp_path, select="body") as again:
        client2 = anthropic.Anthropic(base_url=again.base_url, api_key="k", max_retries=0)
        s2 = stream(client2, model="m", max_tokens=5, messages=BODY["messages"], metadata=BODY["metadata"])
        assert s2.get_final_message().to_dict() == live
        assert again.requests[-1].fixture == "captured"


async def test_async_capture(replay_server: ReplayServer, tmp_path: Path) -> None:
    out = tmp_path / "a.sse"
    headers = {"x-mendstream-fixture": "thinking_signature_then_text"}
    async with mh.astream(BODY, base_url=replay_server.base_url, api_key=SECRET, headers=headers, capture=out) as s:
        await s.until_done()
    assert out.read_bytes() == fixture_bytes("thinking_signature_then_text")
    check_sidecar(out, out.read_bytes(), transport="httpx")
    assert_no_secret(out)


def test_capture_closed_early_and_error_responses(tmp_path: Path) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    fixtures = {
        "basic": Fixture("basic", BASIC_SSE),
        "e429": Fixture("e429", json.dumps(error).encode(), status=429, headers=(("content-type", "application/json"),)),
    }
    with ReplayServer(fixtures, select="header") as server:
        early = tmp_path / "early.sse"
        with mh.stream(BODY, base_url=server.base_url, headers={"x-mendstream-fixture": "basic"}, capture=early) as s:
            next(iter(s))
        meta = json.loads(sidecar_path(early).read_text())
        assert meta["outcome"] == "closed"
        assert BASIC_SSE.startswith(early.read_bytes())
        failed = tmp_path / "e429.sse"
        with pytest.raises(mh.HTTPStatusError):
            mh.stream(BODY, base_url=server.base_url, headers={"x-mendstream-fixture": "e429"}, capture=failed)
        assert json.loads(failed.read_bytes()) == error
        assert json.loads(sidecar_path(failed).read_text())["response"]["status"] == 429
        # served again, the capture answers 429 as before
        with ReplayServer(tmp_path / "e429.sse") as again, pytest.raises(mh.HTTPStatusError) as info:
            mh.stream(BODY, base_url=again.base_url)
        assert info.value.status_code == 429


def test_capture_of_a_dropped_connection(tmp_path: Path) -> None:
    (tmp_path / "cut.sse").write_bytes(TRUNCATED_SSE)
    (tmp_path / "cut.capture.json").write_text(json.dumps({"outcome": "error"}))
    out = tmp_path / "out" / "cut.sse"
    with ReplayServer(tmp_path) as server, pytest.raises(IncompleteStreamError):
        mh.stream(BODY, base_url=server.base_url, capture=out).until_done()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["outcome"] == "error" and "RemoteProtocolError" in meta["error"]
    assert out.read_bytes() == TRUNCATED_SSE


def test_writer_is_idempotent_and_writes_partial_bytes_immediately(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "w.sse", request_body={"token": "t"}, request_headers={"a": "b"})
    writer.start_response(200, {"content-type": "text/event-stream"})
    writer.write(b"event: x\n")
    assert (tmp_path / "w.sse").read_bytes() == b"event: x\n"
    writer.finish()
    writer.finish("error")
    meta = json.loads((tmp_path / "w.capture.json").read_text())
    assert meta["outcome"] == "complete" and meta["request"]["body"] == {}


def test_every_repository_fixture_round_trips_through_capture(replay_server: ReplayServer, tmp_path: Path) -> None:
    for path in sorted(FIXTURES_DIR.glob("*.sse"))[:60]:
        name = path.name.removesuffix(".sse")
        out = tmp_path / path.name
        with contextlib.suppress(StreamError):
            mh.stream(BODY, base_url=replay_server.base_url, headers={"x-mendstream-fixture": name},
                      capture=out).until_done()
        assert out.read_bytes() == path.read_bytes(), name  # whole, even when the stream failed
