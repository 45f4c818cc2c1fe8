"""TTLCache: expiry, LRU eviction and counters, on a fake clock."""

from __future__ import annotations

import pytest

from rtml_runtime.cache import TTLCache
from tests.clock import FakeClock

pytestmark = pytest.mark.unit


def test_hit_and_miss_are_counted() -> None:
    cache: TTLCache[str, int] = TTLCache(10, 1.0, FakeClock())
    assert cache.get("u1") is None
    cache.put("u1", 7)
    assert cache.get("u1") == 7
    assert cache.get("u1") == 7
    assert cache.get("u2") is None
    assert (cache.hits, cache.misses, cache.evictions) == (2, 2, 0)


@pytest.mark.parametrize(("age_s", "fresh"), [(0.0, True), (0.999, True), (1.0, False), (5, False)])
def test_entries_expire_after_ttl(age_s: float, fresh: bool) -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, 1.0, clock)
    cache.put("u1", 7)
    clock.advance(age_s)
    assert cache.get("u1") == (7 if fresh else None)
    assert (cache.hits, cache.misses) == ((1, 0) if fresh else (0, 1))
    assert len(cache) == (1 if fresh else 0)  # an expired entry is dropped when found


def test_put_again_restarts_the_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, 1.0, clock)
    cache.put("u1", 1)
    clock.advance(0.6)
    cache.put("u1", 2)
    clock.advance(0.6)
    assert cache.get("u1") == 2


def test_evicts_the_least_recently_used() -> None:
    cache: TTLCache[str, int] = TTLCache(3, 60.0, FakeClock())
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.get("a") == 0  # a is now the most recently used: b is next out
    cache.put("d", 3)
    assert cache.get("b") is None
    cache.put("e", 4)  # c goes next
    assert cache.get("c") is None
    assert [cache.get(k) for k in "ade"] == [0, 3, 4]
    assert (len(cache), cache.evictions) == (3, 2)


def test_overwriting_a_key_does_not_evict() -> None:
    cache: TTLCache[str, int] = TTLCache(2, 60.0, FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # refreshes a: b becomes least recently used
    cache.put("c", 4)
    assert [cache.get(k) for k in "abc"] == [3, None, 4]
    assert cache.evictions == 1


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(0, 1.0), (100, 0.0)])
def test_disabled_cache_stores_nothing(max_entries: int, ttl_s: float) -> None:
    cache: TTLCache[str, int] = TTLCache(max_entries, ttl_s, FakeClock())
    cache.put("u1", 7)
    assert cache.get("u1") is None
    assert (len(cache), cache.hits, cache.misses, cache.evictions) == (0, 0, 1, 0)


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(-1, 1.0), (10, -1.0)])
def test_rejects_negative_settings(max_entries: int, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        TTLCache[str, int](max_entries, ttl_s, FakeClock())
