"""The Go tool caches' keys: the control plane's and the node's are keyed by their own pins."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from rtml.dev import tools
from rtml.dev.errors import ToolsError

pytestmark = pytest.mark.unit
GO = "go1.26.8"


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    copy = tmp_path / "gotools"
    shutil.copytree(tools.GOTOOLS_DIR, copy)
    return copy


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "// changed\n")


def test_control_plane_key_is_the_hash_of_its_pins_as_before(modules: Path) -> None:
    # The formula the cache in ~/.cache/rtml/tools/<key> was keyed by before the node existed:
    # all go.mod, then all go.sum of etcd, helm and k8s, then the recipe.
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        for module in ("etcd", "helm", "k8s"):
            digest.update((modules / module / name).read_bytes())
    digest.update(tools.RECIPE.encode())
    assert tools.cache_key(GO, modules) == f"{digest.hexdigest()[:16]}-{GO}"


@pytest.mark.parametrize("module", tools.NODE_MODULES)
@pytest.mark.parametrize("name", ["go.mod", "go.sum"])
def test_node_pins_change_the_node_key_only(modules: Path, module: str, name: str) -> None:
    plane, node = tools.cache_key(GO, modules), tools.node_cache_key(GO, modules)
    _touch(modules / module / name)
    assert tools.cache_key(GO, modules) == plane
    assert tools.node_cache_key(GO, modules) != node


@pytest.mark.parametrize("module", tools.MODULES)
def test_control_plane_pins_change_the_control_plane_key_only(modules: Path, module: str) -> None:
    plane, node = tools.cache_key(GO, modules), tools.node_cache_key(GO, modules)
    _touch(modules / module / "go.mod")
    assert tools.cache_key(GO, modules) != plane
    assert tools.node_cache_key(GO, modules) == node


def test_node_key_changes_with_the_recipe_and_go(
    modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tools.node_cache_key(GO, modules)
    assert tools.node_cache_key("go1.27.0", modules) != node
    assert tools.node_cache_key(GO, modules).endswith(f"-{GO}")
    monkeypatch.setattr(tools, "NODE_RECIPE", tools.NODE_RECIPE + "x")
    assert tools.node_cache_key(GO, modules) != node
    monkeypatch.undo()
    monkeypatch.setattr(tools, "PAUSE_VERSION", "0.0.0")
    assert tools.node_cache_key(GO, modules) != node
    assert tools.cache_key(GO, modules) == tools.cache_key(GO, tools.GOTOOLS_DIR)


def test_a_missing_node_pin_is_a_sentence(modules: Path) -> None:
    (modules / "runc" / "go.sum").unlink()
    with pytest.raises(ToolsError, match=r"runc/go\.sum is missing"):
        tools.node_cache_key(GO, modules)
    tools.cache_key(GO, modules)  # the control plane does not need the node's pins


def test_node_cache_is_beside_not_inside_the_control_plane_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tools, "go_version", lambda: GO)
    assert tools.bin_dir() == tmp_path / "tools" / tools.cache_key(GO) / "bin"
    assert tools.node_bin_dir() == tmp_path / "node-tools" / tools.node_cache_key(GO) / "bin"


@pytest.mark.parametrize("module", tools.ADDON_MODULES)
def test_addon_pins_change_the_addon_key_only(modules: Path, module: str) -> None:
    keys = (tools.cache_key(GO, modules), tools.node_cache_key(GO, modules))
    addon = tools.addon_cache_key(GO, modules)
    _touch(modules / module / "go.mod")
    assert (tools.cache_key(GO, modules), tools.node_cache_key(GO, modules)) == keys
    assert tools.addon_cache_key(GO, modules) != addon


def _required(module: str, path: str) -> str:
    text = (tools.GOTOOLS_DIR / module / "go.mod").read_text()
    match = re.search(rf"^(?:require\s+|\t){re.escape(path)} (v\S+)$", text, re.MULTILINE)
    assert match, f"{path} is not required in gotools/{module}/go.mod"
    return match.group(1)


@pytest.mark.parametrize(
    ("module", "path", "version"),
    [
        ("k8snode", "k8s.io/kubernetes", tools.K8S_VERSION),
        ("k8s", "k8s.io/kubernetes", tools.K8S_VERSION),
        ("containerd", "github.com/containerd/containerd/v2", tools.CONTAINERD_VERSION),
        ("runc", "github.com/opencontainers/runc", tools.RUNC_VERSION),
        ("cni", "github.com/containernetworking/plugins", tools.CNI_PLUGINS_VERSION),
        ("coredns", "github.com/coredns/coredns", tools.COREDNS_VERSION),
        ("metricsserver", "sigs.k8s.io/metrics-server", tools.METRICS_SERVER_VERSION),
        ("promadapter", "sigs.k8s.io/prometheus-adapter", tools.PROMETHEUS_ADAPTER_VERSION),
    ],
)
def test_version_constants_match_the_pins(module: str, path: str, version: str) -> None:
    assert _required(module, path) == version


def test_node_kubernetes_module_resolves_like_the_control_planes() -> None:
    """Same k8s.io/kubernetes, same replaces, same versions of shared dependencies: the kubelet
    build reuses the control plane's Go build cache."""

    def requires(module: str) -> dict[str, str]:
        text = (tools.GOTOOLS_DIR / module / "go.mod").read_text()
        return dict(re.findall(r"^\t(\S+) (v\S+) // indirect$", text, re.MULTILINE))

    def replaces(module: str) -> list[str]:
        text = (tools.GOTOOLS_DIR / module / "go.mod").read_text()
        return re.findall(r"^\t(\S+ => \S+ \S+)$", text, re.MULTILINE)

    plane, node = requires("k8s"), requires("k8snode")
    assert {m: v for m, v in node.items() if m in plane and plane[m] != v} == {}
    assert replaces("k8snode") == replaces("k8s") != []


def test_every_node_binary_has_a_unique_place() -> None:
    places = [(b.subdir, b.name) for b in tools.NODE_BINARIES] + [("", "pause")]
    assert len(places) == len(set(places))
    assert {b.module for b in tools.NODE_BINARIES} == set(tools.NODE_MODULES)
    assert {b.name for b in tools.NODE_BINARIES if b.subdir == "cni"} == {
        "bridge",
        "host-local",
        "loopback",
        "portmap",
    }


@pytest.mark.parametrize(
    ("absent", "package"), [("gcc", "apt-get install gcc"), ("pkg-config", "pkg-config")]
)
def test_a_missing_c_tool_is_named_before_any_build(
    monkeypatch: pytest.MonkeyPatch, absent: str, package: str
) -> None:
    real = shutil.which
    monkeypatch.setattr(tools.shutil, "which", lambda cmd: None if cmd == absent else real(cmd))
    runc = next(b for b in tools.NODE_BINARIES if b.name == "runc")
    with pytest.raises(ToolsError, match=re.escape(package)):
        tools._check_c_toolchain([runc], need_pause=False)


def test_nothing_to_build_in_c_checks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.shutil, "which", lambda _cmd: None)
    tools._check_c_toolchain([], need_pause=False)
