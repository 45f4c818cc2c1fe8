"""compute_model_status: (Model, what the cluster shows) -> the Model's status. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rtml.api.common import unverified_warning
from rtml.api.model import Model
from rtml.operator.conditions import Cond, merge_conditions
from rtml.operator.pods import pod_problem
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import autoscaler_owns_replicas
from rtml.operator.render.service import service_url


@dataclass(frozen=True)
class Canary:
    """A canary rollout (`spec.rollout.strategy: canary`) whose spec does not serve yet: the
    Experiment the Model owns for it, the spec's version, and, once that Experiment ended
    without promoting it (RolledBack, Aborted), its phase and last verdict."""

    experiment: str
    version: str
    ended: str | None = None
    verdict: str | None = None


@dataclass(frozen=True)
class Observed:
    """The children's live state, as read back after applying."""

    deployment: dict[str, Any] | None = None
    inference_service: dict[str, Any] | None = None
    kserve_installed: bool = True
    feature_view: dict[str, Any] | None = None
    features: Cond | None = None  # FeaturesResolved as rtml.operator.signature computed it
    problem: Cond | None = None  # a user-fixable error met while applying (e.g. 422 from the API)
    refused: Cond | None = None  # the spec breaks the tenancy settings (rtml.operator.tenancy)
    failing: Cond | None = None  # a server failure while applying (5xx, 429), being retried
    # ArtifactUnverified as artifact_condition computed it over everything the pods load.
    artifact: Cond | None = None
    # The Model's pods, read only while its Deployment is not fully available (bentoml).
    pods: list[dict[str, Any]] | None = None
    # The Experiment holding the Model's traffic while one runs: (name, its last verdict).
    experiment: tuple[str, str] | None = None
    canary: Canary | None = None
    # The stream consumers' Deployment (spec.stream; None: not there, or no spec.stream).
    stream_deployment: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    rolled_out: Cond
    ready: Cond
    phase: str
    replicas: int | None = None
    ready_replicas: int | None = None
    url: str | None = None


def _desired_replicas(model: Model, deploy: dict[str, Any]) -> int:
    desired = deploy.get("spec", {}).get("replicas", model.spec.autoscaling.min_replicas)
    if autoscaler_owns_replicas(model):
        desired = max(desired or 0, model.spec.autoscaling.min_replicas)
    return int(desired or 0)


def deployment_available(model: Model, deploy: dict[str, Any] | None) -> bool:
    """Whether the Deployment is rolled out with every desired replica available: the steady
    state, in which the operator does not read the pods (the same reading as the status's)."""
    return deploy is not None and _rollout_of(model, deploy, "").phase == "Ready"


def _explained(r: Rollout, pod: str | None) -> Rollout:
    """Adds why a pod is not ready (pods.pod_problem) to the conditions that are not True."""
    if pod is None:
        return r

    def add(c: Cond) -> Cond:
        return c if c.status == "True" else replace(c, message=f"{c.message}; {pod}")

    return replace(r, rolled_out=add(r.rolled_out), ready=add(r.ready))


def _deployment_rollout(
    model: Model, deploy: dict[str, Any] | None, url: str, pods: list[dict[str, Any]] | None
) -> Rollout:
    if deploy is None:
        waiting = Cond(
            "RolledOut", "Unknown", "DeploymentMissing", "the Deployment is not created yet"
        )
        return Rollout(
            waiting, Cond("Ready", "False", "DeploymentMissing", waiting.message), "Pending"
        )
    return _explained(_rollout_of(model, deploy, url), pod_problem(pods or []))


