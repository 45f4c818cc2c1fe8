"""The operator through an API outage and a shutdown, without a cluster (docs/outages.md).

- The backoff policy (full jitter, capped) with an injected random source.
- A Ticker's per-object backoff and its pause while the API server is unreachable, on an
  injected clock; a 10-minute outage of 1,000 Models simulated round by round.
- The `watching` probe's decision, and the Kopf internals it observes (kopf_compat).
- The handler pool drained on SIGTERM, with Kopf's own `invoke`, which shields a synchronous
  handler from cancellation: the cause of the 80-second shutdown with 1,000 Models.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import watching
from kopf._core.actions.invocation import invoke
from kubernetes import client as k8s
from kubernetes.client import ApiException
from urllib3.exceptions import NewConnectionError

from rtml.operator import handlers, main
from rtml.operator.backoff import Backoff, after_failure, full_jitter
from rtml.operator.client import KubeClient
from rtml.operator.kopf_compat import observe_watch_streams, stream_name
from rtml.operator.liveness import WatchActivity, silent_streams, watch_problem
from rtml.operator.shutdown import DrainingExecutor
from rtml.operator.ticker import Ticker, VisitError

pytestmark = pytest.mark.unit


# -- the policy -------------------------------------------------------------------------------


def test_full_jitter_draws_below_a_doubling_ceiling_up_to_the_cap() -> None:
    top = [full_jitter(n, base=60, cap=300, rand=lambda: 1.0) for n in range(7)]
    assert top == [0, 60, 120, 240, 300, 300, 300]
    assert full_jitter(3, base=60, cap=300, rand=lambda: 0.0) == 0
    assert full_jitter(3, base=60, cap=300, rand=lambda: 0.5) == 120
    assert full_jitter(10_000, base=1, cap=30, rand=lambda: 1.0) == 30  # no overflow


def test_after_failure_counts_and_schedules_from_now() -> None:
    state = after_failure(Backoff(), 1000.0, base=10, cap=100, rand=lambda: 0.5)
    assert state == Backoff(1, 1005.0)
    assert not state.ready(1004.9)
    assert state.ready(1005.0)
    assert after_failure(state, 2000.0, base=10, cap=100, rand=lambda: 0.5) == Backoff(2, 2010.0)


# -- the Ticker -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rounds(ticker: Ticker[str], keys: list[str], times: list[float], clock: Clock) -> list[str]:
    """Runs a round at each time, every visit at once and in order; returns keys started."""
    started: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def submit(fn: Callable[[], None]) -> asyncio.Future[None]:
            fn()
            future = loop.create_future()
            future.set_result(None)
            return future

        for at in times:
            clock.now = at
            started.extend(ticker.start_round(keys, submit))

    asyncio.run(scenario())
    return started


def test_a_failing_object_backs_off_alone_and_a_success_resets_it() -> None:
    clock, broken = Clock(), {"b"}
    visits: list[str] = []

    def work(key: str) -> None:
        visits.append(key)
        if key in broken:
            raise VisitError("the API server answered 500")

    ticker: Ticker[str] = Ticker("t", 10, work, backoff_cap=40, clock=clock, rand=lambda: 1.0)
    rounds(ticker, ["a", "b"], [0, 10, 20, 30, 40], clock)
    # b fails at 0 (waits 10), at 10 (waits 20: to 30), at 30 (waits 40: to 70).
    assert visits == ["a", "b", "a", "b", "a", "a", "b", "a"]
    assert ticker.backoffs["b"] == Backoff(3, 70)
    broken.clear()
    visits.clear()
    rounds(ticker, ["a", "b"], [70, 80], clock)
    assert visits == ["a", "b", "a", "b"]
    assert ticker.backoffs == {}


def test_an_unreachable_api_server_pauses_the_whole_ticker_not_each_object() -> None:
    clock, up = Clock(), {"api": False}
    visits: list[str] = []

    def work(key: str) -> None:
        visits.append(key)
        if not up["api"]:
            raise VisitError("the API server is unreachable", unreachable=True)

    ticker: Ticker[str] = Ticker("t", 10, work, backoff_cap=40, clock=clock, rand=lambda: 1.0)
    keys = ["a", "b", "c"]
    rounds(ticker, keys, [0], clock)
    assert visits == ["a"]  # b and c were queued in the same round: skipped, not tried
    assert ticker.paused == Backoff(1, 10)
    assert ticker.backoffs == {}
    rounds(ticker, keys, [5, 10, 20], clock)  # 5: paused; 10: one try, pause to 30
    assert visits == ["a", "a"]
    up["api"] = True
    rounds(ticker, keys, [30], clock)
    assert visits == ["a", "a", "a", "b", "c"]
    assert ticker.paused == Backoff()


def test_a_deleted_object_forgets_its_failures() -> None:
    clock = Clock()

    def work(key: str) -> None:
        raise VisitError("no")

    ticker: Ticker[str] = Ticker("t", 10, work, clock=clock, rand=lambda: 1.0)
    rounds(ticker, ["a"], [0], clock)
    assert "a" in ticker.backoffs
    rounds(ticker, [], [10], clock)
    assert ticker.backoffs == {}


def test_a_ten_minute_outage_of_1000_models_costs_a_few_requests_and_converges() -> None:
    """The resync (60 s, cap 120 s) with the API server down from t=0 to t=600."""
    clock, up_at, interval, cap = Clock(), 600.0, 60.0, 120.0
    tries_during_outage = 0
    converged: dict[str, float] = {}

    def work(key: str) -> None:
        nonlocal tries_during_outage
        if clock.now < up_at:
            tries_during_outage += 1
            raise VisitError("unreachable", unreachable=True)
        converged.setdefault(key, clock.now)

    models = [f"m{i}" for i in range(1000)]
    for seed in range(5):  # several draws
        rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        ticker: Ticker[str] = Ticker(
            "resync", interval, work, backoff_cap=cap, clock=clock, rand=rng.random
        )
        converged.clear()
        tries_during_outage = 0
        rounds(ticker, models, [interval * n for n in range(25)], clock)
        # Without the pause: 1,000 tries a round, 10,000 in the outage.
        assert tries_during_outage <= 10
        assert len(converged) == 1000
        assert max(converged.values()) <= up_at + cap + interval


# -- handlers: which failures pause a Ticker -----------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "unreachable"),
    [
        (NewConnectionError(None, "refused"), True),  # type: ignore[arg-type]
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ApiException(status=503, reason="Service Unavailable"), False),
    ],
)
def test_a_visit_pauses_the_ticker_only_when_the_api_server_gave_no_answer(
    cause: Exception, unreachable: bool
) -> None:
    with pytest.raises(VisitError) as raised, handlers._visit(), handlers._retry_on_outage(0):
        raise cause
    assert raised.value.unreachable is unreachable


def test_model_handlers_have_no_timeout() -> None:
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    ours = [h for h in changing if h.id in {"reconcile", "register-featureview", "experiment"}]
    assert ours
    assert all(h.timeout is None for h in ours)
    assert all(h.retries == handlers.SETTINGS.handler_retries for h in ours)


# -- the watching probe ---------------------------------------------------------------------------


def test_silent_streams_oldest_first() -> None:
    last = {"models": 150.0, "pods": 10.0, "services": 50.0}
    assert silent_streams(last, 200.0, 80.0) == ["pods", "services"]


def test_a_quiet_but_live_watch_passes() -> None:
    # Kopf re-opens a silent stream every inactivity timeout (70 s): each end counts as life.
    assert watch_problem({"models": 100.0}, 175.0, limit=80.0, api_answered=170.0) is None


def test_a_stuck_watch_fails_when_the_api_server_answers() -> None:
    problem = watch_problem({"models": 100.0, "pods": 150.0}, 200.0, limit=80.0,
                            api_answered=190.0)  # fmt: skip
    assert problem is not None
    assert "models" in problem
    assert "100s" in problem


def test_a_silent_watch_during_an_outage_passes_a_restart_would_not_help() -> None:
    assert watch_problem({"models": 100.0}, 400.0, limit=80.0, api_answered=None) is None
    assert watch_problem({"models": 100.0}, 400.0, limit=80.0, api_answered=170.0) is None


def test_watch_activity_records_and_forgets() -> None:
    clock = Clock()
    activity = WatchActivity(clock)
    clock.now = 5.0
    activity.saw("models")
    activity.answered()
    assert activity.snapshot() == {"models": 5.0}
    assert activity.api_answered == 5.0
    activity.forget("models")
    assert activity.snapshot() == {}


def test_the_watching_probes_api_check_sees_an_answer_and_survives_none() -> None:
    """The probe's check reads GET /version. Through the dynamic client every answer raised
    KeyError('kind'): the check never saw the server answer, and the error ended the heartbeat
    task, so the `processing` probe failed instead, naming the wrong cause."""

    answers = {  # what the dynamic client's discovery reads first, and /version
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0"},
    }

    class Version(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] in answers
            body = json.dumps(answers.get(self.path.split("?")[0], {})).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    configuration.retries = 0
    client = KubeClient(k8s.ApiClient(configuration))
    try:
        before = handlers._watch.api_answered
        handlers._ask_api_server(client)
        assert handlers._watch.api_answered is not None
        assert handlers._watch.api_answered != before
        server.shutdown()
        server.server_close()
        answered = handlers._watch.api_answered
        handlers._ask_api_server(client)  # nothing listens: no answer, and no error either
        assert handlers._watch.api_answered == answered
    finally:
        client.close()


# -- kopf_compat: what it relies on in Kopf, and what it records -------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.forgotten: list[str] = []

    def saw(self, stream: str) -> None:
        self.seen.append(stream)

    def forget(self, stream: str) -> None:
        self.forgotten.append(stream)


def test_kopf_still_opens_each_watch_request_through_watch_objs() -> None:
    assert "watch_objs(" in inspect.getsource(watching.continuous_watch)
    params = inspect.signature(watching.watch_objs).parameters
    assert params["resource"].kind is params["namespace"].kind is inspect.Parameter.KEYWORD_ONLY


def test_every_event_and_every_end_of_a_stream_counts_as_life(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake(**_: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "BOOKMARK"}
        yield {"type": "MODIFIED"}

    monkeypatch.setattr(watching, "watch_objs", fake)
    recorder = Recorder()
    observe_watch_streams(recorder)
    observe_watch_streams(recorder)  # twice: still one wrapper around the original
    resource = kopf.Resource("rtml.dev", "v1alpha1", "models")

    async def consume() -> list[Any]:
        wrapped: Any = watching.watch_objs
        return [e async for e in wrapped(resource=resource, namespace="ns")]

    assert len(asyncio.run(consume())) == 2
    assert recorder.seen == ["models.rtml.dev in ns"] * 3


def test_streams_that_kopf_ends_for_silence_twice_in_a_row_show_no_life(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watch whose every connection stalls (tests/integration/test_api_faults.py): Kopf ends
    each after its inactivity timeout and opens the next. The first such end still counts (a
    bookmark late once), the second in a row does not, once the server has sent bookmarks."""
    inactivity = 0.05
    scripts: list[list[str]] = []

    async def scripted(**_: Any) -> AsyncIterator[dict[str, Any]]:
        for step in scripts.pop(0):
            if step == "silence":
                await asyncio.sleep(inactivity)  # what Kopf's timeout ends
            else:
                yield {"type": step}

    monkeypatch.setattr(watching, "watch_objs", scripted)
    recorder = Recorder()
    observe_watch_streams(recorder)
    settings = kopf.OperatorSettings()
    settings.watching.inactivity_timeout = inactivity

    def run(*streams: list[str]) -> int:
        """Runs the streams one after another; how often they showed life."""
        scripts.extend(streams)
        before = len(recorder.seen)

        async def consume() -> None:
            wrapped: Any = watching.watch_objs
            for _ in streams:
                async for _event in wrapped(resource=resource, namespace=None, settings=settings):
                    pass

        asyncio.run(consume())
        return len(recorder.seen) - before

    resource = kopf.Resource("rtml.dev", "v1alpha1", "models")
    # No bookmark yet: the server may not send them, so a silent end is a quiet stream's.
    assert run(["silence"], ["silence"], ["silence"]) == 3
    assert run(["BOOKMARK"], ["silence"]) == 3  # the event, the end, the first silent end
    assert run(["silence"], ["silence"]) == 0  # stalled: silent ends in a row are no life
    assert run(["MODIFIED", "silence"], ["silence"]) == 2  # an event resets the count
    assert run([]) == 1  # an end before the inactivity timeout: the server's, life


