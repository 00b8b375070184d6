"""A malicious model owner's deployment: graphs that mix, grow or break a batch, served for real.

The owner ``mallory`` registers each graph below for the task ``rows`` (four
FP32 features in, four logits out) and grants it to ``victim`` (who accepted
mallory's models), to ``bystander`` and to its own tenant ``mallory-t``. Every
graph is added the way preparation leaves a variant: sealed under the model's
data key, with a spec and a profile, and served by a real `WorkerRuntime` of
the shared kind of deployment (tests/deployment.py) whose batches wait 200 ms
for company, so requests sent together share a batch whenever the worker lets
them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from enclave_workers.runtime import WorkerRuntime
from infaas.attestation import SimulatedPlatformCA
from infaas.errors import InfaasError
from infaas.types import (
    Backend,
    BatchLatency,
    LatencyModel,
    ModelRecord,
    Precision,
    Profile,
    Task,
    TensorSpec,
    VariantSpec,
)
from infaas.wire import InferRequest, InferResponse
from infaas.zoo import IR_VERSION, OPSET
from tests.deployment import Deployment
from variants._telemetry import onnxruntime
from variants.row_independence import RowIndependence

FEATURES = 4
TASK = Task(name="rows", input=TensorSpec(name="x", shape=(FEATURES,)), num_classes=FEATURES)
OWNER, VICTIM, ATTACKER, BYSTANDER = "mallory", "victim", "mallory-t", "bystander"
TABLE = np.arange(10 * FEATURES, dtype=np.float32).reshape(10, FEATURES) + 0.5
"""The lookup model's table: row k is what index k returns."""
BATCH_WAIT_MS = 200.0


def _i64(*v: int) -> Any:
    return np.array(v, dtype=np.int64)


def _graph(nodes: list[Any], inits: dict[str, np.ndarray], out: int = TensorProto.FLOAT) -> bytes:
    graph = helper.make_graph(
        nodes,
        "owner-graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", out, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return bytes(model.SerializeToString())


def rotate() -> bytes:
    """Output row i is input row i+1: a co-batched tenant's row, same shape as honest."""
    return _graph(
        [
            helper.make_node("Slice", ["x", "one", "end", "axis0"], ["tail"]),
            helper.make_node("Slice", ["x", "zero", "one", "axis0"], ["head"]),
            helper.make_node("Concat", ["tail", "head"], ["logits"], axis=0),
        ],
        {"zero": _i64(0), "one": _i64(1), "end": _i64(1 << 30), "axis0": _i64(0)},
    )


def gram() -> bytes:
    """(x x^T) x: the input as MatMul's second operand; row i sums every row j."""
    return _graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "xt"], ["g"]),
            helper.make_node("MatMul", ["g", "x"], ["logits"]),
        ],
        {},
    )


def extra_row() -> bytes:
    """A constant row on top: n+1 rows, so slicing by position shifts every row by one."""
    return _graph(
        [helper.make_node("Concat", ["pad", "x"], ["logits"], axis=0)],
        {"pad": np.zeros((1, FEATURES), np.float32)},
    )


def float64() -> bytes:
    """The right shape in the wrong dtype."""
    return _graph(
        [helper.make_node("Cast", ["x"], ["logits"], to=TensorProto.DOUBLE)], {}, TensorProto.DOUBLE
    )


def lookup() -> bytes:
    """Row i is TABLE[int(x[i, 0])]: proven row-independent; an index out of range fails the
    run, and onnxruntime's message quotes the index."""
    return _graph(
        [
            helper.make_node("Slice", ["x", "zero", "one", "axis1"], ["first"]),
            helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["rows"], axis=0),
            helper.make_node("Squeeze", ["rows", "axis1"], ["logits"]),
        ],
        {"table": TABLE, "zero": _i64(0), "one": _i64(1), "axis1": _i64(1)},
    )


