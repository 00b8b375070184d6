"""Open Inference Protocol (KServe v2) tensors: the plaintext inside a request envelope.

JSON form (what `encode_request(..., binary=False)` writes)::

    {
      "id": "req-42",
      "inputs": [
        {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": [0.0, ...]}
      ],
      "outputs": [{"name": "logits"}]
    }

Binary form, for large tensors (Triton's binary-data extension, framed for an
envelope that has no HTTP headers)::

    b"OIPv2BIN" | uint32 big-endian length N | N bytes of JSON header | tensor bytes

where each input of the JSON header carries ``"parameters": {"binary_data_size": B}``
instead of ``"data"``, and the tensor bytes follow in input order, little-endian,
row-major. Responses use the same two forms with ``outputs``.

Decoding validates everything before a tensor reaches a runtime: framing, JSON,
datatype, shape against the task's per-sample shape, element count against the
data, batch size against the limit. Each problem is an `InvalidInput` that says
what was expected and what came.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infaas.errors import InvalidInput
from infaas.types import TensorSpec

BINARY_MAGIC = b"OIPv2BIN"

_M = TypeVar("_M", bound=BaseModel)

Datatype = Literal["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64"]

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_OF = {v: k for k, v in DTYPES.items()}


class TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(None, ge=0)


class Tensor(BaseModel):
    """One named tensor: ``{"name", "shape", "datatype", "data" | parameters.binary_data_size}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: Datatype
    data: list[Any] | None = None
    parameters: TensorParameters | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class InferenceRequest(BaseModel):
    """``{"id", "inputs": [Tensor], "outputs": [{"name"}]}`` (KServe v2 inference request)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=16)
    outputs: list[RequestedOutput] | None = None


class InferenceResponse(BaseModel):
    """``{"model_name", "id", "outputs": [Tensor]}`` (KServe v2 inference response)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Tensor]


def _datatype_of(arr: np.ndarray) -> str:
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    try:
        return _DATATYPE_OF[np.dtype(dt)]
    except KeyError:
        raise InvalidInput(f"unsupported tensor dtype {arr.dtype}") from None


def _tensors(arrays: dict[str, np.ndarray], binary: bool) -> tuple[list[Tensor], list[bytes]]:
    tensors: list[Tensor] = []
    blobs: list[bytes] = []
    for name, arr in arrays.items():
        datatype = _datatype_of(arr)
        contiguous = np.ascontiguousarray(arr, dtype=DTYPES[datatype])
        if binary:
            raw = contiguous.tobytes()
            blobs.append(raw)
            tensors.append(
                Tensor(
                    name=name,
                    shape=list(arr.shape),
                    datatype=datatype,
                    parameters=TensorParameters(binary_data_size=len(raw)),
                )
            )
        else:
            tensors.append(
                Tensor(
                    name=name,
                    shape=list(arr.shape),
                    datatype=datatype,
                    data=contiguous.ravel().tolist(),
                )
            )
    return tensors, blobs


def _frame(header: BaseModel, blobs: list[bytes], binary: bool) -> bytes:
    head = header.model_dump_json(exclude_none=True).encode()
    if not binary:
        return head
    return b"".join([BINARY_MAGIC, struct.pack(">I", len(head)), head, *blobs])


def encode_request(
    inputs: dict[str, np.ndarray], request_id: str | None = None, binary: bool = True
) -> bytes:
    """Serialise named numpy inputs as an Open Inference Protocol v2 request."""
    tensors, blobs = _tensors(inputs, binary)
    return _frame(InferenceRequest(id=request_id, inputs=tensors), blobs, binary)


def encode_response(
    outputs: dict[str, np.ndarray], model_name: str, request_id: str | None, binary: bool
) -> bytes:
    """Serialise named numpy outputs as an Open Inference Protocol v2 response."""
    tensors, blobs = _tensors(outputs, binary)
    body = InferenceResponse(model_name=model_name, id=request_id, outputs=tensors)
    return _frame(body, blobs, binary)


