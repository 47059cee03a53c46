# What a CachePlanner remembers of the previous request, so that the next one is flattened, hashed and
# estimated only from its first changed message on: the Python-level work per request follows what
# changed, not the length of the history (what remains per request is a handful of C-level passes:
# map(id, ...), map(len, ...), and one tuple of field values per block).
#
# The invariant, checked on every request: a message is reused when
#   - model, tool_choice and thinking are the same, and tools and system are equal block by block;
#   - every message before it has the same field values (role, and the same content object: a string, or
#     a list of the same length);
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
from itertools import accumulate, chain, compress, repeat
from operator import is_, itemgetter
from typing import Any, Final

from .layout import MESSAGES, Layout, block_digest

__all__ = ["PROBE", "History"]

#: Blocks of the reused prefix re-digested per request (the rotating deep check).
PROBE: Final = 32

_content = itemgetter("content")


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
    messages: list[Any]  # the message objects (their fingerprints hold what they contain)
    message_fingerprints: list[Any]  # tuple(message.values()): role, the content object, other fields
    content_lens: list[int]
    flat_start: list[int]  # message index -> index of its first block among all list-content blocks
    fingerprints: list[Any]  # per list-content block, in order
    position_start: list[int]  # message index -> its first layout position (len(messages) -> total)


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
        k = min(len(messages), len(previous.messages))
        try:
            # equal field values (role, the same content object, ...) mean an equal message, whether or
            # not it is the same dict: one C-level pass instead of an identity pass and a value pass
            fingerprints = list(map(tuple, map(dict.values, messages[:k])))
            if fingerprints != previous.message_fingerprints[:k]:
                k = _first_difference(fingerprints, previous.message_fingerprints)
            contents = list(map(_content, messages[:k]))
            lens = list(map(len, contents))
        except (KeyError, TypeError):
            return None
        if lens != previous.content_lens[:k]:
            k = _first_difference(lens, previous.content_lens)
            contents = contents[:k]
        lists = compress(contents, map(is_, map(type, contents), repeat(list)))
        flat = list(chain.from_iterable(lists))
        try:
            fingerprints = list(map(tuple, map(dict.values, flat)))
        except TypeError:  # a block that is not a dict: fall back to the per-block fingerprint
            fingerprints = list(map(_fingerprint, flat))
        end = previous.flat_start[k]
        if len(fingerprints) != end:  # pragma: no cover - equal lengths were checked message by message
            return None
        if fingerprints != previous.fingerprints[:end]:
            i = _first_difference(fingerprints, previous.fingerprints)
            k = min(k, bisect_right(previous.flat_start, i) - 1)
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
                layout._scan_nested(pos, block, f"messages[{m}].content[{b}]")
        span = dict(old.message_span)
        for m in range(k, len(previous.messages)):
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
        lens = [len(c) if type(c) is list else 0 for c in contents]
        flat = list(chain.from_iterable([c for c in contents if type(c) is list]))
        blocks_per_message = [n if type(c) is list else (1 if c else 0) for c, n in zip(contents, lens, strict=True)]
        if previous is None:
            head = len(layout) - sum(blocks_per_message)
            return _Snapshot(
                layout,
                hashes,
                digests,
                _settings(payload),
                self._head(payload),
                list(messages),
                list(map(tuple, map(dict.values, messages))),
                list(map(len, contents)),
                list(accumulate(lens, initial=0)),
                list(map(_fingerprint, flat)),
                list(accumulate(blocks_per_message, initial=head)),
            )
        flat_start = previous.flat_start[: kept + 1]
        position_start = previous.position_start[: kept + 1]
        return _Snapshot(
            layout,
            hashes,
            digests,
            previous.settings,
            previous.head,
            list(messages),
            previous.message_fingerprints[:kept] + list(map(tuple, map(dict.values, new))),
            previous.content_lens[:kept] + list(map(len, contents)),
            flat_start + list(accumulate(lens, initial=flat_start[-1]))[1:],
            previous.fingerprints[: flat_start[-1]] + list(map(_fingerprint, flat)),
            position_start + list(accumulate(blocks_per_message, initial=position_start[-1]))[1:],
        )
