# What a CachePlanner remembers of the previous request, so that the next one is flattened, hashed and
# estimated only from its first changed message on: the Python-level work per request follows what
# changed, not the length of the history (what remains per request is a handful of C-level passes:
# map(id, ...), map(len, ...), and one tuple of field values per block).
#
# The invariant, checked on every request: a message is reused when
#   - model, tool_choice and thinking are the same, and tools and system are equal block by block;
#   - every message before it has the same role and the same (or an equal) content: a string, or a list
#     of the same length (a message's other fields do not enter the prefix);
#   - every block of those lists has the same top-level field values as before (compared by identity,
#     then equality: `tuple(block.values())`), so replacing a block, or assigning any of its fields
#     (text, content, input, cache_control: how agents clear or rewrite old tool results) is seen.
# A change deeper inside a field made in place (a tool input dict or a tool_result's content list
# mutated without being replaced) is not seen by that check. Two guards cover it:
#   - every tool_result whose content is a list is re-scanned for markers on every request, so a marker
#     added there in place is always counted: the 4-marker guarantee never rests on the invariant;
#   - a rotating probe re-digests PROBE blocks of the reused prefix per request and compares them with
#     the digests stored when they were hashed; a mismatch discards the prefix from that message on.
#     A 2,000-block history is fully re-verified every 2000 / PROBE requests.
# An in-place edit that slips through until the probe reaches it costs cache reads (a proposal for a
# prefix that no longer exists), never a request the API would reject.
from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Any, Final

from mendstream.cache.layout import MESSAGES, Layout, block_digest

__all__ = ["PROBE", "History"]

#: Blocks of the reused prefix re-digested per request (the rotating deep check).
PROBE: Final = 32

_content = itemgetter("content")
_role = itemgetter("role")


def _fingerprint(block: Any) -> Any:
    return tuple(block.values()) if type(block) is dict else block


def _settings(payload: Any) -> str:
    return json.dumps(
        [str(payload.get("model", "")), payload.get("tool_choice"), payload.get("thinking")],
        sort_keys=True,
        default=str,
    )


