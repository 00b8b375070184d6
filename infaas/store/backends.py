"""Where the store's bytes live: three backends of the `MetadataStore` contract.

Each implements the contract's byte-level primitives over (namespace, key) -> bytes:

- `SQLiteStore` (``sqlite:///path``): the embedded default, one file, no server;
- `MemoryStore` (``memory://``): in-process, for tests and throwaway runs;
- `RedisStore` (``redis://host:port/db``): the multi-node choice.

`open_store` picks one from a URL.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from infaas.errors import InvalidInput, StoreUnavailable
from infaas.store.contract import EXPIRING_NAMESPACES, MetadataStore

_LEGACY_EXPIRY_S = 86_400.0
"""How long expiring records from a file written before records could expire are kept."""


class MemoryStore(MetadataStore):
    """In-process dictionaries; lost when the process ends."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._data: dict[str, dict[str, bytes]] = {}
        self._expiry: dict[str, dict[str, float]] = {}
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
            self._expiry.get(namespace, {}).pop(key, None)
            return self._data.get(namespace, {}).pop(key, None) is not None

    def _put_expiring(
        self, namespace: str, key: str, value: bytes, now: float, expires_at: float
    ) -> bool:
        with self._lock:
            ns = self._data.setdefault(namespace, {})
            if key in ns:
                return False
            ns[key] = bytes(value)
            self._expiry.setdefault(namespace, {})[key] = expires_at
            return True

    def _put_expiring_many(
        self, namespace: str, records: Sequence[tuple[str, float]], value: bytes, now: float
    ) -> list[bool]:
        out: list[bool] = []
        with self._lock:
            ns = self._data.setdefault(namespace, {})
            expiry = self._expiry.setdefault(namespace, {})
            for key, expires_at in records:
                if key in ns:
                    out.append(False)
                    continue
                ns[key] = bytes(value)
                expiry[key] = expires_at
                out.append(True)
        return out

    def _prune_expired(self, namespace: str, now: float) -> int:
        with self._lock:
            expiry, data = self._expiry.get(namespace, {}), self._data.get(namespace, {})
            gone = [k for k, t in expiry.items() if t < now]
            for k in gone:
                del expiry[k]
                data.pop(k, None)
            return len(gone)

    def _count(self, namespace: str) -> int:
        with self._lock:
            return len(self._data.get(namespace, {}))

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
                " expires_at REAL, PRIMARY KEY (namespace, key))"
            )
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(records)")}
            if "expires_at" not in columns:  # a file from before records could expire
                self._conn.execute("ALTER TABLE records ADD COLUMN expires_at REAL")
                self._conn.executemany(
                    "UPDATE records SET expires_at = ? WHERE namespace = ?",
                    [(time.time() + _LEGACY_EXPIRY_S, ns) for ns in sorted(EXPIRING_NAMESPACES)],
                )
            self._conn.execute(
                "CREATE INDEX IF NOT EXISTS records_expiry ON records (namespace, expires_at)"
                " WHERE expires_at IS NOT NULL"
            )
            self._conn.commit()
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"cannot open the SQLite store at {path}: {e}") from e
        self._lock = threading.Lock()

    def _put(self, namespace: str, key: str, value: bytes) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO records (namespace, key, value) VALUES (?, ?, ?)",
                (namespace, key, value),
            )

    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO records (namespace, key, value) VALUES (?, ?, ?)",
                (namespace, key, value),
            )
            return cur.rowcount == 1

    def _put_expiring(
        self, namespace: str, key: str, value: bytes, now: float, expires_at: float
    ) -> bool:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?)",
                (namespace, key, value, expires_at),
            )
            return cur.rowcount == 1

    def _put_expiring_many(
        self, namespace: str, records: Sequence[tuple[str, float]], value: bytes, now: float
    ) -> list[bool]:
        # one transaction: one commit for the group, and a failure records none of them
        with self._lock, self._conn:
            return [
                self._conn.execute(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?)",
                    (namespace, key, value, expires_at),
                ).rowcount
                == 1
                for key, expires_at in records
            ]

    def _prune_expired(self, namespace: str, now: float) -> int:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "DELETE FROM records WHERE namespace = ? AND expires_at < ?", (namespace, now)
            )
            return cur.rowcount

    def _count(self, namespace: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM records WHERE namespace = ?", (namespace,)
            ).fetchone()
        return int(row[0])

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

    def _call(self, fn: str, *args: object, **kwargs: object) -> object:
        import redis

        try:
            return getattr(self._redis, fn)(*args, **kwargs)
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

    # Expiring records are plain keys with Redis's own expiry (hash fields cannot expire
    # before Redis 7.4), named under the namespace's hash name and ":".
    def _put_expiring(
        self, namespace: str, key: str, value: bytes, now: float, expires_at: float
    ) -> bool:
        ttl_ms = max(1, math.ceil((expires_at - now) * 1e3))
        return bool(self._call("set", f"{self._hash(namespace)}:{key}", value, px=ttl_ms, nx=True))

    def _put_expiring_many(
        self, namespace: str, records: Sequence[tuple[str, float]], value: bytes, now: float
    ) -> list[bool]:
        import redis

        # one round trip; each SET NX stays atomic on its own, in order
        pipe = self._redis.pipeline(transaction=False)
        for key, expires_at in records:
            ttl_ms = max(1, math.ceil((expires_at - now) * 1e3))
            pipe.set(f"{self._hash(namespace)}:{key}", value, px=ttl_ms, nx=True)
        try:
            return [bool(r) for r in pipe.execute()]
        except redis.RedisError as e:
            raise StoreUnavailable(f"Redis at {self.url} failed on set: {e}", url=self.url) from e

    def _prune_expired(self, namespace: str, now: float) -> int:
        return 0  # Redis drops them itself

    def _count(self, namespace: str) -> int:
        keys = self._call("keys", f"{self._hash(namespace)}:*")
        fields = self._call("hlen", self._hash(namespace))
        assert isinstance(keys, list) and isinstance(fields, int)
        return len(keys) + fields

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
