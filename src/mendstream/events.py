# Stream events: small frozen dataclasses whose `type` values and attribute names match the SDK's
# MessageStream events, so code written against `client.messages.stream()` works unchanged. Payloads are
# `Data` views over the decoded JSON: attribute and item access without building pydantic models.
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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


_UNSET: Any = object()


class _EventBase:
    __slots__ = ()
    type: ClassVar[str]
    _public: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event (snapshots included, so this builds them)."""
        out: dict[str, Any] = {"type": self.type}
        for name in self._public:
            out[name] = _plain(getattr(self, name))
        return out


class _SnapshotEvent(_EventBase):
    """An event whose ``snapshot`` (the block's state after this delta) is built on first access and then
    kept, so producing the event is O(1) however large the block has grown."""

    __slots__ = ()
    _source: _SnapshotSource | None
    _n: int
    _value: Any

    @property
    def snapshot(self) -> Any:
        if self._value is _UNSET:
            assert self._source is not None
            self._value = self._source.snapshot_at(self._n)
        return self._value


def _plain(value: Any) -> Any:
    if isinstance(value, Data):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# Events are slotted dataclasses, not frozen ones: a frozen dataclass costs twice as much to build, and the
# parser builds one or two per delta. Treat them as immutable.


@dataclass(slots=True)
class MessageStartEvent(_EventBase):
    message: Data
    type: ClassVar[Literal["message_start"]] = "message_start"
    _public: ClassVar[tuple[str, ...]] = ("message",)


@dataclass(slots=True)
class ContentBlockStartEvent(_EventBase):
    index: int
    content_block: Data
    type: ClassVar[Literal["content_block_start"]] = "content_block_start"
    _public: ClassVar[tuple[str, ...]] = ("index", "content_block")


@dataclass(slots=True)
class ContentBlockDeltaEvent(_EventBase):
    index: int
    delta: Data
    type: ClassVar[Literal["content_block_delta"]] = "content_block_delta"
    _public: ClassVar[tuple[str, ...]] = ("index", "delta")


@dataclass(slots=True)
class ContentBlockStopEvent(_EventBase):
    index: int
    content_block: Data
    type: ClassVar[Literal["content_block_stop"]] = "content_block_stop"
    _public: ClassVar[tuple[str, ...]] = ("index", "content_block")


@dataclass(slots=True)
class MessageDeltaEvent(_EventBase):
    delta: Data
    usage: Data
    type: ClassVar[Literal["message_delta"]] = "message_delta"
    _public: ClassVar[tuple[str, ...]] = ("delta", "usage")


@dataclass(slots=True)
class MessageStopEvent(_EventBase):
    message: Data
    type: ClassVar[Literal["message_stop"]] = "message_stop"
    _public: ClassVar[tuple[str, ...]] = ("message",)


@dataclass(slots=True)
class SignatureEvent(_EventBase):
    signature: str
    type: ClassVar[Literal["signature"]] = "signature"
    _public: ClassVar[tuple[str, ...]] = ("signature",)


@dataclass(slots=True, eq=False, repr=False)
class TextEvent(_SnapshotEvent):
    """A text delta; ``snapshot`` is all the block's text so far."""

    text: str
    _source: _SnapshotSource | None
    _n: int
    _value: Any = _UNSET
    type: ClassVar[Literal["text"]] = "text"
    _public: ClassVar[tuple[str, ...]] = ("text", "snapshot")

    def __repr__(self) -> str:
        return f"TextEvent(text={self.text!r})"


@dataclass(slots=True, eq=False, repr=False)
class ThinkingEvent(_SnapshotEvent):
    """A thinking delta; ``snapshot`` is all the block's thinking so far."""

    thinking: str
    _source: _SnapshotSource | None
    _n: int
    _value: Any = _UNSET
    type: ClassVar[Literal["thinking"]] = "thinking"
    _public: ClassVar[tuple[str, ...]] = ("thinking", "snapshot")

    def __repr__(self) -> str:
        return f"ThinkingEvent(thinking={self.thinking!r})"


@dataclass(slots=True, eq=False, repr=False)
class CitationEvent(_SnapshotEvent):
    """A citation appended to a text block; ``snapshot`` is the block's citations so far."""

    citation: Any
    _source: _SnapshotSource | None
    _n: int
    _value: Any = _UNSET
    type: ClassVar[Literal["citation"]] = "citation"
    _public: ClassVar[tuple[str, ...]] = ("citation", "snapshot")

    def __repr__(self) -> str:
        return f"CitationEvent(citation={self.citation!r})"


@dataclass(slots=True, eq=False, repr=False)
class InputJsonEvent(_SnapshotEvent):
    """A tool-input fragment; ``snapshot`` is the parsed partial input after it."""

    partial_json: str
    _source: _SnapshotSource | None
    _n: int
    _value: Any = _UNSET
    type: ClassVar[Literal["input_json"]] = "input_json"
    _public: ClassVar[tuple[str, ...]] = ("partial_json", "snapshot")

    def __repr__(self) -> str:
        return f"InputJsonEvent(partial_json={self.partial_json!r})"


class UnknownEvent:
    """A wire event mendstream does not know, passed through: ``type``, ``data``, and its fields as
    attributes (``event.some_field``)."""

    __slots__ = ("data", "type")
    type: str
    data: Data

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
