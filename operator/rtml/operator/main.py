"""Run the operator in this process (what `rtml operator` and the chart's container do)."""

from __future__ import annotations

import logging
import os

import kopf

from rtml.contract import SettingsError
from rtml.logs import configure_logging


def run_operator(
    kubeconfig: str | None, liveness: str | None, namespaces: tuple[str, ...] = ()
) -> None:
    configure_logging()
    if kubeconfig:
        # Kopf's own login reads the standard kubeconfig location from the environment.
        os.environ["KUBECONFIG"] = kubeconfig
    try:
        # Importing the handlers registers them and reads the settings (SettingsError).
        from rtml.operator import handlers
    except SettingsError as e:
        raise SystemExit(f"rtml operator: cannot start: {e}") from e

    from rtml.operator.metrics import METRICS

    port = handlers.SETTINGS.metrics_port
    if port:
        METRICS.serve(port)
    logging.getLogger("rtml.operator").info(
        "starting operator",
        extra={"namespaces": list(namespaces) or "all", "metricsPort": port or None},
    )
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=kopf.Memo(kubeconfig=kubeconfig),
    )
