"""Verification of DCAP quotes: PCK chain, QE report signature, key binding, quote signature.

The same code verifies genuine Intel quotes (trusting Intel's SGX Root CA) and
the simulated backend's quotes (trusting the deployment's simulated platform
CA): only the trusted roots differ. Every check is recorded as a
`CheckResult`; `verify_quote` raises `AttestationFailed` naming the first
failed check, `inspect_quote` returns them all (for the CLI).

Optionally, TCB collateral (Intel PCS JSON) is verified to the same roots and
evaluated at `now` (`infaas.attestation.collateral`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infaas.attestation._sgx_extension import SgxPckExtension, sgx_extension
from infaas.attestation.chain import CERT_ERRORS, split_der_certificates, verify_chain
from infaas.attestation.collateral import TcbResult, evaluate_collateral
from infaas.attestation.evidence import (
    CheckResult,
    Checks,
    RootedEvidence,
    raw_p256_public_key,
    verify_raw,
)
from infaas.attestation.quote import Quote, TdReport, parse_quote
from infaas.errors import AttestationFailed


@dataclass(frozen=True)
class VerifiedQuote(RootedEvidence):
    """A quote whose signatures and chain verified, with what a policy needs to judge it."""

    quote: Quote
    root: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    checks: tuple[CheckResult, ...]
    tcb: TcbResult | None = None
    pck: SgxPckExtension | None = None

    @property
    def measurement(self) -> bytes:
        return self.quote.measurement

    @property
    def signer(self) -> bytes:
        return self.quote.signer

    @property
    def report_data(self) -> bytes:
        return self.quote.report_data

    @property
    def debug(self) -> bool:
        return self.quote.debug

    def summary(self) -> dict[str, Any]:
        """The parsed fields as JSON-friendly values."""
        q = self.quote
        return quote_summary(q) | {
            "root_sha256": self.root_fingerprint,
            "simulated": self.simulated,
            "tcb_status": self.tcb.status if self.tcb else None,
            "advisory_ids": list(self.tcb.advisory_ids) if self.tcb else [],
        }


def quote_summary(q: Quote) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tee": q.tee.value,
        "version": q.header.version,
        "measurement": q.measurement.hex(),
        "signer": q.signer.hex(),
        "report_data": q.report_data.hex(),
        "debug": q.debug,
        "qe_svn": q.header.qe_svn,
        "pce_svn": q.header.pce_svn,
        "trailing_bytes": len(q.trailing),
    }
    if isinstance(q.body, TdReport):
        out["rtmrs"] = [r.hex() for r in q.body.rtmrs]
        out["tee_tcb_svn"] = q.body.tee_tcb_svn.hex()
        out["mr_seam"] = q.body.mr_seam.hex()
        out["td_attributes"] = q.body.td_attributes.hex()
    else:
        out["isv_prod_id"] = q.body.isv_prod_id
        out["isv_svn"] = q.body.isv_svn
        out["attributes"] = q.body.attributes.hex()
    return out


def load_roots(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER certificate."""
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def _as_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def pck_chain(quote: Quote, extra_pem: bytes | None = None) -> list[x509.Certificate]:
    """The PCK chain, leaf first: from the quote (type 5), else from `extra_pem`."""
    try:
        pems = quote.pck_chain_pem()
        if pems:
            rest = _PEM_BLOCK.sub(b"", quote.cert_data).strip(b"\n\x00")
            if rest:
                # a damaged BEGIN/END line would otherwise silently drop a certificate
                raise AttestationFailed("certificate chain: bytes outside the PEM certificates")
            certs = [x509.load_pem_x509_certificate(p) for p in pems]
            for pem, cert in zip(pems, certs, strict=True):
                if cert.public_bytes(serialization.Encoding.PEM).strip() != pem.strip():
                    # only the canonical encoding: the carried chain is not signed as a whole
                    raise AttestationFailed("certificate chain: PEM is not canonically encoded")
            return order_chain(certs)
        if quote.cert_type == 5 and quote.cert_data.strip(b"\x00"):
            ders = split_der_certificates(quote.cert_data)
            return order_chain([x509.load_der_x509_certificate(d) for d in ders])
        if extra_pem:
            return order_chain(list(x509.load_pem_x509_certificates(extra_pem)))
    except CERT_ERRORS as exc:
        raise AttestationFailed(f"certificate chain could not be parsed: {exc}") from None
    except AttestationFailed as exc:
        raise AttestationFailed(f"certificate chain could not be parsed: {exc.message}") from None
    raise AttestationFailed(
        f"certificate chain absent: certification data type {quote.cert_type} carries no "
        "PCK chain and none was supplied"
    )


