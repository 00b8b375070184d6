"""The key service's state: sealed records the host cannot roll back, reorder or delete.

Records (principals, keys, grants, consent) live in the untrusted store, each
AES-256-GCM-sealed under the KEK with ``table/key`` as associated data (so a
record cannot be moved under another name) and carrying its *version*: the
number of the log entry that wrote it. Every write also appends an entry to a
hash-chained log in the store (``ks_log``)::

    entry n = {seq: n, prev: SHA-256(entry n-1), table, key, op: put | delete,
               blob_sha256: SHA-256(the sealed record), mac: HMAC(log key, the rest)}

and advances a monotonic counter (`infaas.keyservice.counter`) held where the
host cannot roll it back (TEE hardware state; simulated under
``DATA_DIR/simulated-tee/``), recording with it the SHA-256 of the entry (the
head). The log key is derived from the KEK, so it lives wherever the sealing key
does.

At start the service replays the log up to the counter: a missing entry (an
older copy of the store, or deleted entries), an entry that does not verify
(forged) or does not follow its predecessor (reordered, spliced) is refused, and
so is a log whose last entry is not the head the counter recorded (a fork: a
write that failed after its entry reached the store leaves the host a genuine
entry of the same number as the next one committed);
then every record the log holds is read and must be the very blob its latest
entry commits to. While running, each read checks the record against the
in-memory head of the log (its version and digest) and the counter against the
head (a second instance that advanced it makes this one stale), so a record or
a whole store restored under a running service is caught on the next read.
Once caught, the service refuses every call with `RollbackDetected`, naming
what it found; it serves again only after a restart over the genuine state.

Deleting writes a tombstone: a deleted id stays taken (`put_if_absent` answers
False, `put` refuses), so a model's id cannot be claimed by another owner.

The log grows by one entry (about 250 bytes) per write: registrations, key
uploads and retirements, grants, revocations, consent changes and each model's
first profile-key release. Releases and lease renewals read only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infaas.envelope import KEY_LEN, canonical_json
from infaas.errors import Conflict, DecryptionFailed, RollbackDetected
from infaas.keyservice.counter import CounterMoved, MemoryCounter, MonotonicCounter
from infaas.logs import get_logger
from infaas.store import MetadataStore, SealedTable

log = get_logger(__name__)

GENESIS = "00" * 32
"""`prev` of the first log entry."""
RECORD_TABLES = tuple(t for t in SealedTable if t is not SealedTable.LOG)
"""The tables of sealed records (everything but the log)."""


class _Entry(NamedTuple):
    """What the log says of a record: the entry that last wrote it."""

    seq: int
    op: str
    blob_sha256: str


def _log_key(seq: int) -> str:
    return f"{seq:012d}"


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class SealedRecords:
    """JSON records sealed under the KEK, versioned by a hash-chained log tied to a counter.

    `put`, `put_if_absent`, `get`, `keys` and `delete` are the key service's whole view
    of its state; each raises `RollbackDetected` once the store was found rolled back.
    """

    def __init__(
        self, store: MetadataStore, kek: bytes, counter: MonotonicCounter | None = None
    ) -> None:
        if len(kek) != KEY_LEN:
            raise ValueError("the KEK is 32 bytes")
        self._store = store
        self._aead = AESGCM(kek)
        self._mac_key = HKDF(
            hashes.SHA256(), 32, salt=None, info=b"infaas keyservice state log"
        ).derive(kek)
        self.counter = counter or MemoryCounter()
        self._lock = threading.RLock()
        self._index: dict[tuple[str, str], _Entry] = {}
        self._seq = 0
        self._advancing = 0
        self._head = GENESIS
        self._refusal: RollbackDetected | None = None
        try:
            self._load()
        except RollbackDetected as e:
            self._note(e)

    # --- the API ------------------------------------------------------------------------

    def put(self, table: SealedTable, key: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self._live()
            entry = self._index.get((table.value, key))
            if entry is not None and entry.op == "delete":
                raise Conflict(f"{table.value}/{key} was deleted: its id is not used again")
            self._append(table, key, "put", {"value": obj})

    def put_if_absent(self, table: SealedTable, key: str, obj: dict[str, Any]) -> bool:
        """Write unless the log holds the record, or held it (a deleted id stays taken)."""
        with self._lock:
            self._live()
            if (table.value, key) in self._index:
                return False
            self._append(table, key, "put", {"value": obj})
            return True

    def delete(self, table: SealedTable, key: str) -> bool:
        """Tombstone a record (False if it is absent): reads find nothing, its id stays taken."""
        with self._lock:
            self._live()
            entry = self._index.get((table.value, key))
            if entry is None or entry.op == "delete":
                return False
            self._append(table, key, "delete", {"deleted": True})
            return True

    def get(self, table: SealedTable, key: str) -> dict[str, Any] | None:
        self._live()
        entry = self._index.get((table.value, key))
        blob = self._store.get_sealed(table, key)
        if entry is not None and blob is not None and _sha256(blob) == entry.blob_sha256:
            plain = self._open(table, key, blob)
        else:
            with self._lock:  # again, with no write of this service half done
                entry = self._index.get((table.value, key))
                blob = self._store.get_sealed(table, key)
                if entry is None:
                    if blob is not None:
                        # not in the log: forged or moved (does not open), or never committed
                        self._open(table, key, blob)
                    return None
                plain = self._checked(table, key, blob, entry)
        if plain.get("deleted"):
            return None
        out: dict[str, Any] = plain["value"]
        return out

    def keys(self, table: SealedTable) -> list[str]:
        """The live records of `table`, as the log (not the store's listing) has them."""
        self._live()
        return sorted(k for (t, k), e in list(self._index.items()) if t == table and e.op == "put")

    @property
    def head(self) -> tuple[int, str]:
        """(entries in the log, SHA-256 of the last one)."""
        return self._seq, self._head

    # --- sealing ------------------------------------------------------------------------

    @staticmethod
    def _ad(table: str, key: str, version: str = "v2") -> bytes:
        return f"infaas-keyservice/{version}\x1f{table}\x1f{key}".encode()

    def _open(
        self, table: SealedTable | str, key: str, blob: bytes, version: str = "v2"
    ) -> dict[str, Any]:
        name = SealedTable(table).value
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], self._ad(name, key, version))
        except InvalidTag:
            raise DecryptionFailed(
                f"key service record {name}/{key} does not open under the KEK"
            ) from None
        out: dict[str, Any] = json.loads(plain)
        return out

    def _mac(self, entry: dict[str, Any]) -> str:
        body = canonical_json({k: v for k, v in entry.items() if k != "mac"})
        return hmac.new(self._mac_key, body, hashlib.sha256).hexdigest()

    # --- the log ------------------------------------------------------------------------

    def _append(self, table: SealedTable, key: str, op: str, payload: dict[str, Any]) -> None:
        """Entry, then record, then counter: a crash leaves at most one uncommitted entry,
        committed at the next start when its record was written (`_load`)."""
        seq = self._seq + 1
        nonce = os.urandom(12)
        plain = canonical_json({"seq": seq, **payload})
        blob = nonce + self._aead.encrypt(nonce, plain, self._ad(table.value, key))
        entry: dict[str, Any] = {
            "seq": seq,
            "prev": self._head,
            "table": table.value,
            "key": key,
            "op": op,
            "blob_sha256": _sha256(blob),
        }
        entry["mac"] = self._mac(entry)
        raw = canonical_json(entry)
        self._store.put_sealed(SealedTable.LOG, _log_key(seq), raw)
        self._store.put_sealed(table, key, blob)
        self._advancing = seq
        try:
            self.counter.advance(seq - 1, _sha256(raw))
        except CounterMoved as e:
            self._refuse(
                RollbackDetected(
                    f"the key service's monotonic counter moved under it ({e}): another "
                    "instance wrote to its state, this one is stale",
                    reason="stale_instance",
                )
            )
        self._apply(entry, raw)

    def _apply(self, entry: dict[str, Any], raw: bytes) -> None:
        self._index[(entry["table"], entry["key"])] = _Entry(
            entry["seq"], entry["op"], entry["blob_sha256"]
        )
        self._seq, self._head = entry["seq"], _sha256(raw)

    def _entry(self, raw: bytes | None, seq: int) -> dict[str, Any]:
        """Log entry `seq`, verified: its MAC, its number and its link to the head so far."""
        if raw is None:
            raise RollbackDetected(
                f"the key service's log has no entry {seq} but its monotonic counter is at "
                f"{self.counter.read()}: the store was restored from an older copy or "
                "entries were deleted",
                reason="log_truncated",
            )
        try:
            entry: dict[str, Any] = json.loads(raw)
            mac = str(entry["mac"])
        except (ValueError, KeyError, TypeError):
            raise RollbackDetected(
                f"key service log entry {seq} is not a log entry", reason="log_forged"
            ) from None
        if not hmac.compare_digest(mac, self._mac(entry)):
            raise RollbackDetected(
                f"key service log entry {seq} does not verify under its log key: forged, "
                "or written by another key service",
                reason="log_forged",
            )
        if entry["seq"] != seq:
            raise RollbackDetected(
                f"key service log entry {seq} holds entry {entry['seq']}: the log was reordered",
                reason="log_reordered",
            )
        if entry["prev"] != self._head:
            raise RollbackDetected(
                f"key service log entry {seq} does not follow entry {seq - 1}: the log was "
                "reordered or spliced from another history",
                reason="log_reordered",
            )
        return entry

    def _load(self) -> None:
        """Replay the log up to the counter, commit an interrupted write, check every record."""
        count, recorded = self.counter.read_head()
        raw = self._store.sealed_records(SealedTable.LOG)
        if count == 0 and not raw:
            self._import_legacy()
            return
        for seq in range(1, count + 1):
            data = raw.get(_log_key(seq))
            self._apply(self._entry(data, seq), data or b"")
        if recorded and recorded != self._head:  # a counter from before heads has none
            raise RollbackDetected(
                f"the key service's log entry {count} is not the one its monotonic counter "
                "recorded: the store holds a fork of its history (an entry of a write that "
                "failed, shown in place of the one committed)",
                reason="log_forked",
            )
        self._advancing = count
        if self._commit_interrupted(raw.get(_log_key(count + 1)), count + 1):
            count += 1
        beyond = raw.get(_log_key(count + 1)), raw.get(_log_key(count + 2))
        if any(b is not None and self._verifies(b) for b in beyond):
            raise RollbackDetected(
                f"the key service's log has entries past its monotonic counter ({count}): "
                "the counter was reset (the TEE state was replaced)",
                reason="counter_reset",
            )
        for (name, key), entry in list(self._index.items()):
            table = SealedTable(name)
            # a record moved under another name does not open: refused when read, as ever
            with contextlib.suppress(DecryptionFailed):
                self._checked(table, key, self._store.get_sealed(table, key), entry)
        log.info(
            "key service state: %d log entries, counter %s at %d, %d records",
            self._seq,
            self.counter.name,
            count,
            len(self._index),
        )

    def _verifies(self, raw: bytes) -> bool:
        try:
            entry = json.loads(raw)
            return hmac.compare_digest(str(entry["mac"]), self._mac(entry))
        except (ValueError, KeyError, TypeError):
            return False

    def _commit_interrupted(self, raw: bytes | None, seq: int) -> bool:
        """An entry past the counter whose record was written: a write interrupted before
        the counter moved. It is committed now (only this service can have made both)."""
        if raw is None:
            return False
        try:
            entry = self._entry(raw, seq)
        except RollbackDetected:
            return False
        blob = self._store.get_sealed(SealedTable(entry["table"]), entry["key"])
        if blob is None or _sha256(blob) != entry["blob_sha256"]:
            return False
        self.counter.advance(seq - 1, _sha256(raw))
        self._apply(entry, raw)
        log.warning("key service committed log entry %d (a write interrupted by a stop)", seq)
        return True

    def _import_legacy(self) -> None:
        """One time: records sealed before the log (no version) join it as found."""
        found = [(t, k, b) for t in RECORD_TABLES for k, b in self._store.sealed_records(t).items()]
        for table, key, blob in sorted(found):
            self._append(table, key, "put", {"value": self._open(table, key, blob, "v1")})
        if found:
            log.warning(
                "key service imported %d records sealed before its rollback-protected log; "
                "they are taken as found this once",
                len(found),
            )

    # --- checks -------------------------------------------------------------------------

    def _checked(
        self, table: SealedTable, key: str, blob: bytes | None, entry: _Entry
    ) -> dict[str, Any]:
        """The record, opened, if it is the very blob the log's latest entry for it commits to."""
        name = f"{table.value}/{key}"
        if blob is None:
            self._refuse(
                RollbackDetected(
                    f"key service record {name} (log entry {entry.seq}) is missing from the "
                    "store: it was deleted",
                    reason="record_deleted",
                )
            )
        assert blob is not None
        if _sha256(blob) == entry.blob_sha256:
            return self._open(table, key, blob)
        version = self._open(table, key, blob).get("seq")  # DecryptionFailed: moved or forged
        why = (
            "an older copy was restored"
            if isinstance(version, int) and version < entry.seq
            else "the store does not hold what the log commits to"
        )
        self._refuse(
            RollbackDetected(
                f"key service record {name} is version {version} but the log's latest for "
                f"it is entry {entry.seq}: {why}",
                reason="record_rolled_back",
            )
        )
        raise AssertionError  # unreachable: _refuse raises

    def _live(self) -> None:
        """Raise the refusal once the state was found rolled back; check the counter."""
        if self._refusal is None:
            # this service's own writes move the counter only up to `_advancing`, set
            # first: read before it and after `_seq`, a larger value is someone else's
            seq = self._seq
            count = self.counter.read()
            if count < seq:
                self._refuse(
                    RollbackDetected(
                        f"the key service's monotonic counter went back to {count} from "
                        f"{seq}: its TEE state was replaced",
                        reason="counter_reset",
                    )
                )
            if count > max(self._seq, self._advancing):
                self._refuse(
                    RollbackDetected(
                        f"the key service's monotonic counter is at {count} but its log head "
                        f"is entry {self._seq}: another instance advanced the state, this "
                        "one is stale",
                        reason="stale_instance",
                    )
                )
        if self._refusal is not None:
            r = self._refusal
            raise RollbackDetected(r.message, **r.detail)

    def _note(self, e: RollbackDetected) -> None:
        if self._refusal is None:
            self._refusal = e
            log.error("key service refuses to serve: %s", e.message)

    def _refuse(self, e: RollbackDetected) -> None:
        self._note(e)
        assert self._refusal is not None
        raise RollbackDetected(self._refusal.message, **self._refusal.detail)
