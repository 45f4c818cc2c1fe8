"""FeaturesResolved on the operator's side: real ONNX files, a real HTTP server, no cluster."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import onnx
import pytest
from onnx import TensorProto, helper

from rtml.api.model import Model
from rtml.onnx_inputs import OnnxSignatureError, onnx_inputs
from rtml.operator.signature import SignatureCache, check_model_signature
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit
T = TypeVar("T")


class Inline(Executor):
    """Runs each download at once, in the caller's thread: the check settles before it
    returns, so these tests need no waiting (tests/unit/test_artifact_fetch.py has the pool)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


def feature_view(ready: str | None = "True", **dtypes: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "cards", "namespace": "ml"},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": [{"name": n, "dtype": d} for n, d in dtypes.items()],
            "source": {"type": "push"},
        },
    }
    if ready is not None:
        why = "Registered" if ready == "True" else "RegistryUnavailable"
        body["status"] = {
            "conditions": [
                {"type": "Ready", "status": ready, "reason": why, "message": f"the view is {why}"}
            ]
        }
    return body


def model(uri: str, sha256: str | None = None, request: tuple[str, ...] = ("amount",)) -> Model:
    # Without a digest the check reads whatever is there, as the runtime then loads it.
    artifact = {"uri": uri, **({"sha256": sha256} if sha256 else {"allowUnverified": True})}
    return Model.model_validate(
        {
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "u1", "generation": 2},
            "spec": {
                "version": "v2",
                "artifact": artifact,
                "features": {"featureViewRef": "cards", "requestFeatures": list(request)},
            },
        }
    )


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])


@pytest.fixture
def cache(tmp_path: Path) -> SignatureCache:
    return SignatureCache(tmp_path / "cache")


GOOD = feature_view(a="FLOAT", b="INT64")


def test_view_missing(onnx_file: Path, cache: SignatureCache) -> None:
    c = check_model_signature(model(f"file://{onnx_file}"), None, cache)
    assert (c.status, c.reason) == ("False", "FeatureViewNotFound")
    assert "'cards'" in c.message


def test_view_not_ready(onnx_file: Path, cache: SignatureCache) -> None:
    c = check_model_signature(model(f"file://{onnx_file}"), feature_view("False", a="FLOAT"), cache)
    assert (c.status, c.reason) == ("False", "FeatureViewNotReady")
    assert "FeatureView 'cards' is not Ready: the view is RegistryUnavailable" in c.message


def test_a_view_nobody_judged_yet_is_unknown_not_false(
    onnx_file: Path, cache: SignatureCache
) -> None:
    view = feature_view(None, a="FLOAT", b="FLOAT")
    c = check_model_signature(model(f"file://{onnx_file}"), view, cache)
    assert (c.status, c.reason) == ("Unknown", "FeatureViewNotReady")


def test_a_mismatch_names_each_input_and_fixing_the_view_flips_to_true(
    onnx_file: Path, cache: SignatureCache
) -> None:
    m = model(f"file://{onnx_file}", request=("amount", "tip"))
    c = check_model_signature(m, feature_view(a="STRING"), cache)
    assert (c.status, c.reason) == ("False", "SignatureMismatch")
    assert "ONNX input 'a' is float, but FeatureView 'cards' feature 'a' is STRING" in c.message
    assert "ONNX input 'b' is neither a feature of FeatureView 'cards'" in c.message
    assert "request feature 'tip'" in c.message

    fixed = check_model_signature(model(f"file://{onnx_file}"), GOOD, cache)
    assert (fixed.status, fixed.reason) == ("True", "SignatureMatches")


def test_an_s3_artifact_is_unknown_and_left_to_the_runtime(cache: SignatureCache) -> None:
    c = check_model_signature(model("s3://models/fraud.onnx", "a" * 64), GOOD, cache)
    assert (c.status, c.reason) == ("Unknown", "ArtifactUnreachable")
    assert "the runtime enforces the same check at start-up" in c.message


def test_a_file_the_operator_does_not_have_is_unknown(cache: SignatureCache) -> None:
    c = check_model_signature(model("file:///models/absent.onnx"), GOOD, cache)
    assert (c.status, c.reason) == ("Unknown", "ArtifactUnreachable")
    assert "/models/absent.onnx does not exist on the operator's filesystem" in c.message


def test_a_digest_mismatch_is_false(onnx_file: Path, cache: SignatureCache) -> None:
    c = check_model_signature(model(f"file://{onnx_file}", "0" * 64), GOOD, cache)
    assert (c.status, c.reason) == ("False", "ArtifactDigestMismatch")
    assert "spec.artifact.sha256 is " + "0" * 64 in c.message


def test_an_artifact_over_the_cap_is_not_read(onnx_file: Path, tmp_path: Path) -> None:
    small = SignatureCache(tmp_path / "cache", max_bytes=16)
    c = check_model_signature(model(f"file://{onnx_file}"), GOOD, small)
    assert (c.status, c.reason) == ("Unknown", "ArtifactTooLarge")
    assert "16-byte limit" in c.message


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []
    handler = type("Handler", (CountingHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    finally:
        server.shutdown()
        server.server_close()


def test_http_artifacts_are_downloaded_once_and_kept_by_digest(
    http_root: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, root, hits = http_root
    path = write_sum_model(root / "m.onnx", ["a", "b", "amount"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = SignatureCache(tmp_path / "cache", fetch_hosts=("127.0.0.1",), executor=Inline())
    for _ in range(2):
        c = check_model_signature(model(f"{url}/m.onnx", digest), GOOD, cache)
        assert (c.status, c.reason) == ("True", "SignatureMatches")
    assert hits == ["/m.onnx"]
    assert (tmp_path / "cache" / f"{digest}.onnx").is_file()

    fresh = SignatureCache(tmp_path / "cache", fetch_hosts=("127.0.0.1",))  # a restart reuses it
    assert check_model_signature(model(f"{url}/m.onnx", digest), GOOD, fresh).status == "True"
    assert hits == ["/m.onnx"]

    wrong = check_model_signature(model(f"{url}/m.onnx", "1" * 64), GOOD, cache)
    assert (wrong.status, wrong.reason) == ("False", "ArtifactDigestMismatch")
    gone = check_model_signature(model(f"{url}/gone.onnx", "2" * 64), GOOD, cache)
    assert (gone.status, gone.reason) == ("Unknown", "ArtifactUnreachable")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}.onnx"]


def test_onnx_inputs_reads_the_graph_inputs_and_declared_columns(tmp_path: Path) -> None:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [1.0, 2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["score"])],
        "wide",
        [
            helper.make_tensor_value_info("features", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 1]),  # IR < 4 style
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights],
    )
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {"rtml.features": json.dumps(["a", "b", "c"])})
    path = tmp_path / "wide.onnx"
    onnx.save(proto, str(path))

    inputs, declared = onnx_inputs(path)
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [
        ("features", "tensor(int64)", ("batch", 3))
    ]
    assert declared == ["a", "b", "c"]
    with pytest.raises(OnnxSignatureError, match="over the 16-byte limit"):
        onnx_inputs(path, max_bytes=16)