def order_chain(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, each followed by its issuer (some quotes carry the chain root first)."""
    if len(certs) < 2:
        return certs
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaves = [c for c in certs if c.subject not in issuers]
    if len(leaves) != 1:
        return certs
    ordered = [leaves[0]]
    rest = [c for c in certs if c is not leaves[0]]
    while rest:
        nxt = next((c for c in rest if c.subject == ordered[-1].issuer), None)
        if nxt is None:
            return ordered + rest
        ordered.append(nxt)
        rest.remove(nxt)
    return ordered


_PCK_CURVE = ec.SECP256R1


def check_pck_leaf(cert: x509.Certificate) -> SgxPckExtension:
    """The leaf must be an end-entity P-256 signing key carrying Intel's SGX extension."""
    try:
        key = cert.public_key()
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    except CERT_ERRORS as exc:
        raise AttestationFailed(f"PCK certificate is malformed: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _PCK_CURVE):
        raise AttestationFailed("PCK certificate key is not ECDSA P-256")
    if bc is not None and bc.ca:
        raise AttestationFailed("PCK certificate is a CA certificate, not a platform key")
    return sgx_extension(cert)


def inspect_quote(
    quote: bytes | Quote,
    roots: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    collateral: Any = None,
    pck_chain_pem: bytes | None = None,
) -> tuple[list[CheckResult], VerifiedQuote | None]:
    """Run every check that can run; return the results and the verified quote (or None).

    `collateral`: one Intel PCS collateral (a dict as `*.collateral.json` holds it) or a
    bundle of them (a list, or {"collaterals": [...]}); the one for the PCK
    certificate's FMSPC and the quote's TEE is used.
    """
    when = _as_utc(now)
    checks = Checks()
    try:
        q = quote if isinstance(quote, Quote) else parse_quote(quote)
    except AttestationFailed as exc:
        checks.add("parse", False, f"quote malformed: {exc.message}")
        return checks.results, None
    checks.add("parse", True, f"{q.tee.value} quote v{q.header.version}")

    chain: list[x509.Certificate] = []
    root: x509.Certificate | None = None
    pck: SgxPckExtension | None = None
    try:
        chain = pck_chain(q, pck_chain_pem)
        root = verify_chain(chain, roots, when)
        checks.add("pck_chain", True, f"chain of {len(chain)} to {root.subject.rfc4514_string()}")
    except AttestationFailed as exc:
        checks.add("pck_chain", False, exc.message)
    if chain:
        try:
            pck = check_pck_leaf(chain[0])
            checks.add("pck_leaf", True, f"PCK certificate for FMSPC {pck.fmspc.hex()}")
        except AttestationFailed as exc:
            checks.add("pck_leaf", False, exc.message)

    pck_key = chain[0].public_key() if pck is not None else None  # parsed by check_pck_leaf
    if isinstance(pck_key, ec.EllipticCurvePublicKey):
        ok = verify_raw(pck_key, q.qe_report_signature, q.qe_report.raw)
        checks.add(
            "qe_report_signature",
            ok,
            "QE report signed by the PCK key" if ok else "QE report signature invalid",
        )
    else:
        checks.add("qe_report_signature", False, "QE report signature not checked: no PCK key")

    binding = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    ok = binding == q.qe_report.report_data[:32]
    checks.add(
        "qe_report_data",
        ok,
        "QE report data binds the attestation key"
        if ok
        else "QE report data does not bind the attestation key",
    )

    try:
        ak = raw_p256_public_key(q.attestation_key)
        ok = verify_raw(ak, q.signature, q.signed)
        detail = "quote signed by the attestation key" if ok else "quote signature invalid"
    except ValueError:
        ok, detail = False, "quote signature invalid: attestation key is not a P-256 point"
    checks.add("quote_signature", ok, detail)

    tcb: TcbResult | None = None
    if collateral is not None and pck is not None and checks.first_failure is None:
        tcb = evaluate_collateral(q, chain, pck, collateral, roots, when, checks)

    if checks.first_failure is not None or root is None:
        return checks.results, None
    return checks.results, VerifiedQuote(
        quote=q, root=root, chain=tuple(chain), checks=tuple(checks.results), tcb=tcb, pck=pck
    )


def verify_quote(
    quote: bytes | Quote,
    roots: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    collateral: Any = None,
    pck_chain_pem: bytes | None = None,
) -> VerifiedQuote:
    """Verify a quote against trusted `roots` at `now`; raise AttestationFailed naming the check."""
    results, verified = inspect_quote(
        quote, roots, now=now, collateral=collateral, pck_chain_pem=pck_chain_pem
    )
    if verified is None:
        failed = next(r for r in results if not r.ok)
        raise AttestationFailed(failed.detail, check=failed.name)
    return verified
