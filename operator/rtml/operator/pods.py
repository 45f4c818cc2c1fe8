"""pod_problem: a Model's pods (as the API server returns them) -> why one is not ready, in words.

Pure. Reads only pod and container *status* fields (states, reasons, exit codes, condition
messages, and the kubelet's termination message, the tail of a crashed container's log:
render/container.py sets `terminationMessagePolicy: FallbackToLogsOnError`). Never the spec, so
no environment value can end up in a Model's status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TERMINATION_MESSAGE_MAX = 300
# Waiting reasons that are just a container on its way up, not a problem.
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
# How telling each kind of problem is: the highest wins, then the first pod by name.
_FAILING, _UNSCHEDULABLE, _RESTARTING, _UNREADY, _STARTING_UP = 5, 4, 3, 2, 1


def pod_problem(pods: Iterable[dict[str, Any]]) -> str | None:
    """The most telling problem among the pods, `pod NAME: DETAIL`; None when none has one.

    Terminating pods are skipped (a rollout or a scale-down deletes them on purpose). Pods of
    equal weight are taken in name order, so the same pods always give the same words and a
    reconcile that changes nothing writes no status.
    """
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        problem = _one_pod(pod.get("status") or {})
        if problem is not None:
            found.append((-problem[0], str(meta.get("name", "?")), problem[1]))
    if not found:
        return None
    _, name, detail = min(found)
    return f"pod {name}: {detail}"


def pod_serving(pod: dict[str, Any]) -> bool:
    """Ready and not terminating: the pod takes traffic from its Service."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _one_pod(st: dict[str, Any]) -> tuple[int, str] | None:
    phase = st.get("phase")
    if phase in ("Failed", "Succeeded"):  # e.g. evicted; the ReplicaSet has replaced it
        return _STARTING_UP, _join(st.get("reason") or phase, st.get("message"))
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    statuses = [("init container", c) for c in st.get("initContainerStatuses") or []]
    statuses += [("container", c) for c in st.get("containerStatuses") or []]
    found = [f for f in (_one_container(what, cs) for what, cs in statuses) if f is not None]
    scheduled = conds.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        reason = scheduled.get("reason") or "NotScheduled"
        found.append((_UNSCHEDULABLE, _join(reason, scheduled.get("message"))))
    ready = conds.get("Ready") or {}
    if not found and ready.get("status") == "False":
        detail = _join("not ready", ready.get("message") or ready.get("reason"))
        found.append((_STARTING_UP, detail))
    elif not found and ready.get("status") != "True":
        found.append((_STARTING_UP, phase or "Pending"))
    # The first of the heaviest: containers in the pod's order.
    return max(found, key=lambda f: f[0], default=None)


def _one_container(what: str, cs: dict[str, Any]) -> tuple[int, str] | None:
    name = f"{what} {cs.get('name', '?')}"
    state = cs.get("state") or {}
    restarts = int(cs.get("restartCount") or 0)
    last = _last_exit((cs.get("lastState") or {}).get("terminated"))
    if waiting := state.get("waiting"):
        return _waiting(name, waiting, restarts, last)
    terminated = state.get("terminated")
    done = what == "init container" and terminated and terminated.get("exitCode") == 0
    if terminated and not done:
        return _FAILING, f"{name} terminated: {_last_exit(terminated, 'exit code')}"
    if terminated or cs.get("ready") or what == "init container" or not state.get("running"):
        return None
    if cs.get("started") is False:
        weight, detail = _STARTING_UP, f"{name} is starting: startup probe not passed yet"
    else:
        weight, detail = _UNREADY, f"{name} not ready: readiness probe failing"
    if restarts and last:  # running again after a crash or a liveness kill
        return _RESTARTING, f"{detail} ({_restarts(restarts)}); {last}"
    return weight, detail


def _waiting(
    name: str, waiting: dict[str, Any], restarts: int, last: str | None
) -> tuple[int, str]:
    reason = waiting.get("reason") or "Waiting"
    if reason in _STARTING:
        return _STARTING_UP, f"{name} is waiting: {reason}"
    if reason == "CrashLoopBackOff":
        # Its own message ("back-off 40s restarting failed container=...") says nothing new.
        detail = f"{name} is waiting: {reason} ({_restarts(restarts)})"
    else:
        detail = _join(f"{name} is waiting: {reason}", waiting.get("message"))
    return _FAILING, f"{detail}; {last}" if last else detail


def _last_exit(terminated: dict[str, Any] | None, label: str = "last exit code") -> str | None:
    if not terminated:
        return None
    out = f"{label} {terminated.get('exitCode', '?')}"
    reason = terminated.get("reason")
    if reason and reason not in ("Error", "Completed"):
        out += f" ({reason})"
    message = _log_tail(terminated.get("message"))
    return f"{out}: {message}" if message else out


def _log_tail(message: str | None, limit: int = TERMINATION_MESSAGE_MAX) -> str:
    """The last lines of a log tail that fit in `limit` characters, on one line."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + (3 if kept else 0) > limit:
            break
        kept.insert(0, line)
        size += len(line) + (3 if len(kept) > 1 else 0)
    if not kept and lines:  # one line longer than the limit: keep its end
        return "..." + lines[-1][-(limit - 3) :]
    text = " | ".join(kept)
    return f"... | {text}" if len(kept) < len(lines) else text


def _restarts(n: int) -> str:
    return f"{n} restart" if n == 1 else f"{n} restarts"


def _join(head: str, message: str | None) -> str:
    message = " ".join((message or "").split())
    return f"{head}: {message}" if message else head
