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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from infaas.attestation._sgx_extension import SgxPckExtension, sgx_extension
from infaas.attestation.chain import CERT_ERRORS, split_der_certificates, verify_chain
from infaas.attestation.quote import Quote, TdReport, parse_quote
from infaas.errors import AttestationFailed

SIMULATED_MARKER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
"""Extension carried by every simulated platform CA: evidence under it is not confidential."""


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
    fmspc: str = ""
    tcb_evaluation_data_number: int | None = None


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signatures and chain verified, with what a policy needs to judge it."""

    quote: Quote
    root: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    checks: tuple[CheckResult, ...]
    tcb: TcbResult | None = None
    pck: SgxPckExtension | None = None

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


class _Checks:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.first_failure: str | None = None

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append(CheckResult(name, ok, detail))
        if not ok and self.first_failure is None:
            self.first_failure = detail
        return ok


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
    checks = _Checks()
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
        ok = _verify_raw(pck_key, q.qe_report_signature, q.qe_report.raw)
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


# --- TCB collateral -----------------------------------------------------------------------
#
# Intel's appraisal (QVL / QvE): the TCB info and QE identity are signed by Intel's
# TCB signing key (chained to the root) and current at `now`; the PCK certificate and
# its CA are not revoked by current CRLs; the quoting enclave is the one Intel names
# (MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their masks; without this a
# host-launched enclave holding the provisioning key could pose as the QE); the TCB
# level is the first one the PCK certificate's SVNs (and for TDX the TEE TCB SVN)
# reach, combined with the QE's level.


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def collateral_entries(collateral: Any) -> list[dict[str, Any]]:
    """One collateral or a bundle of them, as a list."""
    if isinstance(collateral, dict) and "collaterals" in collateral:
        collateral = collateral["collaterals"]
    if isinstance(collateral, dict):
        return [collateral]
    if isinstance(collateral, list) and all(isinstance(c, dict) for c in collateral):
        return list(collateral)
    raise AttestationFailed("collateral must be an object, a list, or {'collaterals': [...]}")


def select_collateral(collateral: Any, fmspc: bytes, tee: str) -> dict[str, Any]:
    """The bundle's collateral for this FMSPC and TEE (SGX / TDX)."""
    want_id = "TDX" if tee == "tdx" else "SGX"
    for entry in collateral_entries(collateral):
        try:
            info = json.loads(entry["tcb_info"])
            if str(info["fmspc"]).upper() == fmspc.hex().upper() and info.get("id", "SGX") == (
                want_id
            ):
                return entry
        except (KeyError, TypeError, ValueError):
            continue
    raise AttestationFailed(f"no collateral for FMSPC {fmspc.hex()} ({want_id}) in the bundle")


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
    verify_chain(chain, roots, now, what=f"{name} issuer chain")
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


def _step(checks: _Checks, name: str, fn: Any) -> Any:
    """Run one collateral step; a malformed document fails the step, never escapes."""
    try:
        out = fn()
    except AttestationFailed as exc:
        checks.add(name, False, exc.message)
        return None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        checks.add(name, False, f"{name}: collateral malformed ({type(exc).__name__}: {exc})")
        return None
    return out


def _masked_eq(value: bytes, want_hex: str, mask_hex: str) -> bool:
    want, mask = bytes.fromhex(want_hex), bytes.fromhex(mask_hex)
    if len(want) != len(mask) or len(value) < len(mask):
        return False
    return all((v & m) == (w & m) for v, w, m in zip(value, want, mask, strict=False))


