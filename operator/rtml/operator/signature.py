"""FeaturesResolved: does the Model's ONNX artifact fit its FeatureView? (the operator's side)

The rules are `rtml.api.signature.check_signature`, the same the runtime enforces at start-up.
Here the artifact is read only when the operator can reach it (an absolute `file://` path on
its own filesystem, or `http(s)://`); only the graph's inputs are parsed, the download is
size-capped and verified, and results are kept by sha256 so each artifact is read once.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rtml.api.common import ArtifactRef
from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.api.signature import InputSpec, check_signature, describe
from rtml.artifacts import (
    ArtifactError,
    ArtifactTooLarge,
    DigestMismatch,
    download,
    sha256_of,
    verify,
)
from rtml.onnx_inputs import OnnxSignatureError, onnx_inputs
from rtml.operator.conditions import Cond, Status, get_condition
from rtml.operator.errors import describe_validation_error
from rtml.operator.status import feature_view_not_found

log = logging.getLogger("rtml.operator.signature")
MAX_BYTES = 64 << 20
RUNTIME_ENFORCES = "the runtime enforces the same check at start-up"
Signature = tuple[list[InputSpec], list[str] | None]


class ArtifactUnreachableError(Exception):
    """The operator cannot read the artifact; the runtime, which can, will check it."""


class ArtifactUnreadableError(Exception):
    """The bytes are the right ones but are not an ONNX model."""


@dataclass
class SignatureCache:
    """Downloaded artifacts (`DIGEST.onnx` in `directory`) and their parsed inputs, by sha256."""

    directory: Path
    max_bytes: int = MAX_BYTES
    timeout_s: float = 30.0
    _parsed: dict[str, Signature] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_env(cls) -> SignatureCache:
        default = Path(tempfile.gettempdir()) / "rtml-signatures"
        return cls(Path(os.environ.get("RTML_SIGNATURE_CACHE_DIR") or default))

    def parsed(self, digest: str) -> Signature | None:
        with self._lock:
            return self._parsed.get(digest)

    def parse(self, digest: str, path: Path) -> Signature:
        """The inputs of the verified file `path` whose sha256 is `digest`."""
        found = self.parsed(digest)
        if found is not None:
            return found
        try:
            signature = onnx_inputs(path, self.max_bytes)
        except OnnxSignatureError as e:
            raise ArtifactUnreadableError(str(e)) from e
        with self._lock:
            self._parsed[digest] = signature
        return signature


def _local(uri: str, raw: str, expected: str | None, cache: SignatureCache) -> Signature:
    path = Path(raw)
    if not path.is_absolute():
        raise ArtifactUnreachableError(
            f"{uri} is relative to a manifest folder, which the operator does not have"
        )
    if not path.is_file():
        raise ArtifactUnreachableError(f"{path} does not exist on the operator's filesystem")
    size = path.stat().st_size
    if size > cache.max_bytes:
        raise ArtifactTooLarge(f"{uri} is {size} bytes, over the {cache.max_bytes}-byte limit")
    digest = sha256_of(path)
    verify(uri, digest, expected)
    return cache.parse(digest, path)


def _remote(uri: str, expected: str | None, cache: SignatureCache) -> Signature:
    if expected is not None:
        found = cache.parsed(expected)
        if found is not None:
            return found
        kept = cache.directory / f"{expected}.onnx"
        if kept.is_file() and sha256_of(kept) == expected:
            return cache.parse(expected, kept)
    try:
        path, digest = download(
            uri, expected, cache.directory, max_bytes=cache.max_bytes, timeout_s=cache.timeout_s
        )
    except (ArtifactTooLarge, DigestMismatch):
        raise  # the shared checks' verdicts, turned into conditions by _signature
    except ArtifactError as e:
        raise ArtifactUnreachableError(str(e)) from e
    return cache.parse(digest, path)


def read_signature(artifact: ArtifactRef, cache: SignatureCache) -> Signature:
    """The artifact's graph inputs and declared feature names, if the operator can reach it."""
    parts = urllib.parse.urlsplit(artifact.uri)
    if parts.scheme == "file":
        raw = urllib.parse.unquote(parts.netloc + parts.path)
        return _local(artifact.uri, raw, artifact.sha256, cache)
    if parts.scheme in ("http", "https"):
        return _remote(artifact.uri, artifact.sha256, cache)
    raise ArtifactUnreachableError(
        f"the operator does not fetch {parts.scheme}:// artifacts (only absolute file:// paths "
        "and http(s)://)"
    )


