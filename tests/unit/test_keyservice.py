"""The key service: attested uploads, grants, release to attested workers, restarts, HTTP."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from infaas.attestation import (
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
    report_data_for,
)
from infaas.envelope import new_key
from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    DecryptionFailed,
    PermissionDenied,
    UnknownKey,
)
from infaas.keyservice import (
    KeyRequest,
    KeyServiceClient,
    KeyServiceHttpClient,
    ReleaseRequest,
    create_keyservice_app,
    simulated_sealing_key,
)
from infaas.store import SealedTable
from tests.asgi import TestClient
from tests.deployment import KS_MEASUREMENT, WORKER_MEASUREMENT, Deployment, enrol, policy


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    """A fresh deployment of the shared kind (tests/deployment.py): CA, policy, key service."""
    return Deployment.create(platform_ca, tmp_path)


def _client(
    dep: Deployment, transport: object | None = None, measurement: bytes = KS_MEASUREMENT
) -> KeyServiceClient:
    """A key-service client expecting `measurement`, over `transport` (default: in process)."""
    verifier = AttestationVerifier(policy(measurement), extra_roots=[dep.ca.root_cert])
    return KeyServiceClient(
        transport or dep.service,  # type: ignore[arg-type]
        verifier,
        policy_sha256=dep.trust.policy_sha256,
    )


def _populate(dep: Deployment, grant: bool = True) -> None:
    """Owner ``zoo`` with model ``resnet`` (data key ``dk1``), tenant ``acme`` (key ``k1``)."""
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    dep.add_tenant("acme", owner="zoo", grant=("resnet",) if grant else (), key_id="k1")


def test_worker_with_allowed_evidence_gets_its_keys(dep: Deployment) -> None:
    _populate(dep)
    keys = dep.worker_keys().fetch(
        [
            KeyRequest(kind="model", model_id="resnet"),
            KeyRequest(kind="tenant", model_id="resnet", tenant="acme"),
        ]
    )
    assert [(k.kind, k.key_id, k.key) for k in keys] == [
        ("model", "dk1", dep.model_keys["resnet"]),
        ("tenant", "k1", dep.tenant_keys["acme"]),
    ]
    assert dep.tenant_keys["acme"].hex() not in repr(keys)


def test_tenant_without_grant_gets_nothing(dep: Deployment) -> None:
    _populate(dep, grant=False)
    with pytest.raises(PermissionDenied, match="not granted"):
        dep.worker_keys().fetch(
            [
                KeyRequest(kind="model", model_id="resnet"),
                KeyRequest(kind="tenant", model_id="resnet", tenant="acme"),
            ]
        )


def test_revoke_stops_release(dep: Deployment) -> None:
    _populate(dep)
    assert dep.worker_keys().tenant_key("acme", "resnet").key == dep.tenant_keys["acme"]
    _client(dep).revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    with pytest.raises(PermissionDenied):
        dep.worker_keys().tenant_key("acme", "resnet")


def test_grant_for_one_model_does_not_cover_another(dep: Deployment) -> None:
    _populate(dep)
    c = _client(dep)
    c.attest()
    c.upload_model_key(dep.ks_tokens["zoo"], "mlp", "dk1", new_key())
    with pytest.raises(PermissionDenied):
        dep.worker_keys().tenant_key("acme", "mlp")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"measurement": hashlib.sha256(b"evil worker").digest()}, "allowed_measurements"),
        ({"debug": True}, "debug"),
    ],
)
def test_other_workers_are_refused(dep: Deployment, kw: dict, match: str) -> None:
    _populate(dep)
    with pytest.raises(AttestationFailed, match=match):
        dep.worker_keys(**kw).model_key("resnet")


def test_profile_keys_go_only_to_attested_workers_one_per_model(dep: Deployment) -> None:
    """The key a worker MACs profiles with: released to attested workers only, never to a
    worker of another measurement; one per model, the same after a restart."""
    _populate(dep)
    dep.add_model_key("zoo", "mlp", "dk2")
    profile = KeyRequest(kind="profile", model_id="resnet")
    (key,) = dep.worker_keys().fetch([profile])
    assert key.kind == "profile" and len(key.key) == 32
    assert key.key not in (dep.model_keys["resnet"], dep.tenant_keys["acme"])
    (other,) = dep.worker_keys().fetch([KeyRequest(kind="profile", model_id="mlp")])
    assert other.key != key.key
    with pytest.raises(AttestationFailed, match="allowed_measurements"):
        dep.worker_keys(hashlib.sha256(b"evil worker").digest()).fetch([profile])
    with pytest.raises(UnknownKey):
        dep.worker_keys().fetch([KeyRequest(kind="profile", model_id="resnet", key_id="p9")])
    restarted = Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)
    worker = dep.worker_keys(transport=restarted)
    assert worker.fetch([profile])[0].key == key.key
    # granting, revoking and a new data key keep it
    dep.keys.grant(dep.ks_tokens["zoo"], "resnet", "acme")
    dep.add_model_key("zoo", "resnet", "dk3")
    assert dep.worker_keys().fetch([profile])[0].key == key.key


def test_worker_from_another_platform_ca_is_refused(dep: Deployment) -> None:
    _populate(dep)
    other = SimulatedPlatformCA.generate("elsewhere")
    worker = dep.worker_keys(transport=dep.service, tee=SimulatedTEE(other, WORKER_MEASUREMENT))
    with pytest.raises(AttestationFailed, match="trusted root"):
        worker.model_key("resnet")


def test_stolen_evidence_with_attacker_key_is_refused(dep: Deployment) -> None:
    """A host that replays a genuine worker's quote with its own public key learns nothing."""
    _populate(dep)
    tee = SimulatedTEE(dep.ca, WORKER_MEASUREMENT)
    nonce = dep.service.issue_nonce().nonce
    genuine = tee.generate(report_data_for(b"\x01" * 32, nonce))
    req = ReleaseRequest(
        evidence=genuine,
        public_key=b"\x02" * 32,
        nonce=nonce,
        worker_nonce=b"w" * 32,
        keys=(KeyRequest(kind="model", model_id="resnet"),),
    )
    with pytest.raises(AttestationFailed, match="report data does not bind"):
        dep.service.release(req)


