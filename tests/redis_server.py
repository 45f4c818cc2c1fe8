"""A throwaway redis-server for tests and benchmarks: loopback, a free port, no persistence.

A test helper, so it lives in tests/ (benchmarks/run.py puts the checkout on sys.path).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def redis_server_argv(
    binary: str, port: int, workdir: Path, password: str | None = None
) -> list[str]:
    """Listen on 127.0.0.1:`port` only, never write a snapshot or an append-only file."""
    auth = ["--requirepass", password] if password else []
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), *auth]  # fmt: skip


def answers_ping(
    port: int,
    timeout_s: float = 10.0,
    alive: Callable[[], bool] = lambda: True,
    password: str | None = None,
) -> bool:
    """Whether the server on `port` answers PING within `timeout_s` (False early if `alive`
    says the process has exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if password:
                    s.sendall(b"AUTH %s\r\n" % password.encode())
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False
