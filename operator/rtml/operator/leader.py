"""Leader election: of the operator replicas, one works and the others wait (docs/outages.md).

The election is the Kubernetes client's own (`kubernetes.leaderelection`, a `coordination.k8s.io`
Lease, the same object and rules as client-go's), wrapped for three things it lacks:
- the process starts Kopf only once it leads: a standby opens no watch and writes nothing, and
  its health endpoint says "standby" (the kubelet must not restart a healthy standby);
- a leader that cannot renew its Lease within the renew deadline exits at once (as
  controller-runtime's managers do): another replica may already lead, and two operators must
  never write side by side; the pod restarts as a standby;
- on SIGTERM the leader gives the Lease up after Kopf has stopped, so a standby takes over
  within one retry period instead of waiting for the Lease to expire.

Kopf's own peering was rejected: it needs a cluster-wide `ClusterKopfPeering` CRD, pauses
operators of equal priority instead of electing one, and keeps the standby's watch streams
and our periodic loops running.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("rtml.operator.leader")
LEASE_NAME = "rtml-operator"
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class ElectionSettings:
    """client-go's defaults: a Lease of 15 s, renewed within 10 s, tried every 2 s. A standby
    takes over at most lease + retry seconds after the leader died (17 s)."""

    namespace: str
    identity: str
    name: str = LEASE_NAME
    lease_seconds: int = 15
    renew_deadline_seconds: int = 10
    retry_seconds: int = 2


def default_identity() -> str:
    """The pod's name (the chart sets POD_NAME from the downward API), else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_namespace() -> str:
    """The namespace the Lease lives in: POD_NAMESPACE, the service account's, else default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return Path(_SA_NAMESPACE).read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


class _Lock(LeaseLock):  # the kubernetes package has no type hints
    """The library's Lease lock on our API client (its own uses the global default one)."""

    def __init__(self, settings: ElectionSettings, api_client: k8s.ApiClient) -> None:
        super().__init__(settings.name, settings.namespace, settings.identity)  # type: ignore[no-untyped-call]
        self.api_instance = k8s.CoordinationV1Api(api_client)


class _Election(leaderelection.LeaderElection):
    """Stops trying once we step down, so the released Lease is not taken back by our own
    renew loop; says who holds the Lease once per change instead of every retry."""

    def __init__(self, config: Any, stepping_down: threading.Event) -> None:
        super().__init__(config)  # type: ignore[no-untyped-call]
        self._stepping_down = stepping_down
        self._holder: str | None = None

    def try_acquire_or_renew(self) -> bool:
        if self._stepping_down.is_set():
            return False
        ok = bool(super().try_acquire_or_renew())  # type: ignore[no-untyped-call]
        record = self.observed_record
        holder = getattr(record, "holder_identity", None)
        if not ok and holder and holder != self._holder:
            log.info("waiting to lead", extra={"leader": holder, "lease": self.lease_name})
        self._holder = holder
        return ok

    @property
    def lease_name(self) -> str:
        return str(self.election_config.lock.name)


class Leadership:
    """Blocks in `wait()` until this process leads; `on_lost` runs (in another thread) if the
    Lease is lost afterwards; `step_down()` gives it up."""

    def __init__(
        self,
        settings: ElectionSettings,
        api_client: k8s.ApiClient,
        on_lost: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.leading = threading.Event()
        self._stepping_down = threading.Event()
        self._lock = _Lock(settings, api_client)
        self._on_lost = on_lost
        config = electionconfig.Config(  # type: ignore[no-untyped-call]
            self._lock,
            lease_duration=settings.lease_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_seconds,
            onstarted_leading=self.leading.set,
            onstopped_leading=self._stopped,
        )
        # The library logs every retry at INFO ("yet to finish lease_duration…"); ours says it
        # once per change of leader.
        logging.getLogger("leaderelection").setLevel(logging.WARNING)
        self._election = _Election(config, self._stepping_down)
        self._thread = threading.Thread(
            target=self._election.run, name="leader-election", daemon=True
        )

    def wait(self) -> None:
        log.info(
            "electing a leader",
            extra={"lease": f"{self.settings.namespace}/{self.settings.name}",
                   "identity": self.settings.identity},
        )  # fmt: skip
        self._thread.start()
        self.leading.wait()
        log.info("leading", extra={"identity": self.settings.identity})

    def _stopped(self) -> None:
        if self._stepping_down.is_set():
            return
        log.error(
            "lost the lease: another replica may lead now; exiting so that two operators "
            "never write side by side",
            extra={"identity": self.settings.identity},
        )
        self._on_lost()

    def step_down(self) -> None:
        """Give the Lease up, if we hold it: a standby leads at its next try (2 s)."""
        self._stepping_down.set()
        if not self.leading.is_set():
            return
        api = self._lock.api_instance
        try:
            lease = api.read_namespaced_lease(self.settings.name, self.settings.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.settings.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            api.replace_namespaced_lease(self.settings.name, self.settings.namespace, lease)
            log.info("gave up the lease", extra={"identity": self.settings.identity})
        except (ApiException, OSError) as e:  # expiry frees it anyway
            log.warning("could not give up the lease", extra={"error": str(e)})


class StandbyHealth:
    """While this replica waits to lead, its liveness endpoint answers 200 "standby": a healthy
    standby must not be restarted by the kubelet. Closed before Kopf serves the same address."""

    def __init__(self, endpoint: str | None) -> None:
        self._server: http.server.ThreadingHTTPServer | None = None
        if not endpoint:
            return
        url = urllib.parse.urlsplit(endpoint)
        body = json.dumps({"standby": True}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # probes every few seconds: not logged
                pass

        self._server = http.server.ThreadingHTTPServer(
            (url.hostname or "0.0.0.0", url.port or 80),  # noqa: S104 - the --liveness address
            Handler,
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
