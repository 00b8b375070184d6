"""Open Inference Protocol v2 (KServe v2 / Triton) bodies: the plaintext inside an envelope.

A request body is exactly what a Triton or KServe client sends to
``POST /v2/models/{name}/infer``. JSON only::

    {
      "id": "req-42",
      "parameters": {"binary_data_output": true},
      "inputs": [
        {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [[0.0, ...], [...]]}
      ],
      "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
    }

or, with Triton's binary-data extension, that JSON header followed by the raw
tensors, its length given separately (HTTP's ``Inference-Header-Content-Length``;
inside infaas the envelope's authenticated ``header_length``)::

    {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                 "parameters": {"binary_data_size": 512}}]}<512 bytes, little-endian, row-major>

`data` is row-major, flat or nested as the shape. Every datatype of the
protocol is accepted (BOOL, UINT8-64, INT8-64, FP16/32/64, BYTES) plus BF16
(``ml_dtypes.bfloat16``, binary only in Triton's clients). BYTES elements are
UTF-8 strings in JSON and 4-byte little-endian length-prefixed in binary.
Responses use the same two forms with ``outputs``; an output is binary when
the request asks (``outputs[].parameters.binary_data``, else the request's
``parameters.binary_data_output``).

Decoding validates everything before a tensor reaches a runtime: JSON,
datatype, shape, element types and ranges, sizes, the task's declared inputs,
batch size. Each problem is an `InvalidInput` that says what was expected and
what came, and never quotes a tensor's values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import ml_dtypes
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from infaas.errors import InvalidInput, invalid_at
from infaas.types import TensorSpec

_M = TypeVar("_M", bound=BaseModel)

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}
_DATATYPE_OF = {v: k for k, v in DTYPES.items()}

# the element kinds `np.asarray` gives JSON values that each datatype accepts
_JSON_KINDS: dict[str, tuple[str, ...]] = {"BOOL": ("b",), "BYTES": ("U",)}
for _dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"):
    _JSON_KINDS[_dt] = ("i", "u")
for _dt in ("FP16", "FP32", "FP64", "BF16"):
    _JSON_KINDS[_dt] = ("i", "u", "f")

MAX_DIMS = 8
MAX_TENSORS = 16

Parameter = StrictBool | int | float | str
"""A parameter value: the protocol allows booleans, numbers and strings."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tensor(_Body):
    """One named tensor: ``{"name", "shape", "datatype", "parameters"?, "data"?}``."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=MAX_DIMS)
    datatype: Datatype
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None

    def binary_size(self) -> int | None:
        """``parameters.binary_data_size``, checked to be a byte count."""
        size = (self.parameters or {}).get("binary_data_size")
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"tensor {self.name!r}: binary_data_size must be a byte count")
        return size


class RequestedOutput(_Body):
    """``{"name", "parameters"?: {"binary_data": true}}``."""

    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Parameter] | None = None


class InferenceRequest(_Body):
    """``{"id"?, "parameters"?, "inputs": [Tensor], "outputs"?: [RequestedOutput]}``."""

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Parameter] | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestedOutput] | None = Field(None, max_length=MAX_TENSORS)


class InferenceResponse(_Body):
    """``{"model_name", "model_version"?, "id"?, "parameters"?, "outputs": [Tensor]}``."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    outputs: list[Tensor]


class Body(NamedTuple):
    """An encoded body and its ``Inference-Header-Content-Length`` (None: all JSON)."""

    content: bytes
    header_length: int | None


# --- encoding ---------------------------------------------------------------------------


def datatype_of(arr: np.ndarray) -> str:
    """The protocol datatype of a numpy array (BYTES for object and bytes arrays)."""
    if arr.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    try:
        return _DATATYPE_OF[np.dtype(dt)]
    except KeyError:
        raise InvalidInput(f"no Open Inference Protocol datatype for numpy {arr.dtype}") from None


