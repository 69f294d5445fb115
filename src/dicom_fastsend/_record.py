"""Bases for the value classes on the start-up path: what ``@dataclass`` would give, built once.

``@dataclass`` writes each method it generates (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, ``__setattr__``...) as source and ``exec``s it: about
0.35 ms a class, which for the sixty-odd classes `fastsend send` imports was a
quarter of its start-up. A class here lists its fields in ``_fields`` (and, as
before, in ``__slots__``) and writes its own ``__init__`` (the one method that
must be fast, and typed); the bases give the rest, reading the fields in order:

- ``Value``: immutable, compared and hashed by its fields (a frozen dataclass);
- ``Record``: mutable, compared by its fields, unhashable (a plain dataclass).

A ``Value`` pickles by its fields. Neither supports inheritance between
records (a subclass's ``_fields`` would hide its base's); none is needed.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

_R = TypeVar("_R", bound="Record | Value")


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a ``Value`` (as ``dataclasses.FrozenInstanceError``)."""


# Sets a field of a Value in its __init__ (its own __setattr__ refuses), as dataclasses do.
setfield = object.__setattr__


class _Fields:
    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _repr_hidden: ClassVar[tuple[str, ...]] = ()  # fields left out of repr (a password)

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self._fields
            if name not in self._repr_hidden
        )
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented


class Value(_Fields):
    """An immutable record: equal and hashed by its fields, like ``@dataclass(frozen=True)``."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._values())

    def __getstate__(self) -> tuple[Any, ...]:
        return self._values()

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self._fields, state, strict=True):
            setfield(self, name, value)


class Record(_Fields):
    """A mutable record: equal by its fields and so unhashable, like ``@dataclass``."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


def replace(record: _R, **changes: Any) -> _R:
    """A copy of ``record`` with ``changes`` (``dataclasses.replace``); runs its ``__init__``."""
    values = {name: getattr(record, name) for name in record._fields}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(record).__qualname__} has no field {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(record)(**values)
