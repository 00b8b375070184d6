"""Wire models of the infaas REST API (besides the key service's own, in `infaas.keyservice`).

Every byte field is base64 in JSON. Plaintext never appears here: model
weights, validation sets, inference inputs and outputs travel only inside
AES-256-GCM blobs (`infaas.envelope`).

``POST /v1/infer`` also speaks a binary form, `ENVELOPE_MEDIA_TYPE` (chosen by
the request's ``Content-Type`` and the answer's ``Accept``), so a 600 KB image
crosses the proxy as 600 KB, not as 800 KB of base64 inside JSON that the worker
must parse. One frame is an envelope::

    b"IFE2" | header length (4 bytes, big-endian) | header | nonce (12) | ciphertext + tag

The header is the envelope's associated data itself, the canonical JSON of its
metadata (`Envelope.associated_data`): the untrusted path reads it, the tag
authenticates it, and a header that is not in canonical form is refused before
any key is touched. The worker decrypts straight from the received buffer. An
answer's unauthenticated timings ride in ``Infaas-Latency-Ms``, ``Infaas-Queue-Ms``
and ``Infaas-Batch-Size`` headers; what served it is in its authenticated header.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from infaas.envelope import NONCE_LEN, TAG_LEN, Envelope
from infaas.errors import InvalidInput, invalid_at
from infaas.types import (
    BASE64_WIRE,
    Identifier,
    ModelRecord,
    Profile,
    Task,
    TensorSpec,
    VariantSpec,
)


class _Wire(BaseModel):
    model_config = BASE64_WIRE


class InferRequest(_Wire):
    """``POST /v1/infer`` body.

    ::

        {"envelope": {<Envelope: tenant, task, latency_ms, min_accuracy, request_id, …,
                       variant_id, architecture>}}

    The task, SLO and pins are the envelope's authenticated metadata: its
    `architecture` or `variant_id` narrow the choice as INFaaS allows (by task
    when both are null), and no one on the path can change them. The Open
    Inference Protocol v2 body is the envelope's plaintext.
    """

    envelope: Envelope


class InferResponse(_Wire):
    """``POST /v1/infer`` answer: the sealed outputs and what served them.

    ``{"envelope": {<Envelope kind=response>}, "variant_id": "…", "pool": "cpu",
    "measurement": "<hex>", "simulated_tee": true, "latency_ms": 3.2, "queue_ms": 0.4,
    "batch_size": 4}``

    `variant_id`, `pool`, `measurement` and `simulated_tee` are clear copies of
    the envelope's authenticated fields, for the untrusted path's metrics; the
    client checks them against the envelope. The timings are the worker's
    word, unauthenticated.
    """

    envelope: Envelope
    variant_id: str
    pool: str
    measurement: str
    simulated_tee: bool
    latency_ms: float = Field(ge=0)
    queue_ms: float = Field(ge=0)
    batch_size: int = Field(ge=1)


class CreateTenantRequest(_Wire):
    """``POST /v1/tenants`` (admin): ``{"tenant_id": "acme", "name": "Acme"}``."""

    tenant_id: Identifier
    name: str = ""


class Credentials(_Wire):
    """An API token, shown once and stored hashed: ``{"principal": "acme", "role": "tenant",
    "token": "…"}``."""

    principal: str
    role: Literal["tenant", "owner", "admin", "metrics"]
    token: str


class RegisterModelRequest(_Wire):
    """``POST /v1/models`` (owner): metadata in the clear, weights and validation sealed.

    ::

        {
          "model_id": "digits-mlp-small", "task": "digits", "architecture": "mlp-small",
          "input": {"name": "input", "shape": [1, 8, 8], "datatype": "FP32"},
          "num_classes": 10, "declared_accuracy": null, "key_id": "k1",
          "artifact": "<b64 seal_artifact(data_key, model_id, onnx bytes)>",
          "validation": "<b64 seal_artifact(data_key, model_id + '.validation', npz bytes)>"
        }

    The data key was uploaded to the attested key service beforehand. The first
    model of a task defines the task's input and classes; later ones must match.
    """

    model_id: Identifier
    task: Identifier
    architecture: Identifier
    input: TensorSpec
    num_classes: int = Field(gt=1)
    declared_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    key_id: Identifier
    artifact: bytes = Field(min_length=1)
    validation: bytes = Field(min_length=1)


class JobStatus(_Wire):
    """Progress of variant generation and profiling for a registered model."""

    model_id: str
    state: Literal["queued", "running", "ready", "failed"]
    done: int = Field(0, ge=0)
    total: int = Field(0, ge=0)
    message: str = ""
    code: str = Field(
        "", description="a failed job's error code (`infaas.errors`), e.g. invalid_model"
    )
    updated_at: float = 0.0


class ModelInfo(_Wire):
    """A model with its variants and their profiles (``GET /v1/models/{id}``)."""

    model: ModelRecord
    task: Task
    job: JobStatus | None
    variants: list[VariantSpec]
    profiles: list[Profile]


class Health(_Wire):
    status: Literal["ok", "degraded"]
    tee_backend: str
    simulated_tee: bool
    detail: dict[str, str] = Field(default_factory=dict)


# --- Open Inference Protocol v2: health and metadata (``/v2``) --------------------------


class ServerMetadata(_Wire):
    """``GET /v2``: ``{"name": "infaas", "version": "0.1.0", "extensions": []}``."""

    name: str
    version: str
    extensions: list[str]


class Liveness(_Wire):
    """``GET /v2/health/live``: ``{"live": true}``."""

    live: bool


class Readiness(_Wire):
    """``GET /v2/health/ready``: ``{"ready": true}``."""

    ready: bool


class TensorMetadata(_Wire):
    """One input or output of a model: ``{"name": "input", "datatype": "FP32",
    "shape": [-1, 64]}`` (-1: the batch axis, any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Wire):
    """``GET /v2/models/{task}[/versions/{variant}]``: a task seen as an OIP model.

    ::

        {"name": "digits", "versions": ["digits-mlp-small.int8.openvino", ...],
         "platform": "infaas", "inputs": [{"name": "input", "datatype": "FP32",
         "shape": [-1, 64]}], "outputs": [{"name": "logits", "datatype": "FP32",
         "shape": [-1, 10]}]}

    The model name is the task; its versions are the variants that may serve it
    (a version in the path pins one).
    """

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReadiness(_Wire):
    """``GET /v2/models/{task}[/versions/{variant}]/ready``: ``{"name": "digits",
    "ready": true}`` (ready: at least one such variant is profiled)."""

    name: str
    ready: bool


