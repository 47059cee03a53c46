# Tracing: the SDK's own OpenTelemetry spans, as complete for a mendstream stream as for the SDK's `.stream()`.
#
# anthropic 2.17 traces every API call when the client has a tracer (by default whenever OpenTelemetry's global
# tracer provider is set up, or with `open_telemetry={"tracer_provider": ...}`; off with
# `ANTHROPIC_OPEN_TELEMETRY=false`). For a streaming `messages.create` the call's span stays open until the body
# ends, and an observer on the response body (`response.stream.stream_observer`) records the stream on it: the
# SDK's `Stream` calls `begin()`, `item(event)` for each event and `end(how, error)`, and its `MessageStream`
# shares the message it accumulates (`share_snapshot`). From those the span gets the response id, model, usage,
# stop reason, time to first chunk and, in content mode, the output messages, and its status. mendstream reads
# the body's bytes itself, so the SDK's `Stream` never runs and the span had only the HTTP status. `SpanFeed`
# plays the part of the SDK's `Stream` and `MessageStream` for that observer. No OpenTelemetry import: the
# observer is the SDK's, found on the response; without tracing there is none and nothing is done.
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from mendstream.core.events import Event

__all__ = ["SpanFeed"]

log = logging.getLogger(__name__)

# The events the SDK's raw Stream yields (and so shows its observer): the wire events, not the derived ones
# (text, input_json, ...), which its MessageStream makes afterwards.
_DERIVED = frozenset(("text", "thinking", "signature", "citation", "input_json", "compaction", "restart"))


class SpanFeed:
    """Feeds the SDK's span observer of one response with what mendstream reads from that response.

    Make it with :meth:`open` when the response is opened (None when the call has no span); pass every event
    list the parser returns to :meth:`events` as the consumer is given those events (the span's time to first
    chunk is taken at the first ``content_block_delta``), and an exception that ends the stream to
    :meth:`failed`. The end of the body (read, closed or failed) is reported to the span by the SDK's own
    body wrapper. Never raises: a span that cannot be fed is left as the SDK left it.
    """

    __slots__ = ("_beta", "_observer")

    def __init__(self, observer: Any, *, beta: bool = False) -> None:
        self._observer = observer
        self._beta = beta

    @classmethod
    def open(cls, response: Any, snapshot: Callable[[], Any], *, beta: bool = False) -> SpanFeed | None:
        """The feed for ``response`` (an SDK client's streaming response), or None when its call has no span.

        ``snapshot()`` gives the message so far as the SDK's message object (None before ``message_start``):
        the span takes its response attributes and, in content mode, its output content from it, as the SDK
        takes them from its ``MessageStream``'s snapshot.
        """
        observer = getattr(getattr(response, "stream", None), "stream_observer", None)
        if observer is None:
            return None
        try:
            recorder = getattr(observer, "inner", observer)
            share = getattr(recorder, "share_snapshot", None)
            if share is not None:
                share(snapshot)
            observer.begin()
        except Exception:
            log.debug("could not start feeding the span of a response", exc_info=True)
            return None
        return cls(observer, beta=beta)

    def events(self, events: list[Event]) -> None:
        """Show the observer the wire events among ``events``, as the SDK's Stream shows them."""
        observer = self._observer
        for event in events:
            kind = event.type
            if kind in _DERIVED:
                continue
            try:
                observer.item(self._item(event))
            except Exception:
                log.debug("could not record a stream event on its span", exc_info=True)

    def _item(self, event: Event) -> Any:
        # The observer reads `type` (a dict or a model); a message_start must be the SDK's class, so that an
        # observer without a shared snapshot can accumulate the message itself as the SDK's would.
        if event.type == "message_start":
            from mendstream.core.sdk_events import to_sdk_event

            return to_sdk_event(event, beta=self._beta)
        return event.to_dict()

    def failed(self, error: BaseException) -> None:
        """The stream ended with ``error`` (what the consumer is raised): the span's error status and type."""
        try:
            self._observer.end("failed", error)
        except Exception:
            log.debug("could not end the span of a failed stream", exc_info=True)

    def failing(self, error: BaseException) -> BaseException:
        """:meth:`failed` with ``error``, returned: for the error-conversion hook of a transport, which runs
        before the stream releases its response (after that the body's own end would be reported first)."""
        self.failed(error)
        return error

    def traced(self, events: Iterator[Any]) -> Iterator[Any]:
        """``events`` (a stream's event iterator), feeding the span as they pass; closing it closes them."""
        try:
            for event in events:
                self.events([event])
                yield event
        except Exception as error:
            self.failed(error)
            raise
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    async def atraced(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The async twin of :meth:`traced`."""
        try:
            async for event in events:
                self.events([event])
                yield event
        except Exception as error:
            self.failed(error)
            raise
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
