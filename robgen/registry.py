"""Name -> object registries, so a new architecture, dataset, loss, start or sampler is one decorated function."""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import RobgenError

T = TypeVar("T")


class Registry(Generic[T]):
    """A validated mapping from names to objects, filled with the @register decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, **attrs) -> Callable[[T], T]:
        """Register under `name` (default: the object's __name__); `attrs` are set on the object (e.g. defaults)."""
        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            for attr, value in attrs.items():
                setattr(obj, attr, value)
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise RobgenError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
