"""Every kind's spec fits its annotation budget (docs/annotation-size.md), proven from the
checked-in CRDs by rtml.api.size, whose bound is checked against real encoders here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from rtml.api import Experiment, FeatureView, Model
from rtml.api.common import map_keys
from rtml.api.size import (
    UnboundedSchemaError,
    char_cost,
    fields_by_size,
    max_json_bytes,
    pattern_alphabet,
    spec_schema,
    text_bytes,
    unbounded_fields,
)
from tests.unit.helpers import DIGEST, model

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
BUDGET = 100 * 1024  # each of Kopf's and kubectl's copies; 56 KiB left for the rest


def kopf_bytes(value: Any) -> int:
    """What Kopf's AnnotationsDiffBaseStorage writes for `value` (its newline aside)."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def checked_in_spec(file: str) -> dict[str, Any]:
    return spec_schema(yaml.safe_load((REPO / "crds" / file).read_text()))


@pytest.mark.parametrize(
    "file", ["models.rtml.dev.yaml", "featureviews.rtml.dev.yaml", "experiments.rtml.dev.yaml"]
)
def test_every_kinds_worst_case_spec_fits_the_budget(file: str) -> None:
    schema = checked_in_spec(file)
    assert unbounded_fields(schema, "spec") == []
    assert max_json_bytes(schema, "spec") <= BUDGET


def test_the_fields_of_a_spec_add_up_to_its_bound() -> None:
    schema = checked_in_spec("models.rtml.dev.yaml")
    top = {path: size for path, size in fields_by_size(schema) if "." not in path}
    assert list(top) == list(schema["properties"])
    punctuation = 2 + len(top) - 1 + sum(text_bytes(name) + 1 for name in top)
    assert sum(top.values()) + punctuation == max_json_bytes(schema)
    assert max(top, key=lambda name: top[name]) == "features"


def test_the_bound_of_a_free_string_is_what_kopf_writes_for_astral_characters() -> None:
    schema = {"type": "string", "maxLength": 3}
    assert max_json_bytes(schema) == kopf_bytes("\U0001f600" * 3) == 2 + 3 * 12
    # A pattern that admits the Basic Multilingual Plane only: 6 bytes, \u2028 costs that in
    # Kopf's and Go's writer alike.
    bmp = {**schema, "pattern": r"^[ -~\x{A0}-\x{FFFD}]*$"}
    assert max_json_bytes(bmp) == kopf_bytes("\u2028" * 3) == 2 + 3 * 6


def test_the_bound_of_an_object_is_attained_by_its_largest_instance() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 4, "pattern": "^[a-z]+$"},
            "mode": {"type": "string", "enum": ["on", "off"]},
            "count": {"type": "integer", "minimum": -50, "maximum": 7},
            "big": {"type": "integer"},
            "on": {"type": "boolean"},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 1}},
            "env": {
                "type": "object",
                "maxProperties": 2,
                "x-kubernetes-validations": [map_keys(3, "^[a-z]+$", "a word")],
                "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 99},
            },
        },
    }
    largest = {
        "name": "abcd",
        "mode": "off",
        "count": -50,
        "big": -(2**63),
        "on": False,
        "tags": ["\U0001f600", "\U0001f600"],
        "env": {"abc": 99, "xyz": 10},
    }
    assert max_json_bytes(schema) == kopf_bytes(largest)


def test_a_pattern_narrows_the_alphabet_only_as_far_as_it_is_understood() -> None:
    assert char_cost(pattern_alphabet(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")) == 1
    assert char_cost(pattern_alphabet(r"^[ !#-%'-;=?-\[\]-~]+$")) == 1  # no " \ < > &
    assert char_cost(pattern_alphabet(r'^[a-z"]+$')) == 2  # \"
    assert char_cost(pattern_alphabet(r"^[a-z&]+$")) == 6  # Go's \u0026
    for wide in (r"^.+$", r"^[^a]+$", r"^\S+$", r"^\p{L}+$", r"^(?i)a$", r"^[a-"):
        assert char_cost(pattern_alphabet(wide)) == 12, wide


def test_every_unbounded_field_is_named() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ok": {"type": "string", "maxLength": 3},
            "note": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string", "maxLength": 1}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "blob": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "nested": {"type": "object", "properties": {"deep": {"type": "string"}}},
        },
    }
    with pytest.raises(UnboundedSchemaError) as err:
        max_json_bytes(schema, "spec")
    named = [field.split(":")[0] for field in err.value.fields]
    assert named == [
        "spec.note",
        "spec.items",
        "spec.labels.*",
        "spec.labels.*",
        "spec.labels",
        "spec.blob",
        "spec.nested.deep",
    ]
    assert "spec.note: a string without maxLength or enum" in str(err.value)


