"""The local control plane is a real one: ready, RBAC enforced, controllers reconciling."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rtml.dev.certs import CertFiles, issue_client_cert

pytestmark = pytest.mark.apiserver


def _eventually(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(kube_api_client: client.ApiClient) -> Iterator[str]:
    name = f"dev-cluster-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_api_server_is_ready(kube_api_client: client.ApiClient) -> None:
    response: Any = kube_api_client.call_api("GET", f"{kube_api_client.configuration.host}/readyz")
    assert response.status == 200
    assert response.read() == b"ok"


def test_built_in_api_groups_are_served(kube_api_client: client.ApiClient) -> None:
    groups = client.ApisApi(kube_api_client).get_api_versions()
    names = {group.name for group in groups.groups}
    assert {"apps", "apiextensions.k8s.io", "rbac.authorization.k8s.io"} <= names


def test_rbac_forbids_an_unprivileged_user(control_plane: Any, tmp_path: Path) -> None:
    if control_plane.ca_key is None:
        pytest.skip("RTML_KUBECONFIG points at a cluster whose CA key the tests do not have")
    ca = CertFiles(Path(control_plane.ca_key).parent)
    cert, key = tmp_path / "nobody.crt", tmp_path / "nobody.key"
    issue_client_cert(ca, "nobody", (), cert, key)
    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_cert)
    configuration.cert_file = str(cert)
    configuration.key_file = str(key)
    with client.ApiClient(configuration) as nobody:
        with pytest.raises(ApiException) as raised:
            client.CoreV1Api(nobody).list_namespaced_pod("default")
        # Authenticated (not 401) but not authorized.
        assert raised.value.status == 403
        message = json.loads(raised.value.body or "{}")["message"]
        assert 'User "nobody" cannot list resource "pods"' in message


def test_controller_manager_creates_the_default_service_account(
    kube_api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api_client)
    account: Any = core.read_namespaced_service_account("default", "default")
    assert account.metadata.name == "default"

    def created() -> bool:
        accounts: list[Any] = core.list_namespaced_service_account(namespace).items
        return any(account.metadata.name == "default" for account in accounts)

    _eventually(f"the default ServiceAccount in the new namespace {namespace}", created)


def test_deployment_controller_creates_a_replica_set(
    kube_api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube_api_client)
    labels = {"app": "echo"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="echo"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="echo", image="registry.invalid/echo:1")]
                ),
            ),
        ),
    )
    created: Any = apps.create_namespaced_deployment(namespace, deployment)

    def owned_replica_sets() -> list[Any]:
        replica_sets: list[Any] = apps.list_namespaced_replica_set(namespace).items
        return [
            replica_set
            for replica_set in replica_sets
            if any(
                ref.uid == created.metadata.uid
                for ref in replica_set.metadata.owner_references or []
            )
        ]

    replica_sets = _eventually("a ReplicaSet owned by the Deployment", owned_replica_sets)
    assert replica_sets[0].spec.replicas == 1
