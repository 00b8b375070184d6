"""Measure one variant: latency per batch size, throughput, cold start, memory, accuracy.

What each number is:

* latency: wall time of one `run` call on a batch (input already in memory,
  logits copied out), p50 / p99 over the timed runs after warm-up runs;
* throughput: samples per second at that batch size, batch / mean latency;
* load_ms: cold start, from ONNX bytes in memory to a ready session that has
  answered one batch-1 call (first runs pay for lazy initialisation);
* peak_memory_bytes: growth of the process's peak resident set size over the
  variant's load and runs (Linux: VmHWM after resetting it through
  /proc/self/clear_refs, minus the RSS before the load). It counts everything
  the process touched meanwhile, runtime arenas and allocator caches included;
  where the peak cannot be reset it falls back to the RSS growth after the runs;
* accuracy: top-1 on the owner's labelled validation set, or, where the set has
  no labels (the untrained image models), the owner-declared accuracy times the
  top-1 agreement with the FP32 parent on the same inputs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infaas.errors import InvalidInput, VariantUnsupported
from infaas.settings import ProfilerSettings
from infaas.types import (
    BatchLatency,
    LatencyModel,
    ModelRecord,
    Precision,
    Profile,
    TensorSpec,
    VariantSpec,
)
from variants.generate import UnsupportedVariant, check_inputs, generate_variants
from variants.runtime import LoadedVariant, load_variant


@dataclass(frozen=True)
class ProfileOptions:
    """How hard to measure: batch sizes and the run/time budget per batch size."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    warmup_runs: int = 3
    min_runs: int = 10
    min_time_s: float = 0.5
    # A slow variant at a large batch (e.g. dynamic INT8 convolutions) stops after
    # this long once it has 3 runs: its p99 is then little more than its maximum.
    max_time_s: float = 2.0
    threads: int = 2

    @classmethod
    def from_settings(
        cls,
        settings: ProfilerSettings,
        quick: bool = False,
        batch_sizes: tuple[int, ...] | None = None,
    ) -> ProfileOptions:
        sizes = batch_sizes or settings.batch_sizes
        if quick:
            return cls(sizes, 1, 3, 0.02, 0.5, settings.threads)
        return cls(
            sizes,
            settings.warmup_runs,
            settings.min_runs,
            settings.min_time_s,
            max(2.0, 2 * settings.min_time_s),
            settings.threads,
        )


@dataclass(frozen=True)
class Measurement:
    """A variant's Profile and its top-1 predictions on the validation inputs."""

    profile: Profile
    predictions: np.ndarray


