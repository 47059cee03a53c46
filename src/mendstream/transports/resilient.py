# The transports' side of resilient streams: openers that send one attempt's request (the original, or the
# same with the partial text appended as an assistant prefill) through the SDK client or an httpx client,
# and hand the open body to mendstream.resilient. Kept apart from sdk.py and httpx.py so those modules only
# gain three keywords and one delegation each. Stalls through the SDK raise a class that is both
# StreamStalledError and anthropic.APITimeoutError, as mid-stream error events are both classes already.
from __future__ import annotations

import copy
import json
from typing import Any

from mendstream.errors import StreamError, StreamStalledError, UsageError
from mendstream.parser import MessageParser
from mendstream.resilient import (
    AsyncResilientMessageStream,
    CapturePath,
    Opened,
    ResilientMessageStream,
    with_prefill,
)
from mendstream.retry import Retry, check_timeout
from mendstream.transports import AsyncStreamOpener, BodyPump

__all__ = ["check_resilience", "httpx_astream", "httpx_stream", "sdk_astream", "sdk_stream", "sdk_stall_class"]


def check_resilience(retry: object, idle_timeout: object, progress_timeout: object) -> bool:
    """Validate the three keywords; True when any asks for the resilient driver."""
    if retry is None and idle_timeout is None and progress_timeout is None:
        return False  # the default: the plain transport, at the cost of three comparisons
    if retry is not None and not isinstance(retry, Retry):
        raise UsageError(f"retry must be a mendstream.Retry or None, not {retry!r}")
    check_timeout("idle_timeout", idle_timeout)
    check_timeout("progress_timeout", progress_timeout)
    return retry is not None or idle_timeout is not None or progress_timeout is not None


_stall_class: type[BaseException] | None = None


def sdk_stall_class() -> type[BaseException]:
    """The class raised for a stall through the SDK transport: ``anthropic.APITimeoutError`` and
    :class:`~mendstream.StreamStalledError` at once (created once; importable from this module)."""
    global _stall_class
    if _stall_class is None:
        import anthropic

        from mendstream.transports.sdk import reduce_error

        _stall_class = type(
            "StreamAPITimeoutError",
            (anthropic.APITimeoutError, StreamStalledError),
            {"__module__": __name__, "__qualname__": "StreamAPITimeoutError", "__reduce__": reduce_error,
             "__doc__": "A stalled stream; both anthropic.APITimeoutError and StreamStalledError."},
        )
        globals()["StreamAPITimeoutError"] = _stall_class
    return _stall_class


def _sdk_convert(err: StreamError, response: Any, transport_error: BaseException | None = None) -> BaseException:
    from mendstream.transports.sdk import to_sdk_error

    if not isinstance(err, StreamStalledError):
        return to_sdk_error(err, response, transport_error)
    cls = sdk_stall_class()
    exc: Any = cls.__new__(cls)
    Exception.__init__(exc, err.message)
    exc.__dict__.update(err.__dict__)
    exc.request = getattr(response, "request", None)
    exc.body = None
    exc.__cause__ = err.__cause__
    return exc  # type: ignore[no-any-return]


def read_timeout(idle_timeout: float | None, progress_timeout: float | None) -> float | None:
    """The HTTP library's read timeout that backs the stall watchdog up (and bounds the wait for headers):
    a read silent for either timeout is a stall whichever kind was asked for."""
    given = [t for t in (idle_timeout, progress_timeout) if t is not None]
    return min(given) if given else None


def _sdk_params(params: dict[str, Any], prefill: str | None, read: float | None) -> dict[str, Any]:
    out = dict(params)
    if prefill is not None:
        out["messages"] = with_prefill(out.get("messages") or [], prefill)
    if read is not None and "timeout" not in out:
        out["timeout"] = read
    return out


def sdk_stream(
    messages: Any,
    params: dict[str, Any],
    *,
    capture: CapturePath | None,
    parser: MessageParser | None,
    retry: Retry | None,
    idle_timeout: float | None,
    progress_timeout: float | None,
    sdk_events: bool = False,
) -> ResilientMessageStream:
    """``mendstream.stream`` with ``retry`` / stall detection (see :func:`mendstream.transports.sdk.stream`)."""
    from mendstream.transports.sdk import open_response

    def open_attempt(prefill: str | None, path: CapturePath | None) -> Opened:
        sent = _sdk_params(params, prefill, read_timeout(idle_timeout, progress_timeout))
        raw, response, pump = open_response(messages, sent, capture=path, parser=parser)
        return Opened(response, response.iter_bytes(), pump, raw.close,
                      lambda err: _sdk_convert(err, response, pump.transport_error))

    return ResilientMessageStream(
        open_attempt, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout, parser=parser,
        capture=capture, convert=lambda err: _sdk_convert(err, None), sdk_events=sdk_events, beta="betas" in params,
    )


