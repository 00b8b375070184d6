"""What a relying party (tenant, owner, worker, auditor) checks of the transparency log.

`LogWitness` holds the log's public key, pinned from the deployment's trust
bundle, and the heads this party has seen (`SeenHeads`, persisted to a file
when given one). `LogWitness.check` accepts a `LogProof` only if

* its tree head is signed by the pinned key;
* every entry the party needs (the key service's measurement and policy, each
  worker measurement that policy admits) is in that tree (RFC 9162 inclusion
  proof): a key service or worker that is not logged is refused, so a change
  made for one client alone would have to be published to all;
* a key-service entry is the *latest* key-service entry for its measurement in that
  tree: its proven index is the one the signed head names for the measurement
  (`TreeHead.keyservices`), so a (measurement, policy) logged once and superseded
  since is refused — switching back to it must be logged again, in sight of everyone;
* the tree extends the latest head this party saw (RFC 9162 consistency proof
  from that head's size): a log shown to this party that is not the one it saw
  grow — a fork, or a rolled-back log — is refused, naming both heads.

Then it records the new head. `check_consistent` compares two heads seen
anywhere (another party's, a gossip file) the same way.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infaas.errors import AttestationFailed
from infaas.transparency import merkle
from infaas.transparency.log import LogProof, TreeHead, entry_leaf, log_id


def _fail(message: str) -> AttestationFailed:
    return AttestationFailed(message, check="transparency_log")


def _describe(head: TreeHead) -> str:
    return f"size {head.size} root {head.root[:16]}…"


def check_consistent(
    public_key: bytes, older: TreeHead, newer: TreeHead, proof: Sequence[str]
) -> None:
    """AttestationFailed unless both heads are signed by the log of `public_key` and the
    tree of `newer` extends that of `older` (`proof`: RFC 9162 consistency proof, hex)."""
    older.check_signature(public_key)
    newer.check_signature(public_key)
    if newer.size < older.size:
        raise _fail(
            f"transparency log went back from {_describe(older)} to {_describe(newer)}: "
            "a forked or rolled-back log"
        )
    ok = merkle.verify_consistency(
        older.size,
        newer.size,
        bytes.fromhex(older.root),
        bytes.fromhex(newer.root),
        [bytes.fromhex(p) for p in proof],
    )
    if not ok:
        raise _fail(
            f"transparency log forked: {_describe(newer)} does not extend "
            f"{_describe(older)} (consistency proof fails)"
        )


class SeenHeads:
    """The latest tree head seen of each log, kept in `path` (JSON) when given."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._heads: dict[str, TreeHead] = {}
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            self._heads = {k: TreeHead.model_validate(v) for k, v in data.items()}

    def latest(self, log: str) -> TreeHead | None:
        with self._lock:
            return self._heads.get(log)

    def record(self, head: TreeHead) -> None:
        with self._lock:
            self._heads[head.log_id] = head
            if self._path is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._path.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps({k: v.model_dump() for k, v in self._heads.items()}, indent=1)
                )
                os.replace(tmp, self._path)


class LogWitness:
    """A relying party's view of one transparency log: its pinned key, the heads it saw."""

    def __init__(self, public_key: bytes, heads: SeenHeads | None = None) -> None:
        if len(public_key) != 32:
            raise ValueError("the transparency log key is a raw Ed25519 public key (32 bytes)")
        self.public_key = public_key
        self.log_id = log_id(public_key)
        self.heads = heads or SeenHeads()

    def since(self) -> int:
        """The size of the latest head seen (what a new head must be shown to extend)."""
        latest = self.heads.latest(self.log_id)
        return 0 if latest is None else latest.size

    def check(self, proof: LogProof, entries: Sequence[Mapping[str, Any]]) -> TreeHead:
        """Accept `proof` (see the module) for `entries`; record and return its head."""
        head = proof.head
        head.check_signature(self.public_key)
        root = bytes.fromhex(head.root)
        proven = {entry_leaf(i.entry): i for i in proof.inclusions}
        for entry in entries:
            leaf = entry_leaf(entry)
            inclusion = proven.get(leaf)
            path = [bytes.fromhex(p) for p in inclusion.path] if inclusion else []
            if inclusion is None or not merkle.verify_inclusion(
                leaf, inclusion.index, head.size, path, root
            ):
                raise _fail(
                    f"{_what(entry)} is not in the transparency log (no valid inclusion proof "
                    f"under the head of {_describe(head)}): refused"
                )
            if entry.get("kind") == "keyservice":
                latest = head.keyservices.get(str(entry.get("measurement")))
                if latest != inclusion.index:
                    raise _fail(
                        f"{_what(entry)} is entry {inclusion.index} of the transparency log, "
                        f"but the head of {_describe(head)} names entry {latest} as the latest "
                        "key-service entry for that measurement: superseded, refused"
                    )
        seen = self.heads.latest(self.log_id)
        if seen is not None:
            if proof.since != seen.size:
                raise _fail(
                    f"the log answered a consistency proof from size {proof.since}, this party "
                    f"last saw {_describe(seen)}"
                )
            check_consistent(self.public_key, seen, head, proof.consistency)
        if seen is None or head.size >= seen.size:
            self.heads.record(head)
        return head


def _what(entry: Mapping[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == "keyservice":
        return (
            f"key service measurement {str(entry.get('measurement'))[:16]}… with release "
            f"policy {str(entry.get('policy_sha256'))[:16]}…"
        )
    if kind == "worker":
        return f"worker measurement {str(entry.get('measurement'))[:16]}…"
    return f"entry {dict(entry)}"
