# The proxy's metrics in the Prometheus format (prometheus-client, an optional extra), served on /metrics,
# and the human /mendstream/stats assembled from the same numbers. Under `uvicorn --workers N` set
# PROMETHEUS_MULTIPROC_DIR (an empty directory, before the proxy starts): each worker writes its values
# to files there, and whichever worker answers /metrics or /mendstream/stats reads all of them, so both
# show the whole deployment. The proxy calls the recording methods below; nothing here does network I/O.
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from mendstream.errors import UsageError

__all__ = ["METRIC_NAMES", "ProxyMetrics", "path_class"]

#: Every metric family this module exports (the names as scraped: counters without ``_total``).
METRIC_NAMES: Final = (
    "mendstream_requests",
    "mendstream_errors",
    "mendstream_upstream_responses",
    "mendstream_streams",
    "mendstream_streams_in_progress",
    "mendstream_repairs",
    "mendstream_retries",
    "mendstream_stalls",
    "mendstream_time_to_first_byte_seconds",
    "mendstream_stream_duration_seconds",
    "mendstream_tokens",
    "mendstream_bytes",
    "mendstream_state_events",
    "mendstream_state_fallbacks",
    "mendstream_state_store_up",
)

# Time to the upstream's first byte: an LLM answers in 0.3-10 s; the tail matters for alerts.
_TTFB_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
# Whole streams: a short answer takes a second, a long tool call or thinking several minutes.
_DURATION_BUCKETS: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

_PATHS: Final = {
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/complete": "complete",
    "/metrics": "metrics",
    "/mendstream/stats": "stats",
}
_TOKENS: Final = {
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
    "input_tokens": "input",
    "output_tokens": "output",
}
_BYTES: Final = ("client_request", "upstream_request", "upstream_response", "client_response")
_STREAM_OUTCOMES: Final = ("clean", "repaired", "failed")


def path_class(path: str) -> str:
    """A bounded label for a request path (never the path itself: label values must not grow without
    bound): ``messages``, ``count_tokens``, ``complete``, ``models``, ``bedrock``, ``vertex``, ``metrics``,
    ``stats`` or ``other``."""
    known = _PATHS.get(path.rstrip("/") or "/")
    if known is not None:
        return known
    if path.startswith("/v1/models"):
        return "models"
    if path.startswith("/model/"):
        return "bedrock"
    if path.startswith("/v1/projects/"):
        return "vertex"
    return "other"


def _count(value: Any) -> int:
    """A usage number as the API sends it; anything else (a string, a float, a bool, a negative) counts 0."""
    return value if type(value) is int and value > 0 else 0


