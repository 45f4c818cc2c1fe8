"""Fixtures for runtime tests: a real redis-server, the built fraud example, a runtime process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_server import answers_ping, redis_server_argv

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / ".test-logs"


def rtml_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout's packages first on PYTHONPATH, for a child process
    (`rtml`, the operator, the runtime, the feast CLI loading feature_repo/), plus `extra`."""
    path = [str(REPO / "operator"), str(REPO / "bentos"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}


def run_rtml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`rtml ARGS` from this checkout, output captured, at most 5 minutes."""
    return subprocess.run(
        [sys.executable, "-m", "rtml.cli", *args],
        env=rtml_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server from Debian's package on a free loopback port, no persistence."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Without the password, as a cluster's settings carry it (the password is a Secret)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `.ci/test` installs it (apt redis-server)")
        self.proc = subprocess.Popen(
            redis_server_argv(binary, self.port, self.workdir, self.password),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        alive = lambda: self.proc is not None and self.proc.poll() is None  # noqa: E731
        if not answers_ping(self.port, 10, alive=alive, password=self.password):
            pytest.fail("redis-server did not answer PING within 10 s")

    def pause(self) -> None:
        """SIGSTOP: the nastiest outage, where connections hang instead of being refused."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fraud_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud example built from synthetic data, as the demo builds it."""
    out = tmp_path_factory.mktemp("fraud-build")
    subprocess.run(
        [sys.executable, str(REPO / "examples/fraud/build.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def write_manifest(build: Path, where: Path, **model_spec: Any) -> Path:
    """examples/fraud/model.yaml, pointed at `build`, with Model spec fields overridden."""
    docs = list(yaml.safe_load_all((REPO / "examples/fraud/model.yaml").read_text()))
    for d in docs:
        if d["kind"] == "FeatureView":
            d["spec"]["source"]["path"] = f"file://{build / 'features.parquet'}"
        if d["kind"] == "Model":
            spec = d["spec"]
            spec["artifact"] = {
                "uri": f"file://{build / 'model.onnx'}",
                "sha256": (build / "model.onnx.sha256").read_text().split()[0],
            }
            for k, v in model_spec.items():
                spec[k] = v
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


class RuntimeProcess:
    """`rtml serve` as a real process (BentoML-hosted unless told otherwise)."""

    def __init__(
        self,
        manifest: Path,
        redis_url: str | None,
        server: str = "bentoml",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.manifest = manifest
        self.extra_args = extra_args or []
        self.redis_url = redis_url
        self.server = server
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        LOGS.mkdir(exist_ok=True)
        self.log_path = LOGS / f"runtime-{manifest.parent.name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120) -> None:
        argv = [
            sys.executable,
            "-m",
            "rtml.cli",
            "serve",
            str(self.manifest),
            "--port",
            str(self.port),
            "--server",
            self.server,
        ]
        if self.redis_url:
            argv += ["--profile", "redis", "--redis-url", self.redis_url]
        argv += self.extra_args
        env = rtml_env(**self.env)
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the runtime exited with {self.proc.returncode}; see {self.log_path}")
            status, _ = self.get("/v2/health/ready")
            if status == 200 or (status == 503 and not wait_ready):
                return
            time.sleep(0.25)
        pytest.fail(f"the runtime was not ready within {timeout} s; see {self.log_path}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(
            self.base + path,
            data=body,
            method=method,
            headers={"content-type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, _json(raw), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read()), dict(e.headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, {}, {}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.request("GET", path)
        return status, body

    def post(self, path: str, payload: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", path, raw)

    def scrape(self) -> str:
        """One answer of /metrics: values read from it agree with each other."""
        req = urllib.request.Request(self.base + "/metrics")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(self.scrape(), name, **labels)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample `name` with `labels` in a /metrics answer; None without."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except ValueError:
        return {"raw": raw[:200].decode(errors="replace")}
    return out if isinstance(out, dict) else {"value": out}
