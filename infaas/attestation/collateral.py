"""TCB collateral: Intel's appraisal of a verified quote's platform and quoting enclave.

Intel's appraisal (QVL / QvE), over Intel PCS collateral (JSON: TCB info, QE
identity, CRLs and their issuer chains): the TCB info and QE identity are signed
by Intel's TCB signing key (chained to the trusted roots) and current at `now`;
the PCK certificate and its CA are not revoked by current CRLs; the quoting
enclave is the one Intel names (MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES
under their masks; without this a host-launched enclave holding the provisioning
key could pose as the QE); the TCB level is the first one the PCK certificate's
SVNs (and for TDX the TEE TCB SVN) reach, combined with the QE's level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from infaas.attestation._sgx_extension import SgxPckExtension
from infaas.attestation.chain import verify_chain
from infaas.attestation.evidence import Checks, verify_raw
from infaas.attestation.quote import Quote, TdReport
from infaas.errors import AttestationFailed

T = TypeVar("T")


@dataclass(frozen=True)
class TcbResult:
    """The TCB level a quote's platform and quoting enclave reach, as Intel's collateral says."""

    status: str
    advisory_ids: tuple[str, ...]
    tcb_date: str | None
    qe_status: str
    platform_status: str
    fmspc: str = ""
    tcb_evaluation_data_number: int | None = None


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
    entry: dict[str, Any],
    field: str,
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> dict[str, Any]:
    """The collateral's document `field`, verified by its `_signature` and `_issuer_chain`."""
    body: str = entry[field]
    sig_hex: str = entry[f"{field}_signature"]
    issuer_chain_pem: str = entry[f"{field}_issuer_chain"]
    try:
        chain = list(x509.load_pem_x509_certificates(issuer_chain_pem.encode()))
    except ValueError as exc:
        raise AttestationFailed(f"{name} issuer chain could not be parsed: {exc}") from None
    verify_chain(chain, roots, now, what=f"{name} issuer chain")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not verify_raw(
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


class _StepFailed(Exception):
    """A collateral step failed; its check is recorded already."""


def _step(
    checks: Checks, name: str, fn: Callable[[], T], passed: Callable[[T], str] | None = None
) -> T:
    """Run one collateral step; a malformed document fails the step, never escapes.

    When it succeeds and `passed` is given, the step is recorded with `passed`'s detail.
    """
    try:
        out = fn()
    except AttestationFailed as exc:
        checks.add(name, False, exc.message)
        raise _StepFailed from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        checks.add(name, False, f"{name}: collateral malformed ({type(exc).__name__}: {exc})")
        raise _StepFailed from None
    if passed is not None:
        checks.add(name, True, passed(out))
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
    checks: Checks,
) -> TcbResult | None:
    """Run the collateral checks into `checks`; the TCB result, or None if one failed."""
    try:
        entry = _step(checks, "collateral", lambda: select_collateral(collateral, pck.fmspc, q.tee))
        tcb_info = _step(
            checks,
            "tcb_info",
            lambda: _verify_signed_json("TCB info", entry, "tcb_info", roots, now),
            lambda doc: f"TCB info signed, current, for FMSPC {doc['fmspc']}",
        )
        qe_id = _step(
            checks,
            "qe_identity_collateral",
            lambda: _verify_signed_json("QE identity", entry, "qe_identity", roots, now),
            lambda doc: f"QE identity {doc.get('id')} signed, current",
        )
        _step(
            checks,
            "crl",
            lambda: _check_crls(entry, chain, roots, now),
            lambda _: "no certificate of the chain is revoked by current CRLs",
        )
        qe_level = _step(
            checks,
            "qe_identity",
            lambda: _match_qe_identity(q, qe_id),
            lambda _: f"quoting enclave matches Intel's {qe_id.get('id')} identity",
        )
        return _step(
            checks,
            "tcb_level",
            lambda: _tcb_level(q, pck, tcb_info, qe_level),
            lambda r: (
                f"TCB status {r.status}"
                + (f", advisories {', '.join(r.advisory_ids)}" if r.advisory_ids else "")
            ),
        )
    except _StepFailed:
        return None


def _check_crls(
    entry: dict[str, Any],
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> None:
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
