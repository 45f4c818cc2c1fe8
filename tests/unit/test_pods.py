"""pod_problem: why a Model's pod is not ready, in words, from pod JSON as the API returns it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client import ApiException

from rtml.operator import handlers, reconcile
from rtml.operator.conditions import Cond
from rtml.operator.handlers import CHILD_LABELS, _owner_model
from rtml.operator.pods import TERMINATION_MESSAGE_MAX, pod_problem
from rtml.operator.reconcile import reconcile_model
from rtml.operator.render import RenderContext
from rtml.operator.render.deployment import render_deployment
from tests.unit.helpers import model

pytestmark = pytest.mark.unit
DIGEST_ERROR = (
    "Traceback (most recent call last):\n"
    '  File "/app/rtml_runtime/artifacts.py", line 88, in fetch\n'
    "    raise DigestMismatch(uri, expected, actual)\n"
    "rtml_runtime.artifacts.DigestMismatch: s3://bucket/m.onnx: sha256 is 1f2e..., "
    "spec.artifact.sha256 says aaaa...\n"
)


def pod(
    name: str = "fraud-7d9-abcde",
    *,
    phase: str = "Running",
    containers: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    **status: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "labels": {"rtml.dev/model": "fraud", "app.kubernetes.io/component": "predictor"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "fraud-7d9"}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T12:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [{"name": "runtime", "env": [{"name": "TOKEN", "value": "s3cr3t"}]}]
        },
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": containers or [],
            **status,
        },
    }


def crashing(restarts: int = 3, message: str = DIGEST_ERROR, exit_code: int = 1) -> dict:
    return {
        "name": "runtime",
        "ready": False,
        "started": False,
        "restartCount": restarts,
        "image": "registry.local/rtml:test",
        "state": {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container=runtime pod=fraud-7d9-abcde",
            }
        },
        "lastState": {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Error",
                "message": message,
                "startedAt": "2026-11-27T11:59:00Z",
                "finishedAt": "2026-11-27T11:59:02Z",
            }
        },
    }


def running(*, ready: bool, started: bool = True, restarts: int = 0, last: dict | None = None):
    return {
        "name": "runtime",
        "ready": ready,
        "started": started,
        "restartCount": restarts,
        "state": {"running": {"startedAt": "2026-11-27T11:58:00Z"}},
        "lastState": {"terminated": last} if last else {},
    }


UNREADY = [
    {"type": "PodScheduled", "status": "True"},
    {
        "type": "Ready",
        "status": "False",
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [runtime]",
    },
]


def test_crash_loop_names_the_pod_restarts_exit_code_and_the_log_tail() -> None:
    got = pod_problem([pod(containers=[crashing()], conditions=UNREADY)])
    assert got == (
        "pod fraud-7d9-abcde: container runtime is waiting: CrashLoopBackOff (3 restarts); "
        "last exit code 1: Traceback (most recent call last): | "
        'File "/app/rtml_runtime/artifacts.py", line 88, in fetch | '
        "raise DigestMismatch(uri, expected, actual) | "
        "rtml_runtime.artifacts.DigestMismatch: s3://bucket/m.onnx: sha256 is 1f2e..., "
        "spec.artifact.sha256 says aaaa..."
    )


def test_a_long_log_tail_keeps_its_last_lines_within_the_limit() -> None:
    log = "\n".join(f"line {i}: " + "x" * 50 for i in range(40)) + "\nfatal: digest mismatch"
    got = pod_problem([pod(containers=[crashing(restarts=1, message=log)])])
    assert got is not None
    tail = got.split("last exit code 1: ", 1)[1]
    assert tail.startswith("... | ")
    assert tail.endswith("line 39: " + "x" * 50 + " | fatal: digest mismatch")
    assert "line 0:" not in tail
    assert len(tail) <= TERMINATION_MESSAGE_MAX + len("... | ")
    assert "(1 restart)" in got


def test_one_huge_log_line_keeps_its_end() -> None:
    got = pod_problem([pod(containers=[crashing(message="y" * 1000 + " the end")])])
    assert got is not None
    tail = got.split("last exit code 1: ", 1)[1]
    assert tail.startswith("...")
    assert tail.endswith("y the end")
    assert len(tail) == TERMINATION_MESSAGE_MAX


def test_oom_kill_says_so_and_a_crash_without_message_gives_the_code() -> None:
    c = crashing(message="", exit_code=137)
    c["lastState"]["terminated"]["reason"] = "OOMKilled"
    got = pod_problem([pod(containers=[c])])
    assert got == (
        "pod fraud-7d9-abcde: container runtime is waiting: CrashLoopBackOff (3 restarts); "
        "last exit code 137 (OOMKilled)"
    )


def waiting(reason: str, message: str) -> dict[str, Any]:
    """A runtime container that never started, waiting for `reason`."""
    return {"name": "runtime", "ready": False, "restartCount": 0, "lastState": {},
            "state": {"waiting": {"reason": reason, "message": message}}}  # fmt: skip


def test_image_pull_backoff_carries_the_kubelet_message() -> None:
    c = waiting("ImagePullBackOff", 'Back-off pulling image "registry.local/rtml:nope"')
    got = pod_problem([pod(phase="Pending", containers=[c], conditions=UNREADY)])
    assert got == (
        "pod fraud-7d9-abcde: container runtime is waiting: ImagePullBackOff: "
        'Back-off pulling image "registry.local/rtml:nope"'
    )


def test_a_missing_secret_is_a_config_error_by_name_never_a_value() -> None:
    c = waiting("CreateContainerConfigError", 'secret "feast-redis" not found')
    got = pod_problem([pod(phase="Pending", containers=[c])])
    assert got == (
        "pod fraud-7d9-abcde: container runtime is waiting: CreateContainerConfigError: "
        'secret "feast-redis" not found'
    )
    assert "s3cr3t" not in got  # the spec's env is never read


def test_readiness_probe_failing() -> None:
    got = pod_problem([pod(containers=[running(ready=False)], conditions=UNREADY)])
    assert got == "pod fraud-7d9-abcde: container runtime not ready: readiness probe failing"


def test_liveness_restarts_while_running_say_how_it_last_died() -> None:
    last = {"exitCode": 137, "reason": "Error", "message": "shutting down"}
    got = pod_problem([pod(containers=[running(ready=False, restarts=2, last=last)])])
    assert got == (
        "pod fraud-7d9-abcde: container runtime not ready: readiness probe failing "
        "(2 restarts); last exit code 137: shutting down"
    )


def test_still_starting_is_said_plainly() -> None:
    got = pod_problem([pod(containers=[running(ready=False, started=False)])])
    assert got == "pod fraud-7d9-abcde: container runtime is starting: startup probe not passed yet"


def test_unschedulable_gives_the_scheduler_message() -> None:
    p = pod(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes "
                "are available: 1 No preemption victims found for incoming pod.",
            }
        ],
    )
    got = pod_problem([p])
    assert got == (
        "pod fraud-7d9-abcde: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu. "
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    )


def test_pending_with_only_a_ready_condition_uses_its_message() -> None:
    got = pod_problem([pod(phase="Pending", conditions=UNREADY)])
    assert got == "pod fraud-7d9-abcde: not ready: containers with unready status: [runtime]"


def test_the_most_telling_pod_wins_and_ties_go_by_name() -> None:
    starting = pod("fraud-7d9-aaaaa", containers=[running(ready=False, started=False)])
    crash_b = pod("fraud-7d9-bbbbb", containers=[crashing()])
    crash_c = pod("fraud-7d9-ccccc", containers=[crashing()])
    unready = pod("fraud-7d9-00000", containers=[running(ready=False)])
    got = pod_problem([crash_c, starting, unready, crash_b])
    assert got is not None
    assert got.startswith("pod fraud-7d9-bbbbb: container runtime is waiting: CrashLoopBackOff")
    assert pod_problem([starting, unready]) == (
        "pod fraud-7d9-00000: container runtime not ready: readiness probe failing"
    )


def test_ready_and_terminating_pods_are_no_problem() -> None:
    ready = pod(
        containers=[running(ready=True)],
        conditions=[{"type": "Ready", "status": "True"}],
    )
    going = pod("fraud-old-zzzzz", containers=[crashing()], deleting=True)
    assert pod_problem([ready, going]) is None
    assert pod_problem([]) is None


def test_an_evicted_pod_is_the_last_thing_mentioned() -> None:
    evicted = pod(
        "fraud-7d9-aaaaa",
        phase="Failed",
        reason="Evicted",
        message="The node was low on resource: memory.",
    )
    assert pod_problem([evicted]) == (
        "pod fraud-7d9-aaaaa: Evicted: The node was low on resource: memory."
    )
    crash = pod("fraud-7d9-zzzzz", containers=[crashing()])
    assert (pod_problem([evicted, crash]) or "").startswith("pod fraud-7d9-zzzzz:")


# -- where the operator reads the pods, and how a pod wakes its Model ------------------------

COMPLETE = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}


class FakeClient:
    """Just what reconcile_model calls, with the Deployment and pods the test sets."""

    def __init__(self, deployment: dict[str, Any] | None, pods: list[dict[str, Any]]) -> None:
        self.deployment = deployment
        self.pods = pods
        self.pod_lists: list[dict[str, str]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def serves(self, api_version: str, kind: str) -> bool:
        return False

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def list_owned(self, *_: Any) -> list[dict[str, Any]]:
        return []

    def list_in(self, *_: Any) -> list[dict[str, Any]]:
        return []  # no Experiments

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        return self.deployment if kind == "Deployment" else None

    def list_selected(self, api_version: str, kind: str, namespace: str, labels: dict) -> list:
        assert (api_version, kind, namespace) == ("v1", "Pod", "ml")
        self.pod_lists.append(dict(labels))
        return self.pods

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append(status)

    def event(self, involved: dict, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((reason, message))


def model_body(status: dict[str, Any] | None = None, backend: str = "bentoml") -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {
            "version": "v1",
            "backend": backend,
            "artifact": {"uri": "s3://bucket/m.onnx", "sha256": "a" * 64},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }
    if status is not None:
        body["status"] = status
    return body


def deployment(available: int) -> dict[str, Any]:
    dep = render_deployment(
        model(autoscaling={"minReplicas": 1, "maxReplicas": 1}), RenderContext()
    )
    dep["metadata"]["generation"] = 1
    dep["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": available,
        "availableReplicas": available,
        "conditions": [COMPLETE],
    }
    return dep


@pytest.fixture
def no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = Cond("FeaturesResolved", "True", "NoFeatureView", "no view")
    monkeypatch.setattr(reconcile, "check_model_signature", lambda *_: resolved)


@pytest.mark.usefixtures("no_signature_check")
def test_a_degraded_model_reads_its_pods_by_the_deployment_selector_and_says_why() -> None:
    client = FakeClient(deployment(available=0), [pod(containers=[crashing()])])
    status = reconcile_model(client, model_body(), RenderContext())  # type: ignore[arg-type]
    assert client.pod_lists == [
        {"rtml.dev/model": "fraud", "app.kubernetes.io/component": "predictor"}
    ]
    assert status["phase"] == "Degraded"
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["message"].startswith(
        "0 of 1 updated replicas are available; pod fraud-7d9-abcde: container runtime is "
        "waiting: CrashLoopBackOff (3 restarts); last exit code 1: Traceback"
    )
    assert client.status_patches == [status]
    assert client.events == [("ReplicasUnavailable", ready["message"])]
    # The same pods again: nothing to write.
    again = FakeClient(deployment(available=0), [pod(containers=[crashing()])])
    reconcile_model(again, model_body(status), RenderContext())  # type: ignore[arg-type]
    assert again.status_patches == []


@pytest.mark.usefixtures("no_signature_check")
def test_a_fully_available_model_lists_no_pods() -> None:
    client = FakeClient(deployment(available=1), [pod(containers=[crashing()])])
    status = reconcile_model(client, model_body(), RenderContext())  # type: ignore[arg-type]
    assert status["phase"] == "Ready"
    assert client.pod_lists == []


@pytest.mark.usefixtures("no_signature_check")
def test_pods_that_cannot_be_listed_leave_the_counts() -> None:
    class Forbidden(FakeClient):
        def list_selected(self, *_: Any) -> list:
            raise ApiException(status=403, reason="Forbidden")

    client = Forbidden(deployment(available=0), [])
    status = reconcile_model(client, model_body(), RenderContext())  # type: ignore[arg-type]
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (status["phase"], ready["message"]) == (
        "Degraded",
        "0 of 1 updated replicas are available",
    )


def test_a_pod_wakes_its_model_by_label_since_a_replica_set_owns_it() -> None:
    template = render_deployment(model(), RenderContext())["spec"]["template"]["metadata"]
    assert set(CHILD_LABELS) <= set(template["labels"])  # the pod watch's filter matches
    p = pod()
    p["metadata"]["labels"] = dict(template["labels"])
    assert _owner_model(p) == "fraud"
    # Anything else still needs the Model's owner reference.
    service = {"kind": "Service", "metadata": {"labels": dict(template["labels"])}}
    assert _owner_model(service) is None
    bare = pod()
    del bare["metadata"]["labels"]
    assert _owner_model(bare) is None


def test_a_pod_event_reconciles_its_model_like_a_deployment_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    woken: list[dict[str, Any]] = []

    def reconcile(body: dict[str, Any], *_: Any, reading: Any = None, **__: Any) -> None:
        reading()
        woken.append(body["metadata"])

    monkeypatch.setattr(handlers, "_reconcile", reconcile)
    with ThreadPoolExecutor(1) as pool:
        memo = {"client": FakeClient(None, []), "executor": pool}

        async def events() -> None:
            await handlers.child_changed(body=pod(), memo=memo, type="MODIFIED")
            pool.submit(lambda: None).result()  # the reconcile it queued has run
            await handlers.child_changed(body=pod(), memo=memo, type="DELETED")
            pool.submit(lambda: None).result()
            await handlers.child_changed(body=pod(), memo=memo, type=None)  # initial listing: no

        asyncio.run(events())
    assert woken == [{"namespace": "ml", "name": "fraud"}] * 2


def test_events_while_a_reconcile_is_queued_are_answered_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of one Model's child events queues one reconcile, not one per event; an event
    after that reconcile started reading gets one of its own."""
    woken: list[str] = []
    gate = threading.Event()

    def reconcile(body: dict[str, Any], *_: Any, reading: Any = None, **__: Any) -> None:
        gate.wait(5)
        reading()
        woken.append(body["metadata"]["name"])

    monkeypatch.setattr(handlers, "_reconcile", reconcile)
    with ThreadPoolExecutor(1) as pool:
        memo = {"client": FakeClient(None, []), "executor": pool}
        pool.submit(gate.wait, 5)  # the pool's one thread is busy: the reconcile stays queued

        async def burst() -> None:
            for _ in range(5):
                await handlers.child_changed(body=pod(), memo=memo, type="MODIFIED")

        asyncio.run(burst())
        gate.set()
        pool.submit(lambda: None).result()
        assert woken == ["fraud"]
        gate.clear()
        pool.submit(gate.wait, 5)
        asyncio.run(burst())  # after the first reconcile read: a new one
        gate.set()
        pool.submit(lambda: None).result()
    assert woken == ["fraud", "fraud"]


def test_the_reconcile_context_keeps_every_operator_setting() -> None:
    """The context a reconcile renders with is the operator's, plus what the cluster serves: a
    copy made field by field once dropped the Feast profile, so predictors got none."""
    from dataclasses import replace

    from rtml.contract import FeastProfile, FeastSecretRef

    base = RenderContext(
        runtime_image="registry.local/rtml:1",
        feast=FeastProfile.model_construct(kind="redis", redis_url="redis://r.ml.svc:6379/0"),
        feast_secret=FeastSecretRef(name="feast-credentials"),
        materialize_volumes=({"name": "offline", "emptyDir": {}},),
    )
    ctx = reconcile._context(FakeClient(None, []), base)  # type: ignore[arg-type]
    assert ctx == replace(base, keda_installed=False)
