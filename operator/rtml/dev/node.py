"""A real node beside the local control plane: containerd + runc, the CNI bridge, kubelet,
kube-scheduler, kube-proxy and CoreDNS, from binaries built from Go modules
(`rtml dev tools build --node`). What the operator renders runs here as real pods.

The host is shared with everything else on it, so the node is careful with it (docs/local-node.md):
- its state lives under the cluster's work directory, its pods under the `/rtml-node` cgroup;
- the pod network is a host-only bridge: no NAT, no default route, global ip_forward untouched;
- the kubelet changes three kernel sysctls; they are recorded before `up` and restored by `down`;
- `cleanup()` removes every process, mount, network namespace, veth, bridge, nftables table and
  cgroup the node made, and is also what `up` runs first after a run that died without `down`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rtml.dev import certs
from rtml.dev.errors import ControlPlaneError
from rtml.dev.images import build_pause_image, images_dir
from rtml.dev.kubeconfig import write_kubeconfig
from rtml.dev.nodeconfig import (
    BRIDGE,
    BRIDGE_IP,
    CGROUP_ROOT,
    NODE_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    NodePaths,
    cni_network,
    containerd_config,
    corefile,
    dns_service,
    kube_proxy_config,
    kubelet_config,
)
from rtml.dev.process import Managed, free_port

log = logging.getLogger("rtml.dev.node")

NODE_STATE = "node-state.json"
# The kubelet sets these on start (NODE-NOTES.md); `down` puts the recorded values back.
KUBELET_SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
SHIM_SOCKETS = Path("/run/containerd")
NETNS_DIR = Path("/run/netns")
CGROUP_FS = Path("/sys/fs/cgroup")
NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "kubelet",
                 "kube-scheduler", "kube-proxy", "coredns")  # fmt: skip

Launch = Callable[[str, list[str], dict[str, str] | None], Managed]


def _run(
    argv: list[str], check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise ControlPlaneError(
            f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return result


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


class LocalNode:
    """The node's processes and host changes for one control plane's work directory."""

    def __init__(
        self, workdir: Path, bin_dir: Path, cert_files: certs.CertFiles, server: str
    ) -> None:
        self.workdir = workdir
        self.paths = NodePaths(workdir / "node", bin_dir)
        self.certs = cert_files
        self.server = server  # the API server as the node's processes reach it
        self.pki = workdir / "node" / "pki"
        self.proxy_metrics_url = ""  # kube-proxy's /metrics on loopback, once it runs

    # -- host state -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.workdir / NODE_STATE

    def _record_host(self) -> None:
        """What `down` must restore or remove: sysctls as they are now, whether /run/containerd
        existed before."""
        state = {
            "sysctls": {n: _sysctl_path(n).read_text().strip() for n in KUBELET_SYSCTLS},
            "run_containerd_existed": SHIM_SOCKETS.exists(),
            "netns_dir_existed": NETNS_DIR.exists(),
            "netns_before": sorted(p.name for p in NETNS_DIR.glob("*"))
            if NETNS_DIR.exists()
            else [],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def check_binaries(self) -> None:
        missing = [b for b in NODE_BINARIES if not (self.paths.bin_dir / b).is_file()]
        cni = [p for p in ("bridge", "host-local", "loopback", "portmap")
               if not (self.paths.cni_bin_dir / p).is_file()]  # fmt: skip
        if missing or cni:
            raise ControlPlaneError(
                f"The node's binaries are missing in {self.paths.bin_dir} "
                f"({', '.join(missing + [f'cni/{c}' for c in cni])}); run "
                "`rtml dev tools build --node`."
            )
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise ControlPlaneError(
                    f"`{tool}` is not installed; the node needs Debian's iproute2 and nftables."
                )
        if os.geteuid() != 0:
            raise ControlPlaneError(
                "A node (kubelet, containerd) needs root; run as root or pass --no-node."
            )

    # -- start ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything before the API server starts: leftovers cleared, the bridge up (the API
        server advertises its address), certificates, configuration files."""
        self.check_binaries()
        cleanup(self.workdir)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._record_host()
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # The host reaches ClusterIPs through the bridge too (kube-proxy rewrites them there);
        # without this route they would follow the default route off the machine.
        _run(["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", BRIDGE_IP])
        # Forwarding on the bridge only (pod -> ClusterIP -> pod); the global switch stays off.
        _sysctl_path(f"net/ipv4/conf/{BRIDGE}/forwarding").write_text("1\n")
        for d in (self.paths.cni_conf_dir, self.paths.cni_ipam_dir, self.paths.kubelet_root,
                  self.paths.pod_logs, self.pki):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True)
        self.paths.resolv_conf.write_text(f"nameserver {BRIDGE_IP}\n")
        (self.paths.cni_conf_dir / "10-rtml.conflist").write_text(
            json.dumps(cni_network(self.paths), indent=2)
        )
        self.paths.containerd_config.parent.mkdir(parents=True, exist_ok=True)
        self.paths.sockets_dir.mkdir(parents=True, exist_ok=True)
        self.paths.containerd_config.write_text(containerd_config(self.paths))
        self._certificates()

    def _cert(self, name: str, user: str, groups: tuple[str, ...]) -> Path:
        """A client certificate and its kubeconfig; returns the kubeconfig."""
        crt, key = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        certs.issue_client_cert(self.certs, user, groups, crt, key)
        kubeconfig = self.pki / f"{name}.kubeconfig"
        write_kubeconfig(kubeconfig, self.server, ca_cert=self.certs.ca_cert, client_cert=crt,
                         client_key=key, user=user)  # fmt: skip
        return kubeconfig

    def _certificates(self) -> None:
        self.kubelet_kubeconfig = self._cert(
            "kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)
        )
        self.scheduler_kubeconfig = self._cert("kube-scheduler", "system:kube-scheduler", ())
        self.proxy_kubeconfig = self._cert(
            "kube-proxy", "system:kube-proxy", ("system:node-proxier",)
        )
        self.coredns_kubeconfig = self._cert("coredns", "rtml:coredns", ())
        self.kubelet_serving = certs.issue_serving_cert(
            self.certs, NODE_NAME, (NODE_NAME,), (BRIDGE_IP,), self.pki / "kubelet-serving"
        )

    def start(self, launch: Launch, wait: Callable[[str, Callable[[], bool], Managed], None],
              kubectl: Callable[..., str]) -> None:  # fmt: skip
        """Start containerd, import the images, then the scheduler, kubelet, kube-proxy and
        CoreDNS; returns once the Node is Ready."""
        env = {"PATH": f"{self.paths.bin_dir}:{os.environ.get('PATH', '')}"}
        containerd = launch(
            "containerd",
            [str(self.paths.bin_dir / "containerd"), "--config", str(self.paths.containerd_config)],
            env,
        )
        wait("containerd to serve its socket", self.paths.containerd_socket.exists, containerd)
        self._import_images()
        launch(
            "kube-scheduler",
            [str(self.paths.bin_dir / "kube-scheduler"),
             f"--kubeconfig={self.scheduler_kubeconfig}",
             f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
             f"--authorization-kubeconfig={self.scheduler_kubeconfig}",
             "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"],
            None,
        )  # fmt: skip
        _make_cgroup_root()
        cert, key = self.kubelet_serving
        self.paths.kubelet_config.write_text(
            yaml.safe_dump(
                kubelet_config(self.paths, self.certs.ca_cert, cert, key), sort_keys=False
            )
        )
        kubelet = launch(
            "kubelet",
            [str(self.paths.bin_dir / "kubelet"), f"--config={self.paths.kubelet_config}",
             f"--kubeconfig={self.kubelet_kubeconfig}", f"--root-dir={self.paths.kubelet_root}",
             f"--hostname-override={NODE_NAME}", f"--node-ip={BRIDGE_IP}",
             f"--cert-dir={self.pki}", "--v=1"],
            env,
        )  # fmt: skip

        def node_ready() -> bool:
            try:
                ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
                out = kubectl("get", "node", NODE_NAME, "-o", ready)
            except ControlPlaneError:
                return False
            return out.strip() == "True"

        wait("the kubelet to register a Ready node", node_ready, kubelet)
        proxy_config = self.paths.root / "kube-proxy.yaml"
        healthz, metrics = free_port(), free_port()
        proxy_config.write_text(
            yaml.safe_dump(kube_proxy_config(self.proxy_kubeconfig, healthz, metrics))
        )
        self.proxy_metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        proxy = launch(
            "kube-proxy", [str(self.paths.bin_dir / "kube-proxy"), f"--config={proxy_config}"], None
        )
        wait(
            "kube-proxy to program the service rules",
            lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"),
            proxy,
        )
        self._start_dns(launch, wait, kubectl)

    def _start_dns(
        self, launch: Launch, wait: Callable[[str, Callable[[], bool], Managed], None],
        kubectl: Callable[..., str],
    ) -> None:  # fmt: skip
        rbac = [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "rtml:coredns"},
             "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
                        "verbs": ["list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                        "verbs": ["list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "rtml:coredns"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "rtml:coredns"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": "rtml:coredns"}]},
        ]  # fmt: skip
        manifest = self.paths.root / "dns.yaml"
        manifest.write_text(yaml.safe_dump_all([*rbac, *dns_service()]))
        kubectl("apply", "--server-side", "-f", str(manifest))
        corefile_path = self.paths.root / "Corefile"
        ready = free_port()
        corefile_path.write_text(corefile(self.coredns_kubeconfig, ready))
        dns = launch(
            "coredns", [str(self.paths.bin_dir / "coredns"), "-conf", str(corefile_path)], None
        )
        wait(
            "CoreDNS to load the cluster's names",
            lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"),
            dns,
        )

    def _import_images(self) -> None:
        """The locally built images, imported the way a node side-loads an image: no registry
        is reachable, and an import needs no registry process (docs/local-node.md)."""
        pause = build_pause_image(self.paths.bin_dir / "pause", progress=log.info)
        ctr = [str(self.paths.bin_dir / "ctr"), "--address", str(self.paths.containerd_socket),
               "-n", "k8s.io"]  # fmt: skip
        archives = [pause.archive, *sorted(a for a in images_dir().glob("rtml-*.tar")
                                           if a != pause.archive)]  # fmt: skip
        for archive in archives:
            started = time.monotonic()
            _run([*ctr, "images", "import", str(archive)], timeout=900)
            log.info("imported %s in %.0fs", archive.name, time.monotonic() - started)


