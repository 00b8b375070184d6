"""Parsing of Intel DCAP quotes: SGX ECDSA quote v3, TDX quote v4 and v5.

Parsing takes every length from the quote itself and checks nothing
cryptographic; `infaas.attestation.verify` does the checks. Layout (Intel QVL,
go-tdx-guest)::

    header (48) | report body (SGX 384, TDX 584 / 648) | u32 sig_len | signature data
    signature data = quote sig (64, r||s) | attestation key (64, raw P-256 x||y)
                     | v3: QE report (384) | QE report sig (64) | u16 auth len | auth
                     |     | u16 cert type | u32 cert len | cert data (type 5: PEM chain)
                     | v4/v5: u16 cert type (6) | u32 len | [QE report | QE sig | auth
                     |     | u16 cert type (5) | u32 len | PEM chain]

Bytes after the signature data are kept as `trailing` and never signed over.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum

from infaas.attestation._reader import FieldReader
from infaas.errors import AttestationFailed

HEADER_LEN = 48
SGX_REPORT_LEN = 384
TDX10_REPORT_LEN = 584
TDX15_REPORT_LEN = 648
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TeeType(StrEnum):
    SGX = "sgx"
    TDX = "tdx"


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX report body (384 bytes): the application enclave's, or the QE's."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def attribute_flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.attribute_flags & 0x2)

    @classmethod
    def parse(cls, raw: bytes) -> EnclaveReport:
        if len(raw) != SGX_REPORT_LEN:
            raise AttestationFailed(f"SGX report body must be 384 bytes, got {len(raw)}")
        return cls(
            raw=raw,
            cpu_svn=raw[0:16],
            misc_select=struct.unpack_from("<I", raw, 16)[0],
            attributes=raw[48:64],
            mr_enclave=raw[64:96],
            mr_signer=raw[128:160],
            isv_prod_id=struct.unpack_from("<H", raw, 256)[0],
            isv_svn=struct.unpack_from("<H", raw, 258)[0],
            report_data=raw[320:384],
        )


@dataclass(frozen=True)
class TdReport:
    """A TDX TD report body (584 bytes; 648 for TDX 1.5 in quote v5)."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & 0x1)

    @classmethod
    def parse(cls, raw: bytes) -> TdReport:
        if len(raw) not in (TDX10_REPORT_LEN, TDX15_REPORT_LEN):
            raise AttestationFailed(f"TD report body must be 584 or 648 bytes, got {len(raw)}")
        extra = len(raw) == TDX15_REPORT_LEN
        return cls(
            raw=raw,
            tee_tcb_svn=raw[0:16],
            mr_seam=raw[16:64],
            mr_signer_seam=raw[64:112],
            seam_attributes=raw[112:120],
            td_attributes=raw[120:128],
            xfam=raw[128:136],
            mr_td=raw[136:184],
            mr_config_id=raw[184:232],
            mr_owner=raw[232:280],
            mr_owner_config=raw[280:328],
            rtmrs=(raw[328:376], raw[376:424], raw[424:472], raw[472:520]),
            report_data=raw[520:584],
            tee_tcb_svn2=raw[584:600] if extra else None,
            mr_servicetd=raw[600:648] if extra else None,
        )


@dataclass(frozen=True)
class QuoteHeader:
    raw: bytes
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class Quote:
    """A parsed quote. `signed` = header || body is what the attestation key signed."""

    raw: bytes
    header: QuoteHeader
    body: EnclaveReport | TdReport
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes
    trailing: bytes
    # offsets of each region in `raw`, for diagnostics and tamper tests
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def tee(self) -> TeeType:
        return TeeType.TDX if isinstance(self.body, TdReport) else TeeType.SGX

    @property
    def measurement(self) -> bytes:
        """MRENCLAVE (SGX) or MRTD (TDX)."""
        return self.body.mr_enclave if isinstance(self.body, EnclaveReport) else self.body.mr_td

    @property
    def signer(self) -> bytes:
        """MRSIGNER (SGX) or MRSIGNERSEAM (TDX: the TDX module's signer)."""
        if isinstance(self.body, EnclaveReport):
            return self.body.mr_signer
        return self.body.mr_signer_seam

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @property
    def debug(self) -> bool:
        return self.body.debug

    @property
    def isv_svn(self) -> int | None:
        return self.body.isv_svn if isinstance(self.body, EnclaveReport) else None

    @property
    def tee_tcb_svn(self) -> bytes | None:
        return self.body.tee_tcb_svn if isinstance(self.body, TdReport) else None

    def pck_chain_pem(self) -> list[bytes]:
        """The PEM certificates of certification data type 5 (leaf first), if present."""
        if self.cert_type != CERT_TYPE_PCK_CHAIN:
            return []
        return _PEM_CERT.findall(self.cert_data)


