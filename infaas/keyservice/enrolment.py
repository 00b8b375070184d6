"""Administrator statements the key service acts on: enrolments and revocations.

A party becomes a tenant or a model owner of the key service only with a one-time
*enrolment* an administrator issued; an administrator revokes a party's
key-service token with a signed *revocation*. Both are statements signed by the
administrator's Ed25519 *enrolment key*, whose public half is part of the key
service's release policy (and so of its attested identity: clients and workers
refuse a key service that trusts another administrator). The key service decides
on them itself: neither the host, nor the store, nor the proxy can issue one, and
an edited statement does not verify.

Format (one line of text, what ``infaas tenant create`` hands the party)::

    infaas-enrolment-v1.<b64url(body)>.<b64url(Ed25519 signature)>

    body = canonical JSON {"purpose": "enrolment", "id": "acme", "role": "tenant",
                           "enrolment_id": "<32 hex>", "issued_at": 1763760000.0,
                           "expires_at": 1764364800.0}
    signature = Ed25519(enrolment key, "infaas-admin-statement/v1\\x1f" || body)

A revocation is the same with prefix ``infaas-revocation-v1`` and body
``{"purpose": "revocation", "id": "acme", "issued_at": ...}``. The key service
accepts an enrolment once (it records each ``enrolment_id`` it consumed) and
before it expires; a revocation only if issued after the party's current
enrolment, so an old revocation cannot undo a later re-enrolment, and a revoked
name only with an enrolment issued after the revocation, so an old enrolment
cannot undo a revocation.

The enrolment key lives with the administrator (``DATA_DIR/enrolment-key.pem``,
0600, made by the first deployment or trust export of the data directory); the key
service is given only its public half (``DATA_DIR/enrolment-key.pub``, hex), and the
trust bundle carries it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from infaas.envelope import canonical_json
from infaas.errors import AuthenticationFailed, InvalidInput
from infaas.keyservice.trust import ed25519_raw

Purpose = Literal["enrolment", "revocation"]
_PREFIX: dict[Purpose, str] = {
    "enrolment": "infaas-enrolment-v1",
    "revocation": "infaas-revocation-v1",
}
_SIGNED = b"infaas-admin-statement/v1\x1f"
DEFAULT_ENROLMENT_TTL_S = 7 * 24 * 3600.0
PRIVATE_FILE = "enrolment-key.pem"
PUBLIC_FILE = "enrolment-key.pub"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Statement:
    """A verified administrator statement (its signed body)."""

    purpose: Purpose
    id: str
    issued_at: float
    role: Literal["tenant", "owner"] | None = None
    enrolment_id: str | None = None
    expires_at: float | None = None


def sign_statement(key: Ed25519PrivateKey, body: dict[str, Any]) -> str:
    purpose: Purpose = body["purpose"]
    raw = canonical_json(body)
    return f"{_PREFIX[purpose]}.{_b64(raw)}.{_b64(key.sign(_SIGNED + raw))}"


def issue_enrolment(
    key: Ed25519PrivateKey,
    principal_id: str,
    role: Literal["tenant", "owner"],
    *,
    ttl_s: float = DEFAULT_ENROLMENT_TTL_S,
    now: float | None = None,
) -> str:
    """A one-time enrolment of `principal_id` as `role`, valid `ttl_s` seconds."""
    issued_at = time.time() if now is None else now
    body = {
        "purpose": "enrolment",
        "id": principal_id,
        "role": role,
        "enrolment_id": secrets.token_hex(16),
        "issued_at": issued_at,
        "expires_at": issued_at + ttl_s,
    }
    return sign_statement(key, body)


def issue_revocation(key: Ed25519PrivateKey, principal_id: str, *, now: float | None = None) -> str:
    """A revocation of `principal_id`'s key-service token (and of the release of its keys)."""
    issued_at = time.time() if now is None else now
    return sign_statement(
        key, {"purpose": "revocation", "id": principal_id, "issued_at": issued_at}
    )


def verify_statement(text: str, public_key: bytes, purpose: Purpose) -> Statement:
    """The statement `text` signed by the enrolment key `public_key`, of `purpose`;
    AuthenticationFailed if it is not (forged, edited, another purpose)."""
    prefix, _, rest = text.strip().partition(".")
    body_b64, _, sig_b64 = rest.partition(".")
    if prefix != _PREFIX[purpose] or not body_b64 or not sig_b64:
        raise InvalidInput(f"not an infaas {purpose} (expected {_PREFIX[purpose]}.BODY.SIG)")
    try:
        raw, sig = _unb64(body_b64), _unb64(sig_b64)
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, _SIGNED + raw)
    except (InvalidSignature, ValueError, binascii.Error):
        raise AuthenticationFailed(
            f"{purpose} is not signed by this deployment's administrator (forged or edited)"
        ) from None
    body = json.loads(raw)
    if body.get("purpose") != purpose:
        raise AuthenticationFailed(
            f"this statement is a {body.get('purpose')}, where a {purpose} was expected"
        )
    return Statement(
        purpose=purpose,
        id=str(body["id"]),
        issued_at=float(body["issued_at"]),
        role=body.get("role"),
        enrolment_id=body.get("enrolment_id"),
        expires_at=body.get("expires_at"),
    )


def statement_subject(text: str) -> str:
    """The principal an (unverified) statement names: what a client needs before sending it."""
    try:
        body = json.loads(_unb64(text.strip().split(".")[1]))
        return str(body["id"])
    except (IndexError, ValueError, KeyError, binascii.Error):
        raise InvalidInput("malformed administrator statement") from None


# --- the administrator's key files ----------------------------------------------------------


def load_or_create_enrolment_key(data_dir: Path) -> Ed25519PrivateKey:
    """The administrator's enrolment key in `data_dir` (made, 0600, with its public half,
    when missing)."""
    path = data_dir / PRIVATE_FILE
    if path.exists():
        return load_enrolment_key(data_dir)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (data_dir / PUBLIC_FILE).write_text(ed25519_raw(key.public_key()).hex() + "\n")
    return key


def load_enrolment_key(data_dir: Path) -> Ed25519PrivateKey:
    path = data_dir / PRIVATE_FILE
    if not path.is_file():
        raise AuthenticationFailed(
            f"no administrator enrolment key at {path}: only the administrator of this "
            "deployment (whose first `infaas serve` made it) issues enrolments"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 key")
    return key


def enrolment_public_key(data_dir: Path) -> bytes:
    """The enrolment key's public half the key service trusts: `data_dir`'s public file
    (an administrator keeping the private half elsewhere leaves only that), else the
    half of the key there, made now if there is none (the first deployment or trust
    export of a data directory makes the administrator's key)."""
    path = data_dir / PUBLIC_FILE
    if not path.is_file():
        return ed25519_raw(load_or_create_enrolment_key(data_dir).public_key())
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) != 32:
        raise InvalidInput(f"{path} is not a 32-byte Ed25519 public key (hex)")
    return raw
