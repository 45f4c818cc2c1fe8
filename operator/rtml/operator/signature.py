"""FeaturesResolved: does the Model's ONNX artifact fit its FeatureView? (the operator's side)

The rules are `rtml.api.signature.check_signature`, the same the runtime enforces at start-up.
Here the artifact is read only when the operator can reach it (an absolute `file://` path on
its own filesystem, or `http(s)://` from a host `artifactFetchHosts` allows); only the graph's
inputs are parsed, the download is size-capped and verified, and results are kept by sha256 so
each artifact is read once.

Downloads never run in a reconcile: they go to a small pool of their own, each under an overall
deadline, and the reconcile returns at once with FeaturesResolved Unknown (`ArtifactChecking`,
which holds the rollout). When the download settles, the Models waiting on it are woken
(`SignatureCache.wake`) and find the result; a failure is remembered for `retry_after_s`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rtml.api.common import ArtifactRef
from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.api.signature import check_signature, describe
from rtml.artifacts import (
    ArtifactError,
    ArtifactTooLarge,
    Deadline,
    DigestMismatch,
    download,
    sha256_of,
    verify,
)
from rtml.onnx_inputs import OnnxGraph, OnnxSignatureError, onnx_graph
from rtml.operator.artifact_cache import clean_cache_dir
from rtml.operator.artifact_fetch import FetchGuard, FetchRefused
from rtml.operator.artifact_hosts import fetch_refusal
from rtml.operator.conditions import Cond, Status, get_condition
from rtml.operator.errors import describe_validation_error
from rtml.operator.status import feature_view_not_found

if TYPE_CHECKING:
    from rtml.operator.settings import OperatorSettings

log = logging.getLogger("rtml.operator.signature")
MAX_BYTES = 64 << 20
RUNTIME_ENFORCES = "the runtime enforces the same check at start-up"
Signature = OnnxGraph
ModelKey = tuple[str, str, str]  # namespace, name, uid: a Model to wake when a download settles


class ArtifactUnreachableError(Exception):
    """The operator cannot read the artifact; the runtime, which can, will check it."""


class ArtifactUnreadableError(Exception):
    """The bytes are the right ones but are not an ONNX model."""


class ArtifactCheckingError(Exception):
    """The artifact is being downloaded for the check; the reconcile does not wait for it."""


@dataclass(frozen=True)
class _Failure:
    """A download's outcome other than a signature, remembered until `until` (clock time)."""

    kind: type[Exception]
    message: str
    until: float


