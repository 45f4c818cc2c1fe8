"""The operator's artifact downloads for its signature check: which hosts (a pure decision), the
overall deadline against servers that trickle or stall, checks that never wait in a reconcile,
failures remembered, and a download folder that stays small. Real sockets on 127.0.0.1; other
host names reach them through an injected resolver."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from rtml.api.model import Model
from rtml.artifacts import ArtifactError, Deadline, download
from rtml.contract import SettingsError
from rtml.dev.tools import ensure_tools
from rtml.operator.artifact_cache import (
    CachedFile,
    clean_cache_dir,
    evictions,
    stale_parts,
)
from rtml.operator.artifact_fetch import FetchGuard, FetchRefused
from rtml.operator.artifact_hosts import fetch_refusal, host_pattern_problem
from rtml.operator.conditions import Cond
from rtml.operator.settings import OperatorSettings
from rtml.operator.signature import SignatureCache, check_model_signature, while_checking
from rtml.operator.status import holds_rollout
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit
T = TypeVar("T")
VIEW: dict[str, Any] = {
    "metadata": {"name": "cards", "namespace": "ml"},
    "spec": {
        "entity": {"name": "card", "joinKey": "card_id"},
        "features": [{"name": "a", "dtype": "FLOAT"}, {"name": "b", "dtype": "INT64"}],
        "source": {"type": "push"},
    },
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Registered"}]},
}


class Inline(Executor):
    """Runs a download at once in the caller's thread: the check settles before it returns."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


def model(uri: str, sha256: str, generation: int = 2) -> Model:
    return Model.model_validate(
        {
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "u1", "generation": generation},
            "spec": {
                "version": "v2",
                "artifact": {"uri": uri, "sha256": sha256},
                "features": {"featureViewRef": "cards", "requestFeatures": ["amount"]},
            },
        }
    )


# -- which hosts: a pure decision -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "patterns", "addresses", "allowed"),
    [
        ("models.example.com", [], [], False),  # the default: nothing is fetched
        ("models.example.com", ["models.example.com"], ["93.184.216.34"], True),
        ("Models.Example.COM.", ["models.example.com"], [], True),  # case, trailing dot
        ("eu.models.example.com", ["*.example.com"], ["10.0.0.7"], True),  # in-cluster is fine
        ("evil.com", ["*.example.com"], [], False),
        ("example.com.evil.com", ["*.example.com"], [], False),
        # A wildcard never reaches loopback, link-local or metadata addresses ...
        ("meta.example.com", ["*.example.com"], ["169.254.169.254"], False),
        ("local.example.com", ["*.example.com"], ["93.184.216.34", "127.0.0.1"], False),
        ("v6.example.com", ["*.example.com"], ["fe80::1%eth0"], False),
        ("v6.example.com", ["*.example.com"], ["::ffff:127.0.0.1"], False),
        ("v6.example.com", ["*.example.com"], ["fd00:ec2::254"], False),
        ("zero.example.com", ["*.example.com"], ["0.0.0.0"], False),  # noqa: S104 - an address, not a bind
        ("169.254.169.254", ["*"], [], False),
        ("::1", ["*"], [], False),
        # ... a pattern naming the host exactly does (a deliberate choice).
        ("127.0.0.1", ["127.0.0.1"], ["127.0.0.1"], True),
        ("artifacts.internal", ["artifacts.internal"], ["127.0.0.1"], True),
        ("artifacts.internal", ["artifacts.internal*"], ["127.0.0.1"], False),
        ("", ["*"], [], False),
    ],
)
def test_which_hosts_the_operator_fetches_from(
    host: str, patterns: list[str], addresses: list[str], allowed: bool
) -> None:
    assert (fetch_refusal(host, patterns, addresses) is None) is allowed


def test_a_refusal_says_why_and_how_to_allow_it() -> None:
    message = fetch_refusal("models.example.com", ["*.s3.amazonaws.com"])
    assert message is not None
    assert "host 'models.example.com' is not in artifactFetchHosts" in message
    assert "operator.artifactFetchHosts" in message
    assert "RTML_ARTIFACT_FETCH_HOSTS" in message
    inside = fetch_refusal("m.example.com", ["*.example.com"], ["169.254.169.254"])
    assert inside is not None
    assert "resolves to 169.254.169.254" in inside
    assert "naming the host exactly" in inside


