"""Open Inference Protocol v2 tensors: round trips and precise errors for bad bodies."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.errors import InvalidInput
from infaas.protocol import (
    BINARY_MAGIC,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from infaas.types import TensorSpec

SPEC = TensorSpec(name="input", shape=(1, 8, 8), datatype="FP32")


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary: bool) -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    body = encode_request({"input": x}, request_id="r1", binary=binary)
    assert body.startswith(BINARY_MAGIC) is binary
    req, got = decode_request(body, SPEC, max_batch=8)
    assert req.id == "r1"
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary: bool) -> None:
    y = np.arange(20, dtype=np.float32).reshape(2, 10)
    resp, outs = decode_response(encode_response({"logits": y}, "m.int8", "r1", binary))
    assert resp.model_name == "m.int8"
    np.testing.assert_array_equal(outs["logits"], y)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.sampled_from([np.float32, np.int64, np.uint8]))
def test_round_trip_property(batch: int, dtype: type) -> None:
    x = (np.arange(batch * 64) % 7).astype(dtype).reshape(batch, 1, 8, 8)
    datatype = {np.float32: "FP32", np.int64: "INT64", np.uint8: "UINT8"}[dtype]
    spec = TensorSpec(name="input", shape=(1, 8, 8), datatype=datatype)  # type: ignore[arg-type]
    for binary in (True, False):
        _, got = decode_request(encode_request({"input": x}, binary=binary), spec, 8)
        np.testing.assert_array_equal(got, x)


def _json(inputs: list[dict[str, object]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"inputs": []}', "inputs"),
        (_json([{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]), "neither data"),
        (
            _json([{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1.0]}]),
            "needs 64 values, got 1",
        ),
        (
            _json([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]),
            r"must have shape \[batch, 1, 8, 8\], got \[1, 64\]",
        ),
        (
            _json(
                [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "INT64", "data": [0] * 64}]
            ),
            "must be FP32, got INT64",
        ),
        (
            _json([{"name": "other", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0] * 64}]),
            "expected an input named 'input'",
        ),
        (
            _json(
                [{"name": "input", "shape": [9, 1, 8, 8], "datatype": "FP32", "data": [0] * 576}]
            ),
            "outside 1..8",
        ),
        (
            _json([{"name": "input", "shape": [1, 1, 8, 8], "datatype": "STRING", "data": []}]),
            "datatype",
        ),
        (BINARY_MAGIC + b"\x00", "truncated"),
        (BINARY_MAGIC + struct.pack(">I", 999) + b"{}", "claims 999 bytes"),
    ],
)
def test_bad_bodies_are_named(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, SPEC, max_batch=8)


def test_binary_size_mismatch_and_trailing_bytes() -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    body = encode_request({"input": x})
    with pytest.raises(InvalidInput, match="truncated"):
        decode_request(body[:-4], SPEC, 8)
    with pytest.raises(InvalidInput, match="bytes of binary data follow"):
        decode_request(body + b"xxxx", SPEC, 8)
