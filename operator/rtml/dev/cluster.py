"""The local cluster: etcd, kube-apiserver and kube-controller-manager with generated
certificates and RBAC on, and, unless `--no-node`, a real node (rtml.dev.node: containerd,
runc, CNI, kubelet, kube-scheduler, kube-proxy, CoreDNS) on which Pods run. Without a node the
API server listens on loopback only and Pods are created but never run."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from rtml.dev import addons, certs, probe
from rtml.dev.errors import ControlPlaneError
from rtml.dev.kubeconfig import write_kubeconfig
from rtml.dev.node import NODE_STATE, LocalNode
from rtml.dev.node import cleanup as node_cleanup
from rtml.dev.nodeconfig import BRIDGE_IP, SERVICE_CIDR
from rtml.dev.process import Managed, free_port, spawn, stop
from rtml.dev.tools import cache_root, ensure_tools

log = logging.getLogger("rtml.dev")

SERVICE_CLUSTER_IP_RANGE = SERVICE_CIDR  # one range, the node's routes and DNS address in it
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "state.json"
# Served only once the aggregator, CRD server and the apiserver's post-start hooks are up.
_API_GROUPS = ("/apis/apps/v1", "/apis/apiextensions.k8s.io/v1")


def default_workdir() -> Path:
    """Where ``rtml dev cluster up`` keeps its state unless told otherwise."""
    return cache_root() / "dev-cluster"


class LocalControlPlane:
    """etcd + kube-apiserver + kube-controller-manager started from ``bin_dir`` in ``workdir``.

    Every start begins from an empty etcd and fresh certificates. ``stop()`` is idempotent.
    """

    def __init__(self, workdir: Path, bin_dir: Path, node_bin: Path | None = None) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.node_bin = node_bin
        self.node: LocalNode | None = None
        self.certs = certs.CertFiles(self.workdir / "pki")
        self.ports: dict[str, int] = {}
        self.processes: list[Managed] = []
        self.started_seconds: float | None = None

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user rtml-admin in system:masters, context rtml-dev)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        if "apiserver" not in self.ports:
            raise ControlPlaneError("The local control plane has not been started yet.")
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def cert_dir(self) -> Path:
        return self.certs.directory

    @property
    def ca_cert(self) -> Path:
        return self.certs.ca_cert

    @property
    def ca_key(self) -> Path:
        return self.certs.ca_key

    @property
    def state_file(self) -> Path:
        return self.workdir / STATE_FILE

    def __enter__(self) -> LocalControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Start all three processes and return once the API server serves, the built-in API
        groups are available and the controller manager has created the default ServiceAccount."""
        if self.processes:
            raise ControlPlaneError(f"The control plane in {self.workdir} is already running.")
        began = time.monotonic()
        deadline = began + timeout
        try:
            self._prepare()
            etcd = self._start_etcd(deadline)
            apiserver = self._start_apiserver(deadline, etcd)
            self._start_controller_manager(deadline, etcd, apiserver)
            if self.node is not None:
                self._start_node(deadline)
                self._start_metrics_server(deadline)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - began
        log.info("local control plane ready at %s in %.1fs", self.server, self.started_seconds)

    def stop(self) -> None:
        """Stop the processes in reverse order of starting (SIGTERM, then SIGKILL after 10 s)."""
        for process in reversed(self.processes):
            stop(process)
        self.processes = []
        if self.node is not None:
            node_cleanup(self.workdir, self.node_bin)
        self.state_file.unlink(missing_ok=True)

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in ("etcd", "apiserver"):
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        shutil.rmtree(self.logs_dir, ignore_errors=True)
        self.logs_dir.mkdir()
        certs.generate(self.certs.directory)
        # The aggregation layer's client certificate: how the API server proxies to the
        # metrics APIs (rtml.dev.addons), asserting the caller in X-Remote-* headers.
        certs.issue_client_cert(self.certs, certs.FRONT_PROXY_USER, (), *self._front_proxy)
        self.ports = {name: free_port() for name in ("etcd-client", "etcd-peer", "apiserver")}
        if self.node_bin is not None:
            self.node = LocalNode(self.workdir, self.node_bin, self.certs, self.server)
            self.node.prepare()
            certs.issue_client_cert(
                self.certs,
                certs.APISERVER_KUBELET_CLIENT_USER,
                (certs.ADMIN_GROUP,),
                self.certs.directory / "apiserver-kubelet-client.crt",
                self.certs.directory / "apiserver-kubelet-client.key",
            )

    @property
    def _front_proxy(self) -> tuple[Path, Path]:
        directory = self.certs.directory
        return directory / "front-proxy-client.crt", directory / "front-proxy-client.key"

    def _aggregation_flags(self) -> list[str]:
        cert, key = self._front_proxy
        return [
            f"--requestheader-client-ca-file={self.certs.ca_cert}",
            f"--requestheader-allowed-names={certs.FRONT_PROXY_USER}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={cert}",
            f"--proxy-client-key-file={key}",
            # To the add-on's endpoint (the host's bridge address), not its ClusterIP.
            "--enable-aggregator-routing=true",
        ]

    def apply_docs(self, name: str, docs: list[dict[str, Any]]) -> None:
        """`kubectl apply` these objects as the admin (the add-ons' registrations)."""
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", "apply", "-f",
             str(path)], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"kubectl apply -f {path}: {result.stderr.strip()}")

    def launch_addon(self, name: str, argv: list[str]) -> Managed:
        """Start a process that lives and dies with the cluster (stopped by `stop`)."""
        process = spawn(name, argv, self.logs_dir / f"{name}.log", self.workdir)
        self.processes.append(process)
        self._write_state()
        return process

    def _start_metrics_server(self, deadline: float) -> None:
        assert self.node_bin is not None
        process = addons.start_metrics_server(
            self.launch_addon,
            lambda docs: self.apply_docs("metrics-server", docs),
            self.node_bin / "metrics-server",
            self.certs,
            self.kubeconfig,
            self.workdir,
        )
        self._wait_for_api(
            "metrics-server to serve metrics.k8s.io", "/apis/metrics.k8s.io/v1beta1",
            deadline, self.processes, process,
        )  # fmt: skip

    def _launch(self, name: str, argv: list[str]) -> Managed:
        binary = self.bin_dir / argv[0]
        if not binary.is_file():
            raise ControlPlaneError(
                f"{binary} does not exist; run `rtml dev tools build` to build the control plane."
            )
        process = spawn(name, [str(binary), *argv[1:]], self.logs_dir / f"{name}.log", self.workdir)
        self.processes.append(process)
        self._write_state()
        return process

    def _start_etcd(self, deadline: float) -> Managed:
        client = f"http://127.0.0.1:{self.ports['etcd-client']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        etcd = self._launch(
            "etcd",
            [
                "etcd",
                "--name=rtml-dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=rtml-dev={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        probe.wait_until(
            "etcd to become healthy",
            lambda: probe.answers(f"{client}/health", None, _etcd_healthy),
            deadline,
            [etcd],
            etcd,
        )
        return etcd

    def _network_flags(self) -> list[str]:
        if self.node is None:
            # The `kubernetes` Service cannot point at a loopback address; nothing in-cluster
            # needs it without a node, so do not reconcile its endpoints.
            return ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none", "--authorization-mode=RBAC"]  # fmt: skip
        pki = self.certs.directory
        return [
            # Pods reach it at the bridge address (the `kubernetes` Service's endpoint); the
            # host's tools keep using 127.0.0.1. It takes one bind address: all of them.
            "--bind-address=0.0.0.0",
            f"--advertise-address={BRIDGE_IP}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # `kubectl logs/exec`: the API server calls the kubelet with a client certificate and
            # checks the kubelet's serving certificate, as in a real cluster.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.certs.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def _start_apiserver(self, deadline: float, etcd: Managed) -> Managed:
        files = self.certs
        apiserver = self._launch(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd-client']}",
                f"--secure-port={self.ports['apiserver']}",
                *self._network_flags(),
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={files.apiserver_cert}",
                f"--tls-private-key-file={files.apiserver_key}",
                f"--client-ca-file={files.ca_cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={files.service_account_pub}",
                f"--service-account-signing-key-file={files.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                *self._aggregation_flags(),
                "--allow-privileged=false",
                "--profiling=false",
            ],
        )
        context = probe.client_context(files.ca_cert, files.admin_cert, files.admin_key)
        probe.wait_until(
            "kube-apiserver to report /readyz ok",
            lambda: probe.answers(f"{self.server}/readyz", context, _ok_body),
            deadline,
            [etcd, apiserver],
            apiserver,
        )
        write_kubeconfig(
            self.kubeconfig,
            self.server,
            ca_cert=files.ca_cert,
            client_cert=files.admin_cert,
            client_key=files.admin_key,
            user=certs.ADMIN_USER,
        )
        return apiserver

    def _start_controller_manager(self, deadline: float, etcd: Managed, apiserver: Managed) -> None:
        files = self.certs
        kubeconfig = self.workdir / "kube-controller-manager.kubeconfig"
        write_kubeconfig(
            kubeconfig,
            self.server,
            ca_cert=files.ca_cert,
            client_cert=files.controller_manager_cert,
            client_key=files.controller_manager_key,
            user=certs.CONTROLLER_MANAGER_USER,
        )
        manager = self._launch(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={kubeconfig}",
                "--controllers=*",
                "--leader-elect=false",
                f"--service-account-private-key-file={files.service_account_key}",
                f"--root-ca-file={files.ca_cert}",
                # One ServiceAccount per controller, bound to its bootstrap role: the
                # system:kube-controller-manager role alone may not create ReplicaSets, Pods, etc.
                "--use-service-account-credentials=true",
                "--secure-port=0",
            ],
        )
        watched = [etcd, apiserver, manager]
        for group in _API_GROUPS:
            what = f"kube-apiserver to serve {group}"
            self._wait_for_api(what, group, deadline, watched, apiserver)
        self._wait_for_api(
            "kube-controller-manager to create the default ServiceAccount",
            "/api/v1/namespaces/default/serviceaccounts/default",
            deadline,
            watched,
            manager,
        )

    def _start_node(self, deadline: float) -> None:
        assert self.node is not None
        kubectl = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}"]

        def run_kubectl(*args: str) -> str:
            result = subprocess.run([*kubectl, *args], capture_output=True, text=True,
                                    timeout=60, check=False)  # fmt: skip
            if result.returncode != 0:
                raise ControlPlaneError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
            return result.stdout

        def launch(name: str, argv: list[str], env: dict[str, str] | None) -> Managed:
            process = spawn(name, argv, self.logs_dir / f"{name}.log", self.workdir, env)
            self.processes.append(process)
            self._write_state()
            return process

        def wait(what: str, ready: Any, blame: Managed) -> None:
            probe.wait_until(what, ready, deadline, self.processes, blame)

        self.node.start(launch, wait, run_kubectl)

    def _wait_for_api(
        self, what: str, path: str, deadline: float, watched: list[Managed], blame: Managed
    ) -> None:
        """Wait until GET ``path`` answers 200 to the admin."""
        files = self.certs
        context = probe.client_context(files.ca_cert, files.admin_cert, files.admin_key)
        url = f"{self.server}{path}"
        probe.wait_until(
            what, lambda: probe.answers(url, context, _status_ok), deadline, watched, blame
        )

    def _write_state(self) -> None:
        state = {
            "server": f"https://127.0.0.1:{self.ports['apiserver']}",
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "processes": [
                {"name": p.name, "pid": p.pid, "start_time": p.start_time, "log": str(p.log_file)}
                for p in self.processes
            ],
        }
        tmp = self.state_file.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


