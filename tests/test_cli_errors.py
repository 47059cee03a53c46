# The CLI as a new user meets it (issue 8 §3): every bad input listed there gives one line on stderr in the
# form `mendstream <command>: ...`, naming the file and what is wrong, with the documented exit status and no
# traceback (--debug shows one); --version; `serve` logs one line per request unless --quiet; automatic
# selection serves clean fixtures first; and a seeded fuzz of random files through every subcommand never
# shows a traceback or an internal error.
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import BASIC_SSE, FIXTURES_DIR, TRUNCATED_SSE
from mendstream import __version__
from mendstream.cli import main
from mendstream.errors import UsageError
from mendstream.testing import ReplayServer
from test_cache_payloads import agent_turn_payload

SRC = str(Path(__file__).resolve().parent.parent / "src")
EXIT_CODES = {0, 1, 2}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 2) -> str:
    """Run ``argv``; assert the exit status and one clean error line; return that line."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = " ".join(a for a in argv[:2] if not a.startswith("-") and a in {"replay", "serve", "capture",
                                                                              "cache", "plan", "simulate"})
    assert lines[0].startswith(f"mendstream {command}: "), (command, lines[0])
    return lines[0]


def session_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def fixture_dir(tmp_path: Path, sidecar: Any = None) -> Path:
    d = tmp_path / "fixtures"
    d.mkdir(exist_ok=True)
    (d / "basic.sse").write_bytes(BASIC_SSE)
    if sidecar is not None:
        (d / "basic.capture.json").write_text(json.dumps(sidecar))
    return d


def never_serve(self: ReplayServer, on_ready: Any = None) -> None:
    raise AssertionError("the server started although its input was bad")


def test_serve_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReplayServer, "serve_forever", never_serve)
    d = fixture_dir(tmp_path)
    line = one_line_error(capsys, ["serve", str(d), "--port", "99999"])
    assert "port must be from 0 to 65535" in line
    line = one_line_error(capsys, ["serve", str(d / "basic.sse")])
    assert str(d / "basic.sse") in line and "not a directory" in line
    line = one_line_error(capsys, ["serve", str(d), "--speed", "0"])
    assert "speed" in line
    for sidecar, what in (([1, 2], "JSON list"), ({"chunks": "nope"}, "'chunks'"),
                          ({"response": {"status": "ok"}}, "response.status"), ({"response": []}, "'response'"),
                          ({"chunks": ""}, "'chunks'"), ({"response": {"headers": []}}, "response.headers")):
        d = fixture_dir(tmp_path, sidecar)
        line = one_line_error(capsys, ["serve", str(d)])
        assert str(d / "basic.capture.json") in line and what in line, line
    (d / "basic.capture.json").write_bytes(b"\xff\x00")
    assert "not JSON" in one_line_error(capsys, ["serve", str(d)])


def test_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = fixture_dir(tmp_path)
    with ReplayServer(d) as running:
        line = one_line_error(capsys, ["serve", str(d), "--port", str(running.port), "--quiet"])
    assert f"cannot listen on 127.0.0.1:{running.port}" in line


def test_replay_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is a directory" in one_line_error(capsys, ["replay", str(tmp_path)])
    for content, hint in ((b"", "it is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "binary"),
                          (b'{"type": "message", "content": []}', "looks like JSON"),
                          (b"  [1, 2, 3]\n", "looks like JSON"), (b"hello there\n", "no 'data:' line"),
                          # "data:" that no decoder reads as a data line
                          (b'{"note": "data: x"}\n', "looks like JSON"), (b": data: x\nid: 1\n\n", "no 'data:' line")):
        path = tmp_path / "x.sse"
        path.write_bytes(content)
        line = one_line_error(capsys, ["replay", str(path)])
        assert f"{path} is not an SSE stream" in line and hint in line, line
    path = tmp_path / "cut.sse"
    path.write_bytes(TRUNCATED_SSE)
    assert main(["replay", str(path), "--no-events"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mendstream replay: {path}: IncompleteStreamError") and "Traceback" not in err


def test_capture_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "m", "max_tokens": 5, "messages": []}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = one_line_error(capsys, ["capture", str(body), "-o", str(out_dir), "--no-auth"])
    assert f"{out_dir} is a directory" in line
    line = one_line_error(capsys, ["capture", str(body), "-o", str(tmp_path / "no" / "x.sse"), "--no-auth"])
    assert "no such directory" in line
    body.write_bytes(b"\xff\xfe binary")
    assert "not UTF-8" in one_line_error(capsys, ["capture", str(body), "--no-auth"])
    assert "is a directory" in one_line_error(capsys, ["capture", str(tmp_path), "--no-auth"])


def test_cache_plan_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "b.json"
    binary.write_bytes(bytes(range(256)))
    line = one_line_error(capsys, ["cache", "plan", str(binary)])
    assert str(binary) in line and "not UTF-8" in line
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    assert str(deep) in one_line_error(capsys, ["cache", "plan", str(deep)])
    payload = tmp_path / "p.json"
    payload.write_text(json.dumps(agent_turn_payload(turns=1)))

    def rejects(*args: Any, **kwargs: Any) -> Any:
        raise UsageError("cache_control must be an object; got 'yes' at messages[0].content[0]")

    # the library's UsageError (e.g. for cache_control: "yes") reaches the user as one line naming the file
    monkeypatch.setattr("mendstream.cli.cache.plan_cache_breakpoints", rejects)
    line = one_line_error(capsys, ["cache", "plan", str(payload)])
    assert line == f"mendstream cache plan: {payload}: cache_control must be an object; got 'yes' at messages[0].content[0]"


def test_cache_simulate_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    payload = agent_turn_payload(turns=1)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\xff" * 100)
    assert "not UTF-8" in one_line_error(capsys, ["cache", "simulate", str(binary)])
    noon = session_file(tmp_path / "noon.jsonl", [{"payload": payload, "timestamp": 1},
                                                  {"payload": payload, "timestamp": "noon"}])
    line = one_line_error(capsys, ["cache", "simulate", str(noon)])
    assert str(noon) in line and "line 2" in line and "timestamp" in line
    many = session_file(tmp_path / "many.jsonl", [{"payload": payload, "usage": {"input_tokens": "many"}}])
    line = one_line_error(capsys, ["cache", "simulate", str(many)])
    assert "line 1" in line and "usage.input_tokens" in line
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(payload, indent=2))
    assert "JSON Lines" in one_line_error(capsys, ["cache", "simulate", str(pretty)])
    good = session_file(tmp_path / "s.jsonl", [{"payload": payload, "timestamp": 10 * i} for i in range(3)])
    line = one_line_error(capsys, ["cache", "simulate", str(good), "--png", str(tmp_path / "chart.txt")])
    assert ".png" in line
    line = one_line_error(capsys, ["cache", "simulate", str(good), "--png", str(tmp_path / "no" / "c.png")])
    assert "no such directory" in line
    # without matplotlib: exit 2 before simulating (nothing on stdout)
    monkeypatch.setattr("mendstream.cli.cache.importlib.util.find_spec", lambda name: None)
    assert main(["cache", "simulate", str(good), "--png", str(tmp_path / "c.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "needs matplotlib" in captured.err


def test_png_into_a_directory_reports_the_real_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    good = session_file(tmp_path / "s.jsonl", [{"payload": agent_turn_payload(turns=1), "timestamp": 10 * i}
                                               for i in range(3)])
    charts = tmp_path / "charts"
    charts.mkdir()
    assert main(["cache", "simulate", str(good), "--png", str(charts)]) == 0
    written = charts / "s.png"
    assert f"chart written to {written}" in capsys.readouterr().out
    assert written.read_bytes()[:4] == b"\x89PNG"


def test_version_and_debug(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse's version action exits, as --help does
        from mendstream.cli import build_parser

        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mendstream {__version__}"
    assert main(["--version"]) == 0
    capsys.readouterr()
    assert main(["--debug", "replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mendstream replay: ")


def start_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "mendstream", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout is not None
    line = read_line(proc.stdout)
    assert line.startswith("base_url: "), line
    return proc, line.split(": ", 1)[1].strip()


def read_line(stream: Any, timeout: float = 30.0) -> str:
    """One line from a pipe, or "" after ``timeout`` seconds (never hangs the test)."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def test_serve_logs_one_line_per_request(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    d = fixture_dir(tmp_path)
    proc, base_url = start_serve(str(d))
    try:
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stream": True}
        assert httpx.post(base_url + "/v1/messages", json=body, timeout=10).content == BASIC_SSE
        httpx.get(base_url + "/v1/messages", timeout=10)
        assert proc.stderr is not None
        lines = [read_line(proc.stderr) for _ in range(5)]
        assert any(line.startswith("selection: by the x-mendstream-fixture header") for line in lines)
        log = [line for line in lines if re.match(r"(POST|GET) /v1/messages ", line)]
        assert re.fullmatch(rf"POST /v1/messages basic 200 {len(BASIC_SSE)} B \d+\.\d ms\n", log[0]), log
        assert re.fullmatch(r"GET /v1/messages - 405 \d+ B \d+\.\d ms\n", log[1]), log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    proc, base_url = start_serve(str(d), "--quiet")
    try:
        httpx.post(base_url + "/v1/messages", json={"stream": True}, timeout=10)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "/v1/messages" not in err and "Traceback" not in err


