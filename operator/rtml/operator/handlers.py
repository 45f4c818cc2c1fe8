"""Kopf handlers: thin. Each reads the event, calls a reconciler, and classifies failures.

Only this module imports kopf. Handler ids are explicit so renaming a function never resets
the progress Kopf stores on objects.

Finalizers only where the operator keeps state outside the cluster: a FeatureView's entry in
the Feast registry (its on.delete handler). Kopf adds its finalizer to every object that a
non-optional on.delete handler, a timer or a daemon serves, so Models and Experiments have
none of these: their periodic work (resync, the KServe poll, an Experiment's tick) runs in
operator-wide loops (rtml.operator.ticker) over Kopf indices, and what their deletion must do
(traffic back to the champion) an on.event DELETED handler does. Owner references do the rest.
Without the operator (`helm uninstall`), they delete like any object (docs/gitops.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, NamedTuple

import kopf
from kubernetes.client import ApiException
from urllib3.exceptions import HTTPError

from rtml import GROUP, VERSION
from rtml.api.experiment import FINAL_PHASES
from rtml.features.store import is_unreachable
from rtml.operator.analysis import PrometheusSource
from rtml.operator.client import KubeClient
from rtml.operator.coalesce import Coalescer
from rtml.operator.diffbase import LeanAnnotationsDiffBaseStorage
from rtml.operator.errors import backoff_delay
from rtml.operator.experiment import nudge_pods, promote_into_model, reconcile_experiment
from rtml.operator.featureview import (
    RegistryUnavailableError,
    materialization_requested,
    materialize_now,
    reconcile_feature_view,
    sweep_registry,
    unregister_feature_view,
)
from rtml.operator.keyedlocks import KeyedLocks
from rtml.operator.kopf_compat import observe_watch_streams
from rtml.operator.liveness import WatchActivity, silent_streams, watch_problem
from rtml.operator.metrics import METRICS
from rtml.operator.reconcile import APPLIED, KSERVE, SIGNATURES, reconcile_model
from rtml.operator.render.meta import MODEL_LABEL
from rtml.operator.settings import OperatorSettings
from rtml.operator.shutdown import DrainingExecutor
from rtml.operator.sweep import SweepUnreachableError, feast_loaded, sweep_in_child, sweep_where
from rtml.operator.ticker import Ticker, VisitError

log = logging.getLogger("rtml.operator")
SETTINGS = OperatorSettings.load()  # once per process; run_operator reports a bad value
_locks = KeyedLocks()  # per object; an entry lives only while in use (rtml.operator.keyedlocks)
_queued = Coalescer()  # child events: one queued reconcile per Model (rtml.operator.coalesce)
_heartbeat = {"executor": time.monotonic()}
_watch = WatchActivity()
# A live watch shows life at least every inactivity timeout; re-opening may take this longer.
WATCH_CONNECT_TIMEOUT = 10.0


class Ref(NamedTuple):
    """A Model or an Experiment as the periodic loops see it: a value of a Kopf index."""

    namespace: str
    name: str
    uid: str
    kserve: bool = False  # a Model with spec.backend kserve: its InferenceService is polled
    running: bool = False  # an Experiment not finished: it is ticked

    def body(self) -> dict[str, Any]:
        """Enough of the object for the reconcilers, which read it afresh anyway."""
        return {"metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}


def _ref(body: kopf.Body, **flags: bool) -> dict[str, Ref]:
    meta = body["metadata"]
    return {meta["uid"]: Ref(meta["namespace"], meta["name"], meta["uid"], **flags)}


@kopf.index(GROUP, VERSION, "models", id="rtml_models")
async def index_models(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, Ref]:
    """Which Models exist (what the resync and the KServe poll visit). An index, unlike a
    timer or a daemon, puts no finalizer on the object."""
    return _ref(body, kserve=spec.get("backend") == "kserve")


@kopf.index(GROUP, VERSION, "models", id="rtml_model_views")
async def index_model_views(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[Any, Ref]:
    """Which Models read which FeatureView: a view's event re-judges only its own Models
    instead of listing every Model of the namespace (what 1,000 Models made expensive). An
    empty answer clears what this Model was indexed under before."""
    view = (spec.get("features") or {}).get("featureViewRef")
    if not view:
        return {}
    return {(body["metadata"]["namespace"], view): _ref(body)[body["metadata"]["uid"]]}


@kopf.index(GROUP, VERSION, "experiments", id="rtml_experiments")
async def index_experiments(
    body: kopf.Body, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[str, Ref]:
    """Which Experiments exist and which still run (what the tick visits)."""
    running = status.get("phase") not in FINAL_PHASES and not meta.get("deletionTimestamp")
    return _ref(body, running=running)


@kopf.index(GROUP, VERSION, "featureviews", id="rtml_featureviews")
async def index_feature_views(body: kopf.Body, **_: Any) -> dict[str, Ref]:
    """Which FeatureViews exist (what the resync visits)."""
    return _ref(body)


def _refs(index: kopf.Index[str, Ref]) -> list[Ref]:
    return [ref for store in index.values() for ref in store]


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    # Kopf's defaults are tuned for demos; these are set on purpose (docs/operator-settings.md).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # Kopf's storage, building the same essence with less copying (rtml.operator.diffbase).
    settings.persistence.diffbase_storage = LeanAnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.watching.server_timeout = int(SETTINGS.watch_server_timeout)  # the API wants an int
    settings.watching.client_timeout = SETTINGS.watch_server_timeout + 30
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT
    settings.watching.inactivity_timeout = SETTINGS.watch_inactivity_timeout
    # Only the Models' pods stream to the operator (filtered by the API server, not in Python):
    # a cluster's other pods churn far more than anything the operator cares about.
    settings.watching.label_selectors["", "v1", "pods"] = MODEL_LABEL
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Drained on SIGTERM (rtml.operator.shutdown): queued handler calls would otherwise all run.
    executor = DrainingExecutor(SETTINGS.max_workers, thread_name_prefix="rtml-handler")
    settings.execution.executor = executor
    settings.execution.max_workers = SETTINGS.max_workers
    # When Kopf stops by itself (not on our SIGTERM): the same deadline.
    settings.process.ultimate_exiting_timeout = SETTINGS.shutdown_timeout_seconds
    settings.execution.default_backoff = 5
    settings.posting.level = logging.WARNING
    memo["client"] = KubeClient.from_kubeconfig(memo.get("kubeconfig"))
    memo["metrics"] = PrometheusSource(
        SETTINGS.prometheus_url, timeout_s=SETTINGS.prometheus_timeout_seconds
    )
    observe_watch_streams(_watch)  # what the `watching` probe reads (rtml.operator.liveness)
    memo["heartbeat"] = asyncio.create_task(_executor_heartbeat(settings, memo["client"]))
    # The signature check downloads in a pool of its own; a Model waiting on a download is
    # reconciled as soon as it settles, not at its next resync (rtml.operator.signature).
    SIGNATURES.configure(SETTINGS, wake=partial(_wake_models, settings, memo))
    # In place of per-object timers and daemons, which would put Kopf's finalizer on every
    # Model and Experiment (rtml.operator.ticker). Kopf's indices are filled by its watch.
    pool = partial(getattr, settings.execution, "executor")  # read each round, as Kopf does
    memo["tickers"] = [
        asyncio.create_task(ticker.run(due, pool))
        for ticker, due in _tickers(
            memo, kwargs["rtml_models"], kwargs["rtml_experiments"], kwargs["rtml_featureviews"]
        )
    ]
    memo["drain"] = partial(_drain, memo, executor)  # rtml.operator.main calls it on SIGTERM
    memo["executor"] = executor  # what the async handlers hand their reconciles to


def _drain(memo: kopf.Memo, executor: DrainingExecutor) -> None:
    """The start of a stop: no new periodic visit, and no queued handler call, will run."""
    for task in [memo.get("heartbeat"), *memo.get("tickers", [])]:
        if task:
            task.cancel()
    executor.drain()
    SIGNATURES.close()  # the signature check's own download pool


def _wake_models(
    settings: kopf.OperatorSettings, memo: kopf.Memo, models: list[tuple[str, str, str]]
) -> None:
    for namespace, name, uid in models:
        settings.execution.executor.submit(_resync_now, memo, Ref(namespace, name, uid))


def _tickers(
    memo: kopf.Memo,
    models: kopf.Index[str, Ref],
    experiments: kopf.Index[str, Ref],
    featureviews: kopf.Index[str, Ref],
) -> list[tuple[Ticker[Any], Callable[[], list[Any]]]]:
    """Each periodic loop, with what it visits each round."""
    resync_every = SETTINGS.resync_seconds
    cap = SETTINGS.outage_backoff_cap_seconds
    return [
        # The first resync one period after start-up: the resume handlers have just run.
        (
            Ticker(
                "resync",
                resync_every,
                partial(resync, memo),
                initial_delay=resync_every,
                backoff_cap=cap,
            ),
            partial(_refs, models),
        ),
        (
            Ticker(
                "kserve-status",
                SETTINGS.kserve_poll_seconds,
                partial(poll_kserve, memo),
                backoff_cap=cap,
            ),
            partial(_kserve_models, models),
        ),
        (
            Ticker(
                "experiment-tick",
                SETTINGS.experiment_tick_seconds,
                partial(experiment_tick, memo),
                backoff_cap=cap,
            ),
            partial(_running_experiments, experiments),
        ),
        (
            Ticker(
                "featureview-resync",
                resync_every,
                partial(resync_feature_view, memo),
                initial_delay=resync_every,
                backoff_cap=cap,
            ),
            partial(_refs, featureviews),
        ),
        # One visit per round, of the whole registry.
        (
            Ticker(
                "feast-sweep",
                resync_every,
                lambda _registry: sweep_feast_registry(memo, featureviews),
                initial_delay=resync_every,
                backoff_cap=cap,
            ),
            lambda: ["registry"],
        ),
    ]


async def _executor_heartbeat(settings: kopf.OperatorSettings, client: KubeClient) -> None:
    """Proves the handler thread pool still takes work; the liveness probes read it. When a
    watch stream looks silent, also asks whether the API server answers (rtml.operator.liveness)."""
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(settings.execution.executor, _beat)
        if silent_streams(_watch.snapshot(), time.monotonic(), _watch_limit()):
            await loop.run_in_executor(settings.execution.executor, _ask_api_server, client)
        await asyncio.sleep(10)


def _watch_limit() -> float:
    return SETTINGS.watch_inactivity_timeout + WATCH_CONNECT_TIMEOUT


def _ask_api_server(client: KubeClient) -> None:
    try:
        client.version()
    except (ApiException, HTTPError, OSError):
        return  # unreachable: the silence is an outage, which a restart would not cure
    _watch.answered()


def _beat() -> None:
    _heartbeat["executor"] = time.monotonic()


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: the kubeconfig (Kopf reads it, no client lib)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup(id="close-client")
async def close(memo: kopf.Memo, **_: Any) -> None:
    for task in [memo.get("heartbeat"), *memo.get("tickers", [])]:
        if task:
            task.cancel()
    if memo.get("client"):
        memo["client"].close()


@kopf.on.probe(id="processing")
def processing(**_: Any) -> dict[str, float]:
    """Fails the liveness probe when handlers stop being executed (a wedged thread pool)."""
    age = time.monotonic() - _heartbeat["executor"]
    if age > SETTINGS.heartbeat_stale_seconds:
        raise kopf.PermanentError(f"no handler has run for {age:.0f}s; the operator is stuck")
    return {"secondsSinceHeartbeat": round(age, 1)}


@kopf.on.probe(id="watching")
def watching(**_: Any) -> dict[str, float]:
    """Fails the liveness probe when a watch stream is stuck while the API server answers."""
    now, last = time.monotonic(), _watch.snapshot()
    problem = watch_problem(last, now, limit=_watch_limit(), api_answered=_watch.api_answered)
    if problem:
        raise kopf.PermanentError(problem)
    return {"secondsSinceWatchActivity": round(now - max(last.values(), default=now), 1)}


@contextlib.contextmanager
def _retry_on_outage(retry: int) -> Iterator[None]:
    """An unreachable registry or API server is temporary: retry with backoff."""
    try:
        yield
    except RegistryUnavailableError as e:
        raise kopf.TemporaryError(f"{e}; retrying", delay=backoff_delay(retry)) from e
    except ApiException as e:
        if e.status == 409:  # a concurrent writer: just go again soon
            raise kopf.TemporaryError("conflict while applying; retrying", delay=1) from e
        raise kopf.TemporaryError(
            f"the API server answered {e.status} {e.reason}; retrying", delay=backoff_delay(retry)
        ) from e
    except (HTTPError, OSError) as e:
        raise kopf.TemporaryError(
            f"the API server is unreachable ({e.__class__.__name__}); retrying",
            delay=backoff_delay(retry),
        ) from e


@contextlib.contextmanager
def _visit() -> Iterator[None]:
    """For a Ticker's visit: a temporary failure is the Ticker's to log and back off from
    (rtml.operator.ticker), the whole Ticker when the API server could not be reached."""
    try:
        yield
    except kopf.TemporaryError as e:
        raise VisitError(str(e), unreachable=_unreachable(e.__cause__)) from e


def _unreachable(error: BaseException | None) -> bool:
    """No answer at all (connection refused or reset, a timeout), rather than an answer."""
    return isinstance(error, HTTPError | OSError)


def _model_key(meta: Mapping[str, Any]) -> str:
    """A Model's lock: by name, not uid, so a child's event needs no read to find it."""
    return f"Model/{meta['namespace']}/{meta['name']}"


def _reconcile(
    body: Mapping[str, Any],
    memo: kopf.Memo,
    retry: int,
    reading: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`reading`: called when the fresh read is about to start (rtml.operator.coalesce)."""
    client: KubeClient = memo["client"]
    with METRICS.reconciling("Model"), _locks[_model_key(body["metadata"])]:
        if reading is not None:
            reading()
        return _reconcile_locked(client, body, retry)


