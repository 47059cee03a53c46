"""`mendstream proxy` on the command line: every bad option is one line and exit status 2 (never "internal
error"), a taken port too, every option has help text, --debug is accepted after the subcommand, and the
proxy stops cleanly on SIGINT and SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

from mendstream.cli import build_parser
from proxy_helpers import ROOT, ProxyProcess, free_port


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "mendstream", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_port_out_of_range() -> None:
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--port", "99999"), "65535")


def test_capture_naming_a_file(tmp_path: Path) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("x")
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--capture", str(existing),
                           "--port", str(free_port())), "not a directory")


def test_capture_where_nothing_can_be_created() -> None:
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--capture", "/proc/nope",
                           "--port", str(free_port())), "/proc/nope")


def test_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--port", str(port))
    one_clear_line(result, f"127.0.0.1:{port}", "in use")


def test_bad_state_and_worker_options() -> None:
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--cache", "planner",
                           "--state", "mysql://x"), "redis://")
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--state", "redis://127.0.0.1:1/0"),
                   "--cache planner")
    one_clear_line(run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--workers", "0"), "at least 1")
    one_clear_line(run_cli("proxy", "--upstream", "ftp://x"), "http:// or https://")


def test_debug_is_accepted_after_the_subcommand_and_shows_the_traceback() -> None:
    result = run_cli("proxy", "--upstream", "ftp://x", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert "mendstream proxy: upstream must be" in result.stderr.splitlines()[-1]
    before = run_cli("--debug", "proxy", "--upstream", "ftp://x")
    assert before.returncode == 2 and "Traceback" in before.stderr


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    proxy = next(action for action in parser._subparsers._group_actions  # type: ignore[union-attr]
                 if hasattr(action, "choices") and "proxy" in action.choices).choices["proxy"]
    for action in proxy._actions:
        assert action.help and action.help.strip(), action.option_strings
    text = run_cli("proxy", "--help").stdout
    for option in ("--workers", "--state", "--metrics", "--max-body-bytes", "--header-timeout", "--host"):
        assert option in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly_on_a_signal(sig: signal.Signals) -> None:
    with ProxyProcess(["--upstream", "http://127.0.0.1:1"]) as proxy:
        proxy.proc.send_signal(sig)
        code = proxy.proc.wait(20)
        log = proxy.log()
    assert code in (0, 130, -signal.SIGTERM), code
    assert "Traceback" not in log
