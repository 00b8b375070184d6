"""NVIDIA Hopper confidential-computing GPU evidence: SPDM GET_MEASUREMENTS, verified.

The report is the SPDM 1.1 GET_MEASUREMENTS request followed by its MEASUREMENTS
response (DMTF DSP0274)::

    request  = version 0x11 | code 0xE0 | param1 (bit 0: signature wanted) | param2 (0xFF:
               all) | nonce (32) | slot id (1)                                   = 37 bytes
    response = version | code 0x60 | param1 | param2 (slot) | number of blocks (1)
               | record length (u24) | record | nonce (32) | opaque length (u16)
               | opaque data | signature (96: ECDSA P-384 r || s, big-endian)
    block    = index (1) | spec (1, bit 0 = DMTF) | size (u16)
               | DMTF value type (1) | value size (u16) | value

The signature is over SHA-384(request || response without its signature), by
the key of the GPU's leaf certificate (GSP FMC), whose chain ends at NVIDIA's
Device Identity CA (pinned). Checked here: the structure, the signature, the
chain (with `cryptography`'s path validation), the nonce binding and the
measurement values against recorded reference values. Not checked: NVIDIA's
reference integrity manifests (RIMs) and OCSP revocation of the device
certificates, both online services at NVIDIA that this verifier does not
reach; a policy's reference values stand in for the RIMs.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from infaas.attestation._reader import FieldReader
from infaas.attestation.chain import CERT_ERRORS, verify_chain
from infaas.attestation.evidence import CheckResult, RootedEvidence, verify_raw
from infaas.errors import AttestationFailed

NVIDIA_DEVICE_IDENTITY_ROOT_SHA256 = (
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
)
"""SHA-256 fingerprint of NVIDIA's Device Identity CA (the root of every GPU's chain)."""

SPDM_GET_MEASUREMENTS = 0xE0
SPDM_MEASUREMENTS = 0x60
REQUEST_LEN = 37
NONCE_LEN = 32
SIGNATURE_LEN = 96
_HEX = re.compile(rb"^[0-9a-fA-F\s]+$")


@dataclass(frozen=True)
class MeasurementBlock:
    index: int
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    """A parsed GET_MEASUREMENTS request + MEASUREMENTS response."""

    raw: bytes
    request: bytes
    version: int
    request_nonce: bytes
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: bytes
    signature: bytes
    signed: bytes
    trailing: bytes = b""
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def measurements(self) -> dict[int, bytes]:
        return {b.index: b.value for b in self.blocks}

    @property
    def measurement(self) -> bytes:
        """SHA-384 over the measurement blocks in order: one digest a policy can list."""
        h = hashlib.sha384()
        for b in self.blocks:
            h.update(struct.pack("<BH", b.index, len(b.value)) + b.value)
        return h.digest()

    def summary(self) -> dict[str, Any]:
        return {
            "tee": "nvidia-gpu",
            "spdm_version": f"{self.version >> 4}.{self.version & 0xF}",
            "nonce": self.request_nonce.hex(),
            "measurement": self.measurement.hex(),
            "measurement_blocks": len(self.blocks),
            "measurements": {str(i): v.hex() for i, v in self.measurements.items()},
            "debug": False,
            "not_checked": ["NVIDIA RIMs (reference integrity manifests)", "OCSP"],
        }


def decode_gpu_report(data: bytes) -> bytes:
    """The report's bytes: NVIDIA tools write it as hex text; raw bytes pass through."""
    if data[:1] in (b"1",) and _HEX.match(data) is not None:
        try:
            return bytes.fromhex(data.decode("ascii"))
        except ValueError:
            raise AttestationFailed("GPU report hex text is malformed") from None
    return bytes(data)


