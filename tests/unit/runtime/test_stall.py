"""The stall watcher: a blocked event loop is told apart from a process that was not run."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from rtml_runtime.stall import StallWatch, describe_stall


def test_a_late_loop_with_a_punctual_thread_is_a_blocking_call() -> None:
    text = describe_stall(0.6, 0.002)
    assert text.startswith("the event loop was held for 600 ms by a synchronous call")


def test_a_late_loop_and_a_late_thread_is_the_process_not_running() -> None:
    text = describe_stall(0.6, 0.55)
    assert text.startswith("the process was not scheduled for 600 ms")
    assert "550 ms late too" in text


def test_a_synchronous_call_on_the_loop_is_logged_as_one(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> StallWatch:
        watch = StallWatch(interval_s=0.05, warn_s=0.15)
        watch.start()
        await asyncio.sleep(0.2)
        time.sleep(0.5)  # noqa: ASYNC251 - what a blocking call on the loop does, on purpose
        await asyncio.sleep(0.3)
        watch.stop()
        return watch

    with caplog.at_level(logging.WARNING, logger="rtml.runtime"):
        watch = asyncio.run(main())
    assert watch.stalls == 1
    (record,) = [r for r in caplog.records if "event loop" in r.getMessage()]
    assert "by a synchronous call" in record.getMessage()
    assert record.loopLateMs >= 400  # type: ignore[attr-defined]


_STOPPED_CHILD = """
import asyncio, logging, sys, time
from rtml_runtime.stall import StallWatch
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
async def main():
    watch = StallWatch(interval_s=0.05, warn_s=0.15)
    watch.start()
    print("watching", flush=True)
    await asyncio.sleep(2.0)
asyncio.run(main())
"""


def test_a_process_that_is_not_run_is_logged_as_such() -> None:
    """SIGSTOP for 0.6 s: neither the loop nor the thread runs, as when the node starves it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_CHILD], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "watching"
    time.sleep(0.3)
    child.send_signal(signal.SIGSTOP)
    time.sleep(0.6)
    child.send_signal(signal.SIGCONT)
    out, _ = child.communicate(timeout=30)
    assert "the process was not scheduled for" in out, out
