"""The most bytes of JSON that any object valid under a CRD schema can take. Pure.

Kopf keeps each object's last-handled spec in an annotation and `kubectl apply` keeps the
manifest in another; Kubernetes refuses an object whose annotations add up to more than
256 KiB, so a spec too large for them is accepted by the API server once and then never
handled. Every kind's spec is bounded instead (docs/annotation-size.md), and this module
proves it from the generated schema: `max_json_bytes` walks an OpenAPI v3 schema as
`rtml crds` writes it and adds up the worst case of every node, or names every node that
leaves the size open.

The text is compact JSON (no spaces: what Kopf's `json.dumps(separators=(",", ":"))` and
kubectl's Go encoder write) and each character costs the most either writer spends on it:
Kopf escapes every non-ASCII character (`\\uXXXX`, 6 bytes, and a character outside the
Basic Multilingual Plane as a surrogate pair, 12), Go escapes `<`, `>` and `&` as
`\\u003c` (6). `maxLength` counts characters (Unicode code points), so an unrestricted string
of n characters costs 12·n; a `pattern` that admits only plain ASCII brings that down to n.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# The longest number either writer prints for a float64 (Go's "-0.0000012345678901234567",
# Python's "-2.2250738585072014e-308" is 24), and for an int64: the API server refuses a
# `type: integer` value that is not one (1e20 is "must be of type integer").
NUMBER_BYTES = 25
INTEGER_BYTES = len(str(-(2**63)))
BOOLEAN_BYTES = len("false")
MAX_CODE_POINT = 0x10FFFF

# (first, last, bytes): what one character of the range costs at worst in either writer.
_COSTS: tuple[tuple[int, int, int], ...] = (
    (0x00, 0x08, 6),  # control characters: \u0001 (Kopf writes \b, Go \u0008)
    (0x09, 0x0A, 2),  # \t \n
    (0x0B, 0x0C, 6),
    (0x0D, 0x0D, 2),  # \r
    (0x0E, 0x1F, 6),
    (0x20, 0x21, 1),
    (0x22, 0x22, 2),  # "
    (0x23, 0x25, 1),
    (0x26, 0x26, 6),  # & (Go's HTML escaping)
    (0x27, 0x3B, 1),
    (0x3C, 0x3C, 6),  # <
    (0x3D, 0x3D, 1),
    (0x3E, 0x3E, 6),  # >
    (0x3F, 0x5B, 1),
    (0x5C, 0x5C, 2),  # backslash
    (0x5D, 0x7F, 1),
    (0x80, 0xFFFF, 6),  # Kopf's \uXXXX (Go: 2 or 3 bytes of UTF-8, 6 for U+2028 and U+2029)
    (0x10000, MAX_CODE_POINT, 12),  # Kopf's surrogate pair \uXXXX\uXXXX (Go: 4 bytes)
)
ANY: tuple[tuple[int, int], ...] = ((0, MAX_CODE_POINT),)  # the identity marks it

# The one CEL rule shape read for a map's keys (OpenAPI has no propertyNames in a CRD):
# rtml.api.common.map_keys writes it.
MAP_KEYS_RULE = re.compile(
    r"^self\.all\(k, k\.size\(\) <= (?P<max>[0-9]+)(?: && k\.matches\(r'(?P<pattern>[^']*)'\))?\)$"
)


class UnboundedSchemaError(ValueError):
    """The schema admits objects of any size; `fields` names each open node and why."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        super().__init__(
            f"{len(fields)} field(s) of unbounded size: " + "; ".join(fields)
            if fields
            else "unbounded"
        )


def char_cost(ranges: tuple[tuple[int, int], ...]) -> int:
    """The most bytes one character drawn from `ranges` (code points, inclusive) costs."""
    return max(
        (cost for lo, hi in ranges for first, last, cost in _COSTS if lo <= last and first <= hi),
        default=0,
    )


def text_bytes(text: str) -> int:
    """The JSON string literal `text`, quotes included, at its most expensive."""
    return 2 + sum(char_cost(((ord(c), ord(c)),)) for c in text)


