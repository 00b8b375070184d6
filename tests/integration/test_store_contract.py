"""One contract, every store backend: SQLite (embedded), memory and a real Redis server."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infaas.errors import InvalidInput, ModelNotFound, StoreUnavailable, VariantNotFound
from infaas.store import MetadataStore, SealedTable, SQLiteStore, open_store
from infaas.types import (
    Backend,
    BatchLatency,
    LatencyModel,
    ModelRecord,
    Precision,
    Profile,
    Quantization,
    Tenant,
    VariantSpec,
)
from infaas.wire import JobStatus
from scheduler.routing import LoadReport, ReplicaTarget, RoutingHints
from tests.conftest import free_port


@pytest.fixture(params=["sqlite", "memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    elif request.param == "memory":
        url = "memory://"
    else:
        base = request.getfixturevalue("redis_server")
        # A fresh logical database per test keeps tests independent on one server.
        db = abs(hash(request.node.nodeid)) % 15 + 1
        url = base.rsplit("/", 1)[0] + f"/{db}"
        import redis

        with redis.Redis.from_url(url) as r:
            r.flushdb()
    s = open_store(url)
    yield s
    s.close()


def model(model_id: str = "m1", task: str = "digits") -> ModelRecord:
    return ModelRecord(
        model_id=model_id,
        task=task,
        architecture="mlp",
        artifact_sha256="ab" * 32,
        size_bytes=100,
        num_parameters=10,
    )


def variant(model_id: str = "m1", precision: Precision = Precision.FP32) -> VariantSpec:
    q = Quantization.STATIC_QDQ if precision is Precision.INT8 else Quantization.NONE
    return VariantSpec(
        variant_id=f"{model_id}.{precision.value}.onnxruntime",
        model_id=model_id,
        task="digits",
        architecture="mlp",
        precision=precision,
        backend=Backend.ONNXRUNTIME,
        quantization=q,
    )


def profile(variant_id: str, accuracy: float = 0.9) -> Profile:
    return Profile(
        variant_id=variant_id,
        batches=(BatchLatency(batch=1, p50_ms=1.0, p99_ms=2.0, throughput_rps=900.0),),
        load_ms=5.0,
        peak_memory_bytes=1 << 20,
        accuracy=accuracy,
        accuracy_kind="validation",
        latency_model=LatencyModel(intercept_ms=0.5, slope_ms=0.5),
        threads=1,
    )


def test_models_round_trip(store: MetadataStore) -> None:
    store.put_model(model("m1"))
    store.put_model(model("m2", task="images"))
    assert store.get_model("m1") == model("m1").model_copy(
        update={"created_at": store.get_model("m1").created_at}
    )
    assert [m.model_id for m in store.list_models()] == ["m1", "m2"]
    assert [m.model_id for m in store.list_models(task="images")] == ["m2"]
    with pytest.raises(ModelNotFound, match="nope"):
        store.get_model("nope")


def test_variants_need_their_model(store: MetadataStore) -> None:
    with pytest.raises(ModelNotFound):
        store.put_variant(variant("ghost"))
    store.put_model(model("m1"))
    store.put_variant(variant("m1", Precision.FP32))
    store.put_variant(variant("m1", Precision.INT8))
    assert {v.precision for v in store.list_variants(model_id="m1")} == {
        Precision.FP32,
        Precision.INT8,
    }
    assert store.list_variants(task="other") == []
    with pytest.raises(VariantNotFound):
        store.get_variant("m1.bf16.openvino")


def test_profiles_and_cascade_delete(store: MetadataStore) -> None:
    store.put_model(model("m1"))
    v = variant("m1")
    with pytest.raises(VariantNotFound):
        store.put_profile(profile(v.variant_id))
    store.put_variant(v)
    store.put_profile(profile(v.variant_id, accuracy=0.93))
    got = store.get_profile(v.variant_id)
    assert got is not None and got.accuracy == 0.93
    assert [p.variant_id for p in store.list_profiles(task="digits")] == [v.variant_id]
    store.delete_model("m1")
    assert store.get_profile(v.variant_id) is None
    assert store.list_variants() == []
    with pytest.raises(ModelNotFound):
        store.delete_model("m1")


def test_tenants(store: MetadataStore) -> None:
    assert store.get_tenant("acme") is None
    store.put_tenant(Tenant(tenant_id="acme", name="Acme"))
    assert [t.tenant_id for t in store.list_tenants()] == ["acme"]


def test_sealed_records_are_opaque_bytes(store: MetadataStore) -> None:
    blob = bytes(range(256)) * 4
    store.put_sealed(SealedTable.TENANT_KEY, "acme/k1", blob)
    assert store.get_sealed(SealedTable.TENANT_KEY, "acme/k1") == blob
    assert store.get_sealed(SealedTable.TENANT_KEY, "missing") is None
    assert store.get_sealed(SealedTable.MODEL_KEY, "acme/k1") is None
    assert store.sealed_records(SealedTable.TENANT_KEY) == {"acme/k1": blob}
    assert not store.put_sealed_if_absent(SealedTable.TENANT_KEY, "acme/k1", b"other")
    assert store.get_sealed(SealedTable.TENANT_KEY, "acme/k1") == blob


def test_jobs_tokens_and_dashboard_key(store: MetadataStore) -> None:
    queued = JobStatus(model_id="m1", state="queued")
    assert store.claim_job(queued)
    assert not store.claim_job(queued.model_copy(update={"state": "running"}))
    assert store.get_job("m1") is not None and store.get_job("m1").state == "queued"  # type: ignore[union-attr]
    stored = store.put_job(queued.model_copy(update={"state": "ready"}))
    assert store.list_jobs() == [stored]
    assert store.delete_job("m1") and store.get_job("m1") is None
    assert store.put_token_record("acme", b"h1", replace=False)
    assert not store.put_token_record("acme", b"h2", replace=False)
    assert store.put_token_record("acme", b"h3", replace=True)
    assert store.get_token_record("acme") == b"h3"
    assert store.token_records() == {"acme": b"h3"}
    assert store.delete_token_record("acme") and store.get_token_record("acme") is None
    first = store.dashboard_session_key(b"k" * 32)
    assert first == b"k" * 32 and store.dashboard_session_key(b"x" * 32) == first


def test_autoscaler_and_telemetry_records(store: MetadataStore) -> None:
    report = LoadReport(replica="w1", ts=1.0, arrivals={"digits|100|0.9": 3})
    store.put_load_report("w1", report)
    store.put_load_report("w2", Tenant(tenant_id="not-a-report"))  # malformed: skipped
    assert store.load_reports(LoadReport) == {"w1": report}
    assert store.delete_load_report("w1")
    assert store.get_replica_target(ReplicaTarget) is None
    target = ReplicaTarget(num_replicas=2, ts=1.0)
    store.put_replica_target(target)
    store.put_routing_hints(RoutingHints(ts=1.0, routes={"k": ["v"]}))
    assert store.get_replica_target(ReplicaTarget) == target
    hints = store.get_routing_hints(RoutingHints)
    assert hints is not None and hints.routes == {"k": ["v"]}
    assert store.delete_routing_hints() and store.get_routing_hints(RoutingHints) is None
    store.clear_autoscaler_state()
    assert store.get_replica_target(ReplicaTarget) is None and store.load_reports(LoadReport) == {}
    store.put_telemetry("w1", target)
    assert list(store.telemetry_records()) == ["w1"]
    assert store.delete_telemetry("w1") and store.telemetry_records() == {}
    store.put_autoscaler_event("0001", target)
    assert ReplicaTarget.model_validate_json(store.autoscaler_event_records()["0001"]) == target
    assert store.delete_autoscaler_event("0001")


def test_replay_claims_expire(store: MetadataStore) -> None:
    now = 1000.0
    assert store.claim_request("acme", "r1", now=now, expires_at=now + 0.05)
    assert not store.claim_request("acme", "r1", now=now, expires_at=now + 0.05)
    assert store.claim_request("globex", "r1", now=now, expires_at=now + 60)
    assert store.count_replay() == 2
    time.sleep(0.1)  # Redis expires by its own clock
    store.prune_replay(now + 1)
    assert store.count_replay() == 1
    assert store.claim_request("acme", "r1", now=now + 1, expires_at=now + 60)


def test_record_counts_cover_every_namespace(store: MetadataStore) -> None:
    from tests.unit.test_store_namespaces import namespaces

    assert set(store.record_counts()) == namespaces()
    assert sum(store.record_counts().values()) == 0
    store.put_tenant(Tenant(tenant_id="acme", name="Acme"))
    store.claim_request("acme", "r1", now=0.0, expires_at=time.time() + 60)
    store.put_sealed(SealedTable.AUDIT, "acme/1", b"x")
    counts = store.record_counts()
    assert sum(counts.values()) == 3 and counts[SealedTable.AUDIT.value] == 1


def test_batched_claims_answer_as_single_claims(store: MetadataStore) -> None:
    """One round trip of claims answers each exactly as `claim_request` would: a recorded
    id (from a single claim or earlier in the same group) is refused, per tenant."""
    now = 1000.0
    assert store.claim_request("acme", "r0", now=now, expires_at=now + 60)
    group = [
        ("acme", "r0", now + 60),  # recorded before
        ("acme", "r1", now + 60),
        ("globex", "r1", now + 60),  # same id, another tenant
        ("acme", "r1", now + 60),  # twice in one group: the first wins
        ("acme", "r2", now + 0.05),
    ]
    assert store.claim_requests(group, now=now) == [False, True, True, False, True]
    assert store.claim_requests([], now=now) == []
    assert not store.claim_request("acme", "r1", now=now, expires_at=now + 60)
    assert store.count_replay() == 4
    time.sleep(0.1)  # Redis expires by its own clock
    store.prune_replay(now + 1)
    assert store.claim_requests([("acme", "r2", now + 60)], now=now + 1) == [True]


def test_batched_claims_race_single_claims_atomically(store: MetadataStore) -> None:
    """Two replicas' groups and single claims of the same ids: each id is won exactly once."""
    ids = [f"r{i}" for i in range(40)]
    wins: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def group() -> None:
        out = store.claim_requests([("acme", r, 60.0) for r in ids], now=0.0)
        with lock:
            wins.extend(zip(ids, out, strict=True))

    def singles() -> None:
        for r in reversed(ids):
            ok = store.claim_request("acme", r, now=0.0, expires_at=60.0)
            with lock:
                wins.append((r, ok))

    threads = [threading.Thread(target=f) for f in (group, group, singles, singles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(sum(ok for r, ok in wins if r == i) == 1 for i in ids)


def test_put_if_absent_is_atomic(store: MetadataStore) -> None:
    wins: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        ok = store.claim_request("acme", "req-1", now=0.0, expires_at=60.0)
        with lock:
            wins.append(ok)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_sqlite_gives_old_replay_records_an_expiry(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the layout before records could expire
        conn.execute(
            "CREATE TABLE records (namespace TEXT NOT NULL, key TEXT NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (namespace, key))"
        )
        conn.execute("INSERT INTO records VALUES ('replay', 'acme\x1fr0', x'00')")
    with SQLiteStore(path) as s:
        assert s.count_replay() == 1
        assert not s.claim_request("acme", "r0", now=0, expires_at=1)
        s.prune_replay(time.time() + 2 * 86_400)
        assert s.count_replay() == 0


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    with SQLiteStore(path) as s:
        s.put_model(model("m1"))
    with SQLiteStore(path) as s:
        assert s.get_model("m1").model_id == "m1"


def test_missing_redis_is_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match=f"cannot reach Redis at {url}"):
        open_store(url)


def test_unknown_scheme() -> None:
    with pytest.raises(InvalidInput, match="unknown store URL scheme"):
        open_store("postgres://x")


def test_tasks_keep_their_signature(store: MetadataStore) -> None:
    from infaas.errors import Conflict, NotFound
    from infaas.types import Task, TensorSpec

    digits = Task(name="digits", input=TensorSpec(name="input", shape=(1, 8, 8)), num_classes=10)
    store.put_task(digits)
    store.put_task(digits.model_copy(update={"description": "8x8 digits"}))
    assert store.get_task("digits").description == "8x8 digits"
    with pytest.raises(Conflict, match="exists with input"):
        store.put_task(digits.model_copy(update={"num_classes": 3}))
    with pytest.raises(NotFound, match="no task"):
        store.get_task("images")
    assert [t.name for t in store.list_tasks()] == ["digits"]
