"""Load a variant from its ONNX bytes in memory and run batches on it.

Used by the TEE worker: the bytes are decrypted weights, so nothing here writes
them anywhere (no model cache directory, no temporary files). A LoadedVariant is
safe to call `.run` on from several threads at once: an onnxruntime session is
thread-safe for `run`, and OpenVINO infer requests (which are not) are pooled,
one per concurrent caller.

Each LoadedVariant carries `rows`, whether its graph is proven to keep the rows
of a batch apart (`variants.row_independence`): only then may rows of several
tenants share one invocation. It starts unproven; `row_proof` parses the same
bytes the session runs (while the worker still holds them) into a graph without
weights, and proves it later, off the cold start. A failing run raises
`InferenceFailed` with a message of its own: the runtimes' messages quote input
values ("idx=… must be within…").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from infaas.errors import InferenceFailed, InvalidInput, InvalidModel, VariantUnsupported
from infaas.types import Backend, Precision, VariantSpec
from variants._telemetry import onnxruntime, openvino
from variants.generate import unsupported_reason
from variants.row_independence import RowIndependence, check_row_independence, drop_weights


class LoadedVariant(Protocol):
    """A variant ready to serve: a batch in, logits out."""

    spec: VariantSpec
    input_name: str
    input_shape: tuple[int, ...]
    rows: RowIndependence
    """Whether output row i depends on input row i alone (then tenants may share a batch)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for a float32 batch (batch, *input_shape)."""
        ...

    def close(self) -> None: ...


def _check_batch(v: LoadedVariant, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != len(v.input_shape) + 1 or tuple(arr.shape[1:]) != v.input_shape:
        raise InvalidInput(
            f"input has shape {tuple(arr.shape)}, expected (batch, "
            f"{', '.join(map(str, v.input_shape))})",
            expected=["batch", *v.input_shape],
            got=list(arr.shape),
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


_NOT_ANALYSED = RowIndependence(False, "the graph has not been analysed yet")


def _failed(v: LoadedVariant, n: int) -> InferenceFailed:
    # built outside the runtime's `except` block, so no traceback chains its message
    return InferenceFailed(f"variant {v.spec.variant_id} failed on a batch of {n}", batch=n)


def row_proof(onnx_bytes: bytes) -> Callable[[], RowIndependence]:
    """Parse `onnx_bytes` now, prove later: the verdict for `LoadedVariant.rows`.

    What the returned callable keeps is the graph without its weights' values.
    """
    import onnx

    try:
        model = drop_weights(onnx.load_model_from_string(onnx_bytes))
    except Exception as e:  # protobuf's DecodeError; the runtime loaded it, so rare
        verdict = RowIndependence(False, f"the graph could not be parsed ({type(e).__name__})")
        return lambda: verdict
    return lambda: check_row_independence(model)


def _static_shape(dims: list[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims[1:])


class OrtVariant:
    """A variant on onnxruntime's CPU execution provider."""

    def __init__(self, spec: VariantSpec, onnx_bytes: bytes, threads: int) -> None:
        ort = onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # fatal only: onnxruntime writes a failed run's message, input values and all, to stderr
        opts.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(
                onnx_bytes, opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime's own exception types
            # the type only: its text quotes the owner's node names and values
            raise InvalidModel(
                f"onnxruntime cannot load {spec.variant_id} ({type(e).__name__})"
            ) from e
        inp = self._session.get_inputs()[0]
        self.spec = spec
        self.input_name: str = inp.name
        self.input_shape = _static_shape(list(inp.shape))
        self.rows = _NOT_ANALYSED
        self._output = self._session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        batch = _check_batch(self, x)
        try:
            out = self._session.run([self._output], {self.input_name: batch})
        except Exception:  # onnxruntime's own types; the message quotes the input
            out = None
        if out is None:
            raise _failed(self, len(batch))
        return np.asarray(out[0])

    def close(self) -> None:
        self._session = None


class OpenVinoVariant:
    """A variant on OpenVINO's CPU plugin, with an explicit inference precision."""

    def __init__(self, spec: VariantSpec, onnx_bytes: bytes, threads: int) -> None:
        ov = openvino()
        core = ov.Core()
        # On an AMX CPU OpenVINO's default precision is bf16: an FP32 (and the
        # INT8 variant's non-quantized parts) must ask for f32 explicitly.
        hint = "bf16" if spec.precision is Precision.BF16 else "f32"
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads),
        }
        try:
            model = core.read_model(model=bytes(onnx_bytes), weights=b"")
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise InvalidModel(
                f"OpenVINO cannot load {spec.variant_id} ({type(e).__name__})"
            ) from e
        inp = self._compiled.input(0)
        self.spec = spec
        self.input_name = inp.get_any_name()
        self.input_shape = tuple(int(d.get_length()) for d in list(inp.get_partial_shape())[1:])
        self.rows = _NOT_ANALYSED
        self._lock = threading.Lock()
        self._idle: list[Any] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        batch = _check_batch(self, x)
        with self._lock:
            request = self._idle.pop() if self._idle else self._compiled.create_infer_request()
        out = None
        try:
            request.infer({0: batch})
            # the output tensor's memory belongs to the request, which is reused
            out = np.array(request.get_output_tensor(0).data, copy=True)
        except Exception:  # OpenVINO's RuntimeError; the message quotes the input
            pass
        finally:
            with self._lock:
                self._idle.append(request)
        if out is None:
            raise _failed(self, len(batch))
        return out

    def close(self) -> None:
        with self._lock:
            self._idle.clear()
        self._compiled = None


def load_variant(spec: VariantSpec, onnx_bytes: bytes, threads: int = 1) -> LoadedVariant:
    """A ready-to-run variant built from ONNX bytes in memory.

    Raises VariantUnsupported if this CPU cannot run the variant's precision on
    its backend (never silently falls back), InvalidModel if the backend cannot
    load the bytes.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    reason = unsupported_reason(spec)
    if reason is not None:
        raise VariantUnsupported(f"{spec.variant_id}: {reason}", variant_id=spec.variant_id)
    if spec.backend is Backend.ONNXRUNTIME:
        return OrtVariant(spec, onnx_bytes, threads)
    return OpenVinoVariant(spec, onnx_bytes, threads)