def _first_difference(a: list[Any], b: list[Any]) -> int:
    """Index of the first position where ``a`` and ``b`` differ (``min(len)`` when one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x is not y and x != y:
            return i
    return min(len(a), len(b))


@dataclass(slots=True)
class _Snapshot:
    layout: Layout
    chain: list[bytes]
    digests: list[bytes]
    settings: str
    head: list[Any]  # fingerprints of tools and system blocks
    roles: list[Any]
    #: per message, its content as it was: the string, or a list of shallow copies of its blocks (what
    #: the next request's content is compared with: one C-level `!=`, dict by dict, value by value)
    contents: list[Any]
    position_start: list[int]  # message index -> its first layout position (len(messages) -> total)


def _copy_content(content: Any) -> Any:
    if type(content) is list:
        return [dict(block) if type(block) is dict else block for block in content]
    return content


class History:
    """Builds the layout, prefix hashes and token sums of each request of one conversation, reusing the
    previous request's for the unchanged prefix (see the invariant above). Results are identical to
    ``Layout.of(payload)``, ``prefix_hashes()`` and ``prefix_tokens()`` on every request."""

    def __init__(self) -> None:
        self._previous: _Snapshot | None = None
        self._probe = 0
        #: positions re-used from the previous request by the last :meth:`build` (for tests and benchmarks)
        self.reused = 0

    def reset(self) -> None:
        self._previous = None
        self._probe = 0
        self.reused = 0

    def build(self, payload: Any) -> tuple[Layout, list[bytes]]:
        """``(layout, prefix hashes)`` of ``payload``, with ``layout.prefix_tokens()`` computed.
        Raises CachePayloadError as :meth:`Layout.of` does (the history is then left as it was)."""
        cut_message = self._unchanged_messages(payload)
        previous = self._previous
        cut = None
        if previous is not None and cut_message is not None:
            cut = self._probe_prefix(previous, previous.position_start[cut_message])
        if previous is None or cut_message is None or cut is None:
            layout = Layout.of(payload)
            digests: list[bytes] = []
            hashes = layout.prefix_hashes(digests=digests)
            layout.prefix_tokens()
            self.reused = kept = 0
        else:
            layout, hashes, digests, kept = self._resume(payload, previous, cut)
        self._previous = self._snapshot(payload, layout, hashes, digests, previous if kept else None, kept)
        return layout, hashes

    def _head(self, payload: Any) -> list[Any]:
        out: list[Any] = []
        for key in ("tools", "system"):
            value = payload.get(key)
            if type(value) is list:
                out.append(len(value))
                out += map(_fingerprint, value)
            else:
                out.append(value)
        return out

    def _unchanged_messages(self, payload: Any) -> int | None:
        """How many leading messages are unchanged since the previous request (None: rebuild all)."""
        previous = self._previous
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if previous is None or type(messages) is not list:
            return None
        if previous.settings != _settings(payload) or previous.head != self._head(payload):
            return None
        k = min(len(messages), len(previous.contents))
        try:
            # only role and content enter the prefix. One C-level comparison per list checks every
            # message of the history: the content against a shallow copy of what it was (so a list that
            # grew in place, a replaced block or a reassigned field all compare unequal); equal values
            # in new objects (a history rebuilt from JSON) compare equal and are reused
            roles = list(map(_role, messages[:k]))
            contents = list(map(_content, messages[:k]))
        except (KeyError, TypeError):
            return None
        if roles != previous.roles[:k]:
            k = _first_difference(roles, previous.roles)
        if contents[:k] != previous.contents[:k]:
            k = min(k, _first_difference(contents, previous.contents))
        return k

    def _probe_prefix(self, previous: _Snapshot, cut: int) -> int | None:
        """Re-digest PROBE blocks of the reused prefix; return the cut (a message's first position),
        lowered to the message holding a block that changed, or None when a tools/system block did."""
        layout = previous.layout
        if cut == 0:
            return 0
        start = self._probe % cut
        for pos in range(start, min(cut, start + PROBE)):
            region = layout.region[pos]
            first = region == MESSAGES and (
                pos == 0 or layout.outer[pos - 1] != layout.outer[pos] or layout.region[pos - 1] != MESSAGES
            )
            block = layout.blocks[pos]
            try:
                digest = block_digest(layout.roles[pos], first, block)
            except RecursionError:
                digest = b""
            if digest != previous.digests[pos]:
                self._probe = 0
                return None if region != MESSAGES else previous.position_start[layout.outer[pos]]
        self._probe = start + PROBE
        return cut

    def _resume(self, payload: Any, previous: _Snapshot, cut: int) -> tuple[Layout, list[bytes], list[bytes], int]:
        # the first message starting at `cut` (messages without blocks share their neighbour's start)
        k = bisect_right(previous.position_start, cut) - 1
        while k > 0 and previous.position_start[k - 1] == cut:
            k -= 1
        old = previous.layout
        layout = Layout(payload)
        layout.region = old.region[:cut]
        layout.outer = old.outer[:cut]
        layout.inner = old.inner[:cut]
        layout.blocks = old.blocks[:cut]
        layout.roles = old.roles[:cut]
        layout.cacheable = old.cacheable[:cut]
        layout.markers = {p: v for p, v in old.markers.items() if p < cut}
        # markers nested in tool_result content: always re-scanned (the invariant does not look inside)
        messages = payload["messages"]
        for pos in old.result_lists:
            if pos >= cut:
                break
            m, b = layout.outer[pos], layout.inner[pos]
            block = messages[m]["content"][b]
            layout.result_lists.append(pos)
            if type(block) is dict and type(block.get("content")) is list:
                layout.scan_nested(pos, block, f"messages[{m}].content[{b}]")
        span = dict(old.message_span)
        for m in range(k, len(previous.contents)):
            span.pop(m, None)
        layout.message_span = span
        layout.add_messages(messages, k)
        digests = previous.digests[:cut]
        hashes = layout.prefix_hashes(known=previous.chain[:cut], digests=digests)
        layout.prefix_tokens(known=old.prefix_tokens()[:cut])
        self.reused = cut
        return layout, hashes, digests, k

    def _snapshot(
        self,
        payload: Any,
        layout: Layout,
        hashes: list[bytes],
        digests: list[bytes],
        previous: _Snapshot | None,
        kept: int,
    ) -> _Snapshot | None:
        """What the next request is compared with; the first ``kept`` messages' entries are taken from
        ``previous`` (verified equal), so only the new messages cost Python-level work."""
        messages = payload.get("messages")
        if type(messages) is not list:
            return None
        new = messages[kept:]
        if not all(type(m) is dict for m in new):
            return None
        contents = list(map(_content, new))
        if not all(type(c) is str or type(c) is list for c in contents):
            return None  # tuples and the like: correct, but always rebuilt
        blocks_per_message = [len(c) if type(c) is list else (1 if c else 0) for c in contents]
        copies = list(map(_copy_content, contents))
        roles = [m.get("role", "") for m in new]
        if previous is None:
            head = len(layout) - sum(blocks_per_message)
            return _Snapshot(
                layout,
                hashes,
                digests,
                _settings(payload),
                self._head(payload),
                roles,
                copies,
                list(accumulate(blocks_per_message, initial=head)),
            )
        position_start = previous.position_start[: kept + 1]
        return _Snapshot(
            layout,
            hashes,
            digests,
            previous.settings,
            previous.head,
            previous.roles[:kept] + roles,
            previous.contents[:kept] + copies,
            position_start + list(accumulate(blocks_per_message, initial=position_start[-1]))[1:],
        )
