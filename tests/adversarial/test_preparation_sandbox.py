"""A model owner's bomb fails its own preparation; the worker serves and prepares on.

Each graph is what a malicious owner would upload: it passes admission (only
standard operators, weights inside the model, ONNX's checker), it is tiny on
the wire, and preparing it would take the worker down: a ``ConstantOfShape``
or ``Expand`` whose output is gigabytes (onnxruntime folds constants when it
builds a session, OpenVINO when it compiles), a ``Loop`` with a trip count of
2**62. The worker prepares models in a child process under a resident-memory
and a wall-time limit (`enclave_workers.sandbox`); the limits here are small so
that each bomb hits its limit within seconds. The test fails if the bomb takes
the worker (this process) with it, if the job does not say which limit it hit,
if anything of the bomb is registered, or if the worker stops serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from enclave_workers.preparation import PreparationOptions
from enclave_workers.runtime import WorkerRuntime
from infaas.artifacts import MODEL_PART, VALIDATION_PART, artifact_name
from infaas.errors import PreparationLimitExceeded, error_from_code
from infaas.types import BatchLatency, LatencyModel, ModelRecord, Profile, VariantSpec
from infaas.wire import JobStatus
from infaas.zoo import Manifest, load_model_bytes
from profiler.profile import ProfileOptions
from tests.deployment import Deployment
from tests.zoo_fixtures import entry
from variants.admission import validate_model

N_IN, N_OUT = 64, 10  # the digits task the deployment serves
BOMB_ROWS = 1 << 28  # 2**28 x 10 float32 = 10 GiB if it were ever filled
MEMORY_LIMIT = 768 * 2**20
TIME_LIMIT_S = 3.0
# the memory bombs' time limit: far above what reaching the bomb takes on a busy host
MEMORY_BOMB_TIME_LIMIT_S = 120.0

QUICK = ProfileOptions(batch_sizes=(1, 2), warmup_runs=0, min_runs=2, min_time_s=0.0)


def _digits_model(nodes: list, inits: list, extra_outputs: str = "logits") -> bytes:
    graph = helper.make_graph(
        nodes,
        "owner-graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info(extra_outputs, TensorProto.FLOAT, ["batch", N_OUT])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _projection() -> tuple[list, list]:
    """x @ W: the honest-looking part every bomb hangs off."""
    w = numpy_helper.from_array(np.ones((N_IN, N_OUT), np.float32), "w")
    return [helper.make_node("MatMul", ["x", "w"], ["h"])], [w]


def constant_of_shape_bomb() -> bytes:
    """logits = x @ W + sum over a [2**28, 10] tensor of ones (folded at session creation)."""
    nodes, inits = _projection()
    shape = numpy_helper.from_array(np.array([BOMB_ROWS, N_OUT], np.int64), "bomb_shape")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes += [
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["big"], value=one),
        helper.make_node("ReduceSum", ["big", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["h", "s"], ["logits"]),
    ]
    return _digits_model(nodes, [*inits, shape, axes])


def expand_bomb() -> bytes:
    """logits = x @ W + sum over a scalar expanded to [2**28, 10]."""
    nodes, inits = _projection()
    shape = numpy_helper.from_array(np.array([BOMB_ROWS, N_OUT], np.int64), "bomb_shape")
    scalar = numpy_helper.from_array(np.array([0.5], np.float32), "scalar")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes += [
        helper.make_node("Expand", ["scalar", "bomb_shape"], ["big"]),
        helper.make_node("ReduceSum", ["big", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["h", "s"], ["logits"]),
    ]
    return _digits_model(nodes, [*inits, shape, scalar, axes])


def loop_bomb() -> bytes:
    """logits = x @ W, then 2**62 iterations adding zero (runs at the first inference)."""
    nodes, inits = _projection()
    trip = numpy_helper.from_array(np.array(1 << 62, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    zero = numpy_helper.from_array(np.zeros((1, N_OUT), np.float32), "zero")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["h_in", "zero"], ["h_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", N_OUT]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", N_OUT]),
        ],
    )
    nodes += [helper.make_node("Loop", ["trip", "cond", "h"], ["logits"], body=body)]
    return _digits_model(nodes, [*inits, trip, cond, zero])


def _record(model_id: str, onnx: bytes) -> ModelRecord:
    import hashlib

    return ModelRecord(
        model_id=model_id,
        task="digits",
        architecture="owner-graph",
        owner="mallory",
        artifact_sha256=hashlib.sha256(onnx).hexdigest(),
        size_bytes=len(onnx),
        num_parameters=N_IN * N_OUT,
    )


def _register(dep: Deployment, record: ModelRecord, onnx: bytes) -> None:
    """Seal and register `record` as its owner would, leaving the deployment's own model be."""
    kept = dep.onnx, dep.x, dep.y, dep.task
    task = dep.store.get_task("digits")
    y = None if dep.y is None else dep.y[:64]
    dep.register_model("mallory", record, task, onnx, dep.x[:64], y)
    dep.onnx, dep.x, dep.y, dep.task = kept