def parse_gpu_report(data: bytes) -> GpuReport:
    """Parse request + response; AttestationFailed if malformed."""
    raw = decode_gpu_report(data)
    r = FieldReader(raw, "GPU report")
    request = r.take(REQUEST_LEN, "GET_MEASUREMENTS request")
    version, code, param1 = request[0], request[1], request[2]
    if code != SPDM_GET_MEASUREMENTS or version >> 4 != 1:
        raise AttestationFailed(f"not an SPDM 1.x GET_MEASUREMENTS request ({request[:2].hex()})")
    if not param1 & 0x01:
        raise AttestationFailed("GET_MEASUREMENTS did not ask for a signature")
    resp_start = r.pos
    rv, rc = r.uint(1, "response version"), r.uint(1, "response code")
    if rc != SPDM_MEASUREMENTS or rv != version:
        raise AttestationFailed(f"not a MEASUREMENTS response to it ({rv:#x} {rc:#x})")
    r.take(2, "response params")
    n_blocks = r.uint(1, "number of blocks")
    record_len = r.uint(3, "measurement record length")
    record_start = r.pos
    record = r.sub(record_len, "measurement record")
    blocks: list[MeasurementBlock] = []
    while record.pos < len(record.data):
        index, spec = record.uint(1, "block index"), record.uint(1, "block spec")
        size = record.uint(2, "size")
        body = record.sub(size, f"measurement block {index}")
        if not spec & 0x01:
            raise AttestationFailed(f"measurement block {index} is not in DMTF format")
        vtype, vsize = body.uint(1, "value type"), body.uint(2, "value size")
        value = body.take(vsize, f"measurement {index} value")
        if body.pos != size:
            raise AttestationFailed(f"measurement block {index} has bytes after its value")
        blocks.append(MeasurementBlock(index, spec, vtype, value))
    if len(blocks) != n_blocks:
        raise AttestationFailed(f"response says {n_blocks} blocks, record holds {len(blocks)}")
    if len({b.index for b in blocks}) != len(blocks):
        raise AttestationFailed("measurement block indices repeat")
    responder_nonce = r.take(NONCE_LEN, "responder nonce")
    opaque = r.take(r.uint(2, "opaque data length"), "opaque data")
    signed_end = r.pos
    sig_start = r.pos
    signature = r.take(SIGNATURE_LEN, "signature")
    return GpuReport(
        raw=raw[: r.pos],
        request=request,
        version=version,
        request_nonce=request[4 : 4 + NONCE_LEN],
        blocks=tuple(blocks),
        responder_nonce=responder_nonce,
        opaque=opaque,
        signature=signature,
        signed=raw[:signed_end],
        trailing=raw[r.pos :],
        regions={
            "request": (0, REQUEST_LEN),
            "response_header": (resp_start, record_start),
            "measurement_record": (record_start, record_start + record_len),
            "nonce_opaque": (record_start + record_len, signed_end),
            "signature": (sig_start, sig_start + SIGNATURE_LEN),
        },
    )


@dataclass(frozen=True)
class VerifiedGpuReport(RootedEvidence):
    """A GPU report whose signature and device chain verified."""

    report: GpuReport
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate
    checks: tuple[CheckResult, ...]

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        """The verifier's nonce (the request's), padded as a CPU report's REPORT_DATA is."""
        return self.report.request_nonce.ljust(64, b"\x00")

    @property
    def debug(self) -> bool:
        return False

    def summary(self) -> dict[str, Any]:
        return self.report.summary() | {
            "root_sha256": self.root_fingerprint,
            "simulated": self.simulated,
        }


def inspect_gpu_report(
    data: bytes,
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> tuple[list[CheckResult], VerifiedGpuReport | None]:
    """Run every check; the results and the verified report (or None)."""
    checks: list[CheckResult] = []
    try:
        report = parse_gpu_report(data)
    except AttestationFailed as exc:
        return [CheckResult("parse", False, f"GPU report malformed: {exc.message}")], None
    checks.append(CheckResult("parse", True, f"SPDM MEASUREMENTS, {len(report.blocks)} blocks"))
    root: x509.Certificate | None = None
    try:
        root = verify_chain(list(chain), roots, now, what="GPU device chain")
        checks.append(CheckResult("device_chain", True, f"{len(chain)} certificates to the root"))
    except AttestationFailed as exc:
        checks.append(CheckResult("device_chain", False, exc.message))
    ok = bool(chain) and _verify_signature(chain[0], report)
    checks.append(
        CheckResult(
            "report_signature",
            ok,
            "SHA-384(request || response) signed by the device leaf key"
            if ok
            else "GPU report signature invalid",
        )
    )
    if root is None or not all(c.ok for c in checks):
        return checks, None
    return checks, VerifiedGpuReport(report, tuple(chain), root, tuple(checks))


def _verify_signature(leaf: x509.Certificate, report: GpuReport) -> bool:
    try:
        key = leaf.public_key()
    except CERT_ERRORS:
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return False
    return verify_raw(key, report.signature, report.signed, size=48, algorithm=hashes.SHA384())


def verify_gpu_report(
    data: bytes,
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> VerifiedGpuReport:
    """Verify a GPU report; raise AttestationFailed naming the first failed check."""
    checks, verified = inspect_gpu_report(data, chain, roots, now=now)
    if verified is None:
        failed = next(c for c in checks if not c.ok)
        raise AttestationFailed(failed.detail, check=failed.name)
    return verified
