"""The operator's own Prometheus metrics, served on `RTML_METRICS_PORT` (chart: the `metrics`
port, scraped by the chart's PodMonitor when enabled; docs/observability.md).

- `rtml_operator_reconciles_total{kind, result}` (result: ok, error, retry) and
  `rtml_operator_reconcile_duration_seconds{kind}`: one per handler run, per resource kind.
- `rtml_operator_reconciles_in_progress{kind}`: handler runs under way. Kopf keeps its queue to
  itself; the runs in flight, against `RTML_MAX_WORKERS`, are what shows a backlog.
- `rtml_operator_api_request_duration_seconds{verb, code}`: every call this operator makes to
  the API server through its client (Kopf's own watch streams are not counted).
- `rtml_experiment_phase{namespace, experiment, phase}`: 1 for the current phase (the
  RtmlExperimentRolledBack alert reads it), 0 for earlier ones; gone with the Experiment.
- `rtml_operator_leader`: 1 while this replica works, 0 while it waits to lead.
- `rtml_build_info{version, python}` and the process collector's `process_*` series.

Its own registry (not the process-global one): tests run several operators in one process.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from rtml import __version__

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.reconciles = Counter(
            "rtml_operator_reconciles",
            "Handler runs by resource kind and result (ok, error, retry).",
            ("kind", "result"),
            registry=r,
        )
        self.duration = Histogram(
            "rtml_operator_reconcile_duration_seconds",
            "Time of one handler run, by resource kind.",
            ("kind",),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "rtml_operator_reconciles_in_progress",
            "Handler runs under way, by resource kind.",
            ("kind",),
            registry=r,
        )
        self.api = Histogram(
            "rtml_operator_api_request_duration_seconds",
            "Requests this operator made to the API server, by verb and status code.",
            ("verb", "code"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.experiment_phase = Gauge(
            "rtml_experiment_phase",
            "1 for each Experiment's current phase, 0 for the phases it was in before.",
            ("namespace", "experiment", "phase"),
            registry=r,
        )
        self.leader = Gauge(
            "rtml_operator_leader",
            "1 while this replica works (it leads, or runs without leader election), 0 while "
            "it waits as a standby.",
            registry=r,
        )
        info = Gauge(
            "rtml_build_info",
            "1, labelled with the rtml version and the Python it runs on.",
            ("version", "python"),
            registry=r,
        )
        info.labels(__version__, platform.python_version()).set(1)
        self._phases: dict[tuple[str, str], set[str]] = {}

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count and time one handler run of `kind`; its exception decides the result."""
        started = time.perf_counter()
        gauge = self.in_progress.labels(kind)
        gauge.inc()
        result = "error"
        try:
            yield
            result = "ok"
        except Exception as e:
            result = "retry" if _is_retry(e) else "error"
            raise
        finally:
            gauge.dec()
            self.duration.labels(kind).observe(time.perf_counter() - started)
            self.reconciles.labels(kind, result).inc()

    def experiment_in(self, namespace: str, name: str, phase: str) -> None:
        """Set the Experiment's phase (the alert on RolledBack reads it); its earlier phases
        drop to 0 (kept: a rollback stays visible until the operator restarts)."""
        gauge = self.experiment_phase
        for labels in list(self._phases.get((namespace, name), ())):
            if labels != phase:
                gauge.labels(namespace, name, labels).set(0)
        gauge.labels(namespace, name, phase).set(1)
        self._phases.setdefault((namespace, name), set()).add(phase)

    def forget_experiment(self, namespace: str, name: str) -> None:
        for phase in self._phases.pop((namespace, name), ()):
            self.experiment_phase.remove(namespace, name, phase)

    def observe_api(self, verb: str, code: int | str, seconds: float) -> None:
        self.api.labels(verb, str(code)).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - a pod's port
        """Serve /metrics on `port` from a daemon thread; returns the server (tests close it)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


def _is_retry(error: Exception) -> bool:
    import kopf  # here: the metrics module stays importable without Kopf (tests)

    return isinstance(error, kopf.TemporaryError)


# One per process: handlers and the API client record into it.
METRICS = OperatorMetrics()
