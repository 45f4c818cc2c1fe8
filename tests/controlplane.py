"""Session fixtures for tests that need the real local control plane.

Import them into a conftest with ``from tests.controlplane import control_plane, kube_api_client``.
Set ``RTML_KUBECONFIG`` to run against an existing cluster instead of starting one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.tools import ensure_tools

REPO_ROOT = Path(__file__).resolve().parents[1]
FAILURE_LOGS_DIR = REPO_ROOT / ".test-logs" / "control-plane"


@dataclass(frozen=True)
class ExistingCluster:
    """A cluster the tests did not start (``RTML_KUBECONFIG``): no CA key, no logs."""

    kubeconfig: Path
    ca_cert: Path | None = None
    ca_key: Path | None = None
    logs_dir: Path | None = None


def _report(request: pytest.FixtureRequest, message: str) -> None:
    reporter: Any = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message)


def _keep_logs(request: pytest.FixtureRequest, plane: LocalControlPlane) -> None:
    if not plane.logs_dir.is_dir():
        return
    shutil.rmtree(FAILURE_LOGS_DIR, ignore_errors=True)
    shutil.copytree(plane.logs_dir, FAILURE_LOGS_DIR)
    _report(request, f"control plane logs copied to {FAILURE_LOGS_DIR}")


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LocalControlPlane | ExistingCluster]:
    """A running etcd + kube-apiserver + kube-controller-manager for the whole session."""
    existing = os.environ.get("RTML_KUBECONFIG")
    if existing:
        yield ExistingCluster(Path(existing))
        return
    bin_dir = ensure_tools(progress=lambda message: _report(request, message))
    workdir = tmp_path_factory.mktemp("control-plane")
    plane = LocalControlPlane(workdir, bin_dir)
    try:
        plane.start()
    except BaseException:
        _keep_logs(request, plane)
        raise
    _report(request, f"control plane ready at {plane.server} in {plane.started_seconds:.1f}s")
    try:
        yield plane
    finally:
        plane.stop()
        if request.session.testsfailed:
            _keep_logs(request, plane)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_api_client(control_plane: LocalControlPlane | ExistingCluster) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as the control plane's admin."""
    from kubernetes import config

    client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        str(control_plane.kubeconfig)
    )
    try:
        yield client
    finally:
        client.close()
