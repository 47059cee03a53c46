# The SDK transport: `mendstream.stream(client, **params)` / `astream(async_client, **params)`. The request
# goes through the client's own `messages.create(..., stream=True)`, so auth, base_url, default headers,
# retries before the first byte, timeouts and middleware behave exactly as the user configured them; the
# SDK's event decoding is skipped and the undecoded body bytes go into the mendstream core. Mid-stream
# `error` events become exceptions that are both a mendstream APIStreamError and the SDK's matching
# APIStatusError subclass. Works with anthropic 0.x (httpx) and >= 1.0 (httpx2): only duck-typed response
# methods are used. This module is imported lazily (by `mendstream.stream`), so `import mendstream` stays
# free of the SDK.
from __future__ import annotations

import contextlib
import inspect
import reprlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from mendstream.cache.integration import apply_cache
from mendstream.core.parser import MessageParser
from mendstream.errors import (
    APIStreamError,
    IncompleteStreamError,
    StreamError,
    StreamStalledError,
    UsageError,
    request_id_of,
)
from mendstream.streaming.drivers import AsyncMessageStream, MessageStream, Opened
from mendstream.streaming.machine import Open
from mendstream.streaming.opener import AsyncStreamOpener
from mendstream.streaming.pause import PauseResumer, check_resume_pause_turn
from mendstream.streaming.retry import Retry
from mendstream.streaming.sdk_rules import sdk_partial_mode
from mendstream.streaming.tracing import SpanFeed
from mendstream.transports import cloud as _cloud
from mendstream.transports.capturing import (
    CapturePath,
    attempt_capture_path,
    capture_error_response,
    capture_writer,
    request_json,
)
from mendstream.transports.failures import aread_head, content_type_error, read_head
from mendstream.transports.pump import BodyPump

__all__ = ["astream", "sdk_connection_error_class", "sdk_error_class", "sdk_stall_class", "stream"]

# The SDK class raised for each Messages API error type (first name the installed SDK has wins; names
# moved between SDK versions, e.g. RequestTooLargeError became ContentTooLargeError).
_SDK_ERROR_NAMES: dict[str, tuple[str, ...]] = {
    "overloaded_error": ("OverloadedError",),
    "rate_limit_error": ("RateLimitError",),
    "api_error": ("InternalServerError",),
    "invalid_request_error": ("BadRequestError",),
    "authentication_error": ("AuthenticationError",),
    "permission_error": ("PermissionDeniedError",),
    "not_found_error": ("NotFoundError",),
    "request_too_large": ("ContentTooLargeError", "RequestTooLargeError"),
    "billing_error": ("PaymentRequiredError",),
    "timeout_error": ("GatewayTimeoutError", "DeadlineExceededError"),
    **_cloud.BEDROCK_SDK_ERROR_NAMES,  # Bedrock exception frames: throttlingException, ...
}


class _SDKStreamErrorBase(APIStreamError):
    """Base that lets the SDK's error ``__init__`` chain (which calls ``super().__init__(message)``) end in
    ``Exception.__init__``; :func:`to_sdk_error` fills the APIStreamError attributes afterwards."""

    def __init__(self, message: str, *args: Any, **kwargs: Any) -> None:
        Exception.__init__(self, message)
        self.message = message


