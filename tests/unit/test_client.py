"""infaas.Client against the real control-plane app, key service and worker, in process.

The shared deployment (tests/deployment.py) behind an edge that routes as the
Serve proxy does, so the client's sealing, checking and error mapping are
exercised against a real `WorkerRuntime`. Between the client and that worker
sits a transport that, when told to, rewrites the worker's answer: the client's
checks of a dishonest answer are tested against what a real worker sealed.
"""

from __future__ import annotations

import asyncio
import hashlib
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import create_app
from enclave_workers.endpoint import serve_app
from infaas import Client
from infaas.artifacts import MODEL_PART, artifact_name
from infaas.attestation import SimulatedPlatformCA
from infaas.client import AsyncClient, InferManyResult, KeyServiceTrust, problem_error
from infaas.envelope import open_artifact
from infaas.errors import (
    AnswerRejected,
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    DecryptionFailed,
    InfaasError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    ReplicaUnavailable,
)
from infaas.keyservice import create_keyservice_router
from infaas.keyservice.enrolment import issue_enrolment
from infaas.keyservice.principals import Role
from infaas.settings import load_settings
from infaas.transparency.log import TransparencyLog
from infaas.wire import InferResponse, envelope_from_frame
from tests.asgi import TestClient
from tests.deployment import ADMIN_KEY, KS_MEASUREMENT, WORKER_MEASUREMENT, Deployment
from variants.runtime import load_variant

MODEL = "digits-mlp-small"


def _all_errors() -> list[type[InfaasError]]:
    out: list[type[InfaasError]] = [InfaasError]
    stack = [InfaasError]
    while stack:
        for sub in stack.pop().__subclasses__():
            out.append(sub)
            stack.append(sub)
    return out


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_problem_bodies_map_back_to_the_same_type(cls: type[InfaasError]) -> None:
    err = cls("it broke", retry_after_s=4.0) if cls is Overloaded else cls("it broke", thing="x")
    response = httpx.Response(
        err.status_code,
        json=err.to_problem(),
        request=httpx.Request("GET", "http://t/v1/x"),
    )
    back = problem_error(response)
    assert type(back) is cls
    assert back.message == "it broke" and back.status_code == err.status_code
    assert back.detail == err.detail
    if isinstance(back, Overloaded):
        assert back.retry_after_s == 4.0


def test_bodies_without_a_problem_still_map() -> None:
    req = httpx.Request("POST", "http://t/v1/models")
    assert isinstance(
        problem_error(httpx.Response(413, text="too big", request=req)), PayloadTooLarge
    )
    assert isinstance(problem_error(httpx.Response(401, request=req)), AuthenticationFailed)
    # no infaas answer is a bare 500 / 502: a proxy answered for a replica that went away
    err = problem_error(httpx.Response(502, text="bad gateway", request=req))
    assert type(err) is ReplicaUnavailable and "502" in err.message
    err = problem_error(httpx.Response(504, text="gateway timeout", request=req))
    assert type(err) is InfaasError and "504" in err.message


Rewrite = Callable[[InferResponse, "InferResponse | None"], InferResponse]
"""What a dishonest path does to an answer: (this answer, the previous one) -> sent instead."""


class RewritingTransport(httpx.BaseTransport):
    """The path between the client and the worker, honest until given a `rewrite`.

    It forwards every request to the real deployment and, while `rewrite` is
    set, replaces each ``/v1/infer`` answer by what `rewrite` makes of it (it
    may also hand back the previous genuine answer, to another request), in
    JSON: the form with clear copies of what served it to lie about.
    """

    def __init__(self, upstream: httpx.Client) -> None:
        self.upstream = upstream
        self.rewrite: Rewrite | None = None
        self.previous: InferResponse | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.upstream.send(request)
        if request.url.path != Client.infer_path or response.status_code != 200:
            return response
        answer = Client._infer_answer(response.read(), response.headers)
        previous, self.previous = self.previous, answer
        if self.rewrite is None:
            return response
        sent = self.rewrite(answer, previous)
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=sent.model_dump_json()
        )


