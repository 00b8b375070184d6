"""The host rewrites what the worker believes or what the caller reads; nothing it writes is used.

Each test acts as the host would: it edits the worker's SQLite database with
``sqlite3`` (raising an INT8 variant's accuracy, copying a genuine profile onto
another variant), or sits on the path between the caller and the worker as a
proxy that rewrites the request's pins or the answer's fields. The worker
must refuse the forged profiles (and say so) and keep serving from the genuine
ones; the worker must refuse a re-pinned request; the client must refuse an
answer whose claims were rewritten, or that does not meet its pin and floor.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.types import Receive, Scope, Send

from enclave_workers.endpoint import serve_app
from enclave_workers.preparation import validation_artifact
from enclave_workers.runtime import WorkerRuntime
from infaas import Client
from infaas.artifacts import MODEL_PART, VALIDATION_PART, artifact_name
from infaas.auth import TokenRegistry
from infaas.client.sealing import InferResult, open_infer_response
from infaas.envelope import ServedBy, canonical_json, open_error, seal_artifact, seal_response
from infaas.errors import (
    AnswerRejected,
    DecryptionFailed,
    InfaasError,
    InvalidInput,
    NoFeasibleVariant,
    UnverifiedProfile,
)
from infaas.store import MetadataStore, open_store
from infaas.types import Precision
from infaas.wire import (
    ENVELOPE_MEDIA_TYPE,
    FRAME_MAGIC,
    InferRequest,
    InferResponse,
    envelope_from_frame,
)
from tests.asgi import TestClient
from tests.deployment import WORKER_MEASUREMENT, Deployment

MODEL = "digits-mlp-small"
TENANT = "acme"


@dataclass
class Host:
    """A worker on a SQLite store the test (the host) can edit underneath it."""

    dep: Deployment
    db: Path
    store: MetadataStore
    runtime: WorkerRuntime
    token: str

    def edit_profile(
        self, variant_id: str, edit: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Rewrite a profile record in the database file, as anyone with the disk can."""
        with sqlite3.connect(self.db) as conn:
            (raw,) = conn.execute(
                "SELECT value FROM records WHERE namespace = 'profiles' AND key = ?",
                (variant_id,),
            ).fetchone()
            doc = edit(json.loads(raw))
            conn.execute(
                "UPDATE records SET value = ? WHERE namespace = 'profiles' AND key = ?",
                (json.dumps(doc).encode(), variant_id),
            )
        self.runtime.refresh_candidates()

    def infer(self, x: np.ndarray, **kw: Any) -> InferResponse:
        req = self.dep.request(TENANT, x, **kw)
        return asyncio.run(self.runtime.infer(req, self.token))

    def refused(self, x: np.ndarray, **kw: Any) -> InfaasError:
        """The refusal as the tenant reads it (a reason sealed after decryption, opened)."""
        req = self.dep.request(TENANT, x, **kw)
        with pytest.raises(InfaasError) as info:
            asyncio.run(self.runtime.infer(req, self.token))
        keys = {f"{TENANT}-k1": self.dep.tenant_keys[TENANT]}
        return open_error(info.value, keys, request_id=req.envelope.request_id, tenant=TENANT)


@pytest.fixture
def host(deployment: Deployment, tmp_path: Path) -> Iterator[Host]:
    """What the shared deployment's worker prepared, in a SQLite store of this test's own,
    served by a fresh worker on it (same key service, same sealed artifacts)."""
    db = tmp_path / "infaas.db"
    store = open_store(f"sqlite:///{db}")
    src = deployment.store
    for task in src.list_tasks():
        store.put_task(task)
    for model in src.list_models():
        store.put_model(model)
    for spec in src.list_variants():
        store.put_variant(spec)
    for profile in src.list_profiles():
        store.put_profile(profile)
    token = TokenRegistry(store).issue(TENANT, "tenant")
    runtime = WorkerRuntime(
        deployment.settings,
        store,
        deployment.artifacts,
        deployment.service,
        deployment.worker_tee(),
        keyservice=deployment.trust,
        refresh_s=3600.0,
    )
    runtime.start()
    try:
        yield Host(deployment, db, store, runtime, token)
    finally:
        asyncio.run(runtime.close())
        store.close()


def _int8(store: MetadataStore) -> str:
    return next(v.variant_id for v in store.list_variants(MODEL) if v.precision is Precision.INT8)


