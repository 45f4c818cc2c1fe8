"""The train/serve signature check: do a Model's ONNX inputs fit its features? Pure.

One function, three callers: the operator (`FeaturesResolved`), the runtime at start-up and
`rtml validate`. Rules and the dtype table are in docs/signature-check.md.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    inputs: list[InputSpec], declared: list[str] | None, wide: bool, named_by: str
) -> tuple[list[tuple[str, str, str]], list[Mismatch]]:
    """(column name, ONNX dtype, how to name it in a message) per column, and shape problems.
    `named_by`: where `declared` came from, for the messages."""
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
                    f"ONNX input {spec.name!r} takes {spec.width} columns per row, but neither "
                    "spec.features.columns nor the model's 'rtml.features' metadata names them",
                )
            )
        elif len(declared) != spec.width:
            problems.append(
                Mismatch(
                    spec.name,
                    "WrongShape",
                    f"ONNX input {spec.name!r} takes {spec.width} columns per row, but "
                    f"{named_by} names {len(declared)}",
                )
            )
        else:
            columns += [
                (n, spec.dtype, f"column {n!r} of ONNX input {spec.name!r}") for n in declared
            ]
    return columns, problems


def _named_columns(
    inputs: list[InputSpec], declared: list[str] | None, spec_columns: list[str] | None
) -> tuple[list[str] | None, str, list[Mismatch]]:
    """The names of a single wide input's columns: the Model's spec.features.columns, which
    the model's `rtml.features` metadata (if any) must agree with, else the metadata."""
    if spec_columns is None:
        return declared, "its 'rtml.features' metadata", []
    problems: list[Mismatch] = []
    field = "spec.features.columns"
    repeated = sorted({c for c in spec_columns if spec_columns.count(c) > 1})
    if repeated:
        problems.append(
            Mismatch(field, "DuplicateColumn", f"{field} names {', '.join(repeated)} twice")
        )
    if not (len(inputs) == 1 and inputs[0].width > 1):
        takes = ", ".join(f"{i.name!r} {list(i.shape)}" for i in inputs)
        problems.append(
            Mismatch(
                field,
                "UnexpectedColumns",
                f"{field} names the columns of a single [N, k] input, but the ONNX model takes "
                f"{takes}; remove {field} (named inputs are matched by name)",
            )
        )
    elif declared is not None and declared != spec_columns:
        problems.append(
            Mismatch(
                field,
                "ColumnsDisagree",
                f"{field} {spec_columns} and the model's 'rtml.features' metadata {declared} "
                "name different columns; the model was trained on one order only",
            )
        )
    return spec_columns, field, problems


def check_signature(
    inputs: list[InputSpec],
    view: FeatureView | None,
    request_features: list[str],
    declared_features: list[str] | None = None,
    columns: list[str] | None = None,
    outputs: list[InputSpec] | None = None,
    output: tuple[str | None, int | None] = (None, None),
) -> list[Mismatch]:
    """Every way the model's inputs and the features it is given disagree; [] when they fit.

    `declared_features` is the model's `rtml.features` metadata and `columns` the Model's
    spec.features.columns: the column names of a single wide [N, k] input (the spec's win; the
    metadata must agree). `outputs` (when given) are the graph's outputs, judged against
    `output`, the Model's spec.output (name, column): see `choose_output`.
    """
    view_dtypes = {f.name: f.dtype for f in view.spec.served_features} if view is not None else {}
    source = f"FeatureView {view.metadata.name!r}" if view is not None else "no FeatureView"
    wide = len(inputs) == 1 and inputs[0].width > 1
    names, named_by, mismatches = _named_columns(inputs, declared_features, columns)
    found, problems = _columns(inputs, names, wide, named_by)
    mismatches += problems
    if outputs is not None:
        chosen = choose_output(outputs, *output)
        if isinstance(chosen, Mismatch):
            mismatches.append(chosen)
    mismatches += _check_columns(found, view, view_dtypes, source, request_features, inputs, wide)
    return mismatches


def _check_columns(
    columns: list[tuple[str, str, str]],
    view: FeatureView | None,
    view_dtypes: Mapping[str, str],
    source: str,
    request_features: list[str],
    inputs: list[InputSpec],
    wide: bool,
) -> list[Mismatch]:
    mismatches: list[Mismatch] = []
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


# --- the score: which output, which column ------------------------------------------------------
SCORE_OUTPUT = "score"
FLOAT_TENSORS = frozenset({"tensor(float)", "tensor(double)"})
NUMERIC_TENSORS = FLOAT_TENSORS | {"tensor(int64)", "tensor(int32)", "tensor(bool)"}
OUTPUT_FIELD = "spec.output"


