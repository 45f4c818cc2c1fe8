"""rtml.operator.keyedlocks: one lock per key while in use, nothing kept for keys no longer used."""

from __future__ import annotations

import gc
import threading
import time

from rtml.operator.keyedlocks import KeyedLocks


def test_one_key_one_lock_while_in_use_and_no_entry_after() -> None:
    locks = KeyedLocks()
    with locks["Model/ml/fraud"]:
        assert locks["Model/ml/fraud"].locked()  # the same lock: it is held
        assert not locks["Model/ml/other"].locked()
    gc.collect()
    assert len(locks) == 0  # a deleted Model's key leaves nothing behind


def test_a_waiting_thread_keeps_the_lock_so_two_never_run_at_once() -> None:
    locks = KeyedLocks()
    inside: list[int] = []
    overlaps: list[int] = []
    start = threading.Barrier(6)

    def work(i: int) -> None:
        start.wait()
        for _ in range(20):
            with locks["Model/ml/fraud"]:
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                time.sleep(0.0005)
                inside.remove(i)
            gc.collect()  # an entry dropped while another thread waits would show here

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    gc.collect()
    assert len(locks) == 0
