# Stream events: small frozen dataclasses whose `type` values and attribute names match the SDK's
# MessageStream events, so code written against `client.messages.stream()` works unchanged. Payloads are
# `Data` views over the decoded JSON: attribute and item access without building pydantic models.
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

__all__ = [
    "CitationEvent",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "Data",
    "Event",
    "InputJsonEvent",
    "MessageDeltaEvent",
    "MessageStartEvent",
    "MessageStopEvent",
    "SignatureEvent",
    "TextEvent",
    "ThinkingEvent",
    "UnknownEvent",
]


def _view(value: Any) -> Any:
    if type(value) is dict:
        return Data(value)
    if type(value) is list:
        return [_view(item) for item in value]
    return value


class Data(Mapping[str, Any]):
    """A read-only view of a decoded JSON object, with attribute access like the SDK's models.

    ``view.text`` and ``view["text"]`` both work; nested objects come back as ``Data`` too. An absent key
    reads as ``None`` through attribute access (as the SDK's optional fields do) and raises ``KeyError``
    through item access. ``to_dict()`` returns the underlying dict (do not mutate it).
    """

    __slots__ = ("_d",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._d = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _view(self._d.get(name))

    def __getitem__(self, key: str) -> Any:
        return _view(self._d[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Data):
            return self._d == other._d
        return self._d == other

    def __hash__(self) -> int:
        raise TypeError("Data views are not hashable")

    def __repr__(self) -> str:
        return f"Data({self._d!r})"

    def to_dict(self) -> dict[str, Any]:
        return self._d

    def model_dump(self, **_: Any) -> dict[str, Any]:
        """The SDK's pydantic spelling of ``to_dict()``."""
        return self._d

    def to_json(self, *, indent: int | None = 2) -> str:
        import json

        return json.dumps(self._d, indent=indent, ensure_ascii=False)


class _SnapshotSource(Protocol):
    def snapshot_at(self, n: int, /) -> Any: ...


class _Lazy:
    """The snapshot after the n-th delta of one block, computed on first access, then kept: producing an
    event stays O(1) however large the block has grown."""

    __slots__ = ("_n", "_source", "_value")

    _UNSET: ClassVar[object] = object()

    def __init__(self, source: _SnapshotSource, n: int) -> None:
        self._source: _SnapshotSource | None = source
        self._n = n
        self._value: Any = _Lazy._UNSET

    def get(self) -> Any:
        if self._value is _Lazy._UNSET:
            assert self._source is not None
            self._value = self._source.snapshot_at(self._n)
            self._source = None  # let the block go once this snapshot exists
        return self._value


class _EventBase:
    __slots__ = ()
    type: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event (snapshots included, so this forces them)."""
        out: dict[str, Any] = {"type": self.type}
        for name in self._public:
            value = getattr(self, name)
            out[name] = _plain(value)
        return out

    _public: ClassVar[tuple[str, ...]] = ()


def _plain(value: Any) -> Any:
    if isinstance(value, Data):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class MessageStartEvent(_EventBase):
    message: Data
    type: Literal["message_start"] = "message_start"
    _public: ClassVar[tuple[str, ...]] = ("message",)


@dataclass(frozen=True, slots=True)
class ContentBlockStartEvent(_EventBase):
    index: int
    content_block: Data
    type: Literal["content_block_start"] = "content_block_start"
    _public: ClassVar[tuple[str, ...]] = ("index", "content_block")


@dataclass(frozen=True, slots=True)
class ContentBlockDeltaEvent(_EventBase):
    index: int
    delta: Data
    type: Literal["content_block_delta"] = "content_block_delta"
    _public: ClassVar[tuple[str, ...]] = ("index", "delta")


@dataclass(frozen=True, slots=True)
class ContentBlockStopEvent(_EventBase):
    index: int
    content_block: Data
    type: Literal["content_block_stop"] = "content_block_stop"
    _public: ClassVar[tuple[str, ...]] = ("index", "content_block")


@dataclass(frozen=True, slots=True)
class MessageDeltaEvent(_EventBase):
    delta: Data
    usage: Data
    type: Literal["message_delta"] = "message_delta"
    _public: ClassVar[tuple[str, ...]] = ("delta", "usage")


@dataclass(frozen=True, slots=True)
class MessageStopEvent(_EventBase):
    message: Data
    type: Literal["message_stop"] = "message_stop"
    _public: ClassVar[tuple[str, ...]] = ("message",)


@dataclass(frozen=True, slots=True, eq=False)
class TextEvent(_EventBase):
    """A text delta. ``snapshot`` (all the block's text so far) is built on first access."""

    text: str
    _snapshot: _Lazy = field(repr=False)
    type: Literal["text"] = "text"
    _public: ClassVar[tuple[str, ...]] = ("text", "snapshot")

    @property
    def snapshot(self) -> str:
        value: str = self._snapshot.get()
        return value


@dataclass(frozen=True, slots=True, eq=False)
class ThinkingEvent(_EventBase):
    """A thinking delta. ``snapshot`` (all the block's thinking so far) is built on first access."""

    thinking: str
    _snapshot: _Lazy = field(repr=False)
    type: Literal["thinking"] = "thinking"
    _public: ClassVar[tuple[str, ...]] = ("thinking", "snapshot")

    @property
    def snapshot(self) -> str:
        value: str = self._snapshot.get()
        return value


@dataclass(frozen=True, slots=True)
class SignatureEvent(_EventBase):
    signature: str
    type: Literal["signature"] = "signature"
    _public: ClassVar[tuple[str, ...]] = ("signature",)


@dataclass(frozen=True, slots=True, eq=False)
class CitationEvent(_EventBase):
    """A citation appended to a text block; ``snapshot`` is the block's citations so far."""

    citation: Data
    _snapshot: _Lazy = field(repr=False)
    type: Literal["citation"] = "citation"
    _public: ClassVar[tuple[str, ...]] = ("citation", "snapshot")

    @property
    def snapshot(self) -> list[Data]:
        value: list[Data] = self._snapshot.get()
        return value


@dataclass(frozen=True, slots=True, eq=False)
class InputJsonEvent(_EventBase):
    """A tool-input fragment. ``snapshot`` is the parsed partial input after it, built on first access."""

    partial_json: str
    _snapshot: _Lazy = field(repr=False)
    type: Literal["input_json"] = "input_json"
    _public: ClassVar[tuple[str, ...]] = ("partial_json", "snapshot")

    @property
    def snapshot(self) -> object:
        return self._snapshot.get()


class UnknownEvent(_EventBase):
    """A wire event mendstream does not know, passed through: ``type``, ``data``, and its fields as
    attributes (``event.some_field``)."""

    __slots__ = ("data", "type")

    def __init__(self, type: str, data: Data) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "data", data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.data, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("events are immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnknownEvent) and (self.type, self.data) == (other.type, other.data)

    def __hash__(self) -> int:
        return hash(self.type)

    def __repr__(self) -> str:
        return f"UnknownEvent(type={self.type!r}, data={self.data!r})"

    def to_dict(self) -> dict[str, Any]:
        return self.data.to_dict()


Event = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | TextEvent
    | ThinkingEvent
    | SignatureEvent
    | CitationEvent
    | InputJsonEvent
    | UnknownEvent
)