def _rebuild_error(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """Unpickle a combined error without calling the SDK's ``__init__`` (its keyword arguments are gone)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    return exc


def reduce_error(self: BaseException) -> tuple[Any, ...]:
    return _rebuild_error, (type(self), self.args), self.__dict__


_combined_classes: dict[type[BaseException], type[BaseException]] = {}


def sdk_error_class(error_type: str) -> type[BaseException]:
    """The exception class raised for a mid-stream ``error`` event of ``error_type``.

    A subclass of both the SDK's matching class (``anthropic.OverloadedError`` for ``overloaded_error``,
    ``anthropic.RateLimitError``, ..., ``anthropic.APIStatusError`` for unknown types) and
    :class:`mendstream.APIStreamError`. Classes are created once per SDK class and are importable from
    this module (so they pickle).
    """
    import anthropic

    sdk_cls: type[BaseException] = anthropic.APIStatusError
    for name in _SDK_ERROR_NAMES.get(error_type, ()):
        found = getattr(anthropic, name, None)
        if isinstance(found, type) and issubclass(found, anthropic.APIStatusError):
            sdk_cls = found
            break
    combined = _combined_classes.get(sdk_cls)
    if combined is None:
        name = f"Stream{sdk_cls.__name__}"
        combined = type(
            name,
            (sdk_cls, _SDKStreamErrorBase),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__reduce__": reduce_error,
                "__doc__": f"A mid-stream error event; both anthropic.{sdk_cls.__name__} and APIStreamError.",
            },
        )
        _combined_classes[sdk_cls] = combined
        globals()[name] = combined
    return combined


def to_sdk_error(
    err: StreamError, response: Any, transport_error: BaseException | None = None, *, client: Any = None
) -> BaseException:
    """What the SDK transport raises for the core error ``err`` read from ``response``.

    An ``APIStreamError`` (an ``error`` event) becomes :func:`sdk_error_class`'s class, its message
    formatted as the installed SDK formats a mid-stream error (2.17: the error's text, then request id,
    path and type in parentheses) and its ``request_id`` read as the SDK reads it: the ``request-id`` header
    first, then the body's, then Bedrock's ``x-amzn-requestid``. An ``IncompleteStreamError`` caused by
    ``transport_error`` (the connection dropped mid-body) becomes :func:`sdk_connection_error_class`'s class,
    worded as ``client`` words a failed read. Anything else is returned unchanged.
    """
    if isinstance(err, IncompleteStreamError) and transport_error is not None:
        return _connection_error(err, response, transport_error, client)
    if not isinstance(err, APIStreamError):
        return err
    cls: Any = sdk_error_class(err.error_type)
    body = err.body
    message = _sdk_status_message(body, response) or (f"{body}" if body not in (None, "") else err.message)
    exc: Any = cls.__new__(cls)
    try:
        cls.__init__(exc, message, response=response, body=body)
    except Exception:  # a stand-in response without headers/request: still raise a usable error
        _SDKStreamErrorBase.__init__(exc, message)
        exc.body, exc.response = body, response
    exc.error_type = err.error_type
    exc.snapshot = err.snapshot
    exc.offset = err.offset
    exc.events = getattr(err, "events", [])
    # As the SDK: the `request-id` header, else the body's; then Bedrock's `x-amzn-requestid`
    headers = getattr(response, "headers", None)
    exc.request_id = (
        _header(headers, "request-id") or err.request_id or request_id_of(headers)
    )
    return exc  # type: ignore[no-any-return]


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name) if headers is not None else None
    return value if isinstance(value, str) and value else None


def _sdk_status_message(body: object, response: Any) -> str | None:
    """The message the installed SDK gives a mid-stream error event with ``body`` (its
    ``make_status_error``, 2.17 on), or None when that SDK has none or cannot word it for ``response``."""
    try:
        from anthropic._error_classes import make_status_error  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # an older SDK formats it as f"{body}"
        return None
    try:
        err_msg = f"{body}"
        return str(make_status_error(err_msg, body=body, response=response).message)
    except Exception:  # a stand-in response without a request or status
        return None


_connection_classes: dict[type[BaseException], type[BaseException]] = {}


def sdk_connection_error_class(timeout: bool = False) -> type[BaseException]:
    """The class raised through the SDK transport when the connection drops before the message is complete:
    both :class:`~mendstream.IncompleteStreamError` and ``anthropic.APIConnectionError`` (SDK 2.17 raises
    that for a failed body read), or ``anthropic.APITimeoutError`` when the read timed out (``timeout``).
    Created once per SDK class, importable from this module (so they pickle)."""
    import anthropic

    sdk_cls: type[BaseException] = anthropic.APITimeoutError if timeout else anthropic.APIConnectionError
    combined = _connection_classes.get(sdk_cls)
    if combined is None:
        name = f"Stream{sdk_cls.__name__}"
        combined = type(
            name,
            (sdk_cls, IncompleteStreamError),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__reduce__": reduce_error,
                "__doc__": f"A stream cut by its connection; both anthropic.{sdk_cls.__name__} and "
                "IncompleteStreamError.",
            },
        )
        _connection_classes[sdk_cls] = combined
        globals()[name] = combined
    return combined


def _connection_error(
    err: IncompleteStreamError, response: Any, cause: BaseException, client: Any
) -> BaseException:
    timeout = any(klass.__name__ == "TimeoutException" for klass in type(cause).__mro__)
    cls = sdk_connection_error_class(timeout)
    request = getattr(response, "request", None)
    message = _sdk_connection_message(client, request, cause, timeout)
    exc: Any = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(err.__dict__)
    exc.message = message  # the SDK's wording; what mendstream saw is in the note
    exc.request = request
    exc.body = None
    exc.add_note(f"mendstream: {err.message}")
    return exc  # type: ignore[no-any-return]


def _sdk_connection_message(client: Any, request: Any, cause: BaseException, timeout: bool) -> str:
    """How ``client`` (the SDK's) words a body read that failed with ``cause``; the SDK's defaults else."""
    make = getattr(client, "_make_timeout_error" if timeout else "_make_connection_error", None)
    if make is not None and request is not None:
        try:
            return str(make(request, cause).message)
        except Exception:  # an SDK whose helper takes other arguments
            pass
    return "Request timed out." if timeout else "Connection error."


def _prepare(params: dict[str, Any], cache: Any, sanitize: Any = False) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The request's parameters as sent, and what sanitising changed: sanitised first (so that no cache marker
    lands on a block that is then removed), then cache-planned."""
    if "stream" in params and params["stream"] is not None and params["stream"] is not True:
        raise UsageError("mendstream.stream always streams; drop the 'stream' argument")
    params.pop("stream", None)
    changes: tuple[Any, ...] = ()
    if sanitize is not False:
        from mendstream.wire.sanitize import apply_sanitize

        params, changes = apply_sanitize(params, sanitize)
    return apply_cache(params, cache), changes


def _output_format(params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """``params`` with ``output_format`` turned into ``output_config.format`` as the SDK's ``messages.stream``
    does, and the :class:`~mendstream.streaming.structured.OutputFormat` that parses the answer (None without)."""
    output_format = params.get("output_format")
    if output_format is None:
        params.pop("output_format", None)
        return params, None
    from mendstream.streaming.structured import OutputFormat

    structured = OutputFormat(output_format, beta="betas" in params)
    return structured.request(params), structured


def _messages_of(client: Any, params: Mapping[str, Any]) -> Any:
    """``client.messages``, or ``client.beta.messages`` when beta features (``betas=``) are requested."""
    _reject_non_sse_client(client)
    if "betas" in params:
        return client.beta.messages
    return client.messages


_CLIENTS = {
    False: "an SDK client (anthropic.Anthropic, AnthropicBedrock, AnthropicVertex, ...: an object with "
           ".messages.create)",
    True: "an async SDK client (anthropic.AsyncAnthropic, AsyncAnthropicBedrock, AsyncAnthropicVertex, ...: an object "
          "with an async .messages.create)",
}


def _check_client(client: Any, *, want_async: bool) -> None:
    """Raise UsageError, naming what was passed and what is accepted, when ``client`` cannot be the first argument
    of :func:`stream` (``want_async`` False) or :func:`astream`: not a client at all (None, a str, a request body),
    or an async client given to ``stream`` (an SDK sync client given to ``astream``). Once per call, before sending."""
    name = "astream" if want_async else "stream"
    create = getattr(getattr(client, "messages", None), "create", None)
    if not callable(create):
        got = "None" if client is None else f"{type(client).__name__} {reprlib.repr(client)}"
        hint = ""
        if isinstance(client, str):
            hint = f" (the client comes first: mendstream.{name}(client, model=..., max_tokens=..., messages=...))"
        elif isinstance(client, Mapping):
            hint = f" (a request body without an SDK client goes to mendstream.httpx.{name}(body, base_url=...))"
        raise UsageError(f"mendstream.{name}() takes {_CLIENTS[want_async]} as its first argument; got {got}{hint}")
    try:
        is_async = inspect.iscoroutinefunction(inspect.unwrap(create))
    except ValueError:  # a __wrapped__ cycle: cannot tell, let the call decide
        return
    if is_async and not want_async:
        raise UsageError(f"mendstream.stream() got an async client ({type(client).__name__}): use mendstream.astream()")
    cls = type(client)
    sdk_sync = cls.__module__.partition(".")[0] == "anthropic" and not cls.__name__.startswith("Async")
    if not is_async and want_async and sdk_sync:  # only the SDK's own sync classes: a duck-typed client may wrap
        raise UsageError(f"mendstream.astream() got a sync client ({type(client).__name__}): use mendstream.stream(), "
                         "or pass the SDK's async client")


def _reject_non_sse_client(client: Any) -> None:
    """Fail before sending when the client needs an extra that is missing (Bedrock: botocore; Vertex:
    google-auth). AnthropicBedrock's event-stream frames are read by ``MessageParser(framing="event-stream")``
    (see transports/cloud)."""
    _cloud.check_client(client)


def _start_capture(capture: CapturePath | None, response: Any, params: Any, started_at: float) -> Any:
    if capture is None:
        return None
    request = getattr(response, "request", None)
    content = getattr(request, "content", None) if request is not None else None
    writer = capture_writer(
        capture,
        request_body=request_json(content, params),
        request_headers=list(request.headers.items()) if request is not None else [],
        url=str(request.url) if request is not None else None,
        transport="sdk",
        started_at=started_at,
    )
    if writer is not None:
        writer.start_response(response.status_code, list(response.headers.items()))
    return writer


def _capture_status_error(capture: CapturePath | None, exc: BaseException, params: Any, t0: float) -> None:
    """When the SDK raised for an HTTP error and a capture was asked for, record the error response."""
    response = getattr(exc, "response", None)
    if capture is None or response is None or not hasattr(response, "status_code"):
        return
    try:
        body = bytes(response.content)
    except Exception:
        return
    request = getattr(response, "request", None)
    writer = capture_writer(
        capture,
        request_body=request_json(getattr(request, "content", None), params),
        request_headers=list(request.headers.items()) if request is not None else [],
        url=str(request.url) if request is not None else None,
        transport="sdk",
        started_at=t0,
    )
    capture_error_response(writer, response.status_code, list(response.headers.items()), body)



def _fill_request_id(exc: Exception) -> None:
    """The SDK reads a status error's ``request_id`` from ``request-id`` only; Bedrock sends ``x-amzn-requestid``."""
    response = getattr(exc, "response", None)
    if getattr(exc, "request_id", "") is None and response is not None:
        with contextlib.suppress(AttributeError):  # a frozen or slotted exception: leave it as the SDK made it
            exc.request_id = request_id_of(response.headers)  # type: ignore[attr-defined]


def _client_of(messages: Any) -> Any:
    """The SDK client behind a ``messages`` resource (for the SDK's own error wording), or None."""
    return getattr(messages, "_client", None)


def open_response(
    messages: Any, params: dict[str, Any], *, capture: CapturePath | None, parser: MessageParser | None
) -> tuple[Any, Any, BodyPump]:
    """Send one streaming request through the SDK: ``(raw, response, pump)`` for a response that can be
    streamed (``raw.close`` releases it). The one place where an SDK response is opened, for the plain
    transport and for every attempt of the resilient one.

    Raises the SDK's own errors before a response (recorded in the capture; a status error's missing
    ``request_id`` filled from ``x-amzn-requestid``), and ``ContentTypeError`` for a
    2xx response ``parser`` cannot read (its first bytes read and the response closed).
    """
    t0 = time.perf_counter()
    try:
        raw = messages.create(**params, stream=True)
    except Exception as exc:
        _capture_status_error(capture, exc, params, t0)
        _fill_request_id(exc)
        raise
    response = raw.response
    bad_type = _cloud.content_type_problem(parser, response.headers)
    if bad_type is not None:
        try:
            head = read_head(response)
        finally:
            raw.close()
        raise content_type_error(response.status_code, bad_type, head, response)
    pump = BodyPump(
        _start_capture(capture, response, params, t0),
        convert_error=lambda err: to_sdk_error(err, response, pump.transport_error, client=_client_of(messages)),
    )
    return raw, response, pump


async def aopen_response(
    messages: Any, params: dict[str, Any], *, capture: CapturePath | None, parser: MessageParser | None
) -> tuple[Any, Any, BodyPump]:
    """The async twin of :func:`open_response` (``await raw.close()`` releases the response)."""
    t0 = time.perf_counter()
    try:
        raw = await messages.create(**params, stream=True)
    except Exception as exc:
        _capture_status_error(capture, exc, params, t0)
        _fill_request_id(exc)
        raise
    response = raw.response
    bad_type = _cloud.content_type_problem(parser, response.headers)
    if bad_type is not None:
        try:
            head = await aread_head(response)
        finally:
            await raw.close()
        raise content_type_error(response.status_code, bad_type, head, response)
    pump = BodyPump(
        _start_capture(capture, response, params, t0),
        convert_error=lambda err: to_sdk_error(err, response, pump.transport_error, client=_client_of(messages)),
    )
    return raw, response, pump


_stall_class: type[BaseException] | None = None


def sdk_stall_class() -> type[BaseException]:
    """The class raised for a stall through the SDK transport: ``anthropic.APITimeoutError`` and
    :class:`~mendstream.StreamStalledError` at once (created once; importable from this module)."""
    global _stall_class
    if _stall_class is None:
        import anthropic

        _stall_class = type(
            "StreamAPITimeoutError",
            (anthropic.APITimeoutError, StreamStalledError),
            {"__module__": __name__, "__qualname__": "StreamAPITimeoutError", "__reduce__": reduce_error,
             "__doc__": "A stalled stream; both anthropic.APITimeoutError and StreamStalledError."},
        )
        globals()["StreamAPITimeoutError"] = _stall_class
    return _stall_class


def _sdk_stall(err: StreamStalledError) -> BaseException:
    cls = sdk_stall_class()
    exc: Any = cls.__new__(cls)
    Exception.__init__(exc, err.message)
    exc.__dict__.update(err.__dict__)
    exc.request = None
    exc.body = None
    exc.__cause__ = err.__cause__
    return exc  # type: ignore[no-any-return]


def _attempt_params(params: dict[str, Any], action: Open) -> dict[str, Any]:
    """The request parameters of one attempt: ``action.request`` instead of ``params`` when it names one
    (the continuation request of a paused turn), the continuation appended to the messages, and the stall
    bound on the wait for the response head as the SDK's timeout (unless the caller set one)."""
    if action.request is not None:
        params = action.request
    if action.continuation is None and (action.timeout is None or "timeout" in params):
        return params
    out = dict(params)
    if action.continuation is not None:
        out["messages"] = action.continuation.apply(out.get("messages"))
    if action.timeout is not None and "timeout" not in out:
        out["timeout"] = action.timeout
    return out


def stream(
    client: Any,
    /,
    *,
    capture: CapturePath | None = None,
    cache: Any = None,
    parser: MessageParser | None = None,
    retry: Retry | None = None,
    idle_timeout: float | None = None,
    progress_timeout: float | None = None,
    sdk_events: bool = False,
    sanitize: Any = False,
    resume_pause_turn: int = 0,
    **params: Any,
) -> MessageStream:
    """Send a streaming Messages request through ``client`` and read it with mendstream.

    Args:
        client: an ``anthropic.Anthropic`` (or ``AnthropicVertex``, ``AnthropicFoundry``,
            ``AnthropicBedrockMantle``, ``AnthropicAWS``, ``AnthropicGoogleCloud``: any SDK client whose
            messages endpoint answers SSE), or ``AnthropicBedrock``, whose AWS event-stream frames are read
            by an event-stream parser (exception frames raise the SDK class for their type, e.g.
            ``throttlingException`` → ``anthropic.RateLimitError``).
        capture: a path; the response bytes are teed there as they arrive, with a sidecar
            ``*.capture.json`` (see :mod:`mendstream.recording.capture`); a retried attempt is captured as
            ``NAME.attempt-N.EXT`` beside it.
        cache: a cache plan, applied by ``mendstream.cache.apply_cache(params, cache)`` before sending.
        parser: a configured :class:`~mendstream.MessageParser` (default: a new one, reading AWS
            event-stream for AnthropicBedrock).
        retry, idle_timeout, progress_timeout: resilience (off by default: one attempt, no stall timeout);
            see docs/resilience.md. ``stream.attempts`` records every attempt.
        sanitize: ``True`` (or a :class:`~mendstream.wire.sanitize.RequestLimits`) fixes the mechanical 400s in the
            request before it is sent (empty text blocks, a prefill ending in whitespace, orphan tool_use /
            tool_result blocks, media over the documented limits; never a thinking block), copy-on-write; what
            changed is ``stream.request_changes``. See docs/requests.md.
        sdk_events: yield the SDK's own event objects (``anthropic.types.RawMessageStartEvent``,
            ``anthropic.lib.streaming.TextEvent``, ...; their ``Beta`` variants with ``betas=``) instead of
            mendstream's, for code that checks event classes. Costs one SDK model per event.
        resume_pause_turn: when the turn stops with ``pause_turn`` (server tools ran long), send up to this
            many continuation requests (the request again with the paused content appended, through the
            same client and ``retry``) and show the whole turn as one message (0, the default: off; the
            stream ends with ``pause_turn``). ``stream.attempts`` records each as mode ``"resume"``. See
            docs/stop-reasons.md.
        **params: what ``client.messages.stream(...)`` takes (``model``, ``max_tokens``, ``messages``,
            ``tools``, ``extra_headers``, ``timeout``, ...). With ``betas=[...]`` the request goes to
            ``client.beta.messages``.

    Returns:
        A :class:`~mendstream.MessageStream` (context manager; iterate it for events); the first attempt has
        been sent. Its ``get_final_message()`` is an ``anthropic.types.Message``, or a ``BetaMessage`` with
        ``betas=``, as the SDK returns.

    Raises:
        Whatever ``client.messages.create`` raises before the stream starts (``anthropic.APIStatusError``
        subclasses, ``APIConnectionError``, ...), unchanged, when ``retry`` does not retry it. While reading:
        ``APIStreamError`` subclasses that are also the SDK's class for the error type (see
        :func:`sdk_error_class`), stalls that are also ``anthropic.APITimeoutError``, and the core's
        ``StreamError`` subclasses. A connection dropped mid-body ends the input; if the message was not
        complete, ``IncompleteStreamError`` is raised with the transport error as ``__cause__``.
        ``ContentTypeError`` if a 2xx response is clearly not SSE (JSON, HTML). ``UsageError`` when ``client``
        is not an SDK client (None, a str, a request body) or is an async one (use :func:`astream`).
    """
    _check_client(client, want_async=False)
    pause = _pause(resume_pause_turn)
    prepared, changes = _prepare(params, cache, sanitize)
    params, structured = _output_format(prepared)
    messages = _messages_of(client, params)
    given = parser
    parser = _cloud.parser_for(client, parser)  # an event-stream parser for AnthropicBedrock
    beta = "betas" in params

    def opener(action: Open) -> Opened:
        path = attempt_capture_path(capture, action.attempt.number)
        raw, response, pump = open_response(messages, _attempt_params(params, action), capture=path, parser=parser)
        opened = pump.opened(response, response.iter_bytes(), raw.close)
        return _for_sdk(opened, given, parser, params, beta)

    return MessageStream(opener, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                         parser=parser, convert_stall=_sdk_stall, sdk_events=sdk_events, beta=beta,
                         output_format=structured, request_changes=changes, pause=pause(params))


def _pause(resume_pause_turn: object) -> Callable[[dict[str, Any]], PauseResumer | None]:
    """``resume_pause_turn`` checked (a UsageError names a bad value, before anything is sent): what makes
    the stream's :class:`~mendstream.streaming.pause.PauseResumer` over the request as sent (None: off)."""
    limit = check_resume_pause_turn(resume_pause_turn)
    if not limit:
        return lambda params: None
    return lambda params: PauseResumer(params, max_continuations=limit)


def _for_sdk(opened: Opened, given: MessageParser | None, parser: MessageParser | None, params: Any,
             beta: bool) -> Opened:
    """One attempt read as the SDK would read it: the partial mode its helper would pick for the request as
    sent (unless the caller gave a parser), and the SDK's OpenTelemetry span of the call fed as its own stream
    feeds it (when the call has one)."""
    chosen = _parser_as_sdk(given, parser, opened.response, params)
    if chosen is not parser:
        opened.parser = chosen
    response = opened.response
    opened.trace = lambda snapshot: SpanFeed.open(response, snapshot, beta=beta)
    return opened


def _parser_as_sdk(given: MessageParser | None, parser: MessageParser | None, response: Any, params: Any) -> Any:
    """The caller's parser as given; else the default one with the partial mode the SDK's helper would use for
    the request as it was sent (the fine-grained tool streaming beta: see ``streaming.sdk_rules``)."""
    if given is not None:
        return parser
    request = getattr(response, "request", None)
    mode = sdk_partial_mode(getattr(request, "headers", None), beta="betas" in params)
    if mode == "on":
        return parser
    return MessageParser(partial_mode=mode) if parser is None else type(parser)(partial_mode=mode)


def astream(
    client: Any,
    /,
    *,
    capture: CapturePath | None = None,
    cache: Any = None,
    parser: MessageParser | None = None,
    retry: Retry | None = None,
    idle_timeout: float | None = None,
    progress_timeout: float | None = None,
    sdk_events: bool = False,
    sanitize: Any = False,
    resume_pause_turn: int = 0,
    **params: Any,
) -> AsyncStreamOpener:
    """The async twin of :func:`stream`, for ``anthropic.AsyncAnthropic`` and the async platform clients.

    Returns an opener: ``async with mendstream.astream(client, ...) as stream:`` (as with the SDK's
    ``client.messages.stream``), or ``stream = await mendstream.astream(client, ...)``. The first attempt
    is sent when it is entered or awaited. Arguments (``resume_pause_turn`` too), errors and capture as for
    :func:`stream`; ``client`` must be an async SDK client (``UsageError`` at once otherwise).
    """
    _check_client(client, want_async=True)
    pause = _pause(resume_pause_turn)
    prepared, changes = _prepare(params, cache, sanitize)
    params, structured = _output_format(prepared)
    messages = _messages_of(client, params)
    given = parser
    parser = _cloud.parser_for(client, parser)
    beta = "betas" in params

    async def opener(action: Open) -> Opened:
        path = attempt_capture_path(capture, action.attempt.number)
        raw, response, pump = await aopen_response(messages, _attempt_params(params, action), capture=path,
                                                   parser=parser)
        return _for_sdk(pump.aopened(response, response.aiter_bytes(), raw.close), given, parser, params, beta)

    def make() -> AsyncMessageStream:
        return AsyncMessageStream(opener, retry=retry, idle_timeout=idle_timeout, progress_timeout=progress_timeout,
                                  parser=parser, convert_stall=_sdk_stall, sdk_events=sdk_events, beta=beta,
                                  output_format=structured, request_changes=changes, pause=pause(params))

    return AsyncStreamOpener(make)
