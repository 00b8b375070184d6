"""The transparency log's Merkle tree, signed heads and the relying party's checks.

Roots and audit paths are compared with pymerkle (an independent RFC 9162
implementation, the test oracle); consistency proofs are checked for every pair
of sizes and refused for every forked tree. Then the log itself (persisted, its
key under the simulated TEE's state, edits caught at start) and `LogWitness`
acting against a host that tampers a leaf, forks or rolls back the log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymerkle import InmemoryTree, InvalidProof
from pymerkle import verify_consistency as pm_verify_consistency

from infaas.errors import AttestationFailed
from infaas.transparency import merkle
from infaas.transparency.log import (
    LogCorrupted,
    LogProof,
    TransparencyLog,
    keyservice_entry,
    raw_public_key,
    simulated_log_key,
    worker_entry,
)
from infaas.transparency.witness import LogWitness, SeenHeads, check_consistent

N = 24
DATA = [f"entry {i}".encode() for i in range(N)]
LEAVES = [merkle.leaf_hash(d) for d in DATA]


@pytest.fixture(scope="module")
def oracle() -> InmemoryTree:
    tree = InmemoryTree(algorithm="sha256")
    for d in DATA:
        tree.append_entry(d)
    return tree


def test_hashing_is_rfc9162s() -> None:
    assert merkle.leaf_hash(b"x") == __import__("hashlib").sha256(b"\x00x").digest()
    assert merkle.root([]) == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_roots_and_audit_paths_match_pymerkle(oracle: InmemoryTree) -> None:
    for size in range(N + 1):
        assert merkle.root(LEAVES[:size]) == oracle.get_root(size)
    for size in range(1, N + 1):
        for index in range(size):
            path = merkle.inclusion_proof(LEAVES[:size], index)
            # pymerkle's path starts with the leaf itself, then the RFC's audit path
            theirs = oracle.prove_inclusion(index + 1, size).path
            assert [theirs[0], *path] == list(theirs)
            assert merkle.verify_inclusion(LEAVES[index], index, size, path, oracle.get_root(size))


def test_consistency_proofs_verify_for_every_pair(oracle: InmemoryTree) -> None:
    for size2 in range(1, N + 1):
        for size1 in range(0, size2 + 1):
            proof = merkle.consistency_proof(LEAVES[:size2], size1)
            r1, r2 = oracle.get_root(size1), oracle.get_root(size2)
            assert merkle.verify_consistency(size1, size2, r1, r2, proof), (size1, size2)
            if size1:  # the oracle agrees that these two roots are consistent
                pm_verify_consistency(r1, r2, oracle.prove_consistency(size1, size2))


def test_tampered_leaf_fails_inclusion() -> None:
    size = 13
    root = merkle.root(LEAVES[:size])
    path = merkle.inclusion_proof(LEAVES[:size], 5)
    assert merkle.verify_inclusion(LEAVES[5], 5, size, path, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b"entry 5 edited"), 5, size, path, root)
    assert not merkle.verify_inclusion(LEAVES[5], 6, size, path, root)  # another position
    assert not merkle.verify_inclusion(LEAVES[5], 5, 6, path, root)  # another tree shape
    bent = [*path[:-1], bytes(32)]
    assert not merkle.verify_inclusion(LEAVES[5], 5, size, bent, root)
    # a node is not a leaf: its children cannot be passed off as an entry
    assert not merkle.verify_inclusion(merkle.node_hash(LEAVES[4], LEAVES[5]), 2, 6, [], root)


def test_a_forked_tree_is_never_consistent(oracle: InmemoryTree) -> None:
    """Every way of rewriting history below size1 fails the consistency proof."""
    for size2 in range(2, 17):
        for size1 in range(1, size2):
            for changed in range(size1):
                forked = list(LEAVES[:size2])
                forked[changed] = merkle.leaf_hash(b"rewritten")
                proof = merkle.consistency_proof(forked, size1)
                r1 = merkle.root(LEAVES[:size1])
                assert not merkle.verify_consistency(
                    size1, size2, r1, merkle.root(forked), proof
                ), (size1, size2, changed)
    with pytest.raises(InvalidProof):  # so does the oracle, for one of them
        forked = [*DATA[:3], b"rewritten", *DATA[4:8]]
        other = InmemoryTree(algorithm="sha256")
        for d in forked:
            other.append_entry(d)
        pm_verify_consistency(oracle.get_root(5), other.get_root(8), other.prove_consistency(5, 8))


# --- the log ------------------------------------------------------------------------------


def _log(tmp_path: Path, key: Ed25519PrivateKey | None = None) -> TransparencyLog:
    return TransparencyLog(key or simulated_log_key(tmp_path), tmp_path / "transparency")


def test_log_key_lives_in_the_simulated_tee_state(tmp_path: Path) -> None:
    key = simulated_log_key(tmp_path)
    path = tmp_path / "simulated-tee" / "transparency-log.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert raw_public_key(simulated_log_key(tmp_path)) == raw_public_key(key)  # it persists


def test_log_appends_once_persists_and_proves(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert log.append(worker_entry("AA" * 32)) == 0
    assert log.append(worker_entry("bb" * 32)) == 1
    assert log.append(worker_entry("aa" * 32)) == 0  # the same entry (hex case aside)
    assert log.head.size == 2
    again = _log(tmp_path)  # a restart
    assert again.head.root == log.head.root and again.contains(worker_entry("bb" * 32))
    witness = LogWitness(log.public_key)
    witness.check(again.prove([worker_entry("bb" * 32)]), [worker_entry("bb" * 32)])
    assert again.prove([worker_entry("cc" * 32)]).inclusions == []  # nothing to prove
    with pytest.raises(AttestationFailed, match=r"worker measurement cccc.* not in the"):
        witness.check(again.prove([worker_entry("cc" * 32)]), [worker_entry("cc" * 32)])


def test_log_edited_on_disk_is_refused_at_start(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(3):
        log.append(worker_entry(f"{i:02x}" * 32))
    entries = tmp_path / "transparency" / "entries.jsonl"
    lines = entries.read_bytes().splitlines()
    edited = json.loads(lines[1]) | {"measurement": "ee" * 32}
    entries.write_bytes(b"\n".join([lines[0], json.dumps(edited).encode(), lines[2]]) + b"\n")
    with pytest.raises(LogCorrupted, match="edited, dropped or reordered"):
        _log(tmp_path)
    entries.write_bytes(b"\n".join([lines[1], lines[0], lines[2]]) + b"\n")
    with pytest.raises(LogCorrupted, match="edited, dropped or reordered"):
        _log(tmp_path)
    entries.write_bytes(b"\n".join(lines) + b"\n")
    _log(tmp_path)  # as it was
    with pytest.raises(LogCorrupted, match="the pinned log is"):  # another log's files
        _log(tmp_path, Ed25519PrivateKey.generate())
    head_file = tmp_path / "transparency" / "head.json"
    head_file.write_text(json.dumps(json.loads(head_file.read_text()) | {"size": 2}))
    with pytest.raises(LogCorrupted, match="not signed by the pinned log key"):
        _log(tmp_path)  # a head the log key did not sign


def test_entries_the_host_appends_past_the_signed_head_are_not_signed_at_start(
    tmp_path: Path,
) -> None:
    """The host adds a worker measurement of its own (and a model key) to the log's file
    after the last signed head: the next start does not sign them into the log as the key
    service's (they are dropped as an append that never completed)."""
    log = _log(tmp_path)
    log.append(worker_entry("aa" * 32))
    head = log.head
    entries = tmp_path / "transparency" / "entries.jsonl"
    planted = [worker_entry("ee" * 32), {"kind": "model", "model_id": "resnet", "key_id": "x"}]
    with entries.open("ab") as f:
        for entry in planted:
            f.write(json.dumps(entry).encode() + b"\n")
    again = _log(tmp_path)
    assert (again.head.size, again.head.root) == (head.size, head.root)
    assert not any(again.contains(e) for e in planted)
    # and the log goes on from its signed head (the next start agrees)
    again.append(worker_entry("bb" * 32))
    assert _log(tmp_path).head.root == again.head.root


