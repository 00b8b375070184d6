"""Domain types shared by every component: tasks, SLOs, models, variants, profiles,
autoscaler events.

They are frozen pydantic models: they travel through the metadata store as JSON
and through Ray as plain values, and none of them ever holds weights or tensors.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"


class Backend(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Quantization(StrEnum):
    """How an INT8 variant was quantized (none for floating-point variants)."""

    NONE = "none"
    STATIC_QDQ = "static_qdq"
    DYNAMIC = "dynamic"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(Frozen):
    """Name, per-sample shape (no batch axis) and element type of a model input."""

    name: str = Field(min_length=1, description="ONNX graph input name")
    shape: tuple[int, ...] = Field(description="shape of one sample, without the batch axis")
    datatype: Literal["FP32", "UINT8", "INT64"] = Field(
        "FP32", description="Open Inference Protocol v2 datatype"
    )

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d <= 0 for d in v):
            raise ValueError(f"every dimension must be positive, got {v}")
        return v


class Task(Frozen):
    """A kind of work callers ask for by name; many models may serve it."""

    name: Identifier
    description: str = ""
    input: TensorSpec
    output_name: str = "logits"
    num_classes: int = Field(gt=1)


class SLO(Frozen):
    """What a caller asks for: a latency target and the least accuracy it accepts."""

    latency_ms: float = Field(gt=0, le=600_000, description="p99 latency target, milliseconds")
    min_accuracy: float = Field(0.0, ge=0.0, le=1.0, description="least top-1 accuracy, 0..1")
    max_cost: float | None = Field(
        None, gt=0, description="most cost per 1000 requests the caller will pay"
    )


class ModelRecord(Frozen):
    """A registered FP32 model. The weights live encrypted elsewhere; this is metadata."""

    model_id: Identifier
    task: Identifier
    architecture: Identifier
    owner: str = "example-zoo"
    declared_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="owner-declared top-1 accuracy (untrained zoo models)"
    )
    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    num_parameters: int = Field(ge=0)
    created_at: float = Field(default_factory=time.time)


def variant_id_for(
    model_id: str, precision: Precision, backend: Backend, quantization: Quantization
) -> str:
    """The canonical id of a variant: model, precision, backend, quantization."""
    qual = "" if quantization in (Quantization.NONE, Quantization.STATIC_QDQ) else "-dyn"
    return f"{model_id}.{precision.value}{qual}.{backend.value}"


class VariantSpec(Frozen):
    """One runnable form of a model: architecture x precision x backend x pool."""

    variant_id: str = Field(min_length=1, max_length=200)
    model_id: Identifier
    task: Identifier
    architecture: Identifier
    precision: Precision
    backend: Backend
    quantization: Quantization = Quantization.NONE
    pool: Identifier = "cpu"
    max_batch: int = Field(32, ge=1, le=1024)

    @model_validator(mode="after")
    def _consistent(self) -> VariantSpec:
        if self.precision is Precision.INT8 and self.quantization is Quantization.NONE:
            raise ValueError("an int8 variant must name its quantization")
        if self.precision is not Precision.INT8 and self.quantization is not Quantization.NONE:
            raise ValueError("only int8 variants are quantized")
        if self.precision is Precision.BF16 and self.backend is not Backend.OPENVINO:
            raise ValueError("bf16 variants run on openvino")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.variant_id):
            raise ValueError(f"bad variant id {self.variant_id!r}")
        return self


class LatencyModel(Frozen):
    """Latency of one batch as a line in the batch size: intercept + slope * batch."""

    intercept_ms: float = Field(ge=0.0)
    slope_ms: float = Field(ge=0.0)

    def predict_ms(self, batch: int) -> float:
        return max(0.0, self.intercept_ms + self.slope_ms * batch)


class BatchLatency(Frozen):
    batch: int = Field(ge=1)
    p50_ms: float = Field(ge=0.0)
    p99_ms: float = Field(ge=0.0)
    throughput_rps: float = Field(ge=0.0, description="samples per second at this batch size")


class Profile(Frozen):
    """What the profiler measured for one variant on one pool.

    The store is untrusted: a worker uses a profile only when its `mac` verifies
    under the model's profile key, which only attested workers hold
    (`enclave_workers.profiles`). The MAC covers the whole profile, the
    variant's spec and `artifact_sha256`, so neither can be edited nor moved to
    another variant.
    """

    variant_id: str
    pool: Identifier = "cpu"
    batches: tuple[BatchLatency, ...] = Field(min_length=1)
    load_ms: float = Field(ge=0.0, description="cold start: bytes in memory to a ready session")
    peak_memory_bytes: int = Field(ge=0)
    accuracy: float = Field(ge=0.0, le=1.0)
    accuracy_kind: Literal["validation", "agreement"] = Field(
        description="'validation': measured on the owner's labelled set; 'agreement': "
        "declared accuracy of the FP32 parent times top-1 agreement with it"
    )
    latency_model: LatencyModel
    threads: int = Field(ge=1)
    measured_at: float = Field(default_factory=time.time)
    artifact_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the sealed artifact measured"
    )
    measured_by: str | None = Field(
        None, max_length=128, description="hex measurement of the worker that measured it"
    )
    mac: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256 under the model's profile key over spec and profile",
    )

    def at_batch(self, batch: int) -> BatchLatency:
        for b in self.batches:
            if b.batch == batch:
                return b
        raise KeyError(batch)

    @property
    def p50_batch1_ms(self) -> float:
        return self.batches[0].p50_ms

    @property
    def peak_throughput_rps(self) -> float:
        return max(b.throughput_rps for b in self.batches)


class Tenant(Frozen):
    tenant_id: Identifier
    name: str = ""
    created_at: float = Field(default_factory=time.time)


AutoscalerEventKind = Literal[
    "scale_up",
    "scale_down",
    "scale_to_zero",
    "upgrade",
    "downgrade",
    "unserved",
    "replicas",
    "note",
]


class AutoscalerEvent(BaseModel):
    """One autoscaler decision (or a replica-count sample), typed from the policy to the page.

    The policies (`scheduler.autoscaler`) return them, the control loop stores
    them (`infaas.telemetry.record_autoscaler_event`) and the dashboard shows
    them. ``replicas`` is the replica count per variant after the decision;
    samples carrying it draw the "replicas per variant over time" chart.
    ``reason`` is the same event in words, for people.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")  # read back from an untrusted store

    ts: float = Field(default_factory=time.time, description="when it was decided, Unix s")
    kind: AutoscalerEventKind
    reason: str = Field("", max_length=500, description="the event in words")
    task: str = ""
    demand: str = Field("", description="the demand class (task|latency_ms|min_accuracy)")
    variant_id: str = Field("", description="the variant scaled, or switched to")
    from_variant_id: str = Field("", description="upgrade / downgrade: the variant left")
    from_replicas: int | None = None
    to_replicas: int | None = None
    unserved_rps: float | None = Field(None, ge=0, description="unserved: the rate left over")
    replicas: dict[str, int] = Field(default_factory=dict)