def edge(control: ASGIApp, worker: ASGIApp) -> ASGIApp:
    """What the Serve proxy does: ``/v1/infer`` to the worker replica, the rest to the
    control plane (with the key service's routes)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.rstrip("/") == Client.infer_path:
            await worker({**scope, "root_path": Client.infer_path}, receive, send)
        else:
            await control(scope, receive, send)

    return app


@dataclass
class World:
    dep: Deployment
    http: TestClient
    path: RewritingTransport
    admin_token: str

    def trust(self, measurement: bytes = KS_MEASUREMENT) -> KeyServiceTrust:
        return KeyServiceTrust(
            measurement.hex(),
            self.dep.ca.root_pem,
            allow_simulated=True,
            policy_sha256=self.dep.trust.policy_sha256,
            # what the key service trusts must be in its transparency log too
            log_public_key=self.dep.service.transparency.public_key.hex(),
        )

    def client(self, token: str | None = None, **kw: Any) -> Client:
        kw.setdefault("keyservice", self.trust())
        http = httpx.Client(base_url="http://testserver", transport=self.path)
        return Client("http://testserver", api_token=token, http=http, **kw)


def _name(prefix: str) -> str:
    """A principal's name of this test's own (the deployment is shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def world(deployment: Deployment, tmp_path: Path) -> Iterator[World]:
    """The control plane and key service in front of the shared deployment, and a real
    worker replica of its own (so its loaded variants and caches are this test's)."""
    dep = deployment
    settings = load_settings(data_dir=tmp_path, store_url="memory://")
    prepared: list[str] = []
    control = create_app(
        settings, store=dep.store, artifacts=dep.artifacts, tokens=dep.tokens,
        prepare=prepared.append,
    )  # fmt: skip
    control.include_router(create_keyservice_router(dep.service))
    runtime = dep.new_worker()
    worker = serve_app(runtime, max_request_bytes=dep.settings.max_request_bytes)
    try:
        with TestClient(edge(control, worker), raise_server_exceptions=False) as http:
            admin = dep.tokens.issue(_name("admin"), "admin")
            yield World(dep, http, RewritingTransport(http), admin)
    finally:
        asyncio.run(runtime.close())


def _enrolment(party: Client, role: Role = "tenant") -> str:
    """The administrator's one-time enrolment of `party` (named by its API token)."""
    assert party.principal is not None
    return issue_enrolment(ADMIN_KEY, party.principal, role)


def _owner_and_tenant(world: World) -> tuple[Client, Client]:
    admin = world.client(world.admin_token)
    owner = world.client(admin.create_owner(_name("zoo")).token)
    owner.attest_keyservice()
    owner.register_owner(_enrolment(owner, "owner"))
    tenant = world.client(admin.create_tenant(_name("acme")).token)
    assert tenant.attest_keyservice() == KS_MEASUREMENT.hex()
    tenant.register_tenant(_enrolment(tenant))
    return owner, tenant


def _swap_id(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """The sealed answer relabelled as the answer to another request."""
    env = answer.envelope.model_copy(update={"request_id": "someone-else"})
    return answer.model_copy(update={"envelope": env})


def _replay_previous(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """A genuine sealed answer, but to the tenant's previous request."""
    assert previous is not None
    return previous


def _lie_about_variant(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """Claims a dearer variant served it than the one bound into the sealed answer."""
    return answer.model_copy(update={"variant_id": f"{MODEL}.int8.openvino"})


def _lie_about_worker(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """Claims another worker (measurement) served it."""
    return answer.model_copy(update={"measurement": hashlib.sha256(b"other").hexdigest()})


def _lie_about_pool(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """Claims a dearer pool served it."""
    return answer.model_copy(update={"pool": "gpu"})


def _lie_about_tee(answer: InferResponse, previous: InferResponse | None) -> InferResponse:
    """Claims a real (not simulated) TEE served it."""
    return answer.model_copy(update={"simulated_tee": not answer.simulated_tee})


def test_upload_grant_and_infer(world: World) -> None:
    owner, tenant = _owner_and_tenant(world)
    dep = world.dep
    rng = np.random.default_rng(0)
    x_val = rng.random((20, 64), dtype=np.float32)
    job = owner.upload_model(
        "digits-a", "digits", "mlp", b"ONNX-BYTES", x_val, np.arange(20) % 10, num_classes=10
    )
    assert job.state == "queued"
    # what reached the server is sealed; the key service (only) can release the key
    stored = artifact_name(str(owner.principal), "digits-a", MODEL_PART)
    sealed = dep.artifacts.get(stored)
    assert b"ONNX-BYTES" not in sealed
    key = dep.worker_keys().model_key("digits-a")
    assert bytes(open_artifact({key.key_id: key.key}, "digits-a", sealed)) == b"ONNX-BYTES"
    assert owner.job("digits-a").state == "queued"
    assert "digits-a" in [m.model.model_id for m in tenant.models()]

    x = dep.x
    # a tenant the served model's owner did not grant gets no tenant key for it
    initech = world.client(
        dep.api_tokens["initech"],
        principal="initech",
        request_key=dep.tenant_keys["initech"],
        key_id="initech-k1",
    )
    with pytest.raises(PermissionDenied):
        initech.infer(task="digits", inputs=x[:2], latency_ms=1000)
    # the served model's owner grants it to our tenant, through its own client
    served_owner = world.client(dep.api_tokens["owner1"], ks_token=dep.ks_tokens["owner1"])
    served_owner.grant(MODEL, str(tenant.principal))
    with pytest.raises(PermissionDenied, match="may use no model"):
        tenant.infer(task="digits", inputs=x[:2], latency_ms=1000)  # a grant alone serves nothing
    assert tenant.accept("owner1").owners == ("owner1",)
    fp32 = f"{MODEL}.fp32.onnxruntime"
    reference = load_variant(dep.store.get_variant(fp32), dep.onnx).run(x[:3])
    result = tenant.infer(
        task="digits", inputs=x[:3].astype(np.float64), latency_ms=1000, variant_id=fp32
    )
    np.testing.assert_allclose(result.outputs, reference, rtol=1e-5)
    assert result.variant_id == fp32
    assert result.measurement == WORKER_MEASUREMENT.hex() and result.simulated_tee
    assert result.batch_size == 3

    # the client refuses answers that do not answer its request, from a path that rewrites
    # what the real worker sealed
    for rewrite, error, match in [
        (_swap_id, DecryptionFailed, "does not answer"),
        (_replay_previous, DecryptionFailed, "does not answer"),
        (_lie_about_variant, AnswerRejected, "disagrees"),
        (_lie_about_worker, AnswerRejected, "disagrees"),
        (_lie_about_pool, AnswerRejected, "disagrees"),
        (_lie_about_tee, AnswerRejected, "disagrees"),
    ]:
        world.path.rewrite = rewrite
        with pytest.raises(error, match=match):
            tenant.infer(task="digits", inputs=x[:1], latency_ms=1000)
    world.path.rewrite = None
    assert tenant.infer(task="digits", inputs=x[:1], latency_ms=1000).outputs.shape == (1, 10)
    # a replayed request is refused with the typed error
    req = tenant.seal_infer(task="digits", inputs=x[:1], latency_ms=1000)
    tenant.send_infer(req)
    with pytest.raises(InfaasError) as e:
        tenant.send_infer(req)
    assert e.value.code == "replayed_request"
    # a body the worker cannot decode once decrypted: the clear answer says only its type,
    # the client opens the precise reason the worker sealed for it
    bad = tenant.seal_infer(task="digits", plaintext=b'{"inputs": [', latency_ms=1000)
    clear = world.http.post(
        "/v1/infer",
        content=bad.model_dump_json(),
        headers={"Authorization": f"Bearer {tenant.api_token}"},
    )
    assert clear.status_code == 400 and "JSON" not in clear.json()["detail"]
    again = tenant.seal_infer(task="digits", plaintext=b'{"inputs": [', latency_ms=1000)
    with pytest.raises(InvalidInput, match="malformed JSON"):
        tenant.send_infer(again)


def test_the_key_service_is_attested_before_it_gets_keys(world: World) -> None:
    admin = world.client(world.admin_token)
    creds = admin.create_tenant(_name("acme"))
    no_trust = Client("http://testserver", api_token=creds.token, http=world.http)
    with pytest.raises(AttestationFailed, match="no expectation"):
        no_trust.register_tenant(_enrolment(no_trust))
    wrong = world.client(creds.token, keyservice=world.trust(b"\x01" * 32))
    with pytest.raises(AttestationFailed, match="allowed_measurements"):
        wrong.register_tenant(_enrolment(wrong))
    other_ca = SimulatedPlatformCA.generate("someone else")
    forged = world.client(
        creds.token,
        keyservice=replace(world.trust(), roots_pem=other_ca.root_pem),
    )
    with pytest.raises(AttestationFailed, match="trusted root"):
        forged.register_tenant(_enrolment(forged))
    not_simulated = world.client(
        creds.token,
        keyservice=replace(world.trust(), allow_simulated=False),
    )
    with pytest.raises(AttestationFailed, match="simulated"):
        not_simulated.register_tenant(_enrolment(not_simulated))
    other_policy = world.client(
        creds.token, keyservice=replace(world.trust(), policy_sha256="ab" * 32)
    )
    with pytest.raises(AttestationFailed, match="another policy"):
        other_policy.register_tenant(_enrolment(other_policy))
    other_log = world.client(
        creds.token,
        keyservice=replace(
            world.trust(), log_public_key=TransparencyLog.in_memory().public_key.hex()
        ),
    )
    with pytest.raises(AttestationFailed, match="pinned log"):  # its heads are another log's
        other_log.register_tenant(_enrolment(other_log))
    # nothing was registered by the refused attempts
    ok = world.client(creds.token)
    ok.register_tenant(_enrolment(ok))
    assert ok.ks_token is not None and ok.key_id is not None


def test_server_errors_come_back_typed(world: World) -> None:
    admin = world.client(world.admin_token)
    acme = _name("acme")
    admin.create_tenant(acme)
    with pytest.raises(Conflict):
        admin.create_tenant(acme)
    with pytest.raises(ModelNotFound):
        admin.model("nope")
    with pytest.raises(AuthenticationFailed):
        world.client("admin.wrong").models()
    tenant = world.client(admin.create_tenant(_name("t2")).token)
    with pytest.raises(PermissionDenied):
        tenant.create_tenant(_name("t3"))
    tenant.register_tenant(_enrolment(tenant))
    with pytest.raises(InfaasError, match="unknown task"):
        tenant.infer(task="nope", inputs=np.zeros((1, 64), np.float32), latency_ms=10)


def test_unreachable_server_is_an_infaas_error() -> None:
    with Client("http://127.0.0.1:9", timeout_s=2) as c, pytest.raises(InfaasError, match="reach"):
        c.health()


def test_credentials_file_is_private_and_round_trips(world: World, tmp_path: Path) -> None:
    admin = world.client(world.admin_token)
    acme = _name("acme")
    tenant = world.client(admin.create_tenant(acme).token)
    tenant.register_tenant(_enrolment(tenant))
    path = tenant.save_credentials(tmp_path / "creds" / "acme.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Client.from_credentials(path, http=world.http)
    assert again.principal == acme and again.key_id == tenant.key_id
    assert again.credentials() == tenant.credentials()
    assert "token" not in repr(again) and str(tenant.api_token) not in repr(again)
    path.chmod(0o644)
    with pytest.raises(AuthenticationFailed, match="readable by others"):
        Client.from_credentials(path)


class Refusing(httpx.BaseTransport):
    """In front of the real path: the first `n` inference requests get 503 with
    ``Retry-After``, as an overloaded worker answers; every envelope's request id is kept."""

    def __init__(self, upstream: httpx.BaseTransport, n: int, retry_after_s: int) -> None:
        self.upstream = upstream
        self.left = n
        self.retry_after_s = retry_after_s
        self.request_ids: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == Client.infer_path:
            self.request_ids.append(envelope_from_frame(request.read()).request_id)
            if self.left > 0:
                self.left -= 1
                busy = Overloaded("the worker's queue is full", retry_after_s=self.retry_after_s)
                headers = {"Retry-After": str(self.retry_after_s)}
                return httpx.Response(503, json=busy.to_problem(), headers=headers)
        return self.upstream.handle_request(request)


class ToThread(httpx.AsyncBaseTransport):
    """The (sync) path to the in-process deployment, for an `AsyncClient`."""

    def __init__(self, upstream: httpx.BaseTransport) -> None:
        self.upstream = upstream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = await asyncio.to_thread(self.upstream.handle_request, request)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.read()
        )


def test_a_503_with_retry_after_is_retried_resealed_after_the_wait(world: World) -> None:
    dep = world.dep
    refusing = Refusing(world.path, n=1, retry_after_s=3)
    waits: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    tenant = Client(
        "http://testserver",
        api_token=dep.api_tokens["acme"],
        principal="acme",
        request_key=dep.tenant_keys["acme"],
        key_id="acme-k1",
        http=httpx.Client(base_url="http://testserver", transport=refusing),
        sleep=sleep,
        clock=lambda: now[0],
    )
    result = tenant.infer(task="digits", inputs=dep.x[:2], latency_ms=200)
    assert result.outputs.shape == (2, 10)
    # two attempts, each sealed anew: the replay guard would refuse a re-sent envelope
    assert len(refusing.request_ids) == 2 and len(set(refusing.request_ids)) == 2
    assert result.request_id == refusing.request_ids[1]
    assert len(waits) == 1 and waits[0] >= 3.0


def _reference(dep: Deployment, x: np.ndarray) -> np.ndarray:
    fp32 = f"{MODEL}.fp32.onnxruntime"
    return load_variant(dep.store.get_variant(fp32), dep.onnx).run(x)  # type: ignore[no-any-return]


def test_infer_many_splits_a_large_batch_into_chunks_the_variants_accept(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    dep = world.dep
    x = np.concatenate([dep.x] * (54 // len(dep.x) + 1))[:54]
    tenant = world.client(
        dep.api_tokens["acme"],
        principal="acme",
        request_key=dep.tenant_keys["acme"],
        key_id="acme-k1",
    )
    fp32 = f"{MODEL}.fp32.onnxruntime"
    # 54 rows in one request: more than any of the task's variants takes (max_batch 8)
    with pytest.raises(InfaasError, match=r"outside 1\.\.8"):
        tenant.infer(task="digits", inputs=x, latency_ms=500, variant_id=fp32)
    many = tenant.infer_many(task="digits", inputs=x, latency_ms=500, variant_id=fp32)
    assert [len(c.outputs) for c in many.chunks] == [8] * 6 + [6]
    np.testing.assert_allclose(many.outputs, _reference(dep, x), rtol=1e-5)
    assert len({c.request_id for c in many.chunks}) == 7
    assert capsys.readouterr().out == ""  # no progress bar unless asked for

    async def run() -> InferManyResult:
        http = httpx.AsyncClient(base_url="http://testserver", transport=ToThread(world.path))
        async with AsyncClient(
            "http://testserver",
            api_token=dep.api_tokens["acme"],
            principal="acme",
            request_key=dep.tenant_keys["acme"],
            key_id="acme-k1",
            http=http,
        ) as client:
            return await client.infer_many(
                task="digits", inputs=x, latency_ms=500, variant_id=fp32, concurrency=3
            )

    again = asyncio.run(run())
    np.testing.assert_allclose(again.outputs, many.outputs, rtol=1e-5)
    assert capsys.readouterr().out == ""
