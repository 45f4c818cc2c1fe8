"""Every renderer branch: both backends, autoscaler choices, defaults, security context."""

from __future__ import annotations

import pytest

from rtml.operator.render import RenderContext, render_model_children
from rtml.operator.render.autoscaler import render_autoscaler, target_value
from rtml.operator.render.configmap import config_checksum, render_config_map
from rtml.operator.render.deployment import CHECKSUM_ANNOTATION, render_deployment
from rtml.operator.render.inferenceservice import render_inference_service
from tests.unit.helpers import model

pytestmark = pytest.mark.unit
CTX = RenderContext(runtime_image="registry.local/rtml:test")
KEDA = RenderContext(runtime_image="registry.local/rtml:test", keda_installed=True)


def kinds(objs: list[dict]) -> list[str]:
    return [o["kind"] for o in objs]


def test_bentoml_children_in_apply_order() -> None:
    assert kinds(render_model_children(model(), CTX)) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ]


def test_kserve_children_are_config_and_inference_service() -> None:
    assert kinds(render_model_children(model(backend="kserve"), CTX)) == [
        "ConfigMap",
        "ConfigMap",
        "InferenceService",
    ]


def test_every_child_is_owned_by_the_model_and_labelled() -> None:
    for obj in render_model_children(model(), CTX):
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "rtml.dev/v1alpha1",
            "kind": "Model",
            "name": "fraud",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"]["rtml.dev/model"] == "fraud"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "rtml-operator"


def test_deployment_is_restricted_and_probes_oip_health() -> None:
    pod = render_deployment(model(), CTX)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["image"] == "registry.local/rtml:test"
    # A crashed runtime's log tail lands in lastState.terminated.message (the Model's Ready).
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Serving goes on while the endpoint is withdrawn, and less than the pod's whole grace.
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
    assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert c["livenessProbe"]["terminationGracePeriodSeconds"] == 10
    # A contended node answers slowly: probes wait longer than the 1 s default before failing.
    assert (c["readinessProbe"]["timeoutSeconds"], c["livenessProbe"]["timeoutSeconds"]) == (3, 5)
    assert pod["automountServiceAccountToken"] is False
    # only volume types the restricted profile allows
    assert {next(k for k in v if k != "name") for v in pod["volumes"]} <= {"configMap", "emptyDir"}


def test_scrape_annotations_and_config_checksum_on_pods() -> None:
    m = model()
    ann = render_deployment(m, CTX)["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8080"
    assert ann[CHECKSUM_ANNOTATION] == config_checksum(m)


def test_config_change_changes_checksum_so_pods_roll() -> None:
    a = render_deployment(model(), CTX)["spec"]["template"]["metadata"]["annotations"]
    b = render_deployment(model(slo={"p99LatencyMs": 20}), CTX)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert a[CHECKSUM_ANNOTATION] != b[CHECKSUM_ANNOTATION]


def test_config_map_holds_resolved_spec_with_defaults() -> None:
    import json

    data = json.loads(render_config_map(model())["data"]["model.json"])
    assert data["spec"]["slo"] == {"p99LatencyMs": 50, "timeoutMs": 100, "featureBudgetMs": 20}
    assert data["spec"]["fallback"] == {"mode": "reject"}
    assert data["spec"]["warmup"] == {"requests": 50}


def test_replicas_omitted_when_autoscaler_owns_them() -> None:
    dep = render_deployment(model(autoscaling={"minReplicas": 2, "maxReplicas": 6}), CTX)
    assert "replicas" not in dep["spec"]


def test_fixed_size_model_has_replicas_and_no_autoscaler() -> None:
    m = model(autoscaling={"minReplicas": 3, "maxReplicas": 3})
    assert render_deployment(m, CTX)["spec"]["replicas"] == 3
    assert render_autoscaler(m, CTX) is None
    assert "HorizontalPodAutoscaler" not in kinds(render_model_children(m, CTX))


@pytest.mark.parametrize(
    ("metric", "target", "expected"),
    [
        (
            "cpu",
            None,
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            },
        ),
        (
            "cpu",
            55,
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 55},
                },
            },
        ),
        (
            "concurrency",
            None,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "rtml_concurrency"},
                    "target": {"type": "AverageValue", "averageValue": "500m"},
                },
            },
        ),
        (
            "concurrency",
            2.5,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "rtml_concurrency"},
                    "target": {"type": "AverageValue", "averageValue": "2500m"},
                },
            },
        ),
        (
            "rps",
            None,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "rtml_requests_per_second"},
                    "target": {"type": "AverageValue", "averageValue": "200"},
                },
            },
        ),
        (
            "p99Latency",
            None,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "rtml_request_p99_latency_ms"},
                    "target": {"type": "AverageValue", "averageValue": "40"},
                },
            },
        ),
    ],
)
def test_hpa_metric_per_autoscaling_metric(
    metric: str, target: float | None, expected: dict
) -> None:
    spec = {"metric": metric, **({"target": target} if target is not None else {})}
    hpa = render_autoscaler(model(autoscaling=spec), CTX)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["metrics"] == [expected]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)


