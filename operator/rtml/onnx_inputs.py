"""The inputs an ONNX graph expects, read from its protobuf alone (no ONNX Runtime, no
session): what the operator, `rtml validate` and the runtime check against a FeatureView."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtml.api.signature import InputSpec

DECLARED_FEATURES = "rtml.features"  # metadata: the column names of a single wide input
MAX_SIGNATURE_BYTES = 64 << 20


class OnnxSignatureError(Exception):
    """The file is not an ONNX model whose inputs can be read."""


def _elem(elem_type: int) -> str:
    from onnx import TensorProto

    return str(TensorProto.DataType.Name(elem_type).lower())


def _input_spec(value_info: Any) -> InputSpec:
    """A graph input as ONNX Runtime would describe it: `tensor(float)`, dims or names."""
    from onnx import TensorProto

    kind = value_info.type.WhichOneof("value")
    if kind == "sequence_type":
        elem = value_info.type.sequence_type.elem_type
        if elem.WhichOneof("value") == "map_type":
            key, value = elem.map_type.key_type, elem.map_type.value_type
            if value.WhichOneof("value") == "tensor_type":
                dtype = f"seq(map({_elem(key)},tensor({_elem(value.tensor_type.elem_type)})))"
                return InputSpec(value_info.name, dtype, ())
    if kind != "tensor_type":
        return InputSpec(value_info.name, str(kind), ())
    tensor = value_info.type.tensor_type
    dtype = f"tensor({TensorProto.DataType.Name(tensor.elem_type).lower()})"
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    )
    return InputSpec(value_info.name, dtype, shape)


@dataclass(frozen=True)
class OnnxGraph:
    """What the signature check reads of a model: its inputs, `rtml.features`, its outputs."""

    inputs: list[InputSpec]
    declared: list[str] | None
    outputs: list[InputSpec]


def graph_outputs(model: Any) -> list[InputSpec]:
    """The graph's outputs as ONNX Runtime names their types; a ZipMap's output gets the shape
    [N, number of classes] from the node's class labels (its type carries no shape)."""
    outputs = []
    for value_info in model.graph.output:
        spec = _input_spec(value_info)
        zipmap = _zipmap(model.graph, spec.name)
        if zipmap is not None:
            spec = InputSpec(spec.name, spec.dtype, (None, len(_class_labels(zipmap))))
        outputs.append(spec)
    return outputs


def _zipmap(graph: Any, output: str) -> Any:
    return next(
        (n for n in graph.node if n.op_type == "ZipMap" and output in n.output),
        None,
    )


def _class_labels(node: Any) -> list[Any]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return list(attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or [])


def unzip_output(data: bytes, name: str) -> tuple[bytes, str]:
    """The model with its ZipMap output `name` replaced by the probability tensor the ZipMap
    reads ([N, classes], one column per class in the node's class order), which ONNX Runtime
    can bind and rtml scores; every other output is dropped, so the graph computes only the
    score. The bytes given were verified against the digest: this is the same model, cut."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(data)
    node = _zipmap(model.graph, name)
    if node is None:
        raise ValueError(f"ONNX output {name!r} is not the output of a ZipMap node")
    source = node.input[0]
    classes = len(_class_labels(node))
    model.graph.node.remove(node)
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info(source, TensorProto.FLOAT, [None, classes])
    )
    return model.SerializeToString(), source


def onnx_inputs(
    path: Path, max_bytes: int = MAX_SIGNATURE_BYTES
) -> tuple[list[InputSpec], list[str] | None]:
    """The graph's inputs and its `rtml.features` metadata (see `onnx_graph`)."""
    graph = onnx_graph(path, max_bytes)
    return graph.inputs, graph.declared


def onnx_graph(path: Path, max_bytes: int = MAX_SIGNATURE_BYTES) -> OnnxGraph:
    """The graph's inputs, its `rtml.features` metadata and its outputs, without loading it for
    inference.

    Reads the protobuf only (no external tensor data, no session). Files over `max_bytes` are
    refused.
    """
    import onnx  # ~0.3 s to import: only the commands that read a model pay it

    size = path.stat().st_size
    if size > max_bytes:
        raise OnnxSignatureError(
            f"{path} is {size} bytes, over the {max_bytes}-byte limit for reading an ONNX signature"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OnnxSignatureError(f"{path} is not a readable ONNX model: {e}") from e
    # Before IR version 4, initializers were listed as inputs too; they are not fed.
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_input_spec(i) for i in model.graph.input if i.name not in initializers]
    meta = {p.key: p.value for p in model.metadata_props}
    declared = None
    if DECLARED_FEATURES in meta:
        try:
            names = json.loads(meta[DECLARED_FEATURES])
        except json.JSONDecodeError as e:
            raise OnnxSignatureError(
                f"{path}: metadata {DECLARED_FEATURES!r} is not JSON: {e}"
            ) from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise OnnxSignatureError(
                f"{path}: metadata {DECLARED_FEATURES!r} must be a list of names"
            )
        declared = names
    return OnnxGraph(inputs, declared, graph_outputs(model))


def _tensors(graph: Any) -> Any:
    """Every tensor a graph holds: initializers, sparse ones, and those in node attributes,
    through subgraphs (If, Loop, Scan bodies)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_data_files(data: bytes) -> list[str]:
    """The files a serialised ONNX model keeps tensors in (none for a single-file model)."""
    import onnx

    model = onnx.load_model_from_string(data)
    files: set[str] = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in tensor.external_data}
            files.add(where.get("location", "?"))
    return sorted(files)
