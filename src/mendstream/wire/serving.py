# Serving the proxy (ProxyApp) on uvicorn, with the limits uvicorn does not enforce by itself, and with
# several worker processes. Imported only when a proxy is served: importing mendstream.wire.proxy needs
# no uvicorn.
#
# Per connection (ProxyProtocol, a subclass of uvicorn's httptools protocol, or of its h11 protocol when
# httptools is not installed):
# - a deadline for a request's head (header_timeout, from connecting or from a further request's first
#   byte): uvicorn only times out idle keep-alive connections, so a client that never sends, or trickles a
#   header byte at a time, would hold its connection for ever. 408 if part of a head came, else a close.
# - 431 once a head grows past max_header_bytes (counted before the parser sees it: httptools has no bound).
# - a cap on open connections (ProxyLimits.connection_cap(), below the file limit): a connection over it
#   takes the place of the connection idle longest between two requests (as nginx reuses keep-alive
#   connections when it runs short), else of the one that has waited longest for its first request head,
#   else it is answered 503 and closed. So idle connections can never exhaust the file descriptors that
#   upstream connections need, and a flood of silent or trickling connections only displaces itself.
# - idle keep-alive connections close after keepalive_timeout (uvicorn's timer).
# The body limits and the header count are the application's (wire/proxy.py).
#
# Workers (serve(workers=N)): the parent binds the socket (a taken port is a UsageError: one line, exit 2),
# raises its soft file limit to the hard one (as Go's runtime does), then uvicorn's supervisor starts N
# processes that accept on it; each builds its ProxyApp from the environment (app_from_env). Metrics and
# /mendstream/stats then come from prometheus-client's multiprocess mode: the parent makes a fresh directory
# for it (or empties the one PROMETHEUS_MULTIPROC_DIR names), marks each dead worker's live gauges dead, and
# removes the directory it made when it stops.
from __future__ import annotations

import asyncio
import functools
import glob
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import uvicorn

from mendstream.errors import UsageError
from mendstream.wire.boundary import Survival
from mendstream.wire.proxy import LOGGER, ProxyApp, ProxyLimits, create_app, install_log_filters

__all__ = ["ProxyProtocol", "bind", "raise_file_limit", "serve", "uvicorn_config"]

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


def _raw_error(status: int, error_type: str, message: str) -> bytes:
    """A complete JSON error response for a connection the HTTP parser cannot answer (no request yet)."""
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": f"mendstream proxy: {message}"}})
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, _REASONS[status], len(body)) + body.encode()


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        import httptools  # noqa: F401
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


@functools.lru_cache(maxsize=64)
def _cap(limits: ProxyLimits) -> int:
    return limits.connection_cap()


def _limits_of(app: Any) -> ProxyLimits:
    for _ in range(4):  # through uvicorn's middleware wrappers, if any
        if isinstance(app, ProxyApp):
            return app.limits
        app = getattr(app, "app", None)
    return ProxyLimits()


class _Limited:
    """The per-connection limits (see the module comment), for either of uvicorn's HTTP protocols."""

    limits: ProxyLimits
    cap: int
    # what uvicorn's protocols have (declared for the type checker)
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any
    app: Any

    def _setup(self) -> None:
        self.limits = _limits_of(self.app)
        self.cap = _cap(self.limits)
        self._header_timer: asyncio.TimerHandle | None = None
        self._pending = 0  # bytes received towards the current request head
        self._rejected = False
        self._idle_since: float | None = None  # set while waiting between two requests
        self._head_since: float | None = None  # set while a connection's first request head is awaited

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _make_room(self) -> bool:
        """Close one connection to make room for a new one: the one idle longest between two requests, else
        the one that has waited longest for its request head (silent, or trickling it: a client that means
        it sends its head at once, so a flood of such connections only displaces itself). False if every
        connection is busy with a request."""
        idle = [c for c in self.connections if getattr(c, "_idle_since", None) is not None]
        key = "_idle_since"
        if not idle:
            idle = [c for c in self.connections if getattr(c, "_head_since", None) is not None]
            key = "_head_since"
        if not idle:
            return False
        oldest = min(idle, key=lambda c: getattr(c, key))
        oldest._idle_since = oldest._head_since = None
        oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def _head_timed_out(self) -> None:
        self._header_timer = None
        if not self._waiting_for_head() or self.transport.is_closing():
            return
        if self._pending:
            self.transport.write(_raw_error(408, "timeout_error",
                                            f"request head not received within {self.limits.header_timeout:g} s"))
        self.transport.close()


