# Fault injection: the contract between a server that replays a fixture and a plan that breaks it. A planned
# response is plain data (status, headers, timed chunks, how the body ends), independent of any HTTP library,
# so the replay server, the in-process mock transports of mendstream.testing and any later server apply the
# same plans. A plan maps (the request's ordinal, the response the server would send) to the response to send.
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["FaultPlan", "PlannedResponse"]

BodyEnd = Literal["close", "cut"]


@dataclass(frozen=True, slots=True)
class PlannedResponse:
    """What a server sends for one request.

    Attributes:
        status: the HTTP status.
        headers: response headers, lowercase names, in order.
        chunks: ``(delay, chunk)`` pairs: wait ``delay`` seconds, then send ``chunk``. An error status sends its
            JSON error body as the chunks.
        end: ``"close"`` finishes the body properly; ``"cut"`` drops the connection after the last chunk, so
            the client sees an incomplete body (a reset, an incomplete chunked read).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[tuple[float, bytes], ...]
    end: BodyEnd = "close"


class FaultPlan(Protocol):
    """Turns the response a server would send into the one it sends.

    ``ordinal`` counts the requests the server (or mock transport) has answered so far, from 0, so a plan can
    fail attempts 1 and 2 and let attempt 3 through. A plan must be deterministic for a given ordinal and
    response (seed any randomness), so that a failing run can be reproduced.
    """

    def apply(self, ordinal: int, response: PlannedResponse, /) -> PlannedResponse: ...
