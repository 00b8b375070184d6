"""Tenants and workers trust only what the public transparency log shows, and notice a fork.

The trust bundle pins the log's key and no policy hash: the log, not a pin handed to
one client, says which key-service policies and worker measurements are trusted. The
host (who runs the key service's process, its transport and its disk) tries to have a
client or a worker accept a key service whose policy or workers were never logged, or
to show one party a log that forks from what it saw before. Every proof is real (RFC
9162 inclusion and consistency proofs under heads the log key signed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
)
from infaas.envelope import new_key
from infaas.errors import AttestationFailed
from infaas.keyservice import (
    KeyService,
    KeyServiceClient,
    KeyServiceHttpClient,
    WorkerKeyClient,
)
from infaas.keyservice.server import create_keyservice_app
from infaas.keyservice.trust import KeyServiceTrust
from infaas.store import MemoryStore
from infaas.transparency.log import (
    LogCorrupted,
    LogProof,
    ProofRequest,
    TransparencyLog,
    keyservice_entry,
    model_entry,
    worker_entry,
)
from infaas.transparency.witness import LogWitness, SeenHeads
from tests.deployment import (
    KS_MEASUREMENT,
    WORKER_MEASUREMENT,
    Deployment,
    policy,
)
from tests.e2e.server import ThreadedServer

OTHER_WORKER = bytes(range(32))


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    """The log key: sealed by the key service (the same code on the same platform)."""
    return Ed25519PrivateKey.generate()


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path, log_key: Ed25519PrivateKey) -> Deployment:
    d = Deployment.create(
        platform_ca, tmp_path, transparency=TransparencyLog(log_key, tmp_path / "log")
    )
    d.add_owner("zoo")
    d.add_model_key("zoo", "resnet", "dk1")
    d.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    return d


def logged_trust(dep: Deployment) -> KeyServiceTrust:
    """The bundle a tenant gets: code measurement, roots and the log's key; no policy pin."""
    return dataclasses.replace(
        dep.trust, policy_sha256="", log_public_key=dep.service.transparency.public_key.hex()
    )


def client(transport: Any, trust: KeyServiceTrust, seen: Path | None = None) -> KeyServiceClient:
    return KeyServiceClient(
        transport, trust.verifier(), policy_sha256=trust.policy_sha256, log=trust.witness(seen)
    )


def worker(dep: Deployment, transport: Any, trust: KeyServiceTrust) -> WorkerKeyClient:
    return WorkerKeyClient(
        transport,
        dep.worker_tee(),
        verifier=trust.verifier(),
        policy_sha256=trust.policy_sha256,
        log=trust.witness(),
    )


class ProofsFrom:
    """The host's transport: the key service's evidence, releases and calls, but the
    transparency proofs of another log (`log`)."""

    def __init__(self, service: KeyService, log: TransparencyLog) -> None:
        self.service, self.log = service, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def transparency_proof(self, req: ProofRequest) -> LogProof:
        return self.log.prove(req.entries, req.since)


def test_everything_trusted_is_logged_before_it_is_used(dep: Deployment) -> None:
    log = dep.service.transparency
    assert log.contains(keyservice_entry(KS_MEASUREMENT.hex(), dep.service.policy_sha256))
    assert log.contains(worker_entry(WORKER_MEASUREMENT.hex()))
    assert log.contains(model_entry("resnet", "dk1", dep.model_keys["resnet"]))
    trust = logged_trust(dep)
    client(dep.service, trust).attest()
    assert worker(dep, dep.service, trust).model_key("resnet").key == dep.model_keys["resnet"]


