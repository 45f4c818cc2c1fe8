"""The runtime loads exactly the bytes it verified, within a size cap, from one file only."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from rtml.artifacts import ArtifactTooLarge, DigestMismatch, artifact_bytes
from rtml_runtime.onnx_model import ModelError, OnnxModel
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_swapped_after_its_check_is_not_what_serves(tmp_path: Path) -> None:
    """The session is made from the bytes that were hashed: replacing the file afterwards (a
    second writer on a shared volume) changes nothing that serves."""
    model_file = write_sum_model(tmp_path / "m.onnx", ["a"])
    path, data = artifact_bytes("file://m.onnx", sha(model_file), tmp_path, tmp_path / "cache")
    write_sum_model(model_file, ["a"], bias=5.0)  # the swap, between the check and the load
    served = OnnxModel(path, data=data)
    genuine = OnnxModel(write_sum_model(tmp_path / "genuine.onnx", ["a"]))
    assert served.predict_one([0.25]) == pytest.approx(genuine.predict_one([0.25]))
    assert served.sha256 == hashlib.sha256(data).hexdigest() != sha(model_file)


def test_a_swapped_file_is_refused_by_its_digest(tmp_path: Path) -> None:
    model_file = write_sum_model(tmp_path / "m.onnx", ["a"])
    digest = sha(model_file)
    write_sum_model(model_file, ["a"], bias=5.0)
    with pytest.raises(DigestMismatch, match="refusing to serve it"):
        artifact_bytes("file://m.onnx", digest, tmp_path, tmp_path / "cache")


def test_an_artifact_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    model_file = write_sum_model(tmp_path / "m.onnx", ["a"])
    size = model_file.stat().st_size
    with pytest.raises(ArtifactTooLarge, match="RTML_MAX_ARTIFACT_BYTES") as err:
        artifact_bytes("file://m.onnx", sha(model_file), tmp_path, tmp_path, max_bytes=size - 1)
    assert f"{size} bytes" in str(err.value)
    # At the cap exactly, it loads.
    _, data = artifact_bytes("file://m.onnx", sha(model_file), tmp_path, tmp_path, max_bytes=size)
    assert len(data) == size


def _model_with_external_data(folder: Path) -> Path:
    """A model whose weights live in a file outside its folder, as a hostile file would say
    (onnx's own saver writes them beside the model)."""
    (folder.parent / "outside.bin").write_bytes(struct.pack("<3f", 1.0, 2.0, 3.0))
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 1])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../outside.bin", "offset": "0", "length": "12"}.items():
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["score"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_is_refused_with_its_file_named(tmp_path: Path) -> None:
    """Tensors in other files are not covered by the digest (and may point anywhere, as this
    one points outside the model's folder): refused, with the fix in the reason."""
    (tmp_path / "models").mkdir()
    path = _model_with_external_data(tmp_path / "models")
    assert (tmp_path / "outside.bin").is_file()  # ONNX Runtime would have read it, by path
    with pytest.raises(ModelError, match=r"external files \(\.\./outside\.bin\)") as err:
        OnnxModel(path, data=path.read_bytes())
    assert "save_as_external_data=False" in str(err.value)


def test_an_op_outside_onnx_runtime_is_refused_by_name(tmp_path: Path) -> None:
    """No custom-op library is ever registered, so a model naming one does not load."""
    graph = helper.make_graph(
        [helper.make_node("Exfiltrate", ["x"], ["score"], domain="com.example.custom")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.custom", 1)],
    )
    path = tmp_path / "custom.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match=r"com\.example\.custom:Exfiltrate"):
        OnnxModel(path, data=path.read_bytes())
