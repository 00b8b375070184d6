"""What every kind of verified evidence shares, whatever the vendor.

- `CheckResult` / `Checks`: the named checks a verification or policy records;
- `RootedEvidence`: the root a verified chain ends at, its fingerprint, and
  whether it is a simulated platform CA (`SIMULATED_MARKER_OID`);
- raw ECDSA: Intel's and SPDM's fixed-width r||s signatures and Intel's x||y
  P-256 points, as the DER and key objects `cryptography` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

SIMULATED_MARKER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
"""Extension carried by every simulated platform CA: evidence under it is not confidential."""


@dataclass(frozen=True)
class CheckResult:
    """One verification or policy check: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str = ""


class Checks:
    """Check results in the order they ran, and the first failure's detail."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.first_failure: str | None = None

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append(CheckResult(name, ok, detail))
        if not ok and self.first_failure is None:
            self.first_failure = detail
        return ok


def is_simulated_root(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(SIMULATED_MARKER_OID)
    except x509.ExtensionNotFound:
        return False
    return True


class RootedEvidence:
    """Evidence whose chain verified to `root`: what a policy asks of that root."""

    if TYPE_CHECKING:

        @property
        def root(self) -> x509.Certificate: ...

    @property
    def simulated(self) -> bool:
        """True when the chain ends at a simulated platform CA (known by the root's marker)."""
        return is_simulated_root(self.root)

    @property
    def root_fingerprint(self) -> str:
        return self.root.fingerprint(hashes.SHA256()).hex()


def raw_signature_to_der(sig: bytes, size: int = 32) -> bytes:
    """A raw r||s ECDSA signature of two `size`-byte big-endian integers, as DER."""
    if len(sig) != 2 * size:
        raise ValueError(f"raw ECDSA signature must be {2 * size} bytes, got {len(sig)}")
    r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
    return encode_dss_signature(r, s)


def raw_p256_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """A raw 64-byte x||y P-256 point (Intel's attestation key form) as a public key."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + point)


def raw_p256_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def verify_raw(
    key: ec.EllipticCurvePublicKey,
    sig: bytes,
    data: bytes,
    *,
    size: int = 32,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bool:
    """Whether raw r||s `sig` (`size`-byte halves) signs `data` under `key` (SHA-256 unless
    `algorithm` says otherwise)."""
    try:
        key.verify(raw_signature_to_der(sig, size), data, ec.ECDSA(algorithm or hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
