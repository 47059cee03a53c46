# Stream events: small frozen dataclasses whose `type` values and attribute names match the SDK's
# MessageStream events, so code written against `client.messages.stream()` works unchanged. Payloads are
# `Data` views over the decoded JSON: attribute and item access without building pydantic models.
from __future__ import annotations

from collections.abc import Iterator, Mapping
from operator import itemgetter
from typing import Any, ClassVar, Literal, Protocol, Self

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


_new = tuple.__new__


def _item(i: int) -> Any:
    """A read-only attribute reading field ``i`` of an event (a C-level getter, as NamedTuple uses)."""
    return property(itemgetter(i))


class _EventBase(tuple[Any, ...]):
    """Events are tuple subclasses: immutable, and built by one C call (``tuple.__new__``) on the hot path,
    which costs a fraction of a dataclass ``__init__``. The parser builds one or two per delta.

    ``_public`` names the attributes ``to_dict()`` and ``repr()`` show. Two events are equal when they are
    of the same class and hold equal fields.
    """

    __slots__ = ()
    type: ClassVar[str]
    _public: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *fields: Any) -> Self:
        return _new(cls, fields)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event (snapshots included, so this builds them)."""
        out: dict[str, Any] = {"type": self.type}
        for name in self._public:
            out[name] = _plain(getattr(self, name))
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._public if name != "snapshot")
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


class _SnapshotEvent(_EventBase):
    """An event whose ``snapshot`` is the block's state after this delta: fields (payload, source, n). It is
    computed when read (its source caches the latest), so producing the event is O(1) however large the
    block has grown."""

    __slots__ = ()

    @property
    def snapshot(self) -> Any:
        source: _SnapshotSource = self[1]
        return source.snapshot_at(self[2])


def _plain(value: Any) -> Any:
    if isinstance(value, Data):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class MessageStartEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["message_start"]] = "message_start"
    _public = ("message",)
    message: Data = _item(0)


class ContentBlockStartEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["content_block_start"]] = "content_block_start"
    _public = ("index", "content_block")
    index: int = _item(0)  # type: ignore[assignment]  # the SDK's name; it shadows tuple.index
    content_block: Data = _item(1)


class ContentBlockDeltaEvent(_EventBase):
    """A delta as sent: fields (index, the delta's dict). ``delta`` is a view built when read."""

    __slots__ = ()
    type: ClassVar[Literal["content_block_delta"]] = "content_block_delta"
    _public = ("index", "delta")
    index: int = _item(0)  # type: ignore[assignment]  # the SDK's name; it shadows tuple.index

    @property
    def delta(self) -> Data:
        return Data(self[1])


class ContentBlockStopEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["content_block_stop"]] = "content_block_stop"
    _public = ("index", "content_block")
    index: int = _item(0)  # type: ignore[assignment]  # the SDK's name; it shadows tuple.index
    content_block: Data = _item(1)


class MessageDeltaEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["message_delta"]] = "message_delta"
    _public = ("delta", "usage")
    delta: Data = _item(0)
    usage: Data = _item(1)


class MessageStopEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["message_stop"]] = "message_stop"
    _public = ("message",)
    message: Data = _item(0)


class SignatureEvent(_EventBase):
    __slots__ = ()
    type: ClassVar[Literal["signature"]] = "signature"
    _public = ("signature",)
    signature: str = _item(0)


class TextEvent(_SnapshotEvent):
    """A text delta; ``snapshot`` is all the block's text so far."""

    __slots__ = ()
    type: ClassVar[Literal["text"]] = "text"
    _public = ("text", "snapshot")
    text: str = _item(0)


class ThinkingEvent(_SnapshotEvent):
    """A thinking delta; ``snapshot`` is all the block's thinking so far."""

    __slots__ = ()
    type: ClassVar[Literal["thinking"]] = "thinking"
    _public = ("thinking", "snapshot")
    thinking: str = _item(0)


class CitationEvent(_SnapshotEvent):
    """A citation appended to a text block; ``snapshot`` is the block's citations so far."""

    __slots__ = ()
    type: ClassVar[Literal["citation"]] = "citation"
    _public = ("citation", "snapshot")
    citation: Any = _item(0)


class InputJsonEvent(_SnapshotEvent):
    """A tool-input fragment; ``snapshot`` is the parsed partial input after it."""

    __slots__ = ()
    type: ClassVar[Literal["input_json"]] = "input_json"
    _public = ("partial_json", "snapshot")
    partial_json: str = _item(0)


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
