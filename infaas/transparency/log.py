"""The public transparency log the key service keeps of what it trusts.

Before the key service serves anything it appends to this log its own identity
(code measurement and release-policy hash, `keyservice_entry`) and every worker
measurement its policy lists (`worker_entry`); a worker measurement it meets at
release time that is not in the log yet (a development policy that admits any)
is appended before the key goes out; every model data key an owner uploads is logged
(`model_entry`: model id, key id, a commitment to the key). Entries are
canonical JSON; the tree is RFC 9162's (`infaas.transparency.merkle`).

Each append ends in a *signed tree head* (`TreeHead`: size, root, time) under
the log's Ed25519 key, which persists across restarts: with the simulated TEE
its seed is in ``DATA_DIR/simulated-tee/transparency-log.key`` (the directory
that stands for TEE hardware state; readable by the host, so not confidential),
on hardware it is derived from the enclave's sealing key (`derived_log_key`).
Its public key is in the deployment's trust bundle.

The entries and the last head are public and kept where the host can edit them
(``DATA_DIR/transparency/``). At start the log re-reads them and refuses to go
on if they no longer match the head it signed (an edited or dropped entry);
entries past that head (an append stopped before its head, or lines the host
added) are dropped, never signed. A
host that restores an older copy of both files makes the key service sign a
shorter log: every client that saw a later head refuses it
(`infaas.transparency.witness`), which is the point of a transparency log.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, field_validator

from infaas.envelope import canonical_json
from infaas.errors import AttestationFailed, InfaasError
from infaas.logs import get_logger
from infaas.transparency import merkle

log = get_logger(__name__)

_HEAD_PURPOSE = "infaas-transparency/v1 tree head"
LOG_KEY_FILE = "transparency-log.key"


class LogCorrupted(InfaasError):
    """The stored log does not match the head the log key signed (edited by the host)."""

    code = "transparency_log_corrupted"


# --- entries ------------------------------------------------------------------------------


def keyservice_entry(measurement: str, policy_sha256: str) -> dict[str, Any]:
    """A key service identity: its code measurement running its release policy (both hex)."""
    return {
        "kind": "keyservice",
        "measurement": measurement.lower(),
        "policy_sha256": policy_sha256.lower(),
    }


def worker_entry(measurement: str) -> dict[str, Any]:
    """A worker code measurement the key service releases keys to (hex)."""
    return {"kind": "worker", "measurement": measurement.lower()}


def model_entry(model_id: str, key_id: str, key: bytes) -> dict[str, Any]:
    """A model data key the key service accepted: its model, key id and a commitment to it
    (SHA-256 under a domain tag; the key is 256 random bits, so this reveals nothing)."""
    commitment = hashlib.sha256(b"infaas-transparency/v1 model key\x00" + key).hexdigest()
    return {"kind": "model", "model_id": model_id, "key_id": key_id, "key_sha256": commitment}


def worker_measurements(policy: Mapping[str, Any]) -> list[str]:
    """Every worker measurement a release policy document lists (`allowed_measurements`
    anywhere in it, and a pool verifier's measurement keys); a rule may admit any
    measurement instead (`admits_any_worker`)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                listed = key == "allowed_measurements" and isinstance(value, list | tuple)
                if listed or (key == "by_measurement" and isinstance(value, Mapping)):
                    found.update(str(m).lower() for m in value)
                walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(policy)
    return sorted(found)


def admits_any_worker(policy: Mapping[str, Any]) -> bool:
    """Whether a release policy has a worker rule that admits any measurement."""

    def walk(node: Any) -> bool:
        if isinstance(node, Mapping):
            if node.get("any_measurement") is True:
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list | tuple):
            return any(walk(v) for v in node)
        return False

    return walk(policy)


def entry_leaf(entry: Mapping[str, Any]) -> bytes:
    return merkle.leaf_hash(canonical_json(entry))


