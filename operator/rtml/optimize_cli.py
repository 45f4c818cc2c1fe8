"""`rtml optimize`: graph optimization and INT8 quantization of a Model's ONNX artifact, kept only
when it stays within an accuracy budget on held-out data (docs/optimize.md).

This module is the command's shell: it reads the manifest and the data, verifies the artifact,
prints progress on stderr, and writes the winner, its digest and the reports. The decisions are
rtml.optimize's (pure); making and measuring candidates is rtml.optimize_onnx's, imported when
the command runs (ONNX Runtime and numpy take a second to import; `rtml --help` should not).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
import yaml

from rtml.optimize import METHODS, METRICS

if TYPE_CHECKING:
    import numpy as np

    from rtml import optimize_onnx
    from rtml.api import Model
    from rtml.optimize import Metric, Report
    from rtml_runtime.onnx_model import OnnxModel

EXIT_REFUSED = 3


class Refused(click.ClickException):
    """No candidate fits the budget: the report is printed, this sentence goes to stderr."""

    exit_code = EXIT_REFUSED


def read_model(manifest: Path, name: str | None) -> Model:
    """The Model of MANIFEST (the one named `name` when it holds several), validated."""
    from pydantic import ValidationError

    from rtml.api.model import Model
    from rtml.operator.errors import describe_validation_error

    try:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)]
    except (yaml.YAMLError, OSError) as e:
        raise click.ClickException(f"{manifest} is not readable YAML: {e}") from e
    models = [d for d in docs if d.get("kind") == "Model"]
    names = [(d.get("metadata") or {}).get("name", "?") for d in models]
    if name is not None:
        models = [d for d, n in zip(models, names, strict=True) if n == name]
    if not models:
        wanted = f"a Model named {name!r}" if name else "a Model"
        raise click.ClickException(f"{manifest} holds no {wanted} (it has: {names or 'none'})")
    if len(models) > 1:
        raise click.ClickException(
            f"{manifest} holds {len(models)} Models ({', '.join(names)}); pick one with --model"
        )
    doc = models[0]
    try:
        return Model.model_validate({k: v for k, v in doc.items() if k != "status"})
    except ValidationError as e:
        label = (doc.get("metadata") or {}).get("name", "?")
        raise click.ClickException(
            f"Model {label} is invalid: {describe_validation_error(e)}"
        ) from e


def _local_artifact(model: Model, base_dir: Path) -> tuple[Path, bytes, str]:
    """The artifact's file, its bytes, verified against spec.artifact.sha256, and their digest."""
    import hashlib

    from rtml.artifacts import ArtifactError, artifact_bytes, local_path

    art = model.spec.artifact
    path = local_path(art.uri, base_dir) if art.uri.startswith("file://") else None
    if path is None:
        raise click.ClickException(
            f"spec.artifact.uri is {art.uri}; rtml optimize works on a local file:// artifact "
            "(download it, check its digest and point a file:// URI at it)"
        )
    try:
        _, data = artifact_bytes(art.uri, art.sha256, base_dir, base_dir)
    except ArtifactError as e:
        raise click.ClickException(str(e)) from e
    return path, data, art.sha256 or hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(report: Report, blob: bytes) -> None:
    """The winner, its `.sha256` (as build.py writes one) and the JSON and text reports, at the
    paths in `report.written`."""
    from rtml.optimize import format_report, report_json

    files = report.written
    out = Path(files["path"])
    try:
        _write_atomically(out, blob)
        Path(files["sha256_file"]).write_text(f"{files['sha256']}  {out.name}\n")
        doc = json.dumps(report_json(report), indent=2, allow_nan=False)
        Path(files["json"]).write_text(doc + "\n")
        Path(files["text"]).write_text(format_report(report) + "\n")
    except OSError as e:
        raise click.ClickException(f"could not write {out}: {e.strerror or e}") from e


def progress(message: str) -> None:
    click.echo(f"rtml optimize: {message}", err=True)


def _model_and_rows(
    data: bytes,
    path: Path,
    settings: optimize_onnx.Settings,
    data_path: Path,
    label: str | None,
) -> tuple[OnnxModel, optimize_onnx.Rows]:
    """The original model loaded as the runtime loads it, and the data in its column order."""
    from rtml import optimize_onnx as engine

    try:
        original, columns = engine.load_original(data, str(path), settings)
        return original, engine.read_rows(data_path, columns, label)
    except engine.OptimizeError as e:
        raise click.ClickException(str(e)) from e


