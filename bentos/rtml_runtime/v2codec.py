"""`POST /v2/models/{name}/infer` on the wire: Open Inference Protocol v2 requests and responses.

Two encodings of one request, both decoded here and nowhere else (app.py passes the body and two
headers in and sends what `encode_response` gives back; the engine sees `InferRequest` only):

- JSON: every input's values in its `data` list.
- Triton's binary tensor data extension, which KServe's and Triton's Python clients send by
  default: the header `Inference-Header-Content-Length: N` says the first N bytes of the body
  are the JSON request; each input with `parameters.binary_data_size` has that many bytes of
  little-endian values, row major, after it, in the order of `inputs`. A request asks for an
  output in binary with the output's `parameters.binary_data`, or for all outputs with the
  request's `parameters.binary_data_output` (an output's own setting wins). Such a response is
  the JSON response (the output's `binary_data_size` in place of `data`) followed by the
  outputs' bytes, with `Inference-Header-Content-Length` and `application/octet-stream`.

Every input is one column of the model's rows: shape [N] or [N, 1], N values of a number
datatype, finite within float32's range (what the runtime's models take, metadata_v2).
Anything else is a 400 naming the field (`inputs[2].parameters.binary_data_size`); a header
that does not fit the body names the header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from rtml_runtime.errors import RequestError, bad_input
from rtml_runtime.jsonbody import parse_json

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
EXTENSIONS: Final = ("binary_tensor_data",)  # for the server metadata, GET /v2
BINARY_TYPE: Final = b"application/octet-stream"
JSON_TYPE: Final = b"application/json"

# The number datatypes and their binary layout (little-endian, no padding).
NUMBER_TYPES: Final[dict[str, np.dtype[Any]]] = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    # bfloat16: the top half of a float32 (numpy has no type of its own for it).
    "BF16": np.dtype("<u2"),
}
# Datatypes of the protocol whose values are not numbers a model's float input takes.
OTHER_TYPES: Final = ("BOOL", "BYTES")
MAX_HEADER_DIGITS: Final = 15
FLOAT32_MAX: Final = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded infer request: each input's values, and how to send the outputs.

    An input's values are a numpy array of its datatype (binary) or a list of JSON numbers,
    all finite within float32's range: either goes into `np.asarray(..., dtype=np.float32)`."""

    id: str
    inputs: dict[str, np.ndarray | list[Any]]
    outputs: tuple[str, ...]  # the outputs asked for by name; empty: all of them
    binary_outputs: dict[str, bool]  # an output's own `binary_data`
    binary_default: bool = False  # the request's `binary_data_output`

    def binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_default)


def decode_request(
    body: bytes, header_length: bytes | None = None, content_encoding: bytes | None = None
) -> InferRequest:
    """The request in `body`; `header_length` is the Inference-Header-Content-Length header."""
    if content_encoding is not None and content_encoding.strip().lower() not in (b"", b"identity"):
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {content_encoding.decode(errors='replace')!r} is not supported: "
            "send the body uncompressed",
            "Content-Encoding",
        )
    if header_length is None:
        return from_json(parse_json(body), None)
    text = header_length.strip()
    if not text.isdigit() or len(text) > MAX_HEADER_DIGITS:
        raise bad_input(
            f"{HEADER_LENGTH} must be a number of bytes, not {text.decode(errors='replace')!r}",
            HEADER_LENGTH,
        )
    n = int(text)
    if n > len(body):
        raise bad_input(
            f"{HEADER_LENGTH} is {n} but the body is only {len(body)} bytes", HEADER_LENGTH
        )
    return from_json(parse_json(body[:n]), memoryview(body)[n:])


