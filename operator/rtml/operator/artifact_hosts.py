"""Which hosts the operator may fetch a Model's artifact from for its signature check
(`artifactFetchHosts`): a pure decision, made on the URL's host before anything is enqueued and
again, with the addresses it resolved to, when the download connects.

A Model names any URL, and a download is a request from the operator's own network position:
without a rule, anyone who may create a Model could make the operator call cluster-internal
services or the node's cloud metadata endpoint (a blind SSRF: the answer is never shown, but the
request is made). So nothing is fetched unless an operator-wide fnmatch pattern names the host
(default: none), and a host resolving to a loopback, link-local or metadata address is refused
unless a pattern names it literally: `*.example.com` must not reach 169.254.169.254 (the
metadata endpoint of AWS, GCP and Azure, which hands out the node's credentials) through a DNS
record someone else controls, while a pattern `127.0.0.1` is a deliberate choice.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence

WHERE = "artifactFetchHosts (chart value operator.artifactFetchHosts, RTML_ARTIFACT_FETCH_HOSTS)"
# Addresses that reach the operator's own pod or node rather than an artifact server.
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",  # loopback: the operator's own endpoints
        "::1/128",
        "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254) lives here
        "fe80::/10",
        "0.0.0.0/8",  # "this host": a connection to 0.0.0.0 reaches loopback on Linux
        "::/128",
        "fd00:ec2::254/128",  # AWS's IPv6 metadata endpoint, outside link-local
        "100.100.100.200/32",  # Alibaba Cloud's metadata endpoint
    )
)
_WILDCARDS = frozenset("*?[")


def normalize_host(host: str) -> str:
    """Hosts compare case-insensitively and without DNS's trailing dot."""
    return host.strip().lower().rstrip(".")


def host_pattern_problem(pattern: str) -> str | None:
    """What is wrong with one `artifactFetchHosts` entry (a host or an fnmatch pattern)."""
    if not pattern.strip():
        return "an empty pattern"
    if "/" in pattern or "@" in pattern:
        return f"{pattern!r} is not a host pattern (give the host only, without scheme or path)"
    return None


def _internal(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: drop the zone
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return any(ip in net for net in INTERNAL_NETWORKS)


def fetch_refusal(host: str, patterns: Sequence[str], addresses: Sequence[str] = ()) -> str | None:
    """Why the operator may not fetch from `host` (resolved to `addresses`, when known), or None.

    The host must match a pattern; an address that is loopback, link-local or a metadata
    endpoint (the host may be such an address itself) is allowed only by a pattern equal to
    the host, wildcards aside."""
    name = normalize_host(host)
    wanted = [normalize_host(p) for p in patterns]
    if not name or not any(fnmatch.fnmatchcase(name, p) for p in wanted):
        return (
            f"the operator did not fetch it: host {name!r} is not in {WHERE}; add {name!r} "
            "(or a pattern matching it) there to have the operator check the signature "
            "before the rollout"
        )
    literally = any(p == name and not _WILDCARDS & set(p) for p in wanted)
    inside = [a for a in (name, *addresses) if _internal(a)]
    if inside and not literally:
        return (
            f"the operator did not fetch it: host {name!r} resolves to {inside[-1]}, a loopback, "
            "link-local or cloud metadata address, which only a pattern naming the host "
            f"exactly (not a wildcard) in {WHERE} allows"
        )
    return None
