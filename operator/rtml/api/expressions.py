"""CEL expressions of a Model's spec.rules: compiled (parsed and type-checked) here, once per
process and expression, by the operator, `rtml validate` and the runtime alike. Pure.

The library is Google's CEL C++ runtime bound for Python (cel-expr-python): 16 µs for a
three-rule fraud set against 41 µs (common-expression-language, Rust) and 887 µs (cel-python,
pure Python) on this machine; docs/decisions.md has the numbers and why. Nothing is ever
evaluated with Python's `eval`: an expression is data to the CEL runtime.

An expression sees two maps of string to any value: `request` (the values the caller sent, and
the entity id under the Model's entity key) and `features` (every value the model scores: the
FeatureView's features as read, defaults filled in, and the request features).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import cel_expr_python.cel as celx

VARIABLES = ("request", "features")


class ExpressionError(ValueError):
    """An expression that does not compile, or does not give a boolean; says why in words."""


@lru_cache(maxsize=1)
def environment() -> Any:
    """The one CEL environment: `request` and `features`, maps of string to any value."""
    values = celx.Type.Map(celx.Type.STRING, celx.Type.DYN)
    return celx.NewEnv(variables=dict.fromkeys(VARIABLES, values))


def _first_line(message: str) -> str:
    # CEL's messages open with "INVALID_ARGUMENT: ERROR: <input>:1:4: ..." and then draw the
    # source with a caret: the first line, without the status, is the sentence.
    line = message.strip().splitlines()[0] if message.strip() else "invalid expression"
    for prefix in ("INVALID_ARGUMENT: ", "ERROR: ", "<input>:"):
        if line.startswith(prefix):
            line = line[len(prefix) :]
    return line.strip()


@lru_cache(maxsize=256)
def compile_expression(source: str) -> Any:
    """The compiled expression (evaluate it with `evaluate`); raises ExpressionError when it
    does not parse, names a variable other than `request` and `features`, or has a type other
    than a boolean (a `dyn`, such as `request.flag`, is checked when evaluated)."""
    try:
        compiled = environment().compile(source)
    except RuntimeError as e:
        raise ExpressionError(f"is not a valid CEL expression: {_first_line(str(e))}") from None
    kind = compiled.return_type().name()
    if kind not in ("bool", "dyn", "BOOL", "DYN"):
        raise ExpressionError(f"must be a condition (a bool), but its type is {kind.lower()}")
    return compiled


def evaluate(compiled: Any, activation: Any) -> bool | None:
    """True or False, or None when the evaluation fails (a key the request lacks, a type the
    operator does not take) or does not give a boolean."""
    value = compiled.eval(activation)
    result = value.value()
    return result if isinstance(result, bool) else None


def activation(request: dict[str, Any], features: dict[str, Any]) -> Any:
    """The variables of one evaluation, made once per request for all its rules."""
    return environment().Activation({"request": request, "features": features})


# What keys of `request` and `features` some expressions read: a set of key names per
# variable, or None when an expression uses the map some other way (`size(features)`,
# `features[k]`, `features.exists(...)`): then the whole map.
Keys = dict[str, frozenset[str] | None]

_TOKEN = re.compile(
    r"""(?P<space>\s+|//[^\n]*)
    |(?P<string>(?P<prefix>[rRbB]{0,2})(?P<quote>\"\"\"|\'\'\'|\"|\'))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>\.?[0-9][0-9A-Za-z_.]*)
    |(?P<punct>.)""",
    re.VERBOSE | re.DOTALL,
)


def _tokens(source: str) -> list[tuple[str, str | None]]:
    """(kind, text) of each token: `ident`, `punct`, `number`, and `string` with its value when
    it is a plain literal (no prefix, no escape), else None. Only for finding which keys of
    the two maps an expression names: the CEL library has parsed and checked it already."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(source):
        m = _TOKEN.match(source, i)
        assert m is not None  # `punct` takes any one character
        kind = m.lastgroup if m.lastgroup != "quote" else "string"
        if m["string"] is not None:
            quote, start = m["quote"], m.end()
            raw = "r" in m["prefix"].lower()
            j = start
            while j < len(source) and not source.startswith(quote, j):
                j += 2 if source[j] == "\\" and not raw else 1
            body = source[start:j]
            plain = not m["prefix"] and "\\" not in body
            out.append(("string", body if plain else None))
            i = j + len(quote)
            continue
        if kind != "space":
            out.append((kind or "punct", m.group()))
        i = m.end()
    return out


def referenced_keys(sources: Iterable[str]) -> Keys:
    """The keys of `request` and `features` that SOURCES read by name (`features.x`,
    `features["x"]`, `has(request.y)`); None for a variable one of them uses otherwise. A
    rule evaluated over only those keys gives what it gives over the whole maps."""
    keys: dict[str, set[str] | None] = {v: set() for v in VARIABLES}
    for source in sources:
        toks = _tokens(source)
        for n, (kind, text) in enumerate(toks):
            if kind != "ident" or text not in keys:
                continue
            if n > 0 and toks[n - 1] == ("punct", "."):
                before = toks[n - 2] if n > 1 else ("punct", "")
                if before[0] in ("ident", "string", "number") or before[1] in (")", "]", "}"):
                    continue  # a field of something else (`x.features`), not the variable
                keys[text] = None  # `.features`: the root-qualified name
                continue
            after = toks[n + 1 : n + 4]
            found = keys[text]
            if len(after) >= 2 and after[0] == ("punct", ".") and after[1][0] == "ident":
                if len(after) == 3 and after[2] == ("punct", "("):
                    keys[text] = None  # a macro or method on the map itself
                elif found is not None:
                    found.add(str(after[1][1]))
            elif (
                len(after) == 3
                and after[0] == ("punct", "[")
                and after[1][0] == "string"
                and after[1][1] is not None
                and after[2] == ("punct", "]")
            ):
                if found is not None:
                    found.add(after[1][1])
            else:
                keys[text] = None
    return {v: None if k is None else frozenset(k) for v, k in keys.items()}


def only(values: Mapping[str, Any], keys: frozenset[str] | None) -> dict[str, Any]:
    """`values` cut to `keys` (those it has), or all of it for None."""
    if keys is None:
        return dict(values)
    return {k: values[k] for k in keys if k in values}