def test_host_patterns_are_checked_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_pattern_problem("*.example.com") is None
    assert host_pattern_problem(" ") == "an empty pattern"
    assert OperatorSettings.load().artifact_fetch_hosts == []
    monkeypatch.setenv("RTML_ARTIFACT_FETCH_HOSTS", '["models.example.com", "https://x/m.onnx"]')
    with pytest.raises(SettingsError, match=r"RTML_ARTIFACT_FETCH_HOSTS: 'https://x/m.onnx' is"):
        OperatorSettings.load()
    monkeypatch.setenv("RTML_ARTIFACT_FETCH_HOSTS", '["models.example.com"]')
    monkeypatch.setenv("RTML_ARTIFACT_FETCH_DEADLINE_SECONDS", "0")
    with pytest.raises(SettingsError, match="RTML_ARTIFACT_FETCH_DEADLINE_SECONDS"):
        OperatorSettings.load()


# -- servers ----------------------------------------------------------------------------------


class Server:
    """An HTTP/1.0 server on 127.0.0.1 whose answer to each request `respond` writes."""

    def __init__(self, respond: Callable[[socket.socket, str], None]) -> None:
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
                path = request.split(b" ", 2)[1].decode()
                outer.paths.append(path)
                with contextlib.suppress(OSError):  # the client hung up: what a deadline does
                    respond(self.request, path)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, str], None]], Server]]:
    servers: list[Server] = []

    def start(respond: Callable[[socket.socket, str], None]) -> Server:
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def trickle(interval: float, stop: threading.Event) -> Callable[[socket.socket, str], None]:
    """Announces 1,000 bytes, then sends one every `interval` seconds."""

    def respond(sock: socket.socket, _path: str) -> None:
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            if stop.wait(interval):
                return
            sock.sendall(b"x")

    return respond


def body(data: bytes) -> Callable[[socket.socket, str], None]:
    def respond(sock: socket.socket, path: str) -> None:
        if path != "/m.onnx":
            sock.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)

    return respond


# -- the deadline: the whole download, not one read --------------------------------------------


def test_a_trickling_server_is_cut_off_at_the_deadline(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    stop = threading.Event()
    server = serve(trickle(0.2, stop))
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="not downloaded within its 1 s deadline"):
        download(
            f"{server.url}/m.onnx", "a" * 64, tmp_path, timeout_s=30, deadline=Deadline.after(1)
        )
    stop.set()
    assert time.monotonic() - started < 2.5  # not 1,000 bytes x 0.2 s, nor timeout_s
    assert list(tmp_path.iterdir()) == []  # no .part left behind


