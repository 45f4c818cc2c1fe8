"""Building the control plane's binaries (etcd, kube-apiserver, kube-controller-manager, kubectl,
helm) from the Go modules pinned under ``gotools/``, into a cache outside the checkout keyed by
those pins and the Go version, so a warm machine never rebuilds.

The node's binaries (kubelet, kube-scheduler, kube-proxy, containerd and its shim, ctr, runc, the
CNI plugins, CoreDNS and a static pause) are built the same way into a separate cache keyed by
the node's own pins, so adding or bumping them never rebuilds the control plane."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rtml.dev.errors import ToolsError
from rtml.dev.process import log_tail

log = logging.getLogger("rtml.dev")

GOTOOLS_DIR = Path(__file__).resolve().parent / "gotools"
# Hashed in this order (all go.mod, then all go.sum), like `cat tools/*/go.mod tools/*/go.sum`.
MODULES = ("etcd", "helm", "k8s")

Progress = Callable[[str], None]
# Stamp the Kubernetes binaries with their real version (clients and Helm's kubeVersion checks
# read it); bump RECIPE whenever the build command changes so cached binaries are rebuilt.
RECIPE = "2"
K8S_VERSION = "v1.35.4"
_VERSION_PKG = "k8s.io/component-base/version"
K8S_LDFLAGS = " ".join(
    f"-X {_VERSION_PKG}.{k}={v}"
    for k, v in (
        ("gitVersion", K8S_VERSION),
        ("gitMajor", "1"),
        ("gitMinor", "35"),
        ("gitTreeState", "clean"),
    )
)


@dataclass(frozen=True)
class GoBinary:
    """One binary built with ``go build`` from a package of a module under ``gotools/``."""

    name: str
    module: str
    package: str
    ldflags: str = ""
    cgo: bool = False
    tags: tuple[str, ...] = ()
    subdir: str = ""  # relative to the bin dir (the CNI plugins live in ``cni/``)


# The control plane, built in this order.
BINARIES = (
    GoBinary("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
    GoBinary("kube-apiserver", "k8s", "k8s.io/kubernetes/cmd/kube-apiserver", K8S_LDFLAGS),
    GoBinary(
        "kube-controller-manager",
        "k8s",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        K8S_LDFLAGS,
    ),
    GoBinary("kubectl", "k8s", "k8s.io/kubernetes/cmd/kubectl", K8S_LDFLAGS),
    GoBinary("helm", "helm", "helm.sh/helm/v3/cmd/helm"),
)

# The node: its own modules and recipe, hashed into its own cache key. The versions below are
# the ones the modules' go.mod files require (a unit test keeps them in step).
NODE_MODULES = ("k8snode", "containerd", "runc", "cni", "coredns")
NODE_RECIPE = "1"
CONTAINERD_VERSION = "v2.4.2"
RUNC_VERSION = "v1.4.4"
CNI_PLUGINS_VERSION = "v1.10.0"
COREDNS_VERSION = "v1.15.0"
# The TAG of k8s.io/kubernetes' build/pause/Makefile at K8S_VERSION.
PAUSE_VERSION = "3.10.1"
_CONTAINERD = "github.com/containerd/containerd/v2"
_CONTAINERD_LDFLAGS = (
    f"-X {_CONTAINERD}/version.Version={CONTAINERD_VERSION} "
    f"-X {_CONTAINERD}/version.Package={_CONTAINERD}"
)
_CNI = "github.com/containernetworking/plugins"
_CNI_LDFLAGS = f"-X {_CNI}/pkg/utils/buildversion.BuildVersion={CNI_PLUGINS_VERSION}"
NODE_BINARIES = (
    GoBinary("kubelet", "k8snode", "k8s.io/kubernetes/cmd/kubelet", K8S_LDFLAGS),
    GoBinary("kube-scheduler", "k8snode", "k8s.io/kubernetes/cmd/kube-scheduler", K8S_LDFLAGS),
    GoBinary("kube-proxy", "k8snode", "k8s.io/kubernetes/cmd/kube-proxy", K8S_LDFLAGS),
    # As containerd's Makefile builds them: the daemon and ctr with cgo, the shim without.
    GoBinary(
        "containerd",
        "containerd",
        f"{_CONTAINERD}/cmd/containerd",
        _CONTAINERD_LDFLAGS,
        cgo=True,
        tags=("no_btrfs",),
    ),
    GoBinary(
        "containerd-shim-runc-v2",
        "containerd",
        f"{_CONTAINERD}/cmd/containerd-shim-runc-v2",
        _CONTAINERD_LDFLAGS,
        tags=("no_btrfs",),
    ),
    GoBinary(
        "ctr",
        "containerd",
        f"{_CONTAINERD}/cmd/ctr",
        _CONTAINERD_LDFLAGS,
        cgo=True,
        tags=("no_btrfs",),
    ),
    # runc's Makefile tags; its version comes from the VERSION file it embeds.
    GoBinary(
        "runc",
        "runc",
        "github.com/opencontainers/runc",
        cgo=True,
        tags=("seccomp", "urfave_cli_no_docs"),
    ),
    *(
        GoBinary(name, "cni", f"{_CNI}/plugins/{path}", _CNI_LDFLAGS, subdir="cni")
        for name, path in (
            ("bridge", "main/bridge"),
            ("host-local", "ipam/host-local"),
            ("loopback", "main/loopback"),
            ("portmap", "meta/portmap"),
        )
    ),
    GoBinary("coredns", "coredns", "github.com/coredns/coredns"),
)

# The autoscaling add-ons (metrics-server for the resource metrics API, prometheus-adapter for
# the custom metrics API): their own modules and key, so adding or bumping them rebuilds neither
# the control plane nor the node. `ensure_node_tools` builds them and links them into the node's
# bin directory, where the local cluster and the tests find them.
ADDON_MODULES = ("metricsserver", "promadapter")
ADDON_RECIPE = "1"
METRICS_SERVER_VERSION = "v0.8.0"
PROMETHEUS_ADAPTER_VERSION = "v0.12.0"
ADDON_BINARIES = (
    GoBinary(
        "metrics-server",
        "metricsserver",
        "sigs.k8s.io/metrics-server/cmd/metrics-server",
        f"-X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER_VERSION}",  # its Makefile's
    ),
    GoBinary("prometheus-adapter", "promadapter", "sigs.k8s.io/prometheus-adapter/cmd/adapter"),
)


def cache_root() -> Path:
    """``$RTML_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtml``, else ``~/.cache/rtml``."""
    explicit = os.environ.get("RTML_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rtml"


def cache_key(go_version: str, modules_dir: Path = GOTOOLS_DIR) -> str:
    """First 16 hex digits of the sha256 of the pins, a dash, and the Go version."""
    return _pins_key(MODULES, RECIPE, go_version, modules_dir)


def node_cache_key(go_version: str, modules_dir: Path = GOTOOLS_DIR) -> str:
    """The same for the node's modules and recipe (the control plane's key ignores them)."""
    return _pins_key(
        NODE_MODULES, f"node-{NODE_RECIPE}-pause-{PAUSE_VERSION}", go_version, modules_dir
    )


def addon_cache_key(go_version: str, modules_dir: Path = GOTOOLS_DIR) -> str:
    """The same for the autoscaling add-ons."""
    return _pins_key(ADDON_MODULES, f"addons-{ADDON_RECIPE}", go_version, modules_dir)


def _pins_key(modules: Iterable[str], recipe: str, go_version: str, modules_dir: Path) -> str:
    digest = hashlib.sha256()
    modules = tuple(modules)
    for name in ("go.mod", "go.sum"):
        for module in modules:
            path = modules_dir / module / name
            try:
                digest.update(path.read_bytes())
            except FileNotFoundError as error:
                raise ToolsError(
                    f"The pinned Go module file {path} is missing; the rtml installation is "
                    "incomplete."
                ) from error
    digest.update(recipe.encode())
    return f"{digest.hexdigest()[:16]}-{go_version}"


def go_version() -> str:
    """The output of ``go env GOVERSION``."""
    go = shutil.which("go")
    if go is None:
        raise ToolsError(
            "Go is not installed (no `go` on PATH); install Go 1.26 or newer from "
            "https://go.dev/dl/ so rtml can build etcd, kube-apiserver, kube-controller-manager, "
            "kubectl and helm for the local control plane."
        )
    result = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    version = result.stdout.strip()
    if result.returncode != 0 or not version:
        raise ToolsError(
            f"`go env GOVERSION` failed (exit status {result.returncode}): "
            f"{result.stderr.strip() or 'no output'}"
        )
    return version


def bin_dir() -> Path:
    """Where the binaries for the current pins and Go version live (built or not)."""
    return cache_root() / "tools" / cache_key(go_version()) / "bin"


def node_bin_dir() -> Path:
    """Where the node's binaries for the current node pins and Go version live (built or not)."""
    return cache_root() / "node-tools" / node_cache_key(go_version()) / "bin"