_CLASS_ESCAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "d": ((0x30, 0x39),),
    "w": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
    "t": ((0x09, 0x09),),
    "n": ((0x0A, 0x0A),),
    "r": ((0x0D, 0x0D),),
}
_LITERAL_ESCAPES = set(".-/\\[](){}*+?|^$:")
_HEX = re.compile(r"x(\{[0-9A-Fa-f]{1,6}\}|[0-9A-Fa-f]{2})")
Ranges = tuple[tuple[int, int], ...]


def _escape(pattern: str, i: int) -> tuple[Ranges | None, int]:
    """What the escape at `pattern[i]` (a backslash) stands for, and the index after it: None
    when it matches no character (\\b), ANY when this reader does not know it (\\s, \\p{..})."""
    c = pattern[i + 1] if i + 1 < len(pattern) else ""
    if c in _CLASS_ESCAPES:
        return _CLASS_ESCAPES[c], i + 2
    if c and c in _LITERAL_ESCAPES:
        return ((ord(c), ord(c)),), i + 2
    if c and c in "bB":
        return None, i + 2
    hexed = _HEX.match(pattern, i + 1)  # \x41, \x{FFFD}: RE2's and Rust's spelling
    if hexed:
        point = int(hexed[1].strip("{}"), 16)
        return ((point, point),), hexed.end()
    return ANY, len(pattern)


