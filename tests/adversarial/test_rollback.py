"""The host rolls the key service's state back: it is refused, at start and while running.

The host owns the store (memory, SQLite, Redis) and every file of the data dir
but ``simulated-tee/`` (what stands for TEE hardware state: the sealing key and
the monotonic counter). Here it restores a record or the whole store after a
revocation, reorders or deletes log entries, deletes a model's record to have
another owner claim the id, or keeps a stale replica running. Each time the
revoked tenant's key is not released and the key service says why
(`RollbackDetected`).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infaas.attestation import SimulatedPlatformCA
from infaas.envelope import new_key
from infaas.errors import Conflict, PermissionDenied, RollbackDetected
from infaas.keyservice import KeyRequest, KeyService, KeyServiceClient, simulated_sealing_key
from infaas.keyservice.counter import CounterMoved, MemoryCounter, SimulatedCounter
from infaas.keyservice.state import SealedRecords
from infaas.store import MemoryStore, MetadataStore, SealedTable, open_store
from tests.deployment import Deployment


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'infaas.db'}"
    else:
        import redis

        base = request.getfixturevalue("redis_server")
        url = base.rsplit("/", 1)[0] + f"/{abs(hash(request.node.nodeid)) % 15 + 1}"
        with redis.Redis.from_url(url) as r:
            r.flushdb()
    s = open_store(url)
    yield s
    s.close()


def _deployment(ca: SimulatedPlatformCA, tmp_path: Path, store: MetadataStore) -> Deployment:
    """Owner ``zoo`` with model ``resnet``, tenant ``acme`` granted it and accepting ``zoo``."""
    dep = Deployment.create(ca, tmp_path, store=store)
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    dep.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    assert dep.worker_keys().tenant_key("acme", "resnet").key == dep.tenant_keys["acme"]
    return dep


def _restart(dep: Deployment) -> KeyService:
    """The key service again over the same store and TEE state (KEK, counter)."""
    return Deployment.key_service(dep.ca, dep.store, dep.kek, counter=dep.counter)


def _client(dep: Deployment, service: KeyService) -> KeyServiceClient:
    c = KeyServiceClient(service, dep.trust.verifier(), policy_sha256=dep.trust.policy_sha256)
    c.attest()
    return c


def _refused(dep: Deployment, service: KeyService, match: str) -> None:
    """Nothing more comes from `service`: not the revoked tenant's key, not even a model key."""
    worker = dep.worker_keys(transport=service)
    with pytest.raises(RollbackDetected, match=match) as info:
        worker.tenant_key("acme", "resnet")
    assert dep.tenant_keys["acme"].hex() not in str(info.value)
    with pytest.raises(RollbackDetected, match=match):
        worker.model_key("resnet")


def test_a_record_restored_after_a_revocation_is_refused(
    platform_ca: SimulatedPlatformCA, tmp_path: Path, store: MetadataStore
) -> None:
    """The host saves the model's record while the grant holds and puts it back after the
    owner revoked acme: the next release sees an older version than the log's."""
    dep = _deployment(platform_ca, tmp_path, store)
    granted = store.get_sealed(SealedTable.MODEL, "resnet")
    assert granted is not None
    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    with pytest.raises(PermissionDenied, match="not granted"):
        dep.worker_keys().tenant_key("acme", "resnet")
    store.put_sealed(SealedTable.MODEL, "resnet", granted)
    _refused(dep, dep.service, "ks_model/resnet is version .* older copy was restored")
    # and the restarted service finds it at start
    _refused(dep, _restart(dep), "ks_model/resnet is version .* older copy was restored")