class ProxyMetrics:
    """The proxy's counters, gauges and histograms, and how to read them back.

    One instance per process. Without ``PROMETHEUS_MULTIPROC_DIR`` the metrics live in a private registry
    (not prometheus-client's global one, so several instances, e.g. in tests, do not collide). With it,
    values go to files in that directory and :meth:`render` / :meth:`stats` aggregate every process's
    files (counters and histograms summed; ``streams_in_progress`` summed over live workers;
    ``state_store_up`` the minimum over live workers). A supervisor should call
    ``prometheus_client.multiprocess.mark_process_dead(pid)`` when a worker exits, and empty the
    directory before the proxy starts.

    Raises:
        UsageError: prometheus-client is not installed, or PROMETHEUS_MULTIPROC_DIR is set but is not a
            directory or was set after prometheus-client was imported (it must be set before the process
            starts).
    """

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client import values
        except ImportError as exc:
            raise UsageError(f"metrics need prometheus-client ({exc}): pip install 'mendstream[metrics]'") from None
        self._prom = prom
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if directory is not None:
            if not os.path.isdir(directory):
                raise UsageError(f"PROMETHEUS_MULTIPROC_DIR={directory!r} is not a directory")
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise UsageError(
                    "PROMETHEUS_MULTIPROC_DIR was set after prometheus-client was imported: set it in the "
                    "environment before the proxy starts"
                )
        self.directory = directory
        # multiprocess: the metric objects only write files; collection reads the files (never a registry
        # holding these objects, which would count this process twice)
        self._registry: Any = None if directory else prom.CollectorRegistry()
        registry = self._registry
        label = ("method", "path", "status")
        self.requests = prom.Counter("mendstream_requests", "Requests answered, by method, path class and status",
                                     label, registry=registry)
        self.errors = prom.Counter("mendstream_errors", "Requests or streams that ended in an error, by kind",
                                   ("kind",), registry=registry)
        self.upstream_responses = prom.Counter(
            "mendstream_upstream_responses", "Upstream responses by status code ('unreachable': no response)",
            ("status",), registry=registry)
        self.streams = prom.Counter("mendstream_streams", "Messages streams relayed, by outcome "
                                    "(clean, repaired, failed)", ("outcome",), registry=registry)
        self.streams_in_progress = prom.Gauge("mendstream_streams_in_progress", "Messages streams being relayed",
                                              registry=registry, multiprocess_mode="livesum")
        self.repairs = prom.Counter("mendstream_repairs", "Repairs applied to streams, by kind", ("kind",),
                                    registry=registry)
        self.retries = prom.Counter("mendstream_retries", "Upstream attempts after the first, by kind "
                                    "(retry: before any content; restart; continuation)", ("kind",),
                                    registry=registry)
        self.stalls = prom.Counter("mendstream_stalls", "Streams that stalled, by kind (idle, progress)",
                                   ("kind",), registry=registry)
        self.ttfb = prom.Histogram("mendstream_time_to_first_byte_seconds",
                                   "Seconds from sending a request upstream to its first response byte",
                                   registry=registry, buckets=_TTFB_BUCKETS)
        self.duration = prom.Histogram("mendstream_stream_duration_seconds",
                                       "Seconds from sending a Messages request upstream to the stream's end",
                                       registry=registry, buckets=_DURATION_BUCKETS)
        self.tokens = prom.Counter("mendstream_tokens", "Tokens from the streams' usage, by kind (cache_read, "
                                   "cache_write, input: uncached input, output)", ("kind",), registry=registry)
        self.bytes = prom.Counter("mendstream_bytes", "Body bytes, by direction (client_request, "
                                  "upstream_request, upstream_response, client_response)", ("direction",),
                                  registry=registry)
        self.state_events = prom.Counter("mendstream_state_events", "Planner state store events (new, memory, "
                                         "restored, discarded, fallback, saved, conflict, degraded, evicted, "
                                         "store_down, store_up)", ("event",), registry=registry)
        self.state_fallbacks = prom.Counter("mendstream_state_fallbacks",
                                            "Requests planned without shared state because the store was "
                                            "unreachable or slow", registry=registry)
        self.state_store_up = prom.Gauge("mendstream_state_store_up", "1 when the planner state store answers "
                                         "(minimum over live workers)", registry=registry,
                                         multiprocess_mode="livemin")
        self.state_store_up.set(1)
        # the bounded label values appear from the start, at 0: an alert on a rate never misses its first event
        for outcome in _STREAM_OUTCOMES:
            self.streams.labels(outcome)
        for kind in _TOKENS.values():
            self.tokens.labels(kind)
        for direction in _BYTES:
            self.bytes.labels(direction)

    # -- recording (the proxy calls these) ----------------------------------------------------------------------

    def request(self, method: str, path: str, status: int) -> None:
        """One request answered with ``status`` (any request, Messages or not, the proxy's own included)."""
        self.requests.labels(method if method in _METHODS else "other", path_class(path), str(status)).inc()

    def error(self, kind: str) -> None:
        """An error the proxy answered or ended a stream with (e.g. ``bad_request``, ``upstream_unreachable``,
        ``stream_error``, ``upstream_cut``); ``kind`` must come from a fixed set the proxy names."""
        self.errors.labels(kind).inc()

    def upstream(self, status: int | None) -> None:
        """The upstream's response status (None: it could not be reached)."""
        self.upstream_responses.labels("unreachable" if status is None else str(status)).inc()

    def first_byte(self, seconds: float) -> None:
        """Time from sending upstream to the first byte of its response."""
        self.ttfb.observe(seconds)

    def stream_started(self) -> None:
        self.streams_in_progress.inc()

    def stream_finished(
        self,
        seconds: float,
        *,
        repairs: Mapping[str, int] | None = None,
        usage: Any = None,
        failed: bool = False,
    ) -> None:
        """A Messages stream ended after ``seconds``: its repairs by kind (``ResponseRewriter.repair_counts``),
        its final usage (the message's ``usage`` dict; non-numbers count 0) and whether it ended in an
        error. Call once per :meth:`stream_started`."""
        self.streams_in_progress.dec()
        self.duration.observe(seconds)
        repaired = False
        for kind, count in (repairs or {}).items():
            if count > 0:
                self.repairs.labels(kind).inc(count)
                repaired = True
        self.streams.labels("failed" if failed else "repaired" if repaired else "clean").inc()
        self.usage(usage)

    def usage(self, usage: Any) -> None:
        """Add a message's ``usage`` to the token counters (safe on any value)."""
        if isinstance(usage, Mapping):
            for field, kind in _TOKENS.items():
                count = _count(usage.get(field))
                if count:
                    self.tokens.labels(kind).inc(count)

    def retry(self, kind: str) -> None:
        """An upstream attempt after the first: ``retry`` (nothing shown yet), ``restart`` or ``continuation``."""
        self.retries.labels(kind).inc()

    def stall(self, kind: str) -> None:
        """A stream stalled: ``idle`` or ``progress`` (as ``StreamStalledError.kind``)."""
        self.stalls.labels(kind).inc()

    def transferred(self, *, client_request: int = 0, upstream_request: int = 0, upstream_response: int = 0,
                    client_response: int = 0) -> None:
        """Body bytes moved; call with whatever is known (e.g. the request sizes before sending, the
        response sizes when the stream ends)."""
        for direction, count in zip(_BYTES, (client_request, upstream_request, upstream_response, client_response),
                                    strict=True):
            if count > 0:
                self.bytes.labels(direction).inc(count)

    def state_event(self, event: str) -> None:
        """The observer for a planner state store (``observer=metrics.state_event``)."""
        self.state_events.labels(event).inc()
        if event == "fallback":
            self.state_fallbacks.inc()
        elif event == "store_down":
            self.state_store_up.set(0)
        elif event == "store_up":
            self.state_store_up.set(1)

    # -- reading ------------------------------------------------------------------------------------------------

    def _collecting_registry(self) -> Any:
        if self.directory is None:
            return self._registry
        from prometheus_client import multiprocess

        registry = self._prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return registry

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` for a ``GET /metrics`` response: every worker's values in multiprocess
        mode, this process's otherwise (the Prometheus text format, version 0.0.4)."""
        return self._prom.generate_latest(self._collecting_registry()), self._prom.CONTENT_TYPE_LATEST

    def stats(self) -> dict[str, Any]:
        """The human ``/mendstream/stats`` totals, from the same values as :meth:`render` (so across workers
        in multiprocess mode): requests (the proxy's own endpoints not counted), errors, repairs by kind,
        streams by outcome, cache usage with the hit ratio, upstream statuses, state store events."""
        totals: dict[str, dict[tuple[str, ...], float]] = {}
        for family in self._collecting_registry().collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = tuple(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
                by = totals.setdefault(sample.name, {})
                by[key] = by.get(key, 0.0) + sample.value

        def by_label(name: str, label: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for key, value in totals.get(name, {}).items():
                labels = dict(item.split("=", 1) for item in key)
                if label in labels and value:
                    out[labels[label]] = out.get(labels[label], 0) + int(value)
            return out

        requests = sum(v for k, v in totals.get("mendstream_requests_total", {}).items()
                       if not {"path=metrics", "path=stats"} & set(k))
        tokens = by_label("mendstream_tokens_total", "kind")
        read, write, uncached = tokens.get("cache_read", 0), tokens.get("cache_write", 0), tokens.get("input", 0)
        total = read + write + uncached
        return {
            "requests": int(requests),
            "errors": sum(by_label("mendstream_errors_total", "kind").values()),
            "repairs": by_label("mendstream_repairs_total", "kind"),
            "streams": by_label("mendstream_streams_total", "outcome"),
            "cache": {"cache_read_input_tokens": read, "cache_creation_input_tokens": write,
                      "uncached_input_tokens": uncached, "hit_ratio": (read / total) if total else None},
            "output_tokens": tokens.get("output", 0),
            "upstream_status": by_label("mendstream_upstream_responses_total", "status"),
            "state": by_label("mendstream_state_events_total", "event"),
            "workers": "all" if self.directory is not None else "this one",
        }


_METHODS: Final = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})
