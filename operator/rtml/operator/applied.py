"""What this operator process last applied to each child, so a reconcile that would change
nothing writes nothing (issue 12: 1,000 Models, "0 writes in a no-op resync").

Server-side apply of an unchanged object changes nothing, but it is still a write request the
API server decodes, merges, diffs and audits: 7 per Model per reconcile, and every child event
(a pod turning ready, a Deployment's status) reconciled the Model again. Measured before this
(benchmarks `--suite scale`): 50 Models, one resync round, 350 PATCHes and 0 objects changed.

A child is skipped when both hold:
- the object to apply is byte-for-byte (canonical JSON) what this process applied last, and
- the child is still as that apply left it: the newest version the watch
  (`handlers.child_changed`) has seen has the same uid and the same content — everything but
  `status` and the server's bookkeeping in `metadata` (labels, annotations and owners count):
  a controller writing a Deployment's or an HPA's status does not count, a hand edit does.
Anything else — first sight after a start, a hand edit, a deletion, a kind that is not
watched — applies as before. Memory only: a restarted or newly elected operator applies
everything once. Rejected: reading each child back before applying (a GET per child per
reconcile is as many requests as it saves), and hashing into an annotation on the child (a
hand edit that keeps the annotation would then never be reverted).

The watch is what makes skipping safe: if it stalls, the liveness probe restarts the operator
(docs/outages.md) and this memory goes with it; Kopf's re-list after a reconnect refreshes it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The child kinds the operator watches (handlers.child_changed): only their versions are known.
OBSERVED_KINDS = frozenset(
    {
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    }
)
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


@dataclass(frozen=True)
class Version:
    """A child's identity and spec version; `order` is its resourceVersion as a number (the
    API server's are etcd revisions), so an older event never replaces a newer one."""

    marker: str
    order: int


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (
        str(obj.get("apiVersion", "")),
        str(obj.get("kind", "")),
        str(meta.get("namespace") or ""),
        str(meta.get("name", "")),
    )


def _version(obj: Mapping[str, Any] | None) -> Version | None:
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("metadata") or {}
    uid, rv = meta.get("uid"), meta.get("resourceVersion")
    if not uid or not rv:
        return None
    try:
        order = int(rv)
    except ValueError:
        return None  # not an etcd revision: no ordering, so never skip on it
    return Version(f"{uid}/{digest(_content(obj))}", order)


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What an apply sets and a controller's status write leaves alone: everything but `status`
    and the server's bookkeeping in `metadata`. (Not `generation`: an HPA has none, and the
    HPA controller rewrites its status every few seconds while metrics are missing; 1,000
    Models' HPAs were re-applied in a loop that way.)"""
    meta = obj.get("metadata") or {}
    kept = {k: meta.get(k) for k in ("labels", "ownerReferences")}
    # Annotations Kubernetes' own controllers add (deployment.kubernetes.io/revision, set after
    # the Deployment's creation) are theirs: counting them made every Deployment's first
    # reconcile after that annotation re-apply it (616 writes in one no-op resync of 1,000).
    kept["annotations"] = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.split("/")[0].endswith(("kubernetes.io", "k8s.io"))
    }
    rest = {k: v for k, v in obj.items() if k not in ("status", "metadata", "apiVersion", "kind")}
    return {"metadata": kept, **rest}


def digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Applied:
    """Thread-safe: Kopf runs sync handlers in a pool, and child events arrive on the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._applied: dict[Key, tuple[str, str]] = {}  # key -> (digest, marker after apply)
        self._seen: dict[Key, Version] = {}
        self._pruned: dict[str, frozenset[Key]] = {}  # Model uid -> children pruned against

    def unchanged(self, desired: Mapping[str, Any]) -> bool:
        """Whether applying `desired` now would only repeat the last apply of it."""
        key = _key(desired)
        if (key[0], key[1]) not in OBSERVED_KINDS:
            return False
        with self._lock:
            last, seen = self._applied.get(key), self._seen.get(key)
        return last is not None and seen is not None and last == (digest(desired), seen.marker)

    def record(self, desired: Mapping[str, Any], result: Mapping[str, Any] | None) -> None:
        """`desired` was applied and the API server answered `result` (the object after it)."""
        key, version = _key(desired), _version(result)
        with self._lock:
            if version is None:
                self._applied.pop(key, None)
                return
            self._applied[key] = (digest(desired), version.marker)
            self._note(key, version)

    def observe(self, obj: Mapping[str, Any], deleted: bool = False) -> bool:
        """A watch event (or the initial listing) showed `obj`; `deleted`: it is gone.

        Returns whether `obj` is exactly as this process last applied it (its own write coming
        back, or a controller writing the child's status): nothing its owner must react to.
        False whenever that is not known (a first sight, an apply whose answer is not recorded
        yet): the caller then reconciles, which is always safe."""
        if "apiVersion" not in obj or "kind" not in obj:
            return False
        key = _key(obj)
        if (key[0], key[1]) not in OBSERVED_KINDS:
            return False
        with self._lock:
            if deleted:
                self._seen.pop(key, None)
                self._applied.pop(key, None)
                # A child gone (by hand, or by the garbage collector after its Model): its
                # Model's next reconcile lists what is left, and a deleted Model's entry goes.
                for owner in (obj.get("metadata") or {}).get("ownerReferences") or ():
                    self._pruned.pop(str(owner.get("uid", "")), None)
                return False
            version = _version(obj)
            if version is None:
                return False
            self._note(key, version)
            applied = self._applied.get(key)
            return applied is not None and applied[1] == version.marker

    def forget(self, obj: Mapping[str, Any]) -> None:
        """An apply of `obj` failed or its outcome is unknown: apply it next time."""
        with self._lock:
            self._applied.pop(_key(obj), None)

    def pruned(self, model_uid: str, desired: list[dict[str, Any]]) -> bool:
        """Whether the Model's children were pruned against this same set of desired children
        already: only the operator creates objects it owns, so nothing new can be left over
        (one label-selected LIST per owned kind saved on every reconcile)."""
        with self._lock:
            return self._pruned.get(model_uid) == frozenset(map(_key, desired))

    def mark_pruned(self, model_uid: str, desired: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pruned[model_uid] = frozenset(map(_key, desired))

    def _note(self, key: Key, version: Version) -> None:
        current = self._seen.get(key)
        if current is None or version.order >= current.order:
            self._seen[key] = version

    def __len__(self) -> int:
        with self._lock:
            return len(self._applied)