# --- wire ---------------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TreeHead(_Wire):
    """A signed tree head: the log (`log_id`, SHA-256 of its public key) had `size` entries
    with Merkle root `root` at `timestamp_ms`, signed with the log key (Ed25519, hex).

    `keyservices` maps each key-service measurement to the index of its latest key-service
    entry in that tree (signed with the rest, and checked against the entries by anyone
    who reads the whole log): with an inclusion proof of that index it proves a key
    service's (measurement, policy) is the one it logged last, not one it superseded."""

    log_id: str
    size: int = Field(ge=0)
    root: str
    timestamp_ms: int
    keyservices: dict[str, int] = Field(default_factory=dict)
    signature: str

    def statement(self) -> bytes:
        fields: dict[str, Any] = {
            "purpose": _HEAD_PURPOSE,
            "log_id": self.log_id,
            "size": self.size,
            "root": self.root,
            "timestamp_ms": self.timestamp_ms,
        }
        if self.keyservices:  # heads of a log with no key-service entry sign as before
            fields["keyservices"] = self.keyservices
        return canonical_json(fields)

    def check_signature(self, public_key: bytes) -> None:
        """AttestationFailed unless the log of `public_key` signed this head."""
        if self.log_id != log_id(public_key):
            raise AttestationFailed(
                f"tree head is of log {self.log_id[:16]}…, the pinned log is "
                f"{log_id(public_key)[:16]}…",
                check="transparency_log",
            )
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                bytes.fromhex(self.signature), self.statement()
            )
        except (InvalidSignature, ValueError):
            raise AttestationFailed(
                f"tree head of size {self.size} is not signed by the pinned log key",
                check="transparency_log",
            ) from None


class Inclusion(_Wire):
    """That `entry` is leaf `index` of the tree of the head it comes with (audit path, hex)."""

    entry: dict[str, Any]
    index: int = Field(ge=0)
    path: list[str]


class LogProof(_Wire):
    """A head, inclusion proofs under it, and its consistency with the tree of `since` leaves."""

    head: TreeHead
    inclusions: list[Inclusion]
    since: int = Field(ge=0)
    consistency: list[str]


