"""The v2 wire format (rtml_runtime.v2codec): JSON and binary tensor data, in and out.

Binary bodies are built by hand here, byte for byte as the extension lays them out; the tests
against the real KServe and Triton clients and a running runtime are in
tests/integration/test_v2_clients.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from rtml_runtime.errors import RequestError
from rtml_runtime.v2codec import HEADER_LENGTH, InferRequest, decode_request, encode_response
from tests.unit.runtime.test_engine import make_runtime, sigmoid

pytestmark = pytest.mark.unit
A = [0.5, -1.25, 3.0]
B = [1.0, 2.0, -0.75]


def binary_body(
    inputs: list[tuple[str, str, list[int], np.ndarray]], **extra: Any
) -> tuple[bytes, bytes]:
    """(body, Inference-Header-Content-Length) for binary inputs (name, datatype, shape, values
    already in their little-endian dtype), with `extra` top-level request fields."""
    header = {
        "inputs": [
            {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": v.nbytes}}
            for n, t, s, v in inputs
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(v.tobytes() for *_, v in inputs), str(len(head)).encode()


def json_request(**extra: Any) -> InferRequest:
    payload = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [3, 1], "data": A},
            {"name": "b", "datatype": "FP32", "shape": [3], "data": [[v] for v in B]},
        ],
        **extra,
    }
    return decode_request(json.dumps(payload).encode())


def columns(request: InferRequest) -> dict[str, list[float]]:
    """The inputs as the engine reads them (binary: float32 arrays; JSON: lists of numbers)."""
    for column in request.inputs.values():
        assert isinstance(column, list) or column.ndim == 1
    return {k: np.asarray(v, dtype=np.float32).tolist() for k, v in request.inputs.items()}


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("FP32", "<f4"),
        ("FP64", "<f8"),
        ("FP16", "<f2"),
        ("INT64", "<i8"),
        ("INT8", "<i1"),
        ("UINT16", "<u2"),
    ],
)
def test_binary_inputs_decode_to_the_same_columns_as_json(datatype: str, dtype: str) -> None:
    ints = datatype.startswith(("INT", "UINT"))
    a = [1, 7, 0] if ints else A
    b = [2, 0, 3] if ints else B
    body, length = binary_body(
        [
            ("a", datatype, [3, 1], np.array(a, dtype=dtype).reshape(3, 1)),
            ("b", datatype, [3], np.array(b, dtype=dtype)),
        ],
        id="r1",
    )
    got = decode_request(body, length)
    want = decode_request(
        json.dumps(
            {"id": "r1", "inputs": [{"name": "a", "data": a}, {"name": "b", "data": b}]}
        ).encode()
    )
    assert columns(got) == columns(want) == {"a": pytest.approx(a), "b": pytest.approx(b)}
    assert got.id == "r1"


def test_bf16_is_the_top_half_of_a_float32() -> None:
    values = np.array([1.5, -2.0, 0.15625], dtype="<f4")
    bf16 = (values.view("<u4") >> 16).astype("<u2")
    body, length = binary_body([("a", "BF16", [3], bf16)])
    assert columns(decode_request(body, length)) == {"a": [1.5, -2.0, 0.15625]}


def test_json_and_binary_inputs_mix_in_one_request() -> None:
    head = json.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [3], "data": A},
                {
                    "name": "b",
                    "datatype": "FP64",
                    "shape": [3, 1],
                    "parameters": {"binary_data_size": 24},
                },
            ]
        }
    ).encode()
    body = head + np.array(B, dtype="<f8").tobytes()
    assert columns(decode_request(body, str(len(head)).encode())) == {
        "a": pytest.approx(A),
        "b": pytest.approx(B),
    }


def test_zero_rows_decode_and_are_left_to_the_engine() -> None:
    body, length = binary_body([("a", "FP64", [0], np.array([], "<f8"))])
    assert columns(decode_request(body, length)) == {"a": []}


def test_a_header_length_equal_to_the_body_is_plain_json() -> None:
    body = json.dumps({"inputs": [{"name": "a", "data": A}]}).encode()
    assert columns(decode_request(body, str(len(body)).encode())) == {"a": pytest.approx(A)}


RESULT = {
    "model_name": "fraud",
    "model_version": "v1",
    "id": "r1",
    "parameters": {"variant": "champion"},
    "outputs": [{"name": "score", "shape": [3], "datatype": "FP64", "data": [0.25, 0.5, 1.0]}],
}


def split(body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], bytes]:
    """A binary response's JSON header and the bytes after it, checked against its headers."""
    h = dict(headers)
    assert h[b"content-type"] == b"application/octet-stream"
    n = int(h[HEADER_LENGTH.lower().encode()])
    return json.loads(body[:n]), body[n:]


