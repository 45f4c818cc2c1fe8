"""Fetching a model artifact and proving it is the one the spec names (sha256): written once,
for the runtime (which serves it), the operator (which reads its inputs) and `rtml validate`.

`file://` (relative to the manifest's folder), `pvc://CLAIM/path` (the claim mounted at
`PVC_ROOT/CLAIM`), `http(s)://` (urllib: no extra dependency), `s3://` (boto3) and `gs://`
(google-cloud-storage) — the last two only when those SDKs are installed, with an error that
says so otherwise. Downloads stream into the cache folder under a temporary name, hashed as
they arrive, optionally capped in size (an object store's stored size is checked before the
first byte), and are renamed to DIGEST.onnx only after the digest matches, so a half-written
or wrong file is never loaded. docs/runtime.md ("Artifact sources") lists the settings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("rtml.artifacts")
CHUNK = 1 << 20
DEFAULT_PVC_ROOT = Path("/mnt/pvc")


class ArtifactError(Exception):
    """The artifact cannot be fetched or is not the one the spec names."""


class DigestMismatch(ArtifactError):  # noqa: N818 - reads as the condition it reports
    pass


class ArtifactTooLarge(ArtifactError):  # noqa: N818 - reads as the condition it reports
    pass


@dataclass(frozen=True)
class Deadline:
    """One download's overall time limit: the whole transfer, not one socket read (a server
    trickling a byte every 20 s never trips a per-read timeout)."""

    seconds: float
    ends: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def check(self, uri: str) -> None:
        """Raise ArtifactError once the deadline has passed."""
        if self.remaining() <= 0:
            raise ArtifactError(f"{uri} was not downloaded within its {self.seconds:g} s deadline")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(uri: str, actual: str, expected: str | None) -> None:
    """Raise DigestMismatch unless `actual` is the `expected` sha256 (None: nothing to check)."""
    if expected is not None and actual != expected:
        raise DigestMismatch(
            f"artifact {uri} has sha256 {actual}, but spec.artifact.sha256 is {expected}; "
            "refusing to serve it"
        )


def local_path(uri: str, base_dir: Path, pvc_root: Path = DEFAULT_PVC_ROOT) -> Path | None:
    """The file a file:// or pvc:// URI names, or None for remote URIs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        raw = urllib.parse.unquote(parts.netloc + parts.path)
        path = Path(raw)
        return path if path.is_absolute() else (base_dir / path).resolve()
    if parts.scheme == "pvc":
        return pvc_root / parts.netloc / parts.path.lstrip("/")
    return None


def _copy_capped(
    source: BinaryIO,
    out: BinaryIO,
    uri: str,
    max_bytes: int | None,
    deadline: Deadline | None = None,
) -> str:
    digest = hashlib.sha256()
    size = 0
    # With a deadline, read what has arrived (read1) and look at the clock after every read:
    # read(CHUNK) would wait for a whole chunk however slowly it comes.
    read = getattr(source, "read1", source.read) if deadline is not None else source.read
    while True:
        try:
            chunk = read(CHUNK)
        except Exception:
            if deadline is not None:
                deadline.check(uri)  # the connection was cut at the deadline: say so
            raise
        if deadline is not None:
            deadline.check(uri)
        if not chunk:
            break
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ArtifactTooLarge(f"{uri} is over the {max_bytes}-byte limit")
        digest.update(chunk)
        out.write(chunk)
    missing = getattr(source, "length", None)  # an HTTP response's unread Content-Length
    if deadline is not None and isinstance(missing, int) and missing > 0:
        raise ArtifactError(f"{uri}: the connection closed {missing} bytes before the end")
    return digest.hexdigest()


