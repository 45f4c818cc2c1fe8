"""Where the Feast registry sweep runs: in the operator, in a short-lived process, or not at all.

The sweep (rtml.operator.featureview.sweep_registry) removes the Feast views of FeatureViews
that no longer exist. It needs Feast, and importing Feast (with pandas, dask, scipy and
sqlalchemy) grows the operator's memory by ~120 MiB for good: with 1,000 feature-less Models
the operator was at 192 MiB when every Model was done and at 315 MiB after its first sweeps
(benchmarks `--suite scale`, docs/operator-scale.md).

- FeatureViews exist, or Feast is loaded already: sweep here, every round. The operator
  registers those views in-process anyway.
- Neither, and no sweep has finished since start-up: sweep once in a child process. Views of
  FeatureViews deleted while no operator ran can only be found this way, and the child's
  memory goes when it exits.
- Neither, after that: nothing to do. Every view registered since start-up was registered
  by this process, which loaded Feast to do it (and so sweeps here from then on).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Literal

from rtml.features.store import is_unreachable

log = logging.getLogger("rtml.operator")
Where = Literal["here", "child", "none"]
EXIT_UNREACHABLE = 3  # the child could not reach the registry: the Ticker backs off
CHILD_TIMEOUT_SECONDS = 300.0


def sweep_where(views_exist: bool, feast_loaded: bool, swept_since_start: bool) -> Where:
    if views_exist or feast_loaded:
        return "here"
    return "none" if swept_since_start else "child"


def feast_loaded() -> bool:
    return "feast" in sys.modules


class SweepUnreachableError(RuntimeError):
    """The child process could not reach the registry or the API server."""


def _child_argv(kubeconfig: str | None) -> list[str]:
    argv = [sys.executable, "-m", "rtml.cli", "feast-sweep"]
    return [*argv, "--kubeconfig", kubeconfig] if kubeconfig else argv


def sweep_in_child(kubeconfig: str | None, timeout: float = CHILD_TIMEOUT_SECONDS) -> None:
    """`rtml feast-sweep` in a process of its own, with this process's environment (the Feast
    profile's RTML_FEAST_* variables and the in-cluster service account come with it); its
    log lines go where the operator's go."""
    try:
        done = subprocess.run(_child_argv(kubeconfig), check=False, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SweepUnreachableError(f"the registry sweep did not finish in {timeout:g}s") from e
    if done.returncode == EXIT_UNREACHABLE:
        raise SweepUnreachableError("the registry sweep could not reach the registry")
    if done.returncode != 0:
        raise RuntimeError(f"the registry sweep's process exited with {done.returncode}")


def sweep_once(kubeconfig: str | None) -> int:
    """The child's side (`rtml feast-sweep`): one sweep; its exit code for sweep_in_child."""
    from rtml.operator.client import KubeClient
    from rtml.operator.featureview import sweep_registry
    from rtml.operator.settings import OperatorSettings

    client = KubeClient.from_kubeconfig(kubeconfig)
    try:
        removed = sweep_registry(client, OperatorSettings.load().feast)
    except Exception as e:
        if not is_unreachable(e):
            raise
        log.warning(
            "the Feast registry sweep could not reach the registry", extra={"error": str(e)}
        )
        return EXIT_UNREACHABLE
    finally:
        client.close()
    log.info("Feast registry swept", extra={"removed": len(removed)})
    return 0
