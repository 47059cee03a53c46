# The body pump: moves body chunks from one attempt's HTTP response into the stream, tees them to a capture,
# and turns a connection dropped mid-body into an ordinary end of input (the stream machine then decides
# whether the message was complete). It also defines how a transport attempt is released: read to the end
# or failed, or closed (the rest of a failed capture is drained, then the response is released), or dropped
# without close() (the reaper thread closes it without draining). Sync and async differ only in the twin
# methods below.
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Literal

from mendstream.errors import StreamError
from mendstream.streaming.drivers import Opened
from mendstream.transports.failures import is_transport_error

if TYPE_CHECKING:
    from mendstream.recording.capture import CaptureWriter

__all__ = ["DRAIN_LIMIT", "BodyPump"]

Outcome = Literal["complete", "closed", "error"]

DRAIN_LIMIT = 64 * 1024 * 1024
"""Most bytes read after a stream error to complete a capture."""


class BodyPump:
    """Moves body chunks from an HTTP response into the core, teeing them to a capture.

    A transport error while reading the body (the peer reset the connection, a read timed out) ends the
    input instead of escaping: the core then sees EOF and either finishes a complete message or raises
    ``IncompleteStreamError`` with the partial message; :meth:`error_for` attaches the transport error to
    that error as ``transport_error`` and ``__cause__`` (and a note). A capture is finished with outcome
    ``"complete"``, ``"closed"`` (consumer stopped early, or never read) or ``"error"``.

    ``convert_error`` maps core errors to what is raised (the SDK transport turns ``APIStreamError`` into
    the SDK's error classes); it receives the error after the cause has been attached.
    """

    def __init__(
        self,
        capture: CaptureWriter | None = None,
        *,
        convert_error: Callable[[StreamError], BaseException] | None = None,
    ) -> None:
        self.capture = capture
        self.transport_error: BaseException | None = None
        self.failed = False
        self._convert_error = convert_error

    def drain(self, chunks: Generator[bytes, None, None]) -> None:
        """After a stream error, read the rest of the body into the capture (so a fixture of a broken
        stream is whole), at most ``DRAIN_LIMIT`` bytes. Does nothing when not capturing."""
        if not self.failed or self.capture is None:
            return
        seen = 0
        for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break

    async def adrain(self, chunks: AsyncGenerator[bytes, None]) -> None:
        """The async twin of :meth:`drain`."""
        if not self.failed or self.capture is None:
            return
        seen = 0
        async for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break

    def error_for(self, err: StreamError) -> BaseException:
        """The exception to raise for the core error ``err`` (step 4 of the error pipeline, docs/design.md).

        A transport error that ended the body is kept as ``transport_error`` on both ``err`` and the
        result, becomes their ``__cause__`` unless the core already set one (an internal bug's cause is
        never replaced), and is named in a note shown in tracebacks. Then ``convert_error`` mixes in the
        SDK's class where the transport has one.
        """
        self.failed = True
        converted = self._convert_error(err) if self._convert_error is not None else err
        failure = self.transport_error
        if failure is not None:
            for target in {id(err): err, id(converted): converted}.values():
                target.transport_error = failure  # type: ignore[attr-defined]
                if target.__cause__ is None:
                    target.__cause__ = failure
            reason = f"{type(failure).__name__}: {failure}"
            converted.add_note(f"the connection failed before the stream ended: {reason}")
        return converted

    def _finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self.capture is not None:
            self.capture.finish(outcome, error)

    def _body_failed(self, exc: Exception) -> bool:
        """Record that reading the body raised ``exc``; True if it must propagate (not a transport error)."""
        self._finish("error", exc)
        if not is_transport_error(exc):
            return True
        self.transport_error = exc
        return False

    def pump(self, chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
        """Yield ``chunks`` (teeing them), stopping quietly at a transport error."""
        capture = self.capture
        try:
            for chunk in chunks:
                if capture is not None:
                    capture.write(chunk)
                yield chunk
            self._finish("complete")
        except Exception as exc:
            if self._body_failed(exc):
                raise
        finally:
            self._finish("closed")

    async def apump(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """The async twin of :meth:`pump`."""
        capture = self.capture
        try:
            async for chunk in chunks:
                if capture is not None:
                    capture.write(chunk)
                yield chunk
            self._finish("complete")
        except Exception as exc:
            if self._body_failed(exc):
                raise
        finally:
            self._finish("closed")

    def opened(self, response: Any, body: Iterable[bytes], release: Callable[[], object]) -> Opened:
        """The :class:`~mendstream.streaming.drivers.Opened` attempt over ``body``.

        Its ``release`` drains a failed capture, finishes the capture (a stream closed unread leaves its
        sidecar with outcome ``"closed"``), then calls ``release()``; its ``abandon`` (run by the reaper
        thread for a stream dropped unclosed) does the same without draining.
        """
        chunks = self.pump(body)

        def close() -> None:
            try:
                self.drain(chunks)
                chunks.close()
            finally:
                try:
                    self._finish("closed")
                finally:
                    release()

        def abandoned() -> None:
            try:
                chunks.close()
            finally:
                try:
                    self._finish("closed")
                finally:
                    release()

        return Opened(response, chunks, close, abandoned, self.error_for, complete=self._completed)

    def _completed(self) -> None:
        self._finish("complete")

    def aopened(self, response: Any, body: AsyncIterable[bytes], release: Callable[[], Awaitable[object]]) -> Opened:
        """The async twin of :meth:`opened`; must be called with the stream's event loop running. Dropped
        unclosed, the reaper thread schedules the close on that loop (skipped if it has closed: the
        connection went with it)."""
        chunks = self.apump(body)
        loop = asyncio.get_running_loop()

        async def close() -> None:
            try:
                await self.adrain(chunks)
                await chunks.aclose()
            finally:
                try:
                    self._finish("closed")
                finally:
                    await release()

        async def aabandoned() -> None:
            try:
                await chunks.aclose()
            finally:
                try:
                    self._finish("closed")
                finally:
                    await release()

        def abandoned() -> None:
            if loop.is_closed():
                return
            coroutine = aabandoned()
            try:
                asyncio.run_coroutine_threadsafe(coroutine, loop)
            except RuntimeError:  # the loop closed meanwhile
                coroutine.close()

        return Opened(response, chunks, close, abandoned, self.error_for, complete=self._completed)