def lying_swap() -> bytes:
    """Output row 2k is input row 2k+1, verbatim: two Reshapes merge and split row pairs,
    and the owner's value_info claims per-row sizes (8, then 4) that hide it."""
    swap = np.zeros((2 * FEATURES, 2 * FEATURES), np.float32)
    for i in range(FEATURES):
        swap[i, FEATURES + i] = swap[FEATURES + i, i] = 1
    model = onnx.load_model_from_string(
        _graph(
            [
                helper.make_node("Shape", ["x"], ["sh"]),
                helper.make_node("Gather", ["sh", "one"], ["w"], axis=0),
                helper.make_node("Slice", ["x", "zero", "w", "one"], ["t"]),
                helper.make_node("Reshape", ["t", "pairs"], ["r"]),
                helper.make_node("MatMul", ["r", "swap"], ["rp"]),
                helper.make_node("Shape", ["rp"], ["sh2"]),
                helper.make_node("Gather", ["sh2", "one"], ["w2"], axis=0),
                helper.make_node("Slice", ["rp", "zero", "w2", "one"], ["rp2"]),
                helper.make_node("Reshape", ["rp2", "rows"], ["logits"]),
            ],
            {
                "zero": _i64(0),
                "one": _i64(1),
                "pairs": _i64(-1, 2 * FEATURES),
                "rows": _i64(-1, FEATURES),
                "swap": swap,
            },
        )
    )
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 2 * FEATURES]),
            helper.make_tensor_value_info("rp2", TensorProto.FLOAT, ["m", FEATURES]),
        ]
    )
    return bytes(model.SerializeToString())


MODELS: dict[str, Callable[[], bytes]] = {
    "rotate": rotate,
    "gram": gram,
    "extra-row": extra_row,
    "float64": float64,
    "lookup": lookup,
    "lying-swap": lying_swap,
}


def variant(model: str) -> str:
    return f"mallory-{model}.fp32.onnxruntime"


def run_alone(model: str, x: np.ndarray) -> np.ndarray:
    """What the graph computes on `x` by itself (onnxruntime, no worker)."""
    session = onnxruntime().InferenceSession(MODELS[model](), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def owner_deployment(ca: SimulatedPlatformCA, data_dir: Path) -> Deployment:
    """The deployment of the module docstring, its worker started."""
    dep = Deployment.create(ca, data_dir)
    dep.add_owner(OWNER)
    model_ids = []
    for name, build in MODELS.items():
        onnx_bytes = build()
        model_id = f"mallory-{name}"
        record = ModelRecord(
            model_id=model_id,
            task=TASK.name,
            architecture=name,
            owner=OWNER,
            artifact_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            size_bytes=len(onnx_bytes),
            num_parameters=0,
        )
        x = np.zeros((2, FEATURES), np.float32)
        dep.register_model(OWNER, record, TASK, onnx_bytes, x, None)
        dep.add_variant(
            VariantSpec(
                variant_id=variant(name),
                model_id=model_id,
                task=TASK.name,
                architecture=name,
                precision=Precision.FP32,
                backend=Backend.ONNXRUNTIME,
                max_batch=8,
            ),
            Profile(
                variant_id=variant(name),
                batches=(BatchLatency(batch=1, p50_ms=0.05, p99_ms=0.1, throughput_rps=20_000),),
                load_ms=1.0,
                peak_memory_bytes=1 << 20,
                accuracy=0.9,
                accuracy_kind="validation",
                latency_model=LatencyModel(intercept_ms=0.05, slope_ms=0.0),
                threads=1,
            ),
            onnx_bytes,
        )
        model_ids.append(model_id)
    for tenant in (VICTIM, ATTACKER, BYSTANDER):
        dep.add_tenant(tenant, owner=OWNER, grant=tuple(model_ids))
    dep.start_worker(batch_wait_ms=BATCH_WAIT_MS)
    return dep


Sent = tuple[str, InferRequest]


def send_together(
    dep: Deployment, runtime: WorkerRuntime, sends: list[tuple[str, str, np.ndarray]]
) -> list[tuple[Sent, InferResponse | InfaasError]]:
    """Each (tenant, model, rows) sealed by its tenant and sent at once; answers in order."""
    sent = [(t, dep.request(t, x, variant_id=variant(m))) for t, m, x in sends]

    async def go() -> list[Any]:
        calls = [runtime.infer(req, dep.api_tokens[t]) for t, req in sent]
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(go())
    for a in answers:
        if not isinstance(a, InferResponse | InfaasError):
            raise a
    return list(zip(sent, answers, strict=True))


def opened(dep: Deployment, sent: Sent, answer: InferResponse | InfaasError) -> np.ndarray:
    """The tenant's own view of a served answer (fails the test on a refusal)."""
    assert isinstance(answer, InferResponse), answer
    tenant, req = sent
    return dep.outputs(tenant, req, answer)


def warm(dep: Deployment, runtime: WorkerRuntime, models: list[str]) -> dict[str, RowIndependence]:
    """Load `models`, fetch every tenant's key for them (so later sends start together) and
    wait for each one's row-independence proof; the verdicts."""
    for model in models:
        for tenant in (VICTIM, ATTACKER, BYSTANDER):
            x = np.ones((1, FEATURES), np.float32)
            send_together(dep, runtime, [(tenant, model, x)])
    return {m: runtime.host.proofs[variant(m)].result(timeout=60) for m in models}
