"""AMD SEV-SNP attestation reports: parsing (report versions 2 and 3) and verification.

Layout (AMD SEV-SNP ABI specification, ATTESTATION_REPORT; all integers little-endian)::

    0x000 version u32 | guest_svn u32 | policy u64 | family_id 16 | image_id 16
    0x030 vmpl u32 | signature_algo u32 | current_tcb u64 | platform_info u64
    0x048 signer info u32 (bit 0 author key, bit 1 chip id masked, bits 2-4 signing key)
    0x050 report_data 64 | 0x090 measurement 48 | 0x0C0 host_data 32
    0x0E0 id_key_digest 48 | 0x110 author_key_digest 48 | 0x140 report_id 32
    0x160 report_id_ma 32 | 0x180 reported_tcb u64 | 0x188 (v3) cpuid family, model, stepping
    0x1A0 chip_id 64 | 0x1E0 committed_tcb u64 | 0x1E8 current build/minor/major
    0x1EC committed build/minor/major | 0x1F0 launch_tcb u64
    0x2A0 signature: r (72, little-endian) | s (72, little-endian) | reserved; total 0x4A0

The signed region is bytes 0x000-0x29F, signed with ECDSA P-384 / SHA-384 by the
chip's VCEK (or the cloud provider's VLEK). The VCEK is certified by AMD's ASK
(the VLEK by the ASVK), which the ARK of the product line certifies; every link
is RSA-PSS with SHA-384, which `cryptography`'s X.509 path validation does not
accept, so `verify_amd_chain` checks each link itself. ARKs are pinned by
SHA-256 fingerprint per product line.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from infaas.attestation.chain import CERT_ERRORS
from infaas.attestation.evidence import CheckResult, RootedEvidence, is_simulated_root
from infaas.errors import AttestationFailed

REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1

POLICY_SMT = 1 << 16
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

PINNED_ARKS: Mapping[str, str] = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
}
"""SHA-256 fingerprints of AMD's self-signed ARKs (AMD KDS `/vcek/v1/{product}/cert_chain`)."""

_AMD_OID = "1.3.6.1.4.1.3704.1"
_OID_PRODUCT = x509.ObjectIdentifier(f"{_AMD_OID}.2")
_OID_HWID = x509.ObjectIdentifier(f"{_AMD_OID}.4")
_OID_TCB = {
    "bootloader": x509.ObjectIdentifier(f"{_AMD_OID}.3.1"),
    "tee": x509.ObjectIdentifier(f"{_AMD_OID}.3.2"),
    "snp": x509.ObjectIdentifier(f"{_AMD_OID}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{_AMD_OID}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{_AMD_OID}.3.9"),
}
_TURIN_FAMILY = 0x1A


@dataclass(frozen=True)
class SnpTcb:
    """A TCB_VERSION: security patch levels of the firmware components."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def parse(cls, value: int, *, turin: bool = False) -> SnpTcb:
        b = value.to_bytes(8, "little")
        if turin:  # Turin: FMC, boot loader, TEE, SNP, reserved x3, microcode
            return cls(value, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(value, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp}
        out["microcode"] = self.microcode
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def at_least(self, other: SnpTcb) -> bool:
        mine = self.components()
        return all(mine.get(k, 0) >= v for k, v in other.components().items())


@dataclass(frozen=True)
class SnpReport:
    """A parsed ATTESTATION_REPORT; `signed` is what the VCEK/VLEK signed."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: SnpTcb
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: SnpTcb
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb: SnpTcb
    launch_tcb: SnpTcb
    signature_r: int
    signature_s: int
    trailing: bytes = b""
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def signed(self) -> bytes:
        return self.raw[:SIGNED_LEN]

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migration_agent(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & POLICY_SMT)

    @property
    def signing_key(self) -> str:
        return {0: "vcek", 1: "vlek", 7: "none"}.get((self.signer_info >> 2) & 0x7, "reserved")

    @property
    def chip_id_masked(self) -> bool:
        return bool(self.signer_info & 0x2)

    def summary(self) -> dict[str, Any]:
        return {
            "tee": "snp",
            "version": self.version,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "host_data": self.host_data.hex(),
            "guest_policy": hex(self.policy),
            "debug": self.debug,
            "migration_agent": self.migration_agent,
            "smt_allowed": self.smt_allowed,
            "vmpl": self.vmpl,
            "guest_svn": self.guest_svn,
            "signing_key": self.signing_key,
            "reported_tcb": self.reported_tcb.components(),
            "current_tcb": self.current_tcb.components(),
            "chip_id": self.chip_id.hex(),
            "id_key_digest": self.id_key_digest.hex(),
        }


