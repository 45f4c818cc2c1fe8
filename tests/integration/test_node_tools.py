"""The node's binaries, built (or found cached) by ``ensure_node_tools``, run and are what was
pinned: kubelet and friends at the control plane's Kubernetes version, containerd, runc with
seccomp, the CNI plugins, CoreDNS and a static pause."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rtml.dev import tools
from rtml.dev.tools import ensure_node_tools

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def node_bin() -> Path:
    return ensure_node_tools(progress=lambda _m: None)


def run(argv: list[str | Path], env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )
    return out.stdout + out.stderr


def test_layout(node_bin: Path) -> None:
    expected = {
        "kubelet",
        "kube-scheduler",
        "kube-proxy",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "coredns",
        "pause",
    }
    binaries = {p.name for p in node_bin.iterdir() if p.is_file() and os.access(p, os.X_OK)}
    # The autoscaling add-ons: links into their own cache (rtml.dev.tools.ADDON_BINARIES).
    addons = {"metrics-server", "prometheus-adapter"}
    assert binaries == expected | addons
    for name in addons:
        assert (node_bin / name).is_symlink()
        assert (node_bin / name).resolve().parent == tools.addon_bin_dir()
    assert {p.name for p in (node_bin / "cni").iterdir()} == {
        "bridge",
        "host-local",
        "loopback",
        "portmap",
    }
    assert node_bin != tools.bin_dir()
    assert not list(node_bin.rglob("*.tmp"))


def test_the_second_call_finds_everything_cached(node_bin: Path) -> None:
    messages: list[str] = []
    assert ensure_node_tools(progress=messages.append) == node_bin
    assert messages
    assert all(" cached at " in m for m in messages), messages


@pytest.mark.parametrize("name", ["kubelet", "kube-scheduler", "kube-proxy"])
def test_kubernetes_binaries_report_the_pinned_version(node_bin: Path, name: str) -> None:
    assert run([node_bin / name, "--version"]).split() == ["Kubernetes", tools.K8S_VERSION]


def test_containerd_and_ctr(node_bin: Path) -> None:
    version = tools.CONTAINERD_VERSION
    assert f"github.com/containerd/containerd/v2 {version}" in run(
        [node_bin / "containerd", "--version"]
    )
    assert version in run([node_bin / "ctr", "--version"])
    assert version in run([node_bin / "containerd-shim-runc-v2", "-v"])


def test_the_shim_is_static(node_bin: Path) -> None:
    assert "statically linked" in run(["file", node_bin / "containerd-shim-runc-v2"])


def test_runc_has_seccomp(node_bin: Path) -> None:
    version = run([node_bin / "runc", "--version"])
    assert f"runc version {tools.RUNC_VERSION.removeprefix('v')}" in version
    assert "libseccomp: 2." in version
    features = json.loads(run([node_bin / "runc", "features"]))
    assert features["linux"]["seccomp"]["enabled"] is True
    assert "SCMP_ACT_ERRNO" in features["linux"]["seccomp"]["actions"]


def test_coredns(node_bin: Path) -> None:
    assert f"CoreDNS-{tools.COREDNS_VERSION.removeprefix('v')}" in run(
        [node_bin / "coredns", "-version"]
    )


@pytest.mark.parametrize("plugin", ["bridge", "host-local", "loopback", "portmap"])
def test_cni_plugins_answer_version(node_bin: Path, plugin: str) -> None:
    answer = json.loads(run([node_bin / "cni" / plugin], env={"CNI_COMMAND": "VERSION"}))
    assert "1.0.0" in answer["supportedVersions"]
    assert answer["cniVersion"]


def test_cni_plugins_report_the_pinned_version(node_bin: Path) -> None:
    # Without CNI_COMMAND a plugin prints its "about" line (and exits 0 or 1 by version).
    out = subprocess.run(
        [str(node_bin / "cni" / "bridge")], capture_output=True, text=True, check=False, timeout=60
    )
    assert tools.CNI_PLUGINS_VERSION in out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("file") is None, reason="needs Debian's `file`")
def test_pause_is_static(node_bin: Path) -> None:
    described = run(["file", node_bin / "pause"])
    assert "statically linked" in described, described
    assert run([node_bin / "pause", "-v"]).strip() == f"pause.c v{tools.PAUSE_VERSION}"
