"""Keys never appear in logs or in the store, in any common encoding.

A whole key-service life runs (over HTTP, with an SQLite store on disk):
registration, attested uploads, grants, release to a worker, a restart,
request/response envelopes. Then every log record and every byte the store
wrote are scanned for each key: raw, hex (both cases) and base64 (standard and
url-safe, at all three alignments, since a key inside a longer base64 string
is encoded differently depending on its offset).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from infaas.attestation import (
    AttestationPolicy,
    AttestationVerifier,
    SimulatedPlatformCA,
    SimulatedTEE,
)
from infaas.envelope import (
    ServedBy,
    new_key,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from infaas.keyservice import (
    KeyRequest,
    KeyService,
    KeyServiceClient,
    KeyServiceHttpClient,
    WorkerKeyClient,
    create_keyservice_app,
)
from infaas.keyservice.counter import MemoryCounter
from infaas.store import SealedTable, open_store
from tests.asgi import TestClient
from tests.deployment import ADMIN_PUBLIC, bundle, enrol
from tests.security.markers import encodings

KS_M = hashlib.sha256(b"ks").digest()
WORKER_M = hashlib.sha256(b"worker").digest()


def leaks(haystack: bytes, secret: bytes) -> list[bytes]:
    return [f for f in encodings(secret) if f in haystack]


def test_encodings_catch_embedded_keys() -> None:
    key = new_key()
    for pad in (b"", b"x", b"xy"):
        assert leaks(base64.b64encode(pad + key + b"tail"), key)
    assert leaks(b"prefix" + key.hex().encode(), key)
    assert not leaks(b"nothing here" * 10, key)


def test_no_key_in_logs_or_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "meta.db"
    store = open_store(f"sqlite:///{db}")
    ca = SimulatedPlatformCA.generate("secrecy")
    kek = new_key()
    counter = MemoryCounter()  # TEE state: the restart below keeps it, like the KEK

    pol = AttestationPolicy(allow_simulated=True, allowed_measurements=(WORKER_M.hex(),))
    release_policy = AttestationVerifier(pol, extra_roots=[ca.root_cert])

    def service() -> KeyService:
        return KeyService(
            store,
            kek,
            SimulatedTEE(ca, KS_M),
            release_policy,
            counter=counter,
            enrolment_key=ADMIN_PUBLIC,
        )

    trust = bundle(ca.root_pem, KS_M, release_policy)

    def worker_of(transport: Any) -> WorkerKeyClient:
        return WorkerKeyClient(
            transport,
            SimulatedTEE(ca, WORKER_M),
            verifier=trust.verifier(),
            policy_sha256=trust.policy_sha256,
        )

    model_key, tenant_key, tenant_key2 = new_key(), new_key(), new_key()
    secrets_: list[bytes] = [model_key, tenant_key, tenant_key2]

    with TestClient(create_keyservice_app(service())) as http:
        remote = KeyServiceHttpClient(http)
        c = KeyServiceClient(remote, trust.verifier(), policy_sha256=trust.policy_sha256)
        c.attest()
        owner = enrol(c, "zoo", "owner")
        tenant = enrol(c, "acme", "tenant")
        secrets_ += [owner.encode(), tenant.encode()]
        c.upload_model_key(owner, "resnet", "dk1", model_key)
        c.upload_tenant_key(tenant, "k1", tenant_key)
        c.grant(owner, "resnet", "acme")
        c.accept(tenant, "owner", "zoo")
        c.upload_tenant_key(tenant, "k2", tenant_key2)
        worker = worker_of(remote)
        released = worker.fetch(
            [
                KeyRequest(kind="model", model_id="resnet"),
                KeyRequest(kind="tenant", model_id="resnet", tenant="acme", key_id="k1"),
            ]
        )
        assert [r.key for r in released] == [model_key, tenant_key]
        logging.getLogger("infaas.test").info("released %r", released)

    # restart over the same store and KEK, release again in-process
    again = worker_of(service()).tenant_key("acme", "resnet")
    assert again.key == tenant_key2

    # the request path: envelopes with the released key
    req = seal_request(
        {"k1": tenant_key},
        b"plain input",
        tenant="acme",
        task="digits",
        latency_ms=50,
        min_accuracy=0.5,
        request_id="r1",
    )
    assert open_request(req, {"k1": tenant_key}) == b"plain input"
    served = ServedBy("v", "mlp", 0.9, "cpu", simulated_tee=True, measurement=WORKER_M)
    resp = seal_response({"k1": tenant_key}, req, b"plain output", served=served)
    assert open_response(resp, {"k1": tenant_key}, request_id="r1") == b"plain output"
    logging.getLogger("infaas.test").info("request %s response %s", req, resp)
    store.close()

    log_text = "\n".join([r.getMessage() for r in caplog.records] + [caplog.text]).encode()
    assert caplog.records, "expected some logging to scan"
    disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert len(disk) > 0
    reopened = open_store(f"sqlite:///{db}")
    records = b"".join(
        k.encode() + v for table in SealedTable for k, v in reopened.sealed_records(table).items()
    )
    assert records
    for secret in secrets_:
        assert not leaks(log_text, secret), "a key or token leaked into the logs"
        assert not leaks(disk, secret), "a key or token is on disk in the store"
        assert not leaks(records, secret), "a key or token is in a store record"
    for plain in (b"plain input", b"plain output"):
        assert plain not in log_text and plain not in disk