def validation_set(
    x: np.ndarray, y: np.ndarray | None, spec: TensorSpec, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The owner's validation set, checked against the model's input (InvalidInput if not)."""
    xs = check_inputs(x, spec, "validation set")
    if y is None:
        return xs, None
    ys = np.asarray(y)
    if ys.shape != (len(xs),) or not np.issubdtype(ys.dtype, np.integer):
        raise InvalidInput(
            f"validation labels have shape {ys.shape} ({ys.dtype}), expected ({len(xs)},) integers",
            expected=[len(xs)],
            got=list(ys.shape),
        )
    if num_classes is not None and (ys.min() < 0 or ys.max() >= num_classes):
        raise InvalidInput(f"validation labels must lie in 0..{num_classes - 1}")
    return xs, ys.astype(np.int64)


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import resource

    return pages * resource.getpagesize()


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def time_batches(
    variant: LoadedVariant, x: np.ndarray, options: ProfileOptions
) -> tuple[BatchLatency, ...]:
    """p50 / p99 latency and throughput at each batch size up to the variant's max."""
    out: list[BatchLatency] = []
    sizes = [b for b in options.batch_sizes if b <= variant.spec.max_batch] or [1]
    for b in sizes:
        batch = _batch_of(x, b)
        for _ in range(options.warmup_runs):
            variant.run(batch)
        times: list[float] = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            variant.run(batch)
            times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if len(times) >= options.min_runs and elapsed >= options.min_time_s:
                break
            if len(times) >= min(3, options.min_runs) and elapsed >= options.max_time_s:
                break
        ms = np.asarray(times) * 1e3
        out.append(
            BatchLatency(
                batch=b,
                p50_ms=float(np.percentile(ms, 50)),
                p99_ms=float(np.percentile(ms, 99)),
                throughput_rps=float(b / (ms.mean() / 1e3)),
            )
        )
    return tuple(out)


def fit_latency_model(batches: tuple[BatchLatency, ...]) -> LatencyModel:
    """Least-squares line p50_ms = intercept + slope * batch, both kept >= 0.

    Non-negative least squares: a noisy small batch would otherwise fit a
    negative intercept and predict ~0 ms for batch 1, which makes the scheduler
    unable to tell variants apart.
    """
    from scipy.optimize import nnls

    if len(batches) == 1:
        b = batches[0]
        return LatencyModel(intercept_ms=0.0, slope_ms=b.p50_ms / b.batch)
    xs = np.array([b.batch for b in batches], dtype=np.float64)
    ys = np.array([b.p50_ms for b in batches], dtype=np.float64)
    (intercept, slope), _ = nnls(np.column_stack([np.ones_like(xs), xs]), ys)
    return LatencyModel(intercept_ms=float(intercept), slope_ms=float(slope))


def predict(variant: LoadedVariant, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every row of x, in batches the variant accepts."""
    step = max(1, min(variant.spec.max_batch, 32))
    return np.concatenate(
        [np.argmax(variant.run(x[i : i + step]), axis=1) for i in range(0, len(x), step)]
    )


def profile_variant(
    spec: VariantSpec,
    onnx_bytes: bytes,
    validation_x: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    declared_accuracy: float | None = None,
    options: ProfileOptions | None = None,
) -> Measurement:
    """Load `spec` from its bytes and measure it (see the module docstring).

    With `labels`, accuracy is measured on them. Without, `declared_accuracy` is
    multiplied by the top-1 agreement with `reference` (the FP32 parent's
    predictions; omit it when profiling the parent itself, whose agreement is 1).
    """
    opts = options or ProfileOptions()
    if labels is None and declared_accuracy is None:
        raise InvalidInput(
            f"{spec.variant_id}: a validation set without labels needs a declared accuracy"
        )
    gc.collect()
    rss_before = _rss_bytes()
    peak_reset = _reset_peak()
    t0 = time.perf_counter()
    variant = load_variant(spec, onnx_bytes, opts.threads)
    try:
        first = validation_set(
            validation_x, labels, TensorSpec(name="x", shape=variant.input_shape)
        )
        x, y = first
        variant.run(x[:1])
        load_ms = (time.perf_counter() - t0) * 1e3
        preds = predict(variant, x)
        batches = time_batches(variant, x, opts)
        peak = _peak_bytes() if peak_reset else 0
        rss_after = _rss_bytes()
    finally:
        variant.close()
    peak_growth = max(0, (peak if peak else rss_after) - rss_before)
    if y is not None:
        accuracy, kind = float(np.mean(preds == y)), "validation"
    else:
        assert declared_accuracy is not None
        agreement = 1.0 if reference is None else float(np.mean(preds == reference))
        accuracy, kind = declared_accuracy * agreement, "agreement"
    profile = Profile(
        variant_id=spec.variant_id,
        pool=spec.pool,
        batches=batches,
        load_ms=load_ms,
        peak_memory_bytes=peak_growth,
        accuracy=min(1.0, max(0.0, accuracy)),
        accuracy_kind=kind,
        latency_model=fit_latency_model(batches),
        threads=opts.threads,
    )
    return Measurement(profile=profile, predictions=preds)


def profile_model(
    model: ModelRecord,
    onnx_bytes: bytes,
    calibration: np.ndarray,
    validation_x: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    options: ProfileOptions | None = None,
    pool: str = "cpu",
    max_batch: int = 32,
    on_variant: Callable[[VariantSpec, Profile | None, str | None], None] | None = None,
) -> list[tuple[VariantSpec, Profile | None, str | None]]:
    """Generate every variant of one FP32 model and measure each.

    Returns (spec, profile, None) per measured variant and (spec, None, reason)
    per variant this machine cannot have; `on_variant` sees each as it finishes.
    The FP32 onnxruntime variant is measured first: the others' agreement is
    taken against its predictions.
    """
    generated = generate_variants(model, onnx_bytes, calibration, pool=pool, max_batch=max_batch)
    out: list[tuple[VariantSpec, Profile | None, str | None]] = []
    reference: np.ndarray | None = None
    for v in generated:
        if isinstance(v, UnsupportedVariant):
            result: tuple[VariantSpec, Profile | None, str | None] = (v.spec, None, v.reason)
        else:
            try:
                m = profile_variant(
                    v.spec,
                    v.onnx_bytes,
                    validation_x,
                    labels=labels,
                    reference=reference,
                    declared_accuracy=model.declared_accuracy,
                    options=options,
                )
            except VariantUnsupported as e:
                result = (v.spec, None, e.message)
            else:
                if reference is None and v.spec.precision is Precision.FP32:
                    reference = m.predictions
                result = (v.spec, m.profile, None)
        out.append(result)
        if on_variant is not None:
            on_variant(*result)
    return out
