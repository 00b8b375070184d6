"""Open Inference Protocol v2 bodies: every datatype round trips, in JSON and Triton's binary
form, byte-compatible with tritonclient's own encoder and decoder; bad bodies get a precise
`InvalidInput` that never quotes a value."""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from infaas.errors import InvalidInput
from infaas.protocol import (
    DTYPES,
    Body,
    check_inputs,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    parse_header_length,
    parse_request,
)
from infaas.types import TensorSpec

SPEC = TensorSpec(name="input", shape=(1, 8, 8), datatype="FP32")


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A tensor of `datatype` with values that exercise its range."""
    n = int(np.prod(shape))
    if datatype == "BYTES":
        arr = np.empty(n, dtype=np.object_)
        arr[:] = [f"é{i}".encode() * (i % 3) for i in range(n)]  # empty, non-ASCII, repeated
        return arr.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    dtype = DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 3, info.min // 2 if info.min else 7]
        return np.resize(np.array(values, dtype=dtype), shape)
    return (np.linspace(-3.5, 1e3, n).astype(np.float32)).astype(dtype).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    if a.dtype == np.object_:  # tritonclient reads BYTES sent as JSON back as str

        def raw(v: object) -> bytes:
            return v.encode() if isinstance(v, str) else bytes(v)  # type: ignore[call-overload]

        assert [raw(x) for x in a.ravel()] == [raw(x) for x in b.ravel()]
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))


@pytest.mark.parametrize("datatype", list(DTYPES))
@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(datatype: str, binary: bool) -> None:
    x = sample(datatype)
    body = encode_request({"t": x}, request_id="r1", binary=binary)
    assert (body.header_length is not None) is binary
    request, arrays = parse_request(body.content, body.header_length)
    assert request.id == "r1" and request.inputs[0].datatype == datatype
    same(arrays["t"], x)
    answer = encode_response({"y": x}, "task", request, model_version="v1")
    response, outputs = decode_response(answer.content, answer.header_length)
    assert (response.model_name, response.model_version, response.id) == ("task", "v1", "r1")
    same(outputs["y"], x)


@pytest.mark.parametrize("datatype", [d for d in DTYPES if d != "BF16"])
def test_tritonclient_bodies_decode_and_our_answers_decode_in_tritonclient(datatype: str) -> None:
    """Byte compatibility both ways with tritonclient's own encoder and `InferResult`."""
    x = sample(datatype, (2, 2))
    for binary in (True, False):
        t = InferInput("t", list(x.shape), datatype)
        t.set_data_from_numpy(x, binary_data=binary)
        outputs = [InferRequestedOutput("y", binary_data=binary)]
        content, header_length = _get_inference_request(
            [t], "rid", outputs, 0, False, False, 0, None, {"latency_ms": 20}
        )
        request, arrays = parse_request(content, header_length)
        assert request.parameters == {"latency_ms": 20}
        same(arrays["t"], x)
        answer = encode_response({"y": arrays["t"]}, "task", request)
        assert (answer.header_length is not None) is binary
        result = InferResult.from_response_body(answer.content, header_length=answer.header_length)
        same(result.as_numpy("y"), x)


def test_bf16_from_tritonclient() -> None:
    x = np.array([[1.5, -2.0], [3.0, 65280.0]], dtype=ml_dtypes.bfloat16)
    t = InferInput("t", [2, 2], "BF16")
    t.set_data_from_numpy(x)
    content, header_length = _get_inference_request([t], "", None, 0, False, False, 0, None, None)
    request, arrays = parse_request(content, header_length)
    assert request.parameters == {"binary_data_output": True}
    same(arrays["t"], x)
    answer = encode_response({"y": arrays["t"]}, "task", request)
    result = InferResult.from_response_body(answer.content, header_length=answer.header_length)
    same(result.as_numpy("y"), x)


def test_nested_data_equals_flat_data() -> None:
    nested = {"name": "t", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}
    flat = nested | {"data": [1, 2, 3, 4]}
    for tensor in (nested, flat):
        _, arrays = parse_request(json.dumps({"inputs": [tensor]}).encode())
        same(arrays["t"], np.array([[1, 2], [3, 4]], dtype=np.int32))


def test_outputs_and_parameters_choose_what_comes_back() -> None:
    y = {"logits": np.ones((1, 3), np.float32), "probs": np.full((1, 3), 0.5, np.float32)}
    body = {
        "inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [0.0]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probs", "parameters": {"binary_data": False}}, {"name": "logits"}],
    }
    request, _ = parse_request(json.dumps(body).encode())
    answer = encode_response(y, "task", request)
    response, outputs = decode_response(answer.content, answer.header_length)
    assert [o.name for o in response.outputs] == ["probs", "logits"]
    assert response.outputs[0].data == [0.5, 0.5, 0.5]  # JSON, as asked for this output
    assert response.outputs[1].parameters == {"binary_data_size": 12}  # binary by default
    same(outputs["logits"], y["logits"])
    with pytest.raises(InvalidInput, match="requested output 'nope' does not exist"):
        bad = body | {"outputs": [{"name": "nope"}]}
        decode_request(
            json.dumps(bad | {"inputs": [_digit()]}).encode(), SPEC, 8, outputs=("logits",)
        )


def _digit(**over: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64} | over


def test_several_inputs_are_refused_unless_the_task_declares_them() -> None:
    body = json.dumps({"inputs": [_digit(), _digit(name="mask")]}).encode()
    with pytest.raises(InvalidInput, match=r"task 'digits' declares one input, \['input'\]; "):
        decode_request(body, SPEC, 8, task="digits")
    # a task that declares both accepts them, and their batch sizes must agree
    mask = TensorSpec(name="mask", shape=(1, 8, 8), datatype="FP32")
    _, arrays = parse_request(body)
    assert check_inputs("pair", arrays, [SPEC, mask], 8) == 1
    arrays["mask"] = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(InvalidInput, match="disagree on the batch size"):
        check_inputs("pair", arrays, [SPEC, mask], 8)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.sampled_from(["FP32", "INT64", "UINT8", "FP16", "BOOL"]))
