"""The key service's identity, as clients and workers check it before trusting it.

The key service has three public things, all bound into its evidence: its
HPKE key (keys are sealed to it), its Ed25519 signing key (it signs every
release) and the SHA-256 of its *release policy* (which workers it releases
keys to: their measurements, the roots, debug, TCB floor, production flag; whose
enrolments it accepts: `release_policy_document`). The evidence's report data is
``SHA-256(identity || nonce)`` with ``identity = hpke key || signing key ||
policy SHA-256`` (`identity_bytes`), so a genuine key service started with a
permissive policy reports another policy hash and is refused.

What a relying party expects comes from the deployment's published trust
bundle (`KeyServiceTrust`, `infaas trust export`): code measurement, policy
hash, the roots its evidence chains to. `attest_keyservice` checks evidence
against it and returns the `AttestedKeyService`; a worker then accepts a
release only if its signature verifies under that attested signing key and
its signed statement (`release_statement`) names exactly what the worker
asked for, the ephemeral key it asked with and its own nonce.

A bundle that pins a transparency log (`KeyServiceTrust.log_public_key`) asks
more: the key service's measurement and policy, and every worker measurement
that policy admits, must be in that log (inclusion proofs under a head the log
key signed) and the log must extend every head this party saw before
(`infaas.transparency.witness`); a policy that admits any worker measurement
cannot be checked in the log and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.verifier import AttestationVerifier
from infaas.attestation.verify import VerifiedQuote, load_roots
from infaas.envelope import canonical_json
from infaas.errors import AttestationFailed
from infaas.keyservice.models import EvidenceResponse, KeyRequest, ReleaseResponse, WrappedKey
from infaas.transparency.log import (
    LogProof,
    ProofRequest,
    admits_any_worker,
    keyservice_entry,
    worker_entry,
    worker_measurements,
)
from infaas.transparency.witness import LogWitness, SeenHeads

if TYPE_CHECKING:
    from infaas.attestation.verifier import WorkerVerifier

RELEASE_POLICY_VERSION = 1
_STATEMENT = "infaas-keyservice/v1 release"


def release_policy_document(
    verifier: WorkerVerifier, *, production: bool, enrolment_key: bytes | None = None
) -> dict[str, Any]:
    """The key service's effective release policy in canonical form (what its hash covers):
    which workers get keys, and whose enrolments make tenants and owners
    (`infaas.keyservice.enrolment`; None: it enrols nobody)."""
    return {
        "version": RELEASE_POLICY_VERSION,
        "production": production,
        "workers": verifier.policy_document(),
        "enrolment_key": enrolment_key.hex() if enrolment_key is not None else None,
    }


def policy_sha256(document: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a release policy document's canonical JSON."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def identity_bytes(hpke_public_key: bytes, signing_public_key: bytes, policy_hex: str) -> bytes:
    """What the key service's report data binds (with the verifier's nonce)."""
    return hpke_public_key + signing_public_key + bytes.fromhex(policy_hex)


def ed25519_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _sealed_sha256(w: WrappedKey) -> str:
    return hashlib.sha256(w.sealed_key).hexdigest()


def release_statement(
    *,
    nonce: bytes,
    worker_nonce: bytes,
    worker_key: bytes,
    keys: Sequence[WrappedKey],
    lease_s: float,
) -> bytes:
    """The bytes the key service signs for one release: the request it answers (its nonce,
    the worker's nonce and ephemeral key) and each key released (what it is, the models it
    serves, the hash of its seal), valid `lease_s` seconds from the worker's asking."""
    return canonical_json(
        {
            "purpose": _STATEMENT,
            "nonce": nonce.hex(),
            "worker_nonce": worker_nonce.hex(),
            "worker_key": worker_key.hex(),
            "lease_s": lease_s,
            "keys": [
                {
                    "kind": w.kind,
                    "model_id": w.model_id,
                    "tenant": w.tenant,
                    "key_id": w.key_id,
                    "models": None if w.models is None else list(w.models),
                    "sealed_sha256": _sealed_sha256(w),
                }
                for w in keys
            ],
        }
    )


@dataclass(frozen=True)
class AttestedKeyService:
    """A key service whose evidence verified against a trust bundle."""

    measurement: str
    hpke_public_key: bytes
    signing_public_key: bytes
    policy_sha256: str
    simulated: bool
    verified: VerifiedQuote = field(repr=False)

    def check_release(
        self,
        resp: ReleaseResponse,
        *,
        requests: Sequence[KeyRequest],
        nonce: bytes,
        worker_nonce: bytes,
        worker_key: bytes,
    ) -> None:
        """Refuse (AttestationFailed, saying why) a release this key service did not sign for
        this very request, or one that answers another request than the worker's."""
        statement = release_statement(
            nonce=nonce,
            worker_nonce=worker_nonce,
            worker_key=worker_key,
            keys=resp.keys,
            lease_s=resp.lease_s,
        )
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_public_key).verify(
                resp.signature, statement
            )
        except (InvalidSignature, ValueError):
            raise AttestationFailed(
                "key release is not signed by the attested key service for this request "
                "(a man in the middle, or a key service restarted since it was attested)",
                check="release_signature",
            ) from None
        if len(resp.keys) != len(requests):
            raise AttestationFailed(
                f"key release answers {len(resp.keys)} keys, {len(requests)} were asked for",
                check="release_binding",
            )
        for asked, got in zip(requests, resp.keys, strict=True):
            named = (got.kind, got.model_id, got.tenant) == (
                asked.kind,
                asked.model_id,
                asked.tenant,
            )
            if not named or (asked.key_id is not None and got.key_id != asked.key_id):
                raise AttestationFailed(
                    f"released key ({got.kind}, {got.model_id}, {got.tenant}, {got.key_id}) is "
                    f"not the one asked for ({asked.kind}, {asked.model_id}, {asked.tenant}, "
                    f"{asked.key_id})",
                    check="release_binding",
                )