def _bytes_elements(arr: np.ndarray) -> list[bytes]:
    out = []
    for v in arr.ravel(order="C"):
        if isinstance(v, str):
            v = v.encode()
        if not isinstance(v, bytes | np.bytes_):
            raise InvalidInput("a BYTES tensor holds bytes or str elements")
        out.append(bytes(v))
    return out


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in _bytes_elements(arr))
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()


def _json_data(arr: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        try:
            return [b.decode() for b in _bytes_elements(arr)]
        except UnicodeDecodeError:
            raise InvalidInput("a BYTES element that is not UTF-8 needs binary data") from None
    if datatype == "BF16":
        return arr.astype(np.float32).ravel().tolist()
    flat: list[Any] = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).ravel().tolist()
    return flat


def _tensor(name: str, arr: np.ndarray, binary: bool, blobs: list[bytes]) -> Tensor:
    datatype = datatype_of(arr)
    if binary:
        raw = _raw(arr, datatype)
        blobs.append(raw)
        return Tensor(
            name=name,
            shape=list(arr.shape),
            datatype=datatype,
            parameters={"binary_data_size": len(raw)},
        )
    return Tensor(
        name=name,
        shape=list(arr.shape),
        datatype=datatype,
        data=_json_data(arr, datatype),
    )


def _frame(header: BaseModel, blobs: list[bytes]) -> Body:
    head = header.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Body(head, None)
    return Body(b"".join([head, *blobs]), len(head))


def encode_request(
    inputs: Mapping[str, np.ndarray],
    request_id: str | None = None,
    binary: bool = True,
    *,
    outputs: Sequence[str] | None = None,
    parameters: Mapping[str, Parameter] | None = None,
) -> Body:
    """Named numpy inputs as a request; with `binary`, tensors and answers in binary."""
    blobs: list[bytes] = []
    tensors = [_tensor(n, np.asarray(a), binary, blobs) for n, a in inputs.items()]
    params = dict(parameters or {})
    if binary and not outputs:
        params["binary_data_output"] = True
    requested = (
        [
            RequestedOutput(name=o, parameters={"binary_data": True} if binary else None)
            for o in outputs
        ]
        if outputs
        else None
    )
    body = InferenceRequest(
        id=request_id, parameters=params or None, inputs=tensors, outputs=requested
    )
    return _frame(body, blobs)


def wants_binary(request: InferenceRequest | None, name: str) -> bool:
    """Whether output `name` goes back as binary data (the request's choice; default JSON)."""
    if request is None:
        return False
    for o in request.outputs or ():
        if o.name == name and o.parameters and "binary_data" in o.parameters:
            return bool(o.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def select_outputs(request: InferenceRequest, available: Sequence[str]) -> list[str]:
    """The outputs a request asks for, in its order (all when it names none)."""
    if not request.outputs:
        return list(available)
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInput(
            f"requested output {unknown[0]!r} does not exist; this model has {list(available)}"
        )
    if len(set(names)) != len(names):
        raise InvalidInput("an output is requested twice")
    return names


def encode_response(
    outputs: Mapping[str, np.ndarray],
    model_name: str,
    request: InferenceRequest | None = None,
    *,
    model_version: str | None = None,
    binary: bool | None = None,
) -> Body:
    """Named numpy outputs as a response to `request` (its outputs, in binary where asked).

    `binary` forces every output to one form (None: what the request asks).
    """
    names = select_outputs(request, list(outputs)) if request is not None else list(outputs)
    blobs: list[bytes] = []
    tensors = [
        _tensor(
            n,
            np.asarray(outputs[n]),
            wants_binary(request, n) if binary is None else binary,
            blobs,
        )
        for n in names
    ]
    body = InferenceResponse(
        model_name=model_name,
        model_version=model_version,
        id=request.id if request is not None else None,
        outputs=tensors,
    )
    return _frame(body, blobs)


# --- decoding ---------------------------------------------------------------------------


def split_body(body: bytes | bytearray, header_length: int | None) -> tuple[memoryview, memoryview]:
    """(JSON header, binary data) of a body whose header is `header_length` bytes long."""
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    if isinstance(header_length, bool) or header_length < 0:
        raise InvalidInput("Inference-Header-Content-Length must be a byte count")
    if header_length > len(view):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length}, the body has {len(view)} bytes"
        )
    return view[:header_length], view[header_length:]


