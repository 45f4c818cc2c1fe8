"""The API server's audit log: how the scale suite counts the operator's requests.

Why the audit log and not the API server's `apiserver_request_total`: the metric has no user
label, so its PATCH/POST/PUT/DELETE counters also count what kube-controller-manager writes at
the same time (ReplicaSets, Pods, Deployment and HPA status, Events), and while 1,000 Models
roll out that is thousands of writes the operator did not make. The audit log names the user of
every request, so the operator runs with a client certificate of its own (OPERATOR_USER) and
only its requests are logged (Metadata level: verb, resource, status code, timestamps; no
bodies). The log backend runs in its default blocking mode: a request's event is on disk when
its answer is sent, so a count taken after the last answer misses nothing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

OPERATOR_USER = "rtml-bench-operator"
# Kubernetes verbs of the HTTP methods POST, PUT, PATCH, DELETE.
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
HTTP_METHOD = {
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}


def audit_policy() -> dict[str, Any]:
    """Every request of OPERATOR_USER at Metadata level, once it is answered; nothing else."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "Metadata", "users": [OPERATOR_USER]},
            {"level": "None"},
        ],
    }


def apiserver_flags(policy: Path, log: Path) -> list[str]:
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={log}",
        "--audit-log-format=json",
        # One file for the whole run: 0 is not "never" but the log library's default, 100 MB,
        # and 1,000 Models wrote more than that in 15 minutes.
        "--audit-log-maxsize=100000",
    ]


@dataclass(frozen=True)
class Request:
    """One answered request of the operator."""

    at: float  # when it was answered (stageTimestamp), seconds since the epoch
    verb: str
    resource: str  # e.g. "deployments", "models/status"
    code: int

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def label(self) -> str:
        return f"{HTTP_METHOD.get(self.verb, self.verb)} {self.resource}"


def parse_event(line: str) -> Request | None:
    """The request an audit event line records, or None (another user, a watch still open)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if event.get("stage") != "ResponseComplete":
        return None
    if (event.get("user") or {}).get("username") != OPERATOR_USER:
        return None
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "?")
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return Request(
        at=datetime.fromisoformat(event["stageTimestamp"]).timestamp(),
        verb=event.get("verb", "?"),
        resource=resource,
        code=int((event.get("responseStatus") or {}).get("code", 0)),
    )


class AuditTail:
    """Reads the audit log as it grows; `requests` holds the operator's answered requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.requests: list[Request] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    raise RuntimeError(f"{self.path} was rotated: the count would miss events")
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # an event not fully written yet
        for line in lines:
            request = parse_event(line.decode(errors="replace"))
            if request is not None:
                self.requests.append(request)

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in self.requests if start <= r.at < end]

    def last_write(self) -> float | None:
        return max((r.at for r in self.requests if r.write), default=None)


def summarise(requests: list[Request]) -> dict[str, Any]:
    """Writes and reads, each broken down by method and resource (most frequent first)."""
    writes = [r for r in requests if r.write]
    reads = [r for r in requests if not r.write]
    return {
        "writes": len(writes),
        "reads": len(reads),
        "writes_by_request": dict(Counter(r.label for r in writes).most_common()),
        "reads_by_request": dict(Counter(r.label for r in reads).most_common()),
        "write_codes": dict(Counter(str(r.code) for r in writes).most_common()),
    }
