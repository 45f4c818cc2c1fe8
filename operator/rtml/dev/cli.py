"""``rtml dev``: the local control plane for development and tests, from the command line."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from rtml.dev.errors import DevError

_WORKDIR_HELP = (
    "Directory for the control plane's etcd data, certificates, logs and state "
    "[default: $RTML_CACHE_DIR/dev-cluster, else ~/.cache/rtml/dev-cluster]."
)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _workdir(value: Path | None) -> Path:
    from rtml.dev.cluster import default_workdir

    return value if value is not None else default_workdir()


@click.group()
def dev() -> None:
    """Develop and test against a real local Kubernetes cluster.

    The control plane is etcd, kube-apiserver and kube-controller-manager built from the Go
    modules pinned in rtml, with RBAC on; the node is containerd, runc, the CNI bridge, kubelet,
    kube-scheduler, kube-proxy and CoreDNS, so Pods run (docs/local-node.md). `--no-node`
    keeps an API-only cluster on loopback, where Pods are created but never run.
    """


@dev.group()
def cluster() -> None:
    """Start and stop the local control plane."""


@cluster.command()
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the admin kubeconfig to this file (it is always written to the workdir).",
)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help=_WORKDIR_HELP)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the control plane to become ready.",
)
@click.option(
    "--node/--no-node",
    default=True,
    show_default=True,
    help="Also start a node (containerd, runc, CNI, kubelet, kube-scheduler, kube-proxy, "
    "CoreDNS) so Pods run; needs root. Without it the cluster is API-only.",
)
def up(kubeconfig: Path | None, workdir: Path | None, timeout: float, node: bool) -> None:
    """Start the cluster in the background and wait until it is ready.

    Builds the binaries first if they are not cached yet (minutes on a cold machine). The
    processes keep running after this command returns; stop them with `rtml dev cluster down`,
    which also removes everything the node changed on the host.
    """
    from rtml.dev.cluster import cluster_up
    from rtml.dev.tools import ensure_node_tools, ensure_tools

    directory = _workdir(workdir)
    try:
        bin_dir = ensure_tools(progress=_progress)
        node_bin = ensure_node_tools(progress=_progress) if node else None
        what = "etcd, kube-apiserver, kube-controller-manager" + (" and a node" if node else "")
        _progress(f"Starting {what} in {directory}...")
        plane = cluster_up(
            directory, kubeconfig, bin_dir=bin_dir, timeout=timeout, node_bin=node_bin
        )
    except DevError as error:
        raise click.ClickException(str(error)) from error
    config = kubeconfig if kubeconfig is not None else plane.kubeconfig
    click.echo(
        f"The local control plane is ready at {plane.server} ({plane.started_seconds:.1f}s)."
    )
    click.echo(f"Admin kubeconfig: {config}")
    click.echo(f"  export KUBECONFIG={shlex.quote(str(config.resolve()))}")
    click.echo(f"Logs: {plane.logs_dir}")
    stop_hint = "rtml dev cluster down"
    if workdir is not None:
        stop_hint += f" --workdir {shlex.quote(str(workdir))}"
    click.echo(f"Stop it with: {stop_hint}")


@cluster.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help=_WORKDIR_HELP)
def down(workdir: Path | None) -> None:
    """Stop the control plane started by `rtml dev cluster up` and delete its etcd data.

    Logs and certificates stay in the workdir until the next `up`.
    """
    from rtml.dev.cluster import cluster_down

    directory = _workdir(workdir)
    try:
        stopped = cluster_down(directory)
    except DevError as error:
        raise click.ClickException(str(error)) from error
    if stopped:
        click.echo(f"Stopped the local control plane in {directory}.")
    else:
        click.echo(f"No local control plane was running from {directory}.")


@dev.group()
def tools() -> None:
    """The Go-built binaries behind the control plane (and helm)."""


@tools.command()
@click.option(
    "--node",
    is_flag=True,
    help="Also build the node's binaries (kubelet, kube-scheduler, kube-proxy, containerd, runc, "
    "the CNI plugins, coredns, pause) and print their directory instead.",
)
def build(node: bool) -> None:
    """Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm if not cached.

    They are built from the Go modules pinned in rtml into a cache keyed by those pins and the Go
    version ($RTML_CACHE_DIR, else $XDG_CACHE_HOME/rtml, else ~/.cache/rtml). Needs Go. Prints
    the directory holding the binaries.

    With --node, the node's binaries are built too, into their own cache keyed by the node's
    pins (runc and pause also need gcc, pkg-config, libc6-dev and libseccomp-dev), and the
    directory holding them is printed (the CNI plugins are in its cni/ folder).
    """
    from rtml.dev.tools import ensure_node_tools, ensure_tools

    try:
        bin_dir = ensure_tools(progress=_progress)
        if node:
            bin_dir = ensure_node_tools(progress=_progress)
    except DevError as error:
        raise click.ClickException(str(error)) from error
    click.echo(str(bin_dir))


@dev.group()
def images() -> None:
    """The container images: the runtime, the operator and Redis for the local cluster."""


@images.command("build")
@click.option(
    "--context",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path(),
    show_default="the current directory",
    help="The rtml checkout to build from (it holds pyproject.toml and the Containerfiles).",
)
@click.option(
    "--only",
    type=click.Choice(["runtime", "operator", "redis"]),
    multiple=True,
    help="Build only this image (repeatable) [default: all three].",
)
def images_build(context: Path, only: tuple[str, ...]) -> None:
    """Build the images with buildah on a Debian base made by mmdebstrap, if not cached.

    Needs Debian's mmdebstrap, buildah, podman and runc; no registry and no Docker engine. The
    base, buildah's layer cache and one OCI archive per image live in $RTML_CACHE_DIR/images
    (else ~/.cache/rtml/images), so a rebuild without changes takes seconds. Prints one line per
    image: its reference, unpacked size and archive size.
    """
    from rtml.dev.images import IMAGE_NAMES, build_images, human_size

    try:
        built = build_images(context, only=only or IMAGE_NAMES, progress=_progress)
    except DevError as error:
        raise click.ClickException(str(error)) from error
    for image in built:
        click.echo(
            f"{image.ref}  unpacked {human_size(image.unpacked_bytes)}  "
            f"archive {human_size(image.archive_bytes)}  {image.archive}"
        )


@dev.command("thirdparty-crds")
def thirdparty_crds() -> None:
    """Fetch (or find cached) the upstream CRDs the tests and the demo install (KServe's
    InferenceService, KEDA's ScaledObject) from their Go modules at pinned versions, and print
    the folder holding them. `$RTML_THIRDPARTY_CRDS` points elsewhere instead."""
    from rtml.dev.thirdparty import thirdparty_crds_dir

    try:
        click.echo(str(thirdparty_crds_dir(progress=_progress)))
    except DevError as error:
        raise click.ClickException(str(error)) from error
