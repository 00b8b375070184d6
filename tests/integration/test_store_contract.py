"""One contract, every store backend: SQLite (embedded), memory and a real Redis server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infaas.errors import InvalidInput, ModelNotFound, StoreUnavailable, VariantNotFound
from infaas.store import MetadataStore, SQLiteStore, open_store
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


def test_records_are_opaque_bytes(store: MetadataStore) -> None:
    blob = bytes(range(256)) * 4
    store.put_record("keys", "tenant/acme", blob)
    assert store.get_record("keys", "tenant/acme") == blob
    assert store.get_record("keys", "missing") is None
    assert store.list_records("keys") == {"tenant/acme": blob}
    assert store.delete_record("keys", "tenant/acme")
    assert not store.delete_record("keys", "tenant/acme")
    with pytest.raises(InvalidInput, match="reserved"):
        store.put_record("models", "x", b"")


def test_put_if_absent_is_atomic(store: MetadataStore) -> None:
    wins: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        ok = store.put_record_if_absent("replay", "req-1", b"1")
        with lock:
            wins.append(ok)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


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
