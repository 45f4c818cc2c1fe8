"""The leader election's pieces that need no API server (the election itself runs against a
real one in tests/integration/test_leader_election.py)."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest

from rtml.operator.leader import (
    ElectionSettings,
    StandbyHealth,
    default_identity,
    default_namespace,
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_standby_answers_its_health_endpoint_until_closed() -> None:
    url = f"http://127.0.0.1:{_port()}/healthz"
    health = StandbyHealth(url)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
            assert json.loads(r.read()) == {"standby": True}
    finally:
        health.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_identity_and_namespace_come_from_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "rtml-operator-7c9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "rtml-system")
    assert default_identity() == "rtml-operator-7c9f-abcde"
    assert default_namespace() == "rtml-system"
    monkeypatch.delenv("POD_NAME")
    assert default_identity().endswith(f"-{os.getpid()}")


def test_a_standby_takes_over_within_a_lease_and_a_retry() -> None:
    s = ElectionSettings("ns", "me")
    # client-go's defaults, and the library's own constraints on them.
    assert (s.lease_seconds, s.renew_deadline_seconds, s.retry_seconds) == (15, 10, 2)
    assert s.lease_seconds > s.renew_deadline_seconds > 1.2 * s.retry_seconds
