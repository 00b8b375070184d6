"""The worker as a Ray Serve application: key service + infer app, one real HTTP request.

One module-scoped Ray (2 CPUs, no dashboard) and Serve instance. The model is
registered the way the control plane does it (sealed artifacts, metadata,
keys uploaded to the attested key service over HTTP), prepared through the
worker's handle, then served over HTTP through the Serve proxy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from enclave_workers.deployment import APP_NAME, ROUTE_PREFIX, build_infer_app
from infaas.artifacts import ArtifactStore
from infaas.auth import TokenRegistry
from infaas.envelope import new_key, open_response, seal_request
from infaas.keyservice import KeyServiceClient, KeyServiceHttpClient
from infaas.keyservice.enrolment import issue_enrolment, load_or_create_enrolment_key
from infaas.protocol import decode_response, encode_request
from infaas.settings import Pool, ProfilerSettings, Settings
from infaas.store import open_store
from infaas.wire import InferRequest, InferResponse, JobStatus
from infaas.zoo import Manifest, load_model_bytes, load_validation
from tests.deployment import put_sealed_model
from tests.integration.serve_stack import ray_serve_with_keyservice, serve_settings
from tests.zoo_fixtures import entry, small_manifest, small_zoo
from variants.runtime import load_variant

__all__ = ["small_manifest", "small_zoo"]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MODEL = "digits-mlp-small"


@dataclass
class Served:
    url: str
    settings: Settings
    tenant_key: bytes
    api_token: str
    x: np.ndarray
    onnx: bytes
    job: JobStatus
    handle: Any


@pytest.fixture(scope="module")
def served(
    small_zoo: Path, small_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    from enclave_workers.measurement import deployment_trust

    settings = serve_settings(
        tmp_path_factory.mktemp("serve"),
        pools=(Pool(name="cpu", num_cpus=1.0, cost_per_replica_s=1.0),),
        profiler=ProfilerSettings(
            batch_sizes=(1, 2, 4, 8), warmup_runs=1, min_runs=3, min_time_s=0.02,
            validation_samples=64, calibration_samples=16,
        ),
    )  # fmt: skip
    admin = load_or_create_enrolment_key(settings.data_dir)
    with ray_serve_with_keyservice(settings) as url:
        # register the model as the control plane does: keys to the attested key service,
        # sealed blobs beside the store, metadata in it
        zoo_entry = entry(small_manifest, MODEL)
        onnx = load_model_bytes(small_zoo, zoo_entry)
        x, y = load_validation(small_zoo, zoo_entry)
        store = open_store(settings.resolved_store_url)
        http = httpx.Client(base_url=url, timeout=30.0)
        trust = deployment_trust(settings)
        client = KeyServiceClient(
            KeyServiceHttpClient(http),
            trust.verifier(),
            policy_sha256=trust.policy_sha256,
            log=trust.witness(),
        )
        client.attest()
        owner = client.register(issue_enrolment(admin, "owner1", "owner"))
        data_key = new_key()
        client.upload_model_key(owner, MODEL, "m1", data_key)
        artifacts = ArtifactStore(settings.data_dir / "artifacts")
        put_sealed_model(artifacts, data_key, zoo_entry.to_model_record(), onnx, x, y)
        store.put_task(small_manifest.tasks["digits"])
        store.put_model(zoo_entry.to_model_record())
        ks_token = client.register(issue_enrolment(admin, "acme", "tenant"))
        tenant_key = new_key()
        client.upload_tenant_key(ks_token, "acme-k1", tenant_key)
        client.grant(owner, MODEL, "acme")
        client.accept(ks_token, "owner", "owner1")
        api_token = TokenRegistry(store).issue("acme", "tenant")

        serve.run(
            build_infer_app(settings, url, keyservice=trust),
            name=APP_NAME,
            route_prefix=ROUTE_PREFIX,
        )
        handle = serve.get_app_handle(APP_NAME)
        job = handle.prepare_model.remote(MODEL).result(timeout_s=240)
        yield Served(url, settings, tenant_key, api_token, x, onnx, job, handle)
        http.close()
        store.close()


def test_prepare_through_the_handle(served: Served) -> None:
    assert served.job.state == "ready", served.job.message
    assert served.job.done == served.job.total > 0


def test_one_sealed_request_over_http(served: Served) -> None:
    fp32 = f"{MODEL}.fp32.onnxruntime"
    rid = uuid.uuid4().hex
    x = served.x[:4]
    body, header_length = encode_request({"x": x}, request_id=rid)
    env = seal_request(
        {"acme-k1": served.tenant_key},
        body,
        header_length=header_length,
        tenant="acme",
        task="digits",
        latency_ms=500.0,
        min_accuracy=0.5,
        request_id=rid,
        variant_id=fp32,
    )
    body = InferRequest(envelope=env).model_dump_json()
    headers = {"Authorization": f"Bearer {served.api_token}", "Content-Type": "application/json"}
    r = httpx.post(served.url + ROUTE_PREFIX, content=body, headers=headers, timeout=60.0)
    assert r.status_code == 200, r.text
    resp = InferResponse.model_validate_json(r.content)
    assert resp.variant_id == fp32 and resp.simulated_tee
    plain = open_response(
        resp.envelope, {"acme-k1": served.tenant_key}, request_id=rid, tenant="acme"
    )
    _, outputs = decode_response(bytes(plain), resp.envelope.header_length)
    spec = next(
        v for v in open_store(served.settings.resolved_store_url).list_variants()
        if v.variant_id == fp32
    )  # fmt: skip
    np.testing.assert_allclose(outputs["logits"], load_variant(spec, served.onnx).run(x), rtol=1e-5)
    # a replay through the proxy is refused with the problem body
    again = httpx.post(served.url + ROUTE_PREFIX, content=body, headers=headers, timeout=60.0)
    assert again.status_code == 409 and again.json()["code"] == "replayed_request"

    status = served.handle.status.remote().result(timeout_s=30)
    assert status["simulated"] and status["requests_served"] >= 1
    assert fp32 in status["loaded_variants"]
