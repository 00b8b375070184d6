"""Domain types shared by every component: tasks, SLOs, models, variants, profiles,
autoscaler events.

They are frozen pydantic models: they travel through the metadata store as JSON
and through Ray as plain values, and none of them ever holds weights or tensors.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]


_ALPHABETS = ("A-Za-z0-9+/", "A-Za-z0-9_-")


def base64_pattern(
    min_bytes: int = 0, max_bytes: int | None = None, *, padded: bool = False
) -> str:
    """A regular expression matching the base64 text of `min_bytes`..`max_bytes` bytes.

    Either alphabet (standard or URL-safe, not mixed); padding optional unless `padded`,
    as pydantic's ``val_json_bytes="base64"`` reads it. A length limit of a byte field
    is on the decoded bytes, not on its text: this is how a JSON Schema can say it.
    """

    def count(low: int, high: int | None) -> str:
        return f"{{{low},}}" if high is None else f"{{{low},{high}}}"

    options = []
    for a in _ALPHABETS:
        quad, pad = f"[{a}]{{4}}", ("" if padded else "?")
        parts = []
        # the text is q whole quads then a tail of t = 0, 1 or 2 more bytes
        for tail, text in ((0, ""), (1, f"[{a}]{{2}}(?:==){pad}"), (2, f"[{a}]{{3}}={pad}")):
            low = max(0, -(-(min_bytes - tail) // 3))
            high = None if max_bytes is None else (max_bytes - tail) // 3
            if high is None or high >= low:
                parts.append(f"(?:{quad}){count(low, high)}{text}")
        options.append("|".join(parts))
    return "^(?:" + "|".join(f"(?:{o})" for o in options) + ")$"


def base64_fields(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Describe `cls`'s bytes fields as base64 text in its JSON schema (a ``json_schema_extra``).

    pydantic writes a byte field's length limits as ``minLength`` / ``maxLength`` of its
    text, which counts characters, not bytes: a 12-byte nonce would read as 12 base64
    characters (9 bytes). Here they become a pattern over the text that holds exactly
    the allowed byte counts, with ``contentEncoding: base64``.
    """
    properties = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        if field.annotation not in (bytes, bytes | None):
            continue
        low = next(
            (m.min_length for m in field.metadata if isinstance(m, annotated_types.MinLen)), 0
        )
        high = next(
            (m.max_length for m in field.metadata if isinstance(m, annotated_types.MaxLen)), None
        )
        prop = properties.get(field.alias or name, {})
        for sub in [prop, *prop.get("anyOf", [])]:
            if sub.get("type") == "string":
                for k in ("minLength", "maxLength", "format"):
                    sub.pop(k, None)
                sub.update(base64_text(low, high))


_EXACT_MAX_BYTES = 192
"""Up to this many bytes a pattern bounds the text exactly; above, regular-expression engines
(validators compile counted repetitions out) would take tens of milliseconds per schema."""


def base64_text(min_bytes: int = 0, max_bytes: int | None = None) -> dict[str, Any]:
    """JSON Schema keywords for the base64 text of `min_bytes`..`max_bytes` bytes.

    Exact up to `_EXACT_MAX_BYTES`; above it the pattern bounds the minimum and
    ``maxLength`` the text to whole groups of 3 bytes, so what it admits always fits
    (the last one or two bytes under a large limit go undescribed).
    """
    if max_bytes is None or max_bytes <= _EXACT_MAX_BYTES:
        exact: dict[str, Any] = {
            "contentEncoding": "base64",
            "pattern": base64_pattern(min_bytes, max_bytes),
            # implied by the pattern; stated for generators that test the boundaries
            "minLength": -(-4 * min_bytes // 3),
        }
        if max_bytes is not None:
            exact["maxLength"] = 4 * -(-max_bytes // 3)
        return exact
    return {
        "contentEncoding": "base64",
        "pattern": base64_pattern(min_bytes),
        "maxLength": 4 * (max_bytes // 3),
    }


BASE64_WIRE = ConfigDict(
    frozen=True,
    extra="forbid",
    ser_json_bytes="base64",
    val_json_bytes="base64",
    json_schema_extra=base64_fields,
)
"""The config of a wire model: frozen, strict, bytes as base64 in JSON (and so described)."""


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
