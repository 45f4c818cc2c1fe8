"""A bounded LRU cache whose entries also expire: online features are fresh for a short while."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from rtml_runtime.clock import SYSTEM_CLOCK, Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` values, each served for ``ttl_s`` after it was put.

    ``max_entries=0`` (or ``ttl_s=0``) disables the cache: every get misses, nothing is stored.
    A stored ``None`` is indistinguishable from a miss, so do not cache ``None``.
    """

    __slots__ = ("_clock", "_entries", "evictions", "hits", "max_entries", "misses", "ttl_s")

    def __init__(self, max_entries: int, ttl_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        if ttl_s < 0:
            raise ValueError(f"ttl_s must not be negative, not {ttl_s}")
        self.max_entries = max_entries if ttl_s > 0 else 0
        self.ttl_s = ttl_s
        self._clock = clock
        # key -> (expires_at, value); order is least to most recently used.
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries pushed out by capacity, not by expiry

    def get(self, key: K) -> V | None:
        """The fresh value for ``key`` or None; an expired entry is dropped and counts as a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires_at, value = entry
        if self._clock.monotonic() >= expires_at:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` for ``ttl_s``, evicting the least recently used entry when full."""
        if self.max_entries == 0:
            return
        self._entries[key] = (self._clock.monotonic() + self.ttl_s, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def __len__(self) -> int:
        """Entries held, counting expired ones not yet looked up (dropping them is lazy)."""
        return len(self._entries)
