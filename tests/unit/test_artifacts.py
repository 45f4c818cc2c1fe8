"""rtml.artifacts, the one fetch-and-verify of the runtime, the operator and `rtml validate`."""

from __future__ import annotations

import hashlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rtml.artifacts import (
    ArtifactError,
    ArtifactTooLarge,
    Deadline,
    DigestMismatch,
    _copy_capped,
    _over_cap,
    _socket_timeout,
    download,
    fetch_artifact,
    local_path,
)

pytestmark = pytest.mark.unit


def test_local_files_are_verified_in_place(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"model")
    digest = hashlib.sha256(b"model").hexdigest()
    assert fetch_artifact("file://m.onnx", digest, tmp_path, tmp_path / "cache") == f
    with pytest.raises(DigestMismatch, match="refusing to serve it"):
        fetch_artifact("file://m.onnx", "0" * 64, tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing copied for a local file


def test_pvc_uris_resolve_under_the_given_root(tmp_path: Path) -> None:
    assert local_path("pvc://models/a/b.onnx", tmp_path, tmp_path / "pvc") == (
        tmp_path / "pvc" / "models" / "a" / "b.onnx"
    )


def test_an_unreadable_file_is_an_artifact_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A volume the pod's user may not read made start-up crash with a PermissionError (found
    running the image as 65532); the runtime must stay up and say why it is not ready. Tests
    run as root, who reads anything, so the read itself is made to fail as it did there."""
    f = tmp_path / "m.onnx"
    f.write_bytes(b"model")

    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("rtml.artifacts.sha256_of", denied)
    with pytest.raises(ArtifactError, match=r"cannot be read at .*m.onnx: Permission denied"):
        fetch_artifact(f"file://{f}", None, tmp_path, tmp_path)


@pytest.mark.parametrize(
    ("uri", "module", "package"),
    [
        ("s3://models/m.onnx", "boto3", "boto3"),
        ("gs://models/m.onnx", "google.cloud.storage", "google-cloud-storage"),
    ],
)
def test_an_object_store_without_its_sdk_says_which_package_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, module: str, package: str
) -> None:
    """The SDKs are optional: a runtime without one refuses the Model in words, and no
    temporary file stays in the cache folder. (A None entry makes `import` fail.)"""
    monkeypatch.setitem(sys.modules, module, None)
    # `from google.cloud import storage` reads the package's attribute first, which an earlier
    # import in this process (the emulator tests') has set: take it away for this test.
    parent, _, child = module.rpartition(".")
    if parent in sys.modules:
        monkeypatch.delattr(sys.modules[parent], child, raising=False)
    with pytest.raises(ArtifactError, match=rf"^{uri}: .* need {package} installed$"):
        download(uri, None, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_object_stores_stated_size_over_the_cap_is_refused_before_any_read() -> None:
    with pytest.raises(ArtifactTooLarge, match=r"^s3://b/m is 11 bytes, over the 10-byte limit$"):
        _over_cap("s3://b/m", 11, 10)
    _over_cap("s3://b/m", 10, 10)  # at the cap
    _over_cap("s3://b/m", None, 10)  # no size stated: the copy loop counts
    _over_cap("s3://b/m", 11, None)  # no cap


def test_an_object_stores_socket_timeout_never_outlasts_the_deadline() -> None:
    assert _socket_timeout(60.0, None) == 60.0
    assert 4.0 < _socket_timeout(60.0, Deadline.after(5.0)) <= 5.0
    assert _socket_timeout(2.0, Deadline.after(5.0)) == 2.0
    assert _socket_timeout(60.0, Deadline(5.0, time.monotonic() - 1)) == 0.001  # passed


class Unbuffered(io.RawIOBase):
    """A body with no read1 (as botocore's StreamingBody), serving `data` in small reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data[self.served : self.served + 7]
        buffer[: len(chunk)] = chunk
        self.served += len(chunk)
        return len(chunk)


def test_a_stream_over_the_cap_stops_at_the_cap_without_writing_past_it() -> None:
    """What an object store sends beyond a wrong (or missing) stated size is not written."""
    source, out = Unbuffered(b"x" * 1000), io.BytesIO()
    with pytest.raises(ArtifactTooLarge, match="over the 100-byte limit"):
        _copy_capped(source, out, "s3://b/m", 100, Deadline.after(60))
    assert len(out.getvalue()) <= 100
