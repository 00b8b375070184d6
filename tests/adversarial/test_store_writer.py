"""What a store writer can and cannot mint.

Decisions that gate keys or plaintext are taken by the key service on records sealed under
its KEK (a written or moved record does not open) and by the worker on keys only the key
service releases. The control plane's own API tokens are plain store records: a store
writer can mint one, and it buys metadata and work, never plaintext (README, Security).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infaas.attestation import SimulatedPlatformCA
from infaas.auth import TokenRegistry
from infaas.envelope import new_key
from infaas.errors import DecryptionFailed, InfaasError
from infaas.store import SealedTable
from tests.deployment import Deployment


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    d = Deployment.create(platform_ca, tmp_path)
    d.add_owner("zoo")
    d.add_model_key("zoo", "resnet", "dk1")
    d.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    return d


def test_a_store_writer_cannot_mint_a_key_service_principal(dep: Deployment) -> None:
    import hashlib

    token = "mallory:chosen-by-the-host"
    forged = {"id": "mallory", "role": "owner", "token_sha256": hashlib.sha256(token.encode())}
    # a record written in clear, and a genuine one copied under the new name
    dep.store.put_sealed(SealedTable.PRINCIPAL, "mallory", json.dumps(forged, default=str).encode())
    with pytest.raises(DecryptionFailed):
        dep.keys.grant(token, "resnet", "mallory")
    zoo = dep.store.get_sealed(SealedTable.PRINCIPAL, "zoo")
    assert zoo is not None
    dep.store.put_sealed(SealedTable.PRINCIPAL, "mallory", zoo)
    with pytest.raises(DecryptionFailed):
        dep.keys.upload_model_key(token, "resnet", "dk9", new_key())


def test_a_minted_api_token_opens_no_plaintext(deployment: Deployment) -> None:
    """The host mints an API token for a fresh tenant name and sends a request it sealed
    itself: the worker has no key for it (none released), so nothing runs."""
    dep = deployment
    token = TokenRegistry(dep.store).issue("host-made", "tenant")
    dep.tenant_keys["host-made"] = new_key()  # the host's own "request key"
    req = dep.request("host-made", dep.x[:1])
    with pytest.raises(InfaasError) as info:
        dep.infer("host-made", req, token)
    assert info.value.status_code in (403, 404)
    del dep.tenant_keys["host-made"]