_QE_COMBINE = {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded"}


def evaluate_collateral(
    q: Quote,
    chain: Sequence[x509.Certificate],
    pck: SgxPckExtension,
    collateral: Any,
    roots: Sequence[x509.Certificate],
    now: datetime,
    checks: _Checks,
) -> TcbResult | None:
    """Run the collateral checks into `checks`; the TCB result, or None if one failed."""
    entry = _step(checks, "collateral", lambda: select_collateral(collateral, pck.fmspc, q.tee))
    if entry is None:
        return None
    tcb_info = _step(
        checks,
        "tcb_info",
        lambda: _verify_signed_json(
            "TCB info",
            entry["tcb_info"],
            entry["tcb_info_signature"],
            entry["tcb_info_issuer_chain"],
            roots,
            now,
        ),
    )
    if tcb_info is None:
        return None
    checks.add("tcb_info", True, f"TCB info signed, current, for FMSPC {tcb_info['fmspc']}")
    qe_id = _step(
        checks,
        "qe_identity_collateral",
        lambda: _verify_signed_json(
            "QE identity",
            entry["qe_identity"],
            entry["qe_identity_signature"],
            entry["qe_identity_issuer_chain"],
            roots,
            now,
        ),
    )
    if qe_id is None:
        return None
    checks.add("qe_identity_collateral", True, f"QE identity {qe_id.get('id')} signed, current")
    if _step(checks, "crl", lambda: _check_crls(entry, chain, roots, now)) is None:
        return None
    checks.add("crl", True, "no certificate of the chain is revoked by current CRLs")
    qe_level = _step(checks, "qe_identity", lambda: _match_qe_identity(q, qe_id))
    if qe_level is None:
        return None
    checks.add("qe_identity", True, f"quoting enclave matches Intel's {qe_id.get('id')} identity")
    result = _step(checks, "tcb_level", lambda: _tcb_level(q, pck, tcb_info, qe_level))
    if result is None:
        return None
    checks.add(
        "tcb_level",
        True,
        f"TCB status {result.status}"
        + (f", advisories {', '.join(result.advisory_ids)}" if result.advisory_ids else ""),
    )
    return result  # type: ignore[no-any-return]


def _check_crls(
    entry: dict[str, Any],
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> bool:
    if "pck_crl" not in entry or "pck_crl_issuer_chain" not in entry:
        raise AttestationFailed("collateral has no PCK CRL")
    issuers = list(x509.load_pem_x509_certificates(entry["pck_crl_issuer_chain"].encode()))
    verify_chain(issuers, roots, now, leaf_usage="crl_sign", what="PCK CRL issuer chain")
    _check_crl("PCK CRL", entry["pck_crl"], issuers[0], chain[0], now)
    if "root_ca_crl" in entry:
        for cert in chain[1:]:
            root = next((r for r in roots if r.subject == cert.issuer), None)
            if root is not None and cert not in roots:
                _check_crl("root CA CRL", entry["root_ca_crl"], root, cert, now)
    return True


def _match_qe_identity(q: Quote, qe_id: dict[str, Any]) -> dict[str, Any]:
    qe = q.qe_report
    if qe.mr_signer.hex().upper() != str(qe_id["mrsigner"]).upper():
        raise AttestationFailed("QE identity: MRSIGNER is not the quoting enclave's signer")
    if qe.isv_prod_id != int(qe_id["isvprodid"]):
        raise AttestationFailed("QE identity: ISVPRODID does not match")
    if "miscselect" in qe_id and (qe.misc_select & int(qe_id["miscselectMask"], 16)) != (
        int(qe_id["miscselect"], 16) & int(qe_id["miscselectMask"], 16)
    ):
        raise AttestationFailed("QE identity: MISCSELECT does not match under its mask")
    if "attributes" in qe_id and not _masked_eq(
        qe.attributes, qe_id["attributes"], qe_id["attributesMask"]
    ):
        raise AttestationFailed("QE identity: ATTRIBUTES do not match under their mask")
    level = next((lv for lv in qe_id["tcbLevels"] if qe.isv_svn >= int(lv["tcb"]["isvsvn"])), None)
    if level is None:
        raise AttestationFailed("QE identity: quoting enclave ISVSVN is below every level")
    if level["tcbStatus"] == "Revoked":
        raise AttestationFailed("QE identity: quoting enclave TCB is revoked")
    return level  # type: ignore[no-any-return]


def _tcb_level(
    q: Quote, pck: SgxPckExtension, tcb_info: dict[str, Any], qe_level: dict[str, Any]
) -> TcbResult:
    if str(tcb_info["fmspc"]).upper() != pck.fmspc.hex().upper():
        raise AttestationFailed(
            f"TCB info is for FMSPC {tcb_info['fmspc']}, PCK certificate says {pck.fmspc.hex()}"
        )
    if "pceId" in tcb_info and str(tcb_info["pceId"]).upper() != pck.pce_id.hex().upper():
        raise AttestationFailed("TCB info is for another PCE ID than the PCK certificate's")
    td = q.body if isinstance(q.body, TdReport) else None
    tee_svn = td.tee_tcb_svn if td is not None else b""
    if td is not None:
        _check_tdx_module(td, tcb_info)
    platform: dict[str, Any] | None = None
    for level in tcb_info["tcbLevels"]:
        t = level["tcb"]
        sgx_ok = all(
            pck.tcb_components[i] >= int(c["svn"]) for i, c in enumerate(t["sgxtcbcomponents"])
        ) and pck.pce_svn >= int(t["pcesvn"])
        if not sgx_ok:
            continue
        if td is not None:
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
    qe_status = str(qe_level["tcbStatus"])
    status = str(platform["tcbStatus"])
    if status == "Revoked":
        raise AttestationFailed("TCB status: platform TCB is Revoked")
    if td is not None and tee_svn[1] > 0:
        mod_id = f"TDX_{tee_svn[1]:02d}"
        for ident in tcb_info.get("tdxModuleIdentities", []):
            if ident["id"] == mod_id:
                lv = next(
                    (x for x in ident["tcbLevels"] if tee_svn[0] >= int(x["tcb"]["isvsvn"])),
                    None,
                )
                if lv is None or lv["tcbStatus"] == "Revoked":
                    raise AttestationFailed(f"TCB status: TDX module {mod_id} is Revoked")
                if lv["tcbStatus"] != "UpToDate" and status == "UpToDate":
                    status = str(lv["tcbStatus"])
    if qe_status == "OutOfDate" and status in _QE_COMBINE:
        status = "OutOfDate" if status == "UpToDate" else f"OutOfDate{status}"
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
        fmspc=pck.fmspc.hex(),
        tcb_evaluation_data_number=tcb_info.get("tcbEvaluationDataNumber"),
    )


def _check_tdx_module(td: TdReport, tcb_info: dict[str, Any]) -> None:
    """MRSIGNERSEAM and SEAMATTRIBUTES are the TDX module's Intel names (QVL's check)."""
    module = tcb_info.get("tdxModule")
    if tcb_info.get("id") == "TDX" and module is None:
        raise AttestationFailed("TCB info for TDX lacks the TDX module identity")
    if module is None:
        return
    mod_id = f"TDX_{td.tee_tcb_svn[1]:02d}"
    ident = next((i for i in tcb_info.get("tdxModuleIdentities", []) if i["id"] == mod_id), module)
    if td.mr_signer_seam.hex().upper() != str(ident["mrsigner"]).upper():
        raise AttestationFailed("TDX module: MRSIGNERSEAM is not Intel's TDX module signer")
    if not _masked_eq(td.seam_attributes, ident["attributes"], ident["attributesMask"]):
        raise AttestationFailed("TDX module: SEAMATTRIBUTES do not match under their mask")
