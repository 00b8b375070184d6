"""A model owner who names its model after another owner's artifact touches nothing of it.

The attack, through the control plane's `POST /v1/models` as a malicious owner
would run it against the shared deployment: register models whose ids are the
victim's variant ids (``digits-mlp-small.fp32.onnxruntime``) and its validation
set's name (``digits-mlp-small.validation``), one of them failing after its claim
(so the failed registration cleans up). Every artifact file of the victim must be
byte-identical afterwards, and a fresh worker (reading the sealed variants from
disk, not from memory) must still serve the victim's tenants with the victim's
weights.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from api.app import create_app
from infaas.artifacts import MODEL_PART, VALIDATION_PART, artifact_name
from infaas.envelope import new_key, seal_artifact
from tests.asgi import TestClient
from tests.deployment import Deployment
from variants.runtime import load_variant

MODEL = "digits-mlp-small"
MALLORY = "mallory-names"


def _registration(dep: Deployment, model_id: str, **over: Any) -> dict[str, Any]:
    task = dep.store.get_task(dep.task)
    key = new_key()
    body = {
        "model_id": model_id,
        "task": task.name,
        "architecture": "mlp",
        "input": task.input.model_dump(mode="json"),
        "num_classes": task.num_classes,
        "declared_accuracy": None,
        "key_id": "mk1",
        "artifact": base64.b64encode(seal_artifact(key, "mk1", model_id, b"evil")).decode(),
        "validation": base64.b64encode(
            seal_artifact(key, "mk1", f"{model_id}.validation", b"evil")
        ).decode(),
    }
    return body | over


@pytest.fixture(scope="module")
def attacked(deployment: Deployment) -> Iterator[tuple[Deployment, dict[str, bytes], list[str]]]:
    dep = deployment
    before = {p.name: p.read_bytes() for p in dep.artifacts.root.glob("*.sealed")}
    assert len(before) >= 2 + len(dep.variants)  # the model, its validation set, its variants
    app = create_app(dep.settings, store=dep.store, artifacts=dep.artifacts, tokens=dep.tokens)
    auth = {"Authorization": f"Bearer {dep.tokens.issue(MALLORY, 'owner')}"}
    fp32 = f"{MODEL}.fp32.onnxruntime"
    other = next(v for v in dep.variants if v != fp32)
    registered = [fp32, f"{MODEL}.validation"]
    with TestClient(app, raise_server_exceptions=False) as http:
        for model_id in registered:
            r = http.post("/v1/models", json=_registration(dep, model_id), headers=auth)
            assert r.status_code == 202, r.text
        # fails after its claim (the task's signature differs): its clean-up runs
        bad = _registration(dep, other, num_classes=dep.store.get_task(dep.task).num_classes + 1)
        r = http.post("/v1/models", json=bad, headers=auth)
        assert r.status_code == 409, r.text
    try:
        yield dep, before, registered
    finally:
        for model_id in registered:
            for part in (MODEL_PART, VALIDATION_PART):
                dep.artifacts.delete(artifact_name(MALLORY, model_id, part))
            dep.store.delete_model(model_id)
            dep.store.delete_job(model_id)


def test_no_artifact_of_the_victim_is_replaced_or_deleted(
    attacked: tuple[Deployment, dict[str, bytes], list[str]],
) -> None:
    dep, before, registered = attacked
    after = {p.name: p.read_bytes() for p in dep.artifacts.root.glob("*.sealed")}
    for name, blob in before.items():
        assert after.get(name) == blob, f"the victim's artifact {name} was changed or deleted"
    # mallory's successful registrations landed in mallory's own names, and only there
    mine = {
        f"{artifact_name(MALLORY, m, part)}.sealed"
        for m in registered
        for part in (MODEL_PART, VALIDATION_PART)
    }
    assert set(after) - set(before) == mine
    for m in registered:
        assert dep.store.get_model(m).owner == MALLORY


def test_names_are_digests_in_each_owners_own_namespace() -> None:
    a = artifact_name("zoo", "resnet", "variant:resnet.fp32.onnxruntime")
    b = artifact_name("mallory", "resnet.fp32.onnxruntime", MODEL_PART)
    c = artifact_name("mallory", "resnet", "variant:resnet.fp32.onnxruntime")
    assert len({a, b, c}) == 3 and all(len(n) == 64 for n in (a, b, c))
    assert artifact_name("zoo", "resnet", MODEL_PART) != artifact_name("zoo", "resnet", "model ")


def test_a_fresh_worker_still_serves_the_victims_weights(
    attacked: tuple[Deployment, dict[str, bytes], list[str]],
) -> None:
    dep, _, _ = attacked
    fp32 = f"{MODEL}.fp32.onnxruntime"
    reference = load_variant(dep.store.get_variant(fp32), dep.onnx).run(dep.x[:4])
    worker = dep.new_worker()  # nothing in memory: every variant comes from its sealed file
    try:
        for vid in dep.variants:
            req = dep.request("acme", dep.x[:4], variant_id=vid)
            resp = asyncio.run(worker.infer(req, dep.api_tokens["acme"]))
            assert resp.variant_id == vid
            out = dep.outputs("acme", req, resp)
            if vid == fp32:
                np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
            else:
                assert np.mean(np.argmax(out, 1) == np.argmax(reference, 1)) >= 0.75
    finally:
        asyncio.run(worker.close())
