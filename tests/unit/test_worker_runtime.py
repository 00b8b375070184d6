"""The TEE worker runtime end to end, in process: prepare a sealed model, serve tenants.

The shared deployment (tests/deployment.py): an in-process key service on the
simulated TEE, a memory store, sealed artifacts in a temp dir: registration ->
preparation -> sealed inference of two tenants,
with every refusal the envelope and the key service promise (and a good request
after each one, to show one bad request breaks nothing).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from enclave_workers.autoscaling import LoadAgent
from enclave_workers.endpoint import create_worker_app, serve_app
from enclave_workers.runtime import WorkerRuntime
from infaas.artifacts import MODEL_PART, artifact_name
from infaas.envelope import Envelope, open_response
from infaas.errors import (
    AuthenticationFailed,
    DecryptionFailed,
    InfaasError,
    InvalidInput,
    NoFeasibleVariant,
    PermissionDenied,
    ReplayedRequest,
    StoreUnavailable,
)
from infaas.store import REPLAY_PRUNE_INTERVAL_S
from infaas.types import BatchLatency, LatencyModel, Profile
from infaas.wire import InferRequest, InferResponse
from scheduler.routing import RoutingHints
from tests.asgi import TestClient
from tests.deployment import WORKER_MEASUREMENT, Deployment
from variants.runtime import load_variant

MODEL = "digits-mlp-small"
World = Deployment


@pytest.fixture(scope="module")
def world(deployment: Deployment) -> Deployment:
    """The shared deployment (tests/conftest.py): the digits model prepared by its worker."""
    return deployment


def test_preparation_registers_sealed_profiled_variants(world: World) -> None:
    job = world.store.get_job(MODEL)
    assert job is not None and job.state == "ready" and job.done == job.total > 0
    assert world.variants and f"{MODEL}.fp32.onnxruntime" in world.variants
    artifacts = world.runtime.artifacts
    for vid in world.variants:
        profile = world.store.get_profile(vid)
        assert profile is not None and profile.accuracy_kind == "validation"
        # MACed by the worker that measured it, bound to the sealed artifact it measured
        assert profile.mac is not None and profile.measured_by == WORKER_MEASUREMENT.hex()
        sealed = artifacts.get(world.variant_artifact(vid))
        # sealed under the model's data key: the plaintext graph is not in the blob
        assert world.onnx[-64:] not in sealed and sealed.startswith(b"INFAASA1")
    assert len(world.runtime.candidates) == len(world.variants)


def test_two_tenants_concurrently_get_the_fp32_answer_each_only_their_own(
    world: World,
) -> None:
    fp32 = f"{MODEL}.fp32.onnxruntime"
    reference = load_variant(world.store.get_variant(fp32), world.onnx).run(world.x[:8])
    for tenant in ("acme", "globex"):  # keys released and the variant loaded beforehand
        world.infer(tenant, world.request(tenant, world.x[:1], variant_id=fp32))
    xa, xg = world.x[:3], world.x[3:8]
    ra = world.request("acme", xa, variant_id=fp32)
    rg = world.request("globex", xg, variant_id=fp32)

    async def both() -> tuple[InferResponse, InferResponse]:
        a, g = await asyncio.gather(
            world.runtime.infer(ra, world.api_tokens["acme"]),
            world.runtime.infer(rg, world.api_tokens["globex"]),
        )
        return a, g

    resp_a, resp_g = asyncio.run(both())
    # one cross-tenant batch served both
    assert resp_a.batch_size == resp_g.batch_size == 8
    assert resp_a.variant_id == resp_g.variant_id == fp32
    assert resp_a.measurement == WORKER_MEASUREMENT.hex() and resp_a.simulated_tee
    np.testing.assert_allclose(world.outputs("acme", ra, resp_a), reference[:3], rtol=1e-5)
    np.testing.assert_allclose(world.outputs("globex", rg, resp_g), reference[3:], rtol=1e-5)
    # each output is sealed under its own tenant's key: the other tenant cannot open it
    with pytest.raises(DecryptionFailed):
        open_response(
            resp_a.envelope,
            {"acme-k1": world.tenant_keys["globex"]},
            request_id=ra.envelope.request_id,
        )
    with pytest.raises(DecryptionFailed):
        open_response(
            resp_g.envelope,
            {"globex-k1": world.tenant_keys["acme"]},
            request_id=rg.envelope.request_id,
        )


def test_int8_variant_is_close_to_fp32_and_json_bodies_work(world: World) -> None:
    int8 = f"{MODEL}.int8.onnxruntime"
    if int8 not in world.variants:
        pytest.skip("no static INT8 variant on this machine")
    reference = load_variant(world.store.get_variant(f"{MODEL}.fp32.onnxruntime"), world.onnx).run(
        world.x[:4]
    )
    req = world.request("acme", world.x[:4], variant_id=int8, binary=False)
    resp = world.infer("acme", req)
    assert resp.variant_id == int8
    out = world.outputs("acme", req, resp)
    assert np.mean(np.argmax(out, 1) == np.argmax(reference, 1)) >= 0.75
    np.testing.assert_allclose(out, reference, atol=0.5 * float(np.abs(reference).max()))


def _synthetic(vid: str, p50_ms: float, rps: float, accuracy: float) -> Profile:
    return Profile(
        variant_id=vid,
        batches=(BatchLatency(batch=1, p50_ms=p50_ms, p99_ms=p50_ms, throughput_rps=rps),),
        load_ms=0.0,
        peak_memory_bytes=0,
        accuracy=accuracy,
        accuracy_kind="validation",
        latency_model=LatencyModel(intercept_ms=p50_ms, slope_ms=0.0),
        threads=1,
    )


def test_tight_and_loose_slos_pick_different_variants(world: World) -> None:
    """With a slow-but-cheap and a fast-but-dear variant, the SLO decides (the profiles
    are set by hand: the digits variants all answer in microseconds)."""
    saved = {vid: world.store.get_profile(vid) for vid in world.variants}
    cheap, fast = f"{MODEL}.fp32.onnxruntime", f"{MODEL}.int8-dyn.onnxruntime"
    assert fast in world.variants
    try:
        for vid in world.variants:
            spec = world.store.get_variant(vid)
            if vid == cheap:
                world.put_profile(spec, _synthetic(vid, 200.0, 100_000.0, 0.95))
            elif vid == fast:
                world.put_profile(spec, _synthetic(vid, 0.5, 10.0, 0.95))
            else:
                world.put_profile(spec, _synthetic(vid, 400.0, 1.0, 0.95))
        world.runtime.refresh_candidates()
        loose = world.request("acme", world.x[:1], latency_ms=2000.0)
        tight = world.request("acme", world.x[:1], latency_ms=20.0)
        assert world.infer("acme", loose).variant_id == cheap
        assert world.infer("acme", tight).variant_id == fast
    finally:
        for p in saved.values():
            assert p is not None
            world.store.put_profile(p)
        world.runtime.refresh_candidates()


def _refused(world: World, tenant: str, req: InferRequest, token: str | None = None) -> InfaasError:
    with pytest.raises(InfaasError) as info:
        world.infer(tenant, req, token)
    return info.value


def test_min_accuracy_above_every_variant_is_422(world: World) -> None:
    err = _refused(world, "acme", world.request("acme", world.x[:1], min_accuracy=0.999))
    assert isinstance(err, NoFeasibleVariant) and err.status_code == 422
    world.good()


def test_replay_is_409(world: World) -> None:
    req = world.request("acme", world.x[:1])
    world.infer("acme", req)
    err = _refused(world, "acme", req)
    assert isinstance(err, ReplayedRequest) and err.status_code == 409
    world.good()


def test_replay_at_another_replica_is_409(world: World) -> None:
    """A second runtime on the same store (another replica) refuses the replay too."""
    req = world.request("acme", world.x[:1])
    world.infer("acme", req)
    world.runtime._memory_replay = type(world.runtime._memory_replay)(300.0)  # fresh process
    err = _refused(world, "acme", req)
    assert isinstance(err, ReplayedRequest)
    world.good()


def _served_or_refused(results: list[object]) -> list[str]:
    out = []
    for r in results:
        if isinstance(r, InferResponse):
            out.append("served")
        else:
            assert isinstance(r, InfaasError), r
            out.append(r.code)
    return out


def test_replay_at_a_second_replica_instance_is_refused(world: World) -> None:
    """Another WorkerRuntime on the same store (its own memory, its own replay record):
    the replay of an answered request is refused there, after, and while it is in flight."""
    other = world.new_worker()
    token = world.api_tokens["acme"]
    try:
        req = world.request("acme", world.x[:1])
        world.infer("acme", req)
        err = _refused_by(other, req, token)
        assert isinstance(err, ReplayedRequest) and err.status_code == 409

        async def at_once(req: InferRequest) -> list[object]:
            both = await asyncio.gather(
                world.runtime.infer(req, token), other.infer(req, token), return_exceptions=True
            )
            return list(both)

        for _ in range(5):  # the same request at two replicas at once: one answer, ever
            got = _served_or_refused(asyncio.run(at_once(world.request("acme", world.x[:1]))))
            assert sorted(got) == ["replayed_request", "served"]
    finally:
        asyncio.run(other.close())
    world.good()


def _refused_by(runtime: WorkerRuntime, req: InferRequest, token: str) -> InfaasError:
    with pytest.raises(InfaasError) as info:
        asyncio.run(runtime.infer(req, token))
    return info.value


def test_replay_while_the_first_is_in_flight_is_refused(world: World) -> None:
    """The same request twice (and more) at one replica before the first is answered."""
    token = world.api_tokens["acme"]

    async def burst(req: InferRequest) -> list[object]:
        first = asyncio.ensure_future(world.runtime.infer(req, token))
        await asyncio.sleep(0.01)  # the first waits for its batch (50 ms) meanwhile
        assert not first.done()
        again = [world.runtime.infer(req, token) for _ in range(3)]
        return list(await asyncio.gather(first, *again, return_exceptions=True))

    got = _served_or_refused(asyncio.run(burst(world.request("acme", world.x[:1]))))
    assert got == ["served"] + ["replayed_request"] * 3
    world.good()


def test_no_answer_leaves_before_its_shared_record_is_written(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the store's write held, the request does not complete (its inference does);
    once written, it is answered and its record is in the store."""
    store = world.store
    go, entered = threading.Event(), threading.Event()
    real = store.claim_requests

    def held(claims: Sequence[tuple[str, str, float]], *, now: float) -> list[bool]:
        entered.set()
        go.wait(10)
        return real(claims, now=now)

    monkeypatch.setattr(store, "claim_requests", held)
    req = world.request("acme", world.x[:1])
    token = world.api_tokens["acme"]

    async def run() -> tuple[bool, InferResponse]:
        task = asyncio.ensure_future(world.runtime.infer(req, token))
        await asyncio.to_thread(entered.wait, 10)
        await asyncio.sleep(0.3)  # several batch waits: the inference is long done
        waiting = not task.done()
        go.set()
        return waiting, await task

    try:
        waiting, resp = asyncio.run(run())
    finally:
        go.set()
    assert waiting
    assert world.outputs("acme", req, resp).shape == (1, 10)
    env = req.envelope
    assert not store.claim_request(env.tenant, env.request_id, now=time.time(), expires_at=1e12)
    monkeypatch.undo()
    world.good()


