"""The relying party's one call: verify evidence and judge it against policy.

`AttestationVerifier.verify(evidence, public_key=..., nonce=...)` runs the
chain and signature checks of `verify.py` against the policy's roots (plus any
the deployment adds, e.g. its simulated platform CA), then the policy rules,
including that report data = SHA-256(public key || nonce). `NonceIssuer` hands
out single-use nonces and remembers when each was issued, for freshness.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from infaas.attestation.backends import report_data_for
from infaas.attestation.policy import AttestationPolicy, Verdict
from infaas.attestation.verify import VerifiedQuote, verify_quote
from infaas.errors import AttestationFailed

NONCE_LEN = 32


class AttestationVerifier:
    """Verifies evidence to trusted roots and checks it against an `AttestationPolicy`."""

    def __init__(
        self,
        policy: AttestationPolicy,
        *,
        extra_roots: Sequence[x509.Certificate] = (),
        collateral: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.roots: tuple[x509.Certificate, ...] = (*policy.roots, *extra_roots)
        self.collateral = collateral
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
