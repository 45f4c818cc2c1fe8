"""Run the operator in this process (what `rtml operator` and the chart's container do).

On SIGTERM or SIGINT the operator stops within `shutdown_timeout_seconds` whatever the number
of objects: the handler pool is drained first, then Kopf is asked to stop (its stop flag), and
a deadline ends the process if a running call hangs (rtml.operator.shutdown, docs/outages.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import kopf

from rtml.contract import SettingsError
from rtml.logs import configure_logging
from rtml.operator.shutdown import exit_after

if TYPE_CHECKING:
    from rtml.operator.leader import Leadership

log = logging.getLogger("rtml.operator")


def run_operator(
    kubeconfig: str | None,
    liveness: str | None,
    namespaces: tuple[str, ...] = (),
    leader_elect: bool = False,
    lease_namespace: str | None = None,
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
    log.info(
        "starting operator",
        extra={"namespaces": list(namespaces) or "all", "metricsPort": port or None},
    )
    leadership = _lead(kubeconfig, liveness, lease_namespace) if leader_elect else None
    METRICS.leader.set(1)
    memo = kopf.Memo(kubeconfig=kubeconfig)
    asyncio.run(
        operate(
            handlers.SETTINGS.shutdown_timeout_seconds,
            memo,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
        )
    )
    if leadership is not None:
        leadership.step_down()


def _lead(kubeconfig: str | None, liveness: str | None, namespace: str | None) -> Leadership:
    """Wait until this replica leads (rtml.operator.leader); health says "standby" till then."""
    from rtml.operator.client import KubeClient
    from rtml.operator.leader import (
        ElectionSettings,
        Leadership,
        StandbyHealth,
        default_identity,
        default_namespace,
    )

    settings = ElectionSettings(namespace or default_namespace(), default_identity())
    health = StandbyHealth(liveness)
    try:
        leadership = Leadership(
            settings, KubeClient.from_kubeconfig(kubeconfig).api, on_lost=_exit_now
        )
        leadership.wait()
    finally:
        health.close()
    return leadership


def _exit_now() -> None:
    """The Lease is lost: stop writing at once (another replica may lead); the pod restarts."""
    logging.shutdown()
    os._exit(1)


async def operate(grace: float, memo: kopf.Memo, **options: Any) -> None:
    """`kopf.operator`, with our own SIGTERM/SIGINT handling once Kopf has started."""
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(memo=memo, stop_flag=stop, ready_flag=ready, **options)
    )
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([operator, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if not operator.done():
        # Kopf set its own signal handlers before its start-up handlers ran (the ready flag);
        # ours replace them and end with its stop flag, so Kopf stops the same way after.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, begin_stop, sig, stop, memo.get("drain"), grace)
    await operator


def begin_stop(
    sig: signal.Signals, stop: asyncio.Event, drain: Callable[[], None] | None, grace: float
) -> None:
    """Drain the handler pool, arm the deadline, and tell Kopf to stop. A second signal while
    stopping changes nothing: the deadline is already armed."""
    if stop.is_set():
        return
    log.info("stopping the operator", extra={"signal": sig.name, "deadlineSeconds": grace})
    if drain is not None:
        drain()
    exit_after(grace)
    stop.set()