@pytest.mark.parametrize("metric", ["concurrency", "rps", "p99Latency"])
def test_keda_scaled_object_when_keda_installed(metric: str) -> None:
    so = render_autoscaler(model(autoscaling={"metric": metric, "maxReplicas": 7}), KEDA)
    assert so is not None
    assert so["kind"] == "ScaledObject"
    assert so["spec"]["maxReplicaCount"] == 7
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert 'model="fraud"' in trigger["metadata"]["query"]
    assert trigger["metricType"] == ("Value" if metric == "p99Latency" else "AverageValue")
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_keda_not_used_for_cpu() -> None:
    hpa = render_autoscaler(model(autoscaling={"metric": "cpu"}), KEDA)
    assert hpa is not None
    assert hpa["kind"] == "HorizontalPodAutoscaler"


def test_scale_down_waits_for_the_stabilization_window() -> None:
    default = render_autoscaler(model(autoscaling={"metric": "cpu"}), CTX)
    assert default is not None
    assert default["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    quick = RenderContext(scale_down_stabilization_seconds=30)
    hpa = render_autoscaler(model(autoscaling={"metric": "cpu"}), quick)
    assert hpa is not None
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    assert "scaleUp" not in hpa["spec"]["behavior"]  # as fast as the HPA's defaults allow


def test_p99_target_defaults_to_headroom_under_slo() -> None:
    m = model(slo={"p99LatencyMs": 30}, autoscaling={"metric": "p99Latency"})
    assert target_value(m) == pytest.approx(24.0)


@pytest.mark.parametrize(
    ("metric", "klass", "scale"),
    [
        ("cpu", "hpa", {"scaleMetric": "cpu", "scaleTarget": 70, "scaleMetricType": "Utilization"}),
        ("concurrency", "keda", {}),
        ("rps", "keda", {}),
        ("p99Latency", "keda", {}),
    ],
)
def test_kserve_defaults_to_standard_mode(metric: str, klass: str, scale: dict) -> None:
    """KServe's recommended mode, no Knative: HPA for cpu, KEDA on Prometheus for the rest."""
    isvc = render_inference_service(model(backend="kserve", autoscaling={"metric": metric}), CTX)
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Standard"
    assert ann["serving.kserve.io/autoscalerClass"] == klass
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (1, 5)
    for k, v in scale.items():
        assert pred[k] == v
    if klass == "keda":
        assert "scaleMetric" not in pred
        (external,) = pred["autoScaling"]["metrics"]
        assert external["type"] == "External"
        assert external["external"]["metric"]["backend"] == "prometheus"
        assert 'model="fraud"' in external["external"]["metric"]["query"]
        kind = "Value" if metric == "p99Latency" else "AverageValue"
        assert external["external"]["target"]["type"] == kind


def test_kserve_p99_target_is_the_slo_headroom_or_the_models() -> None:
    isvc = render_inference_service(
        model(backend="kserve", autoscaling={"metric": "p99Latency", "target": 25}), CTX
    )
    (metric,) = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    assert metric["external"]["target"] == {"type": "Value", "value": "25"}


@pytest.mark.parametrize("asked", ["Knative", "Serverless"])
@pytest.mark.parametrize(("metric", "target"), [("concurrency", 1), ("rps", 200), ("cpu", 70)])
def test_kserve_knative_only_when_the_model_asks(asked: str, metric: str, target: int) -> None:
    m = model(backend="kserve", autoscaling={"metric": metric})
    m.metadata.annotations["serving.kserve.io/deploymentMode"] = asked
    isvc = render_inference_service(m, CTX)
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in ann
    pred = isvc["spec"]["predictor"]
    assert (pred["scaleMetric"], pred["scaleTarget"]) == (metric, target)


def test_kserve_p99_stays_standard_even_when_knative_is_asked() -> None:
    m = model(backend="kserve", autoscaling={"metric": "p99Latency"})
    m.metadata.annotations["serving.kserve.io/deploymentMode"] = "Knative"
    isvc = render_inference_service(m, CTX)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"


def test_kserve_predictor_runs_the_runtime_container_restricted() -> None:
    pred = render_inference_service(model(backend="kserve"), CTX)["spec"]["predictor"]
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["ports"][0]["containerPort"] == 8080
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pred["securityContext"]["runAsNonRoot"] is True


def test_runtime_overrides_apply() -> None:
    m = model(
        runtime={
            "image": "my/img:1",
            "serviceAccountName": "ml-reader",
            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        }
    )
    pod = render_deployment(m, CTX)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "my/img:1"
    assert pod["serviceAccountName"] == "ml-reader"
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "2"}, "limits": {"cpu": "2", "memory": "2Gi"}}