def parse_quote(raw: bytes) -> Quote:
    """Parse an SGX v3 / TDX v4 / TDX v5 quote; raise AttestationFailed if malformed."""
    raw = bytes(raw)
    r = FieldReader(raw, "quote")
    hdr_raw = r.take(HEADER_LEN, "header")
    version, akt, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", hdr_raw, 0)
    header = QuoteHeader(
        raw=hdr_raw,
        version=version,
        att_key_type=akt,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=hdr_raw[12:28],
        user_data=hdr_raw[28:48],
    )
    if version not in (3, 4, 5):
        raise AttestationFailed(f"unsupported quote version {version} (need 3, 4 or 5)")
    if akt != ATT_KEY_ECDSA_P256:
        raise AttestationFailed(f"unsupported attestation key type {akt} (need 2, ECDSA-P256)")
    regions: dict[str, tuple[int, int]] = {"header": (0, HEADER_LEN)}
    body: EnclaveReport | TdReport
    body_start = r.pos
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise AttestationFailed(f"quote v3 must be SGX, tee type is {tee_type:#x}")
        body = EnclaveReport.parse(r.take(SGX_REPORT_LEN, "report body"))
    elif version == 4:
        if tee_type == TEE_TYPE_TDX:
            body = TdReport.parse(r.take(TDX10_REPORT_LEN, "TD report body"))
        elif tee_type == TEE_TYPE_SGX:
            body = EnclaveReport.parse(r.take(SGX_REPORT_LEN, "report body"))
        else:
            raise AttestationFailed(f"unknown tee type {tee_type:#x}")
    else:
        body_type = r.uint(2, "v5 body type")
        body_size = r.uint(4, "v5 body size")
        body_start = r.pos
        chunk = r.take(body_size, "v5 report body")
        if body_type == 1:
            body = EnclaveReport.parse(chunk)
        elif body_type in (2, 3):
            body = TdReport.parse(chunk)
        else:
            raise AttestationFailed(f"unknown quote v5 body type {body_type}")
    regions["body"] = (body_start, r.pos)
    signed = raw[: r.pos]
    sig_len = r.uint(4, "signature data length")
    sig_start = r.pos
    sig_data = r.take(sig_len, "signature data")
    trailing = raw[r.pos :]

    s = FieldReader(sig_data, "quote")
    base = sig_start
    signature = s.take(64, "quote signature")
    regions["signature"] = (base, base + 64)
    attestation_key = s.take(64, "attestation key")
    regions["attestation_key"] = (base + 64, base + 128)
    cert_type: int
    if version == 3:
        inner, inner_base = s, base
    else:
        outer_type = s.uint(2, "certification data type")
        outer_len = s.uint(4, "certification data length")
        if outer_type != CERT_TYPE_QE_REPORT:
            raise AttestationFailed(
                f"quote v{version} needs certification data type 6, got {outer_type}"
            )
        inner_base = base + s.pos
        inner = s.sub(outer_len, "QE report certification data")
    qe_start = inner_base + inner.pos
    qe_report = EnclaveReport.parse(inner.take(SGX_REPORT_LEN, "QE report"))
    regions["qe_report"] = (qe_start, qe_start + SGX_REPORT_LEN)
    qe_sig = inner.take(64, "QE report signature")
    regions["qe_report_signature"] = (qe_start + SGX_REPORT_LEN, qe_start + SGX_REPORT_LEN + 64)
    auth_len = inner.uint(2, "QE authentication data length")
    auth_start = inner_base + inner.pos
    qe_auth = inner.take(auth_len, "QE authentication data")
    regions["qe_auth_data"] = (auth_start, auth_start + auth_len)
    cert_type = inner.uint(2, "certification data type")
    cert_len = inner.uint(4, "certification data length")
    cert_start = inner_base + inner.pos
    cert_data = inner.take(cert_len, "certification data")
    regions["cert_chain"] = (cert_start, cert_start + cert_len)
    return Quote(
        raw=raw,
        header=header,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=qe_auth,
        cert_type=cert_type,
        cert_data=cert_data,
        trailing=trailing,
        regions=regions,
    )
