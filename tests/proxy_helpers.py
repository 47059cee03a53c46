"""What the proxy tests share: a uvicorn server in a thread (the proxy served as `mendstream proxy` serves it,
or any fake upstream), `mendstream proxy` as a real process, raw sockets, a real redis-server on a free port.
Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from mendstream.wire.proxy import ProxyApp
from mendstream.wire.serving import uvicorn_config

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``app`` on uvicorn in a daemon thread on a free 127.0.0.1 port: a ProxyApp as ``mendstream proxy``
    serves it (limited protocol), any other ASGI app (a fake upstream) on plain uvicorn."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.app = app
        if isinstance(app, ProxyApp):
            config = uvicorn_config(app)
        else:
            config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection to 127.0.0.1:``port`` and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the process exited with {proc.returncode}") from None
            assert time.monotonic() < deadline, f"nothing listening on {port}"
            time.sleep(0.05)


class ProxyProcess:
    """``mendstream proxy`` as a real process on a free port; its output goes to a file (``log()``)."""

    def __init__(self, args: Sequence[str], *, nofile: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stderr = tempfile.NamedTemporaryFile(prefix="proxy-", suffix=".log", delete=False)  # noqa: SIM115
        full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
        if "PROMETHEUS_MULTIPROC_DIR" not in (env or {}):
            full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)

        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mendstream", "proxy", "--port", str(self.port), *args],
            stdout=self._stderr, stderr=subprocess.STDOUT, env=full_env, preexec_fn=limit,
        )
        wait_listening(self.port, self.proc)

    def log(self) -> str:
        return Path(self._stderr.name).read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._stderr.name).unlink(missing_ok=True)


class RedisServer:
    """A real redis-server on a free port, without persistence; skipped by callers when missing."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.kill()