def test_nonce_is_single_use_and_expires(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> None:
    t = [time.time()]
    dep = Deployment.create(platform_ca, tmp_path, clock=lambda: t[0])
    service = dep.service
    _populate(dep)
    tee = dep.worker_tee()
    pk = b"\x05" * 32
    nonce = service.issue_nonce().nonce
    req = ReleaseRequest(
        evidence=tee.generate(report_data_for(pk, nonce)),
        public_key=pk,
        nonce=nonce,
        worker_nonce=b"w" * 32,
        keys=(KeyRequest(kind="model", model_id="resnet"),),
    )
    service.release(req)
    with pytest.raises(AttestationFailed, match="stale nonce"):
        service.release(req)
    nonce2 = service.issue_nonce().nonce
    t[0] += 61
    req2 = req.model_copy(
        update={"nonce": nonce2, "evidence": tee.generate(report_data_for(pk, nonce2))}
    )
    with pytest.raises(AttestationFailed, match="stale nonce"):
        service.release(req2)


def test_client_refuses_unexpected_key_service(dep: Deployment) -> None:
    c = _client(dep, measurement=hashlib.sha256(b"the key service I expect").digest())
    with pytest.raises(AttestationFailed, match="allowed_measurements"):
        c.attest()
    with pytest.raises(AttestationFailed, match="allowed_measurements"):  # nothing sent
        c.upload_tenant_key("acme:x", "k1", new_key())


def test_authentication_and_ownership(dep: Deployment) -> None:
    _populate(dep)
    c = _client(dep)
    c.attest()
    with pytest.raises(AuthenticationFailed):
        c.grant("zoo:not-the-token", "resnet", "acme")
    with pytest.raises(PermissionDenied, match="not a owner"):
        c.grant(dep.ks_tokens["acme"], "resnet", "acme")
    rival = enrol(c, "rival", "owner")
    with pytest.raises(PermissionDenied, match="another owner"):
        c.upload_model_key(rival, "resnet", "dk2", new_key())
    with pytest.raises(PermissionDenied, match="another owner"):
        c.grant(rival, "resnet", "acme")
    with pytest.raises(Conflict):
        enrol(c, "acme", "tenant")
    with pytest.raises(Conflict):
        c.upload_tenant_key(dep.ks_tokens["acme"], "k1", new_key())


def test_sealed_key_cannot_be_replayed_as_another(dep: Deployment) -> None:
    """A key sealed for tenant acme / k1 does not open as another key id or tenant's."""
    _populate(dep)
    c = _client(dep)
    c.attest()
    from infaas.keyservice.sealing import info_for, seal_to

    sealed = seal_to(
        c.service_key, new_key(), info_for("tenant-key", {"tenant": "acme", "key_id": "k9"})
    )
    with pytest.raises(DecryptionFailed):
        dep.service.set_tenant_key(dep.ks_tokens["acme"], "k8", sealed)


def test_key_rotation(dep: Deployment) -> None:
    _populate(dep)
    c = _client(dep)
    c.attest()
    k2 = new_key()
    c.upload_tenant_key(dep.ks_tokens["acme"], "k2", k2)
    worker = dep.worker_keys()
    assert worker.tenant_key("acme", "resnet").key_id == "k2"
    assert worker.tenant_key("acme", "resnet").key == k2
    assert worker.tenant_key("acme", "resnet", key_id="k1").key == dep.tenant_keys["acme"]
    with pytest.raises(UnknownKey):
        worker.tenant_key("acme", "resnet", key_id="k7")


def test_state_survives_restart_with_same_kek(dep: Deployment) -> None:
    _populate(dep)
    restarted = Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)
    worker = dep.worker_keys(transport=restarted, tee=SimulatedTEE(dep.ca, WORKER_MEASUREMENT))
    assert worker.model_key("resnet").key == dep.model_keys["resnet"]
    assert worker.tenant_key("acme", "resnet").key == dep.tenant_keys["acme"]
    # tokens still work after the restart
    _client(dep, restarted).grant(dep.ks_tokens["zoo"], "resnet", "acme")


