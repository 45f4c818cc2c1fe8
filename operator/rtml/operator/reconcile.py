"""reconcile_model: the level-triggered loop body for one Model.

Read the Model -> render its children (pure) -> server-side apply each -> prune what is no longer
desired -> read back the children -> compute status (pure) -> write it only when it changed.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiException
from pydantic import ValidationError

from rtml import API_VERSION
from rtml.api.model import Model
from rtml.operator.applied import Applied
from rtml.operator.client import KubeClient
from rtml.operator.conditions import Cond, get_condition
from rtml.operator.errors import (
    PERMANENT_STATUSES,
    api_error_message,
    describe_validation_error,
)
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import selector_labels
from rtml.operator.render.model import OWNED_KINDS, render_model_children
from rtml.operator.render.stream import stream_deployment_name
from rtml.operator.rollout import experiments_of, holder, plan_of, serving
from rtml.operator.signature import SignatureCache, check_model_signature
from rtml.operator.status import (
    Observed,
    artifact_condition,
    compute_model_status,
    deployment_available,
    holds_rollout,
    invalid_spec_status,
    status_patch,
    unverified_artifacts,
)
from rtml.operator.tenancy import tenancy_problem

log = logging.getLogger("rtml.operator.reconcile")
KSERVE = ("serving.kserve.io/v1beta1", "InferenceService")
KEDA = ("keda.sh/v1alpha1", "ScaledObject")
SIGNATURES = SignatureCache.from_env()
APPLIED = Applied()  # children applied by this process (rtml.operator.applied)


def _context(client: KubeClient, base: RenderContext) -> RenderContext:
    """The operator's settings plus what the cluster serves. Everything else of `base` is kept:
    a field copied by hand here once dropped the Feast profile from every predictor."""
    return dataclasses.replace(base, keda_installed=client.serves(*KEDA))


def _prune(client: KubeClient, model: Model, desired: list[dict[str, Any]]) -> None:
    keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for api_version, kind in OWNED_KINDS:
        if "/" in api_version and "." in api_version and not client.serves(api_version, kind):
            continue
        for obj in client.list_owned(
            api_version, kind, model.metadata.namespace, model.metadata.name
        ):
            owners = obj["metadata"].get("ownerReferences") or []
            ours = any(o.get("uid") == model.metadata.uid for o in owners)
            if ours and (kind, obj["metadata"]["name"]) not in keep:
                log.info("pruning child", extra={"kind": kind, "child": obj["metadata"]["name"]})
                client.delete(api_version, kind, model.metadata.namespace, obj["metadata"]["name"])


@dataclasses.dataclass(frozen=True)
class ApplyOutcome:
    """What applying the children met: a refusal the user must fix (`problem`), or a server
    failure that retries may outlast (`failing`, with the exception to retry on)."""

    problem: Cond | None = None
    failing: Cond | None = None
    error: ApiException | None = None


def _apply_all(client: KubeClient, desired: list[dict[str, Any]]) -> ApplyOutcome:
    for obj in desired:
        if APPLIED.unchanged(obj):
            continue  # what this process applied last, and nobody changed it since
        try:
            APPLIED.record(obj, client.apply(obj))
        except ApiException as e:
            APPLIED.forget(obj)
            what = f"{obj['kind']} {obj['metadata']['name']}"
            words = api_error_message(e.status, e.body)
            if e.status in PERMANENT_STATUSES:
                return ApplyOutcome(
                    problem=Cond(
                        "Ready", "False", "ApplyRejected", f"the API server refused {what}: {words}"
                    )
                )
            if e.status == 409 or e.status is None or e.status == 0:
                raise  # a concurrent writer or no answer at all: the retry says it
            # 5xx, 429: maybe temporary, maybe not (a full service range answers 500 to every
            # try). Said in the Model's status at once, in the API server's words, while the
            # handler's retries with backoff go on: a persistent failure never leaves a Model
            # without a status (1,000 Models once had none, issue 12).
            return ApplyOutcome(
                failing=Cond(
                    "Ready",
                    "False",
                    "ApplyFailing",
                    f"the API server could not apply {what} ({e.status}): {words}; retrying",
                ),
                error=e,
            )
    return ApplyOutcome()


def reconcile_model(
    client: KubeClient, body: dict[str, Any], base_ctx: RenderContext
) -> dict[str, Any]:
    """Bring one Model's children to their desired state; returns the status written."""
    now = datetime.now(UTC)
    meta = body["metadata"]
    previous = body.get("status") or {}
    try:
        model = Model.model_validate({k: v for k, v in body.items() if k != "status"})
    except ValidationError as e:
        status = invalid_spec_status(
            describe_validation_error(e), meta.get("generation"), previous, now
        )
        _write_status(client, body, previous, status)
        return status

    ctx = _context(client, base_ctx)
    ns, name = model.metadata.namespace, model.metadata.name
    experiments = experiments_of(name, client.list_in(API_VERSION, "Experiment", ns))
    serve = serving(model, previous, experiments)
    holding = holder(experiments)
    feature_view = _feature_view(client, model)
    features = check_model_signature(model, feature_view, SIGNATURES, previous)
    # A failed (or not yet possible) check applies and prunes nothing, so the pods already
    # running keep serving.
    # A spec asking for more than the operator's tenancy settings allow is held the same way.
    refused = tenancy_problem(model, ctx.allowed_runtime_images, ctx.allow_service_account_name)
    held = holds_rollout(features) or refused is not None
    kserve_installed = True
    applied = ApplyOutcome()
    if model.spec.backend == "kserve" and not client.serves(*KSERVE):
        kserve_installed = False
        desired: list[dict[str, Any]] = []
    elif held:
        desired = []
    else:
        desired = render_model_children(serve.model, ctx, feature_view, plan_of(holding))
        owned = [serve.experiment] if serve.experiment is not None else []
        applied = _apply_all(client, [*desired, *owned])
    problem = applied.problem
    if problem is None and applied.failing is None and kserve_installed and not held:
        if not APPLIED.pruned(meta["uid"], desired):
            _prune(client, model, desired)
            APPLIED.mark_pruned(meta["uid"], desired)
        _end_superseded(client, body, serve.superseded)
        if holding is None and _new(serve.experiment, experiments):
            holding = serve.experiment  # the canary just created holds the traffic from now

    deployment = (
        client.get("apps/v1", "Deployment", ns, name) if model.spec.backend == "bentoml" else None
    )
    observed = Observed(
        deployment=deployment,
        pods=_pods(client, model, deployment),
        inference_service=client.get(*KSERVE, ns, name)
        if model.spec.backend == "kserve" and kserve_installed
        else None,
        kserve_installed=kserve_installed,
        feature_view=feature_view,
        features=features,
        problem=problem,
        refused=refused,
        failing=applied.failing,
        experiment=_running(holding),
        canary=serve.canary,
        artifact=artifact_condition(unverified_artifacts(model, serve.model, holding)),
        stream_deployment=client.get("apps/v1", "Deployment", ns, stream_deployment_name(model))
        if model.spec.stream is not None
        else None,
    )
    status = compute_model_status(serve.model, observed, previous, ctx, now)
    _track_champion(status, serve.model, previous, holding)
    _write_status(client, body, previous, status)
    if applied.error is not None:
        raise applied.error  # the handler retries it with backoff; the status already says it
    return status


