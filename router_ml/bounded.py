"""A cache bounded in bytes: when what it holds passes ``max_bytes``, the least recently used entries leave.

Each entry's size comes from a function the owner gives (an estimate of the memory the entry keeps alive), so a
cache's worst case is its bound, however many distinct keys traffic brings.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from router_ml.errors import InvalidInput

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Least-recently-used cache holding at most ``max_bytes`` by ``size(key, value)``. Not thread-safe."""

    def __init__(self, max_bytes: int, size: Callable[[K, V], int]) -> None:
        if max_bytes < 0:
            raise InvalidInput(f"cache: 'max_bytes' must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._size = size
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used entries past the bound; an entry larger
        than the whole bound is not kept."""
        self.pop(key)
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.nbytes -= evicted

    def pop(self, key: K) -> V | None:
        """Remove and return the value under ``key``, or None."""
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.nbytes -= found[1]
        return found[0]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
