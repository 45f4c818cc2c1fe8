"""The train/serve signature check: do a Model's ONNX inputs fit its features? Pure.

One function, three callers: the operator (`FeaturesResolved`), the runtime at start-up and
`rtml validate`. Rules and the dtype table are in docs/signature-check.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtml.api.featureview import FeatureView

# The ONNX element types the runtime can feed, and the FeatureView dtypes each accepts. The
# runtime builds numeric rows, so STRING features fit no input and a tensor(string) input is
# unsupported rather than "compatible": reporting it as fine would only move the failure to
# the runtime's start-up.
ACCEPTS: dict[str, frozenset[str]] = {
    "tensor(float)": frozenset({"FLOAT", "DOUBLE", "INT32", "INT64", "BOOL"}),
    "tensor(double)": frozenset({"FLOAT", "DOUBLE", "INT32", "INT64", "BOOL"}),
    "tensor(int64)": frozenset({"INT32", "INT64", "BOOL"}),
    "tensor(int32)": frozenset({"INT32", "BOOL"}),
    "tensor(bool)": frozenset({"BOOL"}),
}
REQUEST = "request"  # request features arrive as JSON numbers, which every type above takes


@dataclass(frozen=True)
class InputSpec:
    """One ONNX graph input: its name, type string as ONNX Runtime spells it, and shape."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def width(self) -> int:
        """Columns per row: the fixed last dimension of a rank-2 input, else 1."""
        last = self.shape[-1] if len(self.shape) == 2 else 1
        return last if isinstance(last, int) else 1


@dataclass(frozen=True)
class Mismatch:
    """One way the model does not fit its features; `input` is the name users recognise."""

    input: str
    reason: str
    message: str


def _short(dtype: str) -> str:
    return dtype.removeprefix("tensor(").removesuffix(")")


def _shape_problem(spec: InputSpec, allow_wide: bool) -> str | None:
    """Why `spec` is not one value (or, when allowed, one fixed-width vector) per row."""
    if not 1 <= len(spec.shape) <= 2:
        return f"has rank {len(spec.shape)}; rtml feeds [N] or [N, 1] tensors, one row per request"
    batch = spec.shape[0]
    if isinstance(batch, int) and batch != 1:
        return f"has a fixed batch dimension of {batch}; it must be symbolic (None) or 1"
    if spec.width > 1 and not allow_wide:
        return (
            f"takes {spec.width} columns per row; only a model's single input may be wide, "
            "and the others must be [N, 1] or [N]"
        )
    return None


def _columns(
    inputs: list[InputSpec], declared: list[str] | None, wide: bool
) -> tuple[list[tuple[str, str, str]], list[Mismatch]]:
    """(column name, ONNX dtype, how to name it in a message) per column, and shape problems."""
    problems: list[Mismatch] = []
    columns: list[tuple[str, str, str]] = []
    for spec in inputs:
        problem = _shape_problem(spec, allow_wide=wide)
        if problem is not None:
            problems.append(
                Mismatch(spec.name, "WrongShape", f"ONNX input {spec.name!r} {problem}")
            )
            continue
        if not wide:
            columns.append((spec.name, spec.dtype, f"ONNX input {spec.name!r}"))
            continue
        if not declared:
            problems.append(
                Mismatch(
                    spec.name,
                    "UndeclaredColumns",
                    f"ONNX input {spec.name!r} takes {spec.width} columns per row, but the model "
                    "has no 'rtml.features' metadata naming them",
                )
            )
        elif len(declared) != spec.width:
            problems.append(
                Mismatch(
                    spec.name,
                    "WrongShape",
                    f"ONNX input {spec.name!r} takes {spec.width} columns per row, but its "
                    f"'rtml.features' metadata names {len(declared)}",
                )
            )
        else:
            columns += [
                (n, spec.dtype, f"column {n!r} of ONNX input {spec.name!r}") for n in declared
            ]
    return columns, problems


def check_signature(
    inputs: list[InputSpec],
    view: FeatureView | None,
    request_features: list[str],
    declared_features: list[str] | None = None,
) -> list[Mismatch]:
    """Every way the model's inputs and the features it is given disagree; [] when they fit.

    `declared_features` is the model's `rtml.features` metadata: the column names of a single
    wide [N, k] input. It is ignored for models whose inputs are one column each.
    """
    view_dtypes = {f.name: f.dtype for f in view.spec.features} if view is not None else {}
    source = f"FeatureView {view.metadata.name!r}" if view is not None else "no FeatureView"
    wide = len(inputs) == 1 and inputs[0].width > 1
    columns, mismatches = _columns(inputs, declared_features, wide)

    for name in request_features:
        if name in view_dtypes:
            mismatches.append(
                Mismatch(
                    name,
                    "AmbiguousFeature",
                    f"feature {name!r} is both in spec.features.requestFeatures and a feature of "
                    f"{source}; the request value would silently replace the stored one, so "
                    "remove it from one of them",
                )
            )
    for name, dtype, what in columns:
        if name in request_features:
            given = REQUEST
        elif name in view_dtypes:
            given = view_dtypes[name]
        else:
            missing = (
                f"{what} is neither a feature of {source} nor in spec.features.requestFeatures"
                if view is not None
                else f"{what} is not in spec.features.requestFeatures, and the Model reads no "
                "FeatureView"
            )
            mismatches.append(Mismatch(name, "MissingFeature", missing))
            continue
        accepted = ACCEPTS.get(dtype)
        if accepted is None:
            mismatches.append(
                Mismatch(
                    name,
                    "UnsupportedDtype",
                    f"{what} is {_short(dtype)}; the rtml runtime feeds float, double, int32, "
                    "int64 and bool tensors only",
                )
            )
        elif given != REQUEST and given not in accepted:
            mismatches.append(
                Mismatch(
                    name,
                    "WrongDtype",
                    f"{what} is {_short(dtype)}, but {source} feature {name!r} is {given} "
                    f"(accepted: {', '.join(sorted(accepted))})",
                )
            )
    if wide and not columns:
        return mismatches  # the wide input's columns are unnamed: nothing to compare against
    taken = {name for name, _, _ in columns}
    every_input = taken | {i.name for i in inputs}
    for name in request_features:
        if name not in every_input:
            mismatches.append(
                Mismatch(
                    name,
                    "UnknownRequestFeature",
                    f"request feature {name!r} (spec.features.requestFeatures) is not an input "
                    f"of the ONNX model; it takes {sorted(taken) or sorted(every_input)}",
                )
            )
    return mismatches


def describe(mismatches: list[Mismatch]) -> str:
    """All mismatches as one message, for a condition or an exception."""
    return "; ".join(m.message for m in mismatches)
