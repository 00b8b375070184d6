"""Workers and clients attest the key service (code *and* release policy) and accept only
releases it signed for exactly their request.

Each attacker sits where the host sits: between the worker and the key service (a
transport that rewrites what crosses it), or runs a key service of its own choosing.
Each attack is shown to be real first where it can be (the forged key opens under the
worker's ephemeral key; the permissive service's evidence is genuine), then refused
with a message naming why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
)
from infaas.envelope import new_key
from infaas.errors import AttestationFailed
from infaas.keyservice import KeyService, KeyServiceClient, ReleaseRequest
from infaas.keyservice.models import EvidenceResponse, ReleaseResponse
from infaas.keyservice.sealing import seal_to
from infaas.keyservice.service import release_info
from infaas.keyservice.trust import release_statement
from infaas.store import MemoryStore
from tests.deployment import KS_MEASUREMENT, WORKER_MEASUREMENT, Deployment, policy


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    d = Deployment.create(platform_ca, tmp_path)
    d.add_owner("zoo")
    d.add_model_key("zoo", "resnet", "dk1")
    d.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    d.add_tenant("globex", owner="zoo", grant=("resnet",), key_id="k1")
    return d


class OnPath:
    """The host between a worker and the key service: passes everything through, except
    what `rewrite_release` / `rewrite_request` / `rewrite_evidence` change."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.seen: list[tuple[ReleaseRequest, ReleaseResponse]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def rewrite_request(self, req: ReleaseRequest) -> ReleaseRequest:
        return req

    def rewrite_release(self, req: ReleaseRequest, resp: ReleaseResponse) -> ReleaseResponse:
        return resp

    def rewrite_evidence(self, ev: EvidenceResponse) -> EvidenceResponse:
        return ev

    def evidence(self, nonce: bytes) -> EvidenceResponse:
        return self.rewrite_evidence(self.service.evidence(nonce))

    def release(self, req: ReleaseRequest) -> ReleaseResponse:
        resp = self.service.release(self.rewrite_request(req))
        self.seen.append((req, resp))
        return self.rewrite_release(req, resp)


ATTACKER_KEY = b"A" * 32


def _own_data_key(req: ReleaseRequest, resp: ReleaseResponse) -> ReleaseResponse:
    """The attacker's own key, validly HPKE-sealed to the worker's ephemeral key."""
    keys = tuple(
        w.model_copy(update={"sealed_key": seal_to(req.public_key, ATTACKER_KEY, release_info(w))})
        for w in resp.keys
    )
    return resp.model_copy(update={"keys": keys})


def test_man_in_the_middle_own_data_key_is_refused(dep: Deployment) -> None:
    """The host hands the worker its own "data key": valid HPKE to the worker's key, not
    signed by the key service. Without the signature the worker would load the host's
    model (its artifact swapped in the untrusted artifact store)."""
    mitm = OnPath(dep.service)
    mitm.rewrite_release = _own_data_key  # type: ignore[method-assign]
    worker = dep.worker_keys(transport=mitm)
    with pytest.raises(AttestationFailed, match="not signed by the attested key service"):
        worker.model_key("resnet")
    with pytest.raises(AttestationFailed, match="not signed by the attested key service"):
        worker.tenant_key("acme", "resnet")
    # the same worker, the host out of the way: the genuine key
    assert dep.worker_keys().model_key("resnet").key == dep.model_keys["resnet"]


def test_release_signed_by_another_key_is_refused(dep: Deployment) -> None:
    """The host signs its forged release with a key of its own."""
    mitm = OnPath(dep.service)
    own = Ed25519PrivateKey.generate()

    def resign(req: ReleaseRequest, resp: ReleaseResponse) -> ReleaseResponse:
        forged = _own_data_key(req, resp)
        statement = release_statement(
            nonce=req.nonce,
            worker_nonce=req.worker_nonce,
            worker_key=req.public_key,
            keys=forged.keys,
            lease_s=forged.lease_s,
        )
        return forged.model_copy(update={"signature": own.sign(statement)})

    mitm.rewrite_release = resign  # type: ignore[method-assign]
    with pytest.raises(AttestationFailed, match="not signed by the attested key service"):
        dep.worker_keys(transport=mitm).model_key("resnet")


def test_replayed_release_of_another_request_is_refused(dep: Deployment) -> None:
    """A genuine, signed release recorded earlier answers a later request: refused (its
    signature covers the other request's nonces and ephemeral key)."""
    mitm = OnPath(dep.service)
    dep.worker_keys(transport=mitm).tenant_key("acme", "resnet")
    _, recorded = mitm.seen[-1]
    mitm.rewrite_release = lambda req, resp: recorded  # type: ignore[method-assign]
    with pytest.raises(AttestationFailed, match="for this request"):
        dep.worker_keys(transport=mitm).tenant_key("acme", "resnet")