def test_round_trip_property(batch: int, datatype: str) -> None:
    x = sample(datatype, (batch, 1, 8, 8))
    spec = TensorSpec(name="input", shape=(1, 8, 8), datatype="FP32")
    spec = spec.model_copy(update={"datatype": datatype})
    for binary in (True, False):
        body = encode_request({"input": x}, binary=binary)
        _, got = decode_request(body.content, spec, 8, body.header_length)
        same(got, x)


def _json(inputs: list[dict[str, object]], **top: object) -> bytes:
    return json.dumps({"inputs": inputs, **top}).encode()


SECRET = 31337.25


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"inputs": []}', "inputs"),
        (_json([_digit(data=None)]), "neither data"),
        (_json([_digit(data=[1.0])]), "needs 64 values, got 1"),
        (_json([_digit(data=[[1.0] * 8] * 8)]), r"needs 64 values, got nested data of shape"),
        (_json([_digit(data=[[1.0], [1.0, 2.0]])]), "ragged"),
        (_json([_digit(shape=[1, 64])]), r"must have shape \[-1, 1, 8, 8\], got \[1, 64\]"),
        (_json([_digit(datatype="INT64", data=[0] * 64)]), "must be FP32, got INT64"),
        (_json([_digit(name="other")]), r"declares one input, \['input'\]; .*\['other'\]"),
        (_json([_digit(shape=[9, 1, 8, 8], data=[0] * 576)]), "outside 1..8"),
        (_json([_digit(datatype="STRING")]), "datatype must be one of BOOL, UINT8"),
        (_json([_digit(shape=[1, -1, 8, 8])]), "negative dimension"),
        (_json([_digit(), _digit()]), "appears twice"),
        (_json([_digit(data=["a"] * 64)]), "values that are not FP32"),
        (_json([_digit(datatype="INT8", data=[SECRET] * 64)]), "not INT8"),
        (_json([{"name": "b", "shape": [1], "datatype": "UINT8", "data": [300]}]), "out of range"),
        (_json([{"name": "b", "shape": [1], "datatype": "INT8", "data": [-129]}]), "out of range"),
        (_json([{"name": "b", "shape": [1], "datatype": "FP16", "data": [1e6]}]), "out of range"),
        (_json([{"name": "b", "shape": [1], "datatype": "BOOL", "data": [1]}]), "not BOOL"),
        (_json([_digit()], parameters={"p": [1]}), "parameters"),
        (_json([_digit()], extra=1), "extra"),
        (_json([_digit(parameters={"binary_data_size": -4}, data=None)]), "byte count"),
        (_json([_digit(parameters={"binary_data_size": 256})]), "both data and binary"),
    ],
)
def test_bad_bodies_are_named(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as e:
        decode_request(body, SPEC, max_batch=8, task="digits")
    assert str(SECRET) not in e.value.message and "31337" not in str(e.value.detail)


def test_binary_framing_errors() -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    content, n = encode_request({"input": x})
    assert n is not None
    cases: list[tuple[bytes, int | None, str]] = [
        (content[:-4], n, "binary data is truncated"),
        (content + b"xxxx", n, "4 bytes of binary data follow"),
        (content, len(content) + 1, "the body has"),
        (content, n - 1, "malformed JSON"),
        (content, None, "malformed JSON"),
        (content, 0, "malformed JSON"),
    ]
    for body, header_length, message in cases:
        with pytest.raises(InvalidInput, match=message):
            decode_request(body, SPEC, 8, header_length)


def test_binary_bytes_and_bool_are_checked() -> None:
    head = {"name": "s", "shape": [2], "datatype": "BYTES"}

    def body(raw: bytes) -> Body:
        header = json.dumps({"inputs": [head | {"parameters": {"binary_data_size": len(raw)}}]})
        return Body(header.encode() + raw, len(header))

    good = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    _, arrays = parse_request(*body(good))
    assert list(arrays["s"]) == [b"ab", b""]
    for raw, message in [
        (good[:-2], "length is truncated"),
        (struct.pack("<I", 9) + b"ab", "runs past its data"),
        (good + struct.pack("<I", 0), "needs 2 BYTES elements, the binary data holds 3"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_request(*body(raw))
    head = {"name": "b", "shape": [2], "datatype": "BOOL"}
    with pytest.raises(InvalidInput, match="BOOL bytes must be 0 or 1"):
        parse_request(*body(b"\x01\x02"))


def test_header_length_header() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length(b"42") == 42
    for bad in ("-1", "4x", "", "1e3"):
        with pytest.raises(InvalidInput, match="decimal byte count"):
            parse_header_length(bad)


def test_the_header_length_is_authenticated() -> None:
    """The host cannot re-split a sealed body: the header length is associated data."""
    from infaas.envelope import new_key, open_request, seal_request
    from infaas.errors import DecryptionFailed

    key = {"k": new_key()}
    content, n = encode_request({"input": np.zeros((1, 1, 8, 8), np.float32)})
    env = seal_request(
        key, content, tenant="t", task="digits", latency_ms=50, min_accuracy=0.0,
        request_id="r", header_length=n,
    )  # fmt: skip
    assert bytes(open_request(env, key)) == content
    assert n is not None
    for forged in (n + 1, n - 1, None):
        with pytest.raises(DecryptionFailed):
            open_request(env.model_copy(update={"header_length": forged}), key)
