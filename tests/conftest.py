"""Shared fixtures: the real control plane, API helpers, Redis, PostgreSQL, the runtime process."""

from tests.controlplane import control_plane, kube_api_client  # noqa: F401
from tests.images import built_images  # noqa: F401
from tests.kube import keda_crd, kserve_crd, kube, namespace, operator, rtml_crds  # noqa: F401
from tests.postgres import postgres_server  # noqa: F401
from tests.runtime_proc import fraud_build, redis_server  # noqa: F401
