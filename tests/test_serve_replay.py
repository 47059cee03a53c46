# `mendstream serve` and `mendstream replay` as a new user meets them (issue 20): serve without a directory
# serves the bundled fixtures, replay takes a bundled fixture's name, both refuse the same files that cannot be
# a stream (one shared check), serve's log names the fault it injected into each response, and replay's output
# is labelled part by part while stdout stays JSON a program can read.
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mendstream.cli import main
from mendstream.errors import FixtureError
from mendstream.recording.fixtures import Fixture, load_fixtures, not_sse_reason
from mendstream.testing import FIXTURES, ReplayServer, parse_fault_spec
from mendstream.testing.faults import (
    Cut,
    ErrorEvent,
    HTTPError,
    RandomMix,
    Schedule,
    Stall,
    Trickle,
    Unchanged,
    describe_fault,
)

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}

NOT_STREAMS = [
    (b"", "it is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "it looks like a binary file"),
    (b'{"type": "message", "content": []}', "it looks like JSON"),
    (b"\xef\xbb\xbf  [1, 2, 3]\n", "it looks like JSON"),
    (b"hello there\n", "it has no 'data:' line"),
    (b"event: ping\n\n" * 3, "it has no 'data:' line"),
]


@pytest.mark.parametrize(("content", "reason"), NOT_STREAMS, ids=[r for _, r in NOT_STREAMS])
def test_serve_and_replay_refuse_the_same_files(tmp_path: Path, content: bytes, reason: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.sse"
    path.write_bytes(content)
    (tmp_path / "ok.sse").write_bytes((FIXTURES / "text_basic.sse").read_bytes())
    expected = f"{path} is not an SSE stream: {reason}"
    assert main(["replay", str(path)]) == 2
    assert expected in capsys.readouterr().err
    with pytest.raises(FixtureError, match="is not an SSE stream") as refused:
        ReplayServer(tmp_path)
    assert str(refused.value).startswith(expected)
    assert refused.value.path == str(path)
    with pytest.raises(FixtureError, match="is not an SSE stream"):
        load_fixtures([path])
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2  # refused before listening
    assert capsys.readouterr().err.startswith(f"mendstream serve: {expected}")


def test_what_is_not_a_stream_is_still_served(tmp_path: Path) -> None:
    """An error answer (its JSON body under a status sidecar), an aborted capture that received nothing, and a
    captured Bedrock event-stream body are fixtures, not broken streams."""
    from mendstream.core.bedrock import sse_to_event_stream

    (tmp_path / "e529.sse").write_bytes(b'{"type": "error", "error": {"type": "overloaded_error"}}')
    (tmp_path / "e529.capture.json").write_text(json.dumps({"response": {"status": 529}}))
    (tmp_path / "json200.sse").write_bytes(b'{"id": "msg_1"}')
    (tmp_path / "json200.capture.json").write_text(
        json.dumps({"response": {"status": 200, "headers": {"content-type": "application/json"}}}))
    (tmp_path / "aborted.sse").write_bytes(b"")
    (tmp_path / "aborted.capture.json").write_text(json.dumps({"outcome": "error"}))
    body = sse_to_event_stream((FIXTURES / "text_basic.sse").read_bytes())
    (tmp_path / "bedrock.sse").write_bytes(body)
    assert not_sse_reason(body) is None
    names = sorted(f.name for f in load_fixtures(tmp_path))
    assert names == ["aborted", "bedrock", "e529", "json200"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"data: {}\n", b"event: x\n", b"\n", b": c\n", b"{", b"\x00", b"da", b"ta:"]),
             max_size=20).map(b"".join),
))
def test_the_check_is_one_for_bytes_and_files(content: bytes) -> None:
    """Bytes in memory, a file read in 1 MiB pieces, and a fixture loaded from it get one verdict."""
    import tempfile

    reason = not_sse_reason(content)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.sse"
        path.write_bytes(content)
        assert not_sse_reason(path) == reason
        try:
            Fixture.from_path(path)
        except FixtureError as exc:
            assert reason is not None and str(exc) == f"{path} is not an SSE stream: {reason}"
        else:
            assert reason is None
    assert (reason is None) == (_decodes_an_event(content) or _event_stream(content))


def _decodes_an_event(content: bytes) -> bool:
    """Whether the core's SSE decoder dispatches an event from ``content`` (a last one without its blank line
    included): what makes a body a stream."""
    from mendstream.core.sse import SSEDecoder
    from mendstream.errors import BufferLimitError

    decoder = SSEDecoder()
    try:
        if decoder.feed(content):
            return True
        decoder.end()
    except BufferLimitError:
        return True
    return decoder.unfinished_event is not None


def _event_stream(content: bytes) -> bool:
    from mendstream.core.eventstream import looks_like_event_stream

    return len(content) >= 12 and looks_like_event_stream(content[:12])


def test_data_split_across_the_read_size_is_found(tmp_path: Path) -> None:
    from mendstream.recording import fixtures

    for cut in range(1, 5):  # a "data:" line straddling the 1 MiB boundary at every position
        content = b": " + b"x" * (fixtures._READ_SIZE - cut - 3) + b"\n" + b"data: {}\n\n"
        path = tmp_path / f"{cut}.sse"
        path.write_bytes(content)
        assert not_sse_reason(path) is None


# -- serve without a directory, replay by name ------------------------------------------------------------


class Served:
    """`mendstream serve` in its own process; its stderr read as it comes, so a test can wait for a log line
    (a response's line is written after its last byte, which the client may read first)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mendstream", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline()
        assert line.startswith("base_url: http://127.0.0.1:"), line + self.log
        self.base_url = line.split(": ", 1)[1].strip()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def requests(self, count: int, timeout: float = 30) -> list[str]:
        """The first ``count`` request lines of the log, waiting for them at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.lines) if line.startswith(("POST ", "GET "))]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str) -> Served:
        started.append(Served(*args))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def test_serve_without_a_directory_serves_the_bundled_fixtures(serve: Any) -> None:
    anthropic = pytest.importorskip("anthropic")
    served = serve()
    client = anthropic.Anthropic(base_url=served.base_url, api_key="test", max_retries=0)
    with client, client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                        extra_headers={"x-mendstream-fixture": "text_basic"}) as stream:
        text = stream.get_final_text()
    assert text == "".join(b["text"] for b in json.loads((FIXTURES / "text_basic.expected.json").read_text())
                           ["message"]["content"])
    [line] = served.requests(1)
    assert line.startswith("POST /v1/messages text_basic 200 ")
    assert f"serving {len(list(FIXTURES.glob('*.sse')))} fixtures from the bundled fixtures" in served.log


def test_the_serve_log_names_the_fault_of_each_response(serve: Any) -> None:
    import httpx

    spec = "status(code=529,retry_after=1);error(after_events=3);ok;cut(in=tool);trickle(bytes=64,delay=0)"
    served = serve("--fault", spec)
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=served.base_url) as client:
        for _ in range(6):
            with contextlib.suppress(httpx.RemoteProtocolError):  # the cut
                client.post("/v1/messages", json=body, headers={"x-mendstream-fixture": "tool_use_parallel"})
    lines = served.requests(6)
    assert len(lines) == 6, served.log
    assert lines[0].endswith(" fault=status(code=529,retry_after=1)") and " 529 " in lines[0]
    assert lines[1].endswith(" fault=error(type=overloaded_error,after_events=3)")
    assert "fault=" not in lines[2] and "fault=" not in lines[5]  # ok, and past the schedule: unchanged
    assert lines[3].endswith(" fault=cut(in=tool)")
    assert lines[4].endswith(" fault=trickle(bytes=64,delay=0)")
    assert f"faults: {spec}" in served.log


def test_a_fault_that_does_not_apply_is_not_logged() -> None:
    """An error event cannot be injected into an error answer: the record says no fault."""
    error = b'{"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}'
    fixtures = {"bad": Fixture("bad", error, status=400, headers=(("content-type", "application/json"),))}
    with ReplayServer(fixtures, faults=parse_fault_spec("error")) as server:
        import httpx

        httpx.post(server.url, json={"model": "m", "max_tokens": 5, "messages": []})
        assert server.requests[-1].status == 400 and server.requests[-1].fault is None


def test_the_url_of_a_server_not_started_is_a_usage_error() -> None:
    """Before start() there is no bound port: base_url/url name the mistake instead of giving ``:0``."""
    from mendstream import UsageError

    for server in (ReplayServer(FIXTURES), ReplayServer(FIXTURES, port=8765)):
        for name in ("base_url", "url"):
            with pytest.raises(UsageError, match=r"not started.*context manager.*start\(\)"):
                getattr(server, name)
    with ReplayServer(FIXTURES) as started:
        assert started.port != 0 and started.base_url == f"http://127.0.0.1:{started.port}"
        assert started.url == started.base_url + "/v1/messages"
    assert started.url.endswith(f":{started.port}/v1/messages")  # still readable once stopped


PLANS = [
    ErrorEvent(), ErrorEvent("api_error", after_events=2), ErrorEvent(after_bytes=100, message="x y"), Cut(after_bytes=7),
    Cut(after_events=2), Cut(in_tool_input=True), Stall(2.5), Stall(1, ping_every=0.25, cut=True), Stall(3, headers=True),
    Trickle(), Trickle(chunk_bytes=3, delay=0.5), HTTPError(), HTTPError(429, retry_after=2, should_retry=False),
    HTTPError(500, retry_after_ms=10, error_type="api_error"),
]


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_describe_fault_reads_back_as_the_same_plan(plan: Any) -> None:
    text = describe_fault(plan, 0)
    assert text is not None and parse_fault_spec(text) == plan


def test_describe_fault_resolves_schedules_and_mixes() -> None:
    schedule = Schedule((None, Cut(after_events=1), Unchanged()), then=ErrorEvent())
    assert [describe_fault(schedule, i) for i in range(5)] == [
        None, "cut(after_events=1)", None, "error(type=overloaded_error)", "error(type=overloaded_error)"]
    mix = parse_fault_spec("mix(seed=3):0.3*error+0.3*status(code=503)")
    assert isinstance(mix, RandomMix)
    for ordinal in range(50):
        picked = mix.pick(ordinal)
        assert describe_fault(mix, ordinal) == (None if picked is None else describe_fault(picked, 0))

    class Custom:
        def apply(self, ordinal: int, response: Any, /) -> Any:
            return response

    assert describe_fault(Custom(), 0).startswith("<")  # type: ignore[union-attr]


# -- replay ---------------------------------------------------------------------------------------------


def test_replay_takes_a_bundled_fixture_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("text_basic", "text_basic.sse"):
        assert main(["replay", name, "--no-events", "--compact"]) == 0
        out = capsys.readouterr().out
        assert json.loads(out) == json.loads((FIXTURES / "text_basic.expected.json").read_text())["message"]
    (tmp_path / "text_basic.sse").write_bytes(b"data: {}\n\n")  # a file of that name wins over the bundled one
    assert main(["replay", "text_basic.sse", "--no-events"]) == 1
    capsys.readouterr()
    assert main(["replay", "no_such_fixture"]) == 2
    assert "no such file" in capsys.readouterr().err


def parts(out: str) -> list[Any]:
    """stdout as the JSON documents it holds, in order (what a program reading it sees)."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while pos < len(out):
        if out[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(out, pos)
        docs.append(doc)
    return docs


@pytest.mark.parametrize("compact", [False, True])
def test_replay_labels_its_parts_on_stderr(compact: bool, capsys: pytest.CaptureFixture[str]) -> None:
    name = "fault_control_chars_in_event_json"
    flags = ["--compact"] if compact else []
    assert main(["replay", name, "--repairs", *flags]) == 0
    captured = capsys.readouterr()
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    docs = parts(captured.out)
    events, message, repairs = docs[:-2], docs[-2], docs[-1]
    assert all("type" in e for e in events) and events[-1]["type"] == "message_stop"
    assert message == expected["message"]
    assert [r["kind"] for r in repairs["repairs"]] == expected["repairs"]
    assert captured.err.splitlines() == [
        "== events (one JSON object per line)", "== message", f"== repairs ({len(expected['repairs'])})"]
    assert main(["replay", name, "--no-events"]) == 0
    captured = capsys.readouterr()
    assert parts(captured.out) == [expected["message"]] and captured.err == "== message\n"


def test_replay_labels_survive_interleaving_in_one_stream(tmp_path: Path) -> None:
    """Through one pipe (stdout and stderr merged, as in a terminal), each label precedes its part."""
    result = subprocess.run([sys.executable, "-m", "mendstream", "replay", "text_basic", "--repairs"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, timeout=60)
    lines = result.stdout.splitlines()
    labels = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert [lines[i] for i in labels] == ["== events (one JSON object per line)", "== message", "== repairs (0)"]
    assert labels[0] == 0
    assert json.loads(lines[labels[1] - 1])["type"] == "message_stop"  # the last event, just before the label
    assert json.loads("\n".join(lines[labels[1] + 1 : labels[2]]))["type"] == "message"
    assert json.loads("\n".join(lines[labels[2] + 1 :])) == {"repairs": []}


def test_replay_of_a_cut_stream_labels_the_partial_message(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "truncated_eof_in_text_block", "--no-events", "--repairs", "--compact"]) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0].startswith("mendstream replay: ") and "IncompleteStreamError" in err[0]
    assert err[1:] == ["== partial message (the stream did not complete)", "== repairs (0)"]
    snapshot = json.loads((FIXTURES / "truncated_eof_in_text_block.expected.json").read_text())["error"]["snapshot"]
    assert parts(captured.out) == [snapshot, {"repairs": []}]
