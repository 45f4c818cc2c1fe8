"""The largest Model the CRD admits, on a real API server with the operator running.

Applied with `kubectl apply` (client-side, so the object carries kubectl's last-applied copy of
the manifest), the operator must still handle it: Kopf writes its own copy of the spec into an
annotation beside kubectl's, and both have to fit in the 256 KiB Kubernetes allows for all
annotations (docs/annotation-size.md). A field one step over its bound is refused by the API
server, naming the field.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from rtml.api.size import max_json_bytes, spec_schema
from rtml.dev.tools import ensure_tools
from tests.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.apiserver
REPO = Path(__file__).resolve().parents[2]
DIGEST = "d" * 64
MODEL = ("rtml.dev/v1alpha1", "Model")
KOPF = "rtml.dev/last-handled-configuration"
KUBECTL = "kubectl.kubernetes.io/last-applied-configuration"
ANNOTATIONS_LIMIT = 256 * 1024  # Kubernetes' TotalAnnotationSizeLimitB
# U+2028 is the dearest character the free-text fields admit in both copies: Kopf (Python's
# json.dumps) and kubectl (Go's encoding/json) both write it as the 6 bytes \u2028.
WIDE = "\u2028"


def model_bound() -> int:
    crd = yaml.safe_load((REPO / "crds" / "models.rtml.dev.yaml").read_text())
    return max_json_bytes(spec_schema(crd), "spec")


def name_of(i: int, length: int) -> str:
    return f"f{i:03d}" + "x" * (length - 4)


def largest_model(name: str, ns: str) -> dict[str, Any]:
    """A Model at the bounds of its largest fields: both artifact URIs, every list and the
    env at their longest, in the characters that cost the most."""
    features = [name_of(i, 63) for i in range(256)]
    # Extended resources with the longest names a Pod takes: its quota check prefixes
    # "requests." to the DNS prefix, which must stay within 253 characters.
    prefix = "r" * 63 + "." + "s" * 63 + "." + "t" * 63 + "." + "u" * 50
    extended = {f"{prefix}{i}/{'g' * 63}": "1" for i in range(6)}
    resources = {"cpu": "500m", "memory": "512Mi", **extended}
    spec = {
        "version": "v" + "1" * 61 + "z",
        "artifact": {"uri": "s3://bucket/" + WIDE * (2048 - 12), "sha256": DIGEST},
        "features": {
            "entityKey": "e" * 63,
            "requestFeatures": features,
            "columns": features,
        },
        "output": {"name": WIDE * 253, "column": 65535},
        "fallback": {
            "mode": "model",
            "artifact": {"uri": "s3://backup/" + WIDE * (2048 - 12), "sha256": DIGEST},
        },
        # cpu: an HPA whether or not an earlier test installed KEDA's CRD.
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu"},
        "runtime": {
            "image": "registry.local:5000/" + "r" * 400 + "/runtime@sha256:" + "0" * 64,
            "env": [{"name": f"E{i:02d}_" + "N" * 124, "value": WIDE * 256} for i in range(8)],
            "resources": {"requests": resources, "limits": resources},
        },
        "rollout": {
            "steps": [5 * i for i in range(1, 21)],
            "analysis": {
                "metrics": [
                    {"name": m, "max": 0.1}
                    for m in ("p99LatencyMs", "errorRate", "fallbackRate", "scoreMeanShift")
                ]
            },
        },
        # Decisions: `&&` and `>` are what kubectl's writer spends 6 bytes on.
        "rules": [
            {
                "name": f"r{i}" + "x" * 61,
                "expression": "1<2" + "&&1<2" * 37,  # 188 characters, 112 of them escaped
                "severity": "high",
                "reason": "r" * 128,
            }
            for i in range(8)
        ],
        "ensemble": {
            "models": [
                {
                    "name": f"m{i}" + "x" * 61,
                    "version": "v" * 63,
                    "artifact": {"uri": "s3://b/" + "&" * 505, "sha256": DIGEST},
                    "weight": 1000,
                }
                for i in range(2)
            ],
        },
        "decision": {
            "thresholds": [
                {"minScore": i, "action": "approve", "riskLevel": "medium", "reason": "x" * 128}
                for i in range(4)
            ],
            "conservative": {"action": "approve", "riskLevel": "medium", "reason": "x" * 128},
        },
        "audit": {"stream": "s" * 128, "alertStream": "a" * 128, "maxLen": 100_000_000},
    }
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def compact(value: Any) -> str:
    """JSON as Kopf writes it (without its trailing newline)."""
    return json.dumps(value, separators=(",", ":"))


def kubectl_apply(kubeconfig: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(manifest))
    kubectl = ensure_tools(progress=lambda _m: None) / "kubectl"
    result = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "apply", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl apply: {result.stderr}"


def handled(kube: Kube, name: str, ns: str) -> dict[str, Any] | None:
    obj = kube.get(*MODEL, name, ns)
    if not obj:
        return None
    done = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
    return obj if done and KOPF in (obj["metadata"].get("annotations") or {}) else None


def test_the_largest_model_is_handled_with_both_copies_of_its_spec(
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    control_plane: Any,
    tmp_path: Path,
) -> None:
    manifest = largest_model("largest", namespace)
    bound = model_bound()
    kubectl_apply(Path(control_plane.kubeconfig), manifest, tmp_path)
    obj = wait_for(
        lambda: handled(kube, "largest", namespace),
        90,
        what="the operator to handle the largest Model (observedGeneration, Kopf's annotation)",
    )
    annotations = obj["metadata"]["annotations"]
    kopf_copy, kubectl_copy = annotations[KOPF], annotations[KUBECTL]
    assert json.loads(kopf_copy)["spec"] == obj["spec"]
    assert json.loads(kubectl_copy)["spec"] == manifest["spec"]

    # The bound holds for the spec as each writer wrote it, and this Model comes near it.
    # Kopf (Python's json) writes `&`, `<` and `>` as themselves, kubectl (Go's encoding/json)
    # as 6-byte escapes: the rules and member URIs full of them reach the bound in kubectl's
    # copy only. Its spec's share: the annotation less the same manifest without a spec.
    kopf_spec = len(compact(obj["spec"]).encode())
    rest = {k: v for k, v in manifest.items() if k != "spec"}
    kubectl_spec = len(kubectl_copy.encode()) - len(compact(rest).encode()) - len(',"spec":')
    assert kopf_spec <= bound
    assert kubectl_spec <= bound + 64  # kubectl's trailing newline and key order
    nearest = max(kopf_spec, kubectl_spec)
    assert nearest > 0.9 * bound, f"{nearest} bytes: not near the bound of {bound}"

    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    assert total <= ANNOTATIONS_LIMIT
    print(
        f"bound {bound} B; Kopf's copy {len(kopf_copy.encode())} B, kubectl's "
        f"{len(kubectl_copy.encode())} B; all annotations {total} B of {ANNOTATIONS_LIMIT}"
    )


def over(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`spec` with one part replaced (a dotted path as key)."""
    out = json.loads(json.dumps(spec))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return out


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"runtime.env.0.value": WIDE * 257}, "spec.runtime.env[0].value", "256"),
        (
            {"features.requestFeatures": [name_of(i, 8) for i in range(257)]},
            "spec.features.requestFeatures",
            "256",
        ),
        ({"features.columns.0": "x" * 64}, "spec.features.columns[0]", "63"),
        ({"features.entityKey": "a&b"}, "spec.features.entityKey", "should match"),
        ({"artifact.uri": "s3://bucket/\U0001f600.onnx"}, "spec.artifact.uri", "should match"),
        (
            {"runtime.resources.limits": {"no such/resource/name": "1"}},
            "spec.runtime.resources.limits",
            "resource name",
        ),
    ],
)
def test_a_field_over_its_bound_is_refused_naming_it(
    kube: Kube,
    rtml_crds: list[str],
    namespace: str,
    changes: dict[str, Any],
    field: str,
    words: str,
) -> None:
    manifest = largest_model("over", namespace)
    manifest["spec"] = over(manifest["spec"], **changes)
    with pytest.raises(ApiException) as err:
        kube.create(manifest)
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert field in message, message
    assert words in message, message
    assert kube.get(*MODEL, "over", namespace) is None


@pytest.mark.parametrize(
    ("default", "words"),
    [("x" * 33, "32"), ({"a": 1}, "at most 0"), ([1], "at most 0"), ("\U0001f600", "should match")],
)
def test_a_feature_default_is_a_bounded_scalar(
    kube: Kube, rtml_crds: list[str], namespace: str, default: Any, words: str
) -> None:
    view = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "defaults", "namespace": namespace},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": [{"name": "country", "dtype": "STRING", "default": default}],
            "source": {"type": "push"},
        },
    }
    with pytest.raises(ApiException) as err:
        kube.create(view)
    message = json.loads(err.value.body)["message"]
    assert "spec.features[0].default" in message, message
    assert words in message, message
    view["spec"]["features"][0]["default"] = "ü" * 32
    created = kube.create(view)
    assert created["spec"]["features"][0]["default"] == "ü" * 32