def test_binary_data_output_sends_every_output_in_binary() -> None:
    body, headers = encode_response(RESULT, json_request(parameters={"binary_data_output": True}))
    head, raw = split(body, headers)
    (out,) = head["outputs"]
    assert "data" not in out
    assert out["parameters"] == {"binary_data_size": 24}
    assert (out["name"], out["shape"], out["datatype"]) == ("score", [3], "FP64")
    assert np.frombuffer(raw, "<f8").tolist() == [0.25, 0.5, 1.0]
    assert (head["model_name"], head["id"], head["parameters"]) == (
        "fraud",
        "r1",
        RESULT["parameters"],
    )


@pytest.mark.parametrize(
    ("extra", "binary"),
    [
        ({}, False),
        ({"outputs": [{"name": "score", "parameters": {"binary_data": True}}]}, True),
        ({"outputs": [{"name": "score"}], "parameters": {"binary_data_output": True}}, True),
        # An output's own setting wins over the request's.
        (
            {
                "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
                "parameters": {"binary_data_output": True},
            },
            False,
        ),
    ],
)
def test_which_outputs_go_in_binary(extra: dict[str, Any], binary: bool) -> None:
    body, headers = encode_response(RESULT, json_request(**extra))
    if binary:
        head, raw = split(body, headers)
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 24}
        assert np.frombuffer(raw, "<f8").tolist() == [0.25, 0.5, 1.0]
    else:
        assert headers == [(b"content-type", b"application/json")]
        assert json.loads(body) == RESULT


def test_tritons_own_parser_reads_a_binary_response() -> None:
    body, headers = encode_response(RESULT, json_request(parameters={"binary_data_output": True}))
    result = triton.InferResult.from_response_body(
        body, header_length=int(dict(headers)[HEADER_LENGTH.lower().encode()])
    )
    assert result.as_numpy("score").tolist() == [0.25, 0.5, 1.0]
    assert result.get_response()["parameters"] == {"variant": "champion"}


def test_a_binary_request_and_response_through_the_engine(tmp_path: Path) -> None:
    """The engine scores what the codec decoded: binary in, binary out, as JSON in and out."""
    rt, _ = make_runtime(tmp_path)
    rows = np.array([[1, 0, 2], [0, 0, 0]], dtype="<f4")  # a, b, amount
    body, length = binary_body(
        [
            (n, "FP32", [2, 1], rows[:, i : i + 1].copy())
            for i, n in enumerate(["a", "b", "amount"])
        ],
        parameters={"binary_data_output": True},
    )
    request = decode_request(body, length)
    head, raw = split(*encode_response(asyncio.run(rt.infer_v2("fraud", request)), request))
    as_json = json.dumps(
        {
            "inputs": [
                {"name": n, "data": rows[:, i].tolist()} for i, n in enumerate(["a", "b", "amount"])
            ]
        }
    ).encode()
    plain = asyncio.run(rt.infer_v2("fraud", decode_request(as_json)))
    assert np.frombuffer(raw, "<f8").tolist() == plain["outputs"][0]["data"]
    assert plain["outputs"][0]["data"] == pytest.approx([sigmoid(3), sigmoid(0)], rel=1e-6)
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 16}


def test_an_output_the_model_does_not_have_is_a_400(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    request = decode_request(
        json.dumps(
            {
                "inputs": [{"name": n, "data": [1.0]} for n in ("a", "b", "amount")],
                "outputs": [{"name": "score"}, {"name": "probabilities"}],
            }
        ).encode()
    )
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.infer_v2("fraud", request))
    assert (err.value.status, err.value.field) == (400, "outputs[1].name")


