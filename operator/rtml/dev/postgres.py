"""A real PostgreSQL (Debian's package) for the Feast SQL registry: the tests' registry, and the
local cluster's (outside the cluster, as a managed database would be; pods reach it through the
node's address with a password)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from rtml.dev.errors import DevError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    """The newest installed server's bin folder (Debian keeps it off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_major, reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise DevError("PostgreSQL is not installed; `.ci/env.sh` installs it (apt postgresql)")
    return Path(initdb).parent


def _major(initdb: Path) -> int:
    version = initdb.parents[1].name
    return int(version) if version.isdigit() else 0


class PostgresServer:
    """initdb into a temp folder, `postgres` on a free loopback port, trust auth, no fsync.

    PostgreSQL refuses to run as root; as root (CI), it runs as Debian's `postgres` user, in a
    folder of its own under /tmp (temp folders such as pytest's are closed to other users).
    """

    def __init__(self, workdir: Path, listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.workdir = workdir
        self.listen = listen
        self.data = workdir / "data"
        self.port = free_port()
        self.bin = _bin_dir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "postgres.log"
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(workdir, user.pw_uid, user.pw_gid)
            self.run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def url(self, database: str = "feast") -> str:
        return f"postgresql+psycopg://rtml@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "rtml", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=self.workdir, **self.run_as,
        )  # fmt: skip

    def allow_with_password(self, network: str, password: str) -> None:
        """Clients from `network` (e.g. the pod network) log in as rtml with `password`.

        Call after start(): the role gets the password, pg_hba.conf the rule, and a reload."""
        with psycopg.connect(f"postgresql://rtml@127.0.0.1:{self.port}/postgres") as conn:
            conn.execute(f"ALTER ROLE rtml PASSWORD '{password}'")  # test-made, no quotes
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all rtml {network} scram-sha-256\n")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.workdir), "-c", f"listen_addresses={','.join(self.listen)}",
             "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir,
            **self.run_as,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DevError(f"postgres exited with {self.proc.returncode}; see {self.log}")
            try:
                psycopg.connect(f"postgresql://rtml@127.0.0.1:{self.port}/postgres").close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise DevError(f"postgres did not accept connections within 30 s; see {self.log}")

    def create_database(self, name: str) -> None:
        url = f"postgresql://rtml@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are closed, as in a database outage."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