def test_default_resources_when_not_overridden() -> None:
    (c,) = render_deployment(model(), CTX)["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}


def test_rendering_is_deterministic() -> None:
    assert render_model_children(model(), CTX) == render_model_children(model(), CTX)


def test_selector_excludes_version_so_upgrades_do_not_orphan_pods() -> None:
    a = render_deployment(model(), CTX)["spec"]["selector"]
    b = render_deployment(model(version="v2"), CTX)["spec"]["selector"]
    assert a == b
    assert "rtml.dev/version" not in a["matchLabels"]


def test_feature_view_travels_in_the_config_and_rolls_pods_when_it_changes() -> None:
    import json

    m = model(features={"featureViewRef": "cards"})
    view = {"apiVersion": "rtml.dev/v1alpha1", "kind": "FeatureView",
            "metadata": {"name": "cards", "uid": "x", "resourceVersion": "7"},
            "spec": {"entity": {"name": "c", "joinKey": "c"}, "ttl": "1h",
                     "features": [{"name": "a", "dtype": "FLOAT"}]}}  # fmt: skip
    children = render_model_children(m, CTX, view)
    config = json.loads(children[0]["data"]["model.json"])
    assert config["featureView"]["spec"]["ttl"] == "1h"
    assert config["featureView"]["metadata"] == {"name": "cards"}  # no volatile fields
    changed = {**view, "spec": {**view["spec"], "ttl": "2h"}}
    before = children[2]["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    after = render_model_children(m, CTX, changed)[2]["spec"]["template"]["metadata"][
        "annotations"
    ][CHECKSUM_ANNOTATION]
    assert before != after


def test_spec_stream_adds_consumers_the_predictor_selectors_never_pick() -> None:
    m = model(stream={"input": "cards:events", "replicas": 3})
    children = render_model_children(m, CTX)
    assert kinds(children)[-2:] == ["Deployment", "NetworkPolicy"]
    stream, policy = children[-2:]
    assert stream["metadata"]["name"] == "fraud-stream"
    assert stream["spec"]["replicas"] == 3
    selector = stream["spec"]["selector"]["matchLabels"]
    assert selector == {"rtml.dev/model": "fraud", "app.kubernetes.io/component": "stream"}
    pod = stream["spec"]["template"]
    assert pod["metadata"]["labels"]["rtml.dev/model"] == "fraud"  # pruned with the Model
    # Neither the Service, the PodDisruptionBudget nor the NetworkPolicy selects a consumer.
    checked: set[str] = set()
    for obj in children[:-2]:
        spec = obj.get("spec") or {}
        chooses = spec.get("selector") or spec.get("podSelector") or {}
        picks = chooses if obj["kind"] == "Service" else chooses.get("matchLabels")
        if picks:
            checked.add(obj["kind"])
            assert not picks.items() <= pod["metadata"]["labels"].items(), obj["kind"]
    assert checked == {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.local/rtml:test"
    assert container["args"] == [
        "stream", "/etc/rtml/model.json", "--input", "cards:events", "--group", "rtml-fraud",
        "--output", "rtml:fraud:results", "--metrics-host", "0.0.0.0", "--metrics-port", "9400",  # noqa: S104
    ]  # fmt: skip
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"] for e in container["env"]} >= {"RTML_FEAST_STORE", "RTML_FEAST_REDIS_URL"}
    # Only the metrics port in; out, DNS, the online store's Redis and the artifact's port.
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9400}]
    assert policy["spec"]["egress"][1]["ports"] == [
        {"protocol": "TCP", "port": 443},  # s3://
        {"protocol": "TCP", "port": 6379},
    ]
    kserve = kinds(render_model_children(model(backend="kserve", stream={}), CTX))
    assert kserve[-2:] == ["Deployment", "NetworkPolicy"]
    assert "Deployment" not in kinds(render_model_children(model(backend="kserve"), CTX))
