"""The local node's configuration, rendered purely: the settings this machine needs are there."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rtml.dev.nodeconfig import (
    BRIDGE,
    BRIDGE_IP,
    CGROUP_ROOT,
    PAUSE_IMAGE,
    SERVICE_CIDR,
    NodePaths,
    cni_network,
    containerd_config,
    corefile,
    kube_proxy_config,
    kubelet_config,
)

pytestmark = pytest.mark.unit
PATHS = NodePaths(Path("/w/node"), Path("/cache/node/bin"))


def test_containerd_config_is_toml_with_what_this_machine_needs() -> None:
    config = tomllib.loads(containerd_config(PATHS))
    assert config["version"] == 4
    assert config["root"].startswith("/w/node/")
    assert config["imports"] == []  # nothing from /etc/containerd
    sockets = [
        config["plugins"][f"io.containerd.server.v1.{s}"]["address"] for s in ("grpc", "ttrpc")
    ]
    assert all(s.startswith(str(PATHS.sockets_dir)) for s in sockets)
    assert all(len(s) < 104 for s in sockets)  # the limit of a unix socket path
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    # Without CAP_SYS_RESOURCE every sandbox fails on oom_score_adj unless this is set.
    assert runtime["restrict_oom_score_adj"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": "/cache/node/bin/runc", "SystemdCgroup": False}
    assert runtime["cni"]["bin_dirs"] == ["/cache/node/bin/cni"]
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == PAUSE_IMAGE


def test_the_pod_network_stays_on_this_machine() -> None:
    bridge = cni_network(PATHS)["plugins"][0]
    assert bridge["bridge"] == BRIDGE
    # isGateway would turn the global ip_forward on; ipMasq would NAT pods off the machine.
    assert (bridge["isGateway"], bridge["isDefaultGateway"], bridge["ipMasq"]) == (False,) * 3
    assert bridge["ipam"]["routes"] == [{"dst": SERVICE_CIDR, "gw": BRIDGE_IP}]
    assert not any(r["dst"] == "0.0.0.0/0" for r in bridge["ipam"]["routes"])


def test_the_kubelet_is_a_good_neighbour() -> None:
    config = kubelet_config(PATHS, Path("/ca.crt"), Path("/k.crt"), Path("/k.key"))
    assert (config["failCgroupV1"], config["cgroupDriver"]) == (False, "cgroupfs")
    assert config["cgroupRoot"] == CGROUP_ROOT
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    # The disk is shared with the host: the node never evicts or collects images for it.
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["imageGCLowThresholdPercent"] < 100
    assert config["evictionHard"]["nodefs.available"] == "0%"


def test_kube_proxy_leaves_conntrack_sysctls_alone() -> None:
    config = kube_proxy_config(Path("/p.kubeconfig"), 10256, 10249)
    assert config["mode"] == "nftables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["min"] == 0


def test_coredns_forwards_nothing_off_the_machine() -> None:
    text = corefile(Path("/dns.kubeconfig"), 8181)
    assert f"bind {BRIDGE_IP}" in text
    assert "forward" not in text
