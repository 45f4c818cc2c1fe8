"""The runtime's artifact downloads over every scheme but file:// (issue 12): `rtml serve` of a
Model whose artifact is on a real server on 127.0.0.1, one scheme at a time:

- `http://`  a threaded http.server;
- `https://` the same, with a certificate from a CA made here, trusted through SSL_CERT_FILE;
- `s3://`    moto's S3 server (in a venv of its own: tests/requirements-s3-server.txt says why),
  boto3 in the runtime (tests/requirements-s3-runtime.txt) finding it through AWS_ENDPOINT_URL,
  with credentials from the environment;
- `gs://`    gcp-storage-emulator in this process, google-cloud-storage in the runtime finding
  it through STORAGE_EMULATOR_HOST;
- `pvc://`   a folder as RTML_PVC_ROOT, the claim a folder in it.

Each must serve /predict, and refuse an artifact whose sha256 is not the spec's and one over
RTML_MAX_ARTIFACT_BYTES: not ready, the reason at /v2/health/ready, nothing left in the artifact
folder. The model is the tests' sum model (score = sigmoid(a + b)), not the fraud example: it
needs no FeatureView, so a runtime starts without Feast. The runtime is hosted by plain
uvicorn (faster to start); the artifact is loaded by the same engine under BentoML.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import ipaddress
import math
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks.benchlib.venvs import CACHE, venv_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from rtml.artifacts import ArtifactError, artifact_bytes
from tests.runtime_proc import LOGS, REPO, RuntimeProcess, free_port, rtml_env
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.runtime
SCHEMES = ["http", "https", "s3", "gs", "pvc"]
BUCKET = "artifacts"
KEY = "fraud/sum.onnx"  # the object's key; for pvc://, the file's path in the claim
CLAIM = "model-store"
FEATURES = {"a": 0.5, "b": 1.0}
SCORE = 1 / (1 + math.exp(-1.5))


@dataclass(frozen=True)
class Artifact:
    path: Path
    data: bytes
    sha256: str


@dataclass(frozen=True)
class Source:
    """Where one scheme's copy of the artifact is, and what the runtime needs to reach it."""

    uri: str
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    path = write_sum_model(tmp_path_factory.mktemp("model") / "sum.onnx", ["a", "b"])
    data = path.read_bytes()
    return Artifact(path, data, hashlib.sha256(data).hexdigest())


