"""The Merkle tree of RFC 9162 §2.1 (Certificate Transparency 2.0): hashes, proofs, checks.

Leaves are hashed ``SHA-256(0x00 || entry)`` and interior nodes
``SHA-256(0x01 || left || right)`` so a leaf can never pass for a node (second
preimages); the tree over ``n`` leaves splits at the largest power of two below
``n`` (`root`). An *inclusion proof* (audit path, §2.1.3) shows that a leaf is
the ``index``-th of a tree of ``size`` leaves with a given root; a *consistency
proof* (§2.1.4) shows that the tree of ``size2`` leaves extends the tree of
``size1`` leaves, i.e. that the log only appended. The checks follow the
verification algorithms of §2.1.3.2 and §2.1.4.2 step by step;
tests/unit/test_transparency.py compares every root and proof with an
independent implementation (pymerkle).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_LEN = 32
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than `n` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH: the root of the tree over these leaf hashes (SHA-256 of nothing when empty)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves): the audit path of leaf `index`, nearest sibling first."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_proof(leaves[:k], index), root(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), root(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(size1, leaves): that the first `size1` leaves are a prefix of these."""
    if not 0 <= size1 <= len(leaves):
        raise ValueError(f"no tree of {size1} leaves under a tree of {len(leaves)}")
    if size1 in (0, len(leaves)):
        return []
    return _subproof(size1, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does `path` prove leaf hash `leaf` at `index` of the tree of
    `size` leaves whose root is `expected_root`?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, expected_root)


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does `path` prove that the tree of `size2` leaves with root `root2`
    extends the tree of `size1` leaves with root `root1`?"""
    if not 0 <= size1 <= size2:
        return False
    if size1 == size2:
        return not path and hmac.compare_digest(root1, root2)
    if size1 == 0:
        return not path
    if not path:
        return False
    nodes = list(path)
    if size1 & (size1 - 1) == 0:  # an exact power of two: its root is a node of the new tree
        nodes.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, root1) and hmac.compare_digest(sr, root2)
