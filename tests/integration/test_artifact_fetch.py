"""The operator's artifact downloads against a real API server and a real operator process
(issue 12, item 2): Models whose artifacts a server trickles hold no handler thread, so another
Model converges and the liveness probe stays green; a host not in artifactFetchHosts is not
fetched, and the Model says so and how to allow it.

The session operator (tests/kube.py) allows `127.0.0.1`, where these tests serve; its download
deadline is the default 30 s.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube import Kube, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.apiserver
MODEL = ("rtml.dev/v1alpha1", "Model")
DEPLOY = ("apps/v1", "Deployment")
TRICKLE_SECONDS = 20.0  # one byte every 20 s: no per-read timeout ever fires


class TricklingServer:
    """Answers every GET with a 1,000-byte Content-Length, then one byte every 20 s."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                outer.paths.append(request.split(b" ", 2)[1].decode())
                with contextlib.suppress(OSError):  # the operator hung up at its deadline
                    self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
                    for _ in range(1000):
                        if outer.stop.wait(TRICKLE_SECONDS):
                            return
                        self.request.sendall(b"x")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.close()


def model(name: str, ns: str, uri: str, sha256: str) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "version": "v1",
            "artifact": {"uri": uri, "sha256": sha256},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "cpu"},
        },
    }


def features(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    return condition(kube.get(*MODEL, name, ns), "FeaturesResolved")


def liveness(operator: OperatorProcess) -> str | None:
    """What is wrong with the operator's liveness endpoint, or None when it is 200 and handlers
    ran within the last minute (test_model_operator.test_liveness_endpoint_reports_processing)."""
    try:
        with urllib.request.urlopen(operator.liveness_url, timeout=5) as r:  # noqa: S310
            age = json.loads(r.read())["processing"]["secondsSinceHeartbeat"]
    except (OSError, KeyError, ValueError) as e:  # HTTPError (a 500) is an OSError
        return f"{e.__class__.__name__}: {e}"
    return None if age < 60 else f"no handler ran for {age} s"


def test_trickling_artifacts_hold_no_handler_and_another_model_converges(
    kube: Kube, operator: OperatorProcess, namespace: str, trickling: TricklingServer
) -> None:
    slow = [f"slow{i}" for i in range(4)]
    for i, name in enumerate(slow):  # four digests: two downloads under way, two queued
        kube.create(model(name, namespace, f"{trickling.url}/{name}.onnx", str(i) * 64))
    wait_for(
        lambda: all(features(kube, n, namespace).get("reason") == "ArtifactChecking" for n in slow),
        30,
        what="the four Models to wait for their artifact check",
    )
    wait_for(lambda: len(trickling.paths) >= 2, 10, what="the operator to start downloading")
    # Held while the check is under way: nothing rolled out.
    assert all(kube.get(*DEPLOY, n, namespace) is None for n in slow)

    started = time.monotonic()
    kube.create(model("ordinary", namespace, "s3://bucket/m.onnx", "f" * 64))
    unhealthy: list[str] = []

    def converged() -> bool:
        problem = liveness(operator)
        if problem is not None:
            unhealthy.append(problem)
        m = kube.get(*MODEL, "ordinary", namespace)
        return (
            kube.get(*DEPLOY, "ordinary", namespace) is not None
            and bool(condition(m, "RolledOut"))
            and (m or {}).get("status", {}).get("observedGeneration") == 1
        )

    wait_for(converged, 30, interval=1, what="the ordinary Model to converge")
    assert time.monotonic() - started < 30
    assert unhealthy == []
    assert liveness(operator) is None

    # At the 30 s deadline the first downloads are cut: Unknown, which does not hold, so the
    # Models roll out (the runtime checks their artifacts at start-up).
    first = wait_for(
        lambda: (
            (c := features(kube, "slow0", namespace)).get("reason") == "ArtifactUnreachable" and c
        ),
        60,
        what="slow0's download to be cut at its deadline",
    )
    assert first["status"] == "Unknown"
    assert "was not downloaded within its 30 s deadline" in first["message"]
    assert "the runtime enforces the same check at start-up" in first["message"]
    wait_for(lambda: kube.get(*DEPLOY, "slow0", namespace), 30, what="slow0 to roll out")
    assert liveness(operator) is None


def test_a_host_not_allowed_is_not_fetched_and_the_model_says_how_to_allow_it(
    kube: Kube, operator: OperatorProcess, namespace: str, trickling: TricklingServer
) -> None:
    port = trickling.url.rsplit(":", 1)[1]
    # `localhost` is the same server, but the operator allows `127.0.0.1` only, by name.
    uri = f"http://localhost:{port}/m.onnx"
    kube.create(model("elsewhere", namespace, uri, "e" * 64))
    c = wait_for(
        lambda: (f := features(kube, "elsewhere", namespace)).get("reason") and f,
        30,
        what="FeaturesResolved",
    )
    assert (c["status"], c["reason"]) == ("Unknown", "ArtifactUnreachable")
    assert f"{uri}: the operator did not fetch it" in c["message"]
    assert "host 'localhost' is not in artifactFetchHosts" in c["message"]
    assert "operator.artifactFetchHosts" in c["message"]
    # Not held (the runtime checks it at start-up), and nothing was requested.
    wait_for(lambda: kube.get(*DEPLOY, "elsewhere", namespace), 30, what="the Deployment")
    assert trickling.paths == []
