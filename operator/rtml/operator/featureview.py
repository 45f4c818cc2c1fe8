"""A FeatureView in the operator-wide Feast registry: register, materialise on demand, remove.

Level-triggered like the Model side: every visit reads the resource, applies it to Feast when
the registry does not yet hold this generation, server-side applies the materialization
CronJob, reads the registry back and writes status only when it changed. Feast is reached only
through `rtml.features.store`; each visit opens (and closes) its own store, so a registry outage
is seen as it happens rather than hidden by a pooled connection.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiException
from pydantic import ValidationError

from rtml import API_VERSION
from rtml.api.featureview import FeatureView
from rtml.contract import FeastProfile
from rtml.features.store import (
    FeatureStoreError,
    apply_views,
    is_unreachable,
    open_store,
    registered_resources,
    registered_view,
    remove_view,
)
from rtml.operator.client import KubeClient
from rtml.operator.conditions import Cond, get_condition
from rtml.operator.errors import PERMANENT_STATUSES, api_error_message, describe_validation_error
from rtml.operator.featureview_status import RegistryFacts, compute_feature_view_status
from rtml.operator.render.context import RenderContext
from rtml.operator.render.cronjob import (
    cronjob_name,
    job_from_cronjob,
    render_materialization_cronjob,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import feast

log = logging.getLogger("rtml.operator.featureview")
KIND = "FeatureView"
MATERIALIZE_NOW = "rtml.dev/materialize-now"
# The value of MATERIALIZE_NOW last acted on. Kopf's diff ignores annotations under its own
# storage prefix (rtml.dev/), so the operator keeps this marker instead of relying on a diff.
MATERIALIZED_FOR = "rtml.dev/materialized-for"


class RegistryUnavailableError(Exception):
    """The Feast registry (or online store) could not be reached; worth retrying later."""


def parse_view(body: Mapping[str, Any]) -> FeatureView:
    return FeatureView.model_validate({k: v for k, v in body.items() if k != "status"})


def _refused(reason: str, message: str) -> Cond:
    return Cond("Registered", "False", reason, message)


def _needs_apply(body: Mapping[str, Any], registered: feast.FeatureView | None) -> bool:
    """Apply when the registry lacks the view or has not seen this generation succeed."""
    status = body.get("status") or {}
    done = get_condition(status.get("conditions"), "Registered") or {}
    return (
        registered is None
        or done.get("status") != "True"
        or status.get("observedGeneration") != body["metadata"].get("generation")
    )


def _facts(registered: feast.FeatureView | None) -> RegistryFacts:
    if registered is None:
        return RegistryFacts(
            refused=_refused("NotInRegistry", "Feast did not keep the view it was given")
        )
    return RegistryFacts(
        feast_name=registered.name,
        feature_names=[f.name for f in registered.features],  # as Feast holds them
        last_materialization=registered.most_recent_end_time,
    )


def _sync_registry(
    view: FeatureView, body: Mapping[str, Any], profile: FeastProfile
) -> RegistryFacts:
    """Register the view if need be and read back what the registry holds."""
    try:
        with open_store(profile) as store:
            if _needs_apply(body, registered_view(store, view)):
                apply_views(store, [view])
            return _facts(registered_view(store, view))
    except FeatureStoreError as e:
        return RegistryFacts(refused=_refused("NameTaken", str(e)))
    except Exception as e:  # Feast raises many types; only an outage is worth a retry
        if is_unreachable(e):
            raise RegistryUnavailableError(_unreachable(e)) from e
        log.warning(
            "Feast refused the FeatureView",
            extra={"featureview": view.metadata.name, "error": str(e)},
        )
        return RegistryFacts(
            refused=_refused("FeastRefused", f"Feast refused the view: {_words(e)}")
        )


def _unreachable(e: BaseException) -> str:
    return f"the Feast registry is unreachable ({e.__class__.__name__}: {_words(e)})"


def _words(e: BaseException) -> str:
    # SQLAlchemy appends a long "Background on this error" paragraph; the first line says it.
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]


def _apply_cronjob(client: KubeClient, view: FeatureView, ctx: RenderContext) -> Cond | None:
    cronjob = render_materialization_cronjob(view, ctx)
    try:
        client.apply(cronjob)
    except ApiException as e:
        if e.status in PERMANENT_STATUSES:
            return Cond(
                "Ready",
                "False",
                "ApplyRejected",
                f"the API server refused CronJob {cronjob['metadata']['name']}: "
                f"{api_error_message(e.status, e.body)}",
            )
        raise
    return None


def reconcile_feature_view(
    client: KubeClient,
    body: dict[str, Any],
    profile: FeastProfile,
    ctx: RenderContext,
) -> dict[str, Any]:
    """Bring one FeatureView's registration and CronJob to their desired state.

    Returns the status written. Raises RegistryUnavailableError (after recording it in status)
    when Feast cannot be reached, and ApiException for API server failures worth retrying.
    """
    now = datetime.now(UTC)
    meta = body["metadata"]
    previous = body.get("status") or {}
    try:
        view = parse_view(body)
    except ValidationError as e:
        facts = RegistryFacts(refused=_refused("InvalidSpec", describe_validation_error(e)))
        return _write_status(client, body, previous, facts, now)
    try:
        facts = _sync_registry(view, body, profile)
    except RegistryUnavailableError as e:
        _write_status(client, body, previous, RegistryFacts(unreachable=str(e)), now)
        raise
    problem = _apply_cronjob(client, view, ctx)
    if problem is not None:
        facts = replace(facts, problem=problem)
    log.info(
        "reconciled FeatureView",
        extra={"featureview": meta["name"], "namespace": meta["namespace"]},
    )
    return _write_status(client, body, previous, facts, now)


def materialization_requested(body: Mapping[str, Any]) -> str | None:
    """The new value of the materialize-now annotation, or None when it was already acted on."""
    annotations = body.get("metadata", {}).get("annotations") or {}
    wanted = annotations.get(MATERIALIZE_NOW)
    if not wanted or wanted == annotations.get(MATERIALIZED_FOR):
        return None
    return str(wanted)


def materialize_now(client: KubeClient, body: dict[str, Any]) -> str | None:
    """Run the view's CronJob once, now, when the `rtml.dev/materialize-now` annotation has a new
    value: a Job from its jobTemplate, as `kubectl create job --from=cronjob/...` makes one. It
    runs where every run runs (the runtime image, the Secret's credentials, the chart's
    `materialization.volumes` for file sources), not in the operator, which mounts none of them.

    Returns the Job's name, or None when nothing was requested or the CronJob is not there yet
    (the next resync asks again). The request is marked done once the Job exists; the resync
    reads the run's end from the registry into `lastMaterialization`.
    """
    wanted = materialization_requested(body)
    if wanted is None:
        return None
    meta = body["metadata"]
    involved = {**body, "kind": KIND, "apiVersion": API_VERSION}
    name = cronjob_name(parse_view(body))
    cronjob = client.get("batch/v1", "CronJob", meta["namespace"], name)
    if cronjob is None:
        log.info("materialization requested before CronJob %s exists; the resync retries", name)
        return None
    job = client.apply(job_from_cronjob(cronjob, wanted))
    job_name = str(job["metadata"]["name"])
    client.annotate(KIND, meta["namespace"], meta["name"], {MATERIALIZED_FOR: wanted})
    client.event(
        involved,
        "MaterializationStarted",
        f"materialization requested: Job {job_name} runs the CronJob {name}'s pod now",
    )
    return job_name


def sweep_registry(client: KubeClient, profile: FeastProfile) -> list[tuple[str, str]]:
    """Remove from Feast the views whose FeatureView is gone (deleted while the operator was
    down, or when its removal at deletion failed): FeatureViews carry no finalizer, so their
    deletion never waits for the operator, and this sweep, every resync, is what makes the
    registry follow. A view is removed only when a fresh read of the API server finds no
    FeatureView of that namespace and name (never from a cache); an error reading it (a 403
    in a namespace this operator may not read) stops the sweep, removing nothing more."""
    removed = []
    with open_store(profile) as store:
        for namespace, name in registered_resources(store):
            if client.get(API_VERSION, KIND, namespace, name) is not None:
                continue
            if remove_view(store, namespace, name):
                removed.append((namespace, name))
                log.info(
                    "removed the Feast view of a deleted FeatureView",
                    extra={"featureview": name, "namespace": namespace},
                )
    return removed


def unregister_feature_view(
    client: KubeClient, body: dict[str, Any], profile: FeastProfile, attempt: int, attempts: int
) -> bool:
    """Remove the deleted FeatureView from the registry; True once done or given up on.

    Raises RegistryUnavailableError while attempts remain; on the last attempt gives up with a
    Warning Event, so a deletion never hangs on a registry outage.
    """
    meta = body["metadata"]
    try:
        with open_store(profile) as store:
            removed = remove_view(store, meta["namespace"], meta["name"])
    except Exception as e:
        if not is_unreachable(e):
            raise
        message = _unreachable(e)
        if attempt + 1 < attempts:
            raise RegistryUnavailableError(f"{message}; attempt {attempt + 1} of {attempts}") from e
        client.event(
            {**body, "kind": KIND, "apiVersion": API_VERSION},
            "RegistryCleanupSkipped",
            f"{message} after {attempts} attempt(s); the Feast view {meta['name']!r} stays in "
            "the registry until the operator's registry sweep (every resync) removes it",
            "Warning",
        )
        log.warning(
            "could not remove the deleted FeatureView's view from Feast; the sweep retries",
            extra={"featureview": meta["name"], "namespace": meta["namespace"], "error": message},
        )
        return True
    log.info(
        "removed FeatureView from Feast",
        extra={"featureview": meta["name"], "namespace": meta["namespace"], "found": removed},
    )
    return True


def _write_status(
    client: KubeClient,
    body: Mapping[str, Any],
    previous: dict[str, Any],
    facts: RegistryFacts,
    now: datetime,
) -> dict[str, Any]:
    meta = body["metadata"]
    status = compute_feature_view_status(meta.get("generation"), facts, previous, now)
    if status == previous:
        return status
    # Fields no longer reported must be removed explicitly in a merge patch.
    patch = {**{k: None for k in previous if k not in status}, **status}
    client.patch_status(KIND, meta["namespace"], meta["name"], patch)
    before = (get_condition(previous.get("conditions"), "Ready") or {}).get("status")
    after = get_condition(status["conditions"], "Ready") or {}
    if before != after.get("status"):
        client.event(
            {**body, "kind": KIND, "apiVersion": API_VERSION},
            after.get("reason", "Ready"),
            after.get("message", ""),
            "Normal" if after.get("status") == "True" else "Warning",
        )
    return status
