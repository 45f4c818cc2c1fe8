"""The runtime's configuration: the resolved Model spec, the FeatureView it reads, where from.

Two sources, one shape: the operator's ConfigMap (`RTML_CONFIG`, JSON with the fully defaulted
spec) in a pod, or a Model manifest (with its FeatureView in the same file or folder) for
`rtml serve` on one machine. Relative `file://` paths resolve against the manifest's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.contract import FeastProfile, RuntimeSettings


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and field."""


@dataclass(frozen=True)
class RuntimeConfig:
    model: Model
    feature_view: FeatureView | None
    base_dir: Path
    # The process's settings (defaults when built in code: no environment read here).
    store: FeastProfile = field(default_factory=FeastProfile.model_construct)
    settings: RuntimeSettings = field(default_factory=RuntimeSettings.model_construct)

    @property
    def name(self) -> str:
        return self.model.metadata.name

    @property
    def version(self) -> str:
        return self.model.spec.version

    @property
    def entity_key(self) -> str | None:
        """The request field holding the entity id: spec.features.entityKey, else the join key."""
        binding = self.model.spec.features
        if binding and binding.entity_key:
            return binding.entity_key
        return self.feature_view.spec.entity.join_key if self.feature_view else None


def _read_yaml_docs(path: Path) -> list[dict[str, Any]]:
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    docs: list[dict[str, Any]] = []
    for f in files:
        try:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read {f}: {e}") from e
    return docs


def _describe(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())


def load_manifest(path: Path, model_name: str | None = None, **overrides: Any) -> RuntimeConfig:
    """A Model manifest (and the FeatureView it references, from the same file or folder)."""
    docs = _read_yaml_docs(path)
    models = [d for d in docs if d.get("kind") == "Model"]
    if model_name:
        models = [d for d in models if (d.get("metadata") or {}).get("name") == model_name]
    if len(models) != 1:
        which = f" named {model_name!r}" if model_name else ""
        raise ConfigError(
            f"{path} must hold exactly one Model{which}; found {len(models)} "
            "(pass --model NAME to choose)"
        )
    try:
        model = Model.model_validate({k: v for k, v in models[0].items() if k != "status"})
    except ValidationError as e:
        raise ConfigError(f"the Model in {path} is invalid: {_describe(e)}") from e
    view = _find_view(model, [d for d in docs if d.get("kind") == "FeatureView"], str(path))
    base = path if path.is_dir() else path.parent
    return RuntimeConfig(model=model, feature_view=view, base_dir=base.resolve(), **overrides)


def _find_view(model: Model, docs: list[dict[str, Any]], where: str) -> FeatureView | None:
    binding = model.spec.features
    if binding is None or binding.feature_view_ref is None:
        return None
    for d in docs:
        if (d.get("metadata") or {}).get("name") == binding.feature_view_ref:
            try:
                return FeatureView.model_validate({k: v for k, v in d.items() if k != "status"})
            except ValidationError as e:
                name = binding.feature_view_ref
                raise ConfigError(
                    f"FeatureView {name!r} in {where} is invalid: {_describe(e)}"
                ) from e
    raise ConfigError(
        f"spec.features.featureViewRef names FeatureView {binding.feature_view_ref!r}, "
        f"which is not in {where}"
    )


def load_resolved(path: Path, **overrides: Any) -> RuntimeConfig:
    """The operator's resolved config (the ConfigMap's model.json)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the resolved config {path}: {e}") from e
    try:
        model = Model.model_validate(
            {
                "metadata": {"name": body["name"], "namespace": body.get("namespace", "default")},
                "spec": body["spec"],
            }
        )
        view = FeatureView.model_validate(body["featureView"]) if body.get("featureView") else None
    except (KeyError, ValidationError) as e:
        detail = _describe(e) if isinstance(e, ValidationError) else f"missing {e}"
        raise ConfigError(f"the resolved config {path} is invalid: {detail}") from e
    return RuntimeConfig(
        model=model,
        feature_view=view,
        base_dir=path.parent.resolve(),
        **overrides,
    )


def load_config(settings: RuntimeSettings, store: FeastProfile) -> RuntimeConfig:
    """From `settings.config`: JSON is the operator's resolved config, YAML a manifest."""
    if settings.config is None:
        raise ConfigError("no configuration: pass a Model manifest or set RTML_CONFIG")
    overrides = {"store": store, "settings": settings}
    if settings.config.suffix == ".json":
        return load_resolved(settings.config, **overrides)
    return load_manifest(settings.config, settings.model, **overrides)