def test_a_field_added_without_a_bound_to_a_real_spec_is_found() -> None:
    schema = checked_in_spec("models.rtml.dev.yaml")
    env = schema["properties"]["runtime"]["properties"]["env"]["items"]["properties"]
    env["value"] = {"type": "string"}
    assert unbounded_fields(schema, "spec") == [
        "spec.runtime.env[].value: a string without maxLength or enum"
    ]


def test_map_keys_count_only_with_the_rule_that_bounds_them() -> None:
    schema = checked_in_spec("models.rtml.dev.yaml")
    requests = schema["properties"]["runtime"]["properties"]["resources"]["properties"]["requests"]
    del requests["x-kubernetes-validations"]
    (found,) = unbounded_fields(schema, "spec")
    assert found.startswith("spec.runtime.resources.requests.*: map keys without a rule")


def test_a_feature_default_is_bounded_as_a_scalar_only() -> None:
    schema = checked_in_spec("featureviews.rtml.dev.yaml")
    default = schema["properties"]["features"]["items"]["properties"]["default"]
    assert (default["maxItems"], default["maxProperties"]) == (0, 0)
    del default["maxProperties"]
    (found,) = unbounded_fields(schema, "spec")
    assert found.startswith("spec.features[].default: x-kubernetes-preserve-unknown-fields")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"runtime": {"env": [{"name": "A", "value": "x" * 257}]}}, "value"),
        ({"runtime": {"env": [{"name": f"E{i}"} for i in range(17)]}}, "env"),
        ({"features": {"requestFeatures": [f"f{i}" for i in range(257)]}}, "requestFeatures"),
        ({"features": {"columns": [f"f{i}" for i in range(257)]}}, "columns"),
        ({"features": {"columns": ["a" * 64]}}, "columns.0"),
        ({"features": {"requestFeatures": ["a&b"]}}, "requestFeatures.0"),
        ({"features": {"entityKey": "größe"}}, "entityKey"),
        ({"artifact": {"uri": "s3://b/\U0001f600.onnx", "sha256": "a" * 64}}, "uri"),
        ({"runtime": {"image": "registry.local/rtml runtime:1"}}, "image"),
        ({"runtime": {"resources": {"limits": {"no such/resource/name": "1"}}}}, "limits"),
    ],
)
def test_the_models_refuse_what_the_crd_refuses_naming_the_field(
    spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as err:
        model(**spec)
    assert field in str(err.value)


def test_the_largest_names_and_values_within_the_bounds_are_accepted() -> None:
    m = model(
        features={
            "entityKey": "petal length (cm)",
            "requestFeatures": [f"{i:03d}" + "x" * 60 for i in range(256)],
            "columns": [f"{i:03d}" + "x" * 60 for i in range(256)],
        },
        output={"name": "dense/Sigmoid:0"},
        runtime={
            "image": "registry.local:5000/rtml/runtime@sha256:" + "0" * 64,
            "env": [{"name": f"E{i}", "value": "\u2028é\n" * 85} for i in range(8)],
            "resources": {"limits": {"nvidia.com/gpu": "1", "hugepages-2Mi": "64Mi"}},
        },
        # Decisions at their bounds: what each writer spends most on (`&&`, `<`, `>`).
        rules=[
            {
                "name": f"r{i}" + "x" * 61,
                "expression": "request.amount > 1.0 && features.n < 2.0" + " && true" * 19,
                "severity": "high",
                "reason": "r" * 128,
            }
            for i in range(8)
        ],
        ensemble={
            "models": [
                {
                    "name": f"m{i}",
                    "version": "v" * 63,
                    "artifact": {"uri": "https://b/m?a=1&b=2" + "&" * 493, "sha256": DIGEST},
                    "weight": 1000,
                }
                for i in range(2)
            ],
            "minHealthy": 3,
        },
        decision={
            "thresholds": [
                {"minScore": i, "action": "block", "riskLevel": "high"} for i in range(4)
            ]
        },
    )
    assert m.spec.runtime.env[0].value.startswith("\u2028")
    assert len(m.spec.rules) == 8
    assert m.spec.ensemble is not None
    view = FeatureView.model_validate(
        {
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": [
                    {"name": f"f{i}", "dtype": "STRING", "default": "ü" * 32} for i in range(256)
                ],
                "source": {"type": "push"},
            }
        }
    )
    assert len(view.spec.features) == 256
    with pytest.raises(ValidationError, match="default"):
        FeatureView.model_validate(
            {
                "spec": {
                    **view.model_dump(by_alias=True)["spec"],
                    "features": [{"name": "f", "dtype": "STRING", "default": "x" * 33}],
                }
            }
        )
    experiment = Experiment.model_validate(
        {
            "spec": {
                "modelRef": "fraud",
                "strategy": "canary",
                "stickyKey": "user id",
                "candidate": {"version": "v2", "artifact": {"uri": "s3://b/m", "sha256": DIGEST}},
            }
        }
    )
    assert experiment.spec.sticky_key == "user id"
    assert isinstance(m, Model)