@dataclass(frozen=True)
class OutputChoice:
    """The output whose values are the scores, and the column of it (None: a [N] output, or
    the last column of a [N, k] one). `zipmap`: the output is a sequence of {class: probability}
    maps (skl2onnx's default for classifiers); the runtime scores the tensor the ZipMap node
    reads instead (the same numbers, one column per class, in the node's class order)."""

    name: str
    column: int | None
    zipmap: bool = False


def is_zipmap(spec: InputSpec) -> bool:
    return spec.dtype.startswith("seq(map(") and spec.dtype.endswith("tensor(float)))")


def _kinds(outputs: list[InputSpec]) -> str:
    return ", ".join(f"{o.name!r} {_short(o.dtype)}" for o in outputs) or "none"


def choose_output(
    outputs: list[InputSpec], name: str | None = None, column: int | None = None
) -> OutputChoice | Mismatch:
    """The score: the output `name` (spec.output.name), else one named `score`, else the only
    float tensor output; its column `column` (spec.output.column), else the only one, or the
    last of two (a binary classifier's P(class 1)). A Mismatch says why none can be chosen.

    ZipMap outputs (`seq(map(int64|string, tensor(float)))`) are accepted by name only, and
    their shape's last dimension is the number of classes when the graph says it."""
    found = _score_output(outputs, name)
    if isinstance(found, Mismatch):
        return found
    return _unsupported(found, name) or _score_column(found, column)


def _score_output(outputs: list[InputSpec], name: str | None) -> InputSpec | Mismatch:
    if name is not None:
        found = next((o for o in outputs if o.name == name), None)
        if found is None:
            field = f"{OUTPUT_FIELD}.name"
            return Mismatch(
                field,
                "UnknownOutput",
                f"{field} is {name!r}, which is not an output of the ONNX model (it has "
                f"{_kinds(outputs)})",
            )
        return found
    found = next((o for o in outputs if o.name == SCORE_OUTPUT), None)
    if found is not None:
        return found
    floats = [o for o in outputs if o.dtype in FLOAT_TENSORS]
    if len(floats) != 1:
        return Mismatch(
            OUTPUT_FIELD,
            "AmbiguousOutput",
            f"the ONNX model has no output named 'score' and "
            f"{'no' if not floats else len(floats)} float tensor outputs (it has "
            f"{_kinds(outputs)}); set {OUTPUT_FIELD}.name and {OUTPUT_FIELD}.column to "
            "the output and column that are the score",
        )
    return floats[0]


def _unsupported(found: InputSpec, name: str | None) -> Mismatch | None:
    if is_zipmap(found):
        return None
    field = f"{OUTPUT_FIELD}.name"
    named = f"ONNX output {found.name!r} ({field}{'' if name else ' by default'})"
    if found.dtype not in NUMERIC_TENSORS:
        return Mismatch(
            field,
            "UnsupportedOutput",
            f"{named} is {_short(found.dtype)}; a score is a float, double, int or bool "
            "tensor, or a ZipMap's {class: probability} maps",
        )
    if not 1 <= len(found.shape) <= 2:
        return Mismatch(
            field,
            "UnsupportedOutput",
            f"{named} has rank {len(found.shape)}; a score output is [N] or [N, k]",
        )
    return None


def _score_column(found: InputSpec, column: int | None) -> OutputChoice | Mismatch:
    zipmap = is_zipmap(found)
    matrix = zipmap or len(found.shape) == 2
    width = found.shape[-1] if matrix and found.shape else None
    known = width if isinstance(width, int) else None
    where = f"{OUTPUT_FIELD}.column"
    if column is None:
        if zipmap or (known is not None and known > 2):
            what = "one probability per class" if zipmap else f"{known} columns"
            return Mismatch(
                where,
                "AmbiguousOutput",
                f"ONNX output {found.name!r} has {what}; set {where} to the one that is the "
                "score (for a binary classifier, 1: the probability of the second class)",
            )
        return OutputChoice(found.name, None)
    if not matrix and column != 0:
        problem = "is [N], one value per row"
    elif known is not None and column >= known:
        problem = f"has {known} columns (0 to {known - 1})"
    else:
        return OutputChoice(found.name, column if matrix else None, zipmap)
    return Mismatch(
        where,
        "OutputColumnOutOfRange",
        f"{where} is {column}, but ONNX output {found.name!r} {problem}",
    )
