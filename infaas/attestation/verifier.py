"""The relying party's one call: verify evidence and judge it against policy.

`AttestationVerifier.verify(evidence, public_key=..., nonce=...)` runs the
chain and signature checks of `verify.py` against the policy's roots (plus any
the deployment adds, e.g. its simulated platform CA), then the policy rules,
including that report data = SHA-256(public key || nonce). `verify_composite` adds,
for a GPU pool, the GPU's evidence bound to the same nonce. `PoolVerifiers` is the key
service's judge of worker evidence: one verifier per pool, chosen by the worker's
measurement. `NonceIssuer` hands out single-use nonces and remembers when each was
issued, for freshness.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256

from infaas.attestation.appraisal import CompositeAppraisal, appraise
from infaas.attestation.backends import report_data_for
from infaas.attestation.chain import CERT_ERRORS
from infaas.attestation.policy import AttestationPolicy, Verdict
from infaas.attestation.quote import parse_quote
from infaas.attestation.spdm import verify_gpu_report
from infaas.attestation.verify import VerifiedQuote, verify_quote
from infaas.errors import AttestationFailed

NONCE_LEN = 32


@dataclass(frozen=True)
class GpuEvidence:
    """A GPU's SPDM report (its nonce = SHA-256(worker key || verifier nonce)) and its
    device certificate chain (PEM, leaf first)."""

    report: bytes
    chain_pem: bytes


class AttestationVerifier:
    """Verifies evidence to trusted roots and checks it against an `AttestationPolicy`."""

    def __init__(
        self,
        policy: AttestationPolicy,
        *,
        extra_roots: Sequence[x509.Certificate] = (),
        collateral: Any = None,
        gpu_roots: Sequence[x509.Certificate] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.roots: tuple[x509.Certificate, ...] = (*policy.roots, *extra_roots)
        self.collateral = collateral
        self.gpu_roots = tuple(gpu_roots)
        self._clock = clock
        if not self.roots:
            raise AttestationFailed("attestation policy trusts no root certificate")
        if policy.require_tcb and collateral is None:
            raise AttestationFailed(
                "attestation policy requires TCB collateral and none is configured "
                "(settings.attestation_collateral)"
            )

    def verify(
        self,
        evidence: bytes,
        *,
        public_key: bytes,
        nonce: bytes,
        nonce_issued_at: float | None = None,
        now: float | None = None,
    ) -> tuple[VerifiedQuote, Verdict]:
        """Verify `evidence` binds `public_key` and `nonce`; raise AttestationFailed if not."""
        t = self._clock() if now is None else now
        verified = verify_quote(
            evidence,
            self.roots,
            now=datetime.fromtimestamp(t, UTC),
            collateral=self.collateral,
        )
        verdict = self.policy.check(
            verified, report_data_for(public_key, nonce), t, nonce_issued_at=nonce_issued_at
        )
        return verified, verdict

    def verify_composite(
        self,
        evidence: bytes,
        *,
        public_key: bytes,
        nonce: bytes,
        gpu: GpuEvidence | None = None,
        nonce_issued_at: float | None = None,
        now: float | None = None,
    ) -> CompositeAppraisal:
        """CPU evidence and, for a GPU pool (`policy.require_gpu`), GPU evidence whose SPDM
        nonce is the same binding of `public_key` and `nonce`; raise AttestationFailed
        naming the first failed check, or return the normalised appraisal."""
        t = self._clock() if now is None else now
        verified, verdict = self.verify(
            evidence, public_key=public_key, nonce=nonce, nonce_issued_at=nonce_issued_at, now=t
        )
        cpu = appraise(verified, verdict)
        if gpu is None:
            if self.policy.require_gpu:
                raise AttestationFailed(
                    "policy: a GPU-pool worker must present GPU evidence (composite)",
                    rule="gpu_evidence",
                    failed_rules=["gpu_evidence"],
                )
            return CompositeAppraisal(cpu)
        try:
            chain = list(x509.load_pem_x509_certificates(gpu.chain_pem))
        except CERT_ERRORS as exc:
            raise AttestationFailed(f"GPU device chain could not be parsed: {exc}") from None
        pins = {p.lower() for p in self.policy.gpu.root_sha256}
        roots = [*self.gpu_roots, *(c for c in chain if c.fingerprint(SHA256()).hex() in pins)]
        if not roots:
            raise AttestationFailed("GPU device chain ends at no pinned root", check="device_chain")
        gv = verify_gpu_report(gpu.report, chain, roots, now=datetime.fromtimestamp(t, UTC))
        # the same binding as the CPU's report data: SHA-256(public key || nonce)
        gverdict = self.policy.check(gv, report_data_for(public_key, nonce)[:32], t)
        return CompositeAppraisal(cpu, appraise(gv, gverdict))

    def policy_document(self) -> dict[str, Any]:
        """What this verifier admits, canonical and host-independent: the policy's rules,
        the SHA-256 of every root it trusts (root paths are not part of it), the GPU roots,
        and whether TCB collateral is appraised (its contents are data the operator
        refreshes, the TCB floor is in the rules)."""
        return {
            "rules": self.policy.model_dump(mode="json", exclude={"trusted_roots"}),
            "root_sha256": sorted(c.fingerprint(SHA256()).hex() for c in self.roots),
            "gpu_root_sha256": sorted(c.fingerprint(SHA256()).hex() for c in self.gpu_roots),
            "collateral": self.collateral is not None,
        }


class WorkerVerifier(Protocol):
    """What the key service asks of the judge of worker evidence."""

    def verify_composite(
        self,
        evidence: bytes,
        *,
        public_key: bytes,
        nonce: bytes,
        gpu: GpuEvidence | None = None,
        nonce_issued_at: float | None = None,
        now: float | None = None,
    ) -> CompositeAppraisal: ...

    def policy_document(self) -> dict[str, Any]:
        """The canonical form of what it admits (hashed into the key service's identity)."""
        ...


class PoolVerifiers:
    """One verifier per worker measurement: each pool's workers measure differently (the
    pool is part of the measured config), so a GPU pool's workers are judged by their
    pool's verifier, which requires the composite, and cannot pass as another pool's.

    The measurement read from the evidence only picks the verifier; that verifier then
    checks the signature over it and admits exactly its own pool's measurement. Evidence
    of a measurement no pool has goes to `default` (the policy file's own list), if any.
    """

    def __init__(
        self,
        by_measurement: Mapping[bytes, AttestationVerifier],
        default: AttestationVerifier | None = None,
    ) -> None:
        self._by = dict(by_measurement)
        self._default = default

    def verifier_for(self, measurement: bytes) -> AttestationVerifier:
        """The verifier of workers reporting `measurement` (AttestationFailed if none)."""
        v = self._by.get(measurement, self._default)
        if v is None:
            raise AttestationFailed(
                f"policy: measurement {measurement.hex()} is not in allowed_measurements",
                rule="measurement",
                failed_rules=["measurement"],
            )
        return v

    def policy_document(self) -> dict[str, Any]:
        """Each pool's verifier's document by worker measurement, and the default's."""
        return {
            "by_measurement": {m.hex(): v.policy_document() for m, v in sorted(self._by.items())},
            "default": self._default.policy_document() if self._default else None,
        }

    def verify_composite(
        self,
        evidence: bytes,
        *,
        public_key: bytes,
        nonce: bytes,
        gpu: GpuEvidence | None = None,
        nonce_issued_at: float | None = None,
        now: float | None = None,
    ) -> CompositeAppraisal:
        """`AttestationVerifier.verify_composite` by the verifier of the evidence's pool."""
        return self.verifier_for(parse_quote(evidence).measurement).verify_composite(
            evidence,
            public_key=public_key,
            nonce=nonce,
            gpu=gpu,
            nonce_issued_at=nonce_issued_at,
            now=now,
        )


class NonceIssuer:
    """Single-use random nonces that expire after `ttl_s` (bounded memory)."""

    def __init__(
        self,
        ttl_s: float = 60.0,
        max_outstanding: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_outstanding
        self._clock = clock
        self._issued: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> tuple[bytes, float]:
        """A fresh nonce and the time it was issued."""
        nonce = secrets.token_bytes(NONCE_LEN)
        now = self._clock()
        with self._lock:
            self._expire(now)
            while len(self._issued) >= self._max:
                self._issued.popitem(last=False)
            self._issued[nonce] = now
        return nonce, now

    def consume(self, nonce: bytes) -> float:
        """Use up a nonce; return when it was issued. Unknown, reused or expired: refused."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            issued = self._issued.pop(nonce, None)
        if issued is None:
            raise AttestationFailed("nonce unknown, already used or expired (stale nonce)")
        return issued

    def _expire(self, now: float) -> None:
        while self._issued:
            _nonce, t = next(iter(self._issued.items()))
            if now - t <= self._ttl_s:
                break
            self._issued.popitem(last=False)
