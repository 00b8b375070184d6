"""Where evidence comes from: the `EvidenceGenerator` interface and its hardware backends.

A backend turns 64 bytes of report data into a quote; a GPU pool's worker also has a
`GpuEvidenceGenerator` (`infaas.attestation.simulated_gpu` without hardware). `SimulatedTEE`
(`infaas.attestation.simulated`) is the default on machines without TEE
hardware; `GramineSGX` and `ConfigfsTsm` talk to real devices and refuse to
start where the device is absent. Report data binds a public key to a
verifier's nonce: `report_data_for(public_key, nonce)`.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Protocol, runtime_checkable

from infaas.attestation.quote import parse_quote
from infaas.errors import TeeUnavailable

REPORT_DATA_LEN = 64


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """SHA-256(public key || nonce), zero-padded to the 64 bytes of a report's REPORTDATA."""
    return hashlib.sha256(public_key + nonce).digest().ljust(REPORT_DATA_LEN, b"\x00")


@runtime_checkable
class EvidenceGenerator(Protocol):
    """A TEE that can quote: `generate(report_data)` returns raw quote bytes."""

    @property
    def name(self) -> str: ...

    @property
    def simulated(self) -> bool:
        """True when the evidence is not backed by hardware (not confidential)."""
        ...

    @property
    def measurement(self) -> bytes: ...

    def generate(self, report_data: bytes) -> bytes: ...

    def status(self) -> str:
        """One human-readable line for status pages."""
        ...


@runtime_checkable
class GpuEvidenceGenerator(Protocol):
    """A GPU that can attest: `generate(nonce)` returns an SPDM GET_MEASUREMENTS request and
    its signed response over that 32-byte nonce; `chain_pem` is its device chain, leaf first.
    A GPU-pool worker calls it with the same binding its CPU TEE quotes (`report_data_for`)."""

    @property
    def name(self) -> str: ...

    @property
    def simulated(self) -> bool: ...

    @property
    def chain_pem(self) -> bytes: ...

    def generate(self, nonce: bytes) -> bytes: ...

    def status(self) -> str: ...


def _check_report_data(report_data: bytes) -> bytes:
    if len(report_data) > REPORT_DATA_LEN:
        raise ValueError(f"report data is at most 64 bytes, got {len(report_data)}")
    return report_data.ljust(REPORT_DATA_LEN, b"\x00")


class GramineSGX:
    """SGX via Gramine's `/dev/attestation` pseudo-files (DCAP quote v3)."""

    name = "sgx-gramine"
    simulated = False

    def __init__(self, root: Path = Path("/dev/attestation")) -> None:
        self._root = root
        if not (root / "quote").exists():
            raise TeeUnavailable(
                f"SGX backend needs Gramine's {root}/quote; not running inside a Gramine enclave"
            )

    def generate(self, report_data: bytes) -> bytes:
        (self._root / "user_report_data").write_bytes(_check_report_data(report_data))
        return (self._root / "quote").read_bytes()

    @property
    def measurement(self) -> bytes:
        return parse_quote(self.generate(b"")).measurement

    def status(self) -> str:
        return "sgx-gramine (hardware TEE)"


class ConfigfsTsm:
    """TDX (or other) via the Linux configfs-tsm report interface."""

    name = "tdx-configfs"
    simulated = False

    def __init__(self, root: Path = Path("/sys/kernel/config/tsm/report")) -> None:
        self._root = root
        if not root.is_dir():
            raise TeeUnavailable(
                f"configfs-tsm backend needs {root}; not running in a TDX/SEV-SNP guest"
            )

    def generate(self, report_data: bytes) -> bytes:
        entry = self._root / f"infaas-{uuid.uuid4().hex}"
        os.mkdir(entry)
        try:
            (entry / "inblob").write_bytes(_check_report_data(report_data))
            return (entry / "outblob").read_bytes()
        finally:
            os.rmdir(entry)

    @property
    def measurement(self) -> bytes:
        return parse_quote(self.generate(b"")).measurement

    def status(self) -> str:
        return "tdx-configfs (hardware TEE)"
