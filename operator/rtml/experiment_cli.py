"""`rtml experiment status|pause|resume|abort`: what the on-call engineer reads and sets.

Steering is by annotation (rtml.api.experiment PAUSE_ANNOTATION, ABORT_ANNOTATION), never by
writing status: the operator owns status and acts on the annotation at its next reconcile, so
`kubectl annotate` does the same thing and GitOps tools see who asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from pydantic import ValidationError

from rtml.api.experiment import (
    ABORT_ANNOTATION,
    FINAL_PHASES,
    PAUSE_ANNOTATION,
    AnalysisResult,
    ExperimentStatus,
)
from rtml.operator.errors import api_error_message

GROUP, VERSION, PLURAL = "rtml.dev", "v1alpha1", "experiments"
RESULT_COLUMNS = ("TIME", "METRIC", "VALUE", "MAX", "PASSED")


def _number(value: float | None) -> str:
    # None: the analysis could not measure it (no traffic, or NaN).
    return "-" if value is None else f"{value:.4g}"


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns two spaces apart, each as wide as its widest cell; `right` columns right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(r) for r in (header, *rows))


def format_analysis(results: Sequence[AnalysisResult]) -> str:
    if not results:
        return "no analysis yet"
    rows = [
        (_time(r.time), r.metric, _number(r.value), _number(r.max), "yes" if r.passed else "no")
        for r in results
    ]
    return format_table(RESULT_COLUMNS, rows, right={2, 3})


def _requested(meta: dict[str, Any]) -> list[str]:
    """The steering annotations set to "true" that the operator has yet to act on, or has."""
    annotations = meta.get("annotations") or {}
    return [a for a in (PAUSE_ANNOTATION, ABORT_ANNOTATION) if annotations.get(a) == "true"]


def _steps(spec: dict[str, Any]) -> int | None:
    steps = (spec.get("canary") or {}).get("steps") or []
    return len(steps) if spec.get("strategy") == "canary" and steps else None


def format_status(obj: dict[str, Any]) -> str:
    """An Experiment (API JSON) as `rtml experiment status` prints it."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = ExperimentStatus.model_validate(obj.get("status") or {})
    strategy = spec.get("strategy", "?")
    steps = _steps(spec)
    step = "-"
    if status.current_step is not None:
        step = str(status.current_step + 1)
        if steps is not None:
            step += f" of {steps}"
    weight = "-" if status.candidate_weight is None else f"{status.candidate_weight}%"
    fields = [
        ("phase", status.phase or "Pending"),
        ("step", step),
        ("weight", weight),
        ("last verdict", status.last_verdict or "-"),
    ]
    if status.paused_reason:
        fields.append(("paused", status.paused_reason))
    asked = _requested(meta)
    if asked:
        fields.append(("requested", ", ".join(f"{a}=true" for a in asked)))
    width = max(len(k) for k, _ in fields) + 1
    head = (
        f"Experiment {meta.get('name')} in namespace {meta.get('namespace')}: "
        f"{strategy} of Model {spec.get('modelRef', '?')}, candidate "
        f"{(spec.get('candidate') or {}).get('version', '?')}"
    )
    body = "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in fields)
    return f"{head}\n{body}\n\n{format_analysis(status.analysis)}"


def _analysis_json(r: AnalysisResult) -> dict[str, Any]:
    return {"time": _time(r.time), "metric": r.metric, "value": r.value, "max": r.max,
            "passed": r.passed}  # fmt: skip