def _accuracies(store: MetadataStore) -> dict[str, float]:
    return {p.variant_id: p.accuracy for p in store.list_profiles()}


def test_an_int8_accuracy_raised_in_the_sqlite_store_is_refused(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    int8 = _int8(host.store)
    genuine = _accuracies(host.store)
    floor = min(1.0, max(0.99, max(genuine.values()) + 1e-3))  # above every genuine variant
    assert host.runtime.refused_profiles == {}
    assert host.infer(host.dep.x[:1]).envelope.accuracy is not None  # serves before the edit

    with caplog.at_level(logging.WARNING, logger="infaas.enclave_workers.runtime"):
        host.edit_profile(int8, lambda doc: doc | {"accuracy": 1.0})
    # the store now says INT8 is perfect; the worker does not believe it, and says so
    assert host.store.get_profile(int8).accuracy == 1.0  # type: ignore[union-attr]
    assert int8 not in {c.variant_id for c in host.runtime.candidates}
    assert "does not verify" in host.runtime.status()["refused_profiles"][int8]
    assert any(int8 in r.getMessage() for r in caplog.records)
    err = host.refused(host.dep.x[:1], min_accuracy=floor)
    assert isinstance(err, NoFeasibleVariant) and err.status_code == 422
    # pinned to it, the caller hears why
    err = host.refused(host.dep.x[:1], variant_id=int8)
    assert isinstance(err, UnverifiedProfile) and int8 in err.message
    # everyone else is still served, from the genuine profiles
    served = host.infer(host.dep.x[:2])
    assert served.variant_id != int8 and served.envelope.accuracy == genuine[served.variant_id]


def test_a_genuine_profile_copied_onto_another_variant_is_refused(host: Host) -> None:
    int8 = _int8(host.store)
    fp32 = f"{MODEL}.fp32.onnxruntime"
    with sqlite3.connect(host.db) as conn:
        (raw,) = conn.execute(
            "SELECT value FROM records WHERE namespace = 'profiles' AND key = ?", (fp32,)
        ).fetchone()
    copied = json.loads(raw) | {"variant_id": int8}  # its MAC is genuine: for FP32
    host.edit_profile(int8, lambda doc: copied)
    assert int8 in host.runtime.refused_profiles
    assert fp32 not in host.runtime.refused_profiles
    err = host.refused(host.dep.x[:1], variant_id=int8)
    assert isinstance(err, UnverifiedProfile)
    assert host.infer(host.dep.x[:1], variant_id=fp32).variant_id == fp32


def test_an_edited_spec_or_an_unsigned_profile_is_refused(host: Host) -> None:
    int8 = _int8(host.store)
    with sqlite3.connect(host.db) as conn:
        (raw,) = conn.execute(
            "SELECT value FROM records WHERE namespace = 'variants' AND key = ?", (int8,)
        ).fetchone()
        doc = json.loads(raw) | {"max_batch": 1024}
        conn.execute(
            "UPDATE records SET value = ? WHERE namespace = 'variants' AND key = ?",
            (json.dumps(doc).encode(), int8),
        )
    host.runtime.refresh_candidates()
    assert int8 in host.runtime.refused_profiles
    fp32 = f"{MODEL}.fp32.onnxruntime"
    host.edit_profile(fp32, lambda doc: doc | {"mac": None})  # as `infaas profile` writes
    assert "no MAC" in host.runtime.refused_profiles[fp32]


def test_a_pin_below_the_floor_reaches_the_workers_downgrade_check(host: Host) -> None:
    """A forced variant skips selection; the worker's check against the authenticated floor
    is what refuses it (deleting that check makes this test fail)."""
    int8 = _int8(host.store)
    accuracy = _accuracies(host.store)[int8]
    err = host.refused(host.dep.x[:1], variant_id=int8, min_accuracy=min(1.0, accuracy + 0.01))
    assert isinstance(err, NoFeasibleVariant)
    assert f"variant {int8} has accuracy {accuracy:g}, below the" in err.message
    ok = host.infer(host.dep.x[:1], variant_id=int8, min_accuracy=accuracy)
    assert ok.variant_id == int8 and ok.envelope.accuracy == accuracy


# --- a proxy between the caller and the worker ---------------------------------------------


Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


def _rewritten(body: bytes, content_type: str, rewrite: Rewrite) -> bytes:
    """`body` as `rewrite` edits its JSON document; a binary frame is seen as
    ``{"envelope": <its header>}`` and framed again with the edited header (still
    canonical, so only the tag can tell)."""
    if content_type != ENVELOPE_MEDIA_TYPE:
        return json.dumps(rewrite(json.loads(body))).encode()
    env = envelope_from_frame(body)
    header = canonical_json(rewrite({"envelope": json.loads(env.associated_data())})["envelope"])
    prefix = FRAME_MAGIC + len(header).to_bytes(4, "big")
    return prefix + header + env.nonce + bytes(env.ciphertext)


class RewritingProxy(httpx.BaseTransport):
    """The path to the worker: forwards requests and answers (JSON or binary envelope
    frames), rewriting them when told to."""

    def __init__(self, upstream: TestClient) -> None:
        self.upstream = upstream
        self.request_rewrite: Rewrite | None = None
        self.answer_rewrite: Rewrite | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        kind = request.headers["content-type"]
        if self.request_rewrite is not None:
            body = _rewritten(body, kind, self.request_rewrite)
        passed = {k: request.headers[k] for k in ("authorization", "content-type", "accept")}
        response = self.upstream.post("/v1/infer", content=body, headers=passed)
        content = response.content
        if response.status_code == 200 and self.answer_rewrite is not None:
            content = _rewritten(content, response.headers["content-type"], self.answer_rewrite)
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@pytest.fixture(params=["binary", "json"])
def proxied(host: Host, request: pytest.FixtureRequest) -> Iterator[tuple[Client, RewritingProxy]]:
    app = serve_app(host.runtime, max_request_bytes=host.dep.settings.max_request_bytes)

    async def worker(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "root_path": "/v1/infer"}, receive, send)

    with TestClient(worker, raise_server_exceptions=False) as upstream:
        proxy = RewritingProxy(upstream)
        client = Client(
            "http://worker",
            api_token=host.token,
            principal=TENANT,
            request_key=host.dep.tenant_keys[TENANT],
            key_id=f"{TENANT}-k1",
            http=httpx.Client(base_url="http://worker", transport=proxy),
            wire=request.param,
        )
        yield client, proxy