# -- clean-up --------------------------------------------------------------------------------------
def _mounts_under(prefixes: tuple[Path, ...]) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)  # deepest first


def _kill_node_processes(bin_dir_hint: Path | None, workdir: Path) -> None:
    """Processes started from the node's binaries or naming its work directory (shims, pause,
    containers' init processes are children of shims and die with their cgroups below)."""
    me = os.getpid()
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        marks = [str(workdir / "node"), str(NodePaths(workdir / "node", Path()).sockets_dir)]
        if bin_dir_hint is not None:
            marks.append(str(bin_dir_hint))
        if any(m in cmdline for m in marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, systemd's named one,
    the v2 `unified` mount), not the host's mounts themselves: the node only adds a child."""
    return [h for h in CGROUP_FS.iterdir() if h.is_dir() and not h.is_symlink()
            and (h / "cgroup.procs").exists()]  # fmt: skip


def _make_cgroup_root() -> None:
    """The kubelet wants its cgroupRoot to exist in every hierarchy before it starts."""
    for hierarchy in _hierarchies():
        node = hierarchy / CGROUP_ROOT.lstrip("/")
        node.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
            if (hierarchy / knob).exists() and not (node / knob).read_text().strip():
                (node / knob).write_text((hierarchy / knob).read_text())


def _cgroup_dirs() -> list[Path]:
    found = []
    for hierarchy in [CGROUP_FS, *CGROUP_FS.glob("*")]:
        node = hierarchy / CGROUP_ROOT.lstrip("/")
        if node.is_dir():
            found.append(node)
    return found


