"""Synthetic variants and profiles from a linear latency model, for tests and benchmarks."""

from __future__ import annotations

from infaas.types import (
    Backend,
    BatchLatency,
    LatencyModel,
    Precision,
    Profile,
    Quantization,
    VariantSpec,
)

__all__ = ["synthetic_variant"]

BATCHES = (1, 2, 4, 8, 16, 32)


def synthetic_variant(
    variant_id: str,
    *,
    task: str = "classify",
    architecture: str = "resnet50",
    model_id: str | None = None,
    precision: Precision = Precision.FP32,
    backend: Backend = Backend.ONNXRUNTIME,
    pool: str = "cpu",
    accuracy: float = 0.76,
    intercept_ms: float = 20.0,
    slope_ms: float = 2.0,
    tail: float = 1.2,
    load_ms: float = 300.0,
    peak_memory_bytes: int = 200 * 1024**2,
    max_batch: int = 32,
) -> tuple[VariantSpec, Profile]:
    """A variant whose batch b takes ``intercept + slope * b`` ms (p50), p99 = tail x p50."""
    quant = Quantization.STATIC_QDQ if precision is Precision.INT8 else Quantization.NONE
    spec = VariantSpec(
        variant_id=variant_id,
        model_id=model_id or architecture,
        task=task,
        architecture=architecture,
        precision=precision,
        backend=backend,
        quantization=quant,
        pool=pool,
        max_batch=max_batch,
    )
    lm = LatencyModel(intercept_ms=intercept_ms, slope_ms=slope_ms)
    batches = tuple(
        BatchLatency(
            batch=b,
            p50_ms=lm.predict_ms(b),
            p99_ms=tail * lm.predict_ms(b),
            throughput_rps=1000.0 * b / lm.predict_ms(b),
        )
        for b in BATCHES
        if b <= max_batch
    )
    profile = Profile(
        variant_id=variant_id,
        pool=pool,
        batches=batches,
        load_ms=load_ms,
        peak_memory_bytes=peak_memory_bytes,
        accuracy=accuracy,
        accuracy_kind="validation",
        latency_model=lm,
        threads=1,
        measured_at=0.0,
    )
    return spec, profile
