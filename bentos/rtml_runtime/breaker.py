"""When a dependency is failing or slow, stop calling it for a while (resilience4j semantics)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from rtml.api.common import parse_duration
from rtml_runtime.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from rtml.api.model import CircuitBreaker as CircuitBreakerSpec

# Outcome bits stored per call in the ring buffer: one byte per call, no objects.
_FAILED = 1
_SLOW = 2


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> int:
        """The value of rtml_circuit_breaker_state: 0 closed, 1 open, 2 half-open."""
        return _GAUGE[self]


_GAUGE = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}

StateListener = Callable[[str, State, State], None]


class CircuitBreaker:
    """A count-based breaker: judges the last ``window_size`` calls, then probes before closing.

    Single-threaded by design (one asyncio loop per process); every method is O(1).
    """

    __slots__ = (
        "_buffer",
        "_calls",
        "_clock",
        "_failures",
        "_next",
        "_not_permitted",
        "_on_state_change",
        "_open_until",
        "_probe_failures",
        "_probe_slow",
        "_probes_permitted",
        "_probes_recorded",
        "_slow",
        "_state",
        "failure_rate_threshold",
        "half_open_calls",
        "minimum_calls",
        "name",
        "open_duration_s",
        "slow_call_ms",
        "slow_call_rate_threshold",
        "window_size",
    )

    # Set by _reset_window / _reset_probes, which __init__ calls.
    _calls: int
    _next: int
    _failures: int
    _slow: int
    _probes_permitted: int
    _probes_recorded: int
    _probe_failures: int
    _probe_slow: int

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float,
        slow_call_ms: float,
        slow_call_rate_threshold: float,
        window_size: int,
        minimum_calls: int,
        open_duration_s: float,
        half_open_calls: int,
        clock: Clock = SYSTEM_CLOCK,
        on_state_change: StateListener | None = None,
    ) -> None:
        for label, pct in (
            ("failure_rate_threshold", failure_rate_threshold),
            ("slow_call_rate_threshold", slow_call_rate_threshold),
        ):
            if not 0 < pct <= 100:
                raise ValueError(f"{label} must be a percentage in (0, 100], not {pct}")
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, not {window_size}")
        if not 1 <= minimum_calls <= window_size:
            raise ValueError(f"minimum_calls must be in [1, window_size], not {minimum_calls}")
        if half_open_calls < 1:
            raise ValueError(f"half_open_calls must be at least 1, not {half_open_calls}")
        if open_duration_s < 0:
            raise ValueError(f"open_duration_s must not be negative, not {open_duration_s}")
        self.name = name
        self.failure_rate_threshold = failure_rate_threshold
        self.slow_call_ms = slow_call_ms
        self.slow_call_rate_threshold = slow_call_rate_threshold
        self.window_size = window_size
        self.minimum_calls = minimum_calls
        self.open_duration_s = open_duration_s
        self.half_open_calls = half_open_calls
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = State.CLOSED
        self._open_until = 0.0
        self._not_permitted = 0
        self._buffer = bytearray(window_size)
        self._reset_window()
        self._reset_probes()

    @classmethod
    def from_spec(
        cls,
        name: str,
        spec: CircuitBreakerSpec,
        slow_call_ms: int,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_state_change: StateListener | None = None,
    ) -> CircuitBreaker:
        """The breaker spec.circuitBreaker describes; ``slow_call_ms`` is the resolved threshold
        (ModelSpec.slow_call_ms), taken as given so each dependency can have its own."""
        return cls(
            name,
            failure_rate_threshold=spec.failure_rate_threshold,
            slow_call_ms=slow_call_ms,
            slow_call_rate_threshold=spec.slow_call_rate_threshold,
            window_size=spec.window_size,
            minimum_calls=spec.minimum_calls,
            open_duration_s=parse_duration(spec.open_duration),
            half_open_calls=spec.half_open_calls,
            clock=clock,
            on_state_change=on_state_change,
        )

    def settings(self) -> dict[str, float | int]:
        """The constructor's thresholds, to build the same breaker elsewhere (the shadow
        worker process builds its own from the serving process's)."""
        return {
            "failure_rate_threshold": self.failure_rate_threshold,
            "slow_call_ms": self.slow_call_ms,
            "slow_call_rate_threshold": self.slow_call_rate_threshold,
            "window_size": self.window_size,
            "minimum_calls": self.minimum_calls,
            "open_duration_s": self.open_duration_s,
            "half_open_calls": self.half_open_calls,
        }

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; an OPEN breaker whose time is up reads (and becomes) HALF_OPEN."""
        if self._state is State.OPEN and self._clock.monotonic() >= self._open_until:
            self._reset_probes()
            self._transition(State.HALF_OPEN)
        return self._state

    @property
    def not_permitted_calls(self) -> int:
        """Calls refused since creation, whether OPEN or HALF_OPEN with its probes taken."""
        return self._not_permitted

    @property
    def buffered_calls(self) -> int:
        """Calls in the CLOSED window (at most window_size)."""
        return self._calls

    @property
    def failure_rate(self) -> float:
        """Percent of the CLOSED window's calls that failed; 0 when it is empty."""
        return 100.0 * self._failures / self._calls if self._calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Percent of the CLOSED window's calls that were slow; 0 when it is empty."""
        return 100.0 * self._slow / self._calls if self._calls else 0.0

    def retry_after_s(self) -> float:
        """Seconds until an OPEN breaker lets probes through; 0 in any other state."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock.monotonic())

    # -- the request path ----------------------------------------------------------------------

    def allow(self) -> bool:
        """Whether the caller may call the dependency now; a True must be followed by record()
        (or release() if the call never happens)."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and self._probes_permitted < self.half_open_calls:
            self._probes_permitted += 1
            return True
        self._not_permitted += 1
        return False

    def release(self) -> None:
        """Give back a HALF_OPEN probe permit for a call that was never made."""
        if self._state is State.HALF_OPEN and self._probes_permitted > self._probes_recorded:
            self._probes_permitted -= 1

    def record(self, duration_s: float, ok: bool) -> None:
        """Report a finished call; a timed-out call is ``ok=False`` with the time it was given."""
        outcome = (0 if ok else _FAILED) | (_SLOW if duration_s * 1000 >= self.slow_call_ms else 0)
        state = self._state
        if state is State.CLOSED:
            self._record_closed(outcome)
        elif state is State.HALF_OPEN:
            self._record_probe(outcome)
        # OPEN: a call let through before the breaker opened has nothing left to decide.

    # -- internals -----------------------------------------------------------------------------

    def _record_closed(self, outcome: int) -> None:
        slot = self._next
        if self._calls == self.window_size:
            old = self._buffer[slot]
            self._failures -= old & _FAILED
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        self._buffer[slot] = outcome
        self._failures += outcome & _FAILED
        self._slow += (outcome & _SLOW) >> 1
        self._next = slot + 1 if slot + 1 < self.window_size else 0
        if self._calls >= self.minimum_calls and self._over_threshold(
            self._failures, self._slow, self._calls
        ):
            self._open()

    def _record_probe(self, outcome: int) -> None:
        # Only calls this state let through are probes; a straggler from CLOSED is not one.
        if self._probes_recorded >= self._probes_permitted:
            return
        self._probes_recorded += 1
        self._probe_failures += outcome & _FAILED
        self._probe_slow += (outcome & _SLOW) >> 1
        if self._probes_recorded < self.half_open_calls:
            return
        if self._over_threshold(self._probe_failures, self._probe_slow, self._probes_recorded):
            self._open()
        else:
            self._reset_window()
            self._transition(State.CLOSED)

    def _over_threshold(self, failures: int, slow: int, calls: int) -> bool:
        # Cross-multiplied so the hot path does no division.
        return (
            failures * 100 >= self.failure_rate_threshold * calls
            or slow * 100 >= self.slow_call_rate_threshold * calls
        )

    def _open(self) -> None:
        self._open_until = self._clock.monotonic() + self.open_duration_s
        self._transition(State.OPEN)

    def _reset_window(self) -> None:
        self._calls = 0
        self._next = 0
        self._failures = 0
        self._slow = 0

    def _reset_probes(self) -> None:
        self._probes_permitted = 0
        self._probes_recorded = 0
        self._probe_failures = 0
        self._probe_slow = 0

    def _transition(self, new: State) -> None:
        old, self._state = self._state, new
        if self._on_state_change is not None:
            self._on_state_change(self.name, old, new)
