"""KServe's and Triton's Python clients, with their default settings, against `rtml serve`.

Both send the binary tensor data extension by default (and Triton's asks for binary outputs),
which the runtime once answered with `400 malformed JSON`. Each client's answer must be the
plain JSON request's, through both ways the runtime is hosted (BentoML, and plain uvicorn).

KServe's client runs in its own venv (tests/requirements-kserve-client.txt says why; built once
from PyPI like the benchmarks' KServe venv) as a child process; Triton's runs in this one.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from benchmarks.benchlib.venvs import venv_for

from tests.runtime_proc import REPO, RuntimeProcess
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.runtime
NAME = "v2clients"
A = [0.5, -1.25, 3.0]
B = [1.0, 2.0, -0.75]
EXPECTED = [1 / (1 + math.exp(-(a + b))) for a, b in zip(A, B, strict=True)]


def write_model(where: Path) -> Path:
    """A Model without a FeatureView: score = sigmoid(a + b), a and b from the request."""
    where.mkdir(parents=True, exist_ok=True)
    model = write_sum_model(where / "model.onnx", ["a", "b"])
    manifest = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": NAME},
        "spec": {
            "version": "v1",
            "artifact": {
                "uri": f"file://{model}",
                "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            },
            "features": {"requestFeatures": ["a", "b"]},
            "slo": {"p99LatencyMs": 50, "timeoutMs": 1000, "featureBudgetMs": 20},
            "warmup": {"requests": 5},
        },
    }
    path = where / "model.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(scope="module", params=["bentoml", "uvicorn"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    manifest = write_model(tmp_path_factory.mktemp(f"v2clients-{request.param}"))
    proc = RuntimeProcess(
        manifest, redis_url=None, server=request.param, extra_args=["--no-register"]
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    return venv_for(REPO / "tests/requirements-kserve-client.txt", "venv-test-kserve-client", print)


def plain_json(proc: RuntimeProcess) -> list[float]:
    inputs = [
        {"name": "a", "shape": [3, 1], "datatype": "FP32", "data": A},
        {"name": "b", "shape": [3, 1], "datatype": "FP32", "data": B},
    ]
    status, body, headers = proc.post(f"/v2/models/{NAME}/infer", {"inputs": inputs})
    assert status == 200, body
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    scores: list[float] = body["outputs"][0]["data"]
    assert scores == pytest.approx(EXPECTED, rel=1e-6)
    return scores


def test_tritonclient_with_its_defaults(served: RuntimeProcess) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served.port}")
    try:
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        assert client.is_model_ready(NAME)
        inputs = []
        for name, values in (("a", A), ("b", B)):
            tensor = triton.InferInput(name, [3, 1], "FP32")
            tensor.set_data_from_numpy(np.array(values, dtype=np.float32).reshape(3, 1))
            inputs.append(tensor)
        result = client.infer(NAME, inputs, request_id="t1")
    finally:
        client.close()
    response = result.get_response()
    (out,) = response["outputs"]
    assert out["parameters"] == {"binary_data_size": 24}  # it asked for binary, and got it
    assert "data" not in out
    assert response["id"] == "t1"
    assert result.as_numpy("score").tolist() == plain_json(served)


KSERVE_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    async def main(base, name, columns, binary_output):
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        inputs = []
        for column, values in columns.items():
            data = np.array(values, dtype=np.float32).reshape(-1, 1)
            tensor = InferInput(column, list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        outputs = [RequestedOutput("score", {"binary_data": True})] if binary_output else None
        request = InferRequest(name, inputs, request_id="k1", request_outputs=outputs)
        headers = {}
        response = await client.infer(base, request, model_name=name, response_headers=headers)
        (out,) = response.outputs
        print(json.dumps({
            "id": response.id,
            "score": out.as_numpy().tolist(),
            "content_type": headers.get("content-type"),
            "header_length": headers.get("inference-header-content-length"),
            "sent_binary": [t.parameters.get("binary_data_size") for t in inputs],
        }))

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"))
""")


def kserve_infer(python: Path, proc: RuntimeProcess, binary_output: bool) -> dict[str, Any]:
    run = subprocess.run(
        [
            str(python),
            "-c",
            KSERVE_SCRIPT,
            proc.base,
            NAME,
            json.dumps({"a": A, "b": B}),
            "1" if binary_output else "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def test_kserve_client_with_its_defaults(served: RuntimeProcess, kserve_python: Path) -> None:
    got = kserve_infer(kserve_python, served, binary_output=False)
    assert got["sent_binary"] == [12, 12]  # its default: the inputs went as binary data
    assert got["content_type"] == "application/json"  # JSON outputs unless asked otherwise
    assert got["id"] == "k1"
    assert got["score"] == plain_json(served)


def test_kserve_client_asking_for_a_binary_output(
    served: RuntimeProcess, kserve_python: Path
) -> None:
    got = kserve_infer(kserve_python, served, binary_output=True)
    assert got["content_type"] == "application/octet-stream"
    assert int(got["header_length"]) > 0
    assert got["score"] == plain_json(served)


BAD = [
    ("header length over the body", {"Inference-Header-Content-Length": "100000"}, 400),
    ("header length not a number", {"Inference-Header-Content-Length": "ten"}, 400),
    ("compressed", {"Content-Encoding": "gzip"}, 415),
]


@pytest.mark.parametrize(("case", "headers", "status"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_binary_request_is_answered_with_its_field(
    served: RuntimeProcess, case: str, headers: dict[str, str], status: int
) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12},
                }
                for n in ("a", "b")
            ]
        }
    ).encode()
    body = head + np.array(A, "<f4").tobytes() + np.array(B, "<f4").tobytes()
    got, answer, _ = served.request("POST", f"/v2/models/{NAME}/infer", body, headers)
    assert got == status, (case, answer)
    assert set(answer["error"]) == {"code", "message", "field"}
    assert answer["error"]["field"] == next(iter(headers))
    # ...and the same body with the right header is answered.
    right = {"Inference-Header-Content-Length": str(len(head))}
    ok, answer, _ = served.request("POST", f"/v2/models/{NAME}/infer", body, right)
    assert ok == 200, answer
    assert answer["outputs"][0]["data"] == pytest.approx(EXPECTED, rel=1e-6)
