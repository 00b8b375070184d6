"""Where the key service's key-encryption key (KEK) comes from, and how keys travel.

In a real TEE the KEK is sealed to the enclave's measurement (Gramine exposes
the SGX sealing key at `/dev/attestation/keys/_sgx_mrenclave`), so only the
same code on the same platform can read the service's state. With the
simulated backend there is no sealing: `simulated_sealing_key` keeps a random
key in a 0600 file under ``DATA_DIR/simulated-tee/``. Anyone who can read that file can read
every key in the store — it is named for what it is.

Keys in transit are sealed with HPKE (RFC 9180, base mode, X25519 /
HKDF-SHA256 / AES-256-GCM) to an attested X25519 public key; `info` binds
what the key is (purpose, owner, key id) so a sealed key cannot be replayed
as another.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infaas.envelope import KEY_LEN, canonical_json
from infaas.errors import DecryptionFailed, TeeUnavailable
from infaas.keyservice.counter import SIMULATED_TEE_DIR
from infaas.logs import get_logger

log = get_logger(__name__)

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_INFO_PREFIX = b"infaas-keyservice/v1 "


def simulated_sealing_key(data_dir: Path) -> bytes:
    """SIMULATED sealing: a random KEK in `data_dir/simulated-tee/sealing.key` (0600).

    ``simulated-tee/`` stands for TEE hardware state (beside the monotonic counter,
    `infaas.keyservice.counter`). Not confidential: the host can read it. A hardware
    deployment uses `gramine_sealing_key` (or a KMS that releases the KEK to attested
    code). A key from before (``data_dir/keyservice/simulated-sealing.key``) is moved
    there once.
    """
    path = data_dir / SIMULATED_TEE_DIR / "sealing.key"
    legacy = data_dir / "keyservice" / "simulated-sealing.key"
    if not path.exists() and legacy.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(legacy, path)
        log.warning("moved the simulated sealing key from %s to %s", legacy, path)
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_LEN:
            raise ValueError(f"{path} must hold {KEY_LEN} bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_LEN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    log.warning(
        "key service KEK is a SIMULATED sealing key in %s (not confidential: readable by the host)",
        path,
    )
    return key


def gramine_sealing_key(path: Path = Path("/dev/attestation/keys/_sgx_mrenclave")) -> bytes:
    """The SGX MRENCLAVE sealing key via Gramine, stretched to 32 bytes with HKDF."""
    if not path.exists():
        raise TeeUnavailable(f"{path} is absent: not running inside a Gramine SGX enclave")
    raw = path.read_bytes()
    return HKDF(hashes.SHA256(), KEY_LEN, salt=None, info=b"infaas keyservice KEK").derive(raw)


def info_for(purpose: str, fields: Mapping[str, Any]) -> bytes:
    """HPKE `info`: what a sealed key is, so it cannot be swapped for another."""
    return _INFO_PREFIX + purpose.encode() + b" " + canonical_json(fields)


def x25519_raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_to(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE-seal `plaintext` to a raw X25519 public key (enc || ciphertext)."""
    return SUITE.encrypt(plaintext, X25519PublicKey.from_public_bytes(public_key), info)


def open_sealed(private_key: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    try:
        return SUITE.decrypt(sealed, private_key, info)
    except Exception:  # cryptography raises InvalidTag or ValueError for bad input
        raise DecryptionFailed(
            "sealed key does not open: wrong recipient, context or tampered"
        ) from None
