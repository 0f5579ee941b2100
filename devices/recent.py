"""A bounded memory of what was seen last: the proof-of-use sources remember what they
read (serials accepted by the HTTPS stand-in, certificates seen connecting to IoT Core)
without growing for ever."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Recent(Generic[T]):
    """The last ``size`` distinct items added (seeing one again makes it the newest)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[T, None] = {}  # insertion-ordered: the oldest is forgotten first

    def add(self, item: T) -> None:
        self._items.pop(item, None)
        self._items[item] = None
        while len(self._items) > self.size:
            del self._items[next(iter(self._items))]

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)
