# Decisions the SDK's stream helpers (anthropic 2.17, lib/streaming) make from the request rather than from the
# stream, written down once so that every driver makes them alike. Pure functions: no I/O, no SDK import.
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mendstream.core.accumulate import PartialMode

__all__ = ["FINE_GRAINED_TOOL_STREAMING", "sdk_partial_mode"]

FINE_GRAINED_TOOL_STREAMING = "fine-grained-tool-streaming-2025-05-14"
"""The beta whose tool inputs stream unvalidated, so that the beta SDK shows a string still being received."""


def sdk_partial_mode(request_headers: Mapping[str, Any] | Any, *, beta: bool) -> PartialMode:
    """The partial mode of ``input_json`` snapshots that the SDK's accumulator uses for a request sent with
    ``request_headers`` (the headers as sent: the client's defaults, ``betas=`` and ``extra_headers`` merged).

    As anthropic 2.17: only the beta helper (``client.beta.messages.stream``, ``_beta_messages.accumulate_event``)
    looks, and it switches to ``"trailing-strings"`` when the ``anthropic-beta`` header contains
    ``fine-grained-tool-streaming-2025-05-14`` (a substring test on the header's value); otherwise, and always
    for ``client.messages.stream``, partial mode ``"on"`` (jiter's ``partial_mode=True``).
    """
    if not beta or request_headers is None:
        return "on"
    value = request_headers.get("anthropic-beta", "")
    return "trailing-strings" if isinstance(value, str) and FINE_GRAINED_TOOL_STREAMING in value else "on"