@dataclass
class SignatureCache:
    """Downloaded artifacts (`DIGEST.onnx` in `directory`) and their parsed inputs, by sha256,
    and the downloads under way. The defaults fetch nothing over the network (`fetch_hosts`
    empty); `configure` applies the operator's settings at start-up."""

    directory: Path
    max_bytes: int = MAX_BYTES
    timeout_s: float = 30.0  # one download's overall deadline (all of it, not one read)
    fetch_hosts: tuple[str, ...] = ()  # artifactFetchHosts
    retry_after_s: float = 300.0  # how long a failed download is remembered
    max_files: int = 16  # kept in `directory`, the least recently used deleted first
    max_cache_bytes: int = 64 << 20
    workers: int = 2
    executor: Executor | None = None  # default: a pool of `workers` threads of its own
    wake: Callable[[list[ModelKey]], None] | None = None  # Models whose download settled
    clock: Callable[[], float] = time.monotonic
    _parsed: dict[str, Signature] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _in_flight: dict[str, set[ModelKey]] = field(default_factory=dict, repr=False)
    _failed: dict[str, _Failure] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls) -> SignatureCache:
        default = Path(tempfile.gettempdir()) / "rtml-signatures"
        return cls(Path(os.environ.get("RTML_SIGNATURE_CACHE_DIR") or default))

    def configure(
        self,
        settings: OperatorSettings,
        wake: Callable[[list[ModelKey]], None] | None = None,
    ) -> None:
        """The operator's settings, applied once at start-up before any reconcile; cleans the
        folder (what a previous process left: old digests, `.part` files of cut downloads)."""
        self.directory = settings.signature_cache_dir or self.directory
        self.fetch_hosts = tuple(settings.artifact_fetch_hosts)
        self.timeout_s = settings.artifact_fetch_deadline_seconds
        self.max_bytes = settings.artifact_fetch_max_bytes
        self.retry_after_s = settings.artifact_fetch_retry_seconds
        self.workers = settings.artifact_fetch_workers
        self.max_files = settings.signature_cache_max_files
        self.max_cache_bytes = settings.signature_cache_max_bytes
        self.wake = wake
        self._clean()

    def _clean(self) -> None:
        try:
            clean_cache_dir(self.directory, self.max_files, self.max_cache_bytes, self.timeout_s)
        except OSError as e:  # a folder the operator may not list: the check says so itself
            log.warning("could not clean the artifact cache", extra={"error": str(e)})

    def _pool(self) -> Executor:
        with self._lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="rtml-artifact-fetch"
                )
            return self.executor

    def close(self) -> None:
        """On SIGTERM (the operator's drain): queued downloads never start; one under way
        ends by its deadline or with the process (rtml.operator.shutdown)."""
        with self._lock:
            executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def parsed(self, digest: str) -> Signature | None:
        with self._lock:
            return self._parsed.get(digest)

    def parse(self, digest: str, path: Path) -> Signature:
        """The inputs of the verified file `path` whose sha256 is `digest`."""
        found = self.parsed(digest)
        if found is not None:
            return found
        try:
            signature = onnx_graph(path, self.max_bytes)
        except OnnxSignatureError as e:
            raise ArtifactUnreadableError(str(e)) from e
        with self._lock:
            self._parsed[digest] = signature
        return signature

    def fetched(self, uri: str, digest: str, waiter: ModelKey | None = None) -> Signature:
        """The inputs of the artifact at `uri` whose sha256 must be `digest`, once downloaded.

        Raises the remembered failure of a recent download, or ArtifactCheckingError while one
        is under way (starting it if none is): `waiter` is woken when it settles."""
        with self._lock:
            now = self.clock()
            failure = self._failed.get(digest)
            if failure is not None and failure.until <= now:
                del self._failed[digest]
            waiting = self._in_flight.get(digest)
            start = waiting is None and digest not in self._failed
            if start:
                waiting = self._in_flight[digest] = set()
            if waiting is not None and waiter is not None:
                waiting.add(waiter)
        if start:
            self._pool().submit(self._download, uri, digest)
        found = self.parsed(digest)  # a synchronous executor has settled it already
        if found is not None:
            return found
        with self._lock:
            failure = self._failed.get(digest)
        if failure is not None:
            raise failure.kind(failure.message)
        raise ArtifactCheckingError(
            f"the operator is downloading {uri} to read its ONNX inputs (for at most "
            f"{self.timeout_s:g} s); the rollout waits for the check"
        )

    def _download(self, uri: str, digest: str) -> None:
        """In the fetch pool: download, verify and parse, keep the outcome for the next
        reconcile, and wake the Models waiting on it."""
        deadline = Deadline.after(self.timeout_s)
        guard = FetchGuard(self.fetch_hosts, deadline)
        failure: tuple[type[Exception], str] | None = None
        try:
            with guard:
                path, _ = download(
                    uri,
                    digest,
                    self.directory,
                    max_bytes=self.max_bytes,
                    timeout_s=self.timeout_s,
                    deadline=deadline,
                    opener=guard.opener(),
                )
            self.parse(digest, path)
        except DigestMismatch as e:
            # A body cut short by the deadline's watchdog is not a wrong artifact.
            late = f"{uri} was not downloaded within its {self.timeout_s:g} s deadline"
            failure = (
                (ArtifactUnreachableError, late) if guard.expired else (DigestMismatch, str(e))
            )
        except (ArtifactTooLarge, ArtifactUnreadableError) as e:
            failure = (type(e), str(e))
        except FetchRefused as e:  # the host resolved to an address the policy refuses
            failure = (ArtifactUnreachableError, f"{uri}: {e}")
        except ArtifactError as e:
            failure = (ArtifactUnreachableError, str(e))
        except (ImportError, OSError) as e:
            # No onnx package in the operator's image, or a full or read-only cache folder.
            failure = (ArtifactUnreachableError, f"the operator could not read {uri}: {e}")
        except Exception as e:  # a bug must not leave the digest "in flight" for ever
            log.exception("the artifact check failed", extra={"uri": uri})
            failure = (ArtifactUnreachableError, f"the operator could not check {uri}: {e}")
        with self._lock:
            waiting = self._in_flight.pop(digest, set())
            now = self.clock()
            self._failed = {k: f for k, f in self._failed.items() if f.until > now}
            if failure is not None:
                kind, message = failure
                if kind is ArtifactUnreachableError:
                    message = f"{message}; the operator tries again after {self.retry_after_s:g} s"
                self._failed[digest] = _Failure(kind, message, now + self.retry_after_s)
        if failure is not None:
            log.warning("artifact check failed", extra={"uri": uri, "error": failure[1]})
        self._clean()
        if waiting and self.wake is not None:
            try:
                self.wake(sorted(waiting))
            except Exception:  # the resync still comes
                log.exception("could not wake the Models waiting on an artifact")


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


