"""Objects checked against a CRD's structural schema (openAPIV3Schema) without an API server.

What the API server checks of an object's shape, for the keywords the upstream CRDs the chart
targets use (the Prometheus Operator's PodMonitor and PrometheusRule): `type` (with
`x-kubernetes-int-or-string`), `properties` with unknown fields refused (the server prunes them
and, with field validation Strict as kubectl's default, refuses), `additionalProperties`,
`x-kubernetes-preserve-unknown-fields`, `required`, `enum`, `pattern`, `minLength`,
`maxLength`, `minimum`, `maximum`, `minItems`, `maxItems`, `items`, `anyOf`, `format: int32`,
and map-type lists' unique keys. CEL rules (`x-kubernetes-validations`) are not evaluated:
`crd_keywords` lets a test make sure a schema has none it would miss.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CHECKED = {
    "type", "properties", "additionalProperties", "required", "enum", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "minItems", "maxItems", "items", "anyOf", "format",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    # Documentation or server-side behaviour, nothing to check of a manifest's shape.
    "description", "default", "x-kubernetes-map-type", "nullable",
}  # fmt: skip
INT32 = (-(2**31), 2**31 - 1)


def crd_schema(path: Path, kind: str, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of `kind`'s `version` in the CRD file at `path`."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            if doc["spec"]["names"]["kind"] != kind:
                continue
            for v in doc["spec"]["versions"]:
                if v["name"] == version:
                    return dict(v["schema"]["openAPIV3Schema"])
    raise LookupError(f"no {kind} {version} in {path}")


def crd_keywords(schema: dict[str, Any]) -> set[str]:
    """Every keyword the schema uses, nested ones included."""
    found: set[str] = set()

    def walk(s: Any) -> None:
        if not isinstance(s, dict):
            return
        found.update(s)
        for sub in (s.get("properties") or {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            walk(s.get(key))
        for sub in s.get("anyOf") or []:
            walk(sub)

    walk(schema)
    return found


def _type_ok(value: Any, type_: str) -> bool:
    if type_ == "object":
        return isinstance(value, dict)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise ValueError(f"unknown type {type_!r}")


def validate(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Every way `value` breaks `schema`, as 'path: problem' (nothing when it fits)."""
    where = path or "<root>"
    alternatives = [] if schema.get("x-kubernetes-int-or-string") else schema.get("anyOf") or []
    if alternatives and all(
        list(validate(value, {**schema, **alt, "anyOf": None}, path)) for alt in alternatives
    ):
        yield f"{where}: matches none of anyOf"
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            yield f"{where}: {value!r} is neither an integer nor a string"
        return
    type_ = schema.get("type")
    if type_ and not _type_ok(value, type_):
        yield f"{where}: {value!r} is not of type {type_}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{where}: {value!r} does not match {schema['pattern']}"
        if len(value) < schema.get("minLength", 0):
            yield f"{where}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield f"{where}: longer than {schema['maxLength']}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{where}: {value} < {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{where}: {value} > {schema['maximum']}"
        if schema.get("format") == "int32" and not INT32[0] <= value <= INT32[1]:
            yield f"{where}: {value} is not an int32"
    if isinstance(value, list):
        yield from _validate_list(value, schema, path)
    if isinstance(value, dict):
        yield from _validate_object(value, schema, path)


def _validate_list(value: list[Any], schema: dict[str, Any], path: str) -> Iterator[str]:
    where = path or "<root>"
    if len(value) < schema.get("minItems", 0):
        yield f"{where}: fewer than {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield f"{where}: more than {schema['maxItems']} items"
    for i, item in enumerate(value):
        yield from validate(item, schema.get("items") or {}, f"{path}[{i}]")
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") == "map" and keys:
        seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
        if len(seen) != len(set(seen)):
            yield f"{where}: duplicate keys {keys}"
    if schema.get("x-kubernetes-list-type") == "set" and len(value) != len(
        {repr(v) for v in value}
    ):
        yield f"{where}: duplicate items in a set"


def _validate_object(value: dict[str, Any], schema: dict[str, Any], path: str) -> Iterator[str]:
    where = path or "<root>"
    for name in schema.get("required") or []:
        if name not in value:
            yield f"{where}: {name} is required"
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if properties is not None and key in properties:
            yield from validate(item, properties[key], child)
        elif isinstance(extra, dict):
            yield from validate(item, extra, child)
        elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            yield f"{where}: unknown field {key!r}"