F32 = np.array(A, dtype="<f4")
GOOD, GOOD_LENGTH = binary_body([("a", "FP32", [3], F32)])


def with_header(header: dict[str, Any], tail: bytes = F32.tobytes()) -> tuple[bytes, bytes]:
    head = json.dumps(header).encode()
    return head + tail, str(len(head)).encode()


def one_input(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "a", **tensor}]}


BINARY = {"datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 12}}
BAD: list[tuple[str, bytes, bytes | None, str | None]] = [
    ("header length larger than the body", GOOD, str(len(GOOD) + 1).encode(), HEADER_LENGTH),
    ("header length not a number", GOOD, b"12abc", HEADER_LENGTH),
    ("header length negative", GOOD, b"-5", HEADER_LENGTH),
    ("header length cuts the JSON", GOOD, b"10", None),
    ("bytes left over after the inputs", GOOD + b"\0\0\0\0", GOOD_LENGTH, HEADER_LENGTH),
    (
        "binary_data_size past the end",
        *with_header({"inputs": [{"name": "a", **BINARY}, {"name": "b", **BINARY}]}, F32.tobytes()),
        "inputs[1].parameters.binary_data_size",
    ),
    (
        "binary_data_size against shape and datatype",
        *with_header(one_input(**{**BINARY, "datatype": "FP64"})),
        "inputs[0].parameters.binary_data_size",
    ),
    (
        "binary_data_size not a number",
        *with_header(one_input(**{**BINARY, "parameters": {"binary_data_size": "12"}})),
        "inputs[0].parameters.binary_data_size",
    ),
    (
        "binary_data_size negative",
        *with_header(one_input(**{**BINARY, "parameters": {"binary_data_size": -12}})),
        "inputs[0].parameters.binary_data_size",
    ),
    (
        "binary_data_size a boolean",
        *with_header(one_input(**{**BINARY, "parameters": {"binary_data_size": True}})),
        "inputs[0].parameters.binary_data_size",
    ),
    (
        "binary_data_size without the header",
        json.dumps(one_input(**BINARY)).encode(),
        None,
        "inputs[0].parameters.binary_data_size",
    ),
    ("binary and data", *with_header(one_input(**BINARY, data=A)), "inputs[0].data"),
    (
        "unknown datatype, binary",
        *with_header(one_input(**{**BINARY, "datatype": "FP128"})),
        "inputs[0].datatype",
    ),
    (
        "unknown datatype, JSON",
        json.dumps(one_input(datatype="FLOAT", data=A)).encode(),
        None,
        "inputs[0].datatype",
    ),
    (
        "datatype not a string",
        json.dumps(one_input(datatype=["FP32"], data=A)).encode(),
        None,
        "inputs[0].datatype",
    ),
    (
        "BYTES",
        *with_header(one_input(**{**BINARY, "datatype": "BYTES"})),
        "inputs[0].datatype",
    ),
    (
        "BOOL",
        json.dumps(one_input(datatype="BOOL", data=[True])).encode(),
        None,
        "inputs[0].datatype",
    ),
    (
        "binary without a shape",
        *with_header(one_input(datatype="FP32", parameters={"binary_data_size": 12})),
        "inputs[0]",
    ),
    (
        "shape of a matrix",
        *with_header(one_input(**{**BINARY, "shape": [1, 3]})),
        "inputs[0].shape",
    ),
    ("shape not sizes", *with_header(one_input(**{**BINARY, "shape": ["3"]})), "inputs[0].shape"),
    (
        "NaN in binary data",
        *with_header(one_input(**BINARY), np.array([1, np.nan, 2], "<f4").tobytes()),
        "inputs[0]",
    ),
    (
        "FP64 beyond float32",
        *with_header(
            one_input(**{**BINARY, "datatype": "FP64", "parameters": {"binary_data_size": 24}}),
            np.array([1, 1e300, 2], "<f8").tobytes(),
        ),
        "inputs[0]",
    ),
    (
        "JSON data against its shape",
        json.dumps(one_input(shape=[2, 1], data=A)).encode(),
        None,
        "inputs[0].data",
    ),
    (
        "JSON integer beyond any float",
        b'{"inputs": [{"name": "a", "data": [1' + b"0" * 400 + b"]}]}",
        None,
        "inputs[0].data",
    ),
    (
        "JSON number beyond any float",
        b'{"inputs": [{"name": "a", "data": [1e400]}]}',
        None,
        "inputs[0].data",
    ),
    (
        "JSON number beyond float32",
        b'{"inputs": [{"name": "a", "data": [1e39]}]}',
        None,
        "inputs[0].data",
    ),
    (
        "JSON boolean",
        json.dumps(one_input(data=[1.0, True])).encode(),
        None,
        "inputs[0].data",
    ),
    (
        "duplicate input",
        json.dumps({"inputs": [{"name": "a", "data": A}, {"name": "a", "data": B}]}).encode(),
        None,
        "inputs[1].name",
    ),
    ("input without a name", json.dumps({"inputs": [{"data": A}]}).encode(), None, "inputs[0]"),
    (
        "parameters not an object",
        json.dumps({**one_input(data=A), "parameters": [1]}).encode(),
        None,
        "parameters",
    ),
    (
        "binary_data_output not a boolean",
        json.dumps({**one_input(data=A), "parameters": {"binary_data_output": "yes"}}).encode(),
        None,
        "parameters.binary_data_output",
    ),
    (
        "outputs not a list",
        json.dumps({**one_input(data=A), "outputs": "score"}).encode(),
        None,
        "outputs",
    ),
    (
        "binary_data not a boolean",
        json.dumps(
            {**one_input(data=A), "outputs": [{"name": "score", "parameters": {"binary_data": 1}}]}
        ).encode(),
        None,
        "outputs[0].parameters.binary_data",
    ),
    (
        "classification asked for",
        json.dumps(
            {
                **one_input(data=A),
                "outputs": [{"name": "score", "parameters": {"classification": 2}}],
            }
        ).encode(),
        None,
        "outputs[0].parameters",
    ),
    ("header not UTF-8", b"\xff\x80{}" + F32.tobytes(), b"4", None),
]


@pytest.mark.parametrize(("case", "body", "length", "field"), BAD, ids=[c[0] for c in BAD])
def test_bad_requests_are_a_400_naming_the_field(
    case: str, body: bytes, length: bytes | None, field: str | None
) -> None:
    with pytest.raises(RequestError) as err:
        decode_request(body, length)
    assert err.value.status == 400, case
    assert err.value.code == "invalid_input"
    assert err.value.field == field
    assert err.value.message
    assert set(err.value.body()["error"]) == {"code", "message", "field"}


def test_a_compressed_body_is_refused_by_name() -> None:
    with pytest.raises(RequestError) as err:
        decode_request(GOOD, GOOD_LENGTH, b"gzip")
    assert (err.value.status, err.value.field) == (415, "Content-Encoding")
    assert columns(decode_request(GOOD, GOOD_LENGTH, b"identity")) == {"a": pytest.approx(A)}


def test_any_header_length_or_corrupted_byte_is_a_400_or_a_request() -> None:
    """Never another exception (a 500): every header length, and random bytes changed."""
    body, length = binary_body(
        [("a", "FP32", [3], F32), ("b", "INT64", [3, 1], np.array([[1], [2], [3]], "<i8"))],
        outputs=[{"name": "score", "parameters": {"binary_data": True}}],
    )
    outcomes: Counter[str] = Counter()
    for n in range(len(body) + 3):
        outcomes[_decode_outcome(body, str(n).encode())] += 1
    rng = np.random.default_rng(7)
    for _ in range(2000):
        corrupt = bytearray(body)
        for at in rng.integers(0, int(length), size=rng.integers(1, 4)):
            corrupt[at] = int(rng.integers(0, 256))
        outcomes[_decode_outcome(bytes(corrupt), length)] += 1
    assert set(outcomes) == {"ok", "400"}
    assert outcomes["ok"] > 1  # the right length, and corruptions that leave valid JSON
    assert outcomes["400"] > len(body)


def _decode_outcome(body: bytes, length: bytes) -> str:
    try:
        decode_request(body, length)
    except RequestError as e:
        return str(e.status)
    return "ok"