def cluster_up(
    workdir: Path,
    kubeconfig: Path | None,
    bin_dir: Path | None = None,
    timeout: float = 120.0,
    node_bin: Path | None = None,
) -> LocalControlPlane:
    """Start a cluster that outlives this process (with a node when ``node_bin`` is given);
    copy its admin kubeconfig to ``kubeconfig`` when given. Stop it with :func:`cluster_down`."""
    state = read_state(workdir)
    if state is not None:
        if any(p.running() for p in state):
            raise ControlPlaneError(
                f"A local control plane is already running from {workdir}; stop it with "
                "`rtml dev cluster down` first."
            )
        cluster_down(workdir)
    plane = LocalControlPlane(
        workdir, bin_dir if bin_dir is not None else ensure_tools(log.info), node_bin
    )
    plane.start(timeout)
    if kubeconfig is not None:
        kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plane.kubeconfig, kubeconfig)
        kubeconfig.chmod(0o600)
    return plane


def cluster_down(workdir: Path) -> bool:
    """Stop the control plane recorded in ``workdir``; False when none was recorded."""
    processes = read_state(workdir)
    had_node = (workdir / NODE_STATE).exists() or (workdir / "node").exists()
    if processes is None and not had_node:
        return False
    for process in reversed(processes or []):
        stop(process)
    if had_node:
        # Also what a run that died without `down` left: mounts, netns, bridge, rules, sysctls.
        node_cleanup(workdir)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(workdir / "etcd", ignore_errors=True)
    return True


def read_state(workdir: Path) -> list[Managed] | None:
    """The processes recorded in ``workdir/state.json``, or None without a state file."""
    path = workdir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        return [
            Managed(str(p["name"]), int(p["pid"]), p.get("start_time"), Path(p["log"]))
            for p in state["processes"]
        ]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise ControlPlaneError(
            f"{path} is not a state file written by rtml ({error}); remove it after making sure "
            "no etcd or kube-apiserver from an earlier run is still running."
        ) from error


def _etcd_healthy(status: int, body: str) -> bool:
    return status == 200 and '"health":"true"' in body.replace(" ", "")


def _ok_body(status: int, body: str) -> bool:
    return status == 200 and body.strip() == "ok"


def _status_ok(status: int, _body: str) -> bool:
    return status == 200


__all__ = [
    "ControlPlaneError",
    "LocalControlPlane",
    "cluster_down",
    "cluster_up",
    "default_workdir",
    "read_state",
]