def _remove_cgroup_tree(root: Path) -> None:
    """Kill what is left in the node's cgroups, then remove them deepest first (rmdir only)."""
    dirs = sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for d in [*dirs, root]:
        procs = d / "cgroup.procs"
        try:
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.2)
    for d in [*dirs, root]:
        with contextlib.suppress(OSError):
            d.rmdir()


def _remove_network(netns_before: set[str], node_root: Path) -> list[str]:
    """kube-proxy's tables, the pods' network namespaces and mounts, the veths and the bridge."""
    removed = []
    if shutil.which("nft"):
        for family in ("ip", "ip6"):
            if _run(["nft", "list", "table", family, "kube-proxy"], check=False).returncode == 0:
                _run(["nft", "delete", "table", family, "kube-proxy"], check=False)
                removed.append(f"nftables table {family} kube-proxy")
    if NETNS_DIR.exists():
        for ns in NETNS_DIR.glob("cni-*"):
            if ns.name in netns_before:
                continue
            _run(["umount", str(ns)], check=False)
            ns.unlink(missing_ok=True)
            removed.append(f"network namespace {ns.name}")
    for point in _mounts_under((node_root,)):
        _run(["umount", "-l", point], check=False)
        removed.append(f"mount {point}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        for port in Path(f"/sys/class/net/{BRIDGE}/brif").glob("*"):
            _run(["ip", "link", "delete", port.name], check=False)
        _run(["ip", "link", "delete", BRIDGE], check=False)
        removed.append(f"bridge {BRIDGE}")
    return removed


def cleanup(workdir: Path, bin_dir: Path | None = None) -> list[str]:
    """Remove what a node of `workdir` left on the host; returns what it removed, in words.

    Safe to run when nothing is left, and after a run whose processes were all SIGKILLed."""
    removed: list[str] = []
    node_root = workdir / "node"
    state_path = workdir / NODE_STATE
    state: dict[str, Any] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = {}
    _kill_node_processes(bin_dir, workdir)
    for root in _cgroup_dirs():
        _remove_cgroup_tree(root)
        removed.append(f"cgroup {root}")
    removed += _remove_network(set(state.get("netns_before", [])), node_root)
    for name, value in state.get("sysctls", {}).items():
        path = _sysctl_path(name)
        if path.read_text().strip() != value:
            path.write_text(f"{value}\n")
            removed.append(f"sysctl {name} restored to {value}")
    if state and not state.get("netns_dir_existed", True) and NETNS_DIR.exists():
        with contextlib.suppress(OSError):  # only when empty: others may use it meanwhile
            NETNS_DIR.rmdir()
            removed.append(str(NETNS_DIR))
    if state and not state.get("run_containerd_existed", True) and SHIM_SOCKETS.exists():
        shutil.rmtree(SHIM_SOCKETS, ignore_errors=True)
        removed.append(str(SHIM_SOCKETS))
    sockets = NodePaths(node_root, Path()).sockets_dir
    if sockets.exists():
        shutil.rmtree(sockets, ignore_errors=True)
        removed.append(str(sockets))
    shutil.rmtree(node_root, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    if removed:
        log.info("node clean-up: %s", "; ".join(removed))
    return removed


__all__ = ["POD_CIDR", "LocalNode", "cleanup"]
