"""`up` after a node run that died without `down`, then `down`: the host is as it was.

A module of its own: two nodes cannot share the machine (one bridge, one cgroup root), and the
module-scoped node of test_node.py is gone by the time this runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rtml.dev.cluster import LocalControlPlane, cluster_down, read_state
from rtml.dev.tools import ensure_node_tools, ensure_tools
from tests.integration.test_node import (
    apply,
    host_snapshot,
    kubectl,
    mounts_under,
    node_processes,
    redis_pod,
    restricted_namespace,
)

pytestmark = [pytest.mark.node, pytest.mark.images]


def test_up_after_a_killed_run_clears_the_leftovers_and_down_restores_the_host(
    tmp_path: Path, built_images: dict[str, str]
) -> None:
    """A run that died without `down` (everything SIGKILLed: mounts, rules, bridge, sysctls
    left) must not stop the next `up`; `down` then leaves the host as it was."""
    before = host_snapshot()
    workdir = tmp_path / "killed"
    bins = ensure_tools(lambda _m: None), ensure_node_tools(lambda _m: None)
    plane = LocalControlPlane(workdir, *bins)
    plane.start(timeout=600)
    apply(plane, *redis_pod(restricted_namespace(plane), built_images["redis"]))
    time.sleep(10)
    for process in read_state(workdir) or []:
        os.killpg(process.pid, signal.SIGKILL)
    assert host_snapshot() != before  # the bridge, rules and sysctls are left behind
    again = LocalControlPlane(workdir, *bins)
    again.start(timeout=600)
    try:
        ready = kubectl(
            again, "get", "node", "-o", "jsonpath={.items[0].status.conditions[-1].type}"
        )
        assert ready == "Ready"
    finally:
        again.stop()
    cluster_down(workdir)
    assert host_snapshot() == before
    assert mounts_under(workdir) == []
    assert node_processes(workdir) == []