def pattern_alphabet(pattern: str) -> Ranges:
    """Every character a string matching `pattern` may contain, as code point ranges. Errs
    wide: `.`, a negated class or an escape it does not know make it ANY."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            got, i = _escape(pattern, i)
            if got is ANY:
                return ANY
            out.extend(got or ())
        elif c == "[":
            cls, i = _char_class(pattern, i + 1)
            if cls is ANY:
                return ANY
            out.extend(cls)
        elif c == ".":
            return ANY
        elif c == "{":  # a repetition count: {m}, {m,n}
            end = pattern.find("}", i)
            if end < 0 or not re.fullmatch(r"[0-9]+(,[0-9]*)?", pattern[i + 1 : end]):
                return ANY
            i = end + 1
        elif c == "(" and pattern.startswith("(?", i):
            if not pattern.startswith("(?:", i):
                return ANY  # flags or named groups: not worth reading
            i += 3
        else:
            if c not in "^$()|*+?":
                out.append((ord(c), ord(c)))
            i += 1
    return tuple(out)


def _class_member(pattern: str, i: int) -> tuple[Ranges | None, int]:
    """One member of a character class at `i` (a character or an escape), and the index
    after it; ANY for what this reader does not know ([:alpha:], \\b)."""
    if pattern[i] == "\\":
        got, i = _escape(pattern, i)
        return (ANY if got is None else got), i
    if pattern[i] == "[":
        return ANY, len(pattern)
    return ((ord(pattern[i]), ord(pattern[i])),), i + 1


def _char_class(pattern: str, i: int) -> tuple[Ranges, int]:
    """The ranges of the class whose body starts at `i`, and the index after its `]`."""
    if pattern.startswith("^", i):
        return ANY, len(pattern)
    out: list[tuple[int, int]] = []
    while i < len(pattern) and pattern[i] != "]":
        low, i = _class_member(pattern, i)
        if low is ANY or low is None:
            return ANY, len(pattern)
        ranged = pattern.startswith("-", i) and i + 1 < len(pattern) and pattern[i + 1] != "]"
        if not ranged or len(low) != 1 or low[0][0] != low[0][1]:
            out.extend(low)
            continue
        high, i = _class_member(pattern, i + 1)
        if high is ANY or high is None or len(high) != 1 or high[0][0] != high[0][1]:
            return ANY, len(pattern)
        out.append((low[0][0], high[0][0]))
    if i >= len(pattern):
        return ANY, len(pattern)  # no closing bracket: not a class this reader understands
    return tuple(out), i + 1


@dataclass(frozen=True)
class _Walk:
    """One pass over a schema: bytes per node, and the open nodes found on the way."""

    open_fields: list[str]

    def node(self, schema: Mapping[str, Any], path: str) -> int:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return self._untyped(schema, path)
        if schema.get("x-kubernetes-int-or-string"):
            return max(INTEGER_BYTES, self._string(schema, path))
        readers = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": _integer,
            "number": _number,
            "boolean": _boolean,
        }
        reader = readers.get(str(schema.get("type")))
        if reader is None:
            return self._open(path, f"no type ({schema.get('type')!r})")
        return reader(schema, path)

    def _open(self, path: str, why: str) -> int:
        self.open_fields.append(f"{path or '<root>'}: {why}")
        return 0

    def _untyped(self, schema: Mapping[str, Any], path: str) -> int:
        # Only one shape is bounded: a scalar of any type (a FeatureView feature's default),
        # its strings capped and any list or object refused by maxItems/maxProperties 0.
        scalar = (
            "type" not in schema
            and schema.get("maxItems") == 0
            and schema.get("maxProperties") == 0
        )
        if not scalar:
            return self._open(
                path,
                "x-kubernetes-preserve-unknown-fields keeps whatever is sent (bounded only as a "
                "scalar: no type, maxItems 0, maxProperties 0 and maxLength)",
            )
        return max(NUMBER_BYTES, BOOLEAN_BYTES, len("{}"), self._string(schema, path))

    def _string(self, schema: Mapping[str, Any], path: str) -> int:
        if "enum" in schema:
            return max(text_bytes(str(v)) for v in schema["enum"])
        if "maxLength" not in schema:
            return self._open(path, "a string without maxLength or enum")
        alphabet = pattern_alphabet(schema["pattern"]) if "pattern" in schema else ANY
        return 2 + int(schema["maxLength"]) * char_cost(alphabet)

    def _array(self, schema: Mapping[str, Any], path: str) -> int:
        item = self.node(schema.get("items") or {}, f"{path}[]")
        if "maxItems" not in schema:
            return self._open(path, "a list without maxItems")
        count = int(schema["maxItems"])
        return 2 + count * item + max(count - 1, 0)

    def _object(self, schema: Mapping[str, Any], path: str) -> int:
        props: Mapping[str, Any] = schema.get("properties") or {}
        total = 2 + max(len(props) - 1, 0)  # braces and commas
        for name, sub in props.items():
            total += text_bytes(name) + 1 + self.node(sub, f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if extra is None or extra is False:
            return total
        if not isinstance(extra, Mapping):
            return self._open(path, "additionalProperties: true keeps any field")
        value = self.node(extra, f"{path}.*")
        key = self._map_key(schema, path)
        if "maxProperties" not in schema:
            return self._open(path, "a map without maxProperties")
        count = int(schema["maxProperties"])
        if props and count:
            total += 1  # the comma between the named fields and the map's
        return total + count * (key + 1 + value) + max(count - 1, 0)

    def _map_key(self, schema: Mapping[str, Any], path: str) -> int:
        for rule in schema.get("x-kubernetes-validations") or ():
            found = MAP_KEYS_RULE.match(str(rule.get("rule", "")))
            if found:
                pattern = found["pattern"]
                alphabet = pattern_alphabet(pattern) if pattern is not None else ANY
                return 2 + int(found["max"]) * char_cost(alphabet)
        return self._open(f"{path}.*", "map keys without a rule `self.all(k, k.size() <= N ...)`")


def _number(_schema: Mapping[str, Any], _path: str) -> int:
    return NUMBER_BYTES


def _boolean(_schema: Mapping[str, Any], _path: str) -> int:
    return BOOLEAN_BYTES


def _integer(schema: Mapping[str, Any], _path: str) -> int:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None or high is None:
        return INTEGER_BYTES
    return max(len(str(int(low))), len(str(int(high))))


def unbounded_fields(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Each node of `schema` whose size is open, as `path: why`; empty when it is bounded."""
    walk = _Walk([])
    walk.node(schema, path)
    return walk.open_fields


def max_json_bytes(schema: Mapping[str, Any], path: str = "") -> int:
    """The most bytes of compact JSON (as Kopf or kubectl writes it) that an object valid
    under `schema` takes; raises UnboundedSchemaError naming every open node under `path`."""
    walk = _Walk([])
    total = walk.node(schema, path)
    if walk.open_fields:
        raise UnboundedSchemaError(walk.open_fields)
    return total


def spec_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    """The `spec` schema of a CRD's (first) version."""
    version = crd["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def fields_by_size(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, int]]:
    """(path, worst-case bytes) of each property at any depth: where a spec's budget goes."""
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        found = unbounded_fields(sub, here)
        yield here, -1 if found else max_json_bytes(sub, here)
        yield from fields_by_size(sub, here)
        if isinstance(sub.get("items"), Mapping):
            yield from fields_by_size(sub["items"], f"{here}[]")
