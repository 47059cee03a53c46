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
#
# The History is only a cache of work: a planner's decisions never depend on it. What they do depend on
# (the previous request's prefix hashes and tail, the written prefixes) is PlannerMemory below, which is
# also how a planner's state leaves the process: versioned JSON, bounded in bytes (see its docstring).
from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Any, Final

from mendstream.cache.layout import MESSAGES, Layout, block_digest
from mendstream.errors import PlannerStateError

__all__ = ["HASH_BYTES", "PROBE", "STATE_BYTES", "STATE_FORMAT", "STATE_VERSION", "History", "PlannerMemory",
           "SparseChain"]

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


# -- the planner's memory, and how it leaves the process ----------------------------------------------------

#: Bytes of one prefix hash (``Layout.prefix_hashes``: blake2b with ``digest_size=16``).
HASH_BYTES: Final = 16
#: The ``format`` field of an exported state, and its version (bumped on any incompatible change).
STATE_FORMAT: Final = "mendstream.cache-planner-state"
STATE_VERSION: Final = 1
#: The default cap of one exported state in bytes: a 3,500-block previous request and 256 written
#: prefixes in full. Larger states are thinned (see :meth:`PlannerMemory.encode`).
STATE_BYTES: Final = 64 * 1024
#: The smallest cap accepted: room for the header, the options and a few hashes.
MIN_STATE_BYTES: Final = 1024
#: A previous request longer than this many blocks is not a state this decoder accepts (an 8 MB JSON
#: list of positions would otherwise be a valid, very slow input).
_MAX_BLOCKS: Final = 10_000_000


class SparseChain:
    """The previous request's prefix hashes at some of its positions only: what a state that outgrew its
    byte cap keeps (a dense window at the end, evenly spaced checkpoints before it, and the tail).

    Reads like the full chain for what the planner asks of it: ``len`` is the previous request's length,
    ``chain[p]`` the hash at ``p`` (``b""``, equal to no hash, where it was not kept). Because a prefix
    hash covers its whole prefix, two chains that agree at ``p`` agree at every earlier position, so
    :meth:`common_prefix` binary-searches the kept positions. It answers exactly when the change lies in
    the dense window (an appended message, an edited last block) and otherwise the nearest kept position
    before the true answer: a marker placed up to one checkpoint spacing earlier than the full chain would
    place it, never an invalid one.
    """

    __slots__ = ("_at", "hashes", "length", "positions")

    def __init__(self, length: int, positions: Sequence[int], hashes: Sequence[bytes]) -> None:
        self.length = length
        self.positions = list(positions)
        self.hashes = list(hashes)
        self._at = dict(zip(self.positions, self.hashes, strict=True))

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0

    def __getitem__(self, pos: int) -> bytes:
        return self._at.get(pos, b"")

    def common_prefix(self, chain: Sequence[bytes]) -> int | None:
        """Last kept position below ``len(chain)`` where ``chain`` agrees with this one (None: none)."""
        positions, hashes = self.positions, self.hashes
        lo, hi = 0, bisect_right(positions, len(chain) - 1)  # invariant: agree below lo, disagree from hi
        while lo < hi:
            mid = (lo + hi) // 2
            if chain[positions[mid]] == hashes[mid]:
                lo = mid + 1
            else:
                hi = mid
        return positions[lo - 1] if lo > 0 else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _varints(numbers: Sequence[int]) -> bytes:
    out = bytearray()
    for n in numbers:
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def _unvarints(data: bytes) -> list[int]:
    out: list[int] = []
    n = shift = 0
    for byte in data:
        n |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 35:
                raise ValueError("a position is not a varint of at most 5 bytes")
        else:
            out.append(n)
            n = shift = 0
    if shift:
        raise ValueError("the positions end inside a varint")
    return out