def test_rewritten_request_answers_another_key_and_is_refused(dep: Deployment) -> None:
    """The host rewrites the worker's request (acme's key becomes globex's): the key
    service signs what it was asked, the worker sees it is not what it asked for."""
    mitm = OnPath(dep.service)

    def to_globex(req: ReleaseRequest) -> ReleaseRequest:
        keys = tuple(k.model_copy(update={"tenant": "globex"}) for k in req.keys)
        return req.model_copy(update={"keys": keys})

    mitm.rewrite_request = to_globex  # type: ignore[method-assign]
    # the attack is real: the signed release is genuine and opens (as globex's key)
    with pytest.raises(AttestationFailed, match="not the one asked for"):
        dep.worker_keys(transport=mitm).tenant_key("acme", "resnet")
    _, resp = mitm.seen[-1]
    assert resp.keys[0].tenant == "globex"


def test_widened_models_are_refused(dep: Deployment) -> None:
    """The host adds a model to the list a tenant key may serve."""
    mitm = OnPath(dep.service)

    def widen(req: ReleaseRequest, resp: ReleaseResponse) -> ReleaseResponse:
        keys = tuple(w.model_copy(update={"models": (*(w.models or ()), "x")}) for w in resp.keys)
        return resp.model_copy(update={"keys": keys})

    mitm.rewrite_release = widen  # type: ignore[method-assign]
    with pytest.raises(AttestationFailed, match="not signed"):
        dep.worker_keys(transport=mitm).tenant_key("acme", None)


def _permissive(dep: Deployment, **service_kw: Any) -> KeyService:
    """A genuine key service (same code measurement, same platform) started by the host with
    a policy that releases keys to any worker."""
    anyone = AttestationPolicy(allow_simulated=True, any_measurement=True)
    verifier = AttestationVerifier(anyone, extra_roots=[dep.ca.root_cert])
    return KeyService(
        MemoryStore(), new_key(), SimulatedTEE(dep.ca, KS_MEASUREMENT), verifier, **service_kw
    )


def test_worker_refuses_key_service_with_another_policy(dep: Deployment) -> None:
    rogue = _permissive(dep)
    # its evidence is genuine: right code, right platform, the report data binds its keys
    ev = rogue.evidence(b"n" * 32)
    assert ev.measurement == KS_MEASUREMENT.hex()
    assert ev.policy["workers"]["rules"]["any_measurement"] is True
    with pytest.raises(AttestationFailed, match=r"release policy .* trust bundle expects"):
        dep.worker_keys(transport=rogue).model_key("resnet")


def test_client_refuses_key_service_with_another_policy(dep: Deployment) -> None:
    """A tenant or owner never seals a key to it."""
    c = KeyServiceClient(
        _permissive(dep), dep.trust.verifier(), policy_sha256=dep.trust.policy_sha256
    )
    with pytest.raises(AttestationFailed, match="right code, another policy"):
        c.attest()
    with pytest.raises(AttestationFailed, match="another policy"):  # nothing sealed to it
        c.upload_tenant_key("acme:x", "k2", new_key())


def test_production_flag_is_part_of_the_policy(dep: Deployment) -> None:
    same_rules = Deployment.key_service(
        dep.ca, dep.store, dep.kek, counter=dep.counter, production=True
    )
    assert same_rules.policy_sha256 != dep.service.policy_sha256
    with pytest.raises(AttestationFailed, match="trust bundle expects"):
        dep.worker_keys(transport=same_rules).model_key("resnet")


def test_policy_hash_relabelled_on_path_does_not_bind(dep: Deployment) -> None:
    """The host relays a permissive service's evidence, relabelled with the expected policy
    hash and document: its report data binds the real one."""
    rogue = _permissive(dep)
    relay = OnPath(rogue)
    relay.rewrite_evidence = lambda ev: ev.model_copy(  # type: ignore[method-assign]
        update={"policy_sha256": dep.trust.policy_sha256, "policy": dep.service.release_policy}
    )
    with pytest.raises(AttestationFailed, match="report data does not bind"):
        dep.worker_keys(transport=relay).model_key("resnet")


def test_bundle_without_policy_hash_is_refused(dep: Deployment) -> None:
    verifier = AttestationVerifier(policy(KS_MEASUREMENT), extra_roots=[dep.ca.root_cert])
    c = KeyServiceClient(dep.service, verifier, policy_sha256="")
    with pytest.raises(AttestationFailed, match="must name policy_sha256"):
        c.attest()


def test_policy_lists_the_workers_it_releases_to(dep: Deployment) -> None:
    """The published policy says what it admits: the worker measurement, the roots, no
    debug, simulated allowed (and so, a tenant can read, not confidential)."""
    doc = dep.trust.release_policy
    assert doc is not None
    rules = doc["workers"]["rules"]
    assert rules["allowed_measurements"] == [WORKER_MEASUREMENT.hex()]
    assert rules["allow_debug"] is False and rules["allow_simulated"] is True
    assert doc["workers"]["root_sha256"] == [
        hashlib.sha256(dep.ca.root_cert.public_bytes(Encoding.DER)).hexdigest()
    ]


def test_restarted_key_service_is_attested_again(dep: Deployment) -> None:
    """After a restart (new keys, same code and policy) a worker re-attests and goes on."""
    worker = dep.worker_keys()
    assert worker.model_key("resnet").key == dep.model_keys["resnet"]
    restarted = Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)
    worker._t = restarted  # the host routes the worker to the new replica
    assert worker.model_key("resnet").key == dep.model_keys["resnet"]
    assert worker.attested is not None
    assert worker.attested.signing_public_key == restarted.signing_key
