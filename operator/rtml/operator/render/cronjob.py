"""The CronJob that keeps a FeatureView fresh: `rtml materialize` on the view's schedule."""

from __future__ import annotations

import hashlib
from typing import Any

from rtml.api.featureview import FeatureView
from rtml.contract import TMP_DIR, feast_env, materialize_command
from rtml.operator.render.container import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import MANAGED_BY, owner_reference

FEATURE_VIEW_LABEL = "rtml.dev/featureview"
MATERIALIZE_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


# Kubernetes caps a CronJob's name at 52 characters: its Jobs get an 11-character suffix
# within the 63 a Job's pods may carry in a label.
CRONJOB_NAME_MAX = 52
_SUFFIX = "-materialize"


LABEL_VALUE_MAX = 63


def _fit(name: str, room: int) -> str:
    """`name` if it fits in `room` characters, else a cut of it plus 8 hex digits of its
    sha256, so two long names sharing a prefix still come out different."""
    if len(name) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: room - len(digest) - 1].rstrip('-._')}-{digest}"


def cronjob_name(view: FeatureView) -> str:
    """`<view>-materialize`, the view's part shortened when the whole would be too long."""
    return _fit(view.metadata.name, CRONJOB_NAME_MAX - len(_SUFFIX)) + _SUFFIX


def render_materialization_cronjob(view: FeatureView, ctx: RenderContext) -> dict[str, Any]:
    """A `batch/v1` CronJob running incremental materialization with the runtime image.

    Its env is the operator's Feast profile (`ctx.feast`), credentials only as secretKeyRefs
    to `ctx.feast_secret`; the container's root filesystem is read-only, so the store folder
    and /tmp are emptyDirs.
    """
    env = feast_env(ctx.feast, ctx.feast_secret, registry=True)
    env.append({"name": "HOME", "value": TMP_DIR})
    mounts = [
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "feast", "mountPath": str(ctx.feast.path)},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "feast", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts += [dict(m) for m in ctx.materialize_volume_mounts]
    volumes += [dict(v) for v in ctx.materialize_volumes]
    labels = {
        "app.kubernetes.io/name": "rtml-materialize",
        "app.kubernetes.io/instance": _fit(view.metadata.name, LABEL_VALUE_MAX),
        "app.kubernetes.io/part-of": "rtml",
        **MANAGED_BY,
        FEATURE_VIEW_LABEL: _fit(view.metadata.name, LABEL_VALUE_MAX),
    }
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,  # it reads Feast, never the API server
            "securityContext": dict(POD_SECURITY_CONTEXT),
            "containers": [
                {
                    "name": "materialize",
                    "image": ctx.runtime_image,
                    "command": materialize_command(view.metadata.name, view.metadata.namespace),
                    "env": env,
                    "resources": {k: dict(v) for k, v in MATERIALIZE_RESOURCES.items()},
                    "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
    schedule = view.spec.materialization
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(view),
            "namespace": view.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(view)],
        },
        "spec": {
            "schedule": schedule.schedule,
            "suspend": not schedule.enabled,
            "concurrencyPolicy": "Forbid",  # incremental runs must not overlap
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {"backoffLimit": 2, "template": pod},
            },
        },
    }


def job_from_cronjob(cronjob: dict[str, Any], request: str) -> dict[str, Any]:
    """One run of `cronjob` now, as `kubectl create job --from=cronjob/NAME` makes it: the
    jobTemplate's spec and labels, owned by the CronJob, named after the request (the value of
    the materialize-now annotation) so that acting on the same request twice makes one Job."""
    meta = cronjob["metadata"]
    template = cronjob["spec"]["jobTemplate"]
    suffix = "-now-" + hashlib.sha256(request.encode()).hexdigest()[:6]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": meta["name"] + suffix,  # a CronJob name has at most 52: this stays under 63
            "namespace": meta["namespace"],
            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }
