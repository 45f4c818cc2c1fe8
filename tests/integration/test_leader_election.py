"""Two operator replicas with leader election against a real API server: one works while the
other waits; the leader SIGKILLed under churn, the standby takes over and the end state matches
what was applied; a SIGTERMed leader gives its Lease up on the way out (docs/outages.md)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_model_operator import _scrape, children, model
from tests.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.apiserver
LEASE = ("coordination.k8s.io/v1", "Lease")
MODEL = ("rtml.dev/v1alpha1", "Model")
RESULTS = Path(__file__).resolve().parents[2] / ".test-logs" / "leader-election.json"


def holder(kube: Kube, ns: str) -> str | None:
    lease = kube.get(*LEASE, "rtml-operator", ns)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def messages(op: OperatorProcess) -> list[str]:
    out = []
    for line in op.log_path.read_text().splitlines():
        try:
            out.append(str(json.loads(line).get("message")))
        except ValueError:
            continue
    return out


def converged(kube: Kube, name: str, ns: str) -> bool:
    """Every child there, the status on the Model's generation, the HPA as the spec says."""
    m = kube.get(*MODEL, name, ns)
    if m is None:
        return False
    if (m.get("status") or {}).get("observedGeneration") != m["metadata"]["generation"]:
        return False
    kids = children(kube, name, ns)
    hpa = kids["HorizontalPodAutoscaler"]
    return (
        all(kids.values())
        and hpa is not None
        and (hpa["spec"]["maxReplicas"] == m["spec"]["autoscaling"]["maxReplicas"])
    )


@pytest.fixture
def replicas(operator: OperatorProcess, namespace: str) -> Iterator[dict[str, OperatorProcess]]:
    """op-a and op-b, electing a leader with a Lease in the test's namespace, watching only it.
    The session's operator watches every namespace and would do their work: it is stopped
    for the test and started again after."""
    operator.stop()
    ops: dict[str, OperatorProcess] = {}
    try:
        for identity in ("op-a", "op-b"):
            op = OperatorProcess(
                operator.kubeconfig,
                operator.log_path.with_name(f"operator-{identity}.log"),
                {**operator.env, "POD_NAME": identity},
                args=("--leader-elect", f"--lease-namespace={namespace}",
                      f"--namespace={namespace}"),
            )  # fmt: skip
            op.log_path.write_bytes(b"")
            op.start()  # a standby's health endpoint answers too
            ops[identity] = op
        yield ops
    finally:
        for op in ops.values():
            op.stop()
        operator.start()


@pytest.mark.timeout(400)
def test_the_standby_takes_over_a_sigkilled_leader_under_churn_and_the_end_state_matches(
    kube: Kube, replicas: dict[str, OperatorProcess], namespace: str
) -> None:
    leader = wait_for(lambda: holder(kube, namespace), 40, what="a replica to take the Lease")
    (standby,) = set(replicas) - {leader}
    for i in range(3):
        kube.create(model(f"m{i}", namespace))
    for i in range(3):
        wait_for(lambda i=i: converged(kube, f"m{i}", namespace), 60, what=f"m{i} to converge")

    # The standby did nothing: no Kopf, no reconcile, its gauge at 0, the leader's at 1.
    waiting = _scrape(replicas[standby].metrics_url)
    assert waiting["rtml_operator_leader"] == 0.0
    assert not [k for k in waiting if k.startswith("rtml_operator_reconciles_total")], waiting
    assert _scrape(replicas[leader].metrics_url)["rtml_operator_leader"] == 1.0
    assert "leading" not in messages(replicas[standby])
    assert "waiting to lead" in messages(replicas[standby])

    # Churn: a new Model and a change to the one before it every half second, before, during
    # and after the leader's death.
    stop, made, errors = threading.Event(), [f"m{i}" for i in range(3)], []

    def churn() -> None:
        i = 3
        while not stop.is_set():
            try:
                kube.create(model(f"m{i}", namespace))
                made.append(f"m{i}")
                kube.patch(*MODEL, f"m{i - 1}", namespace,
                           {"spec": {"autoscaling": {"maxReplicas": 3 + i % 5}}})  # fmt: skip
            except Exception as e:  # reported by the assertion below
                errors.append(repr(e))
            i += 1
            time.sleep(0.5)

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        time.sleep(3)
        killed = time.monotonic()
        replicas[leader].kill()
        wait_for(lambda: holder(kube, namespace) == standby, 90, 0.2,
                 what=f"{standby} to take the Lease from the killed {leader}")  # fmt: skip
        takeover = time.monotonic() - killed
        time.sleep(5)  # churn goes on under the new leader
    finally:
        stop.set()
        worker.join(10)
    assert errors == [], errors
    started = time.monotonic()
    for name in made:
        wait_for(lambda name=name: converged(kube, name, namespace), 90,
                 what=f"{name} to converge under {standby}")  # fmt: skip
    settled = time.monotonic() - started
    assert "leading" in messages(replicas[standby])
    assert takeover <= 60, takeover  # the bound; the Lease's own is 15 s + a 2 s retry

    # SIGTERM: the leader gives the Lease up as it exits, and the other (restarted as a
    # standby) leads at its next try instead of after the Lease expires.
    replicas[leader].start()
    assert holder(kube, namespace) == standby
    replicas[standby].stop()
    assert replicas[standby].proc is not None
    assert replicas[standby].proc.returncode == 0  # a clean exit, not the shutdown deadline
    assert holder(kube, namespace) in (None, leader)  # given up, or already taken
    stopped = time.monotonic()
    wait_for(lambda: holder(kube, namespace) == leader, 60, 0.2,
             what=f"{leader} to lead after {standby} stopped")  # fmt: skip
    handover = time.monotonic() - stopped
    kube.patch(*MODEL, "m0", namespace, {"spec": {"autoscaling": {"maxReplicas": 9}}})
    wait_for(lambda: converged(kube, "m0", namespace), 60, what="m0 under the new leader")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "models": len(made),
        "takeover_after_sigkill_seconds": round(takeover, 1),
        "all_converged_after_takeover_seconds": round(settled, 1),
        "handover_after_sigterm_seconds": round(handover, 1),
    }
    RESULTS.write_text(json.dumps(result))
    print(result)
