"""X.509 chains of attestation evidence (Intel PCK, Intel collateral signers, NVIDIA devices).

`verify_chain` first walks the chain link by link (validity window, signature,
issuer is a CA) to name exactly what broke, then runs `cryptography`'s path
validation (`cryptography.x509.verification`) over the same certificates:
basic constraints and path length of every CA, key usage (keyCertSign for CAs,
the purpose the caller names for the leaf) and the trusted root. Any malformed
certificate becomes `AttestationFailed`, never a bare `ValueError`.

AMD's SEV-SNP chains are signed with RSA-PSS, which `cryptography`'s path
validation refuses; `infaas.attestation.snp` checks those links itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from infaas.errors import AttestationFailed

LeafUsage = Literal["digital_signature", "crl_sign", "key_cert_sign"]

CERT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
)
"""What `cryptography` raises on a malformed certificate (it parses parts lazily)."""
_LINK_ERRORS: tuple[type[Exception], ...] = (*CERT_ERRORS, InvalidSignature)


def _ca_key_usage(_policy: object, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    if ku is not None and not ku.key_cert_sign:
        raise ValueError(f"CA {cert.subject.rfc4514_string()} lacks keyCertSign")


def _ca_basic_constraints(
    _policy: object, cert: x509.Certificate, bc: x509.BasicConstraints | None
) -> None:
    if bc is None or not bc.ca:
        raise ValueError(f"issuer {cert.subject.rfc4514_string()} is not a CA")


def _ca_policy() -> ExtensionPolicy:
    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
    )


def _ee_policy(usage: LeafUsage) -> ExtensionPolicy:
    def check(_policy: object, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        if ku is None or not getattr(ku, usage):
            raise ValueError(f"{cert.subject.rfc4514_string()} key usage lacks {usage}")

    return ExtensionPolicy.permit_all().require_present(x509.KeyUsage, Criticality.AGNOSTIC, check)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Iterable[x509.Certificate],
    now: datetime,
    *,
    leaf_usage: LeafUsage = "digital_signature",
    what: str = "certificate chain",
) -> x509.Certificate:
    """Check leaf-first `chain` up to one of `roots` at `now`; return the root it ends at."""
    try:
        return _verify_chain(list(chain), list(roots), now, leaf_usage, what)
    except CERT_ERRORS as exc:
        raise AttestationFailed(f"{what}: malformed certificate ({exc})") from None


def _verify_chain(
    chain: list[x509.Certificate],
    roots: list[x509.Certificate],
    now: datetime,
    leaf_usage: LeafUsage,
    what: str,
) -> x509.Certificate:
    if not chain:
        raise AttestationFailed(f"{what} is empty")
    if not roots:
        raise AttestationFailed(f"{what}: no trusted root")
    for i, cert in enumerate(chain):
        _check_signature_encoding(cert, what)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationFailed(
                f"{what}: {_subject(cert)} is not valid at {now.isoformat()} (valid "
                f"{cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()})"
            )
        if i + 1 < len(chain):
            issuer = chain[i + 1]
            try:
                cert.verify_directly_issued_by(issuer)
            except _LINK_ERRORS as exc:
                raise AttestationFailed(
                    f"{what}: {_subject(cert)} is not signed by {_subject(issuer)} "
                    f"({type(exc).__name__})"
                ) from None
    top = chain[-1]
    anchored = top in roots or any(_issued_by(top, r) for r in roots)
    if not anchored:
        raise AttestationFailed(f"{what} does not end at a trusted root")
    # a chain that carries its root: the root is the trust anchor, not an intermediate
    intermediates = [c for c in chain[1:] if c not in roots]
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(now)
        .extension_policies(ca_policy=_ca_policy(), ee_policy=_ee_policy(leaf_usage))
        .build_client_verifier()
    )
    leaf = chain[0]
    if leaf in roots:
        return leaf
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise AttestationFailed(f"{what} rejected by path validation: {exc}") from None
    return verified.chain[-1]


def _check_signature_encoding(cert: x509.Certificate, what: str) -> None:
    """The signature BIT STRING must declare 0 unused bits (DER); `cryptography` ignores the
    count, so a certificate with that byte changed would otherwise still verify."""
    der = cert.public_bytes(Encoding.DER)
    sig = cert.signature
    if len(der) <= len(sig) or der[-len(sig) - 1] != 0:
        raise AttestationFailed(f"{what}: {_subject(cert)} signature is not DER-encoded")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except _LINK_ERRORS:
        return False
    return True


def split_der_certificates(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (some quotes carry DER, not PEM, in type 5)."""
    from pyasn1.codec.der import decoder
    from pyasn1.error import PyAsn1Error

    out: list[bytes] = []
    rest = data.rstrip(b"\x00")
    try:
        while rest:
            _, tail = decoder.decode(rest)
            out.append(rest[: len(rest) - len(tail)])
            rest = bytes(tail)
    except PyAsn1Error as exc:
        raise AttestationFailed(f"certificate chain is not valid DER: {exc}") from None
    return out
