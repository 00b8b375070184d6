"""Revocation takes effect within a lease (1 s), fail-closed, even against a host that drops
or delays the worker's renewals.

A worker serves a tenant's key only under a lease the attested key service signed, counted
on the worker's clock from the moment it asked. The clock here is injected: the tests move
it, they never sleep. The host is a transport between the worker and the key service that
can drop every release from some moment on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from enclave_workers.keycache import KeyCache
from infaas.attestation import SimulatedPlatformCA
from infaas.errors import AuthenticationFailed, InfaasError, PermissionDenied, UnknownKey
from infaas.keyservice import KeyService, ReleaseRequest, ReleaseResponse, WorkerKeyClient
from tests.deployment import Deployment


class Host:
    """Relays the worker's calls to the key service, or drops them (`dropping`)."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.dropping = False
        self.releases = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def release(self, req: ReleaseRequest) -> ReleaseResponse:
        if self.dropping:
            raise ConnectionResetError("the host dropped the release")
        self.releases += 1
        return self.service.release(req)


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    d = Deployment.create(platform_ca, tmp_path)
    d.add_owner("zoo")
    d.add_model_key("zoo", "resnet", "dk1")
    d.add_model_key("zoo", "mlp", "dk1")
    d.add_tenant("acme", owner="zoo", grant=("resnet", "mlp"), key_id="k1")
    return d


def _worker(dep: Deployment, host: Host, now: list[float]) -> KeyCache:
    trust = dep.trust
    client = WorkerKeyClient(
        host,
        dep.worker_tee(),
        verifier=trust.verifier(),
        policy_sha256=trust.policy_sha256,
        clock=lambda: now[0],
    )
    return KeyCache(client, clock=lambda: now[0])


def test_revoked_grant_is_refused_within_the_lease_though_the_host_drops_renewals(
    dep: Deployment,
) -> None:
    now = [100.0]
    host = Host(dep.service)
    worker = _worker(dep, host, now)
    assert worker.tenant_access("acme", None).models == {"resnet", "mlp"}

    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    dep.keys.revoke(dep.ks_tokens["zoo"], "mlp", "acme")
    host.dropping = True  # from now on no renewal reaches the key service
    now[0] = 100.6
    assert worker.renew() == 0  # dropped: nothing renewed
    # the lease signed before the revocation still runs (it ends 1 s after the worker asked)
    assert worker.tenant_access("acme", None).models == {"resnet", "mlp"}
    now[0] = 101.0
    with pytest.raises(OSError):  # its lease is over: served only after a new release
        worker.tenant_access("acme", None)
    host.dropping = False
    with pytest.raises(PermissionDenied, match="may use no model"):
        worker.tenant_access("acme", None)


def test_renewal_keeps_keys_in_use_and_narrows_them_at_once(dep: Deployment) -> None:
    now = [0.0]
    host = Host(dep.service)
    worker = _worker(dep, host, now)
    worker.tenant_access("acme", None)
    for step in range(1, 8):  # a key in use is renewed in the background...
        now[0] = step * 0.6
        assert worker.renew() == 1
        assert worker.tenant_access("acme", None).models == {"resnet", "mlp"}
    served_by_renewals = host.releases
    assert served_by_renewals == 8  # ...never on the request path
    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    now[0] += 0.6
    worker.renew()  # the next renewal carries the narrower grant, before the lease ends
    assert worker.tenant_access("acme", None).models == {"mlp"}


def test_withdrawn_consent_and_last_grant_drop_the_key_at_the_next_renewal(
    dep: Deployment,
) -> None:
    now = [0.0]
    worker = _worker(dep, Host(dep.service), now)
    worker.tenant_access("acme", None)
    dep.keys.unaccept(dep.ks_tokens["acme"], "owner", "zoo")
    now[0] = 0.6
    assert worker.renew() == 0
    with pytest.raises(PermissionDenied):
        worker.tenant_access("acme", None)  # refused though its old lease had 0.4 s left


def test_retired_key_id_is_not_served_after_its_lease(dep: Deployment) -> None:
    now = [0.0]
    worker = _worker(dep, Host(dep.service), now)
    assert worker.tenant_access("acme", "k1").keyring.current == "k1"
    dep.keys.retire_tenant_key(dep.ks_tokens["acme"], "k1")
    now[0] = 0.6
    worker.renew()
    with pytest.raises(UnknownKey, match="retired"):
        worker.tenant_access("acme", "k1")
    with pytest.raises(InfaasError):
        worker.tenant_access("acme", None)  # retired was the current key: none now