# --- the binary envelope (``application/vnd.infaas.envelope``) ----------------------------

ENVELOPE_MEDIA_TYPE = "application/vnd.infaas.envelope"
FRAME_MAGIC = b"IFE2"
MAX_FRAME_HEADER_BYTES = 8192
"""Far above any honest header (a few hundred bytes): every field in it is bounded."""
_PREFIX = struct.Struct(">4sI")
_PLACEHOLDER_CT = bytes(TAG_LEN)


def envelope_frame(envelope: Envelope) -> bytes:
    """An envelope as one binary frame (see the module docstring)."""
    header = envelope.associated_data()
    return b"".join(
        (_PREFIX.pack(FRAME_MAGIC, len(header)), header, envelope.nonce, envelope.ciphertext)
    )


def envelope_from_frame(frame: bytes | bytearray | memoryview) -> Envelope:
    """The envelope a frame carries; `InvalidInput` (400) saying what is wrong otherwise.

    Its `ciphertext` is a read-only view into `frame` (no copy of the tensor): keep
    `frame` unchanged while the envelope is in use.
    """
    view = memoryview(frame).toreadonly()
    if len(view) < _PREFIX.size:
        raise InvalidInput(
            f"truncated envelope frame: {len(view)} bytes, shorter than its {_PREFIX.size}-byte "
            "prefix"
        )
    magic, header_len = _PREFIX.unpack_from(view)
    if magic != FRAME_MAGIC:
        raise InvalidInput(f"not an envelope frame: it starts with {bytes(magic)!r}, not b'IFE2'")
    if not 0 < header_len <= MAX_FRAME_HEADER_BYTES:
        raise InvalidInput(
            f"envelope frame header length {header_len} is outside 1..{MAX_FRAME_HEADER_BYTES}"
        )
    body_at = _PREFIX.size + header_len
    if len(view) < body_at + NONCE_LEN + TAG_LEN:
        raise InvalidInput(
            f"truncated envelope frame: {len(view)} bytes cannot hold its {header_len}-byte "
            f"header, a {NONCE_LEN}-byte nonce and a {TAG_LEN}-byte tag"
        )
    header = bytes(view[_PREFIX.size : body_at])
    try:
        meta = json.loads(header)
    except ValueError:  # UnicodeDecodeError too
        raise InvalidInput("envelope frame header is not JSON") from None
    if not isinstance(meta, dict) or {"nonce", "ciphertext"} & meta.keys():
        raise InvalidInput("envelope frame header is not an envelope's metadata object")
    nonce = bytes(view[body_at : body_at + NONCE_LEN])
    try:
        checked = Envelope.model_validate(meta | {"nonce": nonce, "ciphertext": _PLACEHOLDER_CT})
    except ValidationError as e:
        raise invalid_at(e, "envelope frame header", "header") from None
    if checked.associated_data() != header:
        # the tag covers the canonical form: any other spelling could never open
        raise InvalidInput("envelope frame header is not in canonical form (sorted, compact)")
    # a buffer view where the model says bytes: AES-GCM reads it in place, nothing copies it
    return checked.model_copy(update={"ciphertext": view[body_at + NONCE_LEN :]})