def test_other_kek_cannot_read_state(dep: Deployment) -> None:
    _populate(dep)
    thief = Deployment.key_service(dep.ca, dep.store, new_key())
    with pytest.raises(DecryptionFailed, match="does not open under the KEK"):
        dep.worker_keys(transport=thief, tee=SimulatedTEE(dep.ca, WORKER_MEASUREMENT)).model_key(
            "resnet"
        )


def test_swapped_store_records_do_not_open(dep: Deployment) -> None:
    """The untrusted store cannot move one tenant's key record under another name."""
    _populate(dep)
    c = _client(dep)
    c.attest()
    globex = enrol(c, "globex", "tenant")
    c.upload_tenant_key(globex, "k1", new_key())
    c.grant(dep.ks_tokens["zoo"], "resnet", "globex")
    c.accept(globex, "owner", "zoo")
    acme = dep.store.get_sealed(SealedTable.TENANT_KEY, "acme/k1")
    assert acme is not None
    dep.store.put_sealed(SealedTable.TENANT_KEY, "globex/k1", acme)
    with pytest.raises(DecryptionFailed):
        dep.worker_keys().tenant_key("globex", "resnet")


def test_simulated_sealing_key_file(tmp_path: Path) -> None:
    k1 = simulated_sealing_key(tmp_path)
    assert simulated_sealing_key(tmp_path) == k1
    path = tmp_path / "simulated-tee" / "sealing.key"
    assert path.stat().st_mode & 0o077 == 0
    # a data dir from before the key moved under simulated-tee/ keeps its key
    old = tmp_path / "old"
    (old / "keyservice").mkdir(parents=True)
    (old / "keyservice" / "simulated-sealing.key").write_bytes(k1)
    assert simulated_sealing_key(old) == k1
    assert (old / "simulated-tee" / "sealing.key").read_bytes() == k1
    assert not (old / "keyservice" / "simulated-sealing.key").exists()


def test_status_says_simulated(dep: Deployment) -> None:
    assert "not confidential" in dep.service.status()
    ev = dep.service.evidence(b"n" * 32)
    assert ev.simulated and "not confidential" in ev.status


# --- over HTTP ----------------------------------------------------------------------------


def test_http_flow_and_typed_errors(dep: Deployment) -> None:
    app = create_keyservice_app(dep.service)
    with TestClient(app) as http:
        remote = KeyServiceHttpClient(http)
        c = _client(dep, transport=remote)
        c.attest()
        owner = enrol(c, "zoo", "owner")
        tenant = enrol(c, "acme", "tenant")
        mk, tk = new_key(), new_key()
        c.upload_model_key(owner, "resnet", "dk1", mk)
        c.upload_tenant_key(tenant, "k1", tk)
        worker = dep.worker_keys(transport=remote, tee=SimulatedTEE(dep.ca, WORKER_MEASUREMENT))
        with pytest.raises(PermissionDenied):
            worker.tenant_key("acme", "resnet")
        c.grant(owner, "resnet", "acme")
        with pytest.raises(PermissionDenied, match="has not accepted"):
            worker.tenant_key("acme", "resnet")  # a grant alone is not enough
        assert c.accept(tenant, "owner", "zoo").owners == ("zoo",)
        assert worker.tenant_key("acme", "resnet").key == tk
        assert worker.model_key("resnet").key == mk
        (profile,) = worker.fetch([KeyRequest(kind="profile", model_id="resnet")])
        assert profile.kind == "profile" and profile.key not in (mk, tk)
        c.revoke(owner, "resnet", "acme")
        with pytest.raises(PermissionDenied):
            worker.tenant_key("acme", "resnet")
        with pytest.raises(AuthenticationFailed):
            c.grant("zoo:wrong", "resnet", "acme")
        bad = dep.worker_keys(transport=remote, tee=SimulatedTEE(dep.ca, b"\x00" * 32))
        with pytest.raises(AttestationFailed):
            bad.model_key("resnet")
        r = http.post("/v1/keyservice/call", json={"sealed": "AAAA"})
        # the shared HTTP edge answers a malformed body as a 400 problem, like the control plane
        assert r.status_code == 400
        assert r.json()["code"] == "invalid_input"
