# The live message snapshot: `current_message_snapshot` as the SDK's MessageStream gives it, one message object
# that keeps changing while the stream is read (the SDK mutates its accumulated message in place), rather than a
# copy frozen when it was asked for. mendstream builds messages only when read, so the object refreshes itself
# from the stream's state when one of its fields is read after the stream moved on: the same object, its
# `content` list and its blocks updated in place, so references taken from it earlier see the new state too
# once the message is read again.
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from mendstream.core.sdk_events import to_sdk_message

__all__ = ["live_message"]

_LIVE = "__mendstream_live__"  # the key of the refresher in the live message's __dict__ (never serialized)
_ABSENT: Any = object()


class _Refresher:
    __slots__ = ("build", "read", "seen", "version")

    def __init__(
        self,
        read: Callable[[], dict[str, Any]],
        version: Callable[[], Hashable],
        build: Callable[[dict[str, Any]], Any],
    ) -> None:
        self.read = read
        self.version = version
        self.build = build
        self.seen: Hashable = version()


def live_message(
    read: Callable[[], dict[str, Any]],
    version: Callable[[], Hashable],
    *,
    beta: bool = False,
    build: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """The message ``read()`` returns, as an SDK ``Message`` (``BetaMessage`` with ``beta``) that stays current.

    ``read`` gives the message so far as a Messages API dict; ``version`` a cheap value that changes whenever
    that message may have (e.g. the parser's bytes fed). Reading any field of the returned object first
    compares ``version()`` with the one it was built at and, if it moved, rebuilds the message and updates the
    object in place: its fields, its ``content`` list and each block (and other nested model) whose type is
    unchanged. So ``snapshot.content[-1].text`` read after more events shows them, as with the SDK; a block
    object kept from earlier is updated when the message is next read. A refresh costs one build of the
    message (O(its size)); reading without progress costs one comparison.

    The object is an instance of a subclass of the SDK's class (``isinstance(snap, anthropic.types.Message)``
    holds; its repr and serialization are the SDK's). ``build`` makes the SDK's message of a dict (default
    :func:`~mendstream.core.sdk_events.to_sdk_message`; e.g. a ``ParsedMessage`` with ``output_format``). Without
    the SDK installed, the dict itself (not live).
    """
    if build is None:
        build = lambda current: to_sdk_message(current, beta=beta)  # noqa: E731
    message = build(read())
    if isinstance(message, dict):
        return message
    try:
        object.__setattr__(message, "__class__", _live_class(type(message)))
    except TypeError:  # a class whose layout refuses it: a snapshot that does not update
        return message
    message.__dict__[_LIVE] = _Refresher(read, version, build)
    return message


_classes: dict[type[Any], type[Any]] = {}
# Methods that read the whole message: they refresh it first (fields do, through __getattribute__).
_READERS = frozenset((
    "model_dump", "model_dump_json", "to_dict", "to_json", "dict", "json", "model_copy", "copy", "content",
))


def _live_class(base: type[Any]) -> type[Any]:
    known = _classes.get(base)
    if known is not None:
        return known
    inherited_get: Callable[[Any, str], Any] = getattr(base, "__getattribute__")  # noqa: B009 - unbound
    names = frozenset(getattr(base, "model_fields", None) or getattr(base, "__fields__", {})) | _READERS

    def __getattribute__(self: Any, name: str) -> Any:
        if name in names:
            _refresh(self)
        return inherited_get(self, name)

    def refreshed(method: str) -> Callable[..., Any]:
        inherited = getattr(base, method)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            _refresh(self)
            return inherited(self, *args, **kwargs)

        call.__name__ = method
        return call

    def frozen(self: Any) -> Any:
        """A plain SDK message holding what this one holds now (copies and pickles are not live)."""
        _refresh(self)
        copy = object.__new__(base)
        state = dict(object.__getattribute__(self, "__dict__"))
        state.pop(_LIVE, None)
        object.__setattr__(copy, "__dict__", state)
        for name in ("__pydantic_extra__", "__pydantic_fields_set__", "__pydantic_private__"):
            if hasattr(self, name):
                object.__setattr__(copy, name, getattr(self, name))
        return copy

    namespace: dict[str, Any] = {
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__getattribute__": __getattribute__,
        **{method: refreshed(method) for method in ("__repr__", "__str__", "__iter__") if hasattr(base, method)},
        # Compared, copied and pickled as the plain SDK message it holds now.
        "__eq__": lambda self, other: frozen(self) == (frozen(other) if type(other) is type(self) else other),
        "__hash__": None,
        "__copy__": lambda self: frozen(self).__copy__(),
        "__deepcopy__": lambda self, memo=None: frozen(self).__deepcopy__(memo),
        "__reduce_ex__": lambda self, protocol: (_same, (frozen(self),)),
    }
    meta: Any = type(base)  # pydantic's model metaclass
    made: type[Any] = meta(base.__name__, (base,), namespace)
    _classes[base] = made
    return made


def _same(value: Any) -> Any:
    """Unpickles a live message as the plain SDK message it was pickled as."""
    return value


def _refresh(message: Any) -> None:
    state = object.__getattribute__(message, "__dict__")
    refresher: _Refresher | None = state.get(_LIVE)
    if refresher is None:
        return
    version = refresher.version()
    if version == refresher.seen:
        return
    refresher.seen = version
    current = refresher.read()
    if not current:  # between attempts, before the next message_start: keep what was shown
        return
    _merge(message, refresher.build(current))


def _merge(old: Any, new: Any) -> None:
    """Make the model ``old`` hold what ``new`` holds, reusing ``old``'s nested models and lists."""
    state = object.__getattribute__(old, "__dict__")
    fresh = new.__dict__
    for key, value in fresh.items():
        current = state.get(key, _ABSENT)
        if type(current) is list and type(value) is list:
            _merge_list(current, value)
        elif current is not _ABSENT and type(current) is type(value) and hasattr(value, "__pydantic_fields_set__"):
            _merge(current, value)
        else:
            state[key] = value
    for key in [k for k in state if k not in fresh and k != _LIVE]:
        del state[key]
    for name in ("__pydantic_extra__", "__pydantic_fields_set__"):
        if hasattr(new, name):
            object.__setattr__(old, name, getattr(new, name))


def _merge_list(old: list[Any], new: list[Any]) -> None:
    for i, value in enumerate(new[: len(old)]):
        current = old[i]
        if type(current) is type(value) and hasattr(value, "__pydantic_fields_set__"):
            _merge(current, value)
        else:
            old[i] = value
    del old[len(new) :]
    old.extend(new[len(old) :])