def test_the_guard_cuts_a_read_that_waits_past_the_deadline(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # A byte every 1.5 s and a 2 s deadline: the read started at 1.5 s would wait until the
    # next byte at 3 s; the guard's watchdog shuts the connection at 2 s.
    stop = threading.Event()
    server = serve(trickle(1.5, stop))
    deadline = Deadline.after(2)
    started = time.monotonic()
    with (
        FetchGuard(["127.0.0.1"], deadline) as guard,
        pytest.raises(ArtifactError, match="deadline"),
    ):
        download(
            f"{server.url}/m.onnx",
            "a" * 64,
            tmp_path,
            timeout_s=30,
            deadline=deadline,
            opener=guard.opener(),
        )
    stop.set()
    assert guard.expired
    assert time.monotonic() - started < 2.8


# -- the guard: where a download may connect ---------------------------------------------------


def test_the_guard_connects_only_where_the_policy_allows(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    data = b"onnx bytes"
    server = serve(body(data))
    digest = hashlib.sha256(data).hexdigest()

    def fetch(patterns: list[str], host: str) -> Path:
        def resolver(_host: str, _port: int) -> list[tuple[int, str]]:
            return [(socket.AF_INET, "127.0.0.1")]  # every name is this machine here

        with FetchGuard(patterns, Deadline.after(10), resolver) as guard:
            path, _ = download(
                f"http://{host}:{server.port}/m.onnx",
                digest,
                tmp_path,
                deadline=guard.deadline,
                opener=guard.opener(),
            )
        return path

    with pytest.raises(FetchRefused, match=r"resolves to 127\.0\.0\.1"):
        fetch(["*.internal"], "artifacts.internal")  # a wildcard: not to loopback
    with pytest.raises(FetchRefused, match="not in artifactFetchHosts"):
        fetch(["artifacts.internal"], "other.internal")
    assert server.paths == []  # refused before connecting
    assert fetch(["artifacts.internal"], "artifacts.internal").read_bytes() == data


def test_a_redirect_goes_through_the_same_check(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    def redirect(sock: socket.socket, _path: str) -> None:
        to = "http://metadata.internal/latest/meta-data/"
        sock.sendall(f"HTTP/1.0 302 Found\r\nLocation: {to}\r\n\r\n".encode())

    server = serve(redirect)

    def resolver(host: str, _port: int) -> list[tuple[int, str]]:
        return [(socket.AF_INET, "169.254.169.254" if host == "metadata.internal" else "127.0.0.1")]

    with (
        FetchGuard(["127.0.0.1", "*.internal"], Deadline.after(10), resolver) as guard,
        pytest.raises(FetchRefused, match=r"resolves to 169\.254\.169\.254"),
    ):
        download(f"{server.url}/m.onnx", "a" * 64, tmp_path, opener=guard.opener())


# -- the check: never waited for in a reconcile ------------------------------------------------


def test_a_check_under_way_holds_the_rollout_and_wakes_the_model(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    artifact = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    data = artifact.read_bytes()
    gate = threading.Event()

    def gated(sock: socket.socket, path: str) -> None:
        gate.wait(10)
        body(data)(sock, path)

    server = serve(gated)
    woken: list[list[tuple[str, str, str]]] = []
    settled = threading.Event()

    def wake(models: list[tuple[str, str, str]]) -> None:
        woken.append(models)
        settled.set()

    cache = SignatureCache(tmp_path / "cache", fetch_hosts=("127.0.0.1",), wake=wake)
    m = model(f"{server.url}/m.onnx", hashlib.sha256(data).hexdigest(), generation=1)
    started = time.monotonic()
    checking = check_model_signature(m, VIEW, cache)
    again = check_model_signature(m, VIEW, cache)  # the same download, not a second one
    assert time.monotonic() - started < 1  # the reconcile did not wait for the server
    assert (checking.status, checking.reason) == ("Unknown", "ArtifactChecking")
    assert again == checking
    assert "the rollout waits for the check" in checking.message
    assert holds_rollout(checking)

    gate.set()
    assert settled.wait(10)
    assert woken == [[("ml", "fraud", "u1")]]
    done = check_model_signature(m, VIEW, cache)
    assert (done.status, done.reason) == ("True", "SignatureMatches")
    assert server.paths == ["/m.onnx"]


def test_a_trickling_artifact_ends_unreachable_and_leaves_no_part_file(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    stop = threading.Event()
    server = serve(trickle(0.2, stop))
    cache = SignatureCache(
        tmp_path / "cache", timeout_s=1, fetch_hosts=("127.0.0.1",), executor=Inline()
    )
    c = check_model_signature(model(f"{server.url}/m.onnx", "a" * 64), VIEW, cache)
    stop.set()
    assert (c.status, c.reason) == ("Unknown", "ArtifactUnreachable")
    assert "was not downloaded within its 1 s deadline" in c.message
    assert "the runtime enforces the same check at start-up" in c.message
    assert not holds_rollout(c)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_download_is_remembered_for_a_while(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    server = serve(body(b""))
    now = [1000.0]
    cache = SignatureCache(
        tmp_path / "cache",
        fetch_hosts=("127.0.0.1",),
        retry_after_s=300,
        executor=Inline(),
        clock=lambda: now[0],
    )
    m = model(f"{server.url}/gone.onnx", "b" * 64)
    first = check_model_signature(m, VIEW, cache)
    assert (first.status, first.reason) == ("Unknown", "ArtifactUnreachable")
    assert "404" in first.message
    assert "the operator tries again after 300 s" in first.message
    now[0] += 299
    assert check_model_signature(m, VIEW, cache) == first  # the same words: no status write
    assert server.paths == ["/gone.onnx"]
    now[0] += 2
    check_model_signature(m, VIEW, cache)
    assert server.paths == ["/gone.onnx", "/gone.onnx"]


def test_a_host_not_allowed_is_not_fetched_and_the_condition_says_how_to_allow_it(
    tmp_path: Path,
) -> None:
    cache = SignatureCache(tmp_path / "cache")  # the defaults: no host allowed
    c = check_model_signature(model("https://models.example.com/m.onnx", "c" * 64), VIEW, cache)
    assert (c.status, c.reason) == ("Unknown", "ArtifactUnreachable")
    assert c.message.startswith("https://models.example.com/m.onnx: the operator did not fetch")
    assert "host 'models.example.com' is not in artifactFetchHosts" in c.message
    assert "the runtime enforces the same check at start-up" in c.message
    assert not holds_rollout(c)
    assert not (tmp_path / "cache").exists()


def test_while_checking_an_unchanged_spec_its_last_verdict_stands() -> None:
    checking = Cond("FeaturesResolved", "Unknown", "ArtifactChecking", "downloading")
    last = {"type": "FeaturesResolved", "status": "True", "reason": "SignatureMatches"}
    previous = {"conditions": [{**last, "message": "fits", "observedGeneration": 4}]}
    kept = Cond("FeaturesResolved", "True", "SignatureMatches", "fits")
    assert while_checking(checking, previous, 4) == kept  # e.g. after an operator restart
    assert while_checking(checking, previous, 5) == checking  # a new spec waits for its check
    assert while_checking(checking, None, 1) == checking


# -- the download folder stays small -----------------------------------------------------------


def test_evictions_keep_the_most_recently_used_within_the_limits() -> None:
    files = [
        CachedFile("old.onnx", 40, 100.0),
        CachedFile("mid.onnx", 40, 200.0),
        CachedFile("new.onnx", 40, 300.0),
    ]
    assert evictions(files, max_files=2, max_bytes=1000) == ["old.onnx"]
    assert evictions(files, max_files=10, max_bytes=90) == ["old.onnx"]
    assert evictions(files, max_files=10, max_bytes=10) == ["old.onnx", "mid.onnx"]  # newest stays
    assert evictions(files, max_files=10, max_bytes=1000) == []
    parts = [CachedFile("a.part", 5, 100.0), CachedFile("b.part", 5, 125.0)]
    assert stale_parts(parts, now=140.0, older_than_s=30) == ["a.part"]


def test_the_cache_folder_is_cleaned(tmp_path: Path) -> None:
    now = time.time()
    for name, size, age in [
        ("a.onnx", 10, 300),
        ("b.onnx", 10, 200),
        ("c.onnx", 10, 100),
        ("cut.part", 3, 120),
        ("live.part", 3, 5),
        ("notes.txt", 1, 999),
    ]:
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    deleted = clean_cache_dir(tmp_path, max_files=2, max_bytes=1000, part_age_s=30, now=now)
    assert sorted(deleted) == ["a.onnx", "cut.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.onnx",
        "c.onnx",
        "live.part",
        "notes.txt",
    ]
    assert clean_cache_dir(tmp_path / "absent", 1, 1, 30) == []


# -- the chart ---------------------------------------------------------------------------------


@pytest.mark.helm
def test_the_chart_values_reach_the_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    helm = ensure_tools(progress=lambda _m: None) / "helm"
    chart = Path(__file__).resolve().parents[2] / "charts" / "rtml"

    def settings(*values: str) -> OperatorSettings:
        argv = [str(helm), "template", "t", str(chart), "--show-only", "templates/deployment.yaml"]
        for v in values:
            argv += ["--set-json", v]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
        (container,) = yaml.safe_load(out.stdout)["spec"]["template"]["spec"]["containers"]
        for e in container["env"]:
            if e["name"].startswith(("RTML_ARTIFACT_", "RTML_SIGNATURE_")):
                monkeypatch.setenv(e["name"], e["value"])
        return OperatorSettings.load()

    default = settings()
    assert default.artifact_fetch_hosts == []
    assert default.artifact_fetch_deadline_seconds == 30
    assert default.artifact_fetch_max_bytes == 64 << 20
    assert (default.signature_cache_max_files, default.signature_cache_max_bytes) == (16, 64 << 20)
    chosen = settings(
        'operator.artifactFetchHosts=["models.example.com", "*.s3.amazonaws.com"]',
        "operator.artifactFetchMaxBytes=134217728",
        "operator.artifactFetchDeadlineSeconds=12.5",
    )
    assert chosen.artifact_fetch_hosts == ["models.example.com", "*.s3.amazonaws.com"]
    assert chosen.artifact_fetch_max_bytes == 128 << 20
    assert chosen.artifact_fetch_deadline_seconds == 12.5