def test_a_revoked_token_stops_its_tenant_within_the_lease(dep: Deployment) -> None:
    """The administrator revokes acme (a signed revocation): the key service refuses its
    token at once, and the worker, whose renewals the host drops, serves its key no longer
    than the lease signed before."""
    from infaas.keyservice.enrolment import issue_revocation
    from tests.deployment import ADMIN_KEY

    now = [0.0]
    host = Host(dep.service)
    worker = _worker(dep, host, now)
    assert worker.tenant_access("acme", None).models == {"resnet", "mlp"}
    dep.keys.revoke_token(revocation=issue_revocation(ADMIN_KEY, "acme"))
    with pytest.raises(AuthenticationFailed, match="revoked"):
        dep.keys.consent(dep.ks_tokens["acme"])
    host.dropping = True
    now[0] = 0.6
    assert worker.renew() == 0
    now[0] = 1.0
    with pytest.raises(OSError):  # its lease is over
        worker.tenant_access("acme", None)
    host.dropping = False
    with pytest.raises(PermissionDenied, match="revoked"):
        worker.tenant_access("acme", None)


def test_a_retired_model_key_and_a_revoked_owner_stop_the_model_within_the_lease(
    dep: Deployment,
) -> None:
    """Model keys are decided under the same lease: a tenant key is released only with the
    models that still have a current data key and an owner in good standing, so retiring
    a model's key id (or revoking its owner) narrows what every worker serves at the next
    renewal, and no worker gets the retired key again."""
    now = [0.0]
    host = Host(dep.service)
    worker = _worker(dep, host, now)
    assert worker.tenant_access("acme", None).models == {"resnet", "mlp"}
    assert worker.model_key("resnet")[0] == "dk1"
    dep.keys.retire_model_key(dep.ks_tokens["zoo"], "resnet", "dk1")
    now[0] = 0.6
    assert worker.renew() == 1
    assert worker.tenant_access("acme", None).models == {"mlp"}
    with pytest.raises(UnknownKey, match="retired"):
        dep.worker_keys().model_key("resnet", "dk1")
    with pytest.raises(PermissionDenied, match="no current data key"):
        dep.worker_keys().tenant_key("acme", "resnet")
    # the owner's token revoked: none of its models is served once the lease ends
    dep.keys.revoke_token(dep.ks_tokens["zoo"])
    now[0] = 1.2
    assert worker.renew() == 0
    with pytest.raises(PermissionDenied, match="may use no model"):
        worker.tenant_access("acme", None)


def test_a_revoked_api_token_is_refused_by_the_worker_within_a_second(
    dep: Deployment,
) -> None:
    runtime = dep.new_worker()
    try:
        assert runtime.authenticate(dep.api_tokens["acme"]) == "acme"
        assert dep.tokens.revoke("acme")
        time.sleep(1.05)  # the worker's token cache (1 s): an API token gates work only
        with pytest.raises(AuthenticationFailed):
            runtime.authenticate(dep.api_tokens["acme"])
    finally:
        import asyncio

        asyncio.run(runtime.close())


def test_idle_keys_are_not_renewed_and_run_out(dep: Deployment) -> None:
    now = [0.0]
    host = Host(dep.service)
    worker = _worker(dep, host, now)
    worker.tenant_access("acme", None)
    now[0] = 40.0  # unused for longer than renew_idle_s
    assert worker.renew() == 0
    assert host.releases == 1


def test_worker_refuses_the_revoked_tenants_next_request(deployment: Deployment) -> None:
    """End to end on the shared deployment's worker (leases renewed by its own thread):
    after `revoke`, the tenant's next requests for the model are refused once the lease
    signed before it ends; granted again, it is served again."""
    from tests.conftest import MODEL

    dep = deployment
    dep.good("globex")
    dep.keys.revoke(dep.ks_tokens["owner1"], MODEL, "globex")
    try:
        refused = None
        deadline = time.monotonic() + 30.0  # a loose bound on a loaded machine, not a timing
        while refused is None and time.monotonic() < deadline:
            try:
                dep.good("globex")
            except PermissionDenied as e:
                refused = e
        assert refused is not None, "a revoked tenant is still served"
    finally:
        dep.keys.grant(dep.ks_tokens["owner1"], MODEL, "globex")
    dep.good("globex")  # a refusal is not remembered: the grant serves at once


def test_a_tenant_retires_its_key_id_over_http(dep: Deployment) -> None:
    from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient, create_keyservice_app
    from tests.asgi import TestClient

    with TestClient(create_keyservice_app(dep.service)) as http:
        remote = KeyServiceHttpClient(http)
        tenant = KeyServiceClient(
            remote, dep.trust.verifier(), policy_sha256=dep.trust.policy_sha256
        )
        worker = dep.worker_keys(transport=remote)
        assert worker.tenant_key("acme", "resnet", key_id="k1").key == dep.tenant_keys["acme"]
        with pytest.raises(InfaasError):
            tenant.retire_tenant_key(dep.ks_tokens["zoo"], "k1")  # an owner's token: refused
        tenant.retire_tenant_key(dep.ks_tokens["acme"], "k1")
        with pytest.raises(UnknownKey, match="retired"):
            worker.tenant_key("acme", "resnet", key_id="k1")
