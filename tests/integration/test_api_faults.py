"""The operator behind a fault proxy (tests/faultproxy.py) that injects what an API server does
in production: 5xx answers, 409 Conflicts on writes, expired watches, a 10-minute outage and
stalled watch streams (issue 12; docs/outages.md). Each test applies Models, injects a fault,
changes Models during it, ends it, and checks that every Model converges: its Deployment has
the replicas its spec asks for and status.observedGeneration is its generation.

The control plane is this module's own: the session operator (tests/kube.py) watches every
namespace of the session's cluster and would converge these Models itself, past the proxy.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.tools import ensure_tools
from tests.faultproxy import FaultProxy, Request, attempts
from tests.kube import LOGS, Kube, OperatorProcess, install_crd_file, wait_for

pytestmark = pytest.mark.apiserver
REPO = Path(__file__).resolve().parents[2]
MODEL = ("rtml.dev/v1alpha1", "Model")
MODELS_LIST = "/apis/rtml.dev/v1alpha1/models"  # what Kopf lists and watches, cluster-wide
DEPLOY = ("apps/v1", "Deployment")
RESYNC_SECONDS = 3.0  # OperatorProcess's RTML_RESYNC_SECONDS
# Kopf's default; it must stay above the API server's bookmark period (a minute), or a quiet
# live stream would look stalled.
INACTIVITY_SECONDS = 70.0
OUTAGE_SECONDS = 600.0
REPORT = LOGS / "api-faults.json"
# Kopf gives a request 9 tries (1 to 21 s apart) and a watch or a handler whose request fails 9
# times stops for good: at 30%, 0.3**9 = 2e-5 per request.
SHARE_5XX = 0.3


def _report(section: str, values: dict[str, Any]) -> None:
    """Keeps what a test measured in .test-logs/api-faults.json (the numbers docs cite)."""
    LOGS.mkdir(exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    data[section] = values
    REPORT.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    bin_dir = ensure_tools(progress=lambda _m: None)
    workdir = tmp_path_factory.mktemp("faults-plane")
    control = LocalControlPlane(workdir, bin_dir)
    try:
        control.start()
        yield control
    finally:
        control.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def direct(plane: LocalControlPlane) -> Iterator[Kube]:
    """The test's own client, straight to the API server (never through the proxy)."""
    from kubernetes import config

    api = config.new_client_from_config(str(plane.kubeconfig))  # type: ignore[no-untyped-call]
    kube = Kube(api)
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        install_crd_file(kube, crd)
    yield kube
    api.close()


@pytest.fixture(scope="module")
def proxy(
    plane: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(plane.kubeconfig, tmp_path_factory.mktemp("fault-proxy")).start()
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(scope="module")
def operator(
    direct: Kube, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`rtml operator` whose kubeconfig points at the proxy; the Feast profile is the default
    SQLite one (these Models read no features)."""
    LOGS.mkdir(exist_ok=True)
    kubeconfig = proxy.write_kubeconfig(tmp_path_factory.mktemp("faults-kube") / "kubeconfig")
    feast = tmp_path_factory.mktemp("faults-feast")
    env = {
        "RTML_FEAST_PATH": str(feast),
        "RTML_WATCH_INACTIVITY_TIMEOUT": str(INACTIVITY_SECONDS),
    }
    op = OperatorProcess(kubeconfig, LOGS / "operator-faults.log", env)
    op.log_path.write_bytes(b"")
    try:
        op.start()
        yield op
    finally:
        op.stop()


@pytest.fixture
def namespace(direct: Kube) -> Iterator[str]:
    name = f"f-{uuid.uuid4().hex[:8]}"
    direct.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    direct.delete("v1", "Namespace", name)


# -- Models and convergence -------------------------------------------------------------------


def model(name: str, ns: str, replicas: int) -> dict[str, Any]:
    """min == max replicas: no autoscaler, so the Deployment's replicas follow the spec."""
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "version": "v1",
            "artifact": {"uri": "s3://bucket/m.onnx", "sha256": "c" * 64},
            "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas, "metric": "cpu"},
        },
    }


def set_replicas(kube: Kube, name: str, ns: str, replicas: int) -> None:
    scaling = {"minReplicas": replicas, "maxReplicas": replicas}
    kube.patch(*MODEL, name, ns, {"spec": {"autoscaling": scaling}})


def not_converged(kube: Kube, ns: str, names: list[str]) -> list[str]:
    """The Models whose Deployment or status does not follow their spec yet, and why."""
    behind = []
    for name in names:
        m = kube.get(*MODEL, name, ns) or {}
        want = m.get("spec", {}).get("autoscaling", {}).get("minReplicas")
        deploy = kube.get(*DEPLOY, name, ns) or {}
        replicas = deploy.get("spec", {}).get("replicas")
        observed = (m.get("status") or {}).get("observedGeneration")
        generation = m.get("metadata", {}).get("generation")
        if replicas != want or observed != generation:
            behind.append(f"{name}: replicas {replicas}/{want}, generation {observed}/{generation}")
    return behind