def sdk_astream(
    messages: Any,
    params: dict[str, Any],
    *,
    capture: CapturePath | None,
    parser: MessageParser | None,
    retry: Retry | None,
    idle_timeout: float | None,
    progress_timeout: float | None,
    sdk_events: bool = False,
) -> AsyncStreamOpener:
    """The async twin of :func:`sdk_stream`."""
    from mendstream.transports.sdk import aopen_response

    async def open_attempt(prefill: str | None, path: CapturePath | None) -> Opened:
        sent = _sdk_params(params, prefill, read_timeout(idle_timeout, progress_timeout))
        raw, response, pump = await aopen_response(messages, sent, capture=path, parser=parser)
        return Opened(response, response.aiter_bytes(), pump, raw.close,
                      lambda err: _sdk_convert(err, response, pump.transport_error))

    async def open_stream() -> AsyncResilientMessageStream:
        return AsyncResilientMessageStream(
            open_attempt, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
            parser=parser, capture=capture, convert=lambda err: _sdk_convert(err, None), sdk_events=sdk_events,
            beta="betas" in params,
        )

    return AsyncStreamOpener(open_stream)


def _httpx_request(req: Any, prefill: str | None, path: CapturePath | None, read: float | None) -> Any:
    """A copy of the httpx transport's prepared request for one attempt."""
    out = copy.copy(req)
    out.capture = path
    if prefill is not None:
        out.body = {**req.body, "messages": with_prefill(req.body.get("messages") or [], prefill)}
        out.content = json.dumps(out.body, ensure_ascii=False).encode("utf-8")
    if read is not None and _is_unset(req.timeout):
        from mendstream.transports.httpx import http_module

        out.timeout = http_module().Timeout(10.0, read=read)
    return out


def _is_unset(value: Any) -> bool:
    from mendstream.transports import httpx as transport

    return value is transport.UNSET


def httpx_stream(
    req: Any,
    client: Any,
    *,
    parser: MessageParser | None,
    retry: Retry | None,
    idle_timeout: float | None,
    progress_timeout: float | None,
    sdk_events: bool = False,
) -> ResilientMessageStream:
    """``mendstream.httpx.stream`` with ``retry`` / stall detection; ``req`` is its prepared request."""
    from mendstream.transports.httpx import shared_client

    http = client if client is not None else shared_client()

    def open_attempt(prefill: str | None, path: CapturePath | None) -> Opened:
        attempt = _httpx_request(req, prefill, path, read_timeout(idle_timeout, progress_timeout))
        response, writer = attempt.open(http)
        return Opened(response, response.iter_bytes(), BodyPump(writer), response.close)

    return ResilientMessageStream(
        open_attempt, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout, parser=parser,
        capture=req.capture, sdk_events=sdk_events, beta=req.beta,
    )


def httpx_astream(
    req: Any,
    client: Any,
    *,
    parser: MessageParser | None,
    retry: Retry | None,
    idle_timeout: float | None,
    progress_timeout: float | None,
    sdk_events: bool = False,
) -> AsyncStreamOpener:
    """The async twin of :func:`httpx_stream`. Without ``client`` each attempt gets its own async client,
    closed with the attempt's response (async clients are bound to one event loop)."""

    async def open_attempt(prefill: str | None, path: CapturePath | None) -> Opened:
        attempt = _httpx_request(req, prefill, path, read_timeout(idle_timeout, progress_timeout))
        response, writer, release = await attempt.aopen(client)
        return Opened(response, response.aiter_bytes(), BodyPump(writer), release)

    async def open_stream() -> AsyncResilientMessageStream:
        return AsyncResilientMessageStream(
            open_attempt, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
            parser=parser, capture=req.capture, sdk_events=sdk_events, beta=req.beta,
        )

    return AsyncStreamOpener(open_stream)