class ProofRequest(_Wire):
    entries: list[dict[str, Any]] = Field(max_length=256)
    since: int = Field(default=0, ge=0)

    @field_validator("since", mode="before")
    @classmethod
    def _not_a_boolean(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("since is a tree size (an integer), not a boolean")
        return v


class LogExport(_Wire):
    """The whole log as anyone may read it: its public key, every entry, the latest head."""

    public_key: str
    entries: list[dict[str, Any]]
    head: TreeHead


def log_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


# --- the log key --------------------------------------------------------------------------


def simulated_log_key(data_dir: Path) -> Ed25519PrivateKey:
    """SIMULATED sealing of the log key: a random seed in
    ``data_dir/simulated-tee/transparency-log.key`` (0600), made on first use."""
    path = data_dir / "simulated-tee" / LOG_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another replica made it first
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            log.warning("transparency log key is SIMULATED (readable by the host): %s", path)
    seed = path.read_bytes()
    if len(seed) != 32:
        raise ValueError(f"{path} must hold 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def derived_log_key(sealing_key: bytes) -> Ed25519PrivateKey:
    """The log key of a hardware key service: derived from its enclave sealing key, so only
    the same code on the same platform signs for the log."""
    seed = HKDF(hashes.SHA256(), 32, salt=None, info=b"infaas transparency log key").derive(
        sealing_key
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- the log ------------------------------------------------------------------------------


class TransparencyLog:
    """An append-only Merkle log of canonical-JSON entries under one signing key.

    `directory` keeps it across restarts (``entries.jsonl`` and ``head.json``); without
    one it lives in memory. Appending an entry already in the log returns its index, except
    a key-service entry that is not the latest for its measurement: it is appended again
    (a key service switched back to an older policy shows in the log as a new entry).
    """

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        directory: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = signing_key
        self.public_key = raw_public_key(signing_key)
        self.log_id = log_id(self.public_key)
        self._dir = directory
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._leaves: list[bytes] = []
        self._index: dict[bytes, int] = {}  # each leaf's latest index
        self._keyservices: dict[str, int] = {}  # measurement -> its latest key-service entry
        if directory is not None:
            self._load(directory)
        self.head = self._sign()

    @classmethod
    def in_memory(cls) -> TransparencyLog:
        return cls(Ed25519PrivateKey.generate())

    def _load(self, directory: Path) -> None:
        entries_file, head_file = directory / "entries.jsonl", directory / "head.json"
        if not entries_file.exists() and not head_file.exists():
            return
        if not head_file.exists():
            raise LogCorrupted(f"transparency log {directory} has entries but no signed head")
        head = TreeHead.model_validate_json(head_file.read_bytes())
        try:
            head.check_signature(self.public_key)
        except AttestationFailed as e:
            raise LogCorrupted(f"transparency log {directory}: {e.message}") from None
        lines = entries_file.read_bytes().splitlines() if entries_file.exists() else []
        kept = 0
        for line in lines:
            if len(self._leaves) == head.size:
                break
            self._add(json.loads(line))
            kept += 1
        if kept < len(lines):
            # past the signed head: an append stopped before its head was written, or lines
            # the host added; neither is signed into the log as this service's
            log.warning(
                "transparency log %s: %d entries past its signed head dropped",
                directory,
                len(lines) - kept,
            )
            tmp = entries_file.with_name("entries.jsonl.tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in lines[:kept]))
            tmp.replace(entries_file)
        if len(self._leaves) < head.size or merkle.root(self._leaves[: head.size]).hex() != (
            head.root
        ):
            raise LogCorrupted(
                f"transparency log {directory} does not match the head of size {head.size} "
                "its key signed: entries were edited, dropped or reordered"
            )

    def _add(self, entry: dict[str, Any]) -> int:
        leaf = entry_leaf(entry)
        self._entries.append(entry)
        self._leaves.append(leaf)
        index = self._index[leaf] = len(self._leaves) - 1
        if entry.get("kind") == "keyservice":
            self._keyservices[str(entry.get("measurement"))] = index
        return index

    def _logged(self, entry: Mapping[str, Any], leaf: bytes) -> int | None:
        """The index `entry` need not be appended again at: any, or for a key-service
        entry only the latest for its measurement."""
        index = self._index.get(leaf)
        if index is None or entry.get("kind") != "keyservice":
            return index
        latest = self._keyservices.get(str(entry.get("measurement")))
        return index if latest == index else None

    def _sign(self) -> TreeHead:
        unsigned = TreeHead(
            log_id=self.log_id,
            size=len(self._leaves),
            root=merkle.root(self._leaves).hex(),
            timestamp_ms=int(self._clock() * 1000),
            keyservices=dict(self._keyservices),
            signature="",
        )
        return unsigned.model_copy(update={"signature": self._key.sign(unsigned.statement()).hex()})

    def append(self, entry: Mapping[str, Any]) -> int:
        """Log `entry` (once; a key-service entry unless it is the latest for its
        measurement) and sign the new head; its index."""
        clean: dict[str, Any] = json.loads(canonical_json(entry))
        leaf = entry_leaf(clean)
        with self._lock:
            logged = self._logged(clean, leaf)
            if logged is not None:
                return logged
            index = self._add(clean)
            self.head = self._sign()
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
                with (self._dir / "entries.jsonl").open("ab") as f:
                    f.write(canonical_json(clean) + b"\n")
                tmp = self._dir / "head.json.tmp"
                tmp.write_text(self.head.model_dump_json())
                tmp.replace(self._dir / "head.json")
        log.info("transparency log: entry %d %s", index, clean.get("kind"))
        return index

    def root_at(self, size: int) -> str:
        """The root (hex) of the tree of the first `size` entries."""
        with self._lock:
            return merkle.root(self._leaves[:size]).hex()

    def contains(self, entry: Mapping[str, Any]) -> bool:
        return entry_leaf(entry) in self._index

    def is_latest(self, entry: Mapping[str, Any]) -> bool:
        """Whether `entry` is logged and, for a key-service entry, its measurement's latest."""
        return self._logged(entry, entry_leaf(entry)) is not None

    def prove(self, entries: Sequence[Mapping[str, Any]], since: int = 0) -> LogProof:
        """The current head, an inclusion proof of each of `entries` that is in the log (at
        its latest index; the asker refuses what is missing) and its consistency proof from
        the tree of `since` leaves (none when the log is shorter: the asker refuses a log
        that went back)."""
        with self._lock:
            head, leaves = self.head, self._leaves[: self.head.size]
            inclusions = []
            for entry in entries:
                try:
                    index = self._index.get(entry_leaf(entry))
                except UnicodeEncodeError:  # not UTF-8 (a lone surrogate): never appended
                    continue
                if index is None or index >= head.size:
                    continue
                path = [p.hex() for p in merkle.inclusion_proof(leaves, index)]
                inclusions.append(Inclusion(entry=dict(entry), index=index, path=path))
            shorter = since > head.size
            consistency = [] if shorter else merkle.consistency_proof(leaves, since)
        return LogProof(
            head=head,
            inclusions=inclusions,
            since=since,
            consistency=[p.hex() for p in consistency],
        )

    def export(self) -> LogExport:
        with self._lock:
            return LogExport(
                public_key=self.public_key.hex(),
                entries=list(self._entries[: self.head.size]),
                head=self.head,
            )