def from_json(payload: Any, binary: memoryview | None = None) -> InferRequest:
    """The request from its JSON object; `binary` is what followed the JSON (None: no header,
    so no input may be binary)."""
    if type(payload) is not dict or type(payload.get("inputs")) is not list:
        raise bad_input('the body must hold an "inputs" list', "inputs")
    params = _parameters(payload.get("parameters"), "parameters")
    binary_default = _flag(params, "binary_data_output", "parameters")
    offset = 0
    inputs: dict[str, np.ndarray | list[Any]] = {}
    floats: dict[int, np.ndarray] = {}  # the binary inputs of a float datatype, by position
    # The error paths name the field; the loop itself builds no string (30 inputs, one row each,
    # is the fraud example's request).
    for i, tensor in enumerate(payload["inputs"]):
        if type(tensor) is not dict or type(name := tensor.get("name")) is not str:
            raise bad_input("each input needs a name", f"inputs[{i}]")
        if name in inputs:
            raise bad_input(f"input {name!r} is given twice", f"inputs[{i}].name")
        datatype = tensor.get("datatype")
        if datatype is not None and (type(datatype) is not str or datatype not in NUMBER_TYPES):
            raise _bad_datatype(datatype, i)
        shape = tensor.get("shape")
        rows = None if shape is None else _rows(shape, i)
        size = None
        if (tensor_params := tensor.get("parameters")) is not None:
            if type(tensor_params) is not dict:
                raise bad_input("parameters must be an object", f"inputs[{i}].parameters")
            size = tensor_params.get("binary_data_size")
        if size is None:
            inputs[name] = _json_column(tensor.get("data"), i, rows)
            continue
        values = _binary_input(tensor, i, size, datatype, rows, binary, offset)
        offset += size
        if values.dtype.kind == "f":
            floats[i] = values
        inputs[name] = values
    if binary is not None and offset != len(binary):
        raise bad_input(
            f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size add "
            f"up to {offset}",
            HEADER_LENGTH,
        )
    if floats:
        _check_floats(floats)
    outputs, binary_outputs = _requested_outputs(payload)
    return InferRequest(
        id=str(payload.get("id", "")),
        inputs=inputs,
        outputs=outputs,
        binary_outputs=binary_outputs,
        binary_default=binary_default,
    )


