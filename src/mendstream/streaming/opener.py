# The awaitable / async-context-manager that `astream(...)` returns, shared by the SDK and httpx transports:
# the first attempt is sent only when the opener is awaited or entered, as with the SDK's stream managers.
from __future__ import annotations

from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mendstream.errors import StreamReuseError

if TYPE_CHECKING:
    from mendstream.streaming.drivers import AsyncMessageStream

__all__ = ["AsyncStreamOpener"]


class AsyncStreamOpener:
    """What ``astream(...)`` returns: await it, or use it with ``async with`` (the request is sent then).

    ``stream = await opener`` gives the :class:`~mendstream.streaming.drivers.AsyncMessageStream`;
    ``async with opener as stream:`` also closes it on exit, as the SDK's ``AsyncMessageStreamManager``
    does. An opener sends its request once; awaiting it a second time raises
    :class:`~mendstream.errors.StreamReuseError` (a ``UsageError`` and a ``RuntimeError``).
    """

    def __init__(self, make_stream: Callable[[], AsyncMessageStream]) -> None:
        self._make_stream = make_stream
        self._opened = False
        self._stream: AsyncMessageStream | None = None

    async def _open(self) -> AsyncMessageStream:
        if self._opened:
            raise StreamReuseError("this stream request has already been sent; call astream(...) again")
        self._opened = True
        self._stream = self._make_stream()
        return await self._stream.start()

    def __await__(self) -> Generator[Any, None, AsyncMessageStream]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncMessageStream:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not None:
            await self._stream.close()
