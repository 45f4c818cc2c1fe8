"""TokenBucket: refill rate, burst cap and Retry-After, on a fake clock."""

from __future__ import annotations

import math

import pytest

from rtml.api.model import RateLimit
from rtml_runtime.ratelimit import TokenBucket
from tests.clock import FakeClock

pytestmark = pytest.mark.unit


def drain(bucket: TokenBucket) -> int:
    taken = 0
    while bucket.try_acquire():
        taken += 1
    return taken


def test_starts_full() -> None:
    bucket = TokenBucket(100, 10, FakeClock())
    assert drain(bucket) == 10


@pytest.mark.parametrize(
    ("polls_per_s", "permits"),
    [
        (10, 110),  # each poll finds exactly the 10 tokens a tenth of a second brings
        (1000, 110),
        (7919, 110),  # a prime: refills that are never whole tokens
        (2, 30),  # half a second brings 50 tokens but the bucket holds 10
        (1, 20),
    ],
)
def test_permits_in_the_first_second_when_hammered(polls_per_s: int, permits: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock)
    taken = 0
    for i in range(polls_per_s + 1):  # from t=0 to t=1 inclusive
        clock.now = i / polls_per_s
        taken += drain(bucket)
    assert taken == permits


@pytest.mark.parametrize(("rate", "wait_s", "refilled"), [(100, 0.05, 5), (2, 1.5, 3), (0.5, 4, 2)])
def test_refills_at_the_configured_rate(rate: float, wait_s: float, refilled: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, 10, clock)
    drain(bucket)
    clock.advance(wait_s)
    assert drain(bucket) == refilled


def test_never_holds_more_than_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock)
    clock.advance(3600)
    assert drain(bucket) == 10


def test_acquires_several_tokens_or_none() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock)
    assert bucket.try_acquire(3)
    assert not bucket.try_acquire(3)  # two left: nothing is taken
    assert bucket.try_acquire(2)
    assert not bucket.try_acquire()


@pytest.mark.parametrize(("n", "expected_s"), [(1, 0.01), (3, 0.03), (10, 0.1)])
def test_retry_after_is_the_time_to_refill(n: int, expected_s: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock)
    drain(bucket)
    assert bucket.retry_after_s(n) == pytest.approx(expected_s)
    clock.advance(expected_s)
    assert bucket.retry_after_s(n) == 0.0
    assert bucket.try_acquire(n)


def test_retry_after_counts_a_partial_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, 1, clock)
    drain(bucket)
    clock.advance(0.1)  # 0.4 of a token
    assert bucket.retry_after_s() == pytest.approx(0.15)


def test_retry_after_is_zero_with_tokens_and_infinite_beyond_burst() -> None:
    bucket = TokenBucket(100, 10, FakeClock())
    assert bucket.retry_after_s() == 0.0
    assert math.isinf(bucket.retry_after_s(11))
    assert not bucket.try_acquire(11)


def test_from_spec_unlimited_is_none() -> None:
    assert TokenBucket.from_spec(None) is None


@pytest.mark.parametrize(
    ("spec", "rate", "burst"),
    [
        ({"requestsPerSecond": 250, "burst": 40}, 250, 40),
        ({"requestsPerSecond": 250}, 250, 250),
        ({"requestsPerSecond": 2.5}, 2.5, 3),
        ({"requestsPerSecond": 0.2}, 0.2, 1),
    ],
)
def test_from_spec_burst_defaults_to_one_second_of_rate(
    spec: dict[str, float], rate: float, burst: int
) -> None:
    bucket = TokenBucket.from_spec(RateLimit.model_validate(spec), clock=FakeClock())
    assert bucket is not None
    assert (bucket.rate_per_s, bucket.burst) == (rate, burst)
    assert drain(bucket) == burst


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_impossible_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, FakeClock())
