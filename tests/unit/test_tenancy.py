"""Tenancy: a Model's image and service account against the operator's settings, and the status
a refused spec gets (not rolled out, the running pods keep serving, Stalled)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rtml.operator.conditions import get_condition
from rtml.operator.reconcile import reconcile_model
from rtml.operator.render.context import RenderContext
from rtml.operator.settings import OperatorSettings
from rtml.operator.status import Observed, compute_model_status
from rtml.operator.tenancy import image_allowed, tenancy_problem
from tests.unit.helpers import model

pytestmark = pytest.mark.unit
CHART_DEFAULT = ("localhost/rtml-runtime", "localhost/rtml-runtime:*", "localhost/rtml-runtime@*")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("image", "patterns", "allowed"),
    [
        ("localhost/rtml-runtime:0.1.0", CHART_DEFAULT, True),
        ("localhost/rtml-runtime", CHART_DEFAULT, True),
        ("localhost/rtml-runtime@sha256:" + "a" * 64, CHART_DEFAULT, True),
        ("localhost/rtml-runtime-evil:1", CHART_DEFAULT, False),  # a longer repository name
        ("localhost/rtml-runtime/x:1", CHART_DEFAULT, False),
        ("docker.io/someone/miner:latest", CHART_DEFAULT, False),
        ("LOCALHOST/rtml-runtime:1", CHART_DEFAULT, False),  # references are case-sensitive
        ("docker.io/someone/miner:latest", ("*",), True),
        ("registry.corp/ml/runtime:2", ("registry.corp/ml/*",), True),
        ("anything", (), False),
    ],
)
def test_image_patterns(image: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert image_allowed(image, patterns) is allowed


@pytest.mark.parametrize(
    ("runtime", "patterns", "allow_sa", "reason"),
    [
        ({}, CHART_DEFAULT, False, None),  # the operator's own image is not checked
        ({"image": "localhost/rtml-runtime:0.2.0"}, CHART_DEFAULT, False, None),
        ({"image": "docker.io/x/y:1"}, CHART_DEFAULT, False, "ImageNotAllowed"),
        ({"image": "docker.io/x/y:1"}, ("*",), False, None),
        ({"serviceAccountName": "admin"}, ("*",), False, "ServiceAccountNotAllowed"),
        ({"serviceAccountName": "admin"}, ("*",), True, None),
        # Both wrong: the image is said first, the next reconcile says the rest.
        (
            {"image": "docker.io/x/y:1", "serviceAccountName": "a"},
            CHART_DEFAULT,
            False,
            "ImageNotAllowed",
        ),
    ],
)
def test_tenancy_problem(
    runtime: dict[str, Any], patterns: tuple[str, ...], allow_sa: bool, reason: str | None
) -> None:
    problem = tenancy_problem(model(runtime=runtime), patterns, allow_sa)
    assert (problem.reason if problem else None) == reason
    if problem is not None:
        assert (problem.type, problem.status) == ("Ready", "False")
        field = "image" if reason == "ImageNotAllowed" else "serviceAccountName"
        setting = (
            "RTML_ALLOWED_RUNTIME_IMAGES"
            if reason == "ImageNotAllowed"
            else "RTML_ALLOW_SERVICE_ACCOUNT_NAME"
        )
        assert f"spec.runtime.{field}" in problem.message
        assert setting in problem.message


def test_the_settings_default_to_any_image_and_no_service_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RTML_ALLOWED_RUNTIME_IMAGES", "RTML_ALLOW_SERVICE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    ctx = OperatorSettings.load().render_context()
    assert ctx.allowed_runtime_images == ("*",)
    assert ctx.allow_service_account_name is False
    assert ctx.network_policy is True


def test_the_settings_read_the_chart_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_ALLOWED_RUNTIME_IMAGES", '["localhost/rtml-runtime:*"]')
    monkeypatch.setenv("RTML_ALLOW_SERVICE_ACCOUNT_NAME", "true")
    monkeypatch.setenv("RTML_NETWORK_POLICY", "false")
    monkeypatch.setenv("RTML_PUSH_TOKEN_SECRET", "push")
    monkeypatch.setenv("RTML_AUDIT_SECRET", "audit")
    ctx = OperatorSettings.load().render_context()
    assert ctx.allowed_runtime_images == ("localhost/rtml-runtime:*",)
    assert ctx.allow_service_account_name is True
    assert ctx.network_policy is False
    assert (ctx.push_token_secret, ctx.push_token_secret_key) == ("push", "push-token")
    assert (ctx.audit_secret, ctx.audit_secret_key) == ("audit", "audit-redis-url")


def running_deployment() -> dict[str, Any]:
    """The previous spec's Deployment, fully available."""
    return {
        "metadata": {"generation": 4},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 4,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
        },
    }


def test_a_refused_spec_is_not_rolled_out_and_stalls() -> None:
    m = model(version="v2", runtime={"image": "docker.io/x/y:1"})
    refused = tenancy_problem(m, CHART_DEFAULT, False)
    assert refused is not None
    obs = Observed(deployment=running_deployment(), refused=refused)
    previous = {"activeVersion": "v1"}
    status = compute_model_status(m, obs, previous, RenderContext(), NOW)
    conds = {c: get_condition(status["conditions"], c) or {} for c in ("Ready", "Stalled")}
    rolled = get_condition(status["conditions"], "RolledOut") or {}
    assert status["phase"] == "Failed"
    assert status["activeVersion"] == "v1"  # what runs is still the previous spec
    for c in (conds["Ready"], rolled):
        assert (c["status"], c["reason"]) == ("False", "ImageNotAllowed")
        assert "the running pods keep serving" in c["message"]
        assert "spec.runtime.image" in c["message"]
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "ImageNotAllowed")


class RecordingClient:
    """An API server with nothing in it that records what reconcile_model writes."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.status: dict[str, Any] = {}

    def serves(self, api_version: str, kind: str) -> bool:
        return True

    def list_in(self, *_: Any) -> list[dict[str, Any]]:
        return []

    def list_owned(self, *_: Any) -> list[dict[str, Any]]:
        return []

    def list_selected(self, *_: Any) -> list[dict[str, Any]]:
        return []

    def get(self, *_: Any) -> dict[str, Any] | None:
        return None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj["kind"])
        return obj

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append(kind)

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status

    def event(self, *_: Any, **__: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("runtime", "applies"),
    [
        ({"image": "docker.io/x/y:1"}, False),
        ({"serviceAccountName": "admin"}, False),
        ({"image": "localhost/rtml-runtime:0.1.0"}, True),
    ],
)
def test_reconcile_applies_nothing_for_a_refused_spec(
    runtime: dict[str, Any], applies: bool
) -> None:
    body = model(runtime=runtime).model_dump(mode="json", by_alias=True, exclude_none=True)
    client = RecordingClient()
    ctx = RenderContext(allowed_runtime_images=CHART_DEFAULT)
    reconcile_model(client, body, ctx)  # type: ignore[arg-type]
    assert bool(client.applied) is applies
    assert not client.deleted
    ready = get_condition(client.status["conditions"], "Ready") or {}
    assert (ready["reason"] in ("ImageNotAllowed", "ServiceAccountNotAllowed")) is not applies
