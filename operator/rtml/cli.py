"""The `rtml` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from pydantic import ValidationError

from rtml.bench_cli import bench
from rtml.experiment_cli import experiment
from rtml.features.cli import add_feature_commands
from rtml.optimize_cli import optimize
from rtml_runtime.cli import serve
from rtml_runtime.stream_cli import stream

if TYPE_CHECKING:
    from rtml.api import FeatureView, Model
    from rtml.api.common import ArtifactRef


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rtml")
def main() -> None:
    """rtml: real-time ML on Kubernetes.

    Model, FeatureView and Experiment resources (rtml.dev/v1alpha1) become BentoML or KServe
    predictors serving ONNX models with Feast features under a latency SLO.
    """


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the CRDs into this folder (e.g. crds/) instead of stdout.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 if the files in --out differ from what the API models generate.",
)
@click.option(
    "--helm-keep",
    is_flag=True,
    help="Annotate them helm.sh/resource-policy: keep, as the rtml-crds chart's templates are "
    "(charts/rtml-crds/templates/).",
)
def crds(out_dir: Path | None, check: bool, helm_keep: bool) -> None:
    """Generate the CustomResourceDefinitions from the typed API models."""
    from rtml.api.crd import crd_files

    files = crd_files(keep=helm_keep)
    if out_dir is None:
        click.echo("---\n".join(files.values()), nl=False)
        return
    stale = [
        n
        for n, text in files.items()
        if not (out_dir / n).exists() or (out_dir / n).read_text() != text
    ]
    if check:
        if stale:
            raise click.ClickException(
                f"{', '.join(stale)} in {out_dir} differ from the API models; run "
                f"`rtml crds --out {out_dir}{' --helm-keep' if helm_keep else ''}` and commit the "
                "result"
            )
        click.echo(f"{len(files)} CRDs in {out_dir} match the API models")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    click.echo(f"wrote {len(files)} CRDs to {out_dir} ({len(stale)} changed)")


def load_manifests(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    docs: list[dict[str, Any]] = []
    for f in files:
        try:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            raise click.ClickException(f"{f} is not valid YAML: {e}") from e
    return docs


@main.command()
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option("--namespace", "-n", default=None, help="Namespace for Models that name none.")
@click.option(
    "--keda/--no-keda",
    default=False,
    show_default=True,
    help="Render as if KEDA's ScaledObject CRD were installed.",
)
@click.option("--image", default=None, help="Runtime image (default: the operator's default).")
def render(manifest: Path, namespace: str | None, keda: bool, image: str | None) -> None:
    """Print exactly the objects the operator would apply for the Models in MANIFEST.

    MANIFEST is a YAML file (or a folder of them); kinds other than Model are ignored.
    """
    from rtml.api.model import Model
    from rtml.contract import DEFAULT_RUNTIME_IMAGE
    from rtml.operator.errors import describe_validation_error
    from rtml.operator.render import RenderContext, render_model_children

    ctx = RenderContext(runtime_image=image or DEFAULT_RUNTIME_IMAGE, keda_installed=keda)
    out: list[dict[str, Any]] = []
    for doc in load_manifests(manifest):
        if doc.get("kind") != "Model":
            continue
        doc.setdefault("metadata", {})
        if namespace:
            doc["metadata"]["namespace"] = namespace
        try:
            model = Model.model_validate({k: v for k, v in doc.items() if k != "status"})
        except ValidationError as e:
            name = doc["metadata"].get("name", "?")
            raise click.ClickException(
                f"Model {name} is invalid: {describe_validation_error(e)}"
            ) from e
        out += render_model_children(model, ctx)
    if not out:
        raise click.ClickException(f"{manifest} holds no Model")
    click.echo(yaml.safe_dump_all(out, sort_keys=False), nl=False)


@main.command()
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
def validate(manifest: Path) -> None:
    """Check every rtml resource in MANIFEST against the API schema, naming each bad field."""
    from rtml.api import Experiment, FeatureView, Model
    from rtml.api.common import unverified_warning
    from rtml.operator.errors import describe_validation_error

    kinds = {"Model": Model, "FeatureView": FeatureView, "Experiment": Experiment}
    bad = 0
    valid: list[Any] = []
    for doc in load_manifests(manifest):
        kind = kinds.get(str(doc.get("kind")))
        if kind is None:
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        try:
            valid.append(kind.model_validate({k: v for k, v in doc.items() if k != "status"}))
            click.echo(f"{doc['kind']} {name}: valid")
        except ValidationError as e:
            bad += 1
            click.echo(f"{doc['kind']} {name}: {describe_validation_error(e)}", err=True)
            continue
        for field, uri in _unverified(valid[-1]):
            click.echo(f"{doc['kind']} {name}: warning: {unverified_warning(field, uri)}", err=True)
    views = {v.metadata.name: v for v in valid if isinstance(v, FeatureView)}
    base_dir = manifest if manifest.is_dir() else manifest.parent
    for model in (m for m in valid if isinstance(m, Model)):
        bad += _check_local_signature(model, views, base_dir)
    if bad:
        sys.exit(1)


def _unverified(resource: Any) -> list[tuple[str, str]]:
    """(field, uri) of the artifacts this resource lets load without a digest check."""
    from rtml.api import Experiment, Model

    if isinstance(resource, Model):
        return resource.spec.unverified_artifacts()
    if isinstance(resource, Experiment) and resource.spec.candidate.artifact.unverified:
        return [("spec.candidate.artifact", resource.spec.candidate.artifact.uri)]
    return []


def _check_local_signature(model: Model, views: dict[str, FeatureView], base_dir: Path) -> int:
    """The runtime's signature check for each of a Model's artifacts that is a local file
    (spec.artifact, then each spec.ensemble member): how many fail.

    Artifacts remote or not on this machine, or a FeatureView not in the manifest, are
    skipped (the operator and the runtime check those).
    """
    binding = model.spec.features
    ref = binding.feature_view_ref if binding is not None else None
    if ref is not None and ref not in views:
        return 0
    ensemble = model.spec.ensemble
    artifacts = [("spec.artifact", model.spec.artifact)] + [
        (f"spec.ensemble.models[{i}].artifact", m.artifact)
        for i, m in enumerate(ensemble.models if ensemble is not None else [])
    ]
    view = views[ref] if ref is not None else None
    return sum(_check_artifact(model, field, art, view, base_dir) for field, art in artifacts)


def _check_artifact(
    model: Model, field: str, art: ArtifactRef, view: FeatureView | None, base_dir: Path
) -> int:
    from rtml.api.signature import check_signature
    from rtml.artifacts import ArtifactError, fetch_artifact, local_path
    from rtml.onnx_inputs import OnnxSignatureError, onnx_graph

    name = model.metadata.name
    local = local_path(art.uri, base_dir) if art.uri.startswith("file://") else None
    if local is None:
        return 0
    # The primary is named as before; a member by its field, as the runtime names it.
    who = f"Model {name}" if field == "spec.artifact" else f"Model {name} {field}"
    if not local.is_file():
        # A path in a runtime image or volume, not on this machine: the runtime checks it.
        click.echo(f"{who}: signature not checked, {local} is not on this machine")
        return 0
    try:
        path = fetch_artifact(art.uri, art.sha256, base_dir, base_dir)  # local: nothing cached
        graph = onnx_graph(path)
    except (ArtifactError, OnnxSignatureError) as e:
        click.echo(f"{who}: {e}", err=True)
        return 1
    binding = model.spec.features
    requested = list(binding.request_features) if binding is not None else []
    mismatches = check_signature(
        graph.inputs,
        view,
        requested,
        graph.declared,
        columns=model.spec.feature_columns,
        outputs=graph.outputs,
        output=model.spec.output_choice,
    )
    for m in mismatches:
        click.echo(f"{who}: {m.message} ({m.reason})", err=True)
    if not mismatches:
        against = f"FeatureView {view.metadata.name!r}" if view else "its request features"
        click.echo(f"{who}: the ONNX inputs of {path.name} fit {against}")
    return 1 if mismatches else 0


@main.command()
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True),
    default=None,
    help="Kubeconfig to use (default: in-cluster, then $KUBECONFIG / ~/.kube/config).",
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="Where to serve the liveness endpoint; empty to disable.",
)
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    help="Watch only these namespaces (repeatable); default: the whole cluster.",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Work only while holding the rtml-operator Lease (several replicas: one works, the "
    "others wait and take over within ~17 s of its death).",
)
@click.option(
    "--lease-namespace",
    default=None,
    help="Namespace of the Lease (default: POD_NAMESPACE, else the service account's).",
)
def operator(
    kubeconfig: str | None,
    liveness: str,
    namespaces: tuple[str, ...],
    leader_elect: bool,
    lease_namespace: str | None,
) -> None:
    """Run the rtml operator against a cluster until interrupted."""
    from rtml.operator.main import run_operator

    run_operator(kubeconfig, liveness or None, namespaces, leader_elect, lease_namespace)


@main.command(name="feast-sweep", hidden=True)
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None)
def feast_sweep(kubeconfig: str | None) -> None:
    """Remove from Feast the views of FeatureViews that no longer exist, once (what the
    operator runs in a short-lived process while it has no FeatureView: rtml.operator.sweep)."""
    from rtml.logs import configure_logging
    from rtml.operator.sweep import sweep_once

    configure_logging()
    sys.exit(sweep_once(kubeconfig))


@main.command()
@click.option(
    "--checkout",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="The rtml checkout whose chart CRDs and examples the demo uses.",
)
@click.option(
    "--examples",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="More manifests to apply in the demo's tenant namespace once the fraud Model answers.",
)
@click.option("--keep", is_flag=True, help="Leave the control plane and operator running.")
@click.option(
    "--part",
    type=click.Choice(["all", "cluster", "serve"]),
    default="all",
    show_default=True,
    help="Run only the cluster part or only the one-machine part.",
)
@click.option(
    "--duration",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds of load for each benchmark step.",
)
def demo(checkout: Path, examples: Path | None, keep: bool, part: str, duration: float) -> None:
    """Run the demo: the operator on a local control plane, then one machine serving the
    fraud model with Feast features, ending with its latency table."""
    from rtml.dev.demo import run_demo, run_serving_demo
    from rtml.dev.process import exit_cleanly_on_sigterm

    repo = checkout.resolve()
    if not (repo / "examples" / "fraud").is_dir():
        raise click.ClickException(
            f"{repo} is not an rtml checkout (no examples/fraud); run the demo from one, "
            "or pass --checkout"
        )
    exit_cleanly_on_sigterm()
    try:
        if part in ("all", "cluster"):
            click.echo("== part 1: the chart, a FeatureView and a Model on a node ==")
            run_demo(repo, examples, keep and part == "cluster", click.echo)
        if part in ("all", "serve"):
            click.echo("\n== part 2: one machine, no cluster: rtml serve + rtml bench ==")
            run_serving_demo(repo, click.echo, duration_s=duration)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        raise click.ClickException(str(e)) from e


def _add_dev() -> None:
    try:
        from rtml.dev.cli import dev
    except ImportError:  # the dev tools need the [dev] extra (cryptography)
        return
    main.add_command(dev)


_add_dev()
add_feature_commands(main)
main.add_command(experiment)
main.add_command(serve)
main.add_command(stream)
main.add_command(bench)
main.add_command(optimize)

if __name__ == "__main__":
    main()