def test_log_is_public_over_http_and_proves_to_a_remote_client(
    dep: Deployment, tmp_path: Path
) -> None:
    seen = tmp_path / "heads.json"
    with (
        ThreadedServer(create_keyservice_app(dep.service)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        export = http.get("/v1/keyservice/transparency").json()
        assert export["public_key"] == dep.service.transparency.public_key.hex()
        assert {"kind": "worker", "measurement": WORKER_MEASUREMENT.hex()} in export["entries"]
        client(KeyServiceHttpClient(http), logged_trust(dep), seen).attest()
    assert SeenHeads(seen).latest(dep.service.transparency.log_id) == dep.service.transparency.head


def test_key_service_whose_policy_is_not_in_the_log_is_refused(
    dep: Deployment, log_key: Ed25519PrivateKey
) -> None:
    """The host starts the genuine key service with a policy of its own (another worker
    measurement) and keeps it out of the log everyone reads."""
    rogue_policy = AttestationVerifier(policy(OTHER_WORKER), extra_roots=[dep.ca.root_cert])
    rogue = KeyService(
        MemoryStore(),
        new_key(),
        SimulatedTEE(dep.ca, KS_MEASUREMENT),
        rogue_policy,
        transparency=TransparencyLog(log_key),  # a private log: what it appends nobody sees
    )
    on_path = ProofsFrom(rogue, dep.service.transparency)
    trust = logged_trust(dep)
    with pytest.raises(
        AttestationFailed,
        match=r"key service measurement .* with release policy .* not in the transparency log",
    ):
        client(on_path, trust).attest()
    with pytest.raises(AttestationFailed, match="not in the transparency log"):
        worker(dep, on_path, trust).model_key("resnet")
    # forging the proof: the honest log's proof of the honest policy stands for nothing else
    honest_proof = dep.service.transparency_proof(
        ProofRequest(
            entries=[
                keyservice_entry(KS_MEASUREMENT.hex(), dep.service.policy_sha256),
                worker_entry(WORKER_MEASUREMENT.hex()),
            ]
        )
    )

    class Forger(ProofsFrom):
        def transparency_proof(self, req: ProofRequest) -> LogProof:
            relabelled = [
                inc.model_copy(update={"entry": want})
                for inc, want in zip(honest_proof.inclusions, req.entries, strict=False)
            ]
            return honest_proof.model_copy(update={"inclusions": relabelled})

    with pytest.raises(AttestationFailed, match=r"with release policy .* not in the transparency"):
        client(Forger(rogue, dep.service.transparency), trust).attest()


def test_worker_measurement_not_in_the_log_is_refused(
    dep: Deployment, log_key: Ed25519PrivateKey
) -> None:
    """The log the host shows has the key service's identity but not the worker
    measurement its policy admits: the key service could release keys to a worker nobody
    can see."""
    partial = TransparencyLog(log_key)
    partial.append(keyservice_entry(KS_MEASUREMENT.hex(), dep.service.policy_sha256))
    on_path = ProofsFrom(dep.service, partial)
    trust = logged_trust(dep)
    with pytest.raises(AttestationFailed, match=r"worker measurement .* not in the transparency"):
        client(on_path, trust).attest()
    with pytest.raises(AttestationFailed, match="not in the transparency log"):
        worker(dep, on_path, trust).model_key("resnet")


def test_a_policy_admitting_any_worker_is_refused_and_its_workers_are_logged(
    dep: Deployment, log_key: Ed25519PrivateKey
) -> None:
    anyone = AttestationVerifier(
        AttestationPolicy(allow_simulated=True, any_measurement=True),
        extra_roots=[dep.ca.root_cert],
    )
    permissive = KeyService(
        dep.store,
        dep.kek,
        SimulatedTEE(dep.ca, KS_MEASUREMENT),
        anyone,
        transparency=dep.service.transparency,
        counter=dep.counter,  # a restart of the same key service over its state
    )
    with pytest.raises(AttestationFailed, match="admits any worker measurement"):
        client(permissive, logged_trust(dep)).attest()
    # it still logs each worker before giving it a key (seen by an auditor of the log)
    other = WorkerKeyClient(
        permissive,
        dep.worker_tee(OTHER_WORKER),
        verifier=dep.trust.verifier(),
        policy_sha256=permissive.policy_sha256,
    )
    other.model_key("resnet")
    assert dep.service.transparency.contains(worker_entry(OTHER_WORKER.hex()))


def test_a_forked_log_is_detected_by_clients_and_workers(
    dep: Deployment, log_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The host restarts the key service (same code, same policy, same sealed log key) on a
    log with another history, shown to parties that saw the honest one."""
    trust = logged_trust(dep)
    seen = tmp_path / "acme-heads.json"
    client(dep.service, trust, seen).attest()
    w = worker(dep, dep.service, trust)
    w.model_key("resnet")

    forked = TransparencyLog(log_key)
    forked.append(worker_entry(OTHER_WORKER.hex()))  # a history only some are shown
    # (over a copy of the state of its own: its own sealed state would refuse the fork)
    fork = Deployment.key_service(dep.ca, MemoryStore(), new_key(), transparency=forked)
    # the same size as the honest log, another root
    assert fork.transparency.head.size == dep.service.transparency.head.size
    assert fork.transparency.head.root != dep.service.transparency.head.root
    with pytest.raises(AttestationFailed, match="forked"):
        client(fork, trust, seen).attest()  # a new process: the heads it saw are on disk
    with pytest.raises(AttestationFailed, match="forked"):
        w._t = fork  # the host re-routes the worker's transport
        w.attest()
    # the honest log, grown since, is still accepted by both
    dep.add_model_key("zoo", "bert", "dk1")
    client(dep.service, trust, seen).attest()
    w._t = dep.service
    w.attest()
    fresh = LogWitness(dep.service.transparency.public_key)
    assert fresh.since() == 0  # a party that saw nothing cannot tell: gossip heads (README)
    client(fork, trust).attest()


def test_key_service_refuses_its_log_files_rolled_back(
    dep: Deployment, log_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The host restores the log's files from before a model key was logged (its key
    service state, rollback-protected, recorded the newer head)."""
    files = tmp_path / "log"
    backup = {p.name: p.read_bytes() for p in files.iterdir()}
    dep.add_model_key("zoo", "bert", "dk1")

    def restart() -> KeyService:
        return Deployment.key_service(
            dep.ca, dep.store, dep.kek, counter=dep.counter,
            transparency=TransparencyLog(log_key, files),
        )  # fmt: skip

    assert restart().transparency.contains(model_entry("bert", "dk1", dep.model_keys["bert"]))
    for name, data in backup.items():
        (files / name).write_bytes(data)
    with pytest.raises(LogCorrupted, match="rolled back or replaced"):
        restart()


def test_switching_back_to_a_superseded_policy_is_logged_again_and_a_stale_proof_refused(
    dep: Deployment, log_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The host restarts the genuine key service with another policy (logged), then with the
    first one again, hoping that policy's old entry stands for it and nothing new shows."""
    files, trust, seen = tmp_path / "log", logged_trust(dep), tmp_path / "acme-heads.json"
    first = keyservice_entry(KS_MEASUREMENT.hex(), dep.service.policy_sha256)
    first_index = dep.service.transparency.prove([first]).inclusions[0].index
    other = KeyService(
        MemoryStore(),
        new_key(),
        SimulatedTEE(dep.ca, KS_MEASUREMENT),
        AttestationVerifier(policy(OTHER_WORKER), extra_roots=[dep.ca.root_cert]),
        transparency=TransparencyLog(log_key, files),
    )
    client(other, trust, seen).attest()  # logged, so accepted: the acme client saw that head
    # the superseded policy: its entry is in the log, but a later one for the measurement is
    # named by the signed head, so its (genuine) inclusion proof is refused
    with pytest.raises(AttestationFailed, match="superseded"):
        client(ProofsFrom(dep.service, other.transparency), trust).attest()
    # a stale answer (the log from before the switch, where it was the latest) is refused by
    # a party that saw the later head
    with pytest.raises(AttestationFailed, match="went back"):
        client(dep.service, trust, seen).attest()
    # the genuine restart with the first policy appends its entry again, for all to see
    back = Deployment.key_service(
        dep.ca, MemoryStore(), new_key(), transparency=TransparencyLog(log_key, files)
    )
    again = back.transparency.prove([first]).inclusions[0].index
    assert again > first_index and again == back.transparency.head.size - 1
    entries = back.transparency.export().entries
    assert [i for i, e in enumerate(entries) if e == first] == [first_index, again]
    client(back, trust, seen).attest()  # the latest: accepted, and visible to everyone
    # restarting it again with the same policy adds nothing
    size = back.transparency.head.size
    assert TransparencyLog(log_key, files).head.size == size
    assert (
        Deployment.key_service(
            dep.ca, MemoryStore(), new_key(), transparency=TransparencyLog(log_key, files)
        ).transparency.head.size
        == size
    )
    # a bundle that pins the policy the host switched away from refuses the switch back
    pinned = dataclasses.replace(trust, policy_sha256=other.policy_sha256)
    with pytest.raises(AttestationFailed):
        client(back, pinned).attest()