def _fetch_into(
    uri: str,
    out: BinaryIO,
    max_bytes: int | None,
    timeout_s: float,
    deadline: Deadline | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> str:
    """Write the object at `uri` into `out`; its sha256. `opener` (e.g. one that checks where
    it connects) applies to http(s):// only; `deadline` is checked after every read and bounds
    each socket operation."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        if deadline is not None:
            timeout_s = max(0.001, min(timeout_s, deadline.remaining()))
        open_url = opener.open if opener is not None else urllib.request.urlopen
        try:
            response = open_url(uri, timeout=timeout_s)  # the scheme is http(s), checked above
        except Exception:
            if deadline is not None:
                deadline.check(uri)
            raise
        with response:
            return _copy_capped(response, out, uri, max_bytes, deadline)
    if parts.scheme not in ("s3", "gs"):
        raise ArtifactError(f"{uri}: unsupported scheme {parts.scheme!r}")
    open_object = _s3_body if parts.scheme == "s3" else _gcs_reader
    try:
        stream = open_object(uri, parts, max_bytes, _socket_timeout(timeout_s, deadline))
    except ArtifactError:
        raise
    except Exception:
        if deadline is not None:
            deadline.check(uri)  # the request failed at the deadline: say so
        raise
    with stream:
        return _copy_capped(stream, out, uri, max_bytes, deadline)


def _socket_timeout(timeout_s: float, deadline: Deadline | None) -> float:
    return timeout_s if deadline is None else max(0.001, min(timeout_s, deadline.remaining()))


def _over_cap(uri: str, size: int | None, max_bytes: int | None) -> None:
    """Refuse an object whose stored size is over the cap before a byte of it is read."""
    if max_bytes is not None and size is not None and size > max_bytes:
        raise ArtifactTooLarge(f"{uri} is {size} bytes, over the {max_bytes}-byte limit")


def _s3_body(
    uri: str, parts: urllib.parse.SplitResult, max_bytes: int | None, timeout_s: float
) -> BinaryIO:
    """The object's body as a stream (GetObject), its stored size checked against the cap. The
    endpoint, credentials, region and CA bundle come from boto3's own configuration
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_CA_BUNDLE, a pod's web identity, ...)."""
    try:
        import boto3  # optional: only Models on S3 need it
        from botocore.config import Config
    except ImportError as e:
        raise ArtifactError(f"{uri}: s3:// artifacts need boto3 installed") from e
    client = boto3.client("s3", config=Config(connect_timeout=timeout_s, read_timeout=timeout_s))
    response = client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
    body: BinaryIO = response["Body"]
    try:
        _over_cap(uri, response.get("ContentLength"), max_bytes)
    except ArtifactTooLarge:
        body.close()
        raise
    return body


def _gcs_reader(
    uri: str, parts: urllib.parse.SplitResult, max_bytes: int | None, timeout_s: float
) -> BinaryIO:
    """The object's generation as it is now, as a stream of ranged reads, its stored size
    checked against the cap. Each request, its retries included, takes at most `timeout_s`
    (the library's default retries for 120 s). Credentials come from google-auth's defaults;
    STORAGE_EMULATOR_HOST names another endpoint."""
    try:
        from google.cloud import storage  # optional: only Models on GCS need it
        from google.cloud.storage.retry import DEFAULT_RETRY
    except ImportError as e:
        raise ArtifactError(f"{uri}: gs:// artifacts need google-cloud-storage installed") from e
    limits = {"timeout": timeout_s, "retry": DEFAULT_RETRY.with_timeout(timeout_s)}
    bucket = storage.Client().bucket(parts.netloc)
    blob = bucket.get_blob(parts.path.lstrip("/"), **limits)
    if blob is None:
        raise ArtifactError(f"artifact {uri} does not exist")
    _over_cap(uri, blob.size, max_bytes)
    reader: BinaryIO = blob.open("rb", chunk_size=CHUNK, **limits)
    return reader


def download(
    uri: str,
    expected: str | None,
    cache_dir: Path,
    *,
    max_bytes: int | None = None,
    timeout_s: float = 60.0,
    deadline: Deadline | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[Path, str]:
    """A verified copy of a remote artifact in `cache_dir` (DIGEST.onnx) and its sha256.

    `timeout_s` bounds each socket operation; `deadline` the whole download (for s3:// and
    gs:// it is checked between reads, each of which `timeout_s` bounds)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch_into(uri, out, max_bytes, timeout_s, deadline, opener)
        verify(uri, digest, expected)
        target = cache_dir / f"{digest}.onnx"
        tmp.replace(target)
    except ArtifactError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"could not download {uri}: {e}") from e
    return target, digest


def read_verified(path: Path, uri: str, expected: str | None, max_bytes: int | None) -> bytes:
    """The file's bytes, read once, capped, and checked against `expected` (None: not checked).

    What is loaded is these bytes, never the path again: a file swapped after it was hashed
    (a shared volume, a second writer) cannot be what serves. The size is checked on the open
    file before anything is read, and again while reading, for a file that grows meanwhile."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ArtifactTooLarge(
                    f"artifact {uri} is {size} bytes, over the {max_bytes}-byte limit "
                    "(RTML_MAX_ARTIFACT_BYTES)"
                )
            data = f.read(max_bytes + 1 if max_bytes is not None else -1)
    except OSError as e:  # e.g. a volume the pod's user may not read
        raise ArtifactError(f"artifact {uri} cannot be read at {path}: {e.strerror}") from e
    if max_bytes is not None and len(data) > max_bytes:
        raise ArtifactTooLarge(
            f"artifact {uri} grew over the {max_bytes}-byte limit while it was read"
        )
    verify(uri, hashlib.sha256(data).hexdigest(), expected)
    return data


def fetch_artifact(
    uri: str,
    sha256: str | None,
    base_dir: Path,
    cache_dir: Path,
    *,
    pvc_root: Path = DEFAULT_PVC_ROOT,
    max_bytes: int | None = None,
) -> Path:
    """A verified local copy of the artifact (local files are verified in place)."""
    local = local_path(uri, base_dir, pvc_root)
    if local is not None:
        try:
            if not local.is_file():
                raise ArtifactError(f"artifact {uri} does not exist (looked at {local})")
            verify(uri, sha256_of(local), sha256)
        except OSError as e:  # e.g. a volume the pod's user may not read
            raise ArtifactError(f"artifact {uri} cannot be read at {local}: {e.strerror}") from e
        return local
    if sha256 is not None:
        kept = cache_dir / f"{sha256}.onnx"
        if kept.is_file():
            if sha256_of(kept) == sha256:
                return kept
            kept.unlink()
    log.info("downloading artifact", extra={"uri": uri})
    path, _ = download(uri, sha256, cache_dir, max_bytes=max_bytes)
    return path


def artifact_bytes(
    uri: str,
    sha256: str | None,
    base_dir: Path,
    cache_dir: Path,
    *,
    pvc_root: Path = DEFAULT_PVC_ROOT,
    max_bytes: int | None = None,
) -> tuple[Path, bytes]:
    """The artifact's verified bytes, for a loader that takes bytes (the runtime), and the file
    they were read from. A local file is read and hashed once; a remote one is downloaded into
    `cache_dir` (verified as it arrives) and read back from there, verified again."""
    local = local_path(uri, base_dir, pvc_root)
    if local is None:
        kept = cache_dir / f"{sha256}.onnx" if sha256 is not None else None
        if kept is not None and kept.is_file():
            try:  # hashed once, as it is read (fetch_artifact would hash it first, then here)
                return kept, read_verified(kept, uri, sha256, max_bytes)
            except DigestMismatch:
                kept.unlink()
        log.info("downloading artifact", extra={"uri": uri})
        path, _ = download(uri, sha256, cache_dir, max_bytes=max_bytes)
    elif not local.is_file():
        raise ArtifactError(f"artifact {uri} does not exist (looked at {local})")
    else:
        path = local
    return path, read_verified(path, uri, sha256, max_bytes)
