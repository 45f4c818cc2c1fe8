"""reconcile_experiment: one tick of an Experiment, the shell around the pure state machine.

Read the Experiment and its Model -> ask canary.needs() what to measure -> measure it (which
ready pods apply the plan; the candidate's metrics from Prometheus) -> canary.decide() ->
write status and Events -> tell the caller whether the Model's traffic plan changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rtml import API_VERSION
from rtml.api.experiment import (
    ABORT_ANNOTATION,
    FINAL_PHASES,
    PAUSE_ANNOTATION,
    ExperimentSpec,
    ExperimentStatus,
)
from rtml.api.model import Model
from rtml.operator.analysis import MetricsSource, MetricsUnavailable, Window
from rtml.operator.canary import Decision, Facts, decide, needs, variant
from rtml.operator.client import KubeClient
from rtml.operator.conditions import Cond, merge_conditions
from rtml.operator.errors import describe_validation_error
from rtml.operator.pods import pod_serving
from rtml.operator.render.meta import selector_labels, traffic_config_map_name
from rtml.operator.rollout import experiments_of, holder, owned_by_a_model
from rtml.operator.status import status_patch

log = logging.getLogger("rtml.operator.experiment")
# Annotating a pod makes its kubelet sync it at once, which refreshes its ConfigMap volumes:
# a new weight reaches the pod in seconds instead of the kubelet's sync period (1 min by
# default). docs/experiments.md has the measurements. The value: the traffic ConfigMap's
# resourceVersion, which changes with every plan (the end of an experiment included).
TRAFFIC_ANNOTATION = "rtml.dev/traffic-revision"


@dataclass(frozen=True)
class Tick:
    status: dict[str, Any]
    plan_changed: bool  # the Model's traffic plan must be re-rendered
    requeue_seconds: float | None
    promote: bool = False  # write the candidate into the Model's spec (standalone, onSuccess)


def _truthy(meta: dict[str, Any], key: str) -> bool:
    return str((meta.get("annotations") or {}).get(key, "")).lower() in ("true", "1", "yes")


def _blocked(
    client: KubeClient, body: dict[str, Any], spec: ExperimentSpec
) -> tuple[tuple[str, str] | None, Model | None]:
    meta = body["metadata"]
    ns = meta["namespace"]
    raw = client.get(API_VERSION, "Model", ns, spec.model_ref)
    if raw is None:
        return ("ModelNotFound", f"Model {spec.model_ref} does not exist in namespace {ns}"), None
    try:
        model = Model.model_validate({k: v for k, v in raw.items() if k != "status"})
    except ValidationError as e:  # the Model's own status says what; this one waits for a fix
        why = f"Model {spec.model_ref} is invalid: {describe_validation_error(e)}"
        return ("ModelInvalid", why), None
    if model.spec.backend == "kserve" and spec.strategy != "canary":
        why = f"the kserve backend splits traffic only as a canary, not {spec.strategy}"
        return ("StrategyUnsupported", why), model
    others = experiments_of(spec.model_ref, client.list_in(API_VERSION, "Experiment", ns))
    first = holder(others)
    if first is not None and first["metadata"]["name"] != meta["name"]:
        message = (
            f"Experiment {first['metadata']['name']} already runs on Model {spec.model_ref}; "
            "only one may run per Model, this one waits until it ends"
        )
        return ("ModelBusy", message), model
    return None, model


def nudge_pods(client: KubeClient, namespace: str, model_name: str) -> list[dict[str, Any]]:
    """Annotate the Model's pods with the traffic ConfigMap's resourceVersion (it changes with
    every plan), so each kubelet syncs its pod and refreshes the volume now. Returns the pods."""
    cm = client.get("v1", "ConfigMap", namespace, traffic_config_map_name(model_name))
    pods = client.list_selected("v1", "Pod", namespace, selector_labels(model_name))
    version = (cm or {}).get("metadata", {}).get("resourceVersion")
    if version is None:
        return pods
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if (pod["metadata"].get("annotations") or {}).get(TRAFFIC_ANNOTATION) != version:
            client.annotate_pod(namespace, pod["metadata"]["name"], {TRAFFIC_ANNOTATION: version})
    return pods


def _pods_applied(
    client: KubeClient, source: MetricsSource, model: Model, revision: str | None
) -> bool:
    """Every ready pod of the Model reports `revision` (at least one pod)."""
    if model.spec.backend == "kserve":
        return True  # KServe routes by canaryTrafficPercent; its pods hold no plan
    ns, name = model.metadata.namespace, model.metadata.name
    ready = [p for p in nudge_pods(client, ns, name) if pod_serving(p)]
    if not ready or not revision:
        return False
    applying = source.pods_applying(ns, name, revision)
    return {p["metadata"]["name"] for p in ready} <= applying


def gather_facts(
    client: KubeClient,
    body: dict[str, Any],
    spec: ExperimentSpec,
    status: ExperimentStatus,
    source: MetricsSource,
    now: datetime,
) -> Facts:
    meta = body["metadata"]
    blocked, model = _blocked(client, body, spec)
    facts: dict[str, Any] = {
        "now": now,
        "generation": meta.get("generation"),
        "pause_requested": _truthy(meta, PAUSE_ANNOTATION),
        "abort_requested": _truthy(meta, ABORT_ANNOTATION),
        "blocked": blocked if status.phase in (None, "Pending") else None,
    }
    wants = needs(spec, status, now)
    if model is None or (blocked is not None and status.phase in (None, "Pending")):
        return Facts(**facts)
    try:
        if wants.pods:
            facts["pods_applied"] = _pods_applied(client, source, model, status.traffic_revision)
        elif wants.window is not None:
            start, end = wants.window
            w = Window(
                meta["namespace"], spec.model_ref, variant(spec), start, end, status.started_at
            )
            names = ["requests", *(m.name for m in spec.analysis.metrics)]
            facts["readings"] = {n: source.measure(n, w) for n in names}
        elif wants.probe:
            w = Window(meta["namespace"], spec.model_ref, variant(spec), now, now)
            source.measure("requests", w)
            facts["readings"] = {}
    except MetricsUnavailable as e:
        facts["metrics_unavailable"] = str(e)
    return Facts(**facts)


def _conditions(
    status: ExperimentStatus, previous: list[dict[str, Any]], generation: int | None, now: datetime
) -> list[dict[str, Any]]:
    """kstatus: Reconciling while it runs, Stalled once rolled back or aborted (it needs a
    change from the user), Ready when it ended well."""
    phase = status.phase or "Pending"
    verdict = status.last_verdict or phase
    ended_well = phase in ("Promoted", "Completed")
    ended_badly = phase in ("RolledBack", "Aborted")
    conds = [
        Cond("Ready", "True" if ended_well else "False", phase, verdict),
        Cond(
            "Reconciling",
            "False" if phase in FINAL_PHASES else "True",
            "Finished" if phase in FINAL_PHASES else phase,
            verdict,
        ),
        Cond("Stalled", "True" if ended_badly else "False", phase, verdict),
    ]
    return merge_conditions(previous, conds, generation, now)


def reconcile_experiment(
    client: KubeClient, body: dict[str, Any], source: MetricsSource, now: datetime | None = None
) -> Tick:
    now = now or datetime.now(UTC)
    meta = body["metadata"]
    raw_status = body.get("status") or {}
    try:
        spec = ExperimentSpec.model_validate(body.get("spec") or {})
        previous = ExperimentStatus.model_validate(raw_status)
    except ValidationError as e:
        message = f"the spec is invalid: {describe_validation_error(e)}"
        cond = Cond("Ready", "False", "InvalidSpec", message)
        status = {
            "phase": raw_status.get("phase") or "Pending",
            "conditions": merge_conditions(
                raw_status.get("conditions") or [], [cond], meta.get("generation"), now
            ),
        }
        _write(client, body, raw_status, status)
        return Tick(status, False, None)

    decision: Decision = decide(
        meta["name"], spec, previous, gather_facts(client, body, spec, previous, source, now)
    )
    new = decision.status
    status = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["conditions"] = _conditions(
        new, raw_status.get("conditions") or [], meta.get("generation"), now
    )
    _write(client, body, raw_status, status)
    for ev in decision.events:
        client.event({**body, "kind": "Experiment"}, ev.reason, ev.message, ev.type)
        log.info(ev.message, extra={"experiment": meta["name"], "reason": ev.reason})
    plan_changed = (new.traffic_revision, new.phase, new.candidate_weight) != (
        previous.traffic_revision,
        previous.phase,
        previous.candidate_weight,
    )
    promote = (
        new.phase == "Promoted" and previous.phase != "Promoted" and not owned_by_a_model(body)
    )
    return Tick(status, plan_changed, decision.requeue_seconds, promote)


def _write(
    client: KubeClient, body: dict[str, Any], previous: dict[str, Any], status: dict[str, Any]
) -> None:
    patch = status_patch(previous, status)
    if patch is None:
        return
    meta = body["metadata"]
    client.patch_status("Experiment", meta["namespace"], meta["name"], patch)


def promote_into_model(client: KubeClient, body: dict[str, Any]) -> None:
    """onSuccess: promote of a standalone Experiment: the candidate becomes the Model's spec.
    (A Model rolled out by its own canary is never written: its Experiment is owned.)"""
    spec = ExperimentSpec.model_validate(body["spec"])
    meta = body["metadata"]
    art = spec.candidate.artifact
    # A merge patch keeps what it does not name: the Model's old digest (or opt-out) must be
    # removed explicitly, or it would stay beside the candidate's URI.
    artifact = {"uri": art.uri, "sha256": art.sha256, "allowUnverified": art.allow_unverified}
    client.patch_model_spec(
        meta["namespace"],
        spec.model_ref,
        {"version": spec.candidate.version, "artifact": artifact},
    )
    client.event(
        {**body, "kind": "Experiment"},
        "ModelUpdated",
        f"Model {spec.model_ref} now serves {spec.candidate.version} (onSuccess: promote)",
    )
