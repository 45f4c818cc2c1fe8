"""Fetching a model artifact and proving it is the one the spec names (sha256).

`file://` (relative to the manifest's folder), `pvc://CLAIM/path` (the claim mounted at
`$RTML_PVC_ROOT/CLAIM`), `http(s)://` (urllib: no extra dependency), `s3://` (boto3) and
`gs://` (google-cloud-storage) — the last two only when those SDKs are installed, with an
error that says so otherwise. Downloads stream into the artifact folder under a temporary
name and are renamed only after the digest matches, so a half-written file is never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger("rtml.runtime.artifacts")
CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact cannot be fetched or is not the one the spec names."""


class DigestMismatch(ArtifactError):  # noqa: N818 - reads as the condition it reports
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str | None, uri: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise DigestMismatch(
            f"artifact {uri} has sha256 {actual}, but spec.artifact.sha256 is {expected}; "
            "refusing to serve it"
        )


def _download(uri: str, target: Path) -> None:
    parts = urllib.parse.urlsplit(uri)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        if parts.scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=60) as r, tmp.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(r, out, CHUNK)
        elif parts.scheme == "s3":
            try:
                import boto3
            except ImportError as e:
                raise ArtifactError(f"{uri}: s3:// artifacts need boto3 installed") from e
            boto3.client("s3").download_file(parts.netloc, parts.path.lstrip("/"), str(tmp))
        elif parts.scheme == "gs":
            try:
                from google.cloud import storage
            except ImportError as e:
                raise ArtifactError(
                    f"{uri}: gs:// artifacts need google-cloud-storage installed"
                ) from e
            blob = storage.Client().bucket(parts.netloc).blob(parts.path.lstrip("/"))
            blob.download_to_filename(str(tmp))
        else:
            raise ArtifactError(f"{uri}: unsupported scheme {parts.scheme!r}")
    except ArtifactError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"could not download {uri}: {e}") from e
    tmp.replace(target)


def local_path(uri: str, base_dir: Path) -> Path | None:
    """The file a file:// or pvc:// URI names, or None for remote URIs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        raw = urllib.parse.unquote(parts.netloc + parts.path)
        path = Path(raw)
        return path if path.is_absolute() else (base_dir / path).resolve()
    if parts.scheme == "pvc":
        root = Path(os.environ.get("RTML_PVC_ROOT", "/mnt/pvc"))
        return root / parts.netloc / parts.path.lstrip("/")
    return None


def fetch_artifact(uri: str, sha256: str | None, base_dir: Path, cache_dir: Path) -> Path:
    """A verified local copy of the artifact (local files are verified in place)."""
    local = local_path(uri, base_dir)
    if local is not None:
        if not local.is_file():
            raise ArtifactError(f"artifact {uri} does not exist (looked at {local})")
        _verify(local, sha256, uri)
        return local
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = sha256 or hashlib.sha256(uri.encode()).hexdigest()
    target = cache_dir / f"{name}.onnx"
    if target.exists():
        try:
            _verify(target, sha256, uri)
            return target
        except DigestMismatch:
            target.unlink()
    log.info("downloading artifact", extra={"uri": uri})
    _download(uri, target)
    try:
        _verify(target, sha256, uri)
    except DigestMismatch:
        target.unlink(missing_ok=True)
        raise
    return target