def _rollout_of(model: Model, deploy: dict[str, Any], url: str) -> Rollout:
    st = deploy.get("status") or {}
    gen = deploy.get("metadata", {}).get("generation", 0)
    desired = _desired_replicas(model, deploy)
    updated = st.get("updatedReplicas", 0)
    total = st.get("replicas", 0)
    available = st.get("availableReplicas", 0)
    ready = st.get("readyReplicas", 0)
    counts = {"replicas": total, "ready_replicas": ready, "url": url}
    progressing = next(
        (c for c in st.get("conditions", []) if c.get("type") == "Progressing"), None
    )
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        msg = f"the Deployment did not progress in time: {progressing.get('message', '')}".strip()
        return Rollout(
            Cond("RolledOut", "False", "ProgressDeadlineExceeded", msg),
            Cond("Ready", "False", "ProgressDeadlineExceeded", msg),
            "Failed",
            **counts,
        )
    if st.get("observedGeneration", 0) < gen:
        msg = "waiting for the Deployment controller to observe the new spec"
        return Rollout(
            Cond("RolledOut", "False", "RollingOut", msg),
            Cond("Ready", "False", "RollingOut", msg),
            "Progressing",
            **counts,
        )
    if updated < desired or total > updated:
        msg = f"{updated} of {desired} replicas updated, {total - updated} old replicas remain"
        return Rollout(
            Cond("RolledOut", "False", "RollingOut", msg),
            Cond("Ready", "False", "RollingOut", msg),
            "Progressing",
            **counts,
        )
    if available < desired:
        msg = f"{available} of {desired} updated replicas are available"
        # NewReplicaSetAvailable: the Deployment controller saw this ReplicaSet complete, and
        # keeps the reason while every replica stays updated. Losing a replica after that (a
        # pod deleted, crashing, evicted) is a degraded Model, not a rollout, even at 0.
        # Any other reason (ReplicaSetUpdated, NewReplicaSetCreated) or none: still rolling out.
        completed = (progressing or {}).get("reason") == "NewReplicaSetAvailable"
        phase = "Degraded" if completed else "Progressing"
        return Rollout(
            Cond("RolledOut", "False", "ReplicasUnavailable", msg),
            Cond("Ready", "False", "ReplicasUnavailable", msg),
            phase,
            **counts,
        )
    msg = f"{available} of {desired} replicas available at version {model.spec.version}"
    return Rollout(
        Cond("RolledOut", "True", "RolledOut", msg),
        Cond("Ready", "True", "Ready", msg),
        "Ready",
        **counts,
    )


def _kserve_rollout(obs: Observed, url: str) -> Rollout:
    if not obs.kserve_installed:
        msg = (
            "spec.backend is kserve, but KServe's InferenceService CRD "
            "(serving.kserve.io/v1beta1) is not installed in this cluster; install KServe or "
            "use backend bentoml"
        )
        return Rollout(
            Cond("RolledOut", "False", "KServeNotInstalled", msg),
            Cond("Ready", "False", "KServeNotInstalled", msg),
            "Failed",
        )
    isvc = obs.inference_service
    if isvc is None:
        msg = "the InferenceService is not created yet"
        return Rollout(
            Cond("RolledOut", "Unknown", "InferenceServiceMissing", msg),
            Cond("Ready", "False", "InferenceServiceMissing", msg),
            "Pending",
        )
    st = isvc.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions", [])}
    url = st.get("url") or url

    def mirror(kserve_type: str, ours: str) -> Cond:
        c = conds.get(kserve_type)
        if c is None:
            return Cond(
                ours,
                "Unknown",
                "AwaitingKServe",
                f"KServe has not reported {kserve_type} for the InferenceService yet",
            )
        reason = c.get("reason") or (
            kserve_type if c.get("status") == "True" else f"Not{kserve_type}"
        )
        message = c.get("message") or f"InferenceService {kserve_type} is {c.get('status')}"
        return Cond(ours, c.get("status", "Unknown"), reason, message)

    rolled = mirror("PredictorReady", "RolledOut")
    ready = mirror("Ready", "Ready")
    if ready.status == "Unknown":
        ready = Cond("Ready", "False", ready.reason, ready.message)
    phase = "Ready" if ready.status == "True" else "Progressing"
    return Rollout(rolled, ready, phase, url=url)


def feature_view_not_found(ref: str) -> Cond:
    return Cond(
        "FeaturesResolved",
        "False",
        "FeatureViewNotFound",
        f"FeatureView {ref!r} (spec.features.featureViewRef) does not exist in this namespace",
    )


def holds_rollout(features: Cond) -> bool:
    """Whether FeaturesResolved keeps the spec from rolling out (API.md: the view must exist,
    be Ready, and cover every input). A view nobody has judged yet holds it too: applied
    together, a Model would otherwise roll out before its view turns out unusable; so does an
    artifact still being downloaded for the check (bounded by the download's deadline). An
    artifact the operator cannot read does not: the runtime runs the same check at start-up."""
    return features.status == "False" or (
        features.status == "Unknown"
        and features.reason in ("FeatureViewNotReady", "ArtifactChecking")
    )


def _features_condition(model: Model, obs: Observed) -> Cond:
    if obs.features is not None:
        return obs.features
    binding = model.spec.features
    if binding is None or binding.feature_view_ref is None:
        return Cond(
            "FeaturesResolved",
            "True",
            "NoFeatureView",
            "the Model reads no FeatureView; every input comes with the request",
        )
    if obs.feature_view is None:
        return feature_view_not_found(binding.feature_view_ref)
    return Cond(
        "FeaturesResolved",
        "Unknown",
        "SignatureNotChecked",
        f"FeatureView {binding.feature_view_ref!r} exists; the ONNX signature check has not run",
    )


ARTIFACT_UNVERIFIED = "ArtifactUnverified"


def unverified_artifacts(
    model: Model, serving: Model | None = None, holding: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """(field, uri) of every artifact the Model's pods load without a digest (allowUnverified):
    the spec's and its fallback's, the champion kept during a canary (`serving`, the Model as
    rendered) and the candidate of the Experiment holding the traffic (`holding`)."""
    found = model.spec.unverified_artifacts()
    # The spec's own artifact, when it is what the champion or the candidate loads, is said once.
    said = model.spec.artifact.uri if model.spec.artifact.unverified else None
    champion = serving.spec.artifact if serving is not None else None
    if champion is not None and champion.unverified and champion.uri != said:
        found.append(("the champion's artifact (status.activeArtifact)", champion.uri))
    art = (((holding or {}).get("spec") or {}).get("candidate") or {}).get("artifact") or {}
    uri = art.get("uri")
    if holding is not None and uri and not art.get("sha256") and uri != said:
        name = holding["metadata"]["name"]
        found.append((f"Experiment {name}'s spec.candidate.artifact", str(uri)))
    return found


def artifact_condition(unverified: list[tuple[str, str]]) -> Cond:
    """`ArtifactUnverified`: True while an artifact the pods load has no digest (the Model
    opted out with allowUnverified). A warning, never a failure: Ready, Reconciling and
    Stalled, which kstatus and the Argo CD health check read, do not depend on it."""
    if not unverified:
        return Cond(
            ARTIFACT_UNVERIFIED,
            "False",
            "DigestPinned",
            "every artifact the Model loads is pinned by its sha256; the runtime refuses any "
            "other bytes",
        )
    return Cond(
        ARTIFACT_UNVERIFIED,
        "True",
        "AllowUnverified",
        "; ".join(unverified_warning(field, uri) for field, uri in unverified),
    )


def _work_under_way(obs: Observed, reconciling: bool, stalled: bool, rolling: str) -> Cond:
    """The kstatus `Reconciling` condition: what work is still under way, if any."""
    canary = obs.canary
    if obs.failing is not None and not stalled:
        return Cond("Reconciling", "True", obs.failing.reason, obs.failing.message)
    if reconciling:
        return Cond("Reconciling", "True", "RollingOut", rolling)
    if obs.experiment is not None and not stalled:
        # A canary or A/B test is still deciding what serves: work under way (kstatus).
        name, verdict = obs.experiment
        return Cond("Reconciling", "True", "ExperimentRunning", f"Experiment {name}: {verdict}")
    if canary is not None and canary.ended is None and not stalled:
        # The spec's canary is about to start: from the first status after the change, not
        # Settled (kstatus would call the Model Current while its spec does not serve).
        return Cond(
            "Reconciling",
            "True",
            "CanaryPending",
            f"Experiment {canary.experiment} is about to try {canary.version}",
        )
    return Cond("Reconciling", "False", "Settled", "no work under way")


def stream_condition(model: Model, deploy: dict[str, Any] | None) -> Cond | None:
    """StreamReady, only for a Model with spec.stream: whether every `rtml stream` consumer
    runs (rtml.operator.render.stream). Not rolled into Ready, which says whether the Model
    answers requests: the consumers are workers beside the predictor, and a Model with
    broken consumers still serves its callers."""
    stream = model.spec.stream
    if stream is None:
        return None
    if deploy is None:
        return Cond("StreamReady", "Unknown", "ConsumersNotCreated",
                    "the stream consumers' Deployment does not exist yet")  # fmt: skip
    st = deploy.get("status") or {}
    available = int(st.get("availableReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    current = int(st.get("observedGeneration") or 0) >= int(
        (deploy.get("metadata") or {}).get("generation") or 0
    )
    counted = f"{available} of {stream.replicas} stream consumers available"
    if current and available >= stream.replicas and updated >= stream.replicas:
        return Cond("StreamReady", "True", "ConsumersAvailable", counted)
    why = next(
        (
            c.get("message")
            for c in st.get("conditions") or []
            if c.get("status") == "False" and c.get("message")
        ),
        None,
    )
    return Cond("StreamReady", "False", "ConsumersUnavailable",
                f"{counted}: {why}" if why else counted)  # fmt: skip


def compute_model_status(
    model: Model,
    obs: Observed,
    previous: dict[str, Any] | None,
    ctx: RenderContext,
    now: datetime,
) -> dict[str, Any]:
    """The whole status subresource the operator writes for this Model."""
    previous = previous or {}
    url = service_url(model, ctx)
    if model.spec.backend == "kserve":
        r = _kserve_rollout(obs, url)
    else:
        r = _deployment_rollout(model, obs.deployment, url, obs.pods)
    features = _features_condition(model, obs)
    held_by = obs.refused or (features if features.status == "False" else None)
    if held_by is not None:
        # reconcile_model applied nothing: whatever runs is the previous spec, still serving.
        held = f"spec not rolled out, the running pods keep serving: {held_by.message}"
        r = replace(
            r,
            rolled_out=Cond("RolledOut", "False", held_by.reason, held),
            ready=Cond("Ready", "False", held_by.reason, held),
            phase="Failed",
        )
    elif holds_rollout(features):
        # Not judged yet (the view has not reported Ready): wait, without calling it a failure.
        held = f"spec not rolled out yet, the running pods keep serving: {features.message}"
        r = replace(
            r,
            rolled_out=Cond("RolledOut", "Unknown", features.reason, held),
            ready=Cond("Ready", "False", features.reason, held),
            phase="Pending",
        )
    ready = r.ready
    phase = r.phase
    if obs.problem is not None:
        ready = Cond("Ready", "False", obs.problem.reason, obs.problem.message)
        phase = "Failed"
    elif obs.failing is not None:
        # Retries go on (kstatus: Reconciling, not Stalled); what serves, if anything, still
        # serves: the phase says whether pods are ready, Ready says why the spec is not applied.
        ready = Cond("Ready", "False", obs.failing.reason, obs.failing.message)
        phase = "Degraded" if phase == "Ready" else phase
    stalled = phase == "Failed"
    reconciling = phase in ("Pending", "Progressing")
    canary = obs.canary
    working = _work_under_way(obs, reconciling, stalled, r.rolled_out.message)
    if stalled:
        blocked = Cond("Stalled", "True", ready.reason, ready.message)
    elif canary is not None and canary.ended is not None:
        # The pods serve well (Ready), but never the spec's version without a change from the
        # user: kstatus Failed, Argo CD Degraded, as Argo Rollouts shows an aborted rollout.
        why = f": {canary.verdict}" if canary.verdict else ""
        blocked = Cond(
            "Stalled",
            "True",
            f"Canary{canary.ended}",
            f"the canary of {canary.version} ended {canary.ended} (Experiment "
            f"{canary.experiment}{why}); {model.spec.version} still serves; a new "
            "spec.version or spec.artifact starts another canary",
        )
    else:
        blocked = Cond("Stalled", "False", "NotStalled", "nothing blocks progress")
    artifact = obs.artifact or artifact_condition(unverified_artifacts(model))
    conds = [features, r.rolled_out, ready, working, blocked, artifact]
    stream = stream_condition(model, obs.stream_deployment)
    if stream is not None:
        conds.append(stream)
    generation = model.metadata.generation
    active = model.spec.version if r.rolled_out.status == "True" else previous.get("activeVersion")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "url": r.url,
        "replicas": r.replicas,
        "readyReplicas": r.ready_replicas,
        "activeVersion": active,
        "conditions": merge_conditions(previous.get("conditions", []), conds, generation, now),
    }
    return {k: v for k, v in status.items() if v is not None}


def invalid_spec_status(
    message: str, generation: int | None, previous: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """Status for a Model the API server accepted but rtml cannot use (a user's mistake)."""
    previous = previous or {}
    cond = Cond("Ready", "False", "InvalidSpec", message)
    conds = [
        Cond("RolledOut", "False", "InvalidSpec", message),
        cond,
        Cond("Reconciling", "False", "InvalidSpec", "waiting for a corrected spec"),
        Cond("Stalled", "True", "InvalidSpec", message),
    ]
    return {
        "observedGeneration": generation,
        "phase": "Failed",
        "conditions": merge_conditions(previous.get("conditions", []), conds, generation, now),
        **({"activeVersion": previous["activeVersion"]} if "activeVersion" in previous else {}),
    }


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return (old or {}) != new


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch taking a status subresource from `old` to `new` (None: unchanged).
    Fields no longer reported must be removed explicitly in a merge patch."""
    if not status_changed(old, new):
        return None
    return {**{k: None for k in old or {} if k not in new}, **new}
