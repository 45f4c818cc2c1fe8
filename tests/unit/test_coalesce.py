"""rtml.operator.coalesce: one queued reconcile per Model answers the events before its read."""

from __future__ import annotations

import threading

from rtml.operator.coalesce import Coalescer


def test_an_event_while_a_reconcile_is_queued_is_answered_by_it() -> None:
    queued = Coalescer()
    assert queued.claim("Model/ml/fraud")
    assert not queued.claim("Model/ml/fraud")  # the queued one has not read yet: it will see it
    assert queued.claim("Model/ml/other")  # other Models are not held up
    queued.started("Model/ml/fraud")  # it reads now: a later change needs a reconcile of its own
    assert queued.claim("Model/ml/fraud")
    queued.started("Model/ml/fraud")
    queued.started("Model/ml/fraud")  # releasing twice (read, then the caller's finally) is safe
    queued.started("Model/ml/other")
    assert len(queued) == 0


def test_concurrent_claims_let_exactly_one_through() -> None:
    queued = Coalescer()
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def claim() -> None:
        barrier.wait()
        won.append(queued.claim("Model/ml/fraud"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
