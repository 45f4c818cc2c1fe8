"""rtml.artifacts, the one fetch-and-verify of the runtime, the operator and `rtml validate`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rtml.artifacts import (
    ArtifactError,
    DigestMismatch,
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