def _thin(positions: Sequence[int], keep: int, tail: int | None) -> list[int]:
    """``keep`` of ``positions`` (sorted): the tail first, then a dense window at the end (half of what is
    left), then evenly spaced checkpoints before the window."""
    if keep >= len(positions):
        return list(positions)
    kept: set[int] = set()
    if tail is not None and keep > 0:
        kept.add(tail)
        keep -= 1
    window = (keep + 1) // 2
    cut = len(positions) - window
    kept.update(positions[cut:])
    rest, count = positions[:cut], keep - window
    if count > 0 and rest:
        kept.update(rest[((j + 1) * len(rest)) // count - 1] for j in range(count))
    return sorted(kept)


@dataclass(frozen=True, slots=True)
class PlannerMemory:
    """Everything a CachePlanner's placements depend on besides the request itself: the previous request's
    prefix hashes (``previous``: a list, or a :class:`SparseChain` after thinning) and tail, how far back
    the last tail change reached, the written prefixes (least recently used first) and the options.

    Encoded as compact JSON (never pickle)::

        {"format": "mendstream.cache-planner-state", "version": 1, "options": {...},
         "tail": 41 | null, "tail_back": 0, "length": 57,
         "chain": "<base64 of 16-byte hashes>", "positions": "<base64 of LEB128 gaps>" | null,
         "written": "<base64 of 16-byte hashes>"}

    ``positions`` is null for a full chain. Past ``max_bytes``, :meth:`encode` degrades in this order, and
    only as far as needed: (1) the previous chain is thinned to a dense window at its end (half the hashes
    that fit), evenly spaced checkpoints before it and the tail (see :class:`SparseChain` for what that
    changes: the "unchanged since the previous request" marker may land earlier when a change lies deep
    in the history); (2) when the written prefixes alone would take more than half the room, the oldest
    are dropped (an exact read of one of those is then no longer proposed).
    """

    previous: list[bytes] | SparseChain
    tail: int | None
    tail_back: int
    written: list[bytes]
    options: dict[str, Any]

    def size(self) -> int:
        """Bytes :meth:`encode` writes without a cap (computed, not encoded)."""
        chain = len(self.previous.hashes) if isinstance(self.previous, SparseChain) else len(self.previous)
        header = self._encode(b"", None, b"")
        positions = 0  # the header has "positions":null; a sparse chain writes a quoted string instead
        if isinstance(self.previous, SparseChain):
            positions = 4 * -(-len(self._gaps(self.previous.positions)) // 3) + 2 - len("null")
        return len(header) + 4 * -(-chain * HASH_BYTES // 3) + 4 * -(-len(self.written) * HASH_BYTES // 3) + positions

    @staticmethod
    def _gaps(positions: Sequence[int]) -> bytes:
        return _varints([p - q for p, q in zip(positions, [-1, *positions], strict=False)])

    def _encode(self, chain: bytes, gaps: bytes | None, written: bytes, tail: Any = ...) -> bytes:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "options": self.options,
                "tail": self.tail if tail is ... else tail,
                "tail_back": self.tail_back,
                "length": len(self.previous),
                "chain": _b64(chain),
                "positions": None if gaps is None else _b64(gaps),
                "written": _b64(written),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode("ascii")

    def encode(self, max_bytes: int = STATE_BYTES) -> bytes:
        """The state as at most ``max_bytes`` bytes of JSON, thinned as the class docstring says when the
        full state is larger. Raises UsageError: ``max_bytes`` below 1024 (MIN_STATE_BYTES)."""
        from mendstream.errors import UsageError

        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < MIN_STATE_BYTES:
            raise UsageError(f"max_bytes must be an integer of at least {MIN_STATE_BYTES}; got {max_bytes!r}")
        previous = self.previous
        if isinstance(previous, SparseChain):
            positions: list[int] | None = previous.positions
            hashes = previous.hashes
        else:
            positions, hashes = None, previous
        written = self.written
        if self.size() <= max_bytes:
            gaps = None if positions is None else self._gaps(positions)
            return self._encode(b"".join(hashes), gaps, b"".join(written))
        room = max_bytes - len(self._encode(b"", b"", b""))
        # (2) the written prefixes get at most half the room, newest first
        per_hash = 4 * HASH_BYTES / 3
        fits = int(room / 2 / per_hash)
        if len(written) > fits and len(written) * per_hash > room / 2:
            written = written[len(written) - fits :]
        # (1) thin the chain to what is left (a hash and its gap: at most ~28 characters; then shrink)
        all_positions = positions if positions is not None else range(len(hashes))
        at = dict(zip(all_positions, hashes, strict=True))
        keep = int((room - 4 * -(-len(written) * HASH_BYTES // 3)) / (per_hash + 4))
        while True:
            kept = _thin(list(all_positions), keep, self.tail)
            gaps = None if positions is None and len(kept) == len(hashes) else self._gaps(kept)
            data = self._encode(b"".join(at[p] for p in kept), gaps, b"".join(written),
                                tail=self.tail if self.tail in at and keep > 0 else None)
            if len(data) <= max_bytes or keep == 0:
                return data
            keep = min(keep - 1, int(keep * 0.95))

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview | str, max_bytes: int = STATE_BYTES) -> PlannerMemory:
        """Read what :meth:`encode` wrote. Raises PlannerStateError (``reason`` "size", "format" or "version")
        naming what was wrong; ``options`` are returned as stored (the caller compares them)."""
        if not isinstance(data, bytes | bytearray | memoryview | str):
            raise PlannerStateError(f"a planner state is bytes, not {type(data).__name__}", reason="format", data=b"")
        if len(data) > max_bytes:
            raise PlannerStateError(f"planner state of {len(data)} bytes is over the limit of {max_bytes}",
                                    reason="size", data=data)
        try:
            state = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PlannerStateError("planner state is not JSON", reason="format", data=data) from None

        def fail(what: str) -> PlannerStateError:
            return PlannerStateError(f"planner state: {what}", reason="format", data=data)

        if type(state) is not dict or state.get("format") != STATE_FORMAT:
            raise fail(f"not a {STATE_FORMAT} object")
        if state.get("version") != STATE_VERSION:
            raise PlannerStateError(
                f"planner state version {state.get('version')!r}; this mendstream reads version {STATE_VERSION}",
                reason="version", data=data)
        options, length, tail, back = (state.get(k) for k in ("options", "length", "tail", "tail_back"))
        if type(options) is not dict:
            raise fail("'options' is not an object")
        if type(length) is not int or not 0 <= length <= _MAX_BLOCKS:
            raise fail(f"'length' is not a block count: {length!r}")
        if tail is not None and (type(tail) is not int or not 0 <= tail < length):
            raise fail(f"'tail' is not a position below 'length': {tail!r}")
        if type(back) is not int or back < 0:
            raise fail(f"'tail_back' is not a non-negative integer: {back!r}")
        hashes, recent, raw = state.get("chain"), state.get("written"), state.get("positions")
        if not isinstance(hashes, str) or not isinstance(recent, str) or not (raw is None or isinstance(raw, str)):
            raise fail("'chain' and 'written' are not strings, or 'positions' is neither a string nor null")
        try:
            chain = _split(base64.b64decode(hashes, validate=True))
            written = _split(base64.b64decode(recent, validate=True))
            gaps = None if raw is None else _unvarints(base64.b64decode(raw, validate=True))
        except (TypeError, ValueError, binascii.Error) as exc:
            raise fail(f"a hash or position field is not what encode() writes ({exc})") from None
        previous: list[bytes] | SparseChain
        if gaps is None:
            if len(chain) != length:
                raise fail(f"{len(chain)} hashes for a chain of length {length}")
            previous = chain
        else:
            positions = list(accumulate(gaps, initial=-1))[1:]
            if len(positions) != len(chain) or (gaps and (min(gaps) < 1 or positions[-1] >= length)):
                raise fail("positions do not match the hashes or the chain's length")
            if tail is not None and tail not in set(positions):
                raise fail("the tail's hash was not kept")
            previous = SparseChain(length, positions, chain)
        return cls(previous, tail, back, written, options)


def _split(data: bytes) -> list[bytes]:
    if len(data) % HASH_BYTES:
        raise ValueError(f"{len(data)} bytes is not a whole number of {HASH_BYTES}-byte hashes")
    return [data[i : i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES)]