def test_a_proxy_cannot_re_pin_a_request(
    host: Host, proxied: tuple[Client, RewritingProxy]
) -> None:
    client, proxy = proxied
    int8, fp32 = _int8(host.store), f"{MODEL}.fp32.onnxruntime"
    x = {"x": host.dep.x[:1]}
    proxy.request_rewrite = lambda doc: doc | {"envelope": doc["envelope"] | {"variant_id": int8}}
    with pytest.raises(DecryptionFailed):  # pinned to FP32, re-pinned to INT8
        client.infer(task="digits", inputs=x, latency_ms=1000, variant_id=fp32)
    with pytest.raises(DecryptionFailed):  # unpinned, pinned to INT8 on the way
        client.infer(task="digits", inputs=x, latency_ms=1000)
    if client.wire == "json":  # a binary frame has no place for a pin beside the envelope
        # the old clear pin beside the envelope is not a field any more: refused, not obeyed
        proxy.request_rewrite = lambda doc: doc | {"variant_id": int8}
        with pytest.raises(InvalidInput, match="variant_id"):
            client.infer(task="digits", inputs=x, latency_ms=1000, variant_id=fp32)
    proxy.request_rewrite = None
    result = client.infer(task="digits", inputs=x, latency_ms=1000, variant_id=fp32)
    assert result.variant_id == fp32 and result.measurement == WORKER_MEASUREMENT.hex()


@pytest.mark.parametrize(
    "field,value",
    [
        ("accuracy", 0.9999),
        ("variant_id", f"{MODEL}.fp32.openvino"),
        ("architecture", "resnet-50"),
        ("pool", "gpu"),
        ("simulated_tee", False),
        ("measurement", "ab" * 32),
    ],
)
def test_a_proxy_cannot_rewrite_what_served_the_answer(
    proxied: tuple[Client, RewritingProxy], host: Host, field: str, value: object
) -> None:
    client, proxy = proxied
    x = {"x": host.dep.x[:1]}
    # the sealed field: the answer no longer opens
    proxy.answer_rewrite = lambda doc: doc | {"envelope": doc["envelope"] | {field: value}}
    with pytest.raises(DecryptionFailed):
        client.infer(task="digits", inputs=x, latency_ms=1000)
    # its clear copy beside the envelope (where there is one): refused as a lie; a binary
    # answer has none (what served it is read from the authenticated header)
    if field in InferResponse.model_fields and client.wire == "json":
        proxy.answer_rewrite = lambda doc: doc | {field: value}
        with pytest.raises(AnswerRejected, match="disagrees"):
            client.infer(task="digits", inputs=x, latency_ms=1000)
    proxy.answer_rewrite = None
    assert client.infer(task="digits", inputs=x, latency_ms=1000).outputs.shape == (1, 10)


