"""How the operator's signature check connects for one download: only to a host the policy
allows (rtml.operator.artifact_hosts), at the very address it checked, and never for longer
than the download's deadline.

- The host is resolved once, every address is checked, and the socket connects to a checked
  address: a second DNS answer (rebinding) cannot swap in 169.254.169.254 after the check.
  Redirects open new connections through the same check, and only http(s) is followed (urllib
  would also follow a redirect to ftp://, from anywhere).
- A watchdog shuts the connections down when the deadline passes, which wakes a read blocked
  on a server that trickles a byte now and then; the copy loop (rtml.artifacts) then reports
  the deadline, not a short file.
- Proxy variables (HTTP(S)_PROXY) are not used: the address checked must be the one connected.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from rtml.artifacts import ArtifactError, Deadline
from rtml.operator.artifact_hosts import fetch_refusal

Resolver = Callable[[str, int], list[tuple[int, str]]]  # host, port -> (family, address)


class FetchRefused(ArtifactError):  # noqa: N818 - reads as the outcome it reports
    """The host policy forbids the connection (raised through urllib untouched)."""


def resolve(host: str, port: int) -> list[tuple[int, str]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]


class FetchGuard:
    """One download's connections: checked when they connect, shut down at the deadline."""

    def __init__(
        self, patterns: Sequence[str], deadline: Deadline, resolver: Resolver = resolve
    ) -> None:
        self.patterns = tuple(patterns)
        self.deadline = deadline
        self.resolver = resolver
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline.remaining()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> FetchGuard:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            # The plain socket's shutdown, also under TLS: it wakes a blocked read without
            # touching the TLS state another thread is using.
            with contextlib.suppress(OSError):  # closed, or handed over to its TLS socket
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def track(self, sock: socket.socket) -> None:
        """A socket to shut down at the deadline. Kept here, not read from the connection:
        urllib drops the connection's `sock` once the response holds it."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def connect(self, conn: http.client.HTTPConnection) -> socket.socket:
        """A socket to `conn.host`, at an address the policy allows."""
        host, port = conn.host, conn.port
        if self.expired:
            raise ArtifactError(f"{host}: the download's {self.deadline.seconds:g} s passed")
        found = self.resolver(host, port)
        refusal = fetch_refusal(host, self.patterns, [address for _, address in found])
        if refusal is not None:
            raise FetchRefused(refusal)
        if not found:
            raise ArtifactError(f"{host} resolves to no address")
        wait = conn.timeout if isinstance(conn.timeout, int | float) else self.deadline.seconds
        timeout = max(0.001, min(wait, self.deadline.remaining()))
        error: OSError | None = None
        for _, address in found:
            try:
                source = getattr(conn, "source_address", None)
                sock = socket.create_connection((address, port), timeout, source)
            except OSError as e:
                error = e
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.track(sock)
            return sock
        assert error is not None
        raise error

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener without proxies, ftp or file handlers, connecting through this guard."""
        director = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.UnknownHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPRedirectHandler(),
            urllib.request.HTTPErrorProcessor(),
            _HTTPHandler(self),
            _HTTPSHandler(self),
        ):
            director.add_handler(handler)
        return director


class _CheckedHTTPConnection(http.client.HTTPConnection):
    guard: FetchGuard | None = None

    def connect(self) -> None:
        if self.guard is None:
            raise ArtifactError(f"{self.host}: no fetch guard; refusing to connect")
        self.sock = self.guard.connect(self)


class _CheckedHTTPSConnection(http.client.HTTPSConnection, _CheckedHTTPConnection):
    """HTTPSConnection.connect calls the checked connect above, then wraps the socket in TLS
    for `host` (SNI and the certificate's name are the host's, not the address's)."""

    def connect(self) -> None:
        super().connect()
        if self.guard is not None and self.sock is not None:
            self.guard.track(self.sock)  # the TLS socket: the plain one was handed over to it


def _made_by(cls: type[_CheckedHTTPConnection], guard: FetchGuard) -> Any:
    def make(host: str, **kwargs: Any) -> _CheckedHTTPConnection:
        conn = cls(host, **kwargs)
        conn.guard = guard
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: FetchGuard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_made_by(_CheckedHTTPConnection, self.guard), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: FetchGuard) -> None:
        self.context = ssl.create_default_context()
        super().__init__(context=self.context)
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _made_by(_CheckedHTTPSConnection, self.guard), req, context=self.context
        )
