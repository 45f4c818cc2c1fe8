"""Starting and stopping the control plane's processes: each in its own session (so it is its own
process group and outlives the CLI that started it), output appended to a log file, no pipes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rtml.dev")

STOP_GRACE_SECONDS = 10.0
_KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.1


@dataclass
class Managed:
    """One started process: its name, pid, kernel start time (to detect pid reuse) and log."""

    name: str
    pid: int
    start_time: int | None
    log_file: Path
    popen: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return is_alive(self.pid, self.start_time)

    def exit_description(self) -> str:
        code = self.popen.poll() if self.popen is not None else None
        return f"exited with status {code}" if code is not None else "is no longer running"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    name: str, argv: list[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None
) -> Managed:
    """Start ``argv`` detached in a new session, stdout and stderr appended to ``log_file``;
    ``env`` is added to this process's environment."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        out.write(f"--- rtml: starting {' '.join(argv)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            start_new_session=True,
        )
    log.info("started %s (pid %d), log in %s", name, popen.pid, log_file)
    return Managed(name, popen.pid, process_start_time(popen.pid), log_file, popen)


def stop(process: Managed, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it. Idempotent."""
    if not process.running():
        _reap(process)
        return
    log.info("stopping %s (pid %d)", process.name, process.pid)
    _signal_group(process.pid, signal.SIGTERM)
    if _wait_gone(process, grace):
        return
    log.warning(
        "%s (pid %d) ignored SIGTERM for %.0fs; killing it", process.name, process.pid, grace
    )
    _signal_group(process.pid, signal.SIGKILL)
    if not _wait_gone(process, _KILL_WAIT_SECONDS):
        log.error("%s (pid %d) is still alive after SIGKILL", process.name, process.pid)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        with path.open("rb") as handle:
            tail = deque(handle, maxlen=lines)
    except FileNotFoundError:
        return f"(no log at {path})"
    text = b"".join(tail).decode(errors="replace").rstrip()
    return text or f"({path} is empty)"


def process_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` in clock ticks (Linux), or None when unavailable."""
    stat = _proc_stat(pid)
    if stat is None:
        return None
    try:
        return int(stat[19])
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` runs and is the same process as the one started at ``start_time``."""
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in {"Z", "X"}:
            return False
        return start_time is None or process_start_time(pid) == start_time
    if Path("/proc/self/stat").exists():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (so index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(process: Managed, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process.running():
            _reap(process)
            return True
        time.sleep(_POLL_SECONDS)
    return False


def _reap(process: Managed) -> None:
    if process.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=0)


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so `finally` blocks stop what this process started.

    Python's default SIGTERM action ends the process at once: a `timeout`, a CI runner or a
    plain `kill` would leave the demo's etcd, kube-apiserver and operator running.
    """

    def _exit(signum: int, _frame: object) -> None:
        # A second SIGTERM (`timeout` forwards one, `pkill` sends another) must not cut the
        # clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