def attest_keyservice(
    evidence_of: Any,
    verifier: AttestationVerifier,
    expected_policy_sha256: str,
    *,
    log: LogWitness | None = None,
    prove: Callable[[ProofRequest], LogProof] | None = None,
) -> AttestedKeyService:
    """Fetch the key service's evidence over a fresh nonce (`evidence_of(nonce)`) and check it:
    quote chain and measurement (`verifier`), report data binding its keys and policy hash,
    the policy document hashing to that value, and that value being the expected one.

    With a `log` (the bundle's pinned transparency log), the expected policy may be left
    empty: the measurement and policy, and each worker measurement the policy admits, must
    then be in the log instead, proven by `prove` (`check_in_log`)."""
    if not expected_policy_sha256 and log is None:
        raise AttestationFailed(
            "no expected release policy for the key service: its trust bundle must name "
            "policy_sha256 or a transparency log (infaas trust export)",
            check="keyservice_policy",
        )
    nonce = secrets.token_bytes(32)
    ev: EvidenceResponse = evidence_of(nonce)
    identity = identity_bytes(ev.public_key, ev.signing_key, ev.policy_sha256)
    verified, _ = verifier.verify(ev.quote, public_key=identity, nonce=nonce)
    if policy_sha256(ev.policy) != ev.policy_sha256:
        raise AttestationFailed(
            "key service's release policy document does not hash to the value its evidence binds",
            check="keyservice_policy",
        )
    if expected_policy_sha256 and not hmac.compare_digest(
        ev.policy_sha256, expected_policy_sha256.lower()
    ):
        raise AttestationFailed(
            f"key service runs release policy {ev.policy_sha256}, the trust bundle expects "
            f"{expected_policy_sha256.lower()}: refused (right code, another policy?)",
            check="keyservice_policy",
        )
    if not isinstance(verified, VerifiedQuote):  # pragma: no cover - verify returns quotes
        raise AttestationFailed("key service evidence is not a quote")
    if log is not None:
        if prove is None:
            raise AttestationFailed(
                "the trust bundle pins a transparency log, but this key service transport "
                "cannot fetch its proofs",
                check="transparency_log",
            )
        check_in_log(log, prove, verified.measurement.hex(), ev.policy_sha256, ev.policy)
    return AttestedKeyService(
        measurement=verified.measurement.hex(),
        hpke_public_key=ev.public_key,
        signing_public_key=ev.signing_key,
        policy_sha256=ev.policy_sha256,
        simulated=verified.simulated,
        verified=verified,
    )


def check_in_log(
    log: LogWitness,
    prove: Callable[[ProofRequest], LogProof],
    measurement: str,
    policy_hex: str,
    policy: Mapping[str, Any],
) -> None:
    """AttestationFailed unless the key service `measurement` running `policy` (of hash
    `policy_hex`) and every worker measurement the policy admits are in the transparency
    log, under a head consistent with every head `log` saw before."""
    if admits_any_worker(policy):
        raise AttestationFailed(
            "key service's release policy admits any worker measurement: what it releases "
            "keys to cannot be checked in the transparency log: refused",
            check="transparency_log",
        )
    entries = [keyservice_entry(measurement, policy_hex)]
    entries += [worker_entry(m) for m in worker_measurements(policy)]
    log.check(prove(ProofRequest(entries=entries, since=log.since())), entries)


@dataclass(frozen=True)
class KeyServiceTrust:
    """A deployment's published trust bundle: what tenants, owners and workers expect of its
    key service (`infaas trust export`).

    `measurement` is the key service's code identity, `policy_sha256` the hash of its
    release policy (`release_policy`, the document itself, is there to be read),
    `roots_pem` the roots its evidence chains to: the simulated platform CA of a simulated
    deployment (then `allow_simulated` must be set: such evidence is not confidential) or
    Intel's root for hardware; `log_public_key` the transparency log the key service's
    identity and the workers it trusts must be in.
    """

    measurement: str
    roots_pem: bytes
    allow_simulated: bool = False
    policy_sha256: str = ""
    release_policy: Mapping[str, Any] | None = None
    log_public_key: str = ""
    """The transparency log's Ed25519 public key (hex): what is trusted must be logged there."""

    def witness(self, seen_heads: Path | None = None) -> LogWitness | None:
        """The relying party's check of this bundle's transparency log (None: no log pinned),
        remembering the heads it saw in `seen_heads` (a JSON file) when given."""
        if not self.log_public_key:
            return None
        return LogWitness(bytes.fromhex(self.log_public_key), SeenHeads(seen_heads))

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy(
            allow_simulated=self.allow_simulated,
            allowed_measurements=(self.measurement.lower(),),
        )

    def verifier(self) -> AttestationVerifier:
        return AttestationVerifier(self.policy(), extra_roots=load_roots(self.roots_pem))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measurement": self.measurement,
            "policy_sha256": self.policy_sha256,
            "roots_pem": self.roots_pem.decode(),
            "allow_simulated": self.allow_simulated,
        }
        if self.release_policy is not None:
            out["release_policy"] = dict(self.release_policy)
        if self.log_public_key:
            out["log_public_key"] = self.log_public_key
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyServiceTrust:
        policy = data.get("release_policy")
        return cls(
            measurement=str(data["measurement"]),
            roots_pem=str(data["roots_pem"]).encode(),
            allow_simulated=bool(data.get("allow_simulated", False)),
            policy_sha256=str(data.get("policy_sha256", "")),
            release_policy=dict(policy) if isinstance(policy, Mapping) else None,
            log_public_key=str(data.get("log_public_key", "")),
        )