def encode_response(
    result: dict[str, Any], request: InferRequest
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its headers: JSON, or JSON then the binary outputs' bytes."""
    outputs = result["outputs"]
    if request.outputs:
        outputs = [o for o in outputs if o["name"] in request.outputs]
    chunks: list[bytes] = []
    sent = []
    for out in outputs:
        if not request.binary(out["name"]):
            sent.append(out)
            continue
        raw = np.asarray(out["data"], dtype=NUMBER_TYPES[out["datatype"]]).tobytes()
        chunks.append(raw)
        header = {k: v for k, v in out.items() if k != "data"}
        header["parameters"] = {**out.get("parameters", {}), "binary_data_size": len(raw)}
        sent.append(header)
    head = json.dumps({**result, "outputs": sent}, separators=(",", ":")).encode()
    if not chunks:
        return head, [(b"content-type", JSON_TYPE)]
    return b"".join([head, *chunks]), [
        (b"content-type", BINARY_TYPE),
        (HEADER_LENGTH.lower().encode(), str(len(head)).encode()),
    ]


def _parameters(params: Any, field: str) -> dict[str, Any]:
    if params is None:
        return {}
    if type(params) is not dict:
        raise bad_input("parameters must be an object", field)
    return params


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise bad_input(f"{key} must be true or false", f"{where}.{key}")
    return value


def _bad_datatype(datatype: Any, i: int) -> RequestError:
    if datatype in OTHER_TYPES:
        message = f"datatype {datatype} is not supported: the model's inputs are numbers"
    else:
        message = f"unknown datatype {str(datatype)[:40]!r}; one of {', '.join(NUMBER_TYPES)}"
    return bad_input(message, f"inputs[{i}].datatype")


def _bad_size(message: str, i: int) -> RequestError:
    return bad_input(message, f"inputs[{i}].parameters.binary_data_size")


def _rows(shape: Any, i: int) -> int:
    """The input's row count from its shape: [N] or [N, 1]."""
    if type(shape) is list and 1 <= len(shape) <= 2:
        n = shape[0]
        if type(n) is int and n >= 0 and (len(shape) == 1 or shape[1] == 1):
            return n
    raise bad_input(
        f"shape {str(shape)[:60]}: an input is one column, [N] or [N, 1]", f"inputs[{i}].shape"
    )


def _binary_input(
    tensor: dict[str, Any],
    i: int,
    size: Any,
    datatype: str | None,
    rows: int | None,
    binary: memoryview | None,
    offset: int,
) -> np.ndarray:
    """The values of input i, whose binary_data_size is `size`, from `binary` at `offset`."""
    if binary is None:
        raise _bad_size(f"binary_data_size needs the {HEADER_LENGTH} header", i)
    if type(size) is not int or size < 0:
        raise _bad_size("binary_data_size must be a number of bytes", i)
    if "data" in tensor:
        raise bad_input("an input has data or binary_data_size, not both", f"inputs[{i}].data")
    if datatype is None or rows is None:
        raise bad_input("a binary input needs its datatype and shape", f"inputs[{i}]")
    dtype = NUMBER_TYPES[datatype]
    if size != rows * dtype.itemsize:
        raise _bad_size(
            f"binary_data_size is {size} bytes; shape and {datatype} make {rows * dtype.itemsize}",
            i,
        )
    if offset + size > len(binary):
        raise _bad_size(
            f"binary_data_size runs past the end of the body: {len(binary)} bytes follow "
            f"the JSON header and the inputs before this one used {offset}",
            i,
        )
    values = np.frombuffer(binary, dtype, rows, offset)
    if datatype == "BF16":
        return (values.astype("<u4") << 16).view("<f4")
    return values


def _json_column(data: Any, i: int, rows: int | None) -> list[Any]:
    """The input's JSON values, checked (plain Python: a numpy call per input cost more than
    the whole JSON decode for the fraud example's 30 one-row inputs)."""
    if type(data) is not list:
        raise bad_input("each input needs a data list (or binary_data_size)", f"inputs[{i}]")
    flat = [v for sub in data for v in (sub if type(sub) is list else [sub])]
    for v in flat:
        # Not NaN, not infinite, nor beyond float32 (an int of any size compares exactly).
        if type(v) not in (int, float) or not -FLOAT32_MAX <= v <= FLOAT32_MAX:
            raise bad_input(
                "data must be finite numbers, within float32's range", f"inputs[{i}].data"
            )
    if rows is not None and len(flat) != rows:
        raise bad_input(f"data has {len(flat)} values; its shape says {rows}", f"inputs[{i}].data")
    return flat


def _check_floats(floats: dict[int, np.ndarray]) -> None:
    """Binary floats must be finite, and FP64 ones within float32's range: one check over all
    of them (numpy's per-call cost, not the values, is what a few rows pay)."""
    if np.isfinite(np.concatenate(list(floats.values()))).all() and all(
        (np.abs(v) <= FLOAT32_MAX).all() for v in floats.values() if v.itemsize > 4
    ):
        return
    for i, v in floats.items():
        if not (np.abs(v) <= FLOAT32_MAX).all():  # NaN fails the comparison too
            raise bad_input("data must be finite numbers, within float32's range", f"inputs[{i}]")


def _requested_outputs(payload: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, bool]]:
    requested = payload.get("outputs")
    if requested is None:
        return (), {}
    if not isinstance(requested, list):
        raise bad_input("outputs must be a list", "outputs")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for i, out in enumerate(requested):
        where = f"outputs[{i}]"
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise bad_input("each output needs a name", where)
        params = _parameters(out.get("parameters"), f"{where}.parameters")
        if "classification" in params:
            raise bad_input("the classification extension is not supported", f"{where}.parameters")
        names.append(out["name"])
        if "binary_data" in params:
            binary[out["name"]] = _flag(params, "binary_data", f"{where}.parameters")
    return tuple(names), binary