def _split(
    rows: optimize_onnx.Rows,
    data_path: Path,
    calibration_rows: int | None,
    seed: int,
    label: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) row indices, refused when the held-out set cannot judge."""
    import numpy as np

    from rtml.optimize import default_calibration_rows, split_rows

    n = len(rows.x)
    calibrate = calibration_rows if calibration_rows is not None else default_calibration_rows(n)
    if n - calibrate < 2:
        raise click.ClickException(
            f"{data_path} has {n} rows; after {calibrate} calibration rows too few are left to "
            "evaluate on (lower --calibration-rows or give more rows)"
        )
    calibration, held_out = split_rows(n, calibrate, seed)
    if rows.labels is not None and len(np.unique(rows.labels[held_out])) < 2:
        raise click.ClickException(
            f"the {len(held_out)} held-out rows of {data_path} hold only one class of "
            f"--label {label!r}; ROC AUC needs both (give more rows, or another --seed)"
        )
    progress(f"{len(held_out):,} held-out rows, {len(calibration):,} calibration rows")
    return calibration, held_out


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Parquet rows to calibrate and evaluate on: one column per model input, named as its "
    "features (examples/fraud/build.py writes holdout.parquet).",
)
@click.option(
    "--max-accuracy-loss",
    type=click.FloatRange(0),
    required=True,
    help="The budget: the largest accuracy loss (see --metric) a candidate may have, e.g. 0.01.",
)
@click.option(
    "--label",
    default=None,
    help="Column of --data holding the true class (0/1 or false/true); makes `auc` the metric.",
)
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default=None,
    help="What accuracy loss means: `auc` = the drop in ROC AUC (default with --label), "
    "`mean-abs-diff` (default without) or `max-abs-diff` = score difference to the original.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(METHODS),
    help="Candidates to try (repeatable; default: all three).",
)
@click.option(
    "--calibration-rows",
    type=click.IntRange(1),
    default=None,
    help="Rows of --data set aside to calibrate int8-static (default: 500, or a quarter of the "
    "rows if fewer); the rest is the held-out set.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the calibration/held-out split."
)
@click.option(
    "--runs",
    default=3000,
    show_default=True,
    type=click.IntRange(10),
    help="Single-row latency runs per model (the same for each, interleaved).",
)
@click.option("--warmup", default=200, show_default=True, type=click.IntRange(0))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the winner (default: next to the original, MODEL.int8.onnx, or "
    "MODEL.opt.onnx when graph optimization alone wins).",
)
@click.option(
    "--model", "model_name", default=None, help="The Model to use if MANIFEST has several."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout."
)
def optimize(
    manifest: Path,
    data_path: Path,
    max_accuracy_loss: float,
    label: str | None,
    metric: str | None,
    methods: tuple[str, ...],
    calibration_rows: int | None,
    seed: int,
    runs: int,
    warmup: int,
    out: Path | None,
    model_name: str | None,
    as_json: bool,
) -> None:
    """Optimize a Model's ONNX artifact for this runtime and keep the result only if it stays
    within an accuracy budget.

    MANIFEST holds the Model; its spec.artifact must be a local file:// artifact and is
    verified against spec.artifact.sha256. The candidates: `graph` (ONNX Runtime's offline
    optimization, ORT_ENABLE_EXTENDED), `int8-dynamic` and `int8-static` (quantize_dynamic /
    quantize_static of onnxruntime.quantization, on MatMul, Gemm and Conv; a model without
    them, such as a tree ensemble, gets graph optimization only). Each is scored on the
    held-out rows of --data and timed one row at a time through the runtime's own ONNX
    session, interleaved with the original. The fastest candidate within the budget is
    written next to the original with its .sha256, a .report.json and a .report.txt.

    \b
    Exit codes (progress goes to stderr; stdout holds only the report):
      0  a candidate fits the budget and was written
      1  the manifest, artifact or data cannot be used (one sentence on stderr)
      2  bad options (click's usage error)
      3  no candidate fits the budget: the report (each method's measured
         loss) is printed, nothing is written, the reasons go to stderr
    """
    import hashlib

    from rtml import optimize_onnx as engine
    from rtml.optimize import (
        Report,
        choose,
        format_report,
        output_name,
        refusal,
        report_json,
        written_files,
    )

    chosen_metric = metric or ("auc" if label else "mean-abs-diff")
    if chosen_metric == "auc" and not label:
        raise click.BadParameter("the auc metric needs labels: name their column with --label")
    base_dir = manifest.resolve().parent
    model = read_model(manifest, model_name)
    path, data, digest = _local_artifact(model, base_dir)
    if out is not None and out.resolve() == path.resolve():
        raise click.BadParameter(
            f"{out} is the original artifact; write elsewhere", param_hint="--out"
        )
    if model.spec.artifact.sha256 is None:
        progress(
            f"spec.artifact.sha256 is not set (allowUnverified): {path.name} is optimized as it "
            f"is now, sha256 {digest[:12]}…"
        )
    else:
        progress(f"{path.name} ({len(data):,} bytes) matches spec.artifact.sha256")
    settings = engine.Settings(
        metric=cast("Metric", chosen_metric),  # one of METRICS, checked by click
        methods=tuple(m for m in METHODS if m in methods) if methods else METHODS,
        runs=runs,
        warmup=warmup,
        columns=model.spec.feature_columns,
        output=model.spec.output_choice,
    )
    original, rows = _model_and_rows(data, path, settings, data_path, label)
    calibration, held_out = _split(rows, data_path, calibration_rows, seed, label)
    try:
        outcome = engine.optimize_model(
            data, original, rows, calibration, held_out, settings, progress
        )
    except engine.OptimizeError as e:
        raise click.ClickException(str(e)) from e
    winner = choose(outcome.candidates, max_accuracy_loss)
    written: dict[str, str] = {}
    if winner is not None:
        blob = outcome.artifacts[winner.method]
        target = out or output_name(path, winner.method)
        written = written_files(target, hashlib.sha256(blob).hexdigest(), base_dir)
    report = Report(
        model=model.metadata.name,
        version=model.spec.version,
        artifact=str(path),
        artifact_sha256=digest,
        verified=model.spec.artifact.sha256 is not None,
        size_bytes=len(data),
        data=str(data_path),
        label=label,
        calibration_rows=len(calibration),
        held_out_rows=len(held_out),
        seed=seed,
        metric=settings.metric,
        max_accuracy_loss=max_accuracy_loss,
        quantizable=outcome.quantizable,
        original_accuracy=outcome.original_accuracy,
        original_latency=outcome.original_latency,
        candidates=outcome.candidates,
        winner=winner.method if winner is not None else None,
        written=written,
    )
    if winner is not None:
        write_outputs(report, outcome.artifacts[winner.method])
    doc: dict[str, Any] = report_json(report)
    click.echo(json.dumps(doc, allow_nan=False) if as_json else format_report(report))
    if winner is None:
        raise Refused(refusal(report))