@pytest.fixture(scope="module")
def mallory(deployment: Deployment) -> Deployment:
    deployment.add_owner("mallory")
    return deployment


@contextlib.contextmanager
def limited_worker(dep: Deployment, time_limit_s: float) -> Iterator[WorkerRuntime]:
    """A second worker replica of the deployment, preparing under small limits."""
    prep = PreparationOptions(
        pool="cpu",
        max_batch=2,
        profile=QUICK,
        validation_samples=32,
        calibration_samples=8,
        memory_limit_bytes=MEMORY_LIMIT,
        time_limit_s=time_limit_s,
    )
    runtime = dep.new_worker(preparation=prep)
    try:
        yield runtime
    finally:
        asyncio.run(runtime.close())


def _serve(dep: Deployment, runtime: WorkerRuntime) -> None:
    req = dep.request("acme", dep.x[:2])
    resp = asyncio.run(runtime.infer(req, dep.api_tokens["acme"]))
    assert dep.outputs("acme", req, resp).shape == (2, N_OUT)


MEMORY = f"memory limit of {MEMORY_LIMIT // 2**20} MiB"


@pytest.mark.parametrize(
    ("bomb", "time_limit_s", "says"),
    [
        (constant_of_shape_bomb, MEMORY_BOMB_TIME_LIMIT_S, MEMORY),
        (expand_bomb, MEMORY_BOMB_TIME_LIMIT_S, MEMORY),
        (loop_bomb, TIME_LIMIT_S, f"time limit of {TIME_LIMIT_S:g} s"),
    ],
)
def test_a_bomb_fails_its_own_job_while_the_worker_serves(
    mallory: Deployment, bomb: Callable[[], bytes], time_limit_s: float, says: str
) -> None:
    model_id = f"bomb-{bomb.__name__.replace('_', '-')}"
    onnx = bomb()
    assert len(onnx) < 4096  # tiny on the wire: no upload limit stops it
    validate_model(onnx)  # and admissible: only the sandbox's limits stop it
    before = {p.name for p in mallory.artifacts.root.iterdir()}
    _register(mallory, _record(model_id, onnx), onnx)
    jobs: list[JobStatus] = []
    with limited_worker(mallory, time_limit_s) as worker:
        preparing = threading.Thread(target=lambda: jobs.append(worker.prepare_model(model_id)))
        preparing.start()
        served = 0
        while preparing.is_alive():
            _serve(mallory, worker)  # the same worker answers honest tenants meanwhile
            served += 1
        preparing.join()
        _serve(mallory, worker)
    job = jobs[0]
    assert job.state == "failed"
    assert job.code == PreparationLimitExceeded.code
    assert says in job.message, job.message
    assert isinstance(error_from_code(job.code, job.message), PreparationLimitExceeded)
    assert served >= 1
    assert mallory.store.list_variants(model_id=model_id) == []
    stored = {p.name for p in mallory.artifacts.root.iterdir()} - before
    uploaded = {
        f"{artifact_name('mallory', model_id, p)}.sealed" for p in (MODEL_PART, VALIDATION_PART)
    }
    assert stored == uploaded  # the upload only


