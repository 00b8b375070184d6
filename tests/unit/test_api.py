"""The control-plane API through FastAPI's TestClient; only the worker handle is faked."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from api.app import create_app
from infaas.artifacts import MODEL_PART, VALIDATION_PART, ArtifactStore, artifact_name
from infaas.auth import TokenRegistry
from infaas.envelope import new_key, open_artifact, seal_artifact
from infaas.errors import Overloaded
from infaas.settings import Settings, load_settings
from infaas.store import MetadataStore, open_store
from infaas.wire import JobStatus
from tests.asgi import TestClient


@dataclass
class FakeWorker:
    """Stands in for the worker deployment's handle: records calls, answers status."""

    prepared: list[str] = field(default_factory=list)
    fail_with: Exception | None = None
    status_error: Exception | None = None

    async def prepare(self, model_id: str) -> JobStatus:
        self.prepared.append(model_id)
        await asyncio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        return JobStatus(model_id=model_id, state="ready")

    def status(self) -> dict[str, Any]:
        if self.status_error is not None:
            raise self.status_error
        return {"measurement": "ab" * 32, "requests_served": 3}


@dataclass
class Api:
    app: FastAPI
    http: TestClient
    store: MetadataStore
    artifacts: ArtifactStore
    worker: FakeWorker
    admin: dict[str, str]
    settings: Settings

    def as_(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def principal(self, path: str, body: dict[str, Any]) -> str:
        r = self.http.post(path, json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = load_settings(
        data_dir=tmp_path, store_url="memory://", max_request_bytes=4096, max_model_bytes=64 * 1024
    )
    store = open_store("memory://")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    tokens = TokenRegistry(store)
    worker = FakeWorker()
    app = create_app(
        settings,
        store=store,
        artifacts=artifacts,
        tokens=tokens,
        prepare=worker.prepare,
        worker_status=worker.status,
    )
    admin = {"Authorization": f"Bearer {tokens.issue('admin', 'admin')}"}
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Api(app, http, store, artifacts, worker, admin, settings)


DATA_KEY = new_key()


def registration(model_id: str = "digits-a", **over: Any) -> dict[str, Any]:
    key_id = over.pop("key_id", "dk1")
    artifact = over.pop("artifact", bytes(seal_artifact(DATA_KEY, key_id, model_id, b"onnx")))
    validation = over.pop(
        "validation",
        bytes(seal_artifact(DATA_KEY, key_id, f"{model_id}.validation", b"npz")),
    )
    body = {
        "model_id": model_id,
        "task": "digits",
        "architecture": "mlp",
        "input": {"name": "x", "shape": [64], "datatype": "FP32"},
        "num_classes": 10,
        "declared_accuracy": None,
        "key_id": key_id,
        "artifact": _b64(artifact),
        "validation": _b64(validation),
    }
    body.update(over)
    return body


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


def test_health_is_public_and_loud_about_the_simulated_tee(api: Api) -> None:
    r = api.http.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["simulated_tee"] is True and body["tee_backend"] == "simulated"
    assert "NOT CONFIDENTIAL" in body["detail"]["warning"]


def test_readyz_asks_the_worker(api: Api) -> None:
    r = api.http.get("/readyz")
    assert r.status_code == 200
    assert r.json()["detail"]["worker"] == "ready"
    assert r.json()["detail"]["worker.requests_served"] == "3"
    api.worker.status_error = RuntimeError("replica gone")
    r = api.http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "degraded"
    assert "replica gone" not in r.text


def test_readyz_without_workers_is_degraded(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, store_url="memory://")
    with TestClient(create_app(settings)) as http:
        r = http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"]["worker"] == "not deployed"


def test_openapi_documents_the_routes(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/v1/models", "/v1/jobs/{model_id}", "/v1/tasks", "/v1/tenants", "/readyz"):
        assert p in paths
    # the worker's and the key service's routes, and the Open Inference Protocol's
    infer = paths["/v1/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/InferRequest"
    )
    assert "problem+json" in str(infer["responses"]["default"])
    for p in ("/v1/keyservice/evidence", "/v1/keyservice/release", "/v1/keyservice/call"):
        assert p in paths
    for p in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
    ):
        assert p in paths, p
    assert set(doc["components"]["schemas"]) >= {"ModelMetadata", "InferResponse", "Envelope"}
    assert api.http.get("/docs").status_code == 200


def test_tenants_need_an_admin(api: Api) -> None:
    assert api.http.post("/v1/tenants", json={"tenant_id": "acme"}).json()["code"] == (
        "authentication_failed"
    )
    r = api.http.post(
        "/v1/tenants", json={"tenant_id": "acme"}, headers=api.as_("admin.wrong-secret")
    )
    assert r.status_code == 401
    r = api.http.post("/v1/tenants", json={"tenant_id": "acme"}, headers={"Authorization": "x"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    token = api.principal("/v1/tenants", {"tenant_id": "acme", "name": "Acme"})
    assert token.startswith("acme.")
    r = api.http.post("/v1/tenants", json={"tenant_id": "evil"}, headers=api.as_(token))
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    r = api.http.post("/v1/tenants", json={"tenant_id": "acme"}, headers=api.admin)
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    tenants = api.http.get("/v1/tenants", headers=api.admin).json()
    assert [t["tenant_id"] for t in tenants] == ["acme"]
    # only the hash of the token is stored
    assert (
        token.split(".", 1)[1].encode()
        not in json.dumps({k: v.decode() for k, v in api.store.token_records().items()}).encode()
    )


def test_register_model_stores_sealed_blobs_and_queues_preparation(api: Api) -> None:
    owner = api.principal("/v1/owners", {"owner_id": "zoo"})
    body = registration()
    r = api.http.post("/v1/models", json=body, headers=api.as_(owner))
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "queued"
    assert api.worker.prepared == ["digits-a"]
    # stored exactly as sealed; opens only with the owner's data key under its own name
    sealed = api.artifacts.get(artifact_name("zoo", "digits-a", MODEL_PART))
    assert bytes(open_artifact({"dk1": DATA_KEY}, "digits-a", sealed)) == b"onnx"
    val = api.artifacts.get(artifact_name("zoo", "digits-a", VALIDATION_PART))
    assert bytes(open_artifact({"dk1": DATA_KEY}, "digits-a.validation", val)) == b"npz"
    record = api.store.get_model("digits-a")
    assert record.owner == "zoo" and record.task == "digits"
    assert record.artifact_sha256 == hashlib.sha256(sealed).hexdigest()
    assert api.store.get_task("digits").input.shape == (64,)

    job = api.http.get("/v1/jobs/digits-a", headers=api.as_(owner))
    assert job.status_code == 200 and job.json()["model_id"] == "digits-a"
    tenant = api.principal("/v1/tenants", {"tenant_id": "t1"})
    info = api.http.get("/v1/models/digits-a", headers=api.as_(tenant)).json()
    assert info["model"]["model_id"] == "digits-a" and info["task"]["name"] == "digits"
    assert info["variants"] == [] and info["job"]["state"] == "queued"
    listed = api.http.get("/v1/models", headers=api.as_(tenant)).json()
    assert [m["model"]["model_id"] for m in listed] == ["digits-a"]
    assert api.http.get("/v1/models?task=images", headers=api.as_(tenant)).json() == []
    tasks = api.http.get("/v1/tasks", headers=api.as_(tenant)).json()
    assert [t["name"] for t in tasks] == ["digits"]
    # a tenant may not register models, nor read another owner's jobs
    r = api.http.post("/v1/models", json=registration("x2"), headers=api.as_(tenant))
    assert r.status_code == 403
    other = api.principal("/v1/owners", {"owner_id": "other"})
    assert api.http.get("/v1/jobs/digits-a", headers=api.as_(other)).status_code == 403


def test_registration_is_validated(api: Api) -> None:
    owner = api.as_(api.principal("/v1/owners", {"owner_id": "zoo"}))

    def post(body: Any, **kw: Any) -> Any:
        return api.http.post("/v1/models", json=body, headers=owner, **kw)

    r = post(registration(model_id="../etc"))
    assert r.status_code == 400 and r.json()["code"] == "invalid_input"
    assert "model_id" in r.json()["detail"]
    r = post(registration(input={"name": "x", "shape": [0], "datatype": "FP32"}))
    assert r.status_code == 400 and "input" in r.json()["detail"]
    r = post(registration(num_classes=1))
    assert r.status_code == 400 and "num_classes" in r.json()["detail"]
    r = post(registration(artifact=b"plain onnx bytes, not sealed"))
    assert r.status_code == 400 and r.json()["code"] == "invalid_model"
    wrong_kid = bytes(seal_artifact(DATA_KEY, "other", "digits-a", b"onnx"))
    r = post(registration(artifact=wrong_kid))
    assert r.status_code == 400 and "key id" in r.json()["detail"]
    r = api.http.post(
        "/v1/models",
        content=b'{"model_id": "x",',
        headers=owner | {"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = post(registration(extra_field=1))
    assert r.status_code == 400
    assert api.worker.prepared == []
    assert api.store.list_jobs() == []

    assert post(registration()).status_code == 202
    r = post(registration())
    assert r.status_code == 409 and "already registered" in r.json()["detail"]
    # the first model of a task fixes its signature
    r = post(registration("digits-b", num_classes=11))
    assert r.status_code == 409 and "task 'digits'" in r.json()["detail"]
    assert not api.artifacts.exists(artifact_name("zoo", "digits-b", MODEL_PART))
    assert len(list(api.artifacts.root.glob("*.sealed"))) == 2  # digits-a's, nothing else
    r = post(registration("digits-c", input={"name": "x", "shape": [8, 8], "datatype": "FP32"}))
    assert r.status_code == 409


def test_oversized_bodies_get_413(api: Api) -> None:
    owner = api.as_(api.principal("/v1/owners", {"owner_id": "zoo"}))
    big = bytes(seal_artifact(DATA_KEY, "dk1", "digits-a", b"\0" * 100_000))
    r = api.http.post("/v1/models", json=registration(artifact=big), headers=owner)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    # everything else obeys settings.max_request_bytes (4096 here)
    r = api.http.post("/v1/tenants", json={"tenant_id": "a", "name": "n" * 5000}, headers=api.admin)
    assert r.status_code == 413
    assert r.json()["limit_bytes"] == 4096

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    r = api.http.post("/v1/tenants", content=chunks(), headers=api.admin)
    assert r.status_code == 413
    assert api.http.get("/healthz").status_code == 200


def test_a_failed_preparation_marks_the_job(api: Api) -> None:
    from infaas.errors import InvalidModel

    owner = api.as_(api.principal("/v1/owners", {"owner_id": "zoo"}))
    api.worker.fail_with = InvalidModel("not an ONNX model")
    assert api.http.post("/v1/models", json=registration(), headers=owner).status_code == 202
    for _ in range(100):
        job = api.http.get("/v1/jobs/digits-a", headers=owner).json()
        if job["state"] == "failed":
            break
    assert job["state"] == "failed"
    assert "invalid_model: not an ONNX model" in job["message"]

    api.worker.fail_with = RuntimeError("secret-ish internal detail")
    assert api.http.post("/v1/models", json=registration("digits-b"), headers=owner).status_code
    for _ in range(100):
        job = api.http.get("/v1/jobs/digits-b", headers=owner).json()
        if job["state"] == "failed":
            break
    assert job["state"] == "failed" and "secret-ish" not in job["message"]


def test_unknown_things_are_404_problems(api: Api) -> None:
    tenant = api.as_(api.principal("/v1/tenants", {"tenant_id": "t"}))
    r = api.http.get("/v1/models/nope", headers=tenant)
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"
    r = api.http.get("/v1/no-such-route")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_error_handler_shapes(api: Api) -> None:
    @api.app.get("/test/overloaded")
    def overloaded() -> None:
        raise Overloaded("queue full", retry_after_s=2.5)

    @api.app.get("/test/crash")
    def crash() -> None:
        raise RuntimeError("do not leak this")

    r = api.http.get("/test/overloaded")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "/problems/overloaded",
        "title": "Overloaded",
        "status": 503,
        "detail": "queue full",
        "code": "overloaded",
        "retry_after_s": 2.5,
    }
    # the type resolves on the service
    kind = api.http.get("/problems/overloaded").json()
    assert kind["status"] == 503 and kind["title"] == "Overloaded"
    assert api.http.get("/problems/nope").json()["code"] == "not_found"
    r = api.http.put("/v1/tasks")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert r.headers["content-type"] == "application/problem+json"
    r = api.http.get("/test/crash")
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    assert "leak" not in r.text


def _task_with_variants(api: Api) -> None:
    from infaas.types import (
        Backend,
        ModelRecord,
        Precision,
        Quantization,
        Task,
        TensorSpec,
        VariantSpec,
    )

    spec = TensorSpec(name="input", shape=(64,), datatype="FP32")
    api.store.put_task(Task(name="digits", input=spec, num_classes=10))
    api.store.put_model(
        ModelRecord(
            model_id="m",
            task="digits",
            architecture="mlp",
            artifact_sha256="0" * 64,
            size_bytes=1,
            num_parameters=0,
        )
    )
    for precision, quantization in [
        (Precision.FP32, Quantization.NONE),
        (Precision.INT8, Quantization.STATIC_QDQ),
    ]:
        api.store.put_variant(
            VariantSpec(
                variant_id=f"m.{precision.value}.openvino",
                model_id="m",
                task="digits",
                architecture="mlp",
                precision=precision,
                backend=Backend.OPENVINO,
                quantization=quantization,
            )
        )


def test_oip_v2_health_and_metadata(api: Api) -> None:
    _task_with_variants(api)
    tenant = api.as_(api.principal("/v1/tenants", {"tenant_id": "t"}))
    assert api.http.get("/v2").json() == {"name": "infaas", "version": "0.1.0", "extensions": []}
    assert api.http.get("/v2/health/live").json() == {"live": True}
    assert api.http.get("/v2/health/ready").json() == {"ready": True}
    api.worker.status_error = RuntimeError("replica gone")
    assert api.http.get("/v2/health/ready").status_code == 503
    api.worker.status_error = None

    meta = api.http.get("/v2/models/digits", headers=tenant).json()
    assert meta == {
        "name": "digits",
        "versions": ["m.fp32.openvino", "m.int8.openvino"],
        "platform": "infaas",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    pinned = api.http.get("/v2/models/digits/versions/m.int8.openvino", headers=tenant).json()
    assert pinned["versions"] == ["m.int8.openvino"]
    # metadata needs a token, as /v1/tasks does
    assert api.http.get("/v2/models/digits").status_code == 401
    # no variant profiled yet: not ready
    r = api.http.get("/v2/models/digits/ready", headers=tenant)
    assert r.status_code == 503 and r.json() == {"name": "digits", "ready": False}


def test_oip_v2_errors_are_problems_a_triton_client_reads(api: Api) -> None:
    _task_with_variants(api)
    tenant = api.as_(api.principal("/v1/tenants", {"tenant_id": "t"}))
    for path, code in [
        ("/v2/models/nope", "not_found"),
        ("/v2/models/digits/versions/other", "variant_not_found"),
        ("/v2/models/nope/ready", "not_found"),
    ]:
        r = api.http.get(path, headers=tenant)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["code"] == code and body["error"] == body["detail"]
    # tensors in the clear are refused, whatever the model, pointing at the proxy
    r = api.http.post("/v2/models/digits/infer", json={"inputs": []})
    assert r.status_code == 400 and r.json()["code"] == "sealing_required"
    assert "infaas proxy" in r.json()["error"]
    r = api.http.post("/v2/models/digits/versions/m.fp32.openvino/infer", content=b"x")
    assert r.json()["code"] == "sealing_required"
    # the /v1 problems do not carry the OIP member
    assert "error" not in api.http.get("/v1/models/nope", headers=tenant).json()