def converge(kube: Kube, ns: str, names: list[str], timeout: float) -> float:
    """Waits until every Model converged; returns how long it took."""
    started = time.monotonic()
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = not_converged(kube, ns, names)
        return not last

    wait_for(done, timeout, 1.0, f"every Model to converge ({names})")
    assert not last
    return time.monotonic() - started


def applied(kube: Kube, ns: str, replicas: int = 1) -> list[str]:
    names = [f"m{i}" for i in range(3)]
    for name in names:
        kube.create(model(name, ns, replicas))
    converge(kube, ns, names, 60)
    return names


def change_during_fault(kube: Kube, ns: str) -> list[str]:
    """What the user does while the operator cannot see it: a new Model, a changed one."""
    kube.create(model("late", ns, 2))
    set_replicas(kube, "m0", ns, 3)
    return ["m0", "m1", "m2", "late"]


def liveness(operator: OperatorProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(operator.liveness_url, timeout=5) as r:  # noqa: S310
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def log_since(operator: OperatorProcess, offset: int) -> str:
    """What the operator logged after `offset` bytes (Kopf's 500 on /healthz has no body: why a
    probe failed is in the log)."""
    with operator.log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def model_path(ns: str, name: str) -> str:
    return f"/apis/rtml.dev/v1alpha1/namespaces/{ns}/models/{name}"


def faulted(requests: list[Request], ns: str, *faults: str) -> list[Request]:
    """Requests about this namespace's objects that got one of `faults` (any fault if none)."""
    return [
        r
        for r in requests
        if f"/namespaces/{ns}/" in r.path and r.fault and (not faults or r.fault in faults)
    ]


# -- the faults -----------------------------------------------------------------------------


def test_server_errors_on_a_share_of_requests(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    names = applied(direct, namespace)
    logged = operator.log_path.stat().st_size
    started = time.monotonic()
    with proxy.fault(error_share=SHARE_5XX):
        names = change_during_fault(direct, namespace)
        # Long enough for the handlers' retries and several resync rounds to meet the errors.
        wait_for(
            lambda: len(faulted(proxy.requests(started), namespace)) >= 10,
            60,
            what="the operator to meet injected 5xx answers on this namespace's objects",
        )
        time.sleep(15)
    ended = time.monotonic()
    took = converge(direct, namespace, names, 90)
    during = [r for r in proxy.requests(started) if r.at < ended]
    failed = [r for r in during if r.fault in ("500", "503")]
    assert failed, "no request was answered 500 or 503"
    # Every failure is said in a sentence (a handler's retry, the resync's backoff), never as
    # an error Kopf caught from a handler, with the whole HTTP exchange.
    unclassified = [
        line[:300] for line in log_since(operator, logged).splitlines() if "exception" in line
    ]
    assert unclassified == []
    assert '"status": 415' not in log_since(operator, logged)  # the proxy passes requests as sent
    _report(
        "server_errors",
        {
            "share": SHARE_5XX,
            "faultSeconds": round(ended - started, 1),
            "requests": len(during),
            "answered5xx": len(failed),
            "convergedAfterSeconds": round(took, 1),
        },
    )
    assert liveness(operator)[0] == 200


def test_conflicts_on_the_operators_writes(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    """409 to every PATCH and PUT the operator's reconcilers send (server-side apply, status),
    as a write racing another writer gets. Kopf's own merge patches are left alone: the API
    server retries a merge patch's conflicts itself, and Kopf treats a 409 as fatal to the
    watch it came from (docs/outages.md)."""
    names = applied(direct, namespace)
    started = time.monotonic()
    with proxy.fault(conflict_writes=True, conflict_agents=("OpenAPI-Generator",)):
        names = change_during_fault(direct, namespace)
        wait_for(
            lambda: len(faulted(proxy.requests(started), namespace, "409")) >= 5,
            60,
            what="the operator's writes to meet 409 Conflict",
        )
        time.sleep(10)
        # Nothing the operator writes gets through, so nothing converged during the fault.
        assert not_converged(direct, namespace, names)
    ended = time.monotonic()
    took = converge(direct, namespace, names, 90)
    conflicts = [r for r in proxy.requests(started) if r.at < ended and r.fault == "409"]
    _report(
        "conflicts",
        {
            "faultSeconds": round(ended - started, 1),
            "answered409": len(conflicts),
            "convergedAfterSeconds": round(took, 1),
        },
    )
    assert liveness(operator)[0] == 200


def test_expired_watches_are_listed_again(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    """For 20 s, every open watch gets, every 2 s, the ERROR 410 event an API server sends when
    a watch's resourceVersion was compacted away; Kopf lists again and watches on. Changes made
    meanwhile are reconciled."""
    names = applied(direct, namespace)
    started = time.monotonic()
    expired = []
    while time.monotonic() - started < 20:
        expired.append(proxy.expire_watches())
        if len(expired) == 5:
            names = change_during_fault(direct, namespace)
        time.sleep(2)
    # Models, Experiments, FeatureViews, CRDs and five kinds of children are watched.
    assert min(expired) >= 5, expired
    took = converge(direct, namespace, names, 60)
    relists = [
        r
        for r in proxy.requests(started)
        if r.method == "GET" and not r.watch and r.path.split("?")[0] == MODELS_LIST
    ]
    assert len(relists) >= len(expired) - 1  # each expiry of the Models' watch: a new list
    _report(
        "expired_watches",
        {
            "expiries": len(expired),
            "streamsEachTime": expired,
            "convergedAfterSeconds": round(took, 1),
        },
    )
    assert liveness(operator)[0] == 200


def test_a_stalled_watch_fails_liveness_and_changes_are_reconciled_after(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    """Every watch stream stays open and silent (a proxy that stopped passing data on) while
    other requests work. The probe fails once a stream was silent for two inactivity timeouts
    in a row and the API server answers; it is 200 again once the streams show life."""
    names = applied(direct, namespace)
    # The probe needs proof that this API server sends bookmarks (a quiet stream otherwise).
    wait_for(
        lambda: any(path.split("?")[0] == MODELS_LIST for _, path in proxy.bookmarks),
        90,
        2,
        "a BOOKMARK on the Models' watch",
    )
    assert liveness(operator)[0] == 200
    logged = operator.log_path.stat().st_size
    stalled = time.monotonic()
    answers: list[tuple[float, int, str]] = []

    def probe_fails() -> bool:
        code, body = liveness(operator)
        answers.append((time.monotonic() - stalled, code, body))
        return code != 200

    with proxy.fault(stall_watches=True):
        names = change_during_fault(direct, namespace)
        wait_for(probe_fails, 4 * INACTIVITY_SECONDS, 2, "the liveness probe to fail")
        seconds_to_fail = answers[-1][0]
        # The watch is dead: the new Model never reached the operator.
        assert direct.get(*DEPLOY, "late", namespace) is None
    assert "while the API server answers: the watch is stuck" in log_since(operator, logged)
    # The probe cannot fail before a stream was silent for longer than the inactivity timeout.
    assert all(code == 200 for at, code, _ in answers if at < INACTIVITY_SECONDS)
    recovered = time.monotonic()
    took = converge(direct, namespace, names, 2 * INACTIVITY_SECONDS)
    wait_for(lambda: liveness(operator)[0] == 200, 3 * INACTIVITY_SECONDS, 2, "liveness 200")
    _report(
        "stalled_watch",
        {
            "inactivityTimeoutSeconds": INACTIVITY_SECONDS,
            "probeFailedAfterSeconds": round(seconds_to_fail, 1),
            "convergedAfterStallSeconds": round(took, 1),
            "probe200AfterStallSeconds": round(time.monotonic() - recovered, 1),
        },
    )


def test_watch_requests_answered_410_stop_the_operator_until_a_restart(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    """HTTP 410 Gone to watch requests (what an API server answers a LIST whose continue token
    expired). Kopf does not retry a 4xx there: the watcher of that resource stops for good,
    and when the watcher of CRDs does (Kopf's resource observer, one of its root tasks), the
    whole operator stops. Either way the kubelet restarts it: on the exit, or on the
    `watching` probe, which fails while a watcher is dead and the API server answers. The
    test restarts it as the kubelet would, and every Model converges."""
    names = applied(direct, namespace)
    logged = operator.log_path.stat().st_size
    started = time.monotonic()

    def stopped_or_failing() -> str | None:
        assert operator.proc is not None
        if operator.proc.poll() is not None:
            return f"exited with {operator.proc.returncode}"
        code, _ = liveness(operator)
        return f"liveness answered {code}" if code not in (0, 200) else None  # 0: exiting

    try:
        # The fault stays on until the outcome is seen: a watcher that had not asked for a new
        # watch yet when it ended got one and delivered the new Model (CI saw that once).
        with proxy.fault(gone_watches=True):
            proxy.expire_watches()  # every stream lists again and asks for a new watch: 410

            def gone() -> bool:
                assert operator.proc is not None
                if operator.proc.poll() is not None:
                    # The CRDs' watcher met its 410 first and took the operator down before the
                    # Models' watcher asked again (CI saw it): no watch is left to deliver anything.
                    return True
                refused = [r for r in proxy.requests(started) if r.fault == "410"]
                # The Models' watcher among them: a new Model must not reach it by a new list.
                models = any(r.path.split("?")[0] == MODELS_LIST for r in refused)
                if len(refused) >= 5 and models:
                    return True
                # A stream whose request was on its way when the fault went on was not open to
                # be expired, and would run to its server timeout (CI saw the 30 s pass once).
                proxy.expire_watches()
                return False

            wait_for(gone, 30, 1, "watch requests, the Models' among them, answered 410")
            names = change_during_fault(direct, namespace)
            outcome = wait_for(
                stopped_or_failing,
                3 * INACTIVITY_SECONDS,
                2,
                "the operator to stop or to fail its liveness probe",
            )
            seconds = time.monotonic() - started
            log = log_since(operator, logged)
            if outcome.startswith("liveness"):
                assert "while the API server answers: the watch is stuck" in log
            else:  # Kopf says which of its tasks failed (the resource observer, or the
                # multitasker of the watchers: CI has seen both), and why
                assert "has failed: ('too old resource version" in log
            # No watch delivers the new Model: only a restart does.
            assert direct.get(*DEPLOY, "late", namespace) is None
    finally:
        operator.stop()
        operator.start()
    took = converge(direct, namespace, names, 60)
    _report(
        "watch_answered_410",
        {
            "outcome": outcome,
            "afterSeconds": round(seconds, 1),
            "watchersFailed": log.count("has failed"),
            "convergedAfterRestartSeconds": round(took, 1),
        },
    )
    assert liveness(operator)[0] == 200


@pytest.mark.timeout(OUTAGE_SECONDS + 600)
def test_a_ten_minute_outage_backs_off_and_converges_after(
    direct: Kube, proxy: FaultProxy, operator: OperatorProcess, namespace: str
) -> None:
    """Every connection to the API server is dropped for 10 minutes. The resync of each Model
    backs off (its attempts are spaced by growing, jittered delays, not once a round), and
    every Model converges once the API server is back, changes made meanwhile included."""
    names = applied(direct, namespace)
    time.sleep(2 * RESYNC_SECONDS)  # a few good resyncs: no object starts with failures
    started = time.monotonic()
    with proxy.fault(outage=True):
        time.sleep(5)
        names = change_during_fault(direct, namespace)
        time.sleep(OUTAGE_SECONDS - (time.monotonic() - started))
    ended = time.monotonic()
    took = converge(direct, namespace, names, 300)
    assert liveness(operator)[0] == 200

    during = [r for r in proxy.requests(started) if r.at < ended]
    starts = {
        name: attempts(
            [r for r in during if r.method == "GET" and r.path == model_path(namespace, name)]
        )
        for name in ("m0", "m1", "m2")
    }
    gaps = {name: [b - a for a, b in itertools.pairwise(s)] for name, s in starts.items()}
    watches: dict[str, list[Request]] = {}
    for r in during:
        if r.watch:
            watches.setdefault(r.path.split("?")[0], []).append(r)
    # aiohttp repeats a request at once on a connection the server dropped: one Kopf try
    watch_tries = {stream: len(attempts(rs, gap=0.5)) for stream, rs in watches.items()}
    _report(  # first: the numbers are kept when an assertion fails
        "outage",
        {
            "outageSeconds": round(ended - started, 1),
            "requestsDuringOutage": len(during),
            "resyncAttempts": {name: len(s) for name, s in starts.items()},
            "resyncGapsSeconds": {n: [round(g, 1) for g in gs] for n, gs in gaps.items()},
            "watchRequestsPerStream": {stream: len(rs) for stream, rs in watches.items()},
            "watchTriesPerStream": watch_tries,
            "versionChecks": len([r for r in during if r.path == "/version"]),
            "convergedAfterSeconds": round(took, 1),
        },
    )
    assert during
    assert all(r.fault == "drop" for r in during)
    for name, series in gaps.items():
        # Without backoff, a resync every 3 s: 200 attempts in 10 minutes.
        assert 3 <= len(starts[name]) <= OUTAGE_SECONDS / RESYNC_SECONDS / 4, (name, series)
        # The delays grow: late in the outage they are drawn up to the cap (120 s).
        late = [
            g
            for a, g in zip(starts[name], series, strict=False)
            if a - started > OUTAGE_SECONDS / 2
        ]
        assert late, (name, series)
        assert statistics.mean(late) >= 3 * statistics.mean(series[:3]), (name, series)
        assert max(series) >= 30, (name, series)
    # Kopf's own tries of a watch (1, 1, 2, 3, 5, 8, 13, 21 s apart, then again): about one in
    # 6 s per stream, each sent twice by aiohttp; far below one request a second (measured: 196
    # requests per stream in 10 minutes).
    requests = {stream: len(rs) for stream, rs in watches.items()}
    assert max(requests.values()) <= OUTAGE_SECONDS / 2, requests