def test_the_worker_prepares_the_next_model_after_a_bomb(
    mallory: Deployment, small_manifest: Manifest, small_zoo: Path
) -> None:
    onnx = constant_of_shape_bomb()
    _register(mallory, _record("bomb-then-honest", onnx), onnx)
    honest = load_model_bytes(small_zoo, entry(small_manifest, "digits-logreg"))
    _register(mallory, _record("honest-after-bomb", honest), honest)
    # the limits that stop the bomb are limits an honest model passes
    with limited_worker(mallory, MEMORY_BOMB_TIME_LIMIT_S) as worker:
        assert worker.prepare_model("bomb-then-honest").code == PreparationLimitExceeded.code
        job = worker.prepare_model("honest-after-bomb")
        assert job.state == "ready", job.message
        assert len(mallory.store.list_variants(model_id="honest-after-bomb")) >= 3
        _serve(mallory, worker)


def test_the_limits_are_settings() -> None:
    from infaas.settings import Settings

    settings = Settings(
        store_url="memory://",
        preparation={"memory_limit_bytes": 2**30, "time_limit_s": 30.0},
    )
    options = PreparationOptions.from_settings(settings)
    assert (options.memory_limit_bytes, options.time_limit_s) == (2**30, 30.0)
    assert replace(options, time_limit_s=1.0).limits.time_limit_s == 1.0
    with pytest.raises(ValueError, match="memory_limit_bytes"):
        Settings(store_url="memory://", preparation={"memory_limit_bytes": 1024})


def _reply(spec: VariantSpec, digest: str) -> dict[str, object]:
    profile = Profile(
        variant_id=spec.variant_id,
        pool=spec.pool,
        batches=(BatchLatency(batch=1, p50_ms=1.0, p99_ms=1.0, throughput_rps=1000.0),),
        load_ms=1.0,
        peak_memory_bytes=1,
        accuracy=0.99,
        accuracy_kind="validation",
        latency_model=LatencyModel(intercept_ms=0.0, slope_ms=1.0),
        threads=1,
    )
    return {
        "kind": "variant",
        "spec": spec.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "sha256": digest,
    }


def test_a_subverted_child_cannot_register_what_it_was_not_asked_for() -> None:
    """A child the graph took over can lie only within the model it prepares: a variant of
    another model, a graph it never sent, a second copy or an endless stream are refused."""
    import hashlib

    from enclave_workers.preparation import _Collected
    from infaas.types import Backend, Precision, Quantization
    from variants.generate import VARIANT_KINDS, variant_spec

    weights = bytearray(b"mallory's own graph")
    mine = _record("mallory-model", bytes(weights))
    options = PreparationOptions("cpu", 8, QUICK, 32, 8)
    got = _Collected(mine, options, weights)
    own = hashlib.sha256(weights).hexdigest()
    fp32 = (Precision.FP32, Backend.ONNXRUNTIME, Quantization.NONE)
    victim = _record("victim-model", b"x")
    for spec in (
        variant_spec(victim, *fp32),  # another owner's model
        variant_spec(mine, *fp32).model_copy(update={"variant_id": "victim-model.fp32.x"}),
        variant_spec(mine, *fp32, pool="gpu"),  # a pool it does not run on
    ):
        with pytest.raises(ValueError, match="not one of this model's"):
            got.take(_reply(spec, own), None)
    with pytest.raises(ValueError, match="not one of this model's"):  # a graph never sent
        got.take(_reply(variant_spec(mine, *fp32), "0" * 64), None)
    got.take(_reply(variant_spec(mine, *fp32), own), None)
    with pytest.raises(ValueError, match="twice"):
        got.take(_reply(variant_spec(mine, *fp32), own), None)
    for i in range(len(VARIANT_KINDS)):
        got.take({"kind": "blob"}, bytearray(b"graph %d" % i))
    with pytest.raises(ValueError, match="more variant graphs"):
        got.take({"kind": "blob"}, bytearray(b"one too many"))
    with pytest.raises(ValueError, match="count variants"):
        got.take({"kind": "progress", "done": 10**9, "total": 1}, None)
    assert [s.variant_id for s, _, _ in got.variants] == ["mallory-model.fp32.onnxruntime"]
