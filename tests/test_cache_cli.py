# The cache CLI through main(): plan table, simulate report, PNG chart, help and input errors (exit 2).
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mendstream.cli.cache import main
from test_cache_payloads import agent_turn_payload


def write_session(path: Path, turns: int = 4) -> None:
    lines = []
    for t in range(1, turns + 1):
        lines.append(json.dumps({"payload": agent_turn_payload(turns=t), "timestamp": 10 * t}))
    path.write_text("\n".join(lines) + "\n")


def test_plan_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "p.json"
    payload.write_text(json.dumps(agent_turn_payload(turns=2)))
    out_file = tmp_path / "out.json"
    assert main(["cache", "plan", str(payload), "--strategy", "pi", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "~prefix tok" in out and "last user block" in out and "strategy pi" in out
    assert "cache_control" in out_file.read_text()


def test_simulate_prints_the_report_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = tmp_path / "s.jsonl"
    write_session(session)
    png = tmp_path / "chart.png"
    pytest.importorskip("matplotlib")
    assert main(["cache", "simulate", str(session), "--strategy", "default", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "relative cost" in out and "ceiling" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["cache", "simulate", str(session), "--lookback", "1", "--strategy", "planner"]) == 0


@pytest.mark.parametrize("argv", [["cache", "--help"], ["cache", "plan", "--help"], ["cache", "simulate", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage:" in capsys.readouterr().out


def test_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "plan", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["cache", "plan", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    bad.write_text("[1]")
    assert main(["cache", "plan", str(bad)]) == 2
    assert "Messages API request body" in capsys.readouterr().err
    assert main(["cache", "simulate", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["cache", "simulate", str(tmp_path / "none.jsonl")]) == 2
    assert main(["cache", "simulate", str(bad), "--lookback", "0"]) == 2
    assert main(["cache", "plan", str(bad), "--strategy", "magic"]) == 2
    assert "invalid choice" in capsys.readouterr().err