def parse_header_length(value: str | bytes | None) -> int | None:
    """The ``Inference-Header-Content-Length`` HTTP header as a byte count (None if absent)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not text.strip().isdigit():
        raise InvalidInput("Inference-Header-Content-Length must be a decimal byte count")
    return int(text)


def _parse(cls: type[_M], head: memoryview | bytes) -> _M:
    try:
        return cls.model_validate_json(bytes(head))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise InvalidInput(f"malformed JSON in the inference header: {first['msg']}") from None
        if first["type"] == "literal_error" and where.endswith("datatype"):
            raise InvalidInput(
                f"invalid inference header at {where}: the datatype must be one of "
                f"{', '.join(DTYPES)}"
            ) from None
        raise invalid_at(e, "inference header", "body") from None


def _from_binary(t: Tensor, raw: memoryview, count: int) -> np.ndarray:
    if t.datatype == "BYTES":
        elements: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInput(f"tensor {t.name!r}: a BYTES element's length is truncated")
            (n,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + n > len(raw):
                raise InvalidInput(f"tensor {t.name!r}: a BYTES element runs past its data")
            elements.append(bytes(raw[offset : offset + n]))
            offset += n
        if len(elements) != count:
            raise InvalidInput(
                f"tensor {t.name!r}: shape {t.shape} needs {count} BYTES elements, "
                f"the binary data holds {len(elements)}"
            )
        arr = np.empty(count, dtype=np.object_)
        arr[:] = elements
        return arr.reshape(t.shape)
    dtype = DTYPES[t.datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"tensor {t.name!r}: shape {t.shape} of {t.datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size says {len(raw)}"
        )
    if t.datatype == "BOOL" and np.frombuffer(raw, dtype=np.uint8).max(initial=0) > 1:
        raise InvalidInput(f"tensor {t.name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype=dtype).reshape(t.shape)


def _from_json(t: Tensor, data: list[Any], count: int) -> np.ndarray:
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"tensor {t.name!r}: nested data is ragged") from None
    if values.size != count or (values.ndim > 1 and list(values.shape) != t.shape):
        raise InvalidInput(
            f"tensor {t.name!r}: shape {t.shape} needs {count} values, got "
            + (f"{values.size}" if values.ndim <= 1 else f"nested data of shape {values.shape}")
        )
    dtype = DTYPES[t.datatype]
    if count and dtype.kind == "u" and values.dtype.kind == "f":
        # integers past int64 (UINT64's upper half) make numpy choose float64: read them exactly
        values = _exact_integers(t, data)
    if count and values.dtype.kind not in _JSON_KINDS[t.datatype]:
        raise InvalidInput(f"tensor {t.name!r}: data holds values that are not {t.datatype}")
    if t.datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = [str(v).encode() for v in values.ravel()]
        return arr.reshape(t.shape)
    if count and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype.kind == "u" and int(values.max()) > info.max:
            raise InvalidInput(f"tensor {t.name!r}: a value is out of range for {t.datatype}")
        if values.dtype.kind == "i" and not (
            info.min <= int(values.min()) and int(values.max()) <= info.max
        ):
            raise InvalidInput(f"tensor {t.name!r}: a value is out of range for {t.datatype}")
    with np.errstate(over="ignore"):
        arr = values.astype(dtype).reshape(t.shape)
    if (
        dtype.kind == "f"
        and values.dtype.kind == "f"
        and np.isinf(arr).sum() > np.isinf(values).sum()
    ):
        raise InvalidInput(f"tensor {t.name!r}: a value is out of range for {t.datatype}")
    return arr


def _exact_integers(t: Tensor, data: list[Any]) -> np.ndarray:
    values = np.asarray(data, dtype=np.object_).ravel()
    if not all(type(v) is int for v in values):
        raise InvalidInput(f"tensor {t.name!r}: data holds values that are not {t.datatype}")
    if min(values) < 0 or max(values) > np.iinfo(np.uint64).max:
        raise InvalidInput(f"tensor {t.name!r}: a value is out of range for {t.datatype}")
    return values.astype(np.uint64)


def decode_tensors(tensors: Sequence[Tensor], binary: memoryview) -> dict[str, np.ndarray]:
    """Named arrays of a header's tensors, binary ones read in order from `binary`."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in tensors:
        if t.name in out:
            raise InvalidInput(f"tensor {t.name!r} appears twice")
        if any(d < 0 for d in t.shape):
            raise InvalidInput(f"tensor {t.name!r} has a negative dimension in {t.shape}")
        count = math.prod(t.shape)
        size = t.binary_size()
        if size is not None:
            if t.data is not None:
                raise InvalidInput(f"tensor {t.name!r} has both data and binary_data_size")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"tensor {t.name!r}: binary data is truncated ({size} bytes named, "
                    f"{len(binary) - offset} left)"
                )
            out[t.name] = _from_binary(t, binary[offset : offset + size], count)
            offset += size
        elif t.data is not None:
            out[t.name] = _from_json(t, t.data, count)
        else:
            raise InvalidInput(f"tensor {t.name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last tensor")
    return out


