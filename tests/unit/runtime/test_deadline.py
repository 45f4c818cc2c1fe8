"""Deadline arithmetic on a fake clock; `within` cancelling real slow work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rtml_runtime.deadline import Deadline, DeadlineExceeded, within
from tests.clock import FakeClock

pytestmark = pytest.mark.unit


def test_remaining_counts_down_and_never_goes_negative() -> None:
    clock = FakeClock(100.0)
    deadline = Deadline(0.1, clock)
    assert deadline.remaining_s() == pytest.approx(0.1)
    assert not deadline.expired()
    clock.advance(0.06)
    assert deadline.remaining_s() == pytest.approx(0.04)
    clock.advance(0.04)
    assert deadline.expired()
    clock.advance(1)
    assert deadline.remaining_s() == 0.0


@pytest.mark.parametrize(
    ("elapsed_s", "budget_s", "child_s"),
    [
        (0.0, 0.02, 0.02),  # the step's own budget is the tighter one
        (0.09, 0.02, 0.01),  # the request has only 10 ms left
        (0.2, 0.02, 0.0),  # already late: never negative
        (0.0, -1.0, 0.0),
    ],
)
def test_child_is_the_tighter_of_budget_and_remaining(
    elapsed_s: float, budget_s: float, child_s: float
) -> None:
    clock = FakeClock()
    deadline = Deadline(0.1, clock)
    clock.advance(elapsed_s)
    assert deadline.child(budget_s) == pytest.approx(child_s)


def test_within_returns_the_result_in_time() -> None:
    async def quick() -> str:
        await asyncio.sleep(0)
        return "score"

    assert asyncio.run(within(quick(), 1.0)) == "score"


def as_coroutine(work: Awaitable[None]) -> Awaitable[None]:
    return work


def as_task(work: Awaitable[None]) -> Awaitable[None]:
    return asyncio.ensure_future(work)


@pytest.mark.parametrize("wrap", [as_coroutine, as_task])
def test_within_times_out_and_cancels_the_work(
    wrap: Callable[[Awaitable[None]], Awaitable[None]],
) -> None:
    cancelled = False

    async def slow() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def scenario() -> None:
        with pytest.raises(DeadlineExceeded) as caught:
            await within(wrap(slow()), 0.05)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.timeout_s == 0.05

    asyncio.run(scenario())
    assert cancelled


def test_within_leaves_no_task_behind() -> None:
    async def scenario() -> set[asyncio.Task[Any]]:
        task = asyncio.ensure_future(asyncio.sleep(30))
        with pytest.raises(DeadlineExceeded):
            await within(task, 0.05)
        assert task.cancelled()
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(scenario()) == set()


def test_a_timeout_raised_by_the_work_itself_is_not_ours() -> None:
    async def failing() -> None:
        raise TimeoutError("redis read timed out")

    with pytest.raises(TimeoutError, match="redis") as caught:
        asyncio.run(within(failing(), 1.0))
    assert not isinstance(caught.value, DeadlineExceeded)