def _unframe(body: bytes | bytearray) -> tuple[bytes | bytearray, memoryview, bool]:
    if body[: len(BINARY_MAGIC)] == BINARY_MAGIC:
        if len(body) < len(BINARY_MAGIC) + 4:
            raise InvalidInput("binary tensor body is truncated before its header length")
        (n,) = struct.unpack_from(">I", body, len(BINARY_MAGIC))
        start = len(BINARY_MAGIC) + 4
        if start + n > len(body):
            raise InvalidInput(f"binary tensor header claims {n} bytes, body has {len(body)}")
        return body[start : start + n], memoryview(body)[start + n :], True
    return body, memoryview(b""), False


def _parse(cls: type[_M], head: bytes | bytearray) -> _M:
    try:
        return cls.model_validate_json(head)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise InvalidInput(f"malformed JSON in inference body: {first['msg']}") from None
        raise InvalidInput(f"invalid inference body at {where}: {first['msg']}") from None


def _arrays(tensors: list[Tensor], rest: memoryview, binary: bool) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in tensors:
        if any(d < 0 for d in t.shape):
            raise InvalidInput(f"tensor {t.name!r} has a negative dimension in {t.shape}")
        dtype = DTYPES[t.datatype]
        count = math.prod(t.shape)
        size = t.parameters.binary_data_size if t.parameters else None
        if size is not None:
            if not binary:
                raise InvalidInput(f"tensor {t.name!r} names binary data but the body is JSON")
            if size != count * dtype.itemsize:
                raise InvalidInput(
                    f"tensor {t.name!r}: shape {t.shape} of {t.datatype} needs "
                    f"{count * dtype.itemsize} bytes, binary_data_size says {size}"
                )
            if offset + size > len(rest):
                raise InvalidInput(f"tensor {t.name!r}: binary data is truncated")
            arr = np.frombuffer(rest[offset : offset + size], dtype=dtype).reshape(t.shape)
            offset += size
        elif t.data is not None:
            if len(t.data) != count:
                raise InvalidInput(
                    f"tensor {t.name!r}: shape {t.shape} needs {count} values, got {len(t.data)}"
                )
            try:
                arr = np.asarray(t.data, dtype=dtype).reshape(t.shape)
            except (ValueError, TypeError) as e:
                raise InvalidInput(f"tensor {t.name!r}: data is not {t.datatype}: {e}") from None
        else:
            raise InvalidInput(f"tensor {t.name!r} has neither data nor binary_data_size")
        if t.name in out:
            raise InvalidInput(f"tensor {t.name!r} appears twice")
        out[t.name] = arr
    if binary and offset != len(rest):
        raise InvalidInput(f"{len(rest) - offset} bytes of binary data follow the last tensor")
    return out


def decode_request(
    body: bytes | bytearray, spec: TensorSpec, max_batch: int
) -> tuple[InferenceRequest, np.ndarray]:
    """Parse a request and return its one input as a batch shaped ``(n, *spec.shape)``."""
    head, rest, binary = _unframe(body)
    request = _parse(InferenceRequest, head)
    arrays = _arrays(request.inputs, rest, binary)
    if spec.name not in arrays:
        raise InvalidInput(f"expected an input named {spec.name!r}, got {sorted(arrays)}")
    if len(arrays) != 1:
        raise InvalidInput(f"expected exactly one input ({spec.name!r}), got {sorted(arrays)}")
    arr = arrays[spec.name]
    want = DTYPES[spec.datatype]
    if arr.dtype != want:
        raise InvalidInput(f"input {spec.name!r} must be {spec.datatype}, got {_datatype_of(arr)}")
    if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != spec.shape:
        raise InvalidInput(
            f"input {spec.name!r} must have shape [batch, {', '.join(map(str, spec.shape))}], "
            f"got {list(arr.shape)}"
        )
    if not 1 <= arr.shape[0] <= max_batch:
        raise InvalidInput(f"batch of {arr.shape[0]} is outside 1..{max_batch}")
    return request, arr


def decode_response(body: bytes | bytearray) -> tuple[InferenceResponse, dict[str, np.ndarray]]:
    """Parse a response into its metadata and named numpy outputs."""
    head, rest, binary = _unframe(body)
    response = _parse(InferenceResponse, head)
    return response, _arrays(response.outputs, rest, binary)