# --- the relying party --------------------------------------------------------------------


def _grown(log: TransparencyLog, n: int, prefix: str = "") -> None:
    for i in range(n):
        log.append(worker_entry(f"{prefix}{i:02x}".ljust(64, "0")))


def test_witness_refuses_a_tampered_leaf_and_a_foreign_head(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _grown(log, 5)
    wanted = worker_entry("02".ljust(64, "0"))
    proof = log.prove([wanted])
    tampered = proof.model_copy(
        update={"inclusions": [proof.inclusions[0].model_copy(update={"index": 3})]}
    )
    with pytest.raises(AttestationFailed, match="not in the transparency log"):
        LogWitness(log.public_key).check(tampered, [wanted])
    # a proof for another entry does not stand for this one
    other = log.prove([worker_entry("03".ljust(64, "0"))])
    with pytest.raises(AttestationFailed, match="not in the transparency log"):
        LogWitness(log.public_key).check(other, [wanted])
    # the host's own log (its own key) is not the pinned log
    own = TransparencyLog.in_memory()
    _grown(own, 5)
    with pytest.raises(AttestationFailed, match="pinned log"):
        LogWitness(log.public_key).check(own.prove([wanted]), [wanted])


def test_witness_detects_a_forked_log(tmp_path: Path) -> None:
    """Two logs under the same key that agree on 4 entries then differ: whoever saw one
    head refuses the other, even after a restart (its heads are persisted)."""
    key = Ed25519PrivateKey.generate()
    honest, fork = (TransparencyLog(key), TransparencyLog(key))
    _grown(honest, 4)
    _grown(fork, 4)
    honest.append(worker_entry("aa" * 32))
    fork.append(worker_entry("ff" * 32))  # shown to one victim only
    _grown(fork, 2, prefix="f")
    seen = tmp_path / "heads.json"
    first = honest.prove([worker_entry("aa" * 32)])
    LogWitness(honest.public_key, SeenHeads(seen)).check(first, [worker_entry("aa" * 32)])

    later = LogWitness(honest.public_key, SeenHeads(seen))  # a new process
    assert later.since() == 5
    forked = fork.prove([worker_entry("ff" * 32)], since=later.since())
    with pytest.raises(AttestationFailed, match="forked"):
        later.check(forked, [worker_entry("ff" * 32)])
    # the two signed heads themselves: no consistency proof joins them
    with pytest.raises(AttestationFailed, match="forked"):
        check_consistent(honest.public_key, first.head, forked.head, forked.consistency)
    # the honest log grows on and stays consistent
    _grown(honest, 3, prefix="b")
    grown = honest.prove([worker_entry("aa" * 32)], since=later.since())
    assert later.check(grown, [worker_entry("aa" * 32)]).size == 8


def test_witness_refuses_a_rolled_back_log(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _grown(log, 3)
    backup = {p.name: p.read_bytes() for p in (tmp_path / "transparency").iterdir()}
    witness = LogWitness(log.public_key)
    _grown(log, 2, prefix="9")
    witness.check(log.prove([]), [])
    for name, data in backup.items():  # the host restores the older log
        (tmp_path / "transparency" / name).write_bytes(data)
    restored = _log(tmp_path)
    assert restored.head.size == 3
    with pytest.raises(AttestationFailed, match="consistency proof from size"):
        witness.check(restored.prove([]), [])
    replay = LogProof.model_validate(
        restored.prove([]).model_dump() | {"since": 5, "consistency": []}
    )
    with pytest.raises(AttestationFailed, match="went back"):
        witness.check(replay, [])


def test_a_key_service_entry_is_appended_again_unless_it_is_the_latest_for_its_measurement(
    tmp_path: Path,
) -> None:
    """Switching a measurement back to a policy logged before is a new entry, named by the
    signed head as the latest; the head's claim cannot be edited without its signature."""
    key = Ed25519PrivateKey.generate()
    old, new = keyservice_entry("aa" * 32, "01" * 32), keyservice_entry("aa" * 32, "02" * 32)
    log = TransparencyLog(key, tmp_path)
    assert [log.append(old), log.append(worker_entry("bb" * 32)), log.append(old)] == [0, 1, 0]
    assert log.append(new) == 2 and not log.is_latest(old)
    assert log.append(old) == 3 and log.append(old) == 3 and log.is_latest(old)
    reopened = TransparencyLog(key, tmp_path)  # the same after a restart
    assert reopened.head.size == 4 and reopened.head.keyservices == {"aa" * 32: 3}
    witness = LogWitness(log.public_key)
    proof = reopened.prove([old])
    assert proof.inclusions[0].index == 3
    witness.check(proof, [old])
    # the host points the head's claim at the superseded entry: no longer signed
    forged = proof.model_copy(
        update={"head": proof.head.model_copy(update={"keyservices": {"aa" * 32: 2}})}
    )
    with pytest.raises(AttestationFailed, match="not signed"):
        LogWitness(log.public_key).check(forged, [old])
    with pytest.raises(AttestationFailed, match="superseded"):
        LogWitness(log.public_key).check(reopened.prove([new]), [new])
