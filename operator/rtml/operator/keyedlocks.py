"""One lock per object, kept only while some thread holds or waits for it.

The operator serialises the work on one object (a Model by namespace/name, a FeatureView or an
Experiment by uid) with a lock per key. A plain `defaultdict(threading.Lock)` keeps a lock for
every object ever seen: an operator running for months beside CI pipelines that create and
delete Models grows by one lock per Model ever created. Here the map holds its locks weakly: a
thread inside `with locks[key]:` (or waiting in it) holds a reference, so two threads asking for
the same key while either uses it get the same lock; once nobody does, the entry goes. Written
here because the standard library has no keyed lock, and the one-lock-per-key contract is all
the operator needs from one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable


class KeyedLocks:
    """Thread-safe: `locks[key]` returns the lock of `key`, the same one while it is in use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[Hashable, threading.Lock] = (
            weakref.WeakValueDictionary()
        )

    def __getitem__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = threading.Lock()
                self._locks[key] = lock
            return lock

    def __len__(self) -> int:
        """Keys whose lock someone still holds a reference to."""
        with self._guard:
            return len(self._locks)