def test_quick_start_against_serve_fixtures_gets_clean_streams() -> None:
    anthropic = pytest.importorskip("anthropic")
    with ReplayServer(FIXTURES_DIR) as server:
        rotation = server.selector.rotation
        assert rotation and all(f.is_clean() for f in rotation)
        client = anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0)
        for _ in range(len(rotation) + 2):  # past the end: cycles
            with client.messages.stream(model="m", max_tokens=64,
                                        messages=[{"role": "user", "content": "Hello"}]) as stream:
                message = stream.get_final_message()
            assert message.stop_reason is not None
        served = [r.fixture or "" for r in server.requests]
    assert served[0] == rotation[0].name
    assert not any(name.startswith(("api_error", "fault_", "truncated_")) for name in served)


# -- fuzz ----------------------------------------------------------------------------------------------------


def random_content(rng: random.Random) -> bytes:
    payload = agent_turn_payload(turns=rng.randint(1, 3))
    choices = [
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: BASIC_SSE[: rng.randint(0, len(BASIC_SSE))],
        lambda: bytes(b ^ (rng.random() < 0.05) * rng.randint(1, 255) for b in BASIC_SSE),
        lambda: json.dumps(rng.choice([None, 1, "x", [1], {"a": 1}, {"messages": 5}, {"messages": [5]},
                                       payload, {"payload": payload, "timestamp": rng.choice([1, "x", None])},
                                       {"payload": payload, "usage": {"input_tokens": rng.choice([1, -1, "x"])}},
                                       {"messages": [{"role": "user", "content": 5}], "tools": "x"}])).encode(),
        lambda: b"\n".join(json.dumps(rng.choice([payload, {"payload": payload, "timestamp": rng.random()},
                                                  [1], "s"])).encode() for _ in range(rng.randint(1, 4))),
        lambda: json.dumps(payload, indent=2).encode(),
        lambda: b"[" * rng.randint(1, 5000),
        lambda: b"\xef\xbb\xbf" + rng.randbytes(20),
    ]
    return rng.choice(choices)()


