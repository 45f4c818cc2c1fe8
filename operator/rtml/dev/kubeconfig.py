"""Kubeconfig files for the local control plane, with the certificates embedded."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

CONTEXT = "rtml-dev"


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    ca_cert: Path,
    client_cert: Path,
    client_key: Path,
    user: str,
) -> None:
    """Write a kubeconfig with one cluster, user and context (``rtml-dev``), readable by the owner
    only since it embeds a private key."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client_cert),
                    "client-key-data": _b64(client_key),
                },
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    tmp.replace(path)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