def test_a_withdrawn_consent_restored_is_refused(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    accepted = dep.store.get_sealed(SealedTable.PRINCIPAL, "acme")
    assert accepted is not None
    dep.keys.unaccept(dep.ks_tokens["acme"], "owner", "zoo")
    dep.store.put_sealed(SealedTable.PRINCIPAL, "acme", accepted)
    _refused(dep, dep.service, "ks_principal/acme is version .* older copy was restored")


def test_a_whole_store_restored_under_a_running_service_is_refused(
    platform_ca: SimulatedPlatformCA, tmp_path: Path, store: MetadataStore
) -> None:
    """Every key-service table (records and log) put back as it was before the revocation,
    while the service runs."""
    dep = _deployment(platform_ca, tmp_path, store)
    saved = {t: store.sealed_records(t) for t in SealedTable}
    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    for table, records in saved.items():
        for key, blob in records.items():
            store.put_sealed(table, key, blob)
    _refused(dep, dep.service, "older copy was restored")
    _refused(dep, _restart(dep), "older copy")


def _data_dir_service(ca: SimulatedPlatformCA, data: Path) -> tuple[MetadataStore, KeyService]:
    """The key service as a deployment builds it: SQLite under the data dir, the sealing key
    and the counter under data_dir/simulated-tee/."""
    store = open_store(f"sqlite:///{data / 'infaas.db'}")
    kek = simulated_sealing_key(data)
    return store, Deployment.key_service(ca, store, kek, counter=SimulatedCounter(data))


def _copy_outside_tee(src: Path, dst: Path) -> None:
    """Everything the host can roll back: the data dir but simulated-tee/."""
    shutil.copytree(src, dst, ignore=lambda d, names: ["simulated-tee"] if d == str(src) else [])


def _as_deployment(ca: SimulatedPlatformCA, tmp: Path, data: Path) -> Deployment:
    store, service = _data_dir_service(ca, data)
    dep = Deployment.create(ca, tmp, store=store)
    dep.service = service
    dep.keys = _client(dep, service)
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    dep.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    return dep


def test_data_dir_files_restored_before_a_start_are_refused(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    """The host copies the data dir (SQLite file, key-service dir) aside, lets the owner
    revoke, stops the service and puts its copy back: the counter says the log is longer."""
    data = tmp_path / "data"
    dep = _as_deployment(platform_ca, tmp_path, data)
    dep.store.close()
    _copy_outside_tee(data, tmp_path / "copy")
    dep.store, dep.service = _data_dir_service(platform_ca, data)  # a restart: still serves
    assert dep.worker_keys(transport=dep.service).tenant_key("acme", "resnet").key_id == "k1"
    _client(dep, dep.service).revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    dep.store.close()
    for p in data.iterdir():
        if p.name != "simulated-tee":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.copytree(tmp_path / "copy", data, dirs_exist_ok=True)
    dep.store, restarted = _data_dir_service(platform_ca, data)
    _refused(dep, restarted, r"log has no entry \d+ but its monotonic counter is at \d+")
    dep.store.close()


def test_the_sqlite_file_restored_under_a_running_service_is_refused(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    """The host copies the SQLite file while the service runs, and copies it back after the
    revocation (SQLite's backup API, as a host's tooling would)."""
    data = tmp_path / "data"
    dep = _as_deployment(platform_ca, tmp_path, data)
    with sqlite3.connect(data / "infaas.db") as live, sqlite3.connect(tmp_path / "old.db") as old:
        live.backup(old)
    dep.keys.revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    with sqlite3.connect(tmp_path / "old.db") as old, sqlite3.connect(data / "infaas.db") as live:
        old.backup(live)
    _refused(dep, dep.service, "older copy was restored")
    dep.store.close()


def _log(store: MetadataStore) -> dict[str, bytes]:
    return store.sealed_records(SealedTable.LOG)


def test_reordered_log_entries_are_refused_at_start(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    entries = _log(dep.store)
    a, b = sorted(entries)[2:4]
    dep.store.put_sealed(SealedTable.LOG, a, entries[b])
    dep.store.put_sealed(SealedTable.LOG, b, entries[a])
    _refused(dep, _restart(dep), "log entry 3 holds entry 4: the log was reordered")


def test_a_rewritten_log_entry_is_refused_at_start(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    """The host relinks the last entry to another predecessor: it no longer verifies."""
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    entries = _log(dep.store)
    last = sorted(entries)[-1]
    forged = json.loads(entries[last]) | {"prev": "11" * 32}
    dep.store.put_sealed(SealedTable.LOG, last, json.dumps(forged).encode())
    _refused(dep, _restart(dep), "does not verify under its log key")


@pytest.mark.parametrize("which", ["first", "last"])
def test_deleted_log_entries_are_refused_at_start(
    platform_ca: SimulatedPlatformCA, tmp_path: Path, which: str
) -> None:
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    saved = _log(dep.store)
    keys = sorted(saved)
    gone = keys[0] if which == "first" else keys[-1]
    fresh = MemoryStore()  # the store without that entry (MemoryStore has no delete)
    for table in SealedTable:
        for key, blob in dep.store.sealed_records(table).items():
            if not (table is SealedTable.LOG and key == gone):
                fresh.put_sealed(table, key, blob)
    dep.store = fresh
    _refused(dep, _restart(dep), f"log has no entry {int(gone)} but its monotonic counter")


def test_a_deleted_model_record_does_not_free_its_id(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    """The host deletes resnet's record from the SQLite file; mallory, another owner, then
    uploads a data key for "resnet" to take it over: refused, while running and at start."""
    data = tmp_path / "data"
    dep = _as_deployment(platform_ca, tmp_path, data)
    mallory = dep.add_owner("mallory")
    with sqlite3.connect(data / "infaas.db") as db:
        db.execute(
            "DELETE FROM records WHERE namespace = ? AND key = ?",
            (SealedTable.MODEL.value, "resnet"),
        )
    with pytest.raises(RollbackDetected, match=r"ks_model/resnet .* missing from the store"):
        dep.keys.upload_model_key(mallory, "resnet", "evil", new_key())
    _refused(dep, dep.service, "missing from the store: it was deleted")
    dep.store.close()
    dep.store, restarted = _data_dir_service(platform_ca, data)
    _refused(dep, restarted, "ks_model/resnet .* missing from the store")
    dep.store.close()


def test_a_deleted_id_is_never_reused(tmp_path: Path) -> None:
    """Deleting through the key service leaves a tombstone: the id stays taken."""
    records = SealedRecords(MemoryStore(), new_key())
    assert records.put_if_absent(SealedTable.MODEL, "resnet", {"owner": "zoo"})
    assert records.delete(SealedTable.MODEL, "resnet")
    assert records.get(SealedTable.MODEL, "resnet") is None
    assert records.keys(SealedTable.MODEL) == []
    assert not records.put_if_absent(SealedTable.MODEL, "resnet", {"owner": "mallory"})
    with pytest.raises(Conflict, match="was deleted"):
        records.put(SealedTable.MODEL, "resnet", {"owner": "mallory"})


def test_a_stale_replica_refuses_once_another_advanced_the_state(
    platform_ca: SimulatedPlatformCA, tmp_path: Path
) -> None:
    """The host starts a second replica, routes the owner's revocation to it, and keeps
    routing workers to the first, whose memory still holds the grant."""
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    second = _restart(dep)
    _client(dep, second).revoke(dep.ks_tokens["zoo"], "resnet", "acme")
    _refused(dep, dep.service, "counter is at .* another instance advanced the state")
    with pytest.raises(PermissionDenied, match="not granted"):
        dep.worker_keys(transport=second).tenant_key("acme", "resnet")


def test_releases_do_not_grow_the_log(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> None:
    """The log grows with deployment events, not requests: once a key went to workers of a
    measurement (an audit event; a profile key is made on first use), releasing it again
    and renewing its lease append nothing."""
    dep = _deployment(platform_ca, tmp_path, MemoryStore())
    worker = dep.worker_keys()
    profile = [KeyRequest(kind="profile", model_id="resnet")]

    def release() -> None:
        worker.model_key("resnet")
        worker.tenant_key("acme", "resnet")
        worker.fetch(profile)

    release()
    before = (dep.counter.read(), len(_log(dep.store)))
    for _ in range(20):
        release()
    assert (dep.counter.read(), len(_log(dep.store))) == before


class _PowerCut(MemoryCounter):
    """A counter whose next advance does not happen: the machine stops first."""

    def advance(self, seen: int, head: str = "") -> int:
        raise KeyboardInterrupt("power cut")


def test_a_write_interrupted_before_the_counter_is_committed_at_start() -> None:
    """A stop between the record and the counter is not a rollback: the next start commits
    the write (only this service can have made its entry and record)."""
    store, kek, counter = MemoryStore(), new_key(), MemoryCounter()
    records = SealedRecords(store, kek, counter)
    records.put(SealedTable.MODEL, "resnet", {"owner": "zoo", "grants": []})
    records.counter = _PowerCut(counter.read())
    with pytest.raises(KeyboardInterrupt):
        records.put(SealedTable.MODEL, "resnet", {"owner": "zoo", "grants": ["acme"]})
    again = SealedRecords(store, kek, counter)
    assert again.get(SealedTable.MODEL, "resnet") == {"owner": "zoo", "grants": ["acme"]}
    assert counter.read() == 2


def test_records_from_before_the_log_are_imported_once() -> None:
    """A store written before rollback protection: its records join the log at first start."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from infaas.envelope import canonical_json

    store, kek = MemoryStore(), new_key()
    nonce = b"\x01" * 12
    ad = f"infaas-keyservice/v1\x1f{SealedTable.MODEL.value}\x1fresnet".encode()
    old = AESGCM(kek).encrypt(nonce, canonical_json({"owner": "zoo"}), ad)
    store.put_sealed(SealedTable.MODEL, "resnet", nonce + old)
    counter = MemoryCounter()
    assert SealedRecords(store, kek, counter).get(SealedTable.MODEL, "resnet") == {"owner": "zoo"}
    assert counter.read() == 1
    assert SealedRecords(store, kek, counter).keys(SealedTable.MODEL) == ["resnet"]


def test_simulated_counter_only_moves_forward_from_what_it_saw(tmp_path: Path) -> None:
    c = SimulatedCounter(tmp_path)
    assert c.read() == 0 and c.advance(0) == 1
    with pytest.raises(CounterMoved):
        c.advance(0)
    assert SimulatedCounter(tmp_path).read() == 1
    assert c.path == tmp_path / "simulated-tee" / "counter"
    assert c.advance(1, "ab" * 32) == 2
    assert SimulatedCounter(tmp_path).read_head() == (2, "ab" * 32)
    c.path.write_text("7\n")  # a counter file from before heads
    assert c.read_head() == (7, "")


def test_reads_during_writes_are_not_mistaken_for_a_rollback(tmp_path: Path) -> None:
    """A release reading a record while the owner rewrites it sees the old or the new
    version, never a refusal (a write holds its record ahead of the log's head while the
    counter file is synced)."""
    records = SealedRecords(MemoryStore(), new_key(), SimulatedCounter(tmp_path))
    records.put(SealedTable.MODEL, "resnet", {"n": 0})
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(3000):
                assert records.get(SealedTable.MODEL, "resnet") is not None
        except BaseException as e:  # reported below
            failures.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(100):
        records.put(SealedTable.MODEL, "resnet", {"n": n})
    reader.join()
    assert failures == []
    assert records.get(SealedTable.MODEL, "resnet") == {"n": 99}


class _FlakyStore(MemoryStore):
    """The host's store: it keeps a record it is sent but answers the write with an error."""

    fail_record = False

    def put_sealed(self, table: SealedTable, key: str, blob: bytes) -> None:
        super().put_sealed(table, key, blob)
        if self.fail_record and table is not SealedTable.LOG:
            self.fail_record = False
            raise ConnectionError("store unavailable")


def test_a_failed_write_kept_by_the_host_does_not_replace_a_later_revocation() -> None:
    """The host fails one write after keeping its log entry and record, so the service writes
    its next record (a revocation) under the same log number; after a restart the host shows
    the failed write's entry in its place and the record from before the revocation. The
    log verifies link by link and has as many entries as the counter: only the head the
    counter holds tells the two histories apart."""
    store, kek, counter = _FlakyStore(), new_key(), MemoryCounter()
    records = SealedRecords(store, kek, counter)
    records.put(SealedTable.MODEL, "resnet", {"owner": "zoo", "grants": ["acme"]})
    granted = store.get_sealed(SealedTable.MODEL, "resnet")
    store.fail_record = True
    with pytest.raises(ConnectionError):
        records.put(SealedTable.PRINCIPAL, "mallory", {"role": "tenant"})
    kept = {t: store.sealed_records(t) for t in (SealedTable.LOG, SealedTable.PRINCIPAL)}
    records.put(SealedTable.MODEL, "resnet", {"owner": "zoo", "grants": []})  # the revocation
    assert counter.read() == 2
    for table, blobs in kept.items():
        for key, blob in blobs.items():
            store.put_sealed(table, key, blob)
    assert granted is not None
    store.put_sealed(SealedTable.MODEL, "resnet", granted)
    with pytest.raises(RollbackDetected, match="fork"):
        SealedRecords(store, kek, counter).get(SealedTable.MODEL, "resnet")
