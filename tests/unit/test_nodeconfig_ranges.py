"""The local cluster's address ranges agree with each other (one source, checked here)."""

from __future__ import annotations

import ipaddress

import pytest

from rtml.dev import certs, cluster, nodeconfig

pytestmark = pytest.mark.unit


def test_the_service_range_holds_the_api_and_dns_addresses_and_is_a_real_clusters_size() -> None:
    services = ipaddress.ip_network(cluster.SERVICE_CLUSTER_IP_RANGE)
    assert services == ipaddress.ip_network(nodeconfig.SERVICE_CIDR)
    assert services.prefixlen <= 12  # kubeadm's; a /24 ran out at 253 Models
    # The API server gives the `kubernetes` Service the first address; its cert must name it.
    assert ipaddress.ip_address(certs.FIRST_SERVICE_IP) == services.network_address + 1
    assert certs.FIRST_SERVICE_IP in certs.SERVING_IPS
    assert ipaddress.ip_address(nodeconfig.DNS_SERVICE_IP) in services
    assert not services.overlaps(ipaddress.ip_network(nodeconfig.POD_CIDR))
