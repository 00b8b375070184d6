"""A key service or a worker built for real, serving one request, then its loaded modules.

Run as a script in a fresh interpreter (``python tests/measured_processes.py
keyservice|worker WORKDIR``); it prints, as JSON, the project modules in
`sys.modules` after the request. `tests/unit/test_measurement.py` checks them
against the measured import closures. The script imports only what the
process itself runs: its entry module first (as Ray does in a replica), then
what the set-up needs, never the client, the CLI or the zoo (the worker's model
comes as files the test wrote).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import uuid
from pathlib import Path

PROJECT = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api")


def loaded_project_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0] in PROJECT)


def _testclient() -> type:
    from tests.asgi import TestClient

    return TestClient


def keyservice(work: Path) -> None:
    """The key service as its replica builds it (`KeyServiceIngress`), attested once over HTTP."""
    from infaas.keyservice.measurement import KEYSERVICE_ENTRY

    ingress = importlib.import_module(KEYSERVICE_ENTRY).KeyServiceIngress
    assert ingress.func_or_class.__module__ == KEYSERVICE_ENTRY
    from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient
    from infaas.keyservice.enrolment import issue_enrolment, load_or_create_enrolment_key
    from infaas.keyservice.measurement import keyservice_trust
    from infaas.keyservice.trust import ed25519_raw
    from infaas.settings import Settings

    settings = Settings(data_dir=work, store_url="memory://")
    admin = load_or_create_enrolment_key(work)  # the administrator's, before the service reads it
    # the class as written, below Serve's ASGI wrapper (whose constructor needs a replica)
    # (the measurement its pool's workers would report; none connects here)
    replica = ingress.func_or_class.__mro__[1](
        settings,
        {p.name: "00" * 32 for p in settings.pools},
        ed25519_raw(admin.public_key()).hex(),
    )
    trust = keyservice_trust(settings, {p.name: b"\x00" * 32 for p in settings.pools})
    with _testclient()(replica.__serve_build_asgi_app__()) as http:
        client = KeyServiceClient(
            KeyServiceHttpClient(http), trust.verifier(), policy_sha256=trust.policy_sha256
        )
        client.attest()
        client.register(issue_enrolment(admin, "tenant-a", "tenant"))


def worker(work: Path) -> None:
    """A `WorkerRuntime` (as tests/unit/test_worker_runtime.py builds it) serving one request."""
    from enclave_workers.measurement import WORKER_ENTRY

    entry = importlib.import_module(WORKER_ENTRY)
    assert entry.EnclaveWorker.__module__ == WORKER_ENTRY

    import numpy as np

    from enclave_workers.endpoint import serve_app
    from enclave_workers.preparation import PreparationOptions
    from enclave_workers.runtime import WorkerRuntime
    from infaas.artifacts import ArtifactStore
    from infaas.attestation import (
        AttestationPolicy,
        AttestationVerifier,
        SimulatedPlatformCA,
        SimulatedTEE,
    )
    from infaas.auth import TokenRegistry
    from infaas.envelope import new_key, open_response, seal_request
    from infaas.keyservice import KeyService, KeyServiceClient
    from infaas.protocol import decode_response, encode_request
    from infaas.settings import ProfilerSettings, Settings
    from infaas.store import MemoryStore
    from infaas.types import ModelRecord, Task
    from infaas.wire import InferRequest, InferResponse
    from profiler.profile import ProfileOptions
    from tests.deployment import ADMIN_PUBLIC, bundle, enrol, put_sealed_model

    model = json.loads((work / "model.json").read_text())
    onnx = (work / "model.onnx").read_bytes()
    with np.load(work / "validation.npz") as z:
        x, y = np.asarray(z["x"]), np.asarray(z["y"])
    settings = Settings(
        data_dir=work,
        store_url="memory://",
        profiler=ProfilerSettings(batch_sizes=(1, 2), validation_samples=32),
    )
    store = MemoryStore()
    artifacts = ArtifactStore(work / "artifacts")
    ca = SimulatedPlatformCA.generate("measured-worker")
    ks_m, worker_m = b"k" * 32, b"w" * 32

    def policy(m: bytes) -> AttestationPolicy:
        return AttestationPolicy(allow_simulated=True, allowed_measurements=(m.hex(),))

    release_policy = AttestationVerifier(policy(worker_m), extra_roots=[ca.root_cert])
    service = KeyService(
        store, new_key(), SimulatedTEE(ca, ks_m), release_policy, enrolment_key=ADMIN_PUBLIC
    )
    trust = bundle(ca.root_pem, ks_m, release_policy)
    ks = KeyServiceClient(service, trust.verifier(), policy_sha256=trust.policy_sha256)
    ks.attest()
    owner = enrol(ks, "owner", "owner")
    data_key = new_key()
    ks.upload_model_key(owner, model["model_id"], "m1", data_key)
    put_sealed_model(artifacts, data_key, ModelRecord.model_validate(model["record"]), onnx, x, y)
    store.put_task(Task.model_validate(model["task"]))
    store.put_model(ModelRecord.model_validate(model["record"]))
    tenant_ks = enrol(ks, "acme", "tenant")
    tenant_key = new_key()
    ks.upload_tenant_key(tenant_ks, "acme-k1", tenant_key)
    ks.grant(owner, model["model_id"], "acme")
    ks.accept(tenant_ks, "owner", "owner")
    api_token = TokenRegistry(store).issue("acme", "tenant")

    prep = PreparationOptions(
        pool="cpu",
        max_batch=2,
        profile=ProfileOptions(batch_sizes=(1, 2), warmup_runs=1, min_runs=2, min_time_s=0.0),
        validation_samples=32,
        calibration_samples=8,
    )
    runtime = WorkerRuntime(
        settings, store, artifacts, service, SimulatedTEE(ca, worker_m), keyservice=trust,
        batch_wait_ms=0.0, refresh_s=3600.0, preparation=prep,
    )  # fmt: skip
    runtime.start()
    job = runtime.prepare_model(model["model_id"])
    assert job.state == "ready", job.message

    rid = uuid.uuid4().hex
    task = model["task"]["name"]
    body, header_length = encode_request({"x": x[:2]}, request_id=rid)
    envelope = seal_request(
        {"acme-k1": tenant_key},
        body,
        header_length=header_length,
        tenant="acme",
        task=task,
        latency_ms=10_000.0,
        min_accuracy=0.0,
        request_id=rid,
    )
    request = InferRequest(envelope=envelope)
    with _testclient()(serve_app(runtime, max_request_bytes=1 << 20)) as http:
        r = http.post(
            "/",
            content=request.model_dump_json(),
            headers={"Authorization": f"Bearer {api_token}"},
        )
    assert r.status_code == 200, r.text
    answer = InferResponse.model_validate_json(r.content)
    plain = open_response(answer.envelope, {"acme-k1": tenant_key}, request_id=rid, tenant="acme")
    _, outputs = decode_response(bytes(plain), answer.envelope.header_length)
    assert next(iter(outputs.values())).shape[0] == 2
    asyncio.run(runtime.close())


if __name__ == "__main__":
    kind, workdir = sys.argv[1], Path(sys.argv[2])
    {"keyservice": keyservice, "worker": worker}[kind](workdir)
    print(json.dumps(loaded_project_modules()))