def _resolved(status: Status, reason: str, message: str) -> Cond:
    return Cond("FeaturesResolved", status, reason, message)


def _view(ref: str, body: dict[str, Any]) -> FeatureView | Cond:
    """The view as the runtime will read it, or the condition saying why it cannot be used."""
    try:
        view = FeatureView.model_validate(
            {"metadata": {"name": ref}, "spec": body.get("spec") or {}}
        )
    except ValidationError as e:
        return _resolved(
            "False",
            "FeatureViewInvalid",
            f"FeatureView {ref!r} is invalid: {describe_validation_error(e)}",
        )
    ready = get_condition((body.get("status") or {}).get("conditions"), "Ready")
    if ready is not None and ready.get("status") == "False":
        why = ready.get("message") or ready.get("reason") or "no reason given"
        return _resolved("False", "FeatureViewNotReady", f"FeatureView {ref!r} is not Ready: {why}")
    return view


def _signature(artifact: ArtifactRef, cache: SignatureCache) -> Signature | Cond:
    """The artifact's inputs, or the condition saying why they cannot be read."""
    try:
        return read_signature(artifact, cache)
    except ArtifactTooLarge as e:
        return _resolved("Unknown", "ArtifactTooLarge", f"{e} of the operator; {RUNTIME_ENFORCES}")
    except ArtifactUnreachableError as e:
        return _resolved("Unknown", "ArtifactUnreachable", f"{e}; {RUNTIME_ENFORCES}")
    except DigestMismatch as e:
        return _resolved("False", "ArtifactDigestMismatch", str(e))
    except ArtifactUnreadableError as e:
        return _resolved("False", "ArtifactUnreadable", str(e))
    except (ImportError, OSError) as e:
        # No onnx package in the operator's image, or a full or read-only cache folder.
        return _resolved(
            "Unknown",
            "ArtifactUnreachable",
            f"the operator could not read {artifact.uri}: {e}; {RUNTIME_ENFORCES}",
        )


def check_model_signature(
    model: Model, view_body: dict[str, Any] | None, cache: SignatureCache
) -> Cond:
    """The Model's FeaturesResolved condition (API.md); False means: do not roll it out."""
    binding = model.spec.features
    ref = binding.feature_view_ref if binding is not None else None
    view: FeatureView | Cond | None = None
    if ref is not None:
        view = _view(ref, view_body) if view_body is not None else feature_view_not_found(ref)
    if isinstance(view, Cond):
        return view
    signature = _signature(model.spec.artifact, cache)
    if isinstance(signature, Cond):
        return signature
    inputs, declared = signature
    request_features = list(binding.request_features) if binding is not None else []
    mismatches = check_signature(inputs, view, request_features, declared)
    if mismatches:
        return _resolved(
            "False",
            "SignatureMismatch",
            f"the ONNX model does not fit its features: {describe(mismatches)}",
        )
    ready = get_condition(((view_body or {}).get("status") or {}).get("conditions"), "Ready")
    if ref is not None and (ready is None or ready.get("status") != "True"):
        # No reconciler has judged the view yet (or it is Unknown): not a reason to hold back.
        return _resolved(
            "Unknown",
            "FeatureViewNotReady",
            f"the ONNX inputs fit FeatureView {ref!r}, but the view has not reported Ready yet",
        )
    source = f"FeatureView {ref!r} or the request" if ref is not None else "the request"
    return _resolved(
        "True",
        "SignatureMatches",
        f"every ONNX input of {model.spec.artifact.uri} is a feature of {source}, "
        "with a compatible dtype and shape",
    )