# -- http(s):// --------------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on the test's output."""


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses the certificate, or hangs up at the size cap, is expected."""


@contextlib.contextmanager
def file_server(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """`root` served over http (or https with `tls`) on 127.0.0.1; the base URL."""
    server = FileServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    if tls is not None:  # the handshake happens in the request's thread, not the accept loop
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA's certificate (PEM): what a client trusts
    server: ssl.SSLContext  # the server's certificate for 127.0.0.1, signed by the CA


def make_tls(where: Path) -> Tls:
    """A private CA, and a server certificate for 127.0.0.1 and localhost that it signs."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtml test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (where / "ca.pem").write_bytes(ca.public_bytes(pem))
    (where / "server.pem").write_bytes(cert.public_bytes(pem))
    (where / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(where / "server.pem", where / "server.key")
    return Tls(where / "ca.pem", context)


def served_folder(artifact: Artifact, where: Path) -> Path:
    (where / KEY).parent.mkdir(parents=True)
    (where / KEY).write_bytes(artifact.data)
    return where


@pytest.fixture(scope="module")
def http_source(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    with file_server(served_folder(artifact, tmp_path_factory.mktemp("http"))) as base:
        yield Source(f"{base}/{KEY}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_source(
    artifact: Artifact, tls: Tls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Source]:
    root = served_folder(artifact, tmp_path_factory.mktemp("https"))
    with file_server(root, tls.server) as base:
        yield Source(f"{base}/{KEY}", {"SSL_CERT_FILE": str(tls.ca)})


# -- s3:// ---------------------------------------------------------------------------------------


def boto3_overlay() -> Path:
    """A folder holding tests/requirements-s3-runtime.txt (boto3 and its pins), installed once
    with `--no-deps --target` and kept outside the checkout, keyed by the file's content."""
    requirements = REPO / "tests" / "requirements-s3-runtime.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    target = CACHE / f"s3-runtime-overlay-{digest}"
    done = target / ".complete"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-warn-conflicts", "--no-deps", "--target", str(target), "-r", str(requirements)],
            check=True,
            timeout=600,
        )  # fmt: skip
        done.write_text(requirements.read_text())
    return target


UPLOAD = """
import sys, boto3
endpoint, bucket, key, path = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket=bucket)
s3.upload_file(path, bucket, key)
"""


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto's S3 server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    pytest.fail(f"moto's S3 server did not listen on {port} within 120 s; see {log}")


@pytest.fixture(scope="module")
def s3_source(artifact: Artifact) -> Iterator[Source]:
    python = venv_for(REPO / "tests" / "requirements-s3-server.txt", "venv-test-s3-server", print)
    overlay = boto3_overlay()
    port = free_port()
    LOGS.mkdir(exist_ok=True)
    log = LOGS / "moto-s3.log"
    proc = subprocess.Popen(
        [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(port, proc, log)
        aws = {
            "AWS_ACCESS_KEY_ID": "rtml-test",
            "AWS_SECRET_ACCESS_KEY": "rtml-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            # Nothing from this machine's own AWS setup, if it has one.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        subprocess.run(  # boto3 from moto's venv puts the artifact there, as a user would
            [str(python), "-c", UPLOAD, endpoint, BUCKET, KEY, str(artifact.path)],
            env={**os.environ, **aws},
            check=True,
            timeout=120,
        )
        yield Source(
            f"s3://{BUCKET}/{KEY}",
            {
                "PYTHONPATH": os.pathsep.join([str(overlay), rtml_env()["PYTHONPATH"]]),
                "AWS_ENDPOINT_URL": endpoint,
                **aws,
            },
        )
    finally:
        proc.terminate()
        proc.wait(20)


# -- gs:// and pvc:// ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gs_source(artifact: Artifact) -> Iterator[Source]:
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = storage.Client(
            project="rtml-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
        client.bucket(BUCKET).blob(KEY).upload_from_string(artifact.data)
        yield Source(
            f"gs://{BUCKET}/{KEY}",
            {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "rtml-test"},
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pvc_source(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Source:
    root = tmp_path_factory.mktemp("pvc")
    served_folder(artifact, root / CLAIM)
    return Source(f"pvc://{CLAIM}/{KEY}", {"RTML_PVC_ROOT": str(root)})


# -- the runtime ---------------------------------------------------------------------------------


def runtime(where: Path, source: Source, sha256: str, **env: str) -> RuntimeProcess:
    """`rtml serve` of a Model whose artifact is `source`, downloads kept in where/artifacts."""
    where.mkdir(parents=True)
    manifest = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "downloads"},
        "spec": {
            "version": "v1",
            "artifact": {"uri": source.uri, "sha256": sha256},
            "features": {"requestFeatures": ["a", "b"]},
            "slo": {"p99LatencyMs": 50, "timeoutMs": 1000, "featureBudgetMs": 20},
            "warmup": {"requests": 5},
        },
    }
    (where / "model.yaml").write_text(yaml.safe_dump(manifest))
    return RuntimeProcess(
        where / "model.yaml",
        redis_url=None,
        server="uvicorn",
        env={"RTML_ARTIFACT_DIR": str(where / "artifacts"), **source.env, **env},
        extra_args=["--no-register"],
    )


def kept(where: Path) -> list[str]:
    folder = where / "artifacts"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def refusal(proc: RuntimeProcess) -> str:
    """Why a runtime will not serve its artifact, once it has tried; it stays up meanwhile."""
    try:
        proc.start(wait_ready=False)
        waited_until = time.monotonic() + 120
        status, body = proc.get("/v2/health/ready")
        while status != 200 and body.get("reason") in (None, "starting"):
            if time.monotonic() > waited_until:
                pytest.fail(f"the runtime gave no verdict within 120 s; see {proc.log_path}")
            time.sleep(0.25)
            status, body = proc.get("/v2/health/ready")
        assert status == 503, body
        assert proc.get("/v2/health/live")[0] == 200
        status, answer, _ = proc.post("/predict", {"features": FEATURES})
        assert status == 503, answer
        return str(body["reason"])
    finally:
        proc.stop()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_model_is_served_from_its_artifact(
    scheme: str, request: pytest.FixtureRequest, artifact: Artifact, tmp_path: Path
) -> None:
    source: Source = request.getfixturevalue(f"{scheme}_source")
    where = tmp_path / f"downloads-{scheme}"  # the runtime's log is named after the folder
    proc = runtime(where, source, artifact.sha256)
    try:
        proc.start()
        status, body, _ = proc.post("/predict", {"features": FEATURES})
    finally:
        proc.stop()
    assert status == 200, body
    assert body["score"] == pytest.approx(SCORE, rel=1e-6)
    # A download is kept under its digest for the next start; a claim is read in place.
    assert kept(where) == ([] if scheme == "pvc" else [f"{artifact.sha256}.onnx"])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_artifact_that_is_not_the_specs_sha256_is_refused(
    scheme: str, request: pytest.FixtureRequest, artifact: Artifact, tmp_path: Path
) -> None:
    source: Source = request.getfixturevalue(f"{scheme}_source")
    wrong = hashlib.sha256(b"another model").hexdigest()
    where = tmp_path / f"downloads-{scheme}-digest"
    reason = refusal(runtime(where, source, wrong))
    assert reason == (
        f"artifact {source.uri} has sha256 {artifact.sha256}, but spec.artifact.sha256 is "
        f"{wrong}; refusing to serve it"
    )
    assert kept(where) == []  # no half-written or wrong file stays


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_artifact_over_the_size_cap_is_refused(
    scheme: str, request: pytest.FixtureRequest, artifact: Artifact, tmp_path: Path
) -> None:
    source: Source = request.getfixturevalue(f"{scheme}_source")
    cap = len(artifact.data) - 1
    where = tmp_path / f"downloads-{scheme}-cap"
    reason = refusal(runtime(where, source, artifact.sha256, RTML_MAX_ARTIFACT_BYTES=str(cap)))
    assert source.uri in reason
    assert f"over the {cap}-byte limit" in reason
    if scheme in ("s3", "gs", "pvc"):  # the stored size, known before a byte is read
        assert f"is {len(artifact.data)} bytes" in reason
    assert kept(where) == []


def test_https_from_a_private_ca_needs_the_ca_trusted(
    https_source: Source, artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SSL_CERT_FILE naming the CA the download is refused; with it, the same call
    loads the artifact (the runtime above is given the same variable)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="certificate verify failed"):
        artifact_bytes(https_source.uri, artifact.sha256, tmp_path, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setenv("SSL_CERT_FILE", https_source.env["SSL_CERT_FILE"])
    path, data = artifact_bytes(https_source.uri, artifact.sha256, tmp_path, cache)
    assert (path, data) == (cache / f"{artifact.sha256}.onnx", artifact.data)


DOWNLOAD_PAST_ITS_DEADLINE = """
import sys, time
from pathlib import Path
from rtml.artifacts import ArtifactError, Deadline, download
try:
    download(sys.argv[1], None, Path(sys.argv[2]), deadline=Deadline(5.0, time.monotonic() - 1))
except ArtifactError as e:
    print(e)
"""


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_an_object_store_download_stops_at_its_deadline(
    scheme: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """rtml.artifacts.download's overall deadline holds for s3:// and gs:// too (it bounds
    each request, retries included, and is checked after every read), in a process set up as
    the runtime is (boto3 cannot be imported here)."""
    source: Source = request.getfixturevalue(f"{scheme}_source")
    out = subprocess.run(
        [sys.executable, "-c", DOWNLOAD_PAST_ITS_DEADLINE, source.uri, str(tmp_path / "cache")],
        env=rtml_env(**source.env),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == f"{source.uri} was not downloaded within its 5 s deadline", (
        out.stderr
    )
    assert list((tmp_path / "cache").iterdir()) == []
