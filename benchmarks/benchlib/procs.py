"""Processes: start a server pinned to one CPU, wait for it, measure its tree, stop it."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER_CPU = 0
LOAD_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    """ARGV under `taskset -c CPU`: the process and every child it starts stay on that CPU."""
    return ["taskset", "-c", str(cpu), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def process_tree(root: int) -> list[int]:
    """ROOT and all its descendants that are still alive."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            tree.append(pid)
            todo += children.get(pid, [])
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _comm(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in cmd if a)[:120]
    except OSError:
        return "?"


def tree_rss(root: int) -> tuple[int, list[dict[str, object]]]:
    """Sum of VmRSS (KiB) over ROOT's process tree, and the per-process breakdown."""
    procs = [
        {"pid": p, "rss_kib": _status_kib(p, "VmRSS"), "cmd": _comm(p)} for p in process_tree(root)
    ]
    return sum(int(str(p["rss_kib"])) for p in procs), procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds consumed so far by ROOT's live process tree."""
    return sum(cpu_seconds(pid) for pid in process_tree(root))


@dataclass(frozen=True)
class CpuTimes:
    busy: float  # user + nice + system, seconds
    steal: float
    total: float


def cpu_times(cpu: int | None) -> CpuTimes:
    """CPU CPU's times from /proc/stat; None: the whole machine's (every CPU summed)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{'' if cpu is None else cpu} "):
            v = [int(x) / CLK_TCK for x in line.split()[1:]]
            user, nice, system, steal = v[0], v[1], v[2], v[7]
            return CpuTimes(user + nice + system, steal, sum(v[:8]))
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def harness_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (wrk, once it has exited)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@dataclass
class Server:
    """A process started in its own session (so its whole group can be stopped), pinned to CPU.

    Its output goes to LOG_PATH; `marker_at` is when a line matching MARKER was first printed
    (seconds after start), e.g. the moment a launcher hands over to the server it starts.
    """

    name: str
    argv: list[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path
    cpu: int = SERVER_CPU
    marker: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    marker_at: float | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            pinned(self.cpu, self.argv),
            env=dict(self.env),
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy_output, daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        pattern = re.compile(self.marker) if self.marker else None
        with self.log_path.open("wb") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if (
                    pattern
                    and self.marker_at is None
                    and pattern.search(line.decode(errors="replace"))
                ):
                    self.marker_at = time.monotonic() - self.started_at

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is None:
            return
        tree = {pid: _start_time(pid) for pid in process_tree(self.proc.pid)}
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid, started in tree.items():  # a child that left the group, if still the same one
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._pump is not None:
            self._pump.join(5)
        self.proc = None
