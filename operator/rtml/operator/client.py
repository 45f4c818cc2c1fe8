"""The thin layer that talks to the API server: server-side apply, read, prune, status, events.

Built on the official `kubernetes` client's DynamicClient so any kind (KServe, KEDA) is
reachable without generated classes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from rtml import API_VERSION
from rtml.operator.metrics import METRICS
from rtml.operator.render.meta import FIELD_MANAGER, MODEL_LABEL

log = logging.getLogger("rtml.operator.client")
DISCOVERY_TTL_SECONDS = float(os.environ.get("RTML_DISCOVERY_TTL", "30"))
NEGATIVE_TTL_SECONDS = min(DISCOVERY_TTL_SECONDS, 2.0)


def _as_json(_client: Any, data: Any) -> Any:
    """The dynamic client's `serializer`: the answer's JSON as it came (dicts and lists).

    Its default wraps every answer in a ResourceInstance, a tree of objects that the operator
    turned straight back into dicts: 10% of the operator's CPU while 400 Models rolled out
    (py-spy, benchmarks `--suite scale`), for the same dicts."""
    return data


class TimedApiClient(k8s.ApiClient):
    """The official client, each request timed into rtml_operator_api_request_duration_seconds
    (`call_api` is the one method the typed and the dynamic clients both go through)."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        code: int | str = "error"  # no answer (connection refused, timeout)
        try:
            response = super().call_api(method, url, *args, **kwargs)
            code = getattr(response, "status", None) or "error"
            return response
        finally:
            METRICS.observe_api(method, code, time.perf_counter() - started)


class KubeClient:
    """One API client for the whole operator (created on start-up, kept in kopf's memo)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api = api_client
        self.dyn = DynamicClient(api_client)
        self._served: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()
        self._discovery_lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeClient:
        configuration = k8s.Configuration()
        if kubeconfig:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(client_configuration=configuration)
        return cls(TimedApiClient(configuration))

    def close(self) -> None:
        self.api.close()

    # -- discovery ---------------------------------------------------------------------------
    def version(self) -> None:
        """GET /version: raises unless the API server answers (the `watching` probe asks).

        Unserialized: the dynamic client makes each answer an object with a `kind`, which
        /version lacks, so every answer raised KeyError (docs/outages.md, the fault proxy)."""
        self.dyn.request("get", "/version", serialize=False)

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind now (a CRD may be installed at any time)."""
        key = f"{api_version}/{kind}"
        now = time.monotonic()
        with self._lock:
            cached = self._served.get(key)
            # "Not served" is kept only briefly: a CRD installed a moment ago (KServe, KEDA) is
            # exactly what the operator should notice soon, and the API server's discovery lags
            # a CRD becoming Established by a second or two.
            ttl = DISCOVERY_TTL_SECONDS if cached and cached[1] else NEGATIVE_TTL_SECONDS
            if cached and now - cached[0] < ttl:
                return cached[1]
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            data = self.dyn.request("get", path, serializer=_as_json)
            served = any(r.get("kind") == kind for r in (data or {}).get("resources", []))
        except NotFoundError:
            served = False
        with self._lock:
            self._served[key] = (now, served)
        return served

    def _resource(self, api_version: str, kind: str) -> Any:
        # The DynamicClient's discovery cache is not thread-safe (kubernetes-client/python
        # #2037), and Kopf runs sync handlers in threads: a lookup racing `invalidate_cache`
        # raised KeyError('resources') in a Model's and a FeatureView's handler at once. Lookups
        # are serialised; the requests made with the resource they return are not.
        with self._discovery_lock:
            try:
                return self.dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                # A CRD installed after start-up: refresh the discovery cache once.
                self.dyn.resources.invalidate_cache()
                return self.dyn.resources.get(api_version=api_version, kind=kind)

    # -- objects -----------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply under the operator's field manager; a no-op when nothing changed."""
        res = self._resource(obj["apiVersion"], obj["kind"])
        out = res.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
            serializer=_as_json,
        )
        return dict(out)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            res = self._resource(api_version, kind)
            return dict(res.get(name=name, namespace=namespace, serializer=_as_json))
        except (NotFoundError, ResourceNotFoundError):
            return None

    def list_in(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace (none when the API does not serve the kind)."""
        try:
            res = self._resource(api_version, kind)
        except ResourceNotFoundError:
            return []
        return list(res.get(namespace=namespace, serializer=_as_json)["items"] or [])

    def list_owned(
        self, api_version: str, kind: str, namespace: str, model_name: str
    ) -> list[dict[str, Any]]:
        try:
            return self.list_selected(api_version, kind, namespace, {MODEL_LABEL: model_name})
        except ResourceNotFoundError:
            return []

    def list_selected(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects in a namespace that carry every one of `labels` (a Deployment's selector)."""
        res = self._resource(api_version, kind)
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = res.get(namespace=namespace, label_selector=selector, serializer=_as_json)
        return list(found["items"] or [])

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):  # already gone: the outcome we wanted
            self._resource(api_version, kind).delete(name=name, namespace=namespace)

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patch_status("Model", namespace, name, status)

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations of an rtml resource (bookkeeping the status schema lacks)."""
        self._resource(API_VERSION, kind).patch(
            body={"metadata": {"annotations": annotations}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch a pod's annotations: the kubelet syncs the pod at once, refreshing its
        ConfigMap volumes (how a new traffic weight reaches it within seconds)."""
        with contextlib.suppress(NotFoundError):  # the pod went away meanwhile
            self._resource("v1", "Pod").patch(
                body={"metadata": {"annotations": annotations}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
            )

    def patch_model_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Merge-patch a Model's spec (an Experiment promoted with onSuccess: promote)."""
        self._resource(API_VERSION, "Model").patch(
            body={"spec": spec},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=FIELD_MANAGER,
        )

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource of an rtml resource."""
        res = self._resource(API_VERSION, kind)
        res.status.patch(
            body={"status": status},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def event(
        self, involved: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """A Kubernetes Event on the object, in words (never a stack trace)."""
        meta = involved["metadata"]
        now = datetime.now(UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=involved.get("apiVersion", API_VERSION),
                kind=involved.get("kind", "Model"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            reason=reason,
            message=message[:1000],
            type=type_,
            source=k8s.V1EventSource(component=FIELD_MANAGER),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            k8s.CoreV1Api(self.api).create_namespaced_event(meta["namespace"], body)
        except k8s.ApiException as e:  # an Event is best effort; never fail a reconcile on it
            log.warning(
                "could not post event",
                extra={"reason": reason, "status": e.status, "detail": str(e.body)[:300]},
            )
