"""Structured logs, the dashboard's JSON and /metrics carry metadata, never plaintext or keys.

A real `WorkerRuntime` of the shared test deployment (tests/deployment.py: in
process, simulated TEE, in-process key service) serves a tiny sealed model to
two tenants: good requests whose input is a recognisable float pattern, and
refused ones (infeasible SLO, another tenant's key, a replay, a wrong API
token). Every log record of every logger, at DEBUG, goes through the JSON
formatter the entry points install; the telemetry is flushed and the control
plane's dashboard data and ``/metrics`` are fetched. All of that text is then
scanned for the input, the outputs, the weights, the tenants' request keys, the
model's data key and the API tokens: raw, hex and base64 (both alphabets, every
alignment). A positive control proves the scan finds them, and the request log
lines are checked to carry the metadata.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from api.app import create_app
from infaas.attestation import SimulatedPlatformCA
from infaas.envelope import open_response, seal_request
from infaas.errors import InfaasError
from infaas.protocol import decode_response, encode_request
from infaas.telemetry.flusher import Flusher
from infaas.telemetry.recorder import request_log
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
from infaas.wire import InferRequest
from infaas.zoo import IR_VERSION, OPSET
from tests.asgi import TestClient
from tests.deployment import Deployment
from tests.security.markers import encodings

N_IN, N_OUT = 16, 4
MODEL, TASK = "logs-model", "logs-task"
VARIANT = f"{MODEL}.fp32.onnxruntime"
WEIGHTS = (4242.0 + np.arange(N_IN * N_OUT, dtype=np.float32) / 16).reshape(N_IN, N_OUT)
INPUT = (27182.8125 + np.arange(N_IN, dtype=np.float32) / 32).reshape(1, N_IN)


def _chunks(data: bytes, size: int = 24) -> set[bytes]:
    return {f for i in range(0, len(data) - size + 1, 8) for f in encodings(data[i : i + size])}


def marker_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logits"])],
        "logs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_OUT])],
        [
            numpy_helper.from_array(WEIGHTS, "W"),
            numpy_helper.from_array(np.zeros(N_OUT, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    data: bytes = model.SerializeToString()
    return data


World = Deployment


@pytest.fixture(scope="module")
def world(
    platform_ca: SimulatedPlatformCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The shared kind of deployment (tests/deployment.py) serving the marker model."""
    dep = Deployment.create(platform_ca, tmp_path_factory.mktemp("logs"))
    dep.add_owner("logs-owner")
    onnx_bytes = marker_model()
    onnx.checker.check_model(onnx.load_model_from_string(onnx_bytes))
    dep.register_model(
        "logs-owner",
        ModelRecord(
            model_id=MODEL,
            task=TASK,
            architecture="gemm",
            artifact_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            size_bytes=len(onnx_bytes),
            num_parameters=N_IN * N_OUT,
        ),
        Task(name=TASK, input=TensorSpec(name="x", shape=(N_IN,)), num_classes=N_OUT),
        onnx_bytes,
        INPUT,
        None,
    )
    dep.add_variant(
        VariantSpec(
            variant_id=VARIANT,
            model_id=MODEL,
            task=TASK,
            architecture="gemm",
            precision=Precision.FP32,
            backend=Backend.ONNXRUNTIME,
            max_batch=8,
        ),
        Profile(
            variant_id=VARIANT,
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
    for tenant in ("alice", "bob"):
        dep.add_tenant(tenant, owner="logs-owner", grant=(MODEL,))
    dep.api_tokens["admin"] = dep.tokens.issue("admin", "admin")
    dep.start_worker()
    yield dep
    dep.close()


@pytest.fixture(scope="module")
def secrets(world: World) -> dict[str, set[bytes]]:
    """What must never show: plaintext (raw and decimal), weights, keys and tokens."""
    out = INPUT @ WEIGHTS
    return {
        "input": _chunks(INPUT.tobytes()),
        "input (decimal)": {b"27182.84375", b"27182.875"},
        "output": _chunks(out.astype(np.float32).tobytes()),
        "output (decimal)": {repr(float(v)).encode() for v in out.ravel()[:3]},
        "weights": _chunks(WEIGHTS.tobytes()),
        "model data key": encodings(world.model_keys[MODEL]),
        "request keys": {f for k in world.tenant_keys.values() for f in encodings(k)},
        "API tokens": {t.rpartition(".")[2].encode() for t in world.api_tokens.values()},
        "key service tokens": {t.rpartition(":")[2].encode() for t in world.ks_tokens.values()},
    }


def _request(w: World, tenant: str, *, key_of: str | None = None, **slo: float) -> InferRequest:
    rid = str(uuid.uuid4())
    body, header_length = encode_request({"x": INPUT}, request_id=rid, binary=True)
    env = seal_request(
        {f"{tenant}-k1": w.tenant_keys[key_of or tenant]},
        body,
        header_length=header_length,
        tenant=tenant,
        task=TASK,
        latency_ms=slo.get("latency_ms", 1000.0),
        min_accuracy=slo.get("min_accuracy", 0.0),
        request_id=rid,
    )
    return InferRequest(envelope=env)


def _scan(text: bytes, forms: dict[str, set[bytes]]) -> list[str]:
    return sorted(what for what, fs in forms.items() if any(f in text for f in fs))


def test_the_scan_finds_secrets_where_they_are(
    world: World, secrets: dict[str, set[bytes]]
) -> None:
    planted = (
        b"in "
        + base64.b64encode(b"z" + INPUT.tobytes())
        + b" key "
        + world.tenant_keys["bob"].hex().encode()
    )
    assert _scan(planted, secrets) == ["input", "request keys"]


def test_logs_dashboard_and_metrics_hold_no_plaintext_or_keys(
    world: World, secrets: dict[str, set[bytes]], json_logs: io.StringIO
) -> None:
    rt = world.runtime

    async def traffic() -> None:
        for tenant in ("alice", "bob"):
            req = _request(world, tenant)
            resp = await rt.infer(req, world.api_tokens[tenant])
            plain = open_response(
                resp.envelope,
                {f"{tenant}-k1": world.tenant_keys[tenant]},
                request_id=req.envelope.request_id,
                tenant=tenant,
            )
            got = decode_response(bytes(plain), resp.envelope.header_length)[1]["logits"]
            np.testing.assert_allclose(got, INPUT @ WEIGHTS, rtol=1e-5)
            with pytest.raises(InfaasError):  # replay
                await rt.infer(req, world.api_tokens[tenant])
        refused = [
            (_request(world, "alice", min_accuracy=0.99), "alice"),  # infeasible
            (_request(world, "alice", key_of="bob"), "alice"),  # another tenant's key
            (_request(world, "alice"), "bob"),  # bob's API token, alice's envelope
        ]
        for req, token_of in refused:
            with pytest.raises(InfaasError):
                await rt.infer(req, world.api_tokens[token_of])

    asyncio.run(traffic())
    Flusher(world.store, rt.telemetry, status=rt.status).flush()
    app = create_app(world.settings, store=world.store)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {world.api_tokens['admin']}"}
    pages = [
        client.get(f"/dashboard/api/{name}", headers=auth)
        for name in ("overview", "models", "traffic", "autoscaler", "tenants")
    ]
    metrics = client.get("/metrics", headers=auth)

    assert all(p.status_code == 200 for p in pages) and metrics.status_code == 200
    logs = json_logs.getvalue()
    lines = [json.loads(line) for line in logs.splitlines()]
    requests = [r for r in lines if r["logger"] == request_log.name]
    served = [r for r in requests if r["msg"] == "served"]
    refused = [r for r in requests if r["msg"] == "refused"]
    assert {r["tenant"] for r in served} == {"alice", "bob"} and len(refused) >= 5
    for r in served:
        assert r["variant"] == VARIANT and r["task"] == TASK and r["decision_ms"] >= 0
        assert len(r["request_id"]) == 36 and isinstance(r["latency_ms"], float)
    assert {"no_feasible_variant", "replayed_request"} <= {r["code"] for r in refused}
    # the dashboard and the metrics did see this traffic (so the scan below means something)
    assert any(
        line.startswith("infaas_requests_total{")
        and 'task="logs-task"' in line
        and 'tenant="alice"' in line
        for line in metrics.text.splitlines()
    )
    assert VARIANT in pages[1].text and "alice" in pages[4].text

    everything = (logs + "".join(p.text for p in pages) + metrics.text).encode()
    assert _scan(everything, secrets) == [], "secrets or plaintext in logs/dashboard/metrics"
