"""Polling the control plane over HTTP(S) until it answers, while watching its processes."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from rtml.dev.errors import ControlPlaneError
from rtml.dev.process import Managed, log_tail

_POLL_SECONDS = 0.25
_REQUEST_TIMEOUT_SECONDS = 5.0


def client_context(ca_cert: Path, client_cert: Path, client_key: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the control plane's CA and presents a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.load_cert_chain(str(client_cert), str(client_key))
    return context


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """Status and body of GET ``url``; any HTTP status is returned, network errors raise OSError."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(  # noqa: S310 - scheme checked above
            request, timeout=_REQUEST_TIMEOUT_SECONDS, context=context
        ) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except http.client.HTTPException as error:
        raise OSError(str(error)) from error


def wait_until(
    what: str,
    ready: Callable[[], bool],
    deadline: float,
    watched: Sequence[Managed],
    blame: Managed,
) -> None:
    """Call ``ready`` until it returns True.

    Fails fast, with the tail of its log, when a watched process exits; on reaching ``deadline``
    (a ``time.monotonic`` value) fails with the tail of ``blame``'s log.
    """
    while True:
        for process in watched:
            if not process.running():
                raise ControlPlaneError(
                    f"{process.name} {process.exit_description()} while waiting for {what}; "
                    f"the last lines of {process.log_file}:\n{log_tail(process.log_file)}"
                )
        if ready():
            return
        if time.monotonic() >= deadline:
            raise ControlPlaneError(
                f"Timed out waiting for {what}; the last lines of {blame.log_file}:\n"
                f"{log_tail(blame.log_file)}"
            )
        time.sleep(_POLL_SECONDS)


def answers(url: str, context: ssl.SSLContext | None, expect: Callable[[int, str], bool]) -> bool:
    """Whether GET ``url`` succeeds and ``expect(status, body)`` holds; False on network errors."""
    try:
        status, body = get(url, context)
    except OSError:
        return False
    return expect(status, body)