def parse_snp_report(raw: bytes) -> SnpReport:
    """Parse a version 2 or 3 report (bytes after 0x4A0 are kept as `trailing`, unsigned)."""
    raw = bytes(raw)
    if len(raw) < REPORT_LEN:
        raise AttestationFailed(f"SEV-SNP report truncated: {len(raw)} bytes, need {REPORT_LEN}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version not in (2, 3):
        raise AttestationFailed(f"unsupported SEV-SNP report version {version} (need 2 or 3)")
    vmpl, sig_algo, current_tcb, platform_info, signer_info = struct.unpack_from(
        "<IIQQI", raw, 0x30
    )
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise AttestationFailed(f"unsupported SEV-SNP signature algorithm {sig_algo}")
    if any(raw[0x330:REPORT_LEN]):
        # unsigned: accepting anything there would let a copy differ from what was signed
        raise AttestationFailed("SEV-SNP report: reserved signature bytes are not zero")
    cpuid = (raw[0x188], raw[0x189], raw[0x18A]) if version >= 3 else None
    turin = cpuid is not None and cpuid[0] == _TURIN_FAMILY
    tcb = struct.unpack_from("<Q", raw, 0x180)[0]
    return SnpReport(
        raw=raw[:REPORT_LEN],
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=SnpTcb.parse(current_tcb, turin=turin),
        platform_info=platform_info,
        signer_info=signer_info,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=SnpTcb.parse(tcb, turin=turin),
        cpuid=cpuid,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=SnpTcb.parse(struct.unpack_from("<Q", raw, 0x1E0)[0], turin=turin),
        launch_tcb=SnpTcb.parse(struct.unpack_from("<Q", raw, 0x1F0)[0], turin=turin),
        signature_r=int.from_bytes(raw[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(raw[0x2E8:0x330], "little"),
        trailing=raw[REPORT_LEN:],
        regions={
            "header": (0x00, 0x50),
            "report_data": (0x50, 0x90),
            "measurement": (0x90, 0xC0),
            "identity": (0xC0, 0x180),
            "tcb_chip": (0x180, 0x2A0),
            "signature": (0x2A0, 0x330),
        },
    )


def load_vcek(data: bytes) -> x509.Certificate:
    """A VCEK/VLEK certificate (DER as AMD's KDS serves it, or PEM).

    AMD issues VCEKs with serial number 0, which RFC 5280 forbids and `cryptography`
    warns about (CryptographyDeprecationWarning) on load; the warning is silenced
    only here, for this certificate, because that is how every genuine VCEK is.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Parsed a serial number which wasn't positive",
            category=CryptographyDeprecationWarning,
        )
        try:
            if b"-----BEGIN" in data:
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except CERT_ERRORS as exc:
            raise AttestationFailed(f"VCEK certificate could not be parsed: {exc}") from None


def _check_pss_link(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """`cert` is signed by `issuer` with RSA-PSS, SHA-384, MGF1-SHA-384, salt 48 (AMD's)."""
    params = cert.signature_algorithm_parameters
    h = cert.signature_hash_algorithm
    if (
        not isinstance(params, padding.PSS)
        or not isinstance(h, hashes.SHA384)
        or not isinstance(params.mgf, padding.MGF1)
        or params._salt_length != 48
    ):
        raise AttestationFailed(f"{what}: not signed with RSA-PSS SHA-384 (salt 48)")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationFailed(f"{what}: issuer key is not RSA")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, params, h)
    except InvalidSignature:
        raise AttestationFailed(f"{what}: signature invalid") from None
    if cert.issuer != issuer.subject:
        raise AttestationFailed(f"{what}: issuer name does not match")


def _valid_at(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationFailed(f"{what}: not valid at {now.isoformat()}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class VerifiedSnpReport(RootedEvidence):
    """A report whose signature and AMD chain verified."""

    report: SnpReport
    vcek: x509.Certificate
    ask: x509.Certificate
    ark: x509.Certificate
    product: str
    checks: tuple[CheckResult, ...]

    @property
    def root(self) -> x509.Certificate:
        return self.ark

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def debug(self) -> bool:
        return self.report.debug

    def summary(self) -> dict[str, Any]:
        return self.report.summary() | {
            "product": self.product,
            "root_sha256": self.root_fingerprint,
            "simulated": self.simulated,
        }


def _product(ark: x509.Certificate) -> str:
    cn = ark.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else ""
    return name.removeprefix("ARK-")


def verify_amd_chain(
    vcek: x509.Certificate,
    ask_ark: Sequence[x509.Certificate],
    now: datetime,
    pinned_arks: Mapping[str, str] | Sequence[str] = PINNED_ARKS,
) -> tuple[x509.Certificate, x509.Certificate, str]:
    """VCEK/VLEK ← ASK/ASVK ← ARK (self-signed, pinned); return (ask, ark, product line)."""
    certs = list(ask_ark)
    ark = next((c for c in certs if c.subject == c.issuer), None)
    ask = next((c for c in certs if c.subject != c.issuer), None)
    if ark is None or ask is None:
        raise AttestationFailed("AMD chain: need the ASK (or ASVK) and the ARK")
    fp = ark.fingerprint(hashes.SHA256()).hex()
    pins = set(pinned_arks.values() if isinstance(pinned_arks, Mapping) else pinned_arks)
    if fp not in pins and not is_simulated_root(ark):
        raise AttestationFailed(f"AMD chain: ARK {fp} is not a pinned AMD root")
    if is_simulated_root(ark) and fp not in pins:
        raise AttestationFailed("AMD chain: simulated ARK is not trusted here")
    product = _product(ark)
    if isinstance(pinned_arks, Mapping) and pinned_arks.get(product, fp) != fp:
        raise AttestationFailed(f"AMD chain: ARK is not the pinned root for {product}")
    _check_pss_link(ark, ark, "ARK (self-signed)")
    _valid_at(ark, now, "ARK")
    _check_pss_link(ask, ark, "ASK/ASVK ← ARK")
    _valid_at(ask, now, "ASK/ASVK")
    if not _is_ca(ark) or not _is_ca(ask):
        raise AttestationFailed("AMD chain: ARK and ASK must be CA certificates")
    _check_pss_link(vcek, ask, "VCEK/VLEK ← ASK/ASVK")
    _valid_at(vcek, now, "VCEK/VLEK")
    return ask, ark, product


def _vcek_tcb(vcek: x509.Certificate) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, oid in _OID_TCB.items():
        try:
            ext = vcek.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if not isinstance(ext, x509.UnrecognizedExtension):
            continue
        v = ext.value
        # DER INTEGER: 02 len value (AMD's SPLs are single-byte or two-byte integers)
        if len(v) < 3 or v[0] != 0x02 or v[1] != len(v) - 2:
            raise AttestationFailed(f"VCEK {name} SPL extension is malformed")
        out[name] = int.from_bytes(v[2:], "big")
    return out


def _vcek_hwid(vcek: x509.Certificate) -> bytes | None:
    try:
        ext = vcek.extensions.get_extension_for_oid(_OID_HWID).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext, x509.UnrecognizedExtension):
        return None
    v = ext.value
    # either the raw 64 bytes or a DER OCTET STRING around them
    if len(v) == 66 and v[:2] == b"\x04\x40":
        return v[2:]
    return v


def _check_binding(report: SnpReport, vcek: x509.Certificate, ask: x509.Certificate) -> str:
    """The certificate is this chip's (VCEK: hwID = CHIP_ID) at this TCB (SPLs = REPORTED_TCB)."""
    ask_cn = ask.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    asvk = bool(ask_cn) and str(ask_cn[0].value).startswith("SEV-VLEK")
    if report.signing_key == "vlek" and not asvk:
        raise AttestationFailed("report is VLEK-signed but the chain is not the ASVK's")
    if report.signing_key == "vcek" and asvk:
        raise AttestationFailed("report is VCEK-signed but the chain is the ASVK's")
    if report.signing_key not in ("vcek", "vlek"):
        raise AttestationFailed(f"report signing key is {report.signing_key}")
    tcb = _vcek_tcb(vcek)
    want = report.reported_tcb.components()
    for name, value in tcb.items():
        if want.get(name, value) != value:
            raise AttestationFailed(
                f"certificate {name} SPL {value} differs from the report's REPORTED_TCB "
                f"{want.get(name)}"
            )
    if report.signing_key == "vcek" and not report.chip_id_masked:
        hwid = _vcek_hwid(vcek)
        if hwid is None or hwid != report.chip_id:
            raise AttestationFailed("VCEK hwID is not the report's CHIP_ID")
    return f"{report.signing_key.upper()} certifies this chip at REPORTED_TCB {want}"


def inspect_snp_report(
    raw: bytes,
    vcek_data: bytes | x509.Certificate | None,
    ask_ark: Sequence[x509.Certificate],
    *,
    now: datetime,
    pinned_arks: Mapping[str, str] | Sequence[str] = PINNED_ARKS,
) -> tuple[list[CheckResult], VerifiedSnpReport | None]:
    """Run every check that can run; return the results and the verified report (or None)."""
    checks: list[CheckResult] = []
    try:
        report = parse_snp_report(raw)
    except AttestationFailed as exc:
        return [CheckResult("parse", False, f"report malformed: {exc.message}")], None
    checks.append(CheckResult("parse", True, f"SEV-SNP report v{report.version}"))
    if vcek_data is None:
        checks.append(CheckResult("amd_chain", False, "no VCEK/VLEK certificate supplied"))
        return checks, None
    try:
        vcek = vcek_data if isinstance(vcek_data, x509.Certificate) else load_vcek(vcek_data)
        ask, ark, product = verify_amd_chain(vcek, ask_ark, now, pinned_arks)
        checks.append(CheckResult("amd_chain", True, f"VCEK/VLEK ← ASK ← ARK-{product}"))
    except AttestationFailed as exc:
        checks.append(CheckResult("amd_chain", False, exc.message))
        return checks, None
    except CERT_ERRORS as exc:
        checks.append(CheckResult("amd_chain", False, f"AMD chain malformed: {exc}"))
        return checks, None
    try:
        checks.append(CheckResult("vcek_binding", True, _check_binding(report, vcek, ask)))
    except AttestationFailed as exc:
        checks.append(CheckResult("vcek_binding", False, exc.message))
    except CERT_ERRORS as exc:
        checks.append(CheckResult("vcek_binding", False, f"VCEK extensions malformed: {exc}"))
    ok = _verify_report_signature(vcek, report)
    checks.append(
        CheckResult(
            "report_signature",
            ok,
            "report signed by the VCEK/VLEK (ECDSA P-384)" if ok else "report signature invalid",
        )
    )
    if not all(c.ok for c in checks):
        return checks, None
    return checks, VerifiedSnpReport(report, vcek, ask, ark, product, tuple(checks))


def _verify_report_signature(vcek: x509.Certificate, report: SnpReport) -> bool:
    try:
        key = vcek.public_key()
    except CERT_ERRORS:
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return False
    if not (0 < report.signature_r < 1 << 384 and 0 < report.signature_s < 1 << 384):
        return False
    try:
        key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        return False
    return True


def verify_snp_report(
    raw: bytes,
    vcek_data: bytes | x509.Certificate | None,
    ask_ark: Sequence[x509.Certificate],
    *,
    now: datetime,
    pinned_arks: Mapping[str, str] | Sequence[str] = PINNED_ARKS,
) -> VerifiedSnpReport:
    """Verify a report; raise AttestationFailed naming the first failed check."""
    checks, verified = inspect_snp_report(raw, vcek_data, ask_ark, now=now, pinned_arks=pinned_arks)
    if verified is None:
        failed = next(c for c in checks if not c.ok)
        raise AttestationFailed(failed.detail, check=failed.name)
    return verified
