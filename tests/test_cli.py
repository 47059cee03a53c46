# The command line: --help on every subcommand, replay output and exit statuses, helpful errors for missing
# files and keys, capture against an in-process replay server, and `serve` as a real subprocess that the
# official SDK streams from.
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mendstream
from conftest import BASIC_MESSAGE, BASIC_SSE, FIXTURES_DIR, TRUNCATED_SSE
from mendstream.cli import main
from mendstream.recording.capture import sidecar_path
from mendstream.testing import ReplayServer

SRC = str(Path(__file__).resolve().parent.parent / "src")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mendstream", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_help_on_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("replay", "serve", "capture"):
        assert command in result.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "usage: mendstream " + command in sub.stdout
    assert main([]) == 2


def test_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "basic.sse"
    path.write_bytes(BASIC_SSE)
    assert main(["replay", str(path), "--repairs"]) == 0
    out = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in out[:9]]
    assert [e["type"] for e in events][:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert events[3] == {"type": "text", "text": "Hello"}
    rest = "\n".join(out[9:])
    decoder = json.JSONDecoder()
    message, end = decoder.raw_decode(rest)
    assert message == BASIC_MESSAGE
    assert json.loads(rest[end:]) == {"repairs": []}
    assert main(["replay", str(path), "--no-events", "--compact"]) == 0
    assert json.loads(capsys.readouterr().out) == BASIC_MESSAGE


def test_replay_repairs_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(FIXTURES_DIR / "fault_leading_bom.sse"), "--no-events", "--repairs"]) == 0
    assert '"kind": "bom"' in capsys.readouterr().out
    path = tmp_path / "cut.sse"
    path.write_bytes(TRUNCATED_SSE)
    assert main(["replay", str(path), "--no-events", "--compact"]) == 1
    captured = capsys.readouterr()
    assert "IncompleteStreamError" in captured.err
    assert json.loads(captured.out)["content"][0]["text"] == "Hello world"


def test_missing_files_are_usage_errors(tmp_path: Path) -> None:
    result = run("replay", str(tmp_path / "nope.sse"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = run("serve", str(tmp_path / "nodir"))
    assert result.returncode == 2 and "no such fixture directory" in result.stderr
    result = run("capture", str(tmp_path / "body.json"))
    assert result.returncode == 2 and "no such request body file" in result.stderr


def test_capture_needs_a_key(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "m", "max_tokens": 5, "messages": []}))
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "mendstream", "capture", str(body)], capture_output=True,
                            text=True, env={**env, "PYTHONPATH": SRC}, timeout=60)
    assert result.returncode == 2 and "ANTHROPIC_API_KEY is not set" in result.stderr
    body.write_text("{not json")
    assert run("capture", str(body)).returncode == 2


def test_capture_from_the_replay_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "req.json"
    body.write_text(json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    monkeypatch.setenv("MY_KEY", "sk-ant-cli-secret-123456")
    with ReplayServer({"basic": BASIC_SSE}) as server:
        status = main(["capture", str(body), "--base-url", server.base_url, "--api-key-env", "MY_KEY", "--print"])
        assert server.requests[-1].headers["x-api-key"] == "sk-ant-cli-secret-123456"
    assert status == 0
    assert "Hello world" in capsys.readouterr().out
    out = tmp_path / "req.sse"
    assert out.read_bytes() == BASIC_SSE
    assert b"sk-ant-cli" not in sidecar_path(out).read_bytes()
    assert main(["capture", str(body), "-o", str(tmp_path / "x.sse"), "--base-url", "http://127.0.0.1:9",
                 "--no-auth"]) == 1


def test_serve_subprocess_with_the_official_sdk(tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    (tmp_path / "basic.sse").write_bytes(BASIC_SSE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mendstream", "serve", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("base_url: http://127.0.0.1:")
        client = anthropic.Anthropic(base_url=line.split(": ", 1)[1].strip(), api_key="k", max_retries=0)
        with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
            assert s.get_final_text() == "Hello world"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_fault_spec_breaks_requests_in_order(tmp_path: Path) -> None:
    """`serve --fault 'status(code=529);error(...)'`: request 1 gets a 529, request 2 an overloaded event
    mid-stream, request 3 the fixture as recorded (later requests are unchanged)."""
    anthropic = pytest.importorskip("anthropic")
    (tmp_path / "basic.sse").write_bytes(BASIC_SSE)
    spec = "status(code=529);error(type=overloaded_error,after_events=3)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mendstream", "serve", str(tmp_path), "--port", "0", "--quiet", "--fault", spec],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("base_url: http://127.0.0.1:")
        client = anthropic.Anthropic(base_url=line.split(": ", 1)[1].strip(), api_key="k", max_retries=0)
        params: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(anthropic.APIStatusError) as status_error:
            client.messages.create(**params)
        assert status_error.value.status_code == 529
        with pytest.raises(mendstream.APIStreamError) as event_error, mendstream.stream(client, **params) as s:
            s.until_done()
        assert event_error.value.error_type == "overloaded_error"
        with mendstream.stream(client, **params) as s:
            assert s.get_final_text() == "Hello world"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
