"""Verification of DCAP quotes: PCK chain, QE report signature, key binding, quote signature.

The same code verifies genuine Intel quotes (trusting Intel's SGX Root CA) and
the simulated backend's quotes (trusting the deployment's simulated platform
CA): only the trusted roots differ. Every check is recorded as a
`CheckResult`; `verify_quote` raises `AttestationFailed` naming the first
failed check, `inspect_quote` returns them all (for the CLI).

Optionally, TCB collateral (Intel PCS JSON: TCB info, QE identity, CRLs and
their issuer chains) is verified to the same roots and evaluated at `now`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from infaas.attestation._der import sgx_extensions, split_der_certificates
from infaas.attestation.quote import Quote, TdReport, parse_quote
from infaas.errors import AttestationFailed

SIMULATED_MARKER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
"""Extension carried by every simulated platform CA: evidence under it is not confidential."""

_SGX = "1.2.840.113741.1.13.1"


@dataclass(frozen=True)
class CheckResult:
    """One verification or policy check: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class TcbResult:
    status: str
    advisory_ids: tuple[str, ...]
    tcb_date: str | None
    qe_status: str
    platform_status: str


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signatures and chain verified, with what a policy needs to judge it."""

    quote: Quote
    root: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    checks: tuple[CheckResult, ...]
    tcb: TcbResult | None = None

    @property
    def simulated(self) -> bool:
        """True when the chain ends at a simulated platform CA (known by the root's marker)."""
        return is_simulated_root(self.root)

    @property
    def root_fingerprint(self) -> str:
        return self.root.fingerprint(hashes.SHA256()).hex()

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


def is_simulated_root(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(SIMULATED_MARKER_OID)
    except x509.ExtensionNotFound:
        return False
    return True


def load_roots(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER certificate."""
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def raw_signature_to_der(sig: bytes) -> bytes:
    """Intel's raw 64-byte r||s ECDSA signature as the DER form `cryptography` takes."""
    if len(sig) != 64:
        raise ValueError(f"raw P-256 signature must be 64 bytes, got {len(sig)}")
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def raw_p256_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """A raw 64-byte x||y P-256 point (Intel's attestation key form) as a public key."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + point)


def raw_p256_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _verify_raw(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(raw_signature_to_der(sig), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _as_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def verify_chain(
    chain: Sequence[x509.Certificate], roots: Iterable[x509.Certificate], now: datetime
) -> x509.Certificate:
    """Check leaf-first `chain` up to one of `roots` at time `now`; return the root.

    Each certificate must be inside its validity window, signed by the next one,
    and every issuer must be a CA. The last certificate must be a trusted root
    or be issued directly by one.
    """
    if not chain:
        raise AttestationFailed("certificate chain is empty")
    roots = list(roots)
    for i, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationFailed(
                f"certificate chain: {cert.subject.rfc4514_string()} is not valid at "
                f"{now.isoformat()} (valid {cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()})"
            )
        if i + 1 < len(chain):
            issuer = chain[i + 1]
            _require_ca(issuer)
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise AttestationFailed(
                    f"certificate chain: {cert.subject.rfc4514_string()} is not signed by "
                    f"{issuer.subject.rfc4514_string()} ({type(exc).__name__})"
                ) from None
    top = chain[-1]
    for root in roots:
        if top == root:
            return root
    for root in roots:
        try:
            _require_ca(root)
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature, AttestationFailed):
            continue
        if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
            raise AttestationFailed("certificate chain: trusted root is not valid at that time")
        return root
    raise AttestationFailed("certificate chain does not end at a trusted root")


def _require_ca(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise AttestationFailed(
            f"certificate chain: issuer {cert.subject.rfc4514_string()} is not a CA"
        )


def pck_chain(quote: Quote, extra_pem: bytes | None = None) -> list[x509.Certificate]:
    """The PCK chain, leaf first: from the quote (type 5), else from `extra_pem`."""
    try:
        pems = quote.pck_chain_pem()
        if pems:
            return order_chain([x509.load_pem_x509_certificate(p) for p in pems])
        if quote.cert_type == 5 and quote.cert_data.strip(b"\x00"):
            ders = split_der_certificates(quote.cert_data)
            return order_chain([x509.load_der_x509_certificate(d) for d in ders])
        if extra_pem:
            return order_chain(list(x509.load_pem_x509_certificates(extra_pem)))
    except ValueError as exc:
        raise AttestationFailed(f"certificate chain could not be parsed: {exc}") from None
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


class _Checks:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.first_failure: str | None = None

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append(CheckResult(name, ok, detail))
        if not ok and self.first_failure is None:
            self.first_failure = detail
        return ok


def inspect_quote(
    quote: bytes | Quote,
    roots: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    collateral: dict[str, Any] | None = None,
    pck_chain_pem: bytes | None = None,
) -> tuple[list[CheckResult], VerifiedQuote | None]:
    """Run every check that can run; return the results and the verified quote (or None)."""
    when = _as_utc(now)
    checks = _Checks()
    try:
        q = quote if isinstance(quote, Quote) else parse_quote(quote)
    except AttestationFailed as exc:
        checks.add("parse", False, f"quote malformed: {exc.message}")
        return checks.results, None
    checks.add("parse", True, f"{q.tee.value} quote v{q.header.version}")

    chain: list[x509.Certificate] = []
    root: x509.Certificate | None = None
    try:
        chain = pck_chain(q, pck_chain_pem)
        root = verify_chain(chain, roots, when)
        checks.add("pck_chain", True, f"chain of {len(chain)} to {root.subject.rfc4514_string()}")
    except AttestationFailed as exc:
        checks.add("pck_chain", False, exc.message)

    if chain:
        pck_key = chain[0].public_key()
        ok = isinstance(pck_key, ec.EllipticCurvePublicKey) and _verify_raw(
            pck_key, q.qe_report_signature, q.qe_report.raw
        )
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
        ok = _verify_raw(ak, q.signature, q.signed)
        detail = "quote signed by the attestation key" if ok else "quote signature invalid"
    except ValueError:
        ok, detail = False, "quote signature invalid: attestation key is not a P-256 point"
    checks.add("quote_signature", ok, detail)

    tcb: TcbResult | None = None
    if collateral is not None and chain and checks.first_failure is None:
        try:
            tcb = evaluate_tcb(
                q, chain[0], collateral, roots, when, chain[1] if len(chain) > 1 else None
            )
            checks.add(
                "tcb",
                True,
                f"TCB status {tcb.status}"
                + (f", advisories {', '.join(tcb.advisory_ids)}" if tcb.advisory_ids else ""),
            )
        except AttestationFailed as exc:
            checks.add("tcb", False, exc.message)

    if checks.first_failure is not None or root is None:
        return checks.results, None
    return checks.results, VerifiedQuote(
        quote=q, root=root, chain=tuple(chain), checks=tuple(checks.results), tcb=tcb
    )


def verify_quote(
    quote: bytes | Quote,
    roots: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    collateral: dict[str, Any] | None = None,
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


# --- TCB collateral -----------------------------------------------------------------------


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _verify_signed_json(
    name: str,
    body: str,
    sig_hex: str,
    issuer_chain_pem: str,
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> dict[str, Any]:
    try:
        chain = list(x509.load_pem_x509_certificates(issuer_chain_pem.encode()))
    except ValueError as exc:
        raise AttestationFailed(f"{name} issuer chain could not be parsed: {exc}") from None
    try:
        verify_chain(chain, roots, now)
    except AttestationFailed as exc:
        raise AttestationFailed(f"{name} issuer {exc.message}") from None
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _verify_raw(
        key, bytes.fromhex(sig_hex), body.encode()
    ):
        raise AttestationFailed(f"{name} signature invalid")
    doc: dict[str, Any] = json.loads(body)
    issued, nxt = _parse_time(doc["issueDate"]), _parse_time(doc["nextUpdate"])
    if not issued <= now <= nxt:
        raise AttestationFailed(
            f"{name} is not current at {now.isoformat()} (issued {doc['issueDate']}, "
            f"next update {doc['nextUpdate']})"
        )
    return doc


def _check_crl(
    name: str, crl_hex: str, issuer: x509.Certificate, cert: x509.Certificate, now: datetime
) -> None:
    """`cert` is not revoked by a current CRL that `issuer` signed."""
    crl = x509.load_der_x509_crl(bytes.fromhex(crl_hex))
    if crl.issuer != cert.issuer or issuer.subject != cert.issuer:
        raise AttestationFailed(f"{name} is issued by another CA than the certificate's")
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise AttestationFailed(f"{name} signature invalid")
    nxt = crl.next_update_utc
    if now < crl.last_update_utc or (nxt is not None and now > nxt):
        raise AttestationFailed(f"{name} is not current at {now.isoformat()}")
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise AttestationFailed(
            f"certificate chain: certificate {cert.serial_number:x} is revoked ({name})"
        )


_QE_COMBINE = {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded"}


def evaluate_tcb(
    q: Quote,
    pck_cert: x509.Certificate,
    collateral: dict[str, Any],
    roots: Sequence[x509.Certificate],
    now: datetime,
    pck_intermediate: x509.Certificate | None = None,
) -> TcbResult:
    """The TCB status of the platform from signed Intel collateral, at time `now`."""
    tcb_info = _verify_signed_json(
        "TCB info",
        collateral["tcb_info"],
        collateral["tcb_info_signature"],
        collateral["tcb_info_issuer_chain"],
        roots,
        now,
    )
    qe_id = _verify_signed_json(
        "QE identity",
        collateral["qe_identity"],
        collateral["qe_identity_signature"],
        collateral["qe_identity_issuer_chain"],
        roots,
        now,
    )
    if "pck_crl" in collateral and "pck_crl_issuer_chain" in collateral:
        issuers = list(x509.load_pem_x509_certificates(collateral["pck_crl_issuer_chain"].encode()))
        try:
            verify_chain(issuers, roots, now)
        except AttestationFailed as exc:
            raise AttestationFailed(f"PCK CRL issuer {exc.message}") from None
        _check_crl("PCK CRL", collateral["pck_crl"], issuers[0], pck_cert, now)
    if "root_ca_crl" in collateral and pck_intermediate is not None:
        root = next(
            (r for r in roots if r.subject == pck_intermediate.issuer),
            None,
        )
        if root is not None:
            _check_crl("root CA CRL", collateral["root_ca_crl"], root, pck_intermediate, now)
    try:
        ext = sgx_extensions(pck_cert)
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise AttestationFailed(f"PCK certificate has no readable SGX extension: {exc}") from None
    tcb_ext = ext.get(f"{_SGX}.2")
    fmspc = ext.get(f"{_SGX}.4")
    if not isinstance(tcb_ext, dict) or not isinstance(fmspc, bytes):
        raise AttestationFailed("PCK certificate SGX extension lacks TCB or FMSPC")
    if fmspc.hex().upper() != str(tcb_info["fmspc"]).upper():
        raise AttestationFailed(
            f"TCB info is for FMSPC {tcb_info['fmspc']}, PCK certificate says {fmspc.hex()}"
        )
    comps = [int(tcb_ext[f"{_SGX}.2.{i}"]) for i in range(1, 17)]
    pcesvn = int(tcb_ext[f"{_SGX}.2.17"])

    tdx = isinstance(q.body, TdReport)
    tee_svn = q.body.tee_tcb_svn if isinstance(q.body, TdReport) else b""
    platform: dict[str, Any] | None = None
    for level in tcb_info["tcbLevels"]:
        t = level["tcb"]
        sgx_ok = all(
            comps[i] >= int(c["svn"]) for i, c in enumerate(t["sgxtcbcomponents"])
        ) and pcesvn >= int(t["pcesvn"])
        if not sgx_ok:
            continue
        if tdx:
            start = 2 if tee_svn[1] > 0 else 0
            tdx_comps = t.get("tdxtcbcomponents", [])
            if not all(
                tee_svn[i] >= int(tdx_comps[i]["svn"]) for i in range(start, len(tdx_comps))
            ):
                continue
        platform = level
        break
    if platform is None:
        raise AttestationFailed("TCB status: platform TCB is below every level (Revoked/unknown)")

    qe = q.qe_report
    if qe.mr_signer.hex().upper() != str(qe_id["mrsigner"]).upper() or qe.isv_prod_id != int(
        qe_id["isvprodid"]
    ):
        raise AttestationFailed("QE identity does not match the quoting enclave")
    qe_level = next(
        (lv for lv in qe_id["tcbLevels"] if qe.isv_svn >= int(lv["tcb"]["isvsvn"])), None
    )
    if qe_level is None:
        raise AttestationFailed("QE identity: quoting enclave TCB is revoked")
    qe_status = str(qe_level["tcbStatus"])
    status = str(platform["tcbStatus"])
    if tdx and tee_svn[1] > 0:
        mod_id = f"TDX_{tee_svn[1]:02d}"
        for ident in tcb_info.get("tdxModuleIdentities", []):
            if ident["id"] == mod_id:
                lv = next(
                    (x for x in ident["tcbLevels"] if tee_svn[0] >= int(x["tcb"]["isvsvn"])),
                    None,
                )
                if lv is None or lv["tcbStatus"] != "UpToDate":
                    status = "OutOfDate" if lv is not None else "Revoked"
    if qe_status == "OutOfDate" and status in _QE_COMBINE:
        status = "OutOfDate" if status == "UpToDate" else f"OutOfDate{status}"
    elif qe_status == "Revoked":
        status = "Revoked"
    advisories = list(platform.get("advisoryIDs", []))
    for a in qe_level.get("advisoryIDs", []):
        if a not in advisories:
            advisories.append(a)
    return TcbResult(
        status=status,
        advisory_ids=tuple(advisories),
        tcb_date=platform.get("tcbDate"),
        qe_status=qe_status,
        platform_status=str(platform["tcbStatus"]),
    )
