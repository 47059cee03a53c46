# Every program in examples/ runs offline against the bundled fixtures and does what it says (issue 20: the
# examples must not rot). Each runs in its own process, as a user runs it, with this environment's
# `mendstream` on PATH.
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mendstream.testing import FIXTURES, ReplayServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = str(Path(sys.executable).parent)
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
       "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"),
       "PYTHONWARNINGS": "error::DeprecationWarning:__main__"}  # an example using a name that moved fails


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_every_example_is_listed_and_tested() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    programs = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh"))
    assert programs, "no examples"
    tested = Path(__file__).read_text()
    for name in programs:
        assert f"({name})" in listed, f"{name} is not in examples/README.md"
        assert f'"{name}"' in tested, f"{name} is not run by this file"


def test_quickstart_against_the_replay_server() -> None:
    with ReplayServer(FIXTURES) as server:
        env = {**ENV, "ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "test"}
        out = run(sys.executable, str(EXAMPLES / "quickstart.py"), env=env).stdout
        served = server.requests[-1].fixture
    assert served is not None and out.endswith("[]\n")  # the clean fixtures need no repair
    assert server.selector.named(served) is not None


def test_quickstart_is_the_readme_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    block = readme[readme.index("```python\n", start) + len("```python\n") : readme.index("```\n", start + 20)]
    assert block.strip() in (EXAMPLES / "quickstart.py").read_text()


def test_retry_continue() -> None:
    out = run(sys.executable, str(EXAMPLES / "retry_continue.py")).stdout
    lines = out.splitlines()
    assert lines[0].startswith('on_partial="continue": 30/30 turns complete')
    assert lines[1].startswith('on_partial="restart": 30/30 turns complete')
    assert "'continue':" in lines[0] and "'continue'" not in lines[1]


def test_repair_transport_agent() -> None:
    pytest.importorskip("pydantic_ai")
    pytest.importorskip("httpx2")
    out = run(sys.executable, str(EXAMPLES / "repair_transport_agent.py")).stdout
    assert "without RepairTransport: " in out and "(unexpected)" not in out
    assert "with RepairTransport: 'Column A\\tColumn B" in out


def test_proxy_curl() -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs bash and curl")
    pytest.importorskip("uvicorn")
    out = run("bash", str(EXAMPLES / "proxy_curl.sh")).stdout
    direct, proxied = out.split("== through the proxy:")
    assert "Invalid control character" in direct
    assert "every event is valid JSON" in proxied and '"control_characters": 4' in proxied


def test_cache_planning() -> None:
    out = run(sys.executable, str(EXAMPLES / "cache_planning.py")).stdout
    assert "markers as sent: 6, as planned: 4" in out
    assert "CachePlanner: 7 requests, never more than 4 markers" in out


def test_agent_offline_under_pytest() -> None:
    out = run(sys.executable, "-m", "pytest", str(EXAMPLES / "test_agent_offline.py"), "-p", "no:cacheprovider").stdout
    assert "5 passed" in out