def test_a_stream_kopf_stops_watching_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forever(**_: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "ADDED"}
        await asyncio.Event().wait()
        yield {}  # never

    monkeypatch.setattr(watching, "watch_objs", forever)
    recorder = Recorder()
    observe_watch_streams(recorder)

    async def scenario() -> None:
        async def consume() -> None:
            wrapped: Any = watching.watch_objs
            async for _ in wrapped(resource=kopf.Resource("", "v1", "pods"), namespace=None):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert recorder.seen == ["pods"]
    assert recorder.forgotten == ["pods"]
    assert stream_name(kopf.Resource("apps", "v1", "deployments"), None) == "deployments.apps"


# -- shutdown ---------------------------------------------------------------------------------


def stop_handlers(executor: Executor, count: int, *, drain: bool) -> tuple[float, int]:
    """`count` synchronous handlers queued on 4 threads through Kopf's own invoke, then all
    cancelled (as Kopf does on SIGTERM): seconds until every task ended, and calls that ran."""
    ran = 0
    lock = threading.Lock()

    def handler(**_: Any) -> None:
        nonlocal ran
        time.sleep(0.01)
        with lock:
            ran += 1

    async def scenario() -> float:
        settings = kopf.OperatorSettings()
        settings.execution.executor = executor
        tasks = [asyncio.create_task(invoke(handler, settings=settings)) for _ in range(count)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        for task in tasks:
            task.cancel()
        if drain:
            assert isinstance(executor, DrainingExecutor)
            executor.drain()
        await asyncio.gather(*tasks, return_exceptions=True)
        return time.monotonic() - started

    took = asyncio.run(scenario())
    executor.shutdown(wait=True)
    return took, ran


def test_kopf_runs_every_queued_handler_before_it_stops_unless_the_pool_is_drained() -> None:
    took, ran = stop_handlers(ThreadPoolExecutor(4), 300, drain=False)
    assert ran == 300  # the cause: 300 x 10 ms on 4 threads, cancelled or not
    assert took > 0.5
    took, ran = stop_handlers(DrainingExecutor(4), 300, drain=True)
    assert ran < 40
    assert took < 0.2


def test_a_drained_pool_cancels_what_comes_later() -> None:
    executor = DrainingExecutor(1)
    executor.drain()
    assert executor.submit(time.sleep, 1).cancelled()


def test_begin_stop_drains_arms_the_deadline_and_stops_kopf_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(main, "exit_after", lambda s: calls.append(f"deadline {s}"))

    async def scenario() -> None:
        stop = asyncio.Event()
        main.begin_stop(signal.SIGTERM, stop, lambda: calls.append("drain"), 8.0)
        main.begin_stop(signal.SIGTERM, stop, lambda: calls.append("drain"), 8.0)
        assert stop.is_set()

    asyncio.run(scenario())
    assert calls == ["drain", "deadline 8.0"]


def test_the_handlers_drain_stops_the_periodic_loops_and_the_pools() -> None:
    fetch_pool = handlers.SIGNATURES._pool()  # the signature check's downloads
    blocker = threading.Event()
    for _ in range(handlers.SIGNATURES.workers):  # every worker busy: what follows is queued
        fetch_pool.submit(blocker.wait, 5)
    queued = [fetch_pool.submit(time.sleep, 0) for _ in range(3)]

    async def scenario() -> tuple[bool, bool]:
        loop_task = asyncio.create_task(asyncio.sleep(10))
        executor = DrainingExecutor(1)
        handlers._drain(kopf.Memo(heartbeat=None, tickers=[loop_task]), executor)
        await asyncio.sleep(0)
        return loop_task.cancelled(), executor.draining

    try:
        assert asyncio.run(scenario()) == (True, True)
        assert handlers.SIGNATURES.executor is None
        assert all(f.cancelled() for f in queued)  # queued downloads never start
    finally:
        blocker.set()
