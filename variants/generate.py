"""Turn one registered FP32 ONNX model (its bytes, in memory) into its variants.

Variants, per model:

===================  ===========  ==========================================
variant              backend      how
===================  ===========  ==========================================
fp32                 onnxruntime  the owner's bytes
int8 (static QDQ)    onnxruntime  QDQ, per-channel int8 weights, uint8
                                  activations calibrated (MinMax) on the
                                  owner's calibration set
int8-dyn             onnxruntime  dynamic quantization (MatMul/Conv weights)
fp32                 openvino     the owner's bytes, INFERENCE_PRECISION_HINT f32
bf16                 openvino     the owner's bytes, INFERENCE_PRECISION_HINT bf16
int8                 openvino     the QDQ model
===================  ===========  ==========================================

Everything happens in memory: this code runs inside the TEE worker on decrypted
weights, which must never touch disk. `onnxruntime.quantization.quantize_static`
writes the model and an augmented copy to temporary files even when given a
ModelProto, so calibration is done here (an augmented session built from bytes)
and the quantizers it wraps (`QDQQuantizer`, `ONNXQuantizer`) are driven directly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infaas.errors import InvalidInput, InvalidModel, VariantUnsupported
from infaas.logs import get_logger
from infaas.types import (
    Backend,
    ModelRecord,
    Precision,
    Quantization,
    TensorSpec,
    VariantSpec,
    variant_id_for,
)
from variants._telemetry import onnxruntime, openvino
from variants.admission import validate_model

log = get_logger(__name__)

# (precision, backend, quantization) of every variant, in generation order. The
# onnxruntime FP32 variant comes first: it is the reference the others are
# compared with.
VARIANT_KINDS: tuple[tuple[Precision, Backend, Quantization], ...] = (
    (Precision.FP32, Backend.ONNXRUNTIME, Quantization.NONE),
    (Precision.INT8, Backend.ONNXRUNTIME, Quantization.STATIC_QDQ),
    (Precision.INT8, Backend.ONNXRUNTIME, Quantization.DYNAMIC),
    (Precision.FP32, Backend.OPENVINO, Quantization.NONE),
    (Precision.BF16, Backend.OPENVINO, Quantization.NONE),
    (Precision.INT8, Backend.OPENVINO, Quantization.STATIC_QDQ),
)


@dataclass(frozen=True)
class GeneratedVariant:
    """A runnable variant: its spec and the ONNX bytes its backend loads."""

    spec: VariantSpec
    onnx_bytes: bytes


@dataclass(frozen=True)
class UnsupportedVariant:
    """A variant this machine (or this model) cannot have, and why."""

    spec: VariantSpec
    reason: str

    def error(self) -> VariantUnsupported:
        return VariantUnsupported(
            f"{self.spec.variant_id}: {self.reason}", variant_id=self.spec.variant_id
        )


def variant_spec(
    model: ModelRecord,
    precision: Precision,
    backend: Backend,
    quantization: Quantization,
    pool: str = "cpu",
    max_batch: int = 32,
) -> VariantSpec:
    return VariantSpec(
        variant_id=variant_id_for(model.model_id, precision, backend, quantization),
        model_id=model.model_id,
        task=model.task,
        architecture=model.architecture,
        precision=precision,
        backend=backend,
        quantization=quantization,
        pool=pool,
        max_batch=max_batch,
    )


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. FP32, BF16, INT8)."""
    core = openvino().Core()
    return frozenset(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def unsupported_reason(spec: VariantSpec, capabilities: Iterable[str] | None = None) -> str | None:
    """Why this CPU cannot run `spec` natively, or None if it can."""
    if spec.backend is not Backend.OPENVINO:
        return None
    caps = frozenset(capabilities) if capabilities is not None else cpu_capabilities()
    if spec.precision is Precision.BF16 and "BF16" not in caps:
        return (
            "this CPU has no native bf16 (no AVX512_BF16/AMX: OpenVINO CPU capabilities "
            f"are {sorted(caps)}); OpenVINO would silently run it in f32"
        )
    if spec.precision is Precision.INT8 and "INT8" not in caps:
        return f"OpenVINO reports no INT8 capability on this CPU ({sorted(caps)})"
    return None


def check_inputs(x: np.ndarray, spec: TensorSpec, what: str = "input") -> np.ndarray:
    """A batch for a model with input `spec`, as contiguous float32 (InvalidInput if not)."""
    arr = np.asarray(x)
    expected = ("batch", *spec.shape)
    if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != tuple(spec.shape):
        raise InvalidInput(
            f"{what} has shape {tuple(arr.shape)}, expected {expected}",
            expected=list(expected),
            got=list(arr.shape),
        )
    if arr.shape[0] == 0:
        raise InvalidInput(f"{what} is empty: expected {expected} with batch >= 1")
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what} must be finite floating-point values, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def input_spec_of(model: Any) -> TensorSpec:
    """The per-sample input spec of a validated ModelProto (dynamic batch axis)."""
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) for d in dims[1:])
    if any(d <= 0 for d in shape):
        raise InvalidModel(f"input {inp.name} must have a static per-sample shape, got {shape}")
    return TensorSpec(name=inp.name, shape=shape)


