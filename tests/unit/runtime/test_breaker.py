"""CircuitBreaker: when it opens, how it probes, and how it closes, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from rtml.api.model import CircuitBreaker as CircuitBreakerSpec
from rtml_runtime.breaker import CircuitBreaker, State
from tests.clock import FakeClock

pytestmark = pytest.mark.unit

FAST = 0.010  # seconds; under SLOW_MS
SLOW = 0.250
SLOW_MS = 100
OPEN_S = 30.0


Events = list[tuple[str, State, State]]


def make(clock: FakeClock, events: Events | None = None, **kw: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "failure_rate_threshold": 50,
        "slow_call_ms": SLOW_MS,
        "slow_call_rate_threshold": 100,
        "window_size": 10,
        "minimum_calls": 4,
        "open_duration_s": OPEN_S,
        "half_open_calls": 3,
    }
    settings.update(kw)

    def listener(name: str, old: State, new: State) -> None:
        if events is not None:
            events.append((name, old, new))

    return CircuitBreaker("features", clock=clock, on_state_change=listener, **settings)


def state(breaker: CircuitBreaker) -> State:
    """Read through a call: mypy would otherwise keep the first asserted state narrowed."""
    return breaker.state


def feed(breaker: CircuitBreaker, calls: str) -> None:
    """Record one call per letter: o ok, f failed, s slow, x failed and slow."""
    outcomes = {"o": (FAST, True), "f": (FAST, False), "s": (SLOW, True), "x": (SLOW, False)}
    for letter in calls:
        breaker.record(*outcomes[letter])


def opened(clock: FakeClock, **kw: Any) -> CircuitBreaker:
    breaker = make(clock, **kw)
    feed(breaker, "ffff")
    assert state(breaker) is State.OPEN
    return breaker


def half_open(clock: FakeClock, **kw: Any) -> CircuitBreaker:
    breaker = opened(clock, **kw)
    clock.advance(OPEN_S)
    assert state(breaker) is State.HALF_OPEN
    return breaker


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ("oooo", State.CLOSED),
        ("ooof", State.CLOSED),  # 25 %
        ("oofo", State.CLOSED),
        ("ooff", State.OPEN),  # 50 % meets the threshold
        ("fofo", State.OPEN),
        ("ooooooff", State.CLOSED),  # 2 of 8 = 25 %
        ("oooooffff", State.CLOSED),  # 4 of 9 = 44 %
        ("ooooofffff", State.OPEN),  # 5 of 10
    ],
)
def test_opens_on_failure_rate(calls: str, expected: State) -> None:
    breaker = make(FakeClock())
    feed(breaker, calls)
    assert state(breaker) is expected


@pytest.mark.parametrize(
    ("calls", "threshold", "expected"),
    [
        ("ssss", 100, State.OPEN),
        ("ssso", 100, State.CLOSED),
        ("ssoo", 50, State.OPEN),
        ("sooo", 50, State.CLOSED),
        ("xooo", 25, State.OPEN),  # a failed slow call counts as slow too
    ],
)
def test_opens_on_slow_call_rate(calls: str, threshold: int, expected: State) -> None:
    # Failure threshold 100 % so only slowness can open it (xooo is 25 % failed).
    breaker = make(FakeClock(), failure_rate_threshold=100, slow_call_rate_threshold=threshold)
    feed(breaker, calls)
    assert state(breaker) is expected


@pytest.mark.parametrize(
    ("duration_s", "slow"),
    [(0.0999, False), (0.1, True), (0.5, True)],
)
def test_slow_means_at_least_slow_call_ms(duration_s: float, slow: bool) -> None:
    breaker = make(FakeClock())
    breaker.record(duration_s, ok=True)
    assert breaker.slow_call_rate == (100.0 if slow else 0.0)
    assert breaker.failure_rate == 0.0


def test_a_failed_slow_call_counts_in_both_rates() -> None:
    breaker = make(FakeClock(), minimum_calls=10)
    feed(breaker, "xo")
    assert (breaker.failure_rate, breaker.slow_call_rate) == (50.0, 50.0)


def test_does_not_judge_before_minimum_calls() -> None:
    breaker = make(FakeClock(), minimum_calls=6)
    feed(breaker, "fffff")
    assert state(breaker) is State.CLOSED
    assert breaker.allow()
    feed(breaker, "f")
    assert state(breaker) is State.OPEN


def test_window_keeps_only_the_last_window_size_calls() -> None:
    # Failure threshold 100 % keeps it closed while the rates are watched.
    breaker = make(FakeClock(), window_size=4, failure_rate_threshold=100)
    feed(breaker, "ffoo")
    assert (breaker.buffered_calls, breaker.failure_rate) == (4, 50.0)
    feed(breaker, "o")
    assert (breaker.buffered_calls, breaker.failure_rate) == (4, 25.0)
    feed(breaker, "o")
    assert breaker.failure_rate == 0.0  # both old failures aged out
    feed(breaker, "sxf")
    assert (breaker.failure_rate, breaker.slow_call_rate) == (50.0, 50.0)
    feed(breaker, "oooo")
    assert (breaker.failure_rate, breaker.slow_call_rate) == (0.0, 0.0)


def test_old_failures_age_out_before_they_can_open_it() -> None:
    breaker = make(FakeClock(), window_size=4, failure_rate_threshold=75)
    feed(breaker, "ooff")  # 50 %
    feed(breaker, "ooo")  # window f,o,o,o
    feed(breaker, "ff")  # window o,o,f,f: 50 %, though 4 of 9 failed in all
    assert state(breaker) is State.CLOSED
    feed(breaker, "f")  # o,f,f,f: 75 %
    assert state(breaker) is State.OPEN


def test_open_refuses_calls_until_open_duration_has_passed() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(OPEN_S - 0.001)
    assert not breaker.allow()
    assert state(breaker) is State.OPEN
    clock.advance(0.001)
    assert state(breaker) is State.HALF_OPEN
    assert breaker.allow()


def test_open_to_half_open_happens_on_allow_without_reading_state() -> None:
    clock = FakeClock()
    events: Events = []
    breaker = make(clock, events)
    feed(breaker, "ffff")
    clock.advance(OPEN_S)
    assert breaker.allow()
    assert events[-1] == ("features", State.OPEN, State.HALF_OPEN)


def test_half_open_permits_only_half_open_calls_probes() -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=3)
    refused_before = breaker.not_permitted_calls
    assert [breaker.allow() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.not_permitted_calls == refused_before + 2
    assert breaker.retry_after_s() == 0.0


def test_release_gives_a_probe_permit_back() -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=1)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_half_open_closes_after_good_probes_with_a_fresh_window() -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=3)
    for _ in range(3):
        assert breaker.allow()
    feed(breaker, "oo")
    assert state(breaker) is State.HALF_OPEN  # not judged until every probe is back
    feed(breaker, "o")
    assert state(breaker) is State.CLOSED
    assert (breaker.buffered_calls, breaker.failure_rate) == (0, 0.0)
    feed(breaker, "fff")  # the failures that opened it are gone: 3 < minimum_calls
    assert state(breaker) is State.CLOSED


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ("ooo", State.CLOSED),
        ("foo", State.CLOSED),  # 33 % failed, under 50 %
        ("ffo", State.OPEN),
        ("fff", State.OPEN),
        ("sso", State.CLOSED),  # 67 % slow, under 100 %
        ("sss", State.OPEN),
        ("xxo", State.OPEN),
    ],
)
def test_half_open_judges_its_probes(probes: str, expected: State) -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=3)
    for _ in probes:
        assert breaker.allow()
    feed(breaker, probes)
    assert state(breaker) is expected


def test_bad_probes_reopen_and_restart_the_open_timer() -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=2)
    clock.advance(7)
    for _ in range(2):
        assert breaker.allow()
    feed(breaker, "ff")
    assert state(breaker) is State.OPEN
    assert breaker.retry_after_s() == pytest.approx(OPEN_S)
    clock.advance(OPEN_S - 0.001)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.allow()


def test_records_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    feed(breaker, "oooooooooo")  # stragglers let through before it opened
    assert state(breaker) is State.OPEN
    clock.advance(OPEN_S)
    assert state(breaker) is State.HALF_OPEN


def test_a_record_without_a_probe_permit_is_not_a_probe() -> None:
    clock = FakeClock()
    breaker = half_open(clock, half_open_calls=1)
    feed(breaker, "f")  # a call from the CLOSED era, finishing late
    assert state(breaker) is State.HALF_OPEN
    assert breaker.allow()
    feed(breaker, "o")
    assert state(breaker) is State.CLOSED


def test_state_changes_are_reported_in_order() -> None:
    clock = FakeClock()
    events: Events = []
    breaker = make(clock, events, half_open_calls=1)
    feed(breaker, "ffff")
    clock.advance(OPEN_S)
    assert breaker.allow()
    feed(breaker, "f")
    clock.advance(OPEN_S)
    assert breaker.allow()
    feed(breaker, "o")
    assert events == [
        ("features", State.CLOSED, State.OPEN),
        ("features", State.OPEN, State.HALF_OPEN),
        ("features", State.HALF_OPEN, State.OPEN),
        ("features", State.OPEN, State.HALF_OPEN),
        ("features", State.HALF_OPEN, State.CLOSED),
    ]


def test_retry_after_counts_down_while_open() -> None:
    clock = FakeClock()
    breaker = make(clock)
    assert breaker.retry_after_s() == 0.0
    feed(breaker, "ffff")
    assert breaker.retry_after_s() == pytest.approx(OPEN_S)
    clock.advance(10)
    assert breaker.retry_after_s() == pytest.approx(OPEN_S - 10)
    clock.advance(OPEN_S)
    assert breaker.retry_after_s() == 0.0


def test_open_counts_the_calls_it_refuses() -> None:
    breaker = opened(FakeClock())
    assert [breaker.allow() for _ in range(3)] == [False, False, False]
    assert breaker.not_permitted_calls == 3


@pytest.mark.parametrize(
    ("member", "gauge"), [(State.CLOSED, 0), (State.OPEN, 1), (State.HALF_OPEN, 2)]
)
def test_gauge_values(member: State, gauge: int) -> None:
    assert member.gauge == gauge


def test_from_spec_reads_the_model_fields() -> None:
    spec = CircuitBreakerSpec.model_validate(
        {
            "failureRateThreshold": 40,
            "slowCallRateThreshold": 80,
            "windowSize": 50,
            "minimumCalls": 10,
            "openDuration": "1m30s",
            "halfOpenCalls": 2,
        }
    )
    breaker = CircuitBreaker.from_spec("model", spec, 75)
    assert (breaker.name, breaker.slow_call_ms, breaker.open_duration_s) == ("model", 75, 90.0)
    assert (breaker.failure_rate_threshold, breaker.slow_call_rate_threshold) == (40, 80)
    assert (breaker.window_size, breaker.minimum_calls, breaker.half_open_calls) == (50, 10, 2)
    assert state(breaker) is State.CLOSED


@pytest.mark.parametrize(
    "bad",
    [
        {"minimum_calls": 11},
        {"minimum_calls": 0},
        {"window_size": 0, "minimum_calls": 0},
        {"failure_rate_threshold": 0},
        {"slow_call_rate_threshold": 101},
        {"half_open_calls": 0},
        {"open_duration_s": -1},
    ],
)
def test_rejects_impossible_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make(FakeClock(), **bad)