def read_request_header(body: bytes | bytearray, header_length: int | None) -> InferenceRequest:
    """Only the JSON header of a request (its tensors' data unread)."""
    return _parse(InferenceRequest, split_body(body, header_length)[0])


def parse_request(
    body: bytes | bytearray, header_length: int | None = None
) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """Any well-formed request: its header and its named arrays."""
    head, rest = split_body(body, header_length)
    request = _parse(InferenceRequest, head)
    return request, decode_tensors(request.inputs, rest)


def check_inputs(
    task: str, arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], max_batch: int
) -> int:
    """Check arrays against the inputs a task declares; the batch size they share."""
    declared = [s.name for s in specs]
    if sorted(arrays) != sorted(declared):
        what = "one input" if len(declared) == 1 else f"{len(declared)} inputs"
        raise InvalidInput(
            f"task {task!r} declares {what}, {declared}; the request has {sorted(arrays)}",
            declared_inputs=declared,
        )
    batch: int | None = None
    for spec in specs:
        arr = arrays[spec.name]
        if arr.dtype != DTYPES[spec.datatype]:
            raise InvalidInput(
                f"input {spec.name!r} must be {spec.datatype}, got {datatype_of(arr)}"
            )
        if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != spec.shape:
            raise InvalidInput(
                f"input {spec.name!r} must have shape [-1, {', '.join(map(str, spec.shape))}], "
                f"got {list(arr.shape)}"
            )
        if batch is not None and arr.shape[0] != batch:
            raise InvalidInput(f"inputs disagree on the batch size ({batch} and {arr.shape[0]})")
        batch = arr.shape[0]
    assert batch is not None
    if not 1 <= batch <= max_batch:
        raise InvalidInput(f"batch of {batch} is outside 1..{max_batch}")
    return batch


def decode_request(
    body: bytes | bytearray,
    spec: TensorSpec,
    max_batch: int,
    header_length: int | None = None,
    *,
    task: str = "",
    outputs: Sequence[str] = ("logits",),
) -> tuple[InferenceRequest, np.ndarray]:
    """Parse a request to a one-input task: its header and that input, ``(n, *spec.shape)``.

    The requested outputs must be among `outputs` (checked before any work).
    """
    request, arrays = parse_request(body, header_length)
    check_inputs(task, arrays, [spec], max_batch)
    select_outputs(request, outputs)
    return request, arrays[spec.name]


def decode_response(
    body: bytes | bytearray, header_length: int | None = None
) -> tuple[InferenceResponse, dict[str, np.ndarray]]:
    """Parse a response into its header and named numpy outputs."""
    head, rest = split_body(body, header_length)
    response = _parse(InferenceResponse, head)
    return response, decode_tensors(response.outputs, rest)
