"""infaas.Client against the real control-plane app and key service, in process.

Only the worker is a stand-in: a route that does what an attested worker does
(key release over its own simulated evidence, open, compute, seal), so the
client's sealing, checking and error mapping are exercised for real.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Header

from api.app import create_app
from infaas import Client
from infaas.artifacts import ArtifactStore
from infaas.attestation import AttestationPolicy, AttestationVerifier, SimulatedPlatformCA
from infaas.attestation.simulated import SimulatedTEE
from infaas.auth import TokenRegistry
from infaas.client import KeyServiceTrust, problem_error
from infaas.envelope import MemoryReplayGuard, open_artifact, open_request, seal_response
from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    DecryptionFailed,
    InfaasError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
)
from infaas.keyservice import KeyService, WorkerKeyClient, create_keyservice_router
from infaas.protocol import decode_request, encode_response
from infaas.settings import load_settings
from infaas.store import open_store
from infaas.types import TensorSpec
from infaas.wire import InferRequest, InferResponse

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KS_MEASUREMENT = hashlib.sha256(b"keyservice code").digest()
WORKER_MEASUREMENT = hashlib.sha256(b"worker code").digest()
WEIGHTS = np.arange(64 * 10, dtype=np.float32).reshape(64, 10) / 640.0


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
    err = problem_error(httpx.Response(502, text="bad gateway", request=req))
    assert type(err) is InfaasError and "502" in err.message


@dataclass
class World:
    http: TestClient
    ca: SimulatedPlatformCA
    service: KeyService
    artifacts: ArtifactStore
    admin_token: str
    mode: dict[str, str]

    def trust(self, measurement: bytes = KS_MEASUREMENT) -> KeyServiceTrust:
        return KeyServiceTrust(measurement.hex(), self.ca.root_pem, allow_simulated=True)

    def client(self, token: str | None = None, **kw: Any) -> Client:
        kw.setdefault("keyservice", self.trust())
        return Client("http://testserver", api_token=token, http=self.http, **kw)


def _fake_worker(app: FastAPI, world: dict[str, Any]) -> None:
    """What an attested worker does for one request, minus batching and ONNX."""
    guard = MemoryReplayGuard()

    @app.post("/v1/infer")
    def infer(body: InferRequest, authorization: str = Header()) -> InferResponse:
        tokens: TokenRegistry = world["tokens"]
        principal = tokens.verify(authorization.removeprefix("Bearer "), "tenant")
        env = body.envelope
        if env.tenant != principal.id:
            raise PermissionDenied("envelope names another tenant")
        keys = WorkerKeyClient(world["service"], SimulatedTEE(world["ca"], WORKER_MEASUREMENT))
        released = keys.tenant_key(env.tenant, "digits-a", env.key_id)
        plain = open_request(env, {released.key_id: released.key}, replay_guard=guard)
        req, x = decode_request(bytes(plain), TensorSpec(name="x", shape=(64,)), 32)
        out = encode_response({"logits": x @ WEIGHTS}, "digits-a", req.id, binary=True)
        mode = world["mode"].get("mode", "")
        answer_to = (
            env.model_copy(update={"request_id": "someone-else"}) if mode == "wrong-id" else env
        )
        sealed = seal_response(
            {released.key_id: released.key},
            answer_to,
            out,
            variant_id="digits-a.fp32.onnxruntime",
            measurement=WORKER_MEASUREMENT,
        )
        clear_variant = "digits-a.int8.openvino" if mode == "lie" else sealed.variant_id
        return InferResponse(
            envelope=sealed,
            variant_id=clear_variant or "",
            pool="cpu",
            measurement=WORKER_MEASUREMENT.hex(),
            simulated_tee=True,
            latency_ms=1.0,
            queue_ms=0.0,
            batch_size=len(x),
        )


@pytest.fixture(scope="module")
def ca() -> SimulatedPlatformCA:
    return SimulatedPlatformCA.generate("client-test")


@pytest.fixture
def world(tmp_path: Path, ca: SimulatedPlatformCA) -> Iterator[World]:
    settings = load_settings(data_dir=tmp_path, store_url="memory://")
    store = open_store("memory://")
    tokens = TokenRegistry(store)
    artifacts = ArtifactStore(tmp_path / "artifacts")
    worker_policy = AttestationPolicy(
        allow_simulated=True, allowed_measurements=(WORKER_MEASUREMENT.hex(),)
    )
    service = KeyService(
        store,
        os.urandom(32),
        SimulatedTEE(ca, KS_MEASUREMENT),
        AttestationVerifier(worker_policy, extra_roots=[ca.root_cert]),
    )
    prepared: list[str] = []
    app = create_app(
        settings, store=store, artifacts=artifacts, tokens=tokens, prepare=prepared.append
    )
    app.include_router(create_keyservice_router(service))
    mode: dict[str, str] = {}
    _fake_worker(app, {"tokens": tokens, "service": service, "ca": ca, "mode": mode})
    with TestClient(app, raise_server_exceptions=False) as http:
        yield World(http, ca, service, artifacts, tokens.issue("admin", "admin"), mode)


def _owner_and_tenant(world: World) -> tuple[Client, Client]:
    admin = world.client(world.admin_token)
    owner = world.client(admin.create_owner("zoo").token)
    owner.attest_keyservice()
    owner.register_owner()
    tenant = world.client(admin.create_tenant("acme").token)
    assert tenant.attest_keyservice() == KS_MEASUREMENT.hex()
    tenant.register_tenant()
    return owner, tenant


def test_upload_grant_and_infer(world: World) -> None:
    owner, tenant = _owner_and_tenant(world)
    rng = np.random.default_rng(0)
    x_val = rng.random((20, 64), dtype=np.float32)
    job = owner.upload_model(
        "digits-a", "digits", "mlp", b"ONNX-BYTES", x_val, np.arange(20) % 10, num_classes=10
    )
    assert job.state == "queued"
    # what reached the server is sealed; the key service (only) can release the key
    sealed = world.artifacts.get("digits-a")
    assert b"ONNX-BYTES" not in sealed
    key = WorkerKeyClient(world.service, SimulatedTEE(world.ca, WORKER_MEASUREMENT)).model_key(
        "digits-a"
    )
    assert bytes(open_artifact({key.key_id: key.key}, "digits-a", sealed)) == b"ONNX-BYTES"
    assert owner.job("digits-a").state == "queued"
    assert [m.model.model_id for m in tenant.models()] == ["digits-a"]

    with pytest.raises(PermissionDenied):  # not granted yet: no tenant key for that model
        tenant.infer(task="digits", inputs=x_val[:2], latency_ms=50)
    owner.grant("digits-a", "acme")
    result = tenant.infer(task="digits", inputs=x_val[:3].astype(np.float64), latency_ms=50)
    np.testing.assert_allclose(result.outputs, x_val[:3] @ WEIGHTS, rtol=1e-6)
    assert result.variant_id == "digits-a.fp32.onnxruntime"
    assert result.measurement == WORKER_MEASUREMENT.hex() and result.simulated_tee
    assert result.batch_size == 3

    # the client refuses answers that do not answer its request
    world.mode["mode"] = "wrong-id"
    with pytest.raises(DecryptionFailed):
        tenant.infer(task="digits", inputs=x_val[:1], latency_ms=50)
    world.mode["mode"] = "lie"
    with pytest.raises(DecryptionFailed, match="disagrees"):
        tenant.infer(task="digits", inputs=x_val[:1], latency_ms=50)
    world.mode.clear()
    # a replayed request is refused with the typed error
    req = tenant.seal_infer(task="digits", inputs=x_val[:1], latency_ms=50)
    tenant.send_infer(req)
    with pytest.raises(InfaasError) as e:
        tenant.send_infer(req)
    assert e.value.code == "replayed_request"


def test_the_key_service_is_attested_before_it_gets_keys(world: World) -> None:
    admin = world.client(world.admin_token)
    creds = admin.create_tenant("acme")
    no_trust = Client("http://testserver", api_token=creds.token, http=world.http)
    with pytest.raises(AttestationFailed, match="no expectation"):
        no_trust.register_tenant()
    wrong = world.client(creds.token, keyservice=world.trust(b"\x01" * 32))
    with pytest.raises(AttestationFailed):
        wrong.register_tenant()
    other_ca = SimulatedPlatformCA.generate("someone else")
    forged = world.client(
        creds.token,
        keyservice=KeyServiceTrust(KS_MEASUREMENT.hex(), other_ca.root_pem, allow_simulated=True),
    )
    with pytest.raises(AttestationFailed):
        forged.register_tenant()
    not_simulated = world.client(
        creds.token, keyservice=KeyServiceTrust(KS_MEASUREMENT.hex(), world.ca.root_pem, False)
    )
    with pytest.raises(AttestationFailed):
        not_simulated.register_tenant()
    # nothing was registered by the refused attempts
    ok = world.client(creds.token)
    ok.register_tenant()
    assert ok.ks_token is not None and ok.key_id is not None


def test_server_errors_come_back_typed(world: World) -> None:
    admin = world.client(world.admin_token)
    admin.create_tenant("acme")
    with pytest.raises(Conflict):
        admin.create_tenant("acme")
    with pytest.raises(ModelNotFound):
        admin.model("nope")
    with pytest.raises(AuthenticationFailed):
        world.client("admin.wrong").models()
    tenant = world.client(admin.create_tenant("t2").token)
    with pytest.raises(PermissionDenied):
        tenant.create_tenant("t3")
    tenant.register_tenant()
    with pytest.raises(InfaasError, match="unknown task"):
        tenant.infer(task="nope", inputs=np.zeros((1, 64), np.float32), latency_ms=10)


def test_unreachable_server_is_an_infaas_error() -> None:
    with Client("http://127.0.0.1:9", timeout_s=2) as c, pytest.raises(InfaasError, match="reach"):
        c.health()


def test_credentials_file_is_private_and_round_trips(world: World, tmp_path: Path) -> None:
    admin = world.client(world.admin_token)
    tenant = world.client(admin.create_tenant("acme").token)
    tenant.register_tenant()
    path = tenant.save_credentials(tmp_path / "creds" / "acme.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Client.from_credentials(path, http=world.http)
    assert again.principal == "acme" and again.key_id == tenant.key_id
    assert again.credentials() == tenant.credentials()
    assert "token" not in repr(again) and str(tenant.api_token) not in repr(again)
    path.chmod(0o644)
    with pytest.raises(AuthenticationFailed, match="readable by others"):
        Client.from_credentials(path)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve"],
        ["infer"],
        ["models"],
        ["register"],
        ["tenant"],
        ["tenant", "create"],
        ["zoo", "build"],
        ["profile"],
        ["evidence", "verify"],
    ],
    ids=lambda a: " ".join(a) or "infaas",
)
def test_every_cli_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from infaas.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: infaas" in capsys.readouterr().out


def test_cli_without_credentials_says_where_they_come_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infaas.cli import main

    assert main(["models", "--data-dir", str(tmp_path)]) == 2
    assert "infaas serve" in capsys.readouterr().err
