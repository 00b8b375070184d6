"""Each principal's private audit trail: its own events, only its own, events not renewals."""

from __future__ import annotations

from pathlib import Path

import pytest

from infaas.attestation import SimulatedPlatformCA
from infaas.errors import AuthenticationFailed
from infaas.keyservice import KeyRequest
from infaas.store import SealedTable
from tests.deployment import WORKER_MEASUREMENT, Deployment


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    """Owner ``zoo`` (model ``resnet``) grants tenants ``acme`` and ``globex``, who accept it."""
    d = Deployment.create(platform_ca, tmp_path)
    d.add_owner("zoo")
    d.add_model_key("zoo", "resnet", "dk1")
    d.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    d.add_tenant("globex", owner="zoo", grant=("resnet",), key_id="g1")
    return d


def _events(trail: list[dict]) -> list[tuple]:
    return [(e["event"], e.get("model_id"), e.get("tenant"), e.get("key_id")) for e in trail]


def test_a_principal_reads_its_own_events_and_releases_once_per_worker_code(
    dep: Deployment,
) -> None:
    worker = dep.worker_keys()
    for _ in range(5):  # a first release, then renewals: one event
        worker.fetch(
            [
                KeyRequest(kind="model", model_id="resnet"),
                KeyRequest(kind="tenant", model_id="resnet", tenant="acme"),
            ]
        )
    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    acme = dep.keys.audit(dep.ks_tokens["acme"])
    assert _events(acme) == [
        ("registered", None, None, None),
        ("tenant_key_added", None, None, "k1"),
        ("granted", "resnet", "acme", None),
        ("accepted", None, None, None),
        ("released", "resnet", None, "k1"),
        ("revoked", "resnet", "acme", None),
    ]
    released = acme[4]
    assert released["worker_measurement"] == WORKER_MEASUREMENT.hex()
    assert released["kind"] == "tenant"
    assert [e["seq"] for e in acme] == list(range(1, 7))
    zoo = dep.keys.audit(dep.ks_tokens["zoo"])
    assert ("released", "resnet", None, "dk1") in _events(zoo)
    assert ("granted", "resnet", "globex", None) in _events(zoo)
    # globex's trail says nothing of acme, acme's nothing of globex
    globex = dep.keys.audit(dep.ks_tokens["globex"])
    assert all(e.get("tenant") in (None, "globex") for e in globex)
    assert all(e.get("tenant") in (None, "acme") for e in acme)


def test_renewals_do_not_grow_the_trail_or_the_log(dep: Deployment) -> None:
    worker = dep.worker_keys()
    worker.tenant_key("acme", "resnet")
    before = (len(dep.store.sealed_records(SealedTable.AUDIT)), dep.counter.read())
    for _ in range(20):
        worker.tenant_key("acme", "resnet")
        dep.worker_keys().model_key("resnet")  # another worker of the same code
    after = (len(dep.store.sealed_records(SealedTable.AUDIT)), dep.counter.read())
    assert after == (before[0] + 1, before[1] + 1)  # the owner's one model-key release


def test_only_the_principals_own_token_reads_its_trail(dep: Deployment) -> None:
    """The call names no principal: the token decides whose trail comes back; a forged
    token reads nothing; the store holds the trail sealed."""
    with pytest.raises(AuthenticationFailed):
        dep.keys.audit("acme:not-its-token")
    sealed = dep.store.sealed_records(SealedTable.AUDIT)
    assert sealed and all(b"tenant_key_added" not in blob for blob in sealed.values())


def test_a_restarted_service_keeps_the_trail_and_does_not_record_a_renewal_again(
    dep: Deployment,
) -> None:
    dep.worker_keys().tenant_key("acme", "resnet")
    n = len(dep.keys.audit(dep.ks_tokens["acme"]))
    restarted = Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)
    dep.worker_keys(transport=restarted).tenant_key("acme", "resnet")
    assert len(restarted.audit(dep.ks_tokens["acme"])) == n
