"""The local node's configuration files, rendered purely (no I/O): containerd's config, the CNI
network, the kubelet's KubeletConfiguration, kube-proxy's and CoreDNS's.

The facts of this machine behind each setting are in docs/local-node.md: cgroups v1 (hybrid)
left as they are, no CAP_SYS_RESOURCE, a host-only bridge with no route or NAT off the machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "rtml-node"
BRIDGE = "rtml0"
POD_CIDR = "10.244.0.0/24"
BRIDGE_IP = "10.244.0.1"  # the node's InternalIP, the pods' gateway, the API server's address
# The control plane's --service-cluster-ip-range: kubeadm's default, /12 (a /24 ran out at 253
# Services with 1,000 Models: every reconcile then failed with "range is full", issue 12).
SERVICE_CIDR = "10.96.0.0/12"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "localhost/rtml-pause:3.10"
# Pods live under this cgroup of every hierarchy, so the kubelet never touches the host's others.
CGROUP_ROOT = "/rtml-node"


@dataclass(frozen=True)
class NodePaths:
    """Everything the node writes, under one work directory (but the shim sockets, which
    containerd keeps in /run/containerd/s)."""

    root: Path
    bin_dir: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def sockets_dir(self) -> Path:
        """A short folder for containerd's sockets: a unix socket path has at most 104
        characters, which a work directory under pytest's tmp folder exceeds."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        return Path("/run") / f"rtml-node-{digest}"

    @property
    def containerd_socket(self) -> Path:
        return self.sockets_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def cni_bin_dir(self) -> Path:
        return self.bin_dir / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these paths


def containerd_config(paths: NodePaths) -> str:
    """containerd 2.4 config (version 4, as `containerd config default` prints it).

    Its state under the work directory; runc from the node's bin dir with cgroupfs (cgroups v1
    here); CNI from the node's bin dir; the locally built pause image pinned; and
    `restrict_oom_score_adj` (this VM lacks CAP_SYS_RESOURCE: without it every sandbox fails
    writing /proc/self/oom_score_adj)."""
    runc = paths.bin_dir / "runc"
    return f"""version = 4
root = {_toml_str(str(paths.containerd_root))}
state = {_toml_str(str(paths.containerd_state))}
imports = []
# Only what a Kubernetes node needs; the rest would start listeners and timers for nothing.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri",
]

[plugins."io.containerd.server.v1.grpc"]
  address = {_toml_str(str(paths.containerd_socket))}

[plugins."io.containerd.server.v1.ttrpc"]
  address = {_toml_str(str(paths.containerd_socket) + ".ttrpc")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {_toml_str(PAUSE_IMAGE)}

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {_toml_str(str(runc))}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{_toml_str(str(paths.cni_bin_dir))}]
    conf_dir = {_toml_str(str(paths.cni_conf_dir))}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_network(paths: NodePaths) -> dict[str, Any]:
    """The pod network: a host-only bridge that rtml creates with its address, so the bridge
    plugin needs no `isGateway` (which would turn on the global ip_forward) and no `ipMasq`
    (no NAT off the machine). Pods route the service range via the bridge, where kube-proxy's
    rules turn a ClusterIP into a pod or host address."""
    return {
        "cniVersion": "1.0.0",
        "name": "rtml",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                    "routes": [{"dst": SERVICE_CIDR, "gw": BRIDGE_IP}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    paths: NodePaths, ca_cert: Path, serving_cert: Path, serving_key: Path
) -> dict[str, Any]:
    """KubeletConfiguration for a node sharing the machine with everything else on it.

    cgroups v1 with cgroupfs; its pods under CGROUP_ROOT; anonymous access off and the API
    server's requests authenticated by client certificate and authorized by webhook, as in a
    real cluster; eviction and image garbage collection set so they never act on anything but
    the node's own pods and images (the disk is shared with the host: percentages of it say
    nothing about the node).
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": CGROUP_ROOT,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "address": BRIDGE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(paths.resolv_conf),
        "podLogsDir": str(paths.pod_logs),
        "failSwapOn": False,
        "protectKernelDefaults": False,  # it would refuse to start; `down` restores instead
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "maxPods": 60,
        "staticPodPath": "",
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "localStorageCapacityIsolation": True,
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """nftables mode; conntrack values 0 so it changes none of the host's conntrack sysctls;
    its health and metrics on loopback."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": BRIDGE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "nodePortAddresses": [f"{BRIDGE_IP}/32"],
    }


def corefile(kubeconfig: Path, ready_port: int, port: int = 53) -> str:
    """CoreDNS on the bridge address: cluster names from the API server, nothing forwarded off
    the machine (pods need no egress)."""
    return f""".:{port} {{
    bind {BRIDGE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loop
}}
"""


def dns_service() -> list[dict[str, Any]]:
    """The `kube-dns` Service in kube-system and its EndpointSlice at the node's CoreDNS."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]  # fmt: skip
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            # No selector: the endpoints are the host process, written below.
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "ports": [{**p, "targetPort": 53} for p in ports],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "rtml-dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}}],
            "ports": ports,
        },
    ]