def _protocol_class() -> type[asyncio.Protocol]:
    base: Any = _base_protocol()

    class ProxyProtocol(_Limited, base):  # type: ignore[misc]
        """uvicorn's HTTP protocol with the proxy's connection limits (see the module comment)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = LOGGER
            self._setup()

        def connection_made(self, transport: asyncio.Transport) -> None:
            if len(self.connections) >= self.cap and not self._make_room():
                self._rejected = True
                self.transport = transport
                transport.write(_raw_error(503, "overloaded_error", f"more than {self.cap} open connections"))
                transport.close()
                LOGGER.warning("connection refused: %d connections open (the cap)", self.cap)
                return
            super().connection_made(transport)
            self._head_since = self.loop.time()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._idle_since = self._head_since = None
            if self._rejected:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected or self.transport.is_closing():
                return
            self._idle_since = None
            if self._waiting_for_head():
                # the head's bytes only (a body may follow in the same read): up to its blank line, if here
                end = data.find(b"\r\n\r\n")
                self._pending += end + 4 if end >= 0 else len(data)
                if self._pending > self.limits.max_header_bytes:
                    self._disarm()
                    self.transport.write(_raw_error(
                        431, "request_too_large", f"request head over {self.limits.max_header_bytes} bytes"))
                    self.transport.close()
                    return
            super().data_received(data)
            if self.transport.is_closing():
                return
            if not self._waiting_for_head():
                self._pending = 0
                self._head_since = None
                self._disarm()
                return
            if self._pending:
                self._arm()

        def on_headers_complete(self) -> None:  # httptools only (h11 hands the app the target as sent)
            super().on_headers_complete()
            url: bytes = getattr(self, "url", b"/")
            if url[:1] != b"/" and "raw_path" in self.scope:
                # uvicorn keeps only the path of an absolute-form target: give the application the target
                # as sent, so that it refuses it (400) instead of quietly serving another host's path
                self.scope["raw_path"] = url.split(b"?", 1)[0]

        def send_400_response(self, msg: str) -> None:
            # a request the HTTP parser refused (a target that is not origin-form, a broken head): in the
            # API's error shape, like every other refusal
            self._disarm()
            self.transport.write(_raw_error(400, "invalid_request_error", f"{msg} (an HTTP/1.1 request with an "
                                            "origin-form target, a path starting with '/', is expected)"))
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._waiting_for_head() and not self._pending:
                self._idle_since = self.loop.time()

    ProxyProtocol.__qualname__ = "ProxyProtocol"  # pickled by reference when workers are spawned
    ProxyProtocol.__module__ = __name__
    return ProxyProtocol


ProxyProtocol: type[asyncio.Protocol] = _protocol_class()


def bind(host: str, port: int, backlog: int = 2048, *, listen: bool = True) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``listen=False``: only bound, to hold or check the address).

    Raises:
        UsageError: the address cannot be used (taken, not this machine's, no permission), in one line.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio disables Nagle (TCP_NODELAY) only on sockets that say they are TCP
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        hint = "; is another proxy running? choose another --port" if exc.errno in (98, 48, 10048) else ""
        raise UsageError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def raise_file_limit(ceiling: int = 65536) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (at most ``ceiling``), as Go's runtime
    does at start; returns the soft limit now in force (1024 when it cannot be read)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return int(soft)
    except (ImportError, OSError, ValueError):
        return 1024


def _log_config(level: str) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = json.loads(json.dumps(LOGGING_CONFIG))
    config["loggers"]["mendstream"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _reuse_port_socket(host: str, port: int, backlog: int, *, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _balanced() -> bool:
    """Whether each worker can listen on its own socket with the kernel spreading connections over them:
    SO_REUSEPORT on Linux (elsewhere it exists without the balancing, or not at all)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class _Supervisor:
    """uvicorn's worker supervisor, plus:

    - on Linux each worker listens on its own SO_REUSEPORT socket, and the kernel spreads new connections
      over them. With one shared socket, a worker that wakes first accepts every connection waiting (an
      asyncio server accepts up to its backlog in one go): a burst of 200 agents' keep-alive connections
      landed on one worker and stayed there while the other idled. The parent holds a bound, not listening,
      socket in the same group meanwhile, so that the port stays ours;
    - the multiprocess metrics directory's upkeep: dead workers' live gauges are marked dead, so
      ``streams_in_progress`` and ``state_store_up`` count only live workers.
    """

    def __init__(self, config: uvicorn.Config, sock: socket.socket | None, metrics_dir: str | None) -> None:
        from uvicorn.supervisors import multiprocess as supervisor_module

        directory = metrics_dir
        base_process = supervisor_module.Process

        class Supervisor(supervisor_module.Multiprocess):
            def keep_subprocess_alive(self) -> None:
                before = {p.pid for p in self.processes}
                super().keep_subprocess_alive()
                dead = before - {p.pid for p in self.processes}
                if directory is not None and dead:
                    from prometheus_client import multiprocess

                    for pid in dead:
                        if pid is not None:
                            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]

        self._module = supervisor_module
        self._base_process = base_process
        self.supervisor = Supervisor(config, sockets=[sock] if sock is not None else [])

    def run(self) -> None:
        if not self.supervisor.sockets:  # each worker binds its own SO_REUSEPORT socket
            self._module.Process = _ReusePortProcess  # type: ignore[misc]
        try:
            self.supervisor.run()
        finally:
            self._module.Process = self._base_process  # type: ignore[misc]