def test_the_client_checks_a_sealed_answer_against_its_pin_and_floor(host: Host) -> None:
    """An answer that opens under the tenant's key but does not meet the request (a worker
    that ignored the pin or the floor) is refused by the client itself."""
    dep = host.dep
    key = dep.tenant_keys[TENANT]
    fp32, int8 = f"{MODEL}.fp32.onnxruntime", _int8(host.store)

    def answer(req: InferRequest, served: ServedBy) -> InferResult:
        env = seal_response({f"{TENANT}-k1": key}, req.envelope, b"{}", served=served)
        response = InferResponse(
            envelope=env,
            variant_id=served.variant_id,
            pool=served.pool,
            measurement=served.measurement.hex(),
            simulated_tee=served.simulated_tee,
            latency_ms=1.0,
            queue_ms=0.0,
            batch_size=1,
        )
        return open_infer_response(req, response, key_id=f"{TENANT}-k1", key=key, task=None)

    def by(variant: str, accuracy: float, *, simulated: bool = True) -> ServedBy:
        return ServedBy(variant, "mlp-small", accuracy, "cpu", simulated, WORKER_MEASUREMENT)

    pinned = dep.request(TENANT, dep.x[:1], variant_id=fp32)
    with pytest.raises(AnswerRejected, match="pinned variant"):
        answer(pinned, by(int8, 0.95))
    arch = dep.request(TENANT, dep.x[:1])
    arch = InferRequest(envelope=arch.envelope.model_copy(update={"architecture": "resnet-50"}))
    with pytest.raises(AnswerRejected, match="pinned architecture"):
        answer(arch, by(fp32, 0.95))
    floor = dep.request(TENANT, dep.x[:1], min_accuracy=0.99)
    with pytest.raises(AnswerRejected, match=r"below the 0\.99"):
        answer(floor, by(int8, 0.9))
    with pytest.raises(AnswerRejected, match="simulated"):
        req = dep.request(TENANT, dep.x[:1])
        env = seal_response({f"{TENANT}-k1": key}, req.envelope, b"{}", served=by(fp32, 0.9))
        response = InferResponse(
            envelope=env, variant_id=fp32, pool="cpu", measurement=WORKER_MEASUREMENT.hex(),
            simulated_tee=True, latency_ms=1.0, queue_ms=0.0, batch_size=1,
        )  # fmt: skip
        open_infer_response(
            req, response, key_id=f"{TENANT}-k1", key=key, task=None, allow_simulated=False
        )


def test_a_declared_accuracy_raised_in_the_store_is_not_believed(deployment: Deployment) -> None:
    """Without labels, a variant's accuracy comes from the owner's declared one: only the copy
    sealed in the validation set counts; a model record the host raised fails the job."""
    dep = deployment
    for sealed in (0.8, None):
        model_id = f"digits-unlabelled-{uuid.uuid4().hex[:6]}"
        key = dep.add_model_key("owner1", model_id)
        record = dep.store.get_model(MODEL).model_copy(
            update={"model_id": model_id, "declared_accuracy": 0.99}  # the host's edit
        )
        stored = artifact_name(record.owner, model_id, MODEL_PART)
        dep.artifacts.put(stored, seal_artifact(key, "m1", model_id, dep.onnx))
        npz = io.BytesIO()
        extra = {} if sealed is None else {"declared_accuracy": np.float64(sealed)}
        np.savez(npz, x=dep.x[:16], **extra)
        stored = artifact_name(record.owner, model_id, VALIDATION_PART)
        label = validation_artifact(model_id)
        dep.artifacts.put(stored, seal_artifact(key, "m1", label, npz.getvalue()))
        dep.store.put_model(record)
        job = dep.runtime.prepare_model(model_id)
        assert job.state == "failed" and "declared accuracy" in job.message, job.message
        assert not dep.store.list_variants(model_id=model_id)
    dep.good()