# ---------------------------------------------------------------- quantization


def _session(ort: Any, onnx_bytes: bytes, threads: int = 1) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def calibrate(model: Any, calibration: np.ndarray, batch: int = 8) -> Any:
    """MinMax ranges of every float activation, from an augmented session in memory."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    ort = onnxruntime()
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    inits = {i.name for i in aug.graph.initializer}
    infos = {vi.name: vi for vi in [*aug.graph.value_info, *aug.graph.input, *aug.graph.output]}
    outputs = {o.name for o in aug.graph.output}
    names: list[str] = []
    for node in aug.graph.node:
        for t in [*node.input, *node.output]:
            vi = infos.get(t)
            if (
                vi is None
                or t in inits
                or t in names
                or vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
            ):
                continue
            names.append(t)
            if t not in outputs:
                aug.graph.output.append(vi)
                outputs.add(t)
    sess = _session(ort, aug.SerializeToString())
    input_name = model.graph.input[0].name
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for i in range(0, len(calibration), batch):
        outs = sess.run(names, {input_name: calibration[i : i + batch]})
        for n, v in zip(names, outs, strict=True):
            lo[n] = min(lo.get(n, np.inf), float(np.min(v)))
            hi[n] = max(hi.get(n, -np.inf), float(np.max(v)))
    return TensorsData(
        CalibrationMethod.MinMax,
        {n: (np.array(lo[n], np.float32), np.array(hi[n], np.float32)) for n in names},
    )


def quantize_qdq(model: Any, calibration: np.ndarray) -> bytes:
    """Static QDQ INT8 (per-channel int8 weights, uint8 activations), in memory."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    onnxruntime()
    ranges = calibrate(model, calibration)
    model = update_opset_version(_quantizable_opset(model), QuantType.QInt8, QuantType.QUInt8)
    with _in_memory_reload():
        quantizer = QDQQuantizer(
            model,
            True,  # per_channel
            False,  # reduce_range: not needed on VNNI/AMX CPUs
            QuantType.QInt8,
            QuantType.QUInt8,
            ranges,
            [],
            [],
            sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
            {"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return bytes(quantizer.quantize_model().SerializeToString())


def quantize_dynamic(model: Any) -> bytes | None:
    """Dynamic INT8 (weights int8, activations quantized per call); None if nothing quantizes.

    Convolutions are left in FP32: onnxruntime runs them as ConvInteger, measured
    1.6-5x *slower* than FP32 on this kind of CPU (static QDQ is the INT8 form for
    CNNs), so a dynamic variant only quantizes MatMul-like operators.
    """
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        QuantType,
        update_opset_version,
    )
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    onnxruntime()
    model = update_opset_version(_quantizable_opset(model), QuantType.QInt8)
    with _in_memory_reload():
        quantizer = ONNXQuantizer(
            model,
            False,
            False,
            QuantizationMode.IntegerOps,
            False,  # static
            QuantType.QInt8,
            QuantType.QUInt8,  # dynamic activations are uint8 in onnxruntime
            None,
            [],
            [],
            sorted(op for op in IntegerOpsRegistry if op != "Conv"),
            {"MatMulConstBOnly": True},
        )
        out = quantizer.quantize_model()
    integer_ops = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    if not any(n.op_type in integer_ops for n in out.graph.node):
        return None
    return bytes(out.SerializeToString())


def _infer_shapes(model: Any) -> Any:
    """Shape inference in memory, marked the way onnxruntime's quantizers expect.

    (Without the mark, their constructors redo it through a temporary file.)
    """
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    inferred = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(inferred)
    return inferred


# onnxruntime's quantizers need opset >= 11; for older models `update_opset_version`
# converts and then re-infers shapes through a temporary file holding the weights.
QUANTIZABLE_OPSET = 11


def _quantizable_opset(model: Any) -> Any:
    """The model at opset >= 11, converted in memory (so onnxruntime's converter has no work)."""
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= QUANTIZABLE_OPSET:
        return model
    converted = onnx.version_converter.convert_version(model, QUANTIZABLE_OPSET)
    return _infer_shapes(converted)


_patch_lock = threading.Lock()


@contextlib.contextmanager
def _in_memory_reload() -> Iterator[None]:
    """Make onnxruntime's quantizer re-infer shapes in memory, not via a temp file.

    `ONNXQuantizer` (dynamic mode) unconditionally calls
    `save_and_reload_model_with_shape_infer`, which saves the model, weights
    included, into a temporary directory. Models here are far below protobuf's
    2 GiB limit, so in-memory inference gives the same result without the file.
    """
    from onnxruntime.quantization import base_quantizer, onnx_quantizer

    root = logging.getLogger()
    with _patch_lock:
        # onnxruntime's quantizers log per-tensor chatter at INFO on the root logger
        root.addFilter(_quiet_quantizer)
        saved = (
            onnx_quantizer.save_and_reload_model_with_shape_infer,
            base_quantizer.save_and_reload_model_with_shape_infer,
        )
        onnx_quantizer.save_and_reload_model_with_shape_infer = _infer_shapes
        base_quantizer.save_and_reload_model_with_shape_infer = _infer_shapes
        try:
            yield
        finally:
            (
                onnx_quantizer.save_and_reload_model_with_shape_infer,
                base_quantizer.save_and_reload_model_with_shape_infer,
            ) = saved
            root.removeFilter(_quiet_quantizer)


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "quantization" not in record.pathname


def generate_variants(
    model: ModelRecord,
    onnx_bytes: bytes,
    calibration: np.ndarray,
    *,
    pool: str = "cpu",
    max_batch: int = 32,
    kinds: Sequence[tuple[Precision, Backend, Quantization]] = VARIANT_KINDS,
    capabilities: Iterable[str] | None = None,
) -> list[GeneratedVariant | UnsupportedVariant]:
    """Every variant of one FP32 model, generated in memory from its bytes.

    `calibration` is a batch of representative inputs (the owner's calibration
    set). `capabilities` overrides the CPU's OpenVINO capabilities (for tests).
    Raises InvalidModel for bytes that are not a supported ONNX model and
    InvalidInput for a calibration set of the wrong shape.
    """
    proto = validate_model(onnx_bytes, f"model {model.model_id}")
    spec_in = input_spec_of(proto)
    calib = check_inputs(calibration, spec_in, f"calibration set of {model.model_id}")
    caps = frozenset(capabilities) if capabilities is not None else cpu_capabilities()
    try:
        _session(onnxruntime(), bytes(onnx_bytes))
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
        # its text quotes the owner's node names and values: the type only
        raise InvalidModel(
            f"model {model.model_id} cannot be loaded by onnxruntime ({type(e).__name__})"
        ) from e
    qdq: bytes | None = None
    out: list[GeneratedVariant | UnsupportedVariant] = []
    for precision, backend, quant in kinds:
        spec = variant_spec(model, precision, backend, quant, pool, max_batch)
        reason = unsupported_reason(spec, caps)
        if reason is not None:
            out.append(UnsupportedVariant(spec, reason))
            continue
        if quant is Quantization.STATIC_QDQ:
            if qdq is None:
                qdq = quantize_qdq(_infer_shapes(proto), calib)
            out.append(GeneratedVariant(spec, qdq))
        elif quant is Quantization.DYNAMIC:
            # the quantizers edit the proto they are given: each gets its own copy
            dyn = quantize_dynamic(_infer_shapes(proto))
            if dyn is None:
                out.append(
                    UnsupportedVariant(spec, "no operator of this model quantizes dynamically")
                )
            else:
                out.append(GeneratedVariant(spec, dyn))
        else:
            out.append(GeneratedVariant(spec, bytes(onnx_bytes)))
    return out
