"""Which kinds Kopf puts its finalizer on: none (a FeatureView's entry in the Feast registry goes
on the DELETED event and by the registry sweep). An object with a finalizer outlives the
operator: after `helm uninstall`, deleting its namespace would hang (docs/gitops.md).

Kopf 1.45 adds its finalizer to an object when a changing handler requiring one (a
non-optional on.delete) or a spawning handler (a timer or a daemon: always) serves its kind
(kopf/_core/reactor/processing.py, `deletion_must_be_blocked`); this reads the same registry.
The API-only test that reads `metadata.finalizers` back is tests/integration/test_gitops.py.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kopf
import pytest
import yaml

from rtml.operator import handlers
from rtml.operator.ticker import Ticker

pytestmark = pytest.mark.unit
CRDS = Path(__file__).resolve().parents[2] / "crds"


def resource(kind: str) -> kopf.Resource:
    """The kind as Kopf discovers it from our CRD."""
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        if names["kind"] == kind:
            return kopf.Resource(
                crd["spec"]["group"],
                crd["spec"]["versions"][0]["name"],
                names["plural"],
                kind=kind,
                singular=names["singular"],
                shortcuts=frozenset(names.get("shortNames", [])),
                categories=frozenset(names.get("categories", [])),
                namespaced=True,
            )
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def finalizing_handlers(kind: str) -> list[str]:
    registry = kopf.get_default_registry()
    res = resource(kind)
    served = [
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    return sorted({h.id for h in served if h.requires_finalizer and h.selector.check(res)})


def handler_ids(kind: str) -> set[str]:
    registry = kopf.get_default_registry()
    res = resource(kind)
    every = [
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
        *registry._watching.get_all_handlers(),
        *registry._indexing.get_all_handlers(),
    ]
    return {h.id for h in every if h.selector.check(res)}


@pytest.mark.parametrize("kind", ["Model", "Experiment", "FeatureView"])
def test_no_kind_has_a_handler_that_needs_a_finalizer(kind: str) -> None:
    assert handlers.GROUP == "rtml.dev"  # the handlers are registered (imported)
    assert handler_ids(kind), f"no handler serves {kind}: the check would prove nothing"
    assert finalizing_handlers(kind) == []


def test_the_periodic_work_is_indexed_not_timed() -> None:
    assert {"rtml_models", "reconcile"} <= handler_ids("Model")
    assert {"rtml_experiments", "experiment", "experiment-deleted"} <= handler_ids("Experiment")
    assert {"rtml_featureviews", "featureview-deleted"} <= handler_ids("FeatureView")


# -- the loops in place of the timers and the daemon (rtml.operator.ticker) ------------------


def test_a_round_skips_a_key_whose_last_visit_still_runs() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        ticker: Ticker[str] = Ticker("t", 1, lambda _key: None)

        def submit(_fn: object) -> asyncio.Future[None]:
            return loop.create_future()  # a visit that runs until the test ends it

        first = ticker.start_round(["a", "b"], submit)
        ticker.in_flight["b"].set_result(None)  # b's visit is over, a's is not
        return first, ticker.start_round(["a", "b"], submit)

    assert asyncio.run(scenario()) == (["a", "b"], ["b"])


def test_the_loop_visits_every_key_each_round_and_a_slow_one_holds_up_no_other() -> None:
    visits: dict[str, int] = {"fast": 0, "slow": 0, "broken": 0}
    release = threading.Event()

    def work(key: str) -> None:
        visits[key] += 1
        if key == "slow":
            release.wait(5)
        if key == "broken":
            raise RuntimeError("a bug in one object's visit")

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as pool:
            # No drawn wait after a failure (rand 0): the broken key comes back every round.
            ticker: Ticker[str] = Ticker("t", 0.02, work, rand=lambda: 0.0)
            task = asyncio.create_task(ticker.run(lambda: list(visits), lambda: pool))
            await asyncio.sleep(0.3)
            task.cancel()
            release.set()

    asyncio.run(scenario())
    assert visits["slow"] == 1  # never two visits of one key at once
    assert visits["fast"] >= 5
    assert visits["broken"] >= 5  # a failing visit is logged, the loop goes on
