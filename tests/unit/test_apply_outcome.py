"""How reconcile_model sorts what the API server answers while applying a Model's children."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from rtml.operator.reconcile import _apply_all

pytestmark = pytest.mark.unit
SERVICE = {"kind": "Service", "metadata": {"name": "scorer"}}


class Refusing:
    """Answers every apply with one status and the API server's JSON body."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        self.applied: list[str] = []

    def apply(self, obj: dict[str, Any]) -> None:
        self.applied.append(obj["metadata"]["name"])
        e = ApiException(status=self.status, reason="refused")
        e.body = json.dumps({"kind": "Status", "message": self.message})
        raise e


def test_a_server_failure_is_said_in_its_words_and_handed_back_for_a_retry() -> None:
    client = Refusing(500, "failed to allocate a serviceIP: range is full")
    out = _apply_all(client, [SERVICE, {"kind": "ConfigMap", "metadata": {"name": "later"}}])  # type: ignore[arg-type]
    assert out.problem is None
    assert out.failing is not None
    assert out.failing.reason == "ApplyFailing"
    assert out.failing.message == (
        "the API server could not apply Service scorer (500): failed to allocate a serviceIP: "
        "range is full; retrying"
    )
    assert out.error is not None
    assert out.error.status == 500
    assert client.applied == ["scorer"]  # stops at the first failure


def test_a_refusal_is_the_users_to_fix_and_not_an_error_to_retry() -> None:
    out = _apply_all(Refusing(403, "exceeded quota: one-service"), [SERVICE])  # type: ignore[arg-type]
    assert out.problem is not None
    assert out.problem.reason == "ApplyRejected"
    assert out.failing is None
    assert out.error is None


def test_a_conflict_is_raised_for_the_handler_to_go_again() -> None:
    with pytest.raises(ApiException):
        _apply_all(Refusing(409, "the object has been modified"), [SERVICE])  # type: ignore[arg-type]
