"""The session's PostgreSQL (rtml.dev.postgres) holding the operator's Feast registry."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtml.dev.postgres import PostgresServer
from tests.runtime_proc import LOGS


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session, holding the operator's Feast registry (database feast)."""
    workdir = Path(tempfile.mkdtemp(prefix="rtml-postgres-"))
    server = PostgresServer(workdir)
    try:
        server.init()
        server.start()
        server.create_database("feast")
        yield server
    finally:
        server.stop()
        log = server.log.read_bytes() if server.log.exists() else b""
        shutil.rmtree(workdir, ignore_errors=True)
        (LOGS / "postgres.log").write_bytes(log)