def _worker_process_class() -> type[Any]:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Process

    class ReusePortProcess(Process):
        """A worker that listens on its own SO_REUSEPORT socket (see _Supervisor)."""

        def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
            config = self.config
            try:
                sock = _reuse_port_socket(config.host, config.port, config.backlog, listen=True)
            except OSError as exc:
                LOGGER.error("worker cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
                sys.exit(STARTUP_FAILURE)
            super().target([sock])

    ReusePortProcess.__qualname__ = "_ReusePortProcess"  # pickled by reference when a worker is spawned
    ReusePortProcess.__module__ = __name__
    return ReusePortProcess


_ReusePortProcess = _worker_process_class()


def serve(
    upstream: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    on_started: Any = None,
    **options: Any,
) -> int:
    """Serve the proxy on ``host:port`` until SIGINT or SIGTERM; ``options`` are :func:`create_app`'s.
    With ``workers`` > 1 the options travel to the workers through the environment (see
    :func:`~mendstream.wire.proxy.app_from_env`). Returns 0 after a clean stop.

    Raises:
        UsageError: a bad option (checked before anything is started), or the address cannot be used.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise UsageError(f"workers must be an integer from 1 to 64; got {workers!r}")
    raise_file_limit()
    install_log_filters()
    limits: ProxyLimits = options.get("limits") or ProxyLimits()
    metrics_dir: str | None = None
    made_dir = False
    app = create_app(upstream, **options)  # every option checked here, in this process, before serving
    balanced = workers > 1 and _balanced()
    sock = bind(host, port, listen=not balanced)  # balanced: the workers listen, each on its own socket
    bound = sock.getsockname()
    if workers > 1:  # (after the checks: nothing to clean up when they fail)
        metrics_dir, made_dir = _metrics_directory()
    common = _config_options(limits, log_level=log_level, access_log=access_log)
    if workers > 1 and app.cache == "planner" and not options.get("state"):
        print("mendstream proxy: note: each worker keeps its own planners; share them with --state "
              "redis://HOST:PORT/DB, or a conversation is planned from the part of it each worker saw",
              file=sys.stderr, flush=True)
    shown = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    print(f"mendstream proxy: {shown} -> {app.upstream} (cache {app.cache}, {workers} worker"
          f"{'s' if workers > 1 else ''}, up to {limits.connection_cap()} connections each"
          f"{', state ' + str(options.get('state')) if options.get('state') else ''}"
          f"{', metrics on /metrics' if app.serve_metrics else ''})", file=sys.stderr, flush=True)
    try:
        if workers == 1:
            server = uvicorn.Server(uvicorn.Config(app, **common))
            if on_started is not None:
                on_started(bound)
            server.run(sockets=[sock])
            return 0
        asyncio.run(app.aclose())  # the workers build their own
        _export(upstream, options)
        config = uvicorn.Config("mendstream.wire.proxy:app_from_env", factory=True, workers=workers,
                                host=host, port=bound[1], **common)
        shared: socket.socket | None = sock
        if balanced:
            # the port was free (bind() above); it stays ours through a bound, not listening, member of the
            # SO_REUSEPORT group the workers join
            sock.close()
            sock = _reuse_port_socket(host, bound[1], 0, listen=False)
            shared = None
        if on_started is not None:
            on_started(bound)
        _Supervisor(config, shared, metrics_dir).run()
    finally:
        sock.close()
        if made_dir and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _config_options(limits: ProxyLimits, *, log_level: str, access_log: bool) -> dict[str, Any]:
    return {
        "http": ProxyProtocol,
        "ws": "none",
        "loop": _loop(),
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "access_log": access_log,
        "log_level": log_level,
        "log_config": _log_config(log_level),
        # uvicorn types it as int but hands it to loop.call_later, which takes seconds as a float
        "timeout_keep_alive": limits.keepalive_timeout,
        "timeout_graceful_shutdown": 5,
        # h11's own bound on a buffered head; ours (431) is checked first, after each read
        "h11_max_incomplete_event_size": limits.max_header_bytes + 256 * 1024,
    }


def uvicorn_config(app: ProxyApp, *, log_level: str = "info", access_log: bool = True) -> uvicorn.Config:
    """The uvicorn configuration ``mendstream proxy`` serves ``app`` with (one worker): the limited
    protocol, uvloop when installed, ``app.limits``' idle timeout, no websockets, no proxy headers."""
    return uvicorn.Config(app, **_config_options(app.limits, log_level=log_level, access_log=access_log))


def _metrics_directory() -> tuple[str | None, bool]:
    """The multiprocess metrics directory for the workers: ``PROMETHEUS_MULTIPROC_DIR`` emptied of old
    values, or a fresh private one (``made`` True: removed at the end). None without prometheus-client."""
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        return None, False
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        if not os.path.isdir(given):
            raise UsageError(f"PROMETHEUS_MULTIPROC_DIR={given!r} is not a directory")
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.unlink(stale)
        return given, False
    directory = tempfile.mkdtemp(prefix="mendstream-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory, True


def _export(upstream: str, options: dict[str, Any]) -> None:
    """Put the options into the environment the workers are started with (read by app_from_env)."""
    env = os.environ
    env["MENDSTREAM_UPSTREAM"] = upstream
    env["MENDSTREAM_CACHE"] = str(options.get("cache") or "default")
    for name, key in (("MENDSTREAM_CAPTURE", "capture"), ("MENDSTREAM_STATE", "state"),
                      ("MENDSTREAM_STATS_TOKEN", "stats_token")):
        value = options.get(key)
        if value:
            env[name] = str(value)
        else:
            env.pop(name, None)
    env["MENDSTREAM_METRICS"] = "1" if options.get("metrics") else "0"
    if options.get("coalesce") is not None:
        env["MENDSTREAM_COALESCE"] = repr(float(options["coalesce"]))
    env["MENDSTREAM_STATS"] = "1" if options.get("stats", True) else "0"
    env["MENDSTREAM_SANITIZE"] = "1" if options.get("sanitize") else "0"
    limits = options.get("limits")
    if limits is not None:
        env["MENDSTREAM_LIMITS"] = limits.to_json()
    else:
        env.pop("MENDSTREAM_LIMITS", None)
    if "survival" in options:  # None (off) too: one attempt, no stall bounds
        env["MENDSTREAM_SURVIVAL"] = (options["survival"] or Survival()).to_json()
    else:
        env.pop("MENDSTREAM_SURVIVAL", None)
    logging.getLogger("mendstream.proxy").debug("options exported to the workers' environment")
