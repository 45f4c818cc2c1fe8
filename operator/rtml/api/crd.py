"""Generate the CustomResourceDefinitions in crds/ from the typed models.

Pydantic's JSON Schema is close to what the API server wants; this module turns it into a
*structural* OpenAPI v3 schema: references inlined, optionals unwrapped, every node typed,
whole sub-objects defaulted so their own defaults apply (not one whose field defaults to None),
and the CEL rules and list semantics that the models carry in ``json_schema_extra`` kept.
"""

from __future__ import annotations

from typing import Any

import yaml

from rtml import GROUP, VERSION
from rtml.api.common import ApiModel
from rtml.api.experiment import Experiment
from rtml.api.featureview import FeatureView
from rtml.api.model import Model

KINDS: tuple[type[ApiModel], ...] = (Model, FeatureView, Experiment)

READY = '.status.conditions[?(@.type=="Ready")].status'
PRINTER_COLUMNS: dict[str, list[dict[str, str | int]]] = {
    "Model": [
        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
        {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
        {"name": "Ready", "type": "string", "jsonPath": READY},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {
            "name": "SLO",
            "type": "integer",
            "jsonPath": ".spec.slo.p99LatencyMs",
            "description": "p99 latency objective in milliseconds",
        },
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "FeatureView": [
        {"name": "Entity", "type": "string", "jsonPath": ".spec.entity.name"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.type"},
        {"name": "Ready", "type": "string", "jsonPath": READY},
        {"name": "Materialized", "type": "date", "jsonPath": ".status.lastMaterialization"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "Experiment": [
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef"},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.candidateWeight"},
        {"name": "Verdict", "type": "string", "jsonPath": ".status.lastVerdict"},
        {"name": "Ready", "type": "string", "jsonPath": READY, "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _unwrap_optional(node: dict[str, Any]) -> dict[str, Any]:
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(non_null) == 1:
        return {**non_null[0], **rest}
    # A scalar of several types (a feature default): let the CEL rule on the parent judge it.
    return {**rest, "x-kubernetes-preserve-unknown-fields": True, "_untyped": True}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    node = _resolve(node, defs)
    if node.get("x-kubernetes-any-scalar"):
        return _any_scalar(node)
    node = _resolve(_unwrap_optional(node), defs)
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node and "enum" not in out:  # a one-value Literal: an enum of one
        out["enum"] = [node["const"]]
    out.update({k: v for k, v in node.items() if k.startswith("x-kubernetes-")})
    # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 as a flag on the bound.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[flag] = out.pop(bound)
            out[bound] = True
    if node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        if props:
            out["properties"] = {}
            for name, sub in props.items():
                child = structural(sub, defs)
                always_present = (
                    child.get("type") == "object"
                    and "properties" in child
                    and "default" not in child
                    and name not in node.get("required", [])
                    and _all_optional(sub, defs)
                    # `X | None = None`: absent means absent (spec.decision, spec.audit switch
                    # behaviour on by being there; a {} default would switch it on for all).
                    and not ("default" in sub and sub["default"] is None)
                )
                if always_present:
                    # The full default, not {}: the API server checks CEL rules against it.
                    child["default"] = {
                        k: v["default"] for k, v in child["properties"].items() if "default" in v
                    }
                out["properties"][name] = child
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = structural(node["additionalProperties"], defs)
    elif node.get("type") == "array":
        out["items"] = structural(node["items"], defs)
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _any_scalar(node: dict[str, Any]) -> dict[str, Any]:
    """A number, string or boolean (a feature's default): untyped for the API server, which
    cannot say "one of these types", yet bounded: its string branch's length and characters,
    and no list or object (maxItems, maxProperties 0) in place of a scalar."""
    out = {k: v for k, v in node.items() if k == "description"}
    for option in node.get("anyOf", []):
        if option.get("type") == "string":
            out.update({k: v for k, v in option.items() if k in ("maxLength", "pattern")})
    return {**out, "maxItems": 0, "maxProperties": 0, "x-kubernetes-preserve-unknown-fields": True}


def _all_optional(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    node = _resolve(_unwrap_optional(_resolve(node, defs)), defs)
    # Only sub-objects that the spec always has (no anyOf-null wrapper) and that need no input.
    return not node.get("required") and not node.get("_untyped")


def _status_and_spec_schema(kind: type[ApiModel]) -> dict[str, Any]:
    schema = kind.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    props = schema["properties"]
    spec = structural(props["spec"], defs)
    status = structural(props["status"], defs)
    status.pop("default", None)
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def render_crd(kind: type[ApiModel]) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind."""
    extra: Any = kind.model_config.get("json_schema_extra")
    names = dict(extra["x-rtml-kind"])
    names["listKind"] = f"{names['kind']}List"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "rtml"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[names["kind"]],
                    "schema": {"openAPIV3Schema": _status_and_spec_schema(kind)},
                }
            ],
        },
    }


def crd_files(keep: bool = False) -> dict[str, str]:
    """File name -> YAML text, exactly as checked in under crds/; with `keep`, as the rtml-crds
    chart's templates (annotated so `helm uninstall` leaves the CRDs, and every object of
    their kinds, in place)."""
    header = "# Generated by `rtml crds` from rtml.api; do not edit by hand.\n"
    out = {}
    for kind in KINDS:
        crd = render_crd(kind)
        if keep:
            crd["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
        out[f"{crd['metadata']['name']}.yaml"] = header + yaml.safe_dump(
            crd, sort_keys=False, width=100
        )
    return out
