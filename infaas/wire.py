"""Wire models of the infaas REST API (besides the key service's own, in `infaas.keyservice`).

Every byte field is base64 in JSON. Plaintext never appears here: model
weights, validation sets, inference inputs and outputs travel only inside
AES-256-GCM blobs (`infaas.envelope`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from infaas.envelope import Envelope
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
