"""Shared fixtures: the real control plane (tests/controlplane.py), API helpers (tests/kube.py)."""

from tests.controlplane import control_plane, kube_api_client  # noqa: F401
from tests.kube import keda_crd, kserve_crd, kube, namespace, operator, rtml_crds  # noqa: F401