def _new(experiment: dict[str, Any] | None, experiments: list[dict[str, Any]]) -> bool:
    """Whether `experiment` (an owned canary to apply) does not exist yet."""
    if experiment is None:
        return False
    name = experiment["metadata"]["name"]
    return all(e["metadata"]["name"] != name for e in experiments)


def _running(holding: dict[str, Any] | None) -> tuple[str, str] | None:
    if holding is None:
        return None
    status = holding.get("status") or {}
    return holding["metadata"]["name"], status.get("lastVerdict") or status.get(
        "phase"
    ) or "Pending"


def _track_champion(
    status: dict[str, Any],
    serving_model: Model,
    previous: dict[str, Any],
    holding: dict[str, Any] | None,
) -> None:
    """activeArtifact follows activeVersion (the champion that serves); `experiment` names
    the Experiment holding the Model's traffic while one runs."""
    spec = serving_model.spec
    if status.get("activeVersion") == spec.version and status.get("activeVersion") is not None:
        status["activeArtifact"] = spec.artifact.model_dump(
            mode="json", by_alias=True, exclude_none=True, include={"uri", "sha256"}
        )
    elif previous.get("activeArtifact"):
        status["activeArtifact"] = previous["activeArtifact"]
    if holding is not None:
        status["experiment"] = holding["metadata"]["name"]


def _end_superseded(client: KubeClient, body: dict[str, Any], names: tuple[str, ...]) -> None:
    """Owned canaries of older artifacts: a revision never analysed is never promoted, so a
    newer artifact ends the running one (its deletion sends traffic back to the champion)."""
    meta = body["metadata"]
    for exp in names:
        log.info("ending a superseded canary", extra={"model": meta["name"], "experiment": exp})
        client.delete(API_VERSION, "Experiment", meta["namespace"], exp)
        client.event(
            {**body, "kind": "Model"},
            "CanarySuperseded",
            f"Experiment {exp} ended: spec.artifact changed again, the new one starts from "
            "the first step",
        )


def _pods(
    client: KubeClient, model: Model, deployment: dict[str, Any] | None
) -> list[dict[str, Any]] | None:
    """The Deployment's pods, to say why one is not ready; read only while not every desired
    replica is available, so a steady-state reconcile costs no list. Best effort: without
    them the status still says how many replicas are available, just not why."""
    if deployment is None or deployment_available(model, deployment):
        return None
    match = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
    try:
        return client.list_selected(
            "v1", "Pod", model.metadata.namespace, match or selector_labels(model)
        )
    except ApiException as e:  # e.g. 403 from a chart older than this operator
        log.warning(
            "could not list the Model's pods",
            extra={"model": model.metadata.name, "status": e.status},
        )
        return None


def _feature_view(client: KubeClient, model: Model) -> dict[str, Any] | None:
    binding = model.spec.features
    if binding is None or binding.feature_view_ref is None:
        return None
    return client.get(
        "rtml.dev/v1alpha1", "FeatureView", model.metadata.namespace, binding.feature_view_ref
    )


def _write_status(
    client: KubeClient, body: dict[str, Any], previous: dict[str, Any], status: dict[str, Any]
) -> None:
    patch = status_patch(previous, status)
    if patch is None:
        return
    meta = body["metadata"]
    client.patch_model_status(meta["namespace"], meta["name"], patch)
    before = (get_condition(previous.get("conditions"), "Ready") or {}).get("status")
    after = get_condition(status["conditions"], "Ready") or {}
    if before != after.get("status"):
        kind = "Normal" if after.get("status") == "True" else "Warning"
        client.event(
            {**body, "kind": "Model"}, after.get("reason", "Ready"), after.get("message", ""), kind
        )
