"""The ranking form of /predict_batch, its pure parts: the request read and checked, filters,
top-K order, and the key of the per-request result cache.

A body with a top-level entity id (or `topK` / `filters`) is a ranking request: N candidates for
one entity, scored with one feature read and one model call (engine.Runtime.rank does the I/O).
Why one call: per row, the batch form pays a feature read, a breaker check and a model call; a
ranking request shares the entity's stored features across candidates, so the read is the same
for every row and the model's per-call overhead is paid once (docs/ranking.md has the numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtml_runtime.errors import bad_input

MAX_FILTERS = 32  # business filters, not a query language: a bound on per-row work
FILTER_OPS = ("min", "max", "equals", "in")
MAX_IN_VALUES = 1000
INSTANCE_KEYS = frozenset({"id", "features"})


@dataclass(frozen=True, slots=True)
class Filter:
    """Keep a candidate only when its (merged) `feature` passes every bound given."""

    feature: str
    min: float | None = None
    max: float | None = None
    equals: float | None = None
    within: frozenset[float] | None = None  # `in`

    def keeps(self, values: Mapping[str, Any]) -> bool:
        """A missing or non-numeric value fails: a filter asks for a value it can check."""
        value = values.get(self.feature)
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.min is not None and value < self.min:
            return False
        if self.max is not None and value > self.max:
            return False
        if self.equals is not None and value != self.equals:
            return False
        return self.within is None or value in self.within


@dataclass(frozen=True, slots=True)
class RankRequest:
    top_k: int | None
    filters: tuple[Filter, ...]
    ids: list[Any]  # one per instance, None where the instance has no id


def is_ranking(payload: Mapping[str, Any], entity_fields: Collection[str]) -> bool:
    """A top-level entity id, topK or filters make the body a ranking request."""
    return "topK" in payload or "filters" in payload or any(k in payload for k in entity_fields)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_input(f"{field} must be a finite number", field)
    return value


def parse_top_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_input("topK must be a whole number of at least 1", "topK")
    return value


def parse_filters(value: Any, features: Collection[str]) -> tuple[Filter, ...]:
    """`filters` checked: each names a known feature and at least one of min, max, equals, in."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_input("filters must be a list of {feature, min|max|equals|in}", "filters")
    if len(value) > MAX_FILTERS:
        raise bad_input(f"at most {MAX_FILTERS} filters are allowed", "filters")
    return tuple(_parse_filter(f, f"filters[{i}]", features) for i, f in enumerate(value))


def _parse_filter(raw: Any, where: str, features: Collection[str]) -> Filter:
    if not isinstance(raw, dict):
        raise bad_input(f"{where} must be an object {{feature, min|max|equals|in}}", where)
    for key in raw:
        if key != "feature" and key not in FILTER_OPS:
            raise bad_input(
                f"{where} has an unknown key {key!r}; a filter takes feature and "
                f"{', '.join(FILTER_OPS)}",
                f"{where}.{key}",
            )
    name = raw.get("feature")
    if not isinstance(name, str) or name not in features:
        raise bad_input(
            f"{where}.feature must name one of this model's features: {sorted(features)}",
            f"{where}.feature",
        )
    if not any(op in raw for op in FILTER_OPS):
        raise bad_input(f"{where} needs one of {', '.join(FILTER_OPS)}", where)
    bounds = {op: _number(raw[op], f"{where}.{op}") for op in ("min", "max", "equals") if op in raw}
    within: frozenset[float] | None = None
    if "in" in raw:
        listed = raw["in"]
        if not isinstance(listed, list) or not listed or len(listed) > MAX_IN_VALUES:
            raise bad_input(
                f"{where}.in must be a list of 1 to {MAX_IN_VALUES} numbers", f"{where}.in"
            )
        within = frozenset(_number(v, f"{where}.in[{j}]") for j, v in enumerate(listed))
    return Filter(name, bounds.get("min"), bounds.get("max"), bounds.get("equals"), within)


def instance_id(instance: Mapping[str, Any], where: str) -> Any:
    """The candidate's `id` (a string or an integer) or None; other keys are refused."""
    for key in instance:
        if key not in INSTANCE_KEYS:
            raise bad_input(
                f"a ranking instance takes only id and features, not {key!r} (the entity id "
                "is given once, at the top level)",
                f"{where}.{key}",
            )
    value = instance.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise bad_input("id must be a string or an integer", f"{where}.id")
    return value


def ranked(scores: Sequence[float], top_k: int | None) -> list[int]:
    """Positions into `scores`: best first and cut to `top_k`, or all in order without one.
    Ties keep instance order (a stable sort); a NaN score goes last."""
    order = range(len(scores))
    if top_k is None:
        return list(order)
    best = sorted(order, key=lambda i: (math.isnan(scores[i]), -scores[i]))
    return best[:top_k]


def cache_key(payload: Any, variant: str, version: str) -> str:
    """The body as canonical JSON, with who answers it (a plan change must not serve the
    previous variant's answer)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return f"{variant}\0{version}\0{body}"