@pytest.mark.parametrize("failure", [StoreUnavailable("redis down"), sqlite3.OperationalError()])
def test_a_failed_replay_record_refuses_the_request(
    world: World, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """The store cannot record the request id: 503, sealed, and no output, for every
    request of the failed write; the same ids are served once the store is back."""

    def down(claims: Sequence[tuple[str, str, float]], *, now: float) -> list[bool]:
        raise failure

    reqs = [world.request("acme", world.x[:1]) for _ in range(3)]
    token = world.api_tokens["acme"]
    fresh = type(world.runtime._memory_replay)

    async def all_three() -> list[object]:
        got = await asyncio.gather(
            *(world.runtime.infer(r, token) for r in reqs), return_exceptions=True
        )
        return list(got)

    monkeypatch.setattr(world.store, "claim_requests", down)
    got = asyncio.run(all_three())
    assert _served_or_refused(got) == ["store_unavailable"] * 3
    assert all(isinstance(e, StoreUnavailable) and e.status_code == 503 for e in got)
    assert all("sealed" in e.detail for e in got if isinstance(e, InfaasError))
    monkeypatch.undo()
    # the memory guard remembers them (a retry needs a new id at this replica), the store
    # does not: at another replica's memory the same ids are served now
    world.runtime._memory_replay = fresh(world.settings.request_window_s)
    assert _served_or_refused(asyncio.run(all_three())) == ["served"] * 3
    world.good()


def test_requests_in_flight_share_a_replay_record_write(world: World) -> None:
    shared = world.runtime._shared_replay
    assert shared is not None
    token = world.api_tokens["acme"]
    world.good()  # keys and the variant in place
    writes, claims = shared.writes, shared.claims

    async def burst() -> list[object]:
        reqs = [world.request("acme", world.x[:1]) for _ in range(8)]
        got = await asyncio.gather(*(world.runtime.infer(r, token) for r in reqs))
        return list(got)

    assert _served_or_refused(asyncio.run(burst())) == ["served"] * 8
    assert shared.claims - claims == 8
    assert shared.writes - writes < 8


def test_tampered_ciphertext_is_400(world: World) -> None:
    req = world.request("acme", world.x[:1])
    ct = bytearray(req.envelope.ciphertext)
    ct[5] ^= 1
    env = Envelope.model_validate(req.envelope.model_dump() | {"ciphertext": bytes(ct)})
    err = _refused(world, "acme", InferRequest(envelope=env))
    assert isinstance(err, DecryptionFailed) and err.status_code == 400
    world.good()


def test_tampered_slo_is_400_not_a_downgrade(world: World) -> None:
    req = world.request("acme", world.x[:1], min_accuracy=0.9)
    env = Envelope.model_validate(req.envelope.model_dump() | {"min_accuracy": 0.0})
    err = _refused(world, "acme", InferRequest(envelope=env))
    assert isinstance(err, DecryptionFailed)
    world.good()


def test_tokens(world: World) -> None:
    req = world.request("acme", world.x[:1])
    err = _refused(world, "acme", req, token="acme.not-the-secret")
    assert isinstance(err, AuthenticationFailed) and err.status_code == 401
    err = _refused(world, "acme", req, token=world.api_tokens["globex"])
    assert isinstance(err, PermissionDenied) and err.status_code == 403
    world.good()


def test_request_sealed_with_another_tenants_key_is_400(world: World) -> None:
    err = _refused(world, "acme", world.request("acme", world.x[:1], key_tenant="globex"))
    assert isinstance(err, DecryptionFailed)
    world.good()


def test_tenant_without_grant_is_403(world: World) -> None:
    err = _refused(world, "initech", world.request("initech", world.x[:1]))
    assert isinstance(err, PermissionDenied) and err.status_code == 403
    world.good()


def test_wrong_shape_or_dtype_is_400(world: World) -> None:
    bad_shape = world.request("acme", np.zeros((2, 63), np.float32))
    err = _refused(world, "acme", bad_shape)
    assert isinstance(err, InvalidInput) and err.status_code == 400
    bad_dtype = world.request("acme", np.zeros((2, 64), np.float64))
    err = _refused(world, "acme", bad_dtype)
    assert isinstance(err, InvalidInput) and err.status_code == 400
    too_big = world.request("acme", np.zeros((9, 64), np.float32))
    assert isinstance(_refused(world, "acme", too_big), InvalidInput)
    world.good()


def test_a_starting_replica_loads_the_planned_variants_before_any_request(
    world: World,
) -> None:
    loaded = set(world.runtime.load_report("probe").loaded)
    cold = [v for v in world.variants if v not in loaded]
    if len(cold) < 2:
        pytest.skip("the variants were loaded by earlier tests")
    # the autoscaler's plan keeps cold[0]; the replica's agent starts (its constructor)
    hints = RoutingHints(ts=time.time(), keep=[cold[0], "no-such-variant"])
    world.store.put_routing_hints(hints)
    agent = LoadAgent(world.runtime, world.store, period_s=3600.0).start()
    try:
        # decrypted inside the worker and in its packer before start() returned
        assert cold[0] in world.runtime.load_report("probe").loaded
        assert cold[1] not in world.runtime.load_report("probe").loaded
    finally:
        agent.stop()
        world.store.delete_routing_hints()
        world.runtime.routing = None
    assert world.runtime.host.preload([cold[0]]) == []  # already there
    assert world.runtime.host.preload(["no-such-variant"]) == []  # unknown: skipped
    world.good()


def test_status_names_the_tee_and_counts(world: World) -> None:
    world.good()
    status = world.runtime.status()
    assert status["measurement"] == WORKER_MEASUREMENT.hex()
    assert status["simulated"] is True and "not confidential" in status["warning"]
    assert status["attested_at"] is not None and status["requests_served"] >= 1
    assert status["loaded_variants"] and status["queues"]
    text = repr(status)
    for key in world.tenant_keys.values():
        assert key.hex() not in text


@pytest.mark.parametrize("app_kind", ["replica", "fastapi"])
def test_http_endpoint(world: World, app_kind: str) -> None:
    build = serve_app if app_kind == "replica" else create_worker_app
    with TestClient(build(world.runtime, max_request_bytes=64 * 1024)) as http:
        req = world.request("acme", world.x[:2])
        ok = http.post(
            "/",
            content=req.model_dump_json(),
            headers={"Authorization": f"Bearer {world.api_tokens['acme']}"},
        )
        assert ok.status_code == 200, ok.text
        resp = InferResponse.model_validate_json(ok.content)
        assert world.outputs("acme", req, resp).shape == (2, 10)
        replay = http.post(
            "/",
            content=req.model_dump_json(),
            headers={"Authorization": f"Bearer {world.api_tokens['acme']}"},
        )
        assert replay.status_code == 409 and replay.json()["code"] == "replayed_request"
        missing = http.post("/", content=req.model_dump_json())
        assert missing.status_code == 401
        auth = {"Authorization": f"Bearer {world.api_tokens['acme']}"}
        huge = http.post("/", content=b"x" * (65 * 1024), headers=auth)
        assert huge.status_code == 413
        # a bad token is refused before the body is even looked at
        huge = http.post("/", content=b"x" * (65 * 1024), headers={"Authorization": "Bearer a.x"})
        assert huge.status_code == 401
        garbage = http.post(
            "/",
            content=b"{not json",
            headers={"Authorization": f"Bearer {world.api_tokens['acme']}"},
        )
        assert garbage.status_code == 400 and garbage.json()["code"] == "invalid_input"
        assert http.get("/").status_code == 405
        assert http.post("/elsewhere", content=b"{}").status_code == 404


def test_worker_imports_runtimes_only_through_the_telemetry_switch() -> None:
    """onnxruntime / OpenVINO write telemetry unless `variants._telemetry` switched it off
    first, so no worker module may import them directly."""
    root = Path(__file__).resolve().parents[2] / "enclave_workers"
    for path in root.glob("*.py"):
        text = path.read_text()
        for runtime in ("onnxruntime", "openvino"):
            assert f"import {runtime}" not in text, path
            assert f"from {runtime}" not in text, path


def test_preparation_failure_is_a_failed_job_not_a_broken_worker(world: World) -> None:
    """A registered model the worker cannot open (no data key, a blob sealed for another
    model, no validation set) fails its job; serving goes on."""
    record = world.store.get_model(MODEL).model_copy(update={"model_id": "digits-broken"})
    world.store.put_model(record)
    artifacts = world.runtime.artifacts
    artifacts.put(
        artifact_name(record.owner, "digits-broken", MODEL_PART),
        artifacts.get(artifact_name(record.owner, MODEL, MODEL_PART)),
    )
    job = world.runtime.prepare_model("digits-broken")
    assert job.state == "failed" and job.message
    stored = world.store.get_job("digits-broken")
    assert stored is not None and stored.state == "failed"
    assert not world.store.list_variants(model_id="digits-broken")
    world.good()


def test_replay_records_stay_within_the_window(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests over ten request windows: the replay records held never exceed one window's."""
    clock = [time.time()]
    monkeypatch.setattr(world.runtime, "clock", lambda: clock[0])
    window = world.runtime.settings.request_window_s
    step = window / 20
    before = world.store.count_replay()
    held = math.ceil((1.1 * window + REPLAY_PRUNE_INTERVAL_S) / step) + 1
    counts: list[int] = []
    sent: list[InferRequest] = []

    async def go() -> None:
        for _ in range(200):
            clock[0] += step
            req = world.request("acme", world.x[:1], timestamp=clock[0])
            await world.runtime.infer(req, world.api_tokens["acme"])
            sent.append(req)
            counts.append(world.store.count_replay())

    asyncio.run(go())
    assert max(counts) <= held + before
    assert counts[-1] >= window / step  # the live window is still remembered
    assert len(world.runtime._memory_replay._seen) <= held + before
    with pytest.raises(ReplayedRequest):  # so a replay inside it is still refused
        asyncio.run(world.runtime.infer(sent[-5], world.api_tokens["acme"]))
