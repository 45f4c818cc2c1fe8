"""An HTTPS reverse proxy between a client (the operator) and the kube-apiserver that injects the
faults an API server shows in production, switchable at run time (docs/outages.md):

- `error_share`: that share of requests is answered 500 or 503 (a Status body, as the API server
  writes one), the rest are forwarded;
- `conflict_writes`: PATCH and PUT requests from the clients named are answered 409 Conflict;
- `gone_watches`: watch requests are answered HTTP 410 Gone;
- `expire_watches()`: every open watch stream gets an ERROR event with code 410 ("too old
  resource version") and ends, as the API server does when a watch's resourceVersion is
  compacted away;
- `outage`: every connection is dropped (the request is read, so it is recorded, then the
  connection is reset without an answer), open watch streams too;
- `stall_watches`: watch streams stay open and send nothing, new ones too (headers only), while
  every other request is forwarded; a stream that stalled stays silent until the client gives
  up on it, like a dead TCP connection.

Every request is recorded (monotonic time, method, path with query, the fault applied), so a
test can check how a client spaced its retries. The proxy terminates TLS with a certificate of
its own CA and talks to the API server over TLS with the client certificate of the kubeconfig
it was given; watch responses are streamed as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import random
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from yarl import URL

# Connection-level headers a proxy must not pass on (RFC 9110 7.6.1), plus those aiohttp sets
# itself; Accept-Encoding too, so every stream arrives uncompressed and can be read line by line.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
WRITES = frozenset({"PATCH", "PUT"})
AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


@dataclass(frozen=True)
class Faults:
    """What the proxy does to requests now. Replaced whole, so a handler sees one consistent set."""

    error_share: float = 0.0
    conflict_writes: bool = False
    # Only requests whose User-Agent starts with one of these get the 409 (all when empty).
    conflict_agents: tuple[str, ...] = ()
    gone_watches: bool = False
    outage: bool = False
    stall_watches: bool = False


@dataclass(frozen=True)
class Request:
    """One request the proxy received; `fault` is what it did instead of forwarding, if
    anything: "500", "503", "409", "410", "drop" or "stall"."""

    at: float  # time.monotonic()
    method: str
    path: str  # with the query
    agent: str
    fault: str | None

    @property
    def watch(self) -> bool:
        return is_watch(URL(self.path, encoded=True))


def is_watch(url: URL) -> bool:
    return url.query.get("watch") in ("true", "1")


def status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes Status object, as the API server answers an error."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()


def expired_event() -> bytes:
    """The watch event the API server sends before it ends a watch whose resourceVersion it
    no longer has (etcd compacted it)."""
    status = json.loads(status_body(410, "Expired", "too old resource version: 1 (2)"))
    return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"


# -- certificates ---------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_serving_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and a serving certificate for 127.0.0.1 signed by it: (ca, cert, key) files."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("rtml fault proxy CA"))
        .issuer_name(_name("rtml fault proxy CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("rtml fault proxy"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = (directory / "ca.crt", directory / "proxy.crt", directory / "proxy.key")
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files[2].chmod(0o600)
    return files


def _kubeconfig_parts(kubeconfig: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The current context's (whole config, cluster, user) of a kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    user = next(u for u in config["users"] if u["name"] == context["context"]["user"])
    return config, cluster["cluster"], user["user"]


def upstream_ssl(kubeconfig: Path, directory: Path) -> tuple[str, ssl.SSLContext]:
    """The API server's URL and a TLS context that trusts its CA and presents the kubeconfig's
    client certificate (data embedded in the kubeconfig, as rtml.dev.kubeconfig writes it)."""
    _, cluster, user = _kubeconfig_parts(kubeconfig)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for field in ("client-certificate-data", "client-key-data"):
        path = directory / f"upstream-{field}.pem"
        path.write_bytes(base64.b64decode(user[field]))
        path.chmod(0o600)
        files[field] = path
    context = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
    return str(cluster["server"]).rstrip("/"), context


# -- the proxy ------------------------------------------------------------------------------------


class FaultProxy:
    """The proxy, serving on 127.0.0.1 from a thread of its own (its own event loop)."""

    def __init__(self, kubeconfig: Path, workdir: Path, *, seed: int = 0) -> None:
        self.workdir = workdir
        self.upstream, self._client_ssl = upstream_ssl(kubeconfig, workdir)
        self.ca, cert, key = write_serving_cert(workdir / "pki")
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ssl.load_cert_chain(cert, key)
        self._source_kubeconfig = kubeconfig
        self.faults = Faults()
        self._random = random.Random(seed)  # noqa: S311 - which requests fail, not a secret
        self._records: list[Request] = []
        self.bookmarks: list[tuple[float, str]] = []  # (when, watch path): BOOKMARKs passed on
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._expire: set[asyncio.Event] = set()  # one per open watch stream
        self._session: aiohttp.ClientSession | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def write_kubeconfig(self, path: Path) -> Path:
        """The source kubeconfig with its server replaced by the proxy and its CA by the
        proxy's (the client's own credentials stay; the proxy does not ask for them)."""
        config, cluster, _ = _kubeconfig_parts(self._source_kubeconfig)
        cluster["server"] = self.url
        cluster["certificate-authority-data"] = base64.b64encode(self.ca.read_bytes()).decode()
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    # -- what the test switches ---------------------------------------------------------------
    def inject(self, **faults: Any) -> None:
        """Replaces the current faults (`Faults` fields); no argument: no fault. Starting an
        outage or a stall also cuts the connections open now (a stall holds open streams)."""
        self.faults = new = Faults(**faults)
        if new.outage:
            self._call(self._drop_connections())

    def clear(self) -> None:
        self.inject()

    @contextlib.contextmanager
    def fault(self, **faults: Any) -> Iterator[None]:
        self.inject(**faults)
        try:
            yield
        finally:
            self.clear()

    def expire_watches(self) -> int:
        """Every open watch stream gets an ERROR 410 event and ends; returns how many."""

        async def expire() -> int:
            for event in self._expire:
                event.set()
            return len(self._expire)

        return int(self._call(expire()))

    def requests(self, since: float = 0.0) -> list[Request]:
        with self._lock:
            return [r for r in self._records if r.at >= since]

    # -- the event loop's side ----------------------------------------------------------------
    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            # No pool limit: a queued request would look like a stall the test did not inject.
            connector=aiohttp.TCPConnector(ssl=self._client_ssl, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        # handler_cancellation: a held (stalled) stream's handler ends when its client hangs up.
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._listener = await self._loop.create_server(
            self._server, "127.0.0.1", 0, ssl=self._server_ssl
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._drop_connections()
        if self._session is not None:
            await self._session.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _drop_connections(self) -> None:
        for handler in self._server.connections if self._server else []:
            if handler.transport is not None:
                handler.transport.abort()

    def _choose(self, faults: Faults, method: str, watch: bool, agent: str) -> str | None:
        if faults.outage:
            return "drop"
        if watch and faults.gone_watches:
            return "410"
        agent_named = not faults.conflict_agents or agent.startswith(faults.conflict_agents)
        if faults.conflict_writes and method in WRITES and agent_named:
            return "409"
        if faults.error_share and self._random.random() < faults.error_share:
            return self._random.choice(("500", "503"))
        if watch and faults.stall_watches:
            return "stall"
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        url = URL(request.raw_path, encoded=True)
        watch = is_watch(url)
        agent = request.headers.get("User-Agent", "")
        fault = self._choose(self.faults, request.method, watch, agent)
        with self._lock:
            self._records.append(
                Request(time.monotonic(), request.method, request.raw_path, agent, fault)
            )
        if fault == "drop":
            await request.read()
            assert request.transport is not None
            request.transport.abort()  # a reset, no answer
            return web.Response()
        if fault in ("500", "503", "409", "410"):
            return self._error(int(fault), url)
        if fault == "stall":
            return await self._hold(request, None)
        return await self._forward(request, url, watch)

    def _error(self, code: int, url: URL) -> web.Response:
        reason, message = {
            500: ("InternalError", "Internal error occurred: injected by the fault proxy"),
            503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
            409: (
                "Conflict",
                f"Operation cannot be fulfilled on {url.path}: the object has been modified; "
                "please apply your changes to the latest version and try again",
            ),
            410: ("Expired", "too old resource version: 1 (2)"),
        }[code]
        return web.Response(
            status=code, body=status_body(code, reason, message), content_type="application/json"
        )

    async def _hold(
        self, request: web.BaseRequest, response: web.StreamResponse | None
    ) -> web.StreamResponse:
        """A stalled watch: headers (if not sent yet), then nothing until the client leaves."""
        if response is None:
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            await response.prepare(request)
        await asyncio.Event().wait()  # cancelled when the client hangs up
        return response

    async def _forward(self, request: web.BaseRequest, url: URL, watch: bool) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        target = URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=body or None,
            allow_redirects=False,
            # Only what the client sent: the Python client posts an Event with no Content-Type,
            # and aiohttp's default (application/octet-stream) the API server refuses (415).
            skip_auto_headers=AUTO_HEADERS,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            if not watch:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            return await self._stream_watch(request, upstream, response)

    async def _stream_watch(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> web.StreamResponse:
        """Passes a watch stream on line by line, so an ERROR event can be put between two
        events and a stall can begin at any point."""
        expire = asyncio.Event()
        self._expire.add(expire)
        try:
            while True:
                read = asyncio.ensure_future(upstream.content.readline())
                expired = asyncio.ensure_future(expire.wait())
                try:
                    await asyncio.wait({read, expired}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when the client hangs up (this handler is cancelled)
                    expired.cancel()
                    if expire.is_set() or not read.done():
                        read.cancel()
                if expire.is_set():
                    await response.write(expired_event())
                    break
                line = read.result()
                if self.faults.stall_watches or self.faults.outage:
                    upstream.close()
                    return await self._hold(request, response)
                if not line:
                    break
                if b'"type":"BOOKMARK"' in line:
                    self.bookmarks.append((time.monotonic(), request.raw_path))
                await response.write(line)
        finally:
            self._expire.discard(expire)
        await response.write_eof()
        return response


def attempts(requests: list[Request], gap: float = 1.0) -> list[float]:
    """The start times of the bursts in `requests`: the client's own retries of one call
    (urllib3 retries a dropped connection at once) fall within `gap` seconds of each other."""
    starts: list[float] = []
    last = None
    for r in sorted(requests, key=lambda r: r.at):
        if last is None or r.at - last > gap:
            starts.append(r.at)
        last = r.at
    return starts
