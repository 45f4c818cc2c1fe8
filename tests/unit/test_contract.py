"""The contract's pure parts: credentials never reach a rendered object in clear, the rendered
argv is the one the runtime's CLI accepts, and settings name the variable they refuse."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.contract import (
    RUNTIME_ENTRYPOINT,
    FeastProfile,
    FeastSecretRef,
    RuntimeSettings,
    SettingsError,
    credentials_problem,
    load_settings,
    runtime_args,
)
from rtml.operator.render import RenderContext, render_model_children
from rtml.operator.render.cronjob import render_materialization_cronjob
from rtml.operator.settings import OperatorSettings
from rtml_runtime.cli import serve

pytestmark = pytest.mark.unit
PASSWORD = "rEd1s-pa55-given-as-a-secret"
REGISTRY = "postgresql+psycopg://feast:pg-pa55-in-the-dsn@postgres.rtml.svc/feast"
SECRET = FeastSecretRef(name="feast-credentials")


def view(source: str = "file") -> dict[str, Any]:
    src = {"type": source, "path": "s3://b/f.parquet"} if source == "file" else {"type": "push"}
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "cards", "namespace": "team-a", "uid": "v-1"},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": [{"name": "amount", "dtype": "FLOAT"}],
            "source": src,
        },
    }


def model(backend: str) -> Model:
    return Model.model_validate(
        {
            "metadata": {"name": "fraud", "namespace": "team-a", "uid": "m-1"},
            "spec": {
                "version": "v1",
                "backend": backend,
                "artifact": {"uri": "s3://models/fraud.onnx", "sha256": "a" * 64},
                "features": {"featureViewRef": "cards"},
            },
        }
    )


def context() -> RenderContext:
    profile = FeastProfile(
        kind="redis",
        redis_url="redis://redis.rtml.svc:6379/0",
        redis_password=PASSWORD,
        registry=REGISTRY,
        path="/var/lib/rtml/feast",
    )
    return RenderContext(feast=profile, feast_secret=SECRET)


@pytest.mark.parametrize("backend", ["bentoml", "kserve"])
@pytest.mark.parametrize("source", ["file", "push"])
def test_credentials_appear_in_no_rendered_object(backend: str, source: str) -> None:
    ctx = context()
    objects = render_model_children(model(backend), ctx, view(source))
    objects.append(render_materialization_cronjob(FeatureView.model_validate(view(source)), ctx))
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "CronJob"} <= kinds
    assert kinds & {"Deployment", "InferenceService"}
    text = yaml.safe_dump_all(objects)
    assert PASSWORD not in text
    assert "pg-pa55" not in text
    # ...but each container that talks to Redis gets it by reference to the chart's Secret.
    refs = [e for o in objects for e in _envs(o) if "valueFrom" in e]
    password_ref = {"secretKeyRef": {"name": SECRET.name, "key": "redis-password"}}
    assert {"name": "RTML_FEAST_REDIS_PASSWORD", "valueFrom": password_ref} in refs
    registry_refs = {o["kind"] for o in objects for e in _envs(o)
                     if e["name"] == "RTML_FEAST_REGISTRY"}  # fmt: skip
    # The registry: the CronJob always; a predictor only when it takes pushed rows.
    assert "CronJob" in registry_refs
    assert len(registry_refs) == (2 if source == "push" else 1)


def _envs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "env" in node and "image" in node:
                found.extend(node["env"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(obj)
    return found


def test_a_model_without_features_gets_no_feast_env() -> None:
    m = Model.model_validate(
        {
            "metadata": {"name": "plain", "namespace": "ns"},
            "spec": {"version": "v1", "artifact": {"uri": "s3://m/x.onnx", "sha256": "b" * 64}},
        }
    )
    (deployment,) = [o for o in render_model_children(m, context()) if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert not any(e["name"].startswith("RTML_FEAST_") for e in container["env"])
    assert container["args"] == runtime_args()
    assert "command" not in container


def test_the_rendered_args_are_what_the_runtime_cli_accepts(tmp_path: Any) -> None:
    """`serve --config`, rendered once, was accepted by no entry point: parse the real args."""
    assert RUNTIME_ENTRYPOINT == ("rtml",)
    args = runtime_args(config_path=str(tmp_path / "model.json"))
    (tmp_path / "model.json").write_text("{}")
    ctx = serve.make_context("serve", args[1:])
    assert ctx.params["config"] == tmp_path / "model.json"
    assert (ctx.params["host"], ctx.params["port"], ctx.params["register"]) == (
        "0.0.0.0",  # noqa: S104 - what a pod listens on
        8080,
        False,
    )


def test_serve_refuses_a_bad_variable_by_name(tmp_path: Any) -> None:
    (tmp_path / "model.json").write_text("{}")
    result = CliRunner().invoke(
        serve, [str(tmp_path / "model.json")], env={"RTML_CACHE_TTL_SECONDS": "soon"}
    )
    assert result.exit_code == 1
    assert "RTML_CACHE_TTL_SECONDS: Input should be a valid number" in result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RTML_FEAST_STORE": "postgres"}, "RTML_FEAST_STORE"),
        ({"RTML_FEAST_REDIS_URL": "http://redis"}, "RTML_FEAST_REDIS_URL"),
        ({"RTML_FEAST_REGISTRY_CACHE_TTL_SECONDS": "-1"}, "RTML_FEAST_REGISTRY_CACHE_TTL_SECONDS"),
    ],
)
def test_feast_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=rf"^{named}: "):
        load_settings(FeastProfile)


def test_runtime_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_REGISTER", "1")
    monkeypatch.setenv("RTML_MAX_BODY_BYTES", "2048")
    settings = load_settings(RuntimeSettings)
    assert (settings.register_features, settings.max_body_bytes) == (True, 2048)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RTML_FEAST_REDIS_URL": "redis://:pw@redis:6379/0"}, "carries a password"),
        ({"RTML_FEAST_REDIS_PASSWORD": "pw"}, "RTML_FEAST_SECRET"),
        ({"RTML_FEAST_REGISTRY": REGISTRY}, "RTML_FEAST_SECRET"),
    ],
)
def test_the_operator_refuses_credentials_it_would_write_in_clear(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.load()
    monkeypatch.setenv("RTML_FEAST_SECRET", "feast-credentials")
    if "carries a password" in message:
        assert credentials_problem(load_settings(FeastProfile), SECRET) is not None
    else:
        settings = OperatorSettings.load()
        assert settings.render_context().feast_secret == SECRET


def test_operator_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_RESYNC_SECONDS", "forever")
    with pytest.raises(SettingsError, match=r"^RTML_RESYNC_SECONDS: "):
        OperatorSettings.load()


@pytest.mark.parametrize("backend", ["bentoml", "kserve"])
@pytest.mark.parametrize(
    ("source", "secret", "expected"),
    [
        ("push", "push-token", {"secretKeyRef": {"name": "push-token", "key": "token"}}),
        ("push", None, None),  # no Secret named: the runtime's /push stays off (403)
        ("file", "push-token", None),  # a view nobody pushes to needs no token
    ],
)
def test_a_push_views_predictor_reads_the_push_token_from_the_secret(
    backend: str, source: str, secret: str | None, expected: dict[str, Any] | None
) -> None:
    ctx = RenderContext(push_token_secret=secret, push_token_secret_key="token")
    objects = render_model_children(model(backend), ctx, view(source))
    refs = [e.get("valueFrom") for o in objects for e in _envs(o) if e["name"] == "RTML_PUSH_TOKEN"]
    assert refs == ([expected] if expected else [])
    assert RuntimeSettings.model_fields["push_token"].default is None


@pytest.mark.parametrize("backend", ["bentoml", "kserve"])
def test_an_audited_models_pods_read_the_audit_redis_url_from_the_operators_secret(
    backend: str,
) -> None:
    ref = {"secretKeyRef": {"name": "audit", "key": "url"}}
    ctx = RenderContext(audit_secret="audit", audit_secret_key="url")

    def with_spec(**extra: Any) -> Model:
        body = model(backend).model_dump(by_alias=True, exclude_none=True)
        body["spec"].update(extra)
        return Model.model_validate(body)

    def refs(m: Model, c: RenderContext) -> list[Any]:
        envs = [e for o in render_model_children(m, c, view()) for e in _envs(o)]
        return [e.get("valueFrom") for e in envs if e["name"] == "RTML_AUDIT_REDIS_URL"]

    audited = with_spec(audit={}, stream={})
    # The predictor (or KServe's predictor) and the stream consumer, each by reference.
    assert refs(audited, ctx) == [ref, ref]
    assert refs(with_spec(stream={}), ctx) == []  # not audited: nothing to write
    assert refs(audited, RenderContext()) == []  # no Secret named: the online store's Redis
    own = with_spec(audit={}, stream={}, runtime={"env": [
        {"name": "RTML_AUDIT_REDIS_URL", "value": "redis://audit:6379"}]})  # fmt: skip
    assert refs(own, ctx) == [None, None]  # the Model's own setting, not a second one
    assert RuntimeSettings.model_fields["audit_redis_url"].default is None