TIMING_HEADERS = ("infaas-latency-ms", "infaas-queue-ms", "infaas-batch-size")


def infer_response_frame(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """An answer in binary: its envelope's frame and the timing headers beside it."""
    headers = {
        "infaas-latency-ms": f"{response.latency_ms:.3f}",
        "infaas-queue-ms": f"{response.queue_ms:.3f}",
        "infaas-batch-size": str(response.batch_size),
    }
    return envelope_frame(response.envelope), headers


def infer_response_from_frame(frame: bytes, headers: Mapping[str, str]) -> InferResponse:
    """The answer a binary frame and its timing headers carry (`InvalidInput` if malformed).

    The clear copies of what served it are read from the frame's header, the
    authenticated one: there is no other copy to disagree with it.
    """
    opened = envelope_from_frame(frame)
    # an answer is small: its own bytes, so it outlives the frame and dumps as any envelope
    envelope = opened.model_copy(update={"ciphertext": bytes(opened.ciphertext)})
    clear: dict[str, Any] = {
        "envelope": envelope,
        "variant_id": envelope.variant_id,
        "pool": envelope.pool,
        "measurement": envelope.measurement,
        "simulated_tee": envelope.simulated_tee,
    }
    for name, field in zip(TIMING_HEADERS, ("latency_ms", "queue_ms", "batch_size"), strict=True):
        clear[field] = headers.get(name)
    try:
        return InferResponse.model_validate(clear)
    except ValidationError as e:
        raise invalid_at(e, "binary answer", "answer") from None


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a ``Content-Type`` value ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def accepts_envelope(accept: str | None) -> bool:
    """Whether an ``Accept`` value lists `ENVELOPE_MEDIA_TYPE` (with a non-zero q)."""
    for item in (accept or "").split(","):
        kind, *params = item.split(";")
        if kind.strip().lower() != ENVELOPE_MEDIA_TYPE:
            continue
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False
