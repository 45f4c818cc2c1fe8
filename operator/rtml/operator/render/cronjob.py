"""The CronJob that keeps a FeatureView fresh: `rtml materialize` on the view's schedule."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from rtml.api.featureview import FeatureView
from rtml.operator.render.container import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import MANAGED_BY, owner_reference

FEATURE_VIEW_LABEL = "rtml.dev/featureview"
STORE_PATH_ENV = "RTML_FEAST_PATH"
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


def materialize_command(view: FeatureView) -> list[str]:
    return ["rtml", "materialize", view.metadata.name, "--namespace", view.metadata.namespace]


def render_materialization_cronjob(
    view: FeatureView, ctx: RenderContext, store_env: Mapping[str, str]
) -> dict[str, Any]:
    """A `batch/v1` CronJob running incremental materialization with the runtime image.

    `store_env` is the operator's Feast profile as environment variables; the container's root
    filesystem is read-only, so the store folder and /tmp are emptyDirs.
    """
    env = [{"name": k, "value": v} for k, v in sorted(store_env.items())]
    env.append({"name": "HOME", "value": "/tmp"})  # noqa: S108 - the pod's private emptyDir
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - the pod's private emptyDir
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    store_path = store_env.get(STORE_PATH_ENV)
    if store_path:
        mounts.append({"name": "feast", "mountPath": store_path})
        volumes.append({"name": "feast", "emptyDir": {"sizeLimit": "1Gi"}})
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
                    "command": materialize_command(view),
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