def random_sidecar(rng: random.Random) -> bytes:
    return json.dumps(rng.choice([
        [1], "x", None, {"chunks": "nope"}, {"chunks": [[1]]}, {"chunks": [["a", 1]]}, {"response": 5},
        {"response": {"status": rng.choice([200, 0, "x", 999, True])}}, {"response": {"headers": [1]}},
        {"request": "x"}, {"outcome": "error"}, {"chunks": [[len(BASIC_SSE), 0]]},
    ])).encode()


def test_fuzz_every_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # serve: everything up to listening (loading, validating); serving itself is tested over real sockets
    monkeypatch.setattr(ReplayServer, "serve_forever", lambda self, on_ready=None: None)
    rng = random.Random(20261124)
    statuses: set[int] = set()
    for i in range(60):
        f = tmp_path / f"f{i}.dat"
        f.write_bytes(random_content(rng))
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "x.sse").write_bytes(random_content(rng))
        (d / "x.capture.json").write_bytes(random_sidecar(rng) if rng.random() < 0.8 else random_content(rng))
        for argv in (["replay", str(f)], ["replay", str(f), "--repairs", "--snapshots"],
                     ["cache", "plan", str(f)], ["cache", "simulate", str(f)],
                     ["cache", "simulate", str(f), "--strategy", "planner"],
                     ["capture", str(f), "--no-auth", "--base-url", "http://127.0.0.1:9", "-o", str(d / "c.sse")],
                     ["serve", str(d)], ["serve", str(f)]):
            status = main(argv)
            err = capsys.readouterr().err
            assert status in EXIT_CODES, (argv, status, err)
            assert "Traceback" not in err and "internal error" not in err, (argv, err)
            if status == 2:
                assert err.startswith("mendstream "), err
            statuses.add(status)
    assert statuses == EXIT_CODES  # the fuzz reached success, failure and usage errors


def test_serve_rejects_an_unknown_fault_spec(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mendstream", "serve", str(FIXTURES_DIR), "--port", "0", "--fault", "bogus(x=1)"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "mendstream serve: --fault 'bogus(x=1)': unknown fault" in result.stderr
    assert "SPEC" in result.stderr


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("mix(seed=" + "9" * 5000 + "):0.5*error", "mix seed takes at most 19 digits"),
        ("stall(seconds=5,ping=0.000001)", "at most 10000"),
    ],
)
def test_serve_names_the_limit_of_a_fault_spec(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, spec: str, named: str
) -> None:
    """Issue 18: a 5,000-digit seed was "internal error", ping=0 an endless loop: now one line naming the limit."""
    monkeypatch.setattr(ReplayServer, "serve_forever", never_serve)
    line = one_line_error(capsys, ["serve", str(FIXTURES_DIR), "--fault", spec])
    assert named in line and "internal error" not in line


def test_a_benchmark_given_an_unknown_size_is_a_one_line_usage_error() -> None:
    """`bench_parse.py --sizes 1KB` was a KeyError traceback: an unknown size is argparse's error naming the sizes."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_parse.py"
    if not script.is_file():
        pytest.skip("benchmarks/ is not here")
    result = subprocess.run([sys.executable, str(script), "--sizes", "nonsense"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("bench_parse.py: error: argument --sizes: unknown size 'nonsense'"), errors
    assert "1k, 2k, 10k, 100k, 1m" in errors[0]
    # the spellings its help and docstring use are read as the table's names
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_parse_under_test", script)
    assert spec is not None and spec.loader is not None
    bench_parse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_parse)
    assert bench_parse.size_names("1KB,1 kb,2K,100k,1 MB") == ["1k", "1k", "2k", "100k", "1m"]