def status_json(obj: dict[str, Any]) -> dict[str, Any]:
    """An Experiment (API JSON) as `rtml experiment status --json` prints it: the same facts as
    the table, keys as listed in the command's help."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = ExperimentStatus.model_validate(obj.get("status") or {})
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "strategy": spec.get("strategy"),
        "model": spec.get("modelRef"),
        "candidate": (spec.get("candidate") or {}).get("version"),
        "phase": status.phase or "Pending",
        "step": None if status.current_step is None else status.current_step + 1,
        "steps": _steps(spec),
        "weight": status.candidate_weight,
        "last_verdict": status.last_verdict,
        "paused_reason": status.paused_reason,
        "requested": _requested(meta),
        "analysis": [_analysis_json(r) for r in status.analysis],
    }


class Experiments:
    """The few calls the commands make, through the kubernetes client's CustomObjectsApi."""

    def __init__(self, kubeconfig: str | None, namespace: str | None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except config.ConfigException as e:
            raise click.ClickException(f"No usable kubeconfig: {e}.") from e
        self.namespace = namespace or (active or {}).get("context", {}).get("namespace", "default")
        self.api = client.CustomObjectsApi()

    def _call(self, name: str, fn: Callable[..., Any], **kw: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return dict(fn(GROUP, VERSION, self.namespace, PLURAL, name, **kw))
        except ApiException as e:
            if e.status == 404:
                raise click.ClickException(
                    f"Experiment {name} not found in namespace {self.namespace}."
                ) from e
            raise click.ClickException(
                f"The API server refused Experiment {name} in namespace {self.namespace}: "
                f"{api_error_message(e.status, e.body)}."
            ) from e
        except HTTPError as e:
            raise click.ClickException(f"The API server could not be reached: {e}.") from e

    def get(self, name: str) -> dict[str, Any]:
        return self._call(name, self.api.get_namespaced_custom_object)

    def annotate(self, name: str, annotations: dict[str, str | None]) -> dict[str, Any]:
        """A merge patch: None removes an annotation."""
        return self._call(
            name,
            self.api.patch_namespaced_custom_object,
            body={"metadata": {"annotations": annotations}},
            _content_type="application/merge-patch+json",
        )


KUBECONFIG_OPTION = click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).",
)
NAMESPACE_OPTION = click.option(
    "--namespace", "-n", default=None, help="Default: the kubeconfig context's namespace."
)


@click.group()
def experiment() -> None:
    """Read and steer Experiments (rexp) in a cluster."""


@experiment.command()
@click.argument("name")
@NAMESPACE_OPTION
@KUBECONFIG_OPTION
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout (keys below) instead of the table.",
)
def status(name: str, namespace: str | None, kubeconfig: str | None, as_json: bool) -> None:
    """Phase, step, weight, last verdict and the analysis history.

    \b
    --json prints one object with these keys (null where the table shows "-"):
      name, namespace, strategy, model, candidate
                     the Experiment, its Model and the candidate's version
      phase          Pending until the operator sets one
      step           the current step, counted from 1 (the status's currentStep + 1)
      steps          how many steps a canary has (null for other strategies)
      weight         the candidate's traffic share in percent
      last_verdict   the operator's last decision, in short
      paused_reason  why it is paused
      requested      steering annotations set to "true" (rtml.dev/pause, rtml.dev/abort)
      analysis       [{time, metric, value, max, passed}], oldest first; time in UTC
                     (RFC 3339), value null when the analysis could not measure it
    """
    obj = Experiments(kubeconfig, namespace).get(name)
    try:
        if as_json:
            click.echo(json.dumps(status_json(obj), allow_nan=False))
        else:
            click.echo(format_status(obj))
    except ValidationError as e:
        raise click.ClickException(
            f"Experiment {name} has a status this rtml cannot read: {e}"
        ) from e


def _steer(name: str, namespace: str | None, kubeconfig: str | None, verb: str,
           annotations: dict[str, str | None]) -> None:  # fmt: skip
    experiments = Experiments(kubeconfig, namespace)
    phase = ((experiments.get(name).get("status") or {}).get("phase")) or "Pending"
    if verb != "resume" and phase in FINAL_PHASES:
        raise click.ClickException(
            f"Experiment {name} in namespace {experiments.namespace} already ended ({phase}); "
            f"there is nothing to {verb}."
        )
    experiments.annotate(name, annotations)
    set_ = ", ".join(f"{k}={v}" if v else f"{k} removed" for k, v in annotations.items())
    click.echo(
        f"Experiment {name} in namespace {experiments.namespace}: {verb} requested ({set_}); "
        "the operator acts on it at its next reconcile."
    )


@experiment.command()
@click.argument("name")
@NAMESPACE_OPTION
@KUBECONFIG_OPTION
def pause(name: str, namespace: str | None, kubeconfig: str | None) -> None:
    """Hold the candidate at its current weight until resumed."""
    _steer(name, namespace, kubeconfig, "pause", {PAUSE_ANNOTATION: "true"})


@experiment.command()
@click.argument("name")
@NAMESPACE_OPTION
@KUBECONFIG_OPTION
def resume(name: str, namespace: str | None, kubeconfig: str | None) -> None:
    """Remove the pause annotation: the steps go on."""
    _steer(name, namespace, kubeconfig, "resume", {PAUSE_ANNOTATION: None})


@experiment.command()
@click.argument("name")
@NAMESPACE_OPTION
@KUBECONFIG_OPTION
def abort(name: str, namespace: str | None, kubeconfig: str | None) -> None:
    """Send all traffic back to the champion and end the Experiment as Aborted."""
    _steer(name, namespace, kubeconfig, "abort", {ABORT_ANNOTATION: "true"})
