"""A simulated NVIDIA GPU: SPDM GET_MEASUREMENTS evidence under a local device CA — NOT
confidential.

It produces exactly the format `infaas.attestation.spdm` verifies on genuine Hopper
reports (request, response, measurement blocks, ECDSA P-384 signature over
SHA-384(request || response)), with a per-deployment device chain whose root carries
the simulated marker. It lets a GPU pool's composite evidence (CPU + GPU bound to one
nonce) run end to end on a machine without a GPU; anyone with the host can forge it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from infaas.attestation.simulated import (
    SIMULATED_LABEL,
    _pem_key,
    issue_leaf,
    issue_root,
)
from infaas.attestation.spdm import NONCE_LEN

DEFAULT_MEASUREMENTS: Mapping[int, bytes] = {
    i: hashlib.sha384(f"infaas simulated GPU measurement {i}".encode()).digest()
    for i in range(1, 9)
}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "infaas simulated GPU (not confidential)"
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


class SimulatedGPU:
    """Evidence of a GPU that is not there: labelled simulated everywhere.

    `SimulatedGPU()` makes a fresh device identity (root and device certificates, device
    key); `load_or_create(dir)` keeps one per deployment, so that the key service trusts
    the root its workers' GPUs chain to.
    """

    name = "simulated-gpu"
    simulated = True

    def __init__(
        self,
        measurements: Mapping[int, bytes] = DEFAULT_MEASUREMENTS,
        *,
        identity: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]
        | None = None,
    ) -> None:
        self.measurements = dict(measurements)
        self.root_cert, self._key, self.leaf_cert = identity or _new_identity()

    @classmethod
    def load_or_create(cls, directory: Path) -> SimulatedGPU:
        """The deployment's simulated GPU identity under `directory` (0600 key on first use)."""
        files = {n: directory / n for n in ("root.pem", "device.pem", "device.key")}
        if all(p.exists() for p in files.values()):
            key = serialization.load_pem_private_key(files["device.key"].read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"simulated GPU key under {directory} is not P-384")
            root = x509.load_pem_x509_certificate(files["root.pem"].read_bytes())
            leaf = x509.load_pem_x509_certificate(files["device.pem"].read_bytes())
            return cls(identity=(root, key, leaf))
        gpu = cls()
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        files["root.pem"].write_bytes(gpu.root_cert.public_bytes(pem))
        files["device.pem"].write_bytes(gpu.leaf_cert.public_bytes(pem))
        fd = os.open(files["device.key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_pem_key(gpu._key))
        return gpu

    def __repr__(self) -> str:
        return f"SimulatedGPU({SIMULATED_LABEL})"

    def status(self) -> str:
        return f"simulated GPU ({SIMULATED_LABEL})"

    @property
    def chain_pem(self) -> bytes:
        enc = serialization.Encoding.PEM
        return self.leaf_cert.public_bytes(enc) + self.root_cert.public_bytes(enc)

    def generate(self, nonce: bytes) -> bytes:
        """A GET_MEASUREMENTS request with `nonce` (32 bytes) and its signed response."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"SPDM nonce is {NONCE_LEN} bytes, got {len(nonce)}")
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
        record = b"".join(
            struct.pack("<BBH", i, 0x01, 3 + len(v)) + struct.pack("<BH", 0x01, len(v)) + v
            for i, v in sorted(self.measurements.items())
        )
        response = (
            bytes([0x11, 0x60, 0x00, 0x00, len(self.measurements)])
            + len(record).to_bytes(3, "little")
            + record
            + os.urandom(NONCE_LEN)
            + (0).to_bytes(2, "little")
        )
        r, s = decode_dss_signature(self._key.sign(request + response, ec.ECDSA(hashes.SHA384())))
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _new_identity() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A simulated device identity CA (its key is discarded) and a device certificate."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=3650)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = _name("infaas Simulated Device Identity CA")
    root_cert = issue_root(root_name, root_key, (now, until))
    key = ec.generate_private_key(ec.SECP384R1())
    device = _name("infaas Simulated GPU device")
    leaf_cert = issue_leaf(device, key.public_key(), root_name, root_key, (now, until))
    return root_cert, key, leaf_cert