def _remote(
    uri: str, expected: str | None, cache: SignatureCache, waiter: ModelKey | None
) -> Signature:
    refusal = fetch_refusal(urllib.parse.urlsplit(uri).hostname or "", cache.fetch_hosts)
    if refusal is not None:
        raise ArtifactUnreachableError(f"{uri}: {refusal}")
    if expected is None:  # the Model opted out (allowUnverified): nothing to pin a download to
        raise ArtifactUnreachableError(f"{uri} has no sha256; the operator fetches pinned ones")
    found = cache.parsed(expected)
    if found is not None:
        return found
    kept = cache.directory / f"{expected}.onnx"
    if kept.is_file() and sha256_of(kept) == expected:
        os.utime(kept)  # used: the cache deletes the least recently used first
        return cache.parse(expected, kept)
    return cache.fetched(uri, expected, waiter)


def read_signature(
    artifact: ArtifactRef, cache: SignatureCache, waiter: ModelKey | None = None
) -> Signature:
    """The artifact's graph inputs and declared feature names, if the operator can reach it;
    ArtifactCheckingError while it is being downloaded (`waiter` is woken once it is)."""
    parts = urllib.parse.urlsplit(artifact.uri)
    if parts.scheme == "file":
        raw = urllib.parse.unquote(parts.netloc + parts.path)
        return _local(artifact.uri, raw, artifact.sha256, cache)
    if parts.scheme in ("http", "https"):
        return _remote(artifact.uri, artifact.sha256, cache, waiter)
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


def _signature(
    artifact: ArtifactRef, cache: SignatureCache, waiter: ModelKey | None = None
) -> Signature | Cond:
    """The artifact's inputs, or the condition saying why they cannot be read."""
    try:
        return read_signature(artifact, cache, waiter)
    except ArtifactCheckingError as e:
        return _resolved("Unknown", "ArtifactChecking", str(e))
    except ArtifactTooLarge as e:
        return _resolved("Unknown", "ArtifactTooLarge", f"{e} of the operator; {RUNTIME_ENFORCES}")
    except ArtifactUnreachableError as e:
        return _resolved("Unknown", "ArtifactUnreachable", f"{e}; {RUNTIME_ENFORCES}")
    except (DigestMismatch, ArtifactUnreadableError) as e:
        reason = "ArtifactDigestMismatch" if isinstance(e, DigestMismatch) else "ArtifactUnreadable"
        return _resolved("False", reason, str(e))
    except (ImportError, OSError) as e:
        # No onnx package in the operator's image, or a full or read-only cache folder.
        return _resolved(
            "Unknown",
            "ArtifactUnreachable",
            f"the operator could not read {artifact.uri}: {e}; {RUNTIME_ENFORCES}",
        )


def while_checking(checking: Cond, previous: dict[str, Any] | None, generation: int | None) -> Cond:
    """FeaturesResolved while the artifact is being downloaded: the last verdict, if it was
    given for this very spec (a restarted operator, an evicted cache file: checking it again is
    no news, and Unknown would flip Ready on every such Model at each restart); otherwise
    `checking`, which holds a new spec until it is judged."""
    last = get_condition((previous or {}).get("conditions"), "FeaturesResolved")
    if last is None or generation is None or last.get("observedGeneration") != generation:
        return checking
    status = last.get("status")
    if status not in ("True", "False", "Unknown") or not last.get("reason"):
        return checking
    return Cond("FeaturesResolved", status, str(last["reason"]), str(last.get("message") or ""))


def check_model_signature(
    model: Model,
    view_body: dict[str, Any] | None,
    cache: SignatureCache,
    previous: dict[str, Any] | None = None,
) -> Cond:
    """The Model's FeaturesResolved condition (API.md); False means: do not roll it out.
    `previous`: the Model's status, whose verdict stands while the artifact is re-checked."""
    binding = model.spec.features
    ref = binding.feature_view_ref if binding is not None else None
    view: FeatureView | Cond | None = None
    if ref is not None:
        view = _view(ref, view_body) if view_body is not None else feature_view_not_found(ref)
    if isinstance(view, Cond):
        return view
    meta = model.metadata
    signature = _signature(model.spec.artifact, cache, (meta.namespace, meta.name, meta.uid or ""))
    if isinstance(signature, Cond) and signature.reason == "ArtifactChecking":
        return while_checking(signature, previous, meta.generation)
    if isinstance(signature, Cond):
        return signature
    request_features = list(binding.request_features) if binding is not None else []
    mismatches = check_signature(
        signature.inputs,
        view,
        request_features,
        signature.declared,
        columns=model.spec.feature_columns,
        outputs=signature.outputs,
        output=model.spec.output_choice,
    )
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