def _reconcile_locked(client: KubeClient, body: Mapping[str, Any], retry: int) -> dict[str, Any]:
    with _retry_on_outage(retry):
        # Fresh read: the event that woke us may be stale by the time we hold the lock.
        live = client.get(
            f"{GROUP}/{VERSION}",
            "Model",
            body["metadata"]["namespace"],
            body["metadata"]["name"],
        )
        if live is None or live["metadata"].get("deletionTimestamp"):
            return {}
        status = reconcile_model(client, live, SETTINGS.render_context())
    return {"phase": status.get("phase")}


@contextlib.contextmanager
def _next_time(message: str, **extra: str) -> Iterator[None]:
    """For handlers without retries of their own (events, timers, work done on another
    object's behalf): a temporary failure is logged, and the next event or resync tries again."""
    try:
        yield
    except kopf.TemporaryError as e:
        log.warning(message, extra={**extra, "error": str(e)})


# No `timeout`: Kopf measures it from the first try, so an API outage longer than it ended the
# retries for good. Retries are not spent while the API server is down (Kopf cannot store
# one), and when they run out the resync still converges the object (docs/outages.md).
RETRIES = SETTINGS.handler_retries
TIMEOUT = None


@kopf.on.resume(
    GROUP, VERSION, "models", id="reconcile", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
@kopf.on.create(
    GROUP, VERSION, "models", id="reconcile", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
@kopf.on.update(
    GROUP, VERSION, "models", id="reconcile", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    _reconcile(body, memo, retry)


def resync(memo: kopf.Memo, model: Ref) -> None:
    """Level-triggered safety net: converges even if an event was missed (every
    resync_seconds, the "resync" Ticker)."""
    with _visit():
        _reconcile(model.body(), memo, retry=0)
    log.info("Model resynced", extra={"model": model.name, "namespace": model.namespace})


def _resync_now(memo: kopf.Memo, model: Ref) -> None:
    """A resync outside the Ticker: a failure is logged, and the Ticker's next one retries."""
    try:
        resync(memo, model)
    except VisitError as e:
        log.warning("Model resync failed; the next one will retry",
                    extra={"model": model.name, "error": str(e)})  # fmt: skip


def _owner_model(obj: Mapping[str, Any]) -> str | None:
    """The Model a child belongs to: its owner reference; for a pod, which the Deployment's
    ReplicaSet owns rather than the Model, the Model label its pod template carries."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Model" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    if obj.get("kind") == "Pod":
        name = (meta.get("labels") or {}).get(MODEL_LABEL)
        return str(name) if name else None
    return None


def _claim_owner(body: Mapping[str, Any], event_type: str | None) -> tuple[str, str] | None:
    """The owner Model's (name, lock key) when a reconcile of it should be queued: None when
    the object has no owner Model or one is queued already (rtml.operator.coalesce)."""
    name = _owner_model(body)
    if name is None:
        return None
    key = _model_key({"namespace": body["metadata"]["namespace"], "name": name})
    if not _queued.claim(key):
        return None  # a reconcile of this Model that has not read it yet sees this change too
    log.debug("child changed", extra={"kind": body.get("kind"), "event": event_type, "model": name})
    return name, key


def _reconcile_claimed(namespace: str, name: str, key: str, memo: kopf.Memo) -> None:
    try:
        # Said in a sentence like any other failure here, not as the HTTP exchange Kopf would.
        with _next_time("child-triggered reconcile failed; the resync will retry", model=name):
            _reconcile(
                {"metadata": {"namespace": namespace, "name": name}},
                memo,
                retry=0,
                reading=partial(_queued.started, key),
            )
    except Exception:  # submitted, not awaited: nobody else would say it
        log.exception("child-triggered reconcile failed", extra={"model": name})
    finally:
        _queued.started(key)  # also when it failed before reading


def _on_child(body: Mapping[str, Any], memo: kopf.Memo, event_type: str | None) -> None:
    """Reconcile the owner Model now, in this thread (a Ticker's visit)."""
    claimed = _claim_owner(body, event_type)
    if claimed is not None:
        _reconcile_claimed(body["metadata"]["namespace"], *claimed, memo)


CHILD_LABELS = {MODEL_LABEL: kopf.PRESENT}
# The children whose status the Model's status is computed from (rtml.operator.status): any
# event of theirs counts. Of the others, only one that is not as the operator applied it does.
STATUS_SOURCES = frozenset({"Deployment", "Pod"})


@kopf.on.event("apps", "v1", "deployments", id="child-deployment", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "services", id="child-service", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "configmaps", id="child-configmap", labels=CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", id="child-pdb", labels=CHILD_LABELS)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", id="child-hpa", labels=CHILD_LABELS)
@kopf.on.event(
    "networking.k8s.io", "v1", "networkpolicies", id="child-networkpolicy", labels=CHILD_LABELS
)
# A pod crashing, failing its probes or unschedulable: the Model's status says so at once.
@kopf.on.event("", "v1", "pods", id="child-pod", labels=CHILD_LABELS)
async def child_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A child edited or deleted by hand, a Deployment's status moved, or one of the Model's
    pods changed: reconcile the owner. Every event (the initial listing too) also tells which
    version of the child exists, so a reconcile skips applying what is already there
    (rtml.operator.applied).

    Async, so that deciding costs no pool thread: as a sync handler every event waited for one
    of the pool's threads holding its whole body, and 1,000 Models' children queued thousands
    of them (benchmarks `--suite scale`). Only the reconcile goes to the pool, at most one
    queued per Model."""
    as_applied = APPLIED.observe(body, deleted=type == "DELETED")
    if type is None:
        return  # the initial listing: the resume handlers already cover it
    if as_applied and body.get("kind") not in STATUS_SOURCES:
        return  # the echo of the operator's own apply, or a controller's status write
    claimed = _claim_owner(body, type)
    if claimed is not None:
        memo["executor"].submit(_reconcile_claimed, body["metadata"]["namespace"], *claimed, memo)


# The InferenceService's resourceVersion each KServe Model's poll saw last (by the Model's uid).
_isvc_seen: dict[str, str | None] = {}


def _kserve_models(index: kopf.Index[str, Ref]) -> list[Ref]:
    models = [ref for ref in _refs(index) if ref.kserve]
    for uid in _isvc_seen.keys() - {ref.uid for ref in models}:
        _isvc_seen.pop(uid, None)  # deleted, or no longer on kserve: forget what it saw
    return models


def poll_kserve(memo: kopf.Memo, model: Ref) -> None:
    """Rolls KServe's status up as it changes (every kserve_poll_seconds, the "kserve-status"
    Ticker).

    Polled rather than watched: Kopf stops the whole operator when a watched CRD disappears
    (uninstalling KServe would crash-loop it), while a poll just sees a 404 and carries on.
    """
    client: KubeClient = memo["client"]
    try:
        isvc = client.get(*KSERVE, model.namespace, model.name) if client.serves(*KSERVE) else None
    except (HTTPError, OSError) as e:
        raise VisitError(f"the API server is unreachable ({e.__class__.__name__})",
                          unreachable=True) from e  # fmt: skip
    except ApiException as e:
        log.warning(
            "could not read the InferenceService", extra={"model": model.name, "error": str(e)}
        )
        isvc = None
    version = isvc["metadata"].get("resourceVersion") if isvc else None
    if version == _isvc_seen.get(model.uid):
        return
    _isvc_seen[model.uid] = version
    _on_child(
        isvc
        or {
            "metadata": {
                "namespace": model.namespace,
                "ownerReferences": [
                    {"kind": "Model", "apiVersion": f"{GROUP}/{VERSION}", "name": model.name}
                ],
            }
        },
        memo,
        "poll",
    )


# -- FeatureViews: registration in Feast, the materialization CronJob, the finalizer ------------


def _reconcile_view(body: Mapping[str, Any], memo: kopf.Memo, retry: int) -> dict[str, Any] | None:
    """Reconcile the view as it is now; returns that fresh read (None: gone)."""
    client: KubeClient = memo["client"]
    meta = body["metadata"]
    with METRICS.reconciling("FeatureView"), _locks[meta["uid"]], _retry_on_outage(retry):
        live = client.get(f"{GROUP}/{VERSION}", "FeatureView", meta["namespace"], meta["name"])
        if live is None or live["metadata"].get("deletionTimestamp"):
            return None
        reconcile_feature_view(client, live, SETTINGS.feast, SETTINGS.render_context())
        return live


FEATUREVIEWS = (GROUP, VERSION, "featureviews")


@kopf.on.resume(
    *FEATUREVIEWS, id="register-featureview", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
@kopf.on.create(
    *FEATUREVIEWS, id="register-featureview", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
@kopf.on.update(
    *FEATUREVIEWS, id="register-featureview", retries=RETRIES, timeout=TIMEOUT, backoff=5
)
def register_feature_view(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    _reconcile_view(body, memo, retry)


def resync_feature_view(memo: kopf.Memo, view: Ref) -> None:
    """Picks up what the CronJob's runs recorded in the registry (lastMaterialization), and a
    materialization request an event missed (the "featureview-resync" Ticker: a timer would
    put Kopf's finalizer on every FeatureView)."""
    with _visit():
        live = _reconcile_view(view.body(), memo, retry=0)
    # The read the reconcile made says whether a request waits: no second GET per view.
    if live is not None and materialization_requested(live) is not None:
        _materialize_requested(live, memo)


_swept = {"since_start": False}


def sweep_feast_registry(memo: kopf.Memo, featureviews: kopf.Index[str, Ref]) -> None:
    """The "feast-sweep" Ticker: views of FeatureViews deleted without the operator go. In this
    process only when Feast is here anyway (rtml.operator.sweep)."""
    where = sweep_where(bool(_refs(featureviews)), feast_loaded(), _swept["since_start"])
    if where == "none":
        return
    try:
        with METRICS.reconciling("FeastRegistry"):
            if where == "here":
                sweep_registry(memo["client"], SETTINGS.feast)
            else:
                sweep_in_child(memo.get("kubeconfig"))
    except SweepUnreachableError as e:
        raise VisitError(str(e)) from e
    except Exception as e:
        if not is_unreachable(e):
            raise
        raise VisitError(f"the Feast registry sweep could not reach the registry: {e}") from e
    _swept["since_start"] = True


@kopf.on.event(*FEATUREVIEWS, id="featureview-dependents")
def feature_view_changed(
    body: kopf.Body,
    memo: kopf.Memo,
    type: str | None,
    **kwargs: Any,
) -> None:
    """A view created, changed, deleted or turning Ready re-judges the Models that read it at
    once: FeaturesResolved holds a Model's rollout until its view is Ready, and waiting for
    the Model's next resync (60 s by default) would hold it that much longer. The Models come
    from an index (rtml_model_views), each read afresh: one GET per dependent Model, none for
    the namespace's other Models."""
    if type is None:
        return  # the initial listing: the Models' resume handlers already cover it
    client: KubeClient = memo["client"]
    meta = body["metadata"]
    views: kopf.Index[Any, Ref] = kwargs["rtml_model_views"]
    for ref in sorted(views.get((meta["namespace"], meta["name"]), ())):
        model: dict[str, Any] | None = None
        with (
            _next_time("could not read a FeatureView's Model; its resync will catch up",
                       featureview=meta["name"], model=ref.name),
            _retry_on_outage(0),
        ):  # fmt: skip
            model = client.get(f"{GROUP}/{VERSION}", "Model", ref.namespace, ref.name)
        if model is None or model["metadata"].get("deletionTimestamp"):
            continue
        view = ((model.get("spec") or {}).get("features") or {}).get("featureViewRef")
        if view != meta["name"]:
            continue  # changed since it was indexed: its own update handler has it
        with _next_time("view-triggered reconcile failed; the resync will retry", model=ref.name):
            _reconcile(model, memo, retry=0)


def _materialization_requested(body: kopf.Body, **_: Any) -> bool:
    return materialization_requested(body) is not None


@kopf.on.event(*FEATUREVIEWS, id="materialize-now", when=_materialization_requested)
def materialize_on_request(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new value of the `rtml.dev/materialize-now` annotation runs materialization once.

    An event handler has no retries: after an outage the next event or resync tries again.
    """
    _materialize_requested(body, memo)


def _materialize_requested(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    client: KubeClient = memo["client"]
    meta = body["metadata"]
    with (
        _next_time("requested materialization failed; the next resync will retry",
                   featureview=meta["name"]),
        _locks[meta["uid"]],
        _retry_on_outage(0),
    ):  # fmt: skip
        live = client.get(f"{GROUP}/{VERSION}", "FeatureView", meta["namespace"], meta["name"])
        if live is None or live["metadata"].get("deletionTimestamp"):
            return
        materialize_now(client, live)


@kopf.on.event(*FEATUREVIEWS, id="featureview-deleted")
def feature_view_deleted(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """Takes a deleted FeatureView's view out of Feast at once. A watch event, not an on.delete
    handler: no finalizer, so deleting a view (or its namespace) never waits for the operator,
    also after `helm uninstall`; what this misses, the registry sweep removes."""
    if type != "DELETED":
        return
    client: KubeClient = memo["client"]
    meta = body["metadata"]
    with (
        _next_time("removing a deleted FeatureView from Feast failed; the sweep retries",
                   featureview=meta["name"]),
        _locks[meta["uid"]],
        _retry_on_outage(0),
    ):  # fmt: skip
        unregister_feature_view(client, dict(body), SETTINGS.feast, 0, 1)


# -- Experiments: a Ticker drives each running one; all progress lives in its status ------------
EXPERIMENTS = (GROUP, VERSION, "experiments")


def _tick_experiment(body: Mapping[str, Any], memo: kopf.Memo, retry: int) -> None:
    client: KubeClient = memo["client"]
    meta = body["metadata"]
    with METRICS.reconciling("Experiment"), _locks[meta["uid"]], _retry_on_outage(retry):
        live = client.get(f"{GROUP}/{VERSION}", "Experiment", meta["namespace"], meta["name"])
        if live is None or live["metadata"].get("deletionTimestamp"):
            return
        tick = reconcile_experiment(client, live, memo["metrics"])
        METRICS.experiment_in(meta["namespace"], meta["name"], tick.status.get("phase", "Pending"))
        if tick.promote:
            promote_into_model(client, live)
    if tick.plan_changed:
        _reconcile_model_of(live, memo)


def _reconcile_model_of(experiment: Mapping[str, Any], memo: kopf.Memo) -> None:
    """The Model re-renders its traffic plan from the Experiments that name it."""
    client: KubeClient = memo["client"]
    ns = experiment["metadata"]["namespace"]
    name = (experiment.get("spec") or {}).get("modelRef")
    if not name:
        return
    with _next_time("could not update the Model's traffic; its resync will", model=name):
        with _retry_on_outage(0):
            model = client.get(f"{GROUP}/{VERSION}", "Model", ns, name)
        if model is not None and not model["metadata"].get("deletionTimestamp"):
            _reconcile(model, memo, retry=0)
            with _retry_on_outage(0):  # the new plan reaches the pods now, not at a kubelet sync
                nudge_pods(client, ns, name)


@kopf.on.resume(*EXPERIMENTS, id="experiment", retries=RETRIES, timeout=TIMEOUT, backoff=5)
@kopf.on.create(*EXPERIMENTS, id="experiment", retries=RETRIES, timeout=TIMEOUT, backoff=5)
@kopf.on.update(
    *EXPERIMENTS,
    id="experiment",
    retries=RETRIES,
    timeout=TIMEOUT,
    backoff=5,
    field="spec",
)
def experiment_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    _tick_experiment(body, memo, retry)


@kopf.on.field(*EXPERIMENTS, id="experiment-control", field="metadata.annotations")
def experiment_control(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """pause / resume / abort (rtml experiment ..., or kubectl annotate) act at once."""
    with _next_time("experiment control failed; the next tick retries",
                    experiment=body["metadata"]["name"]):  # fmt: skip
        _tick_experiment(body, memo, retry=0)


def _running_experiments(index: kopf.Index[str, Ref]) -> list[Ref]:
    return [ref for ref in _refs(index) if ref.running]


def experiment_tick(memo: kopf.Memo, experiment: Ref) -> None:
    """A running Experiment, every experiment_tick_seconds (the "experiment-tick" Ticker)."""
    with _visit():
        _tick_experiment(experiment.body(), memo, retry=0)


@kopf.on.event(*EXPERIMENTS, id="experiment-deleted")
def experiment_deleted(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """Deleting a running Experiment sends all traffic back to the champion: the Model
    re-renders its plan without it. A watch event, not an on.delete handler: nothing outside
    the cluster to clean up, so no finalizer (the Model's resync would also catch up)."""
    if type == "DELETED":
        METRICS.forget_experiment(body["metadata"]["namespace"], body["metadata"]["name"])
        _reconcile_model_of(body, memo)
