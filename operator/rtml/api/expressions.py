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
