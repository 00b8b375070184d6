"""A model owner who grants its model to a tenant that never accepted it gets no request.

The attack, as a malicious owner ("mallory-consent") runs it against the shared
deployment's tenants: register a model for the victims' task whose graph
copies the caller's input into its output (so whatever it is sent, mallory
could read back), profile it as the most accurate and the cheapest variant
there is, and grant it to the victim. Model-less selection must still never
pick it, a pin to it is refused, the key service releases no key for it,
mallory cannot accept on the victim's behalf, and the host cannot forge the
victim's acceptance in the store. Each check fails if the attack works.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
from onnx import TensorProto, helper

from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    DecryptionFailed,
    InfaasError,
    NoFeasibleVariant,
    NotFound,
    PermissionDenied,
)
from infaas.keyservice import KeyRequest
from infaas.store import SealedTable
from infaas.types import (
    Backend,
    BatchLatency,
    LatencyModel,
    ModelRecord,
    Precision,
    Profile,
    VariantSpec,
)
from infaas.wire import InferRequest
from tests.deployment import Deployment

MODEL = "digits-mlp-small"
EVIL = "digits-mallory"
EVIL_VARIANT = f"{EVIL}.fp32.onnxruntime"


def exfiltrating_graph() -> bytes:
    """Outputs the first 10 input features as the 'logits': the caller's data, verbatim."""
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["x", "start", "end", "axis"], ["logits"]),
        ],
        "mallory-consent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            helper.make_tensor("start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("end", TensorProto.INT64, [1], [10]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _best_profile(variant_id: str) -> Profile:
    """The profile an owner would love: perfect accuracy, fastest and cheapest of all."""
    return Profile(
        variant_id=variant_id,
        batches=(BatchLatency(batch=1, p50_ms=0.001, p99_ms=0.001, throughput_rps=1e7),),
        load_ms=0.0,
        peak_memory_bytes=0,
        accuracy=1.0,
        accuracy_kind="validation",
        latency_model=LatencyModel(intercept_ms=0.001, slope_ms=0.0),
        threads=1,
    )


@pytest.fixture(scope="module")
def attacked(deployment: Deployment) -> Iterator[Deployment]:
    """The shared deployment with mallory's model registered, profiled as the best, and
    granted to the victims; removed again afterwards."""
    dep = deployment
    onnx = exfiltrating_graph()
    dep.add_owner("mallory-consent")
    dep.add_model_key("mallory-consent", EVIL)
    dep.store.put_model(
        ModelRecord(
            model_id=EVIL,
            task=dep.task,
            architecture="mlp",
            owner="mallory-consent",
            artifact_sha256=hashlib.sha256(onnx).hexdigest(),
            size_bytes=len(onnx),
            num_parameters=0,
        )
    )
    spec = VariantSpec(
        variant_id=EVIL_VARIANT,
        model_id=EVIL,
        task=dep.task,
        architecture="mlp",
        precision=Precision.FP32,
        backend=Backend.ONNXRUNTIME,
        max_batch=8,
    )
    dep.add_variant(spec, _best_profile(EVIL_VARIANT), onnx)
    # the victims: they accepted owner1 (whose model they mean to use), never mallory
    for victim in ("victim-a", "victim-b"):
        dep.add_tenant(victim, owner="owner1", grant=(MODEL,))
        dep.keys.grant(dep.ks_tokens["mallory-consent"], EVIL, victim)  # no consent asked
    dep.runtime.refresh_candidates()
    try:
        yield dep
    finally:
        dep.store.delete_model(EVIL)
        dep.variants.remove(EVIL_VARIANT)
        dep.runtime.refresh_candidates()


def _infer(dep: Deployment, tenant: str, req: InferRequest) -> np.ndarray:
    resp = dep.infer(tenant, req)
    assert resp.variant_id != EVIL_VARIANT, "a request reached the model of an unaccepted owner"
    return dep.outputs(tenant, req, resp)


def test_model_less_selection_never_reaches_an_unaccepted_owners_model(
    attacked: Deployment,
) -> None:
    dep = attacked
    # the attack is real: mallory's variant is what selection over everything picks, and
    # its output is the caller's input
    best = min(dep.runtime.candidates.of_task(dep.task), key=lambda c: c.cost_per_request)
    assert best.variant_id == EVIL_VARIANT
    x = dep.x[:4]
    for slo in ({}, {"min_accuracy": 0.9}, {"latency_ms": 50.0}):
        req = dep.request("victim-a", x, **slo)  # type: ignore[arg-type]
        out = _infer(dep, "victim-a", req)
        assert out.shape == (4, 10)
        assert not np.allclose(out, x[:, :10]), "the victim's input came back as output"


def test_a_pin_to_the_unaccepted_model_is_refused(attacked: Deployment) -> None:
    dep = attacked
    req = dep.request("victim-a", dep.x[:1], variant_id=EVIL_VARIANT)
    with pytest.raises(PermissionDenied, match="not one you accepted"):
        dep.infer("victim-a", req)
    dep.good("victim-a")


def test_the_key_service_releases_no_key_for_a_grant_without_consent(
    attacked: Deployment,
) -> None:
    dep = attacked
    worker = dep.worker_keys()
    with pytest.raises(PermissionDenied, match="has not accepted"):
        worker.tenant_key("victim-a", EVIL, "victim-a-k1")
    access = worker.tenant_key("victim-a", None, "victim-a-k1")
    assert access.models == (MODEL,)
    # the tenant's own acceptance (of the one model) is what opens it, and withdrawing closes it
    dep.keys.accept(dep.ks_tokens["victim-b"], "model", EVIL)
    assert set(worker.tenant_key("victim-b", None, "victim-b-k1").models or ()) == {MODEL, EVIL}
    dep.keys.unaccept(dep.ks_tokens["victim-b"], "model", EVIL)
    assert worker.tenant_key("victim-b", None, "victim-b-k1").models == (MODEL,)


def test_only_the_tenant_changes_its_acceptance(attacked: Deployment) -> None:
    dep = attacked
    # mallory's own token is an owner's: no tenant policy to change
    with pytest.raises(PermissionDenied, match="is not a tenant"):
        dep.keys.accept(dep.ks_tokens["mallory-consent"], "owner", "mallory-consent")
    with pytest.raises(AuthenticationFailed):
        dep.keys.accept("victim-a:guessed-secret", "owner", "mallory-consent")
    # accepting a name nobody owns (to be claimed later by whoever registers it) is refused
    with pytest.raises(NotFound):
        dep.keys.accept(dep.ks_tokens["victim-a"], "owner", "not-yet-registered")
    with pytest.raises(NotFound):
        dep.keys.accept(dep.ks_tokens["victim-a"], "model", "not-yet-registered")
    assert dep.keys.consent(dep.ks_tokens["victim-a"]).owners == ("owner1",)


def test_the_host_cannot_forge_a_tenants_acceptance_in_the_store(attacked: Deployment) -> None:
    """The host copies the sealed record of a tenant that accepted mallory over the
    victim's: it does not open under the victim's name, so no key is released."""
    dep = attacked
    dep.add_tenant("mallory-fan", owner="mallory-consent", grant=(EVIL,))
    worker = dep.worker_keys()
    assert worker.tenant_key("mallory-fan", EVIL, "mallory-fan-k1").model_id == EVIL
    saved = dep.store.get_sealed(SealedTable.PRINCIPAL, "victim-b")
    forged = dep.store.get_sealed(SealedTable.PRINCIPAL, "mallory-fan")
    assert saved is not None and forged is not None
    dep.store.put_sealed(SealedTable.PRINCIPAL, "victim-b", forged)
    try:
        with pytest.raises(DecryptionFailed):
            worker.tenant_key("victim-b", EVIL, "victim-b-k1")
    finally:
        dep.store.put_sealed(SealedTable.PRINCIPAL, "victim-b", saved)
    with pytest.raises(PermissionDenied):
        worker.tenant_key("victim-b", EVIL, "victim-b-k1")


def test_a_proxy_cannot_widen_the_released_model_set(attacked: Deployment) -> None:
    """Between key service and worker, a rewriting proxy adds mallory's model to the set a
    tenant key was released for: the worker refuses it (the set is in the key service's
    signature over the release, and in the seal)."""
    dep = attacked
    service = dep.service

    class Rewriting:
        def __getattr__(self, name: str) -> object:
            return getattr(service, name)

        def release(self, req: object) -> object:
            resp = service.release(req)  # type: ignore[arg-type]
            keys = tuple(
                k.model_copy(update={"models": (*k.models, EVIL)}) if k.models else k
                for k in resp.keys
            )
            return resp.model_copy(update={"keys": keys})

    proxied = dep.worker_keys(transport=Rewriting())
    with pytest.raises(AttestationFailed, match="not signed by the attested key service"):
        proxied.fetch([KeyRequest(kind="tenant", tenant="victim-a", key_id="victim-a-k1")])


def test_nothing_accepted_fits_is_a_422_that_says_so(attacked: Deployment) -> None:
    dep = attacked
    # mallory's variant claims accuracy 1.0: the only one above 0.9999, but not accepted
    req = dep.request("victim-a", dep.x[:1], min_accuracy=0.9999)
    with pytest.raises(NoFeasibleVariant, match="a model you accepted") as info:
        dep.infer("victim-a", req)
    assert EVIL_VARIANT not in str(info.value.to_problem())
    dep.good("victim-a")


def test_honest_tenants_are_served_meanwhile(attacked: Deployment) -> None:
    dep = attacked

    async def many() -> list[object]:
        reqs = [(t, dep.request(t, dep.x[:2])) for t in ("acme", "globex", "victim-b") * 3]
        return await asyncio.gather(
            *(dep.runtime.infer(r, dep.api_tokens[t]) for t, r in reqs), return_exceptions=True
        )

    results = asyncio.run(many())
    assert not [r for r in results if isinstance(r, InfaasError | Exception)]
    assert all(getattr(r, "variant_id", EVIL_VARIANT) != EVIL_VARIANT for r in results)