def addon_bin_dir() -> Path:
    """Where the autoscaling add-ons for the current pins and Go version live (built or not)."""
    return cache_root() / "addon-tools" / addon_cache_key(go_version()) / "bin"


def ensure_tools(progress: Progress = print) -> Path:
    """Build whichever binaries are missing and return the directory holding all five."""
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    with build_lock(target.parent / ".build.lock"):
        for binary in BINARIES:
            _ensure_binary(target, binary, progress)
    return target


def ensure_node_tools(progress: Progress = print) -> Path:
    """Build whichever node binaries are missing and return the directory holding them.

    It holds kubelet, kube-scheduler, kube-proxy, containerd, containerd-shim-runc-v2, ctr, runc,
    coredns and pause, the CNI plugins (bridge, host-local, loopback, portmap) in ``cni/``, and
    links to the autoscaling add-ons (metrics-server, prometheus-adapter), cached apart.
    runc needs cgo with libseccomp, and pause a static C build: gcc, pkg-config and Debian's
    libc6-dev and libseccomp-dev (checked first, before any build starts).
    """
    target = node_bin_dir()
    (target / "cni").mkdir(parents=True, exist_ok=True)
    with build_lock(target.parent / ".build.lock"):
        missing = [b for b in NODE_BINARIES if not _executable(target / b.subdir / b.name)]
        _check_c_toolchain(
            [b for b in missing if b.cgo], need_pause=not _executable(target / "pause")
        )
        for binary in NODE_BINARIES:
            _ensure_binary(target, binary, progress)
        _ensure_pause(target, progress)
    addons = addon_bin_dir()
    addons.mkdir(parents=True, exist_ok=True)
    with build_lock(addons.parent / ".build.lock"):
        for binary in ADDON_BINARIES:
            _ensure_binary(addons, binary, progress)
            _link(target / binary.name, addons / binary.name)
    return target


