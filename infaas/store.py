"""The metadata store: models, variants, profiles, tenants and opaque sealed records.

One interface, `MetadataStore`, with backends that implement five primitives
over (namespace, key) -> bytes:

- `SQLiteStore` (``sqlite:///path``): the embedded default, one file, no server;
- `MemoryStore` (``memory://``): in-process, for tests and throwaway runs;
- `RedisStore` (``redis://host:port/db``): the multi-node choice.

The store is untrusted (see ARCHITECTURE.md): it holds metadata and ciphertext
only. There is deliberately no way to put model weights in it.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel

from infaas.errors import (
    Conflict,
    InvalidInput,
    ModelNotFound,
    NotFound,
    StoreUnavailable,
    VariantNotFound,
)
from infaas.types import ModelRecord, Profile, Task, Tenant, VariantSpec

M = TypeVar("M", bound=BaseModel)

_MODELS = "models"
_VARIANTS = "variants"
_PROFILES = "profiles"
_TENANTS = "tenants"
_TASKS = "tasks"
_TYPED = frozenset({_MODELS, _VARIANTS, _PROFILES, _TENANTS, _TASKS})


class MetadataStore(ABC):
    """Typed access on top of five byte-level primitives each backend implements."""

    url: str

    # -- primitives -------------------------------------------------------------------------
    @abstractmethod
    def _put(self, namespace: str, key: str, value: bytes) -> None: ...

    @abstractmethod
    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool: ...

    @abstractmethod
    def _get(self, namespace: str, key: str) -> bytes | None: ...

    @abstractmethod
    def _items(self, namespace: str) -> Iterator[tuple[str, bytes]]: ...

    @abstractmethod
    def _delete(self, namespace: str, key: str) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- typed entities ---------------------------------------------------------------------
    def _put_model(self, namespace: str, key: str, obj: BaseModel) -> None:
        self._put(namespace, key, obj.model_dump_json().encode())

    def _get_model(self, namespace: str, key: str, cls: type[M]) -> M | None:
        raw = self._get(namespace, key)
        return None if raw is None else cls.model_validate_json(raw)

    def _list_models(self, namespace: str, cls: type[M]) -> list[M]:
        return [cls.model_validate_json(v) for _, v in sorted(self._items(namespace))]

    def put_model(self, record: ModelRecord) -> None:
        self._put_model(_MODELS, record.model_id, record)

    def get_model(self, model_id: str) -> ModelRecord:
        rec = self._get_model(_MODELS, model_id, ModelRecord)
        if rec is None:
            raise ModelNotFound(f"no model {model_id!r} is registered", model_id=model_id)
        return rec

    def list_models(self, task: str | None = None) -> list[ModelRecord]:
        models = self._list_models(_MODELS, ModelRecord)
        return [m for m in models if task is None or m.task == task]

    def delete_model(self, model_id: str) -> None:
        """Forget a model with its variants and their profiles."""
        self.get_model(model_id)
        for v in self.list_variants(model_id=model_id):
            self._delete(_PROFILES, v.variant_id)
            self._delete(_VARIANTS, v.variant_id)
        self._delete(_MODELS, model_id)

    def put_variant(self, spec: VariantSpec) -> None:
        self.get_model(spec.model_id)
        self._put_model(_VARIANTS, spec.variant_id, spec)

    def get_variant(self, variant_id: str) -> VariantSpec:
        spec = self._get_model(_VARIANTS, variant_id, VariantSpec)
        if spec is None:
            raise VariantNotFound(f"no variant {variant_id!r}", variant_id=variant_id)
        return spec

    def list_variants(
        self, model_id: str | None = None, task: str | None = None
    ) -> list[VariantSpec]:
        return [
            v
            for v in self._list_models(_VARIANTS, VariantSpec)
            if (model_id is None or v.model_id == model_id) and (task is None or v.task == task)
        ]

    def put_profile(self, profile: Profile) -> None:
        self.get_variant(profile.variant_id)
        self._put_model(_PROFILES, profile.variant_id, profile)

    def get_profile(self, variant_id: str) -> Profile | None:
        return self._get_model(_PROFILES, variant_id, Profile)

    def list_profiles(self, task: str | None = None) -> list[Profile]:
        profiles = self._list_models(_PROFILES, Profile)
        if task is None:
            return profiles
        wanted = {v.variant_id for v in self.list_variants(task=task)}
        return [p for p in profiles if p.variant_id in wanted]

    def put_task(self, task: Task) -> None:
        """Define a task; redefining it with another signature is a conflict."""
        old = self._get_model(_TASKS, task.name, Task)
        if old is not None and (old.input, old.num_classes) != (task.input, task.num_classes):
            raise Conflict(
                f"task {task.name!r} exists with input {old.input.model_dump()} and "
                f"{old.num_classes} classes",
                task=task.name,
            )
        self._put_model(_TASKS, task.name, task)

    def get_task(self, name: str) -> Task:
        task = self._get_model(_TASKS, name, Task)
        if task is None:
            raise NotFound(f"no task {name!r} is registered", task=name)
        return task

    def list_tasks(self) -> list[Task]:
        return self._list_models(_TASKS, Task)

    def put_tenant(self, tenant: Tenant) -> None:
        self._put_model(_TENANTS, tenant.tenant_id, tenant)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._get_model(_TENANTS, tenant_id, Tenant)

    def list_tenants(self) -> list[Tenant]:
        return self._list_models(_TENANTS, Tenant)

    # -- opaque records (sealed key-service state, replay caches, tokens) -------------------
    @staticmethod
    def _check_namespace(namespace: str) -> None:
        if namespace in _TYPED:
            raise InvalidInput(f"namespace {namespace!r} is reserved for typed entities")
        if not namespace or ":" in namespace:
            raise InvalidInput(f"bad namespace {namespace!r}")

    def put_record(self, namespace: str, key: str, value: bytes) -> None:
        self._check_namespace(namespace)
        self._put(namespace, key, value)

    def put_record_if_absent(self, namespace: str, key: str, value: bytes) -> bool:
        """Store a record unless the key exists; True when stored (atomic in every backend)."""
        self._check_namespace(namespace)
        return self._put_if_absent(namespace, key, value)

    def get_record(self, namespace: str, key: str) -> bytes | None:
        self._check_namespace(namespace)
        return self._get(namespace, key)

    def list_records(self, namespace: str) -> dict[str, bytes]:
        self._check_namespace(namespace)
        return dict(self._items(namespace))

    def delete_record(self, namespace: str, key: str) -> bool:
        self._check_namespace(namespace)
        return self._delete(namespace, key)

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryStore(MetadataStore):
    """In-process dictionaries; lost when the process ends."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._data: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def _put(self, namespace: str, key: str, value: bytes) -> None:
        with self._lock:
            self._data.setdefault(namespace, {})[key] = bytes(value)

    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool:
        with self._lock:
            ns = self._data.setdefault(namespace, {})
            if key in ns:
                return False
            ns[key] = bytes(value)
            return True

    def _get(self, namespace: str, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(namespace, {}).get(key)

    def _items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            items = list(self._data.get(namespace, {}).items())
        return iter(items)

    def _delete(self, namespace: str, key: str) -> bool:
        with self._lock:
            return self._data.get(namespace, {}).pop(key, None) is not None

    def close(self) -> None:
        pass


class SQLiteStore(MetadataStore):
    """One SQLite file (WAL mode), safe to share between threads of a process."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL syncs at checkpoints rather than on every commit: a power
            # loss may drop the last commits but never corrupts the file. Replay records
            # are written per request, where a full fsync costs milliseconds.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS records ("
                " namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                " PRIMARY KEY (namespace, key))"
            )
            self._conn.commit()
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"cannot open the SQLite store at {path}: {e}") from e
        self._lock = threading.Lock()

    def _put(self, namespace: str, key: str, value: bytes) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (namespace, key, value)
            )

    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?)", (namespace, key, value)
            )
            return cur.rowcount == 1

    def _get(self, namespace: str, key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM records WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def _items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM records WHERE namespace = ? ORDER BY key", (namespace,)
            ).fetchall()
        return ((k, bytes(v)) for k, v in rows)

    def _delete(self, namespace: str, key: str) -> bool:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "DELETE FROM records WHERE namespace = ? AND key = ?", (namespace, key)
            )
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisStore(MetadataStore):
    """One Redis hash per namespace under the prefix ``infaas:``."""

    def __init__(self, url: str, prefix: str = "infaas") -> None:
        import redis

        self.url = url
        self._prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        try:
            self._redis.ping()
        except redis.RedisError as e:
            raise StoreUnavailable(f"cannot reach Redis at {url}: {e}", url=url) from e

    def _hash(self, namespace: str) -> str:
        return f"{self._prefix}:{namespace}"

    def _call(self, fn: str, *args: object) -> object:
        import redis

        try:
            return getattr(self._redis, fn)(*args)
        except redis.RedisError as e:
            raise StoreUnavailable(f"Redis at {self.url} failed on {fn}: {e}", url=self.url) from e

    def _put(self, namespace: str, key: str, value: bytes) -> None:
        self._call("hset", self._hash(namespace), key, value)

    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool:
        return bool(self._call("hsetnx", self._hash(namespace), key, value))

    def _get(self, namespace: str, key: str) -> bytes | None:
        raw = self._call("hget", self._hash(namespace), key)
        assert raw is None or isinstance(raw, bytes)
        return raw

    def _items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        raw = self._call("hgetall", self._hash(namespace))
        assert isinstance(raw, dict)
        return iter(sorted((k.decode(), bytes(v)) for k, v in raw.items()))

    def _delete(self, namespace: str, key: str) -> bool:
        return bool(self._call("hdel", self._hash(namespace), key))

    def close(self) -> None:
        self._redis.close()


def open_store(url: str) -> MetadataStore:
    """The store a URL names: ``sqlite:///path``, ``memory://`` or ``redis://...``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        raw = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not raw:
            raise InvalidInput(f"bad SQLite store URL {url!r}: use sqlite:///PATH")
        return SQLiteStore(Path(raw))
    if parsed.scheme == "memory":
        return MemoryStore()
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise InvalidInput(f"unknown store URL scheme in {url!r}: use sqlite://, memory:// or redis://")