def _link(link: Path, to: Path) -> None:
    """Point `link` at `to` (replacing an older link: the add-ons' pins may have moved)."""
    if link.is_symlink() and link.readlink() == to:
        return
    tmp = link.with_name(link.name + ".link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(to)
    tmp.replace(link)


def _executable(path: Path) -> bool:
    return os.access(path, os.X_OK)


def _check_c_toolchain(cgo_binaries: list[GoBinary], need_pause: bool) -> None:
    """Fail early, naming the Debian package, when what a cgo or C build needs is missing."""
    if not cgo_binaries and not need_pause:
        return
    what = ", ".join([b.name for b in cgo_binaries] + (["pause"] if need_pause else []))
    if shutil.which("gcc") is None:
        raise ToolsError(
            f"gcc is not installed; building {what} for the local node needs a C compiler "
            "(Debian: `apt-get install gcc libc6-dev`)."
        )
    if need_pause:
        libc = Path(
            subprocess.run(
                ["gcc", "-print-file-name=libc.a"], capture_output=True, text=True, check=False
            ).stdout.strip()
        )
        if not libc.is_absolute() or not libc.exists():
            raise ToolsError(
                "The static C library (libc.a) is missing; the local node's pause binary is "
                "linked statically (Debian: `apt-get install libc6-dev`)."
            )
    if any("seccomp" in b.tags for b in cgo_binaries):
        if shutil.which("pkg-config") is None:
            raise ToolsError(
                "pkg-config is not installed; runc is built with seccomp support and finds "
                "libseccomp with it (Debian: `apt-get install pkg-config libseccomp-dev`)."
            )
        found = subprocess.run(
            ["pkg-config", "--exists", "libseccomp"], capture_output=True, check=False
        )
        if found.returncode != 0:
            raise ToolsError(
                "libseccomp's development files are missing; runc is built with seccomp "
                "support (Debian: `apt-get install libseccomp-dev`)."
            )


def _ensure_binary(target: Path, spec: GoBinary, progress: Progress) -> None:
    directory = target / spec.subdir
    binary = directory / spec.name
    if _executable(binary):
        progress(f"tools: {spec.name} cached at {binary}")
        return
    progress(f"tools: building {spec.name} from {spec.package} (cold build, this takes minutes)...")
    started = time.monotonic()
    tmp = directory / f"{spec.name}.tmp"
    build_log = target.parent / f"build-{spec.name}.log"
    env = {**os.environ, "CGO_ENABLED": "1" if spec.cgo else "0"}
    command = ["go", "build", "-mod=mod", "-trimpath"]
    if spec.tags:
        command.append("-tags=" + ",".join(spec.tags))
    command += [
        "-ldflags=-s -w" + (f" {spec.ldflags}" if spec.ldflags else ""),
        "-o",
        str(tmp),
        spec.package,
    ]
    module_dir = GOTOOLS_DIR / spec.module
    log.info("building %s: %s (in %s)", spec.name, " ".join(command), module_dir)
    with build_log.open("wb") as out:
        result = subprocess.run(
            command, cwd=module_dir, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolsError(
            f"Building {spec.name} from {spec.package} failed (go build exited with status "
            f"{result.returncode}); the last lines of {build_log}:\n{log_tail(build_log)}"
        )
    tmp.replace(binary)
    progress(f"tools: built {spec.name} in {time.monotonic() - started:.0f}s")


def _ensure_pause(target: Path, progress: Progress) -> None:
    """Kubernetes' pause (the sandbox container's process), statically linked from its C source
    in the k8s.io/kubernetes module the node's Go module pins."""
    binary = target / "pause"
    if _executable(binary):
        progress(f"tools: pause cached at {binary}")
        return
    progress(f"tools: building pause {PAUSE_VERSION} from k8s.io/kubernetes {K8S_VERSION}...")
    started = time.monotonic()
    module_dir = GOTOOLS_DIR / "k8snode"
    found = subprocess.run(
        ["go", "list", "-mod=mod", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        cwd=module_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    source = Path(found.stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    if found.returncode != 0 or not source.is_file():
        raise ToolsError(
            f"Could not find pause.c in the k8s.io/kubernetes {K8S_VERSION} module source "
            f"(`go list -m k8s.io/kubernetes` in {module_dir} exited with status "
            f"{found.returncode}: {found.stderr.strip() or found.stdout.strip() or 'no output'})."
        )
    tmp = target / "pause.tmp"
    build_log = target.parent / "build-pause.log"
    command = [
        "gcc",
        "-Os",
        "-Wall",
        "-Werror",
        "-static",
        "-s",
        f"-DVERSION=v{PAUSE_VERSION}",
        "-o",
        str(tmp),
        str(source),
    ]
    with build_log.open("wb") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolsError(
            f"Building pause from {source} failed (gcc exited with status {result.returncode}); "
            f"the last lines of {build_log}:\n{log_tail(build_log)}"
        )
    tmp.replace(binary)
    progress(f"tools: built pause in {time.monotonic() - started:.0f}s")


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Serialise builds between processes (parallel test sessions, two CLIs) on one cache."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
