"""The simulated TEE: real quote format, real signatures, no hardware — NOT confidential.

`SimulatedPlatformCA` is generated once per deployment (P-256, stored under the
data dir) and plays Intel's role: it certifies a simulated PCK key, which signs
a simulated quoting enclave's report, which binds a simulated attestation key,
which signs SGX v3 quotes. `infaas.attestation.verify` checks these exactly as
it checks genuine Intel quotes; only the trusted root differs. The CA carries
the `SIMULATED_MARKER_OID` extension, so a policy recognises simulated evidence
by its (trusted) root, never by a flag inside the quote.

Anyone with the host's data dir can forge these quotes: this backend gives the
code path and the measurements, not confidentiality.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from infaas.attestation._sgx_extension import (
    SGX_EXTENSION_OID,
    SgxPckExtension,
    encode_sgx_extension,
)
from infaas.attestation.backends import _check_report_data
from infaas.attestation.evidence import SIMULATED_MARKER_OID, raw_p256_point
from infaas.logs import get_logger

log = get_logger(__name__)

SIMULATED_LABEL = "simulated — not confidential"
_QE_MEASUREMENT = hashlib.sha256(b"infaas simulated quoting enclave").digest()
_QE_SIGNER = hashlib.sha256(b"infaas simulated QE signer").digest()
DEFAULT_SIGNER = hashlib.sha256(b"infaas simulated enclave signer").digest()
_QE_ISV_PROD_ID = 1
_QE_ISV_SVN = 8
_QE_FLAGS = 0x01 | 0x04  # INIT | MODE64BIT
SIMULATED_PCK = SgxPckExtension(
    ppid=hashlib.sha256(b"infaas simulated platform").digest()[:16],
    tcb_components=(2,) * 16,
    pce_svn=13,
    cpu_svn=bytes([2] * 16),
    pce_id=b"\x00\x00",
    fmspc=bytes.fromhex("00000000ffff"),
    sgx_type=0,
)
"""The simulated platform's TCB as its PCK certificate states it (FMSPC 00000000ffff)."""


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_SIMULATED_MARKER = x509.UnrecognizedExtension(SIMULATED_MARKER_OID, b"\x0c\x0fnot-confidential")


def _issue(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    validity: tuple[dt.datetime, dt.datetime],
    *,
    ca: bool,
    path_length: int | None = None,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    # a P-384 CA signs with SHA-384 (NVIDIA's device chains), a P-256 one with SHA-256 (Intel's)
    p384 = isinstance(issuer_key.curve, ec.SECP384R1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=ca), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA384() if p384 else hashes.SHA256())


def issue_root(
    name: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    validity: tuple[dt.datetime, dt.datetime],
    *,
    path_length: int | None = None,
) -> x509.Certificate:
    """A self-issued simulated CA, carrying the marker (`SIMULATED_MARKER_OID`) a policy reads."""
    return _issue(
        name,
        key.public_key(),
        name,
        key,
        validity,
        ca=True,
        path_length=path_length,
        extensions=(_SIMULATED_MARKER,),
    )


def issue_leaf(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    validity: tuple[dt.datetime, dt.datetime],
    *extensions: x509.ExtensionType,
) -> x509.Certificate:
    """A simulated signing key's certificate (not a CA), with non-critical `extensions`."""
    return _issue(
        subject, public_key, issuer, issuer_key, validity, ca=False, extensions=extensions
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "infaas simulated TEE (not confidential)"
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SimulatedPlatformCA:
    """A per-deployment root CA standing in for Intel's SGX Root CA, and the PCK it certifies."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate

    @classmethod
    def generate(cls, deployment: str = "local", validity_days: int = 3650) -> SimulatedPlatformCA:
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        until = now + dt.timedelta(days=validity_days)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name(f"infaas Simulated Platform CA ({deployment})")
        root_cert = issue_root(root_name, root_key, (now, until), path_length=1)
        pck_key = ec.generate_private_key(ec.SECP256R1())
        pck_cert = _issue_pck(root_key, root_name, pck_key, now, until)
        return cls(root_key, root_cert, pck_key, pck_cert)

    def reissue_pck(self) -> SimulatedPlatformCA:
        """The same root with a fresh PCK certificate (one carrying the SGX extension)."""
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        cert = _issue_pck(
            self.root_key,
            self.root_cert.subject,
            self.pck_key,
            now,
            self.root_cert.not_valid_after_utc,
        )
        return SimulatedPlatformCA(self.root_key, self.root_cert, self.pck_key, cert)

    @classmethod
    def load_or_create(cls, directory: Path, deployment: str = "local") -> SimulatedPlatformCA:
        """The deployment's CA under `directory` (created with 0600 key files on first use)."""
        files = {n: directory / n for n in ("root.pem", "root.key", "pck.pem", "pck.key")}
        if all(p.exists() for p in files.values()):
            keys = {
                n: serialization.load_pem_private_key(files[n].read_bytes(), None)
                for n in ("root.key", "pck.key")
            }
            rk, pk = keys["root.key"], keys["pck.key"]
            if not isinstance(rk, ec.EllipticCurvePrivateKey) or not isinstance(
                pk, ec.EllipticCurvePrivateKey
            ):
                raise ValueError(f"simulated CA keys under {directory} are not P-256")
            ca = cls(
                rk,
                x509.load_pem_x509_certificate(files["root.pem"].read_bytes()),
                pk,
                x509.load_pem_x509_certificate(files["pck.pem"].read_bytes()),
            )
            if SGX_EXTENSION_OID not in {e.oid for e in ca.pck_cert.extensions}:
                # a CA written before PCK certificates carried the SGX extension
                ca = ca.reissue_pck()
                files["pck.pem"].write_bytes(ca.pck_cert.public_bytes(serialization.Encoding.PEM))
            return ca
        ca = cls.generate(deployment)
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        files["root.pem"].write_bytes(ca.root_cert.public_bytes(pem))
        files["pck.pem"].write_bytes(ca.pck_cert.public_bytes(pem))
        for n, key in (("root.key", ca.root_key), ("pck.key", ca.pck_key)):
            fd = os.open(files[n], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_pem_key(key))
        return ca

    def collateral(
        self,
        *,
        now: dt.datetime | None = None,
        tcb_status: str = "UpToDate",
        advisory_ids: tuple[str, ...] = (),
        qe_mrsigner: bytes = _QE_SIGNER,
        revoke_pck: bool = False,
        validity_days: int = 30,
    ) -> dict[str, str]:
        """Intel-PCS-shaped collateral for this platform, signed under this CA.

        The same documents Intel publishes (TCB info, QE identity, CRLs), so a
        simulated deployment exercises the production collateral checks:
        `tcb_status` sets the platform's TCB level, `qe_mrsigner` names the
        quoting enclave's signer, `revoke_pck` lists the PCK certificate on the CRL.
        """
        issued = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
        nxt = issued + dt.timedelta(days=validity_days)

        def stamp(t: dt.datetime) -> str:
            return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing_cert = issue_leaf(
            _name("infaas Simulated TCB Signing"),
            signing_key.public_key(),
            self.root_cert.subject,
            self.root_key,
            (issued, self.root_cert.not_valid_after_utc),
        )
        pem = serialization.Encoding.PEM
        signer_chain = (signing_cert.public_bytes(pem) + self.root_pem).decode()
        tcb_info = json.dumps(
            {
                "id": "SGX",
                "version": 3,
                "issueDate": stamp(issued),
                "nextUpdate": stamp(nxt),
                "fmspc": SIMULATED_PCK.fmspc.hex().upper(),
                "pceId": SIMULATED_PCK.pce_id.hex().upper(),
                "tcbType": 0,
                "tcbEvaluationDataNumber": 1,
                "tcbLevels": [
                    {
                        "tcb": {
                            "sgxtcbcomponents": [{"svn": v} for v in SIMULATED_PCK.tcb_components],
                            "pcesvn": SIMULATED_PCK.pce_svn,
                        },
                        "tcbDate": stamp(issued),
                        "tcbStatus": tcb_status,
                        "advisoryIDs": list(advisory_ids),
                    }
                ],
            },
            separators=(",", ":"),
        )
        qe_identity = json.dumps(
            {
                "id": "QE",
                "version": 2,
                "issueDate": stamp(issued),
                "nextUpdate": stamp(nxt),
                "tcbEvaluationDataNumber": 1,
                "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF",
                "attributes": _QE_FLAGS.to_bytes(16, "little").hex().upper(),
                "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                "mrsigner": qe_mrsigner.hex().upper(),
                "isvprodid": _QE_ISV_PROD_ID,
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": _QE_ISV_SVN},
                        "tcbDate": stamp(issued),
                        "tcbStatus": "UpToDate",
                    }
                ],
            },
            separators=(",", ":"),
        )
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.root_cert.subject)
            .last_update(issued)
            .next_update(nxt)
        )
        if revoke_pck:
            crl = crl.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(self.pck_cert.serial_number)
                .revocation_date(issued)
                .build()
            )
        crl_der = crl.sign(self.root_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        return {
            "tcb_info": tcb_info,
            "tcb_info_signature": _sign_raw(signing_key, tcb_info.encode()).hex(),
            "tcb_info_issuer_chain": signer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _sign_raw(signing_key, qe_identity.encode()).hex(),
            "qe_identity_issuer_chain": signer_chain,
            "pck_crl": crl_der.hex(),
            "pck_crl_issuer_chain": self.root_pem.decode(),
            "root_ca_crl": crl_der.hex(),
        }

    @property
    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        """PCK certificate then root, as Intel's certification data type 5 carries them."""
        enc = serialization.Encoding.PEM
        return self.pck_cert.public_bytes(enc) + self.root_cert.public_bytes(enc)


class SimulatedTEE:
    """An `EvidenceGenerator` producing SGX ECDSA quote v3 under a simulated platform CA.

    `measurement` is what MRENCLAVE would be (here `infaas.measurement`'s hash of the
    process's code and config); `debug=True` sets ATTRIBUTES.DEBUG so policies can be
    tested against it.
    """

    name = "simulated"
    simulated = True

    def __init__(
        self,
        ca: SimulatedPlatformCA,
        measurement: bytes,
        *,
        signer: bytes = DEFAULT_SIGNER,
        isv_prod_id: int = 1,
        isv_svn: int = 1,
        debug: bool = False,
        qe_svn: int = 8,
        pce_svn: int = 13,
    ) -> None:
        if len(measurement) != 32 or len(signer) != 32:
            raise ValueError("SGX measurement and signer are 32 bytes")
        self.ca = ca
        self._measurement = measurement
        self._signer = signer
        self._isv_prod_id = isv_prod_id
        self._isv_svn = isv_svn
        self._debug = debug
        self._header = struct.pack("<HHIHH", 3, 2, 0, qe_svn, pce_svn) + b"\x00" * 36
        self._ak = ec.generate_private_key(ec.SECP256R1())
        ak_point = raw_p256_point(self._ak.public_key())
        auth = hashlib.sha256(b"infaas simulated QE auth").digest()
        qe_report = _sgx_report(
            _QE_MEASUREMENT,
            _QE_SIGNER,
            hashlib.sha256(ak_point + auth).digest() + b"\x00" * 32,
            isv_prod_id=_QE_ISV_PROD_ID,
            isv_svn=_QE_ISV_SVN,
            debug=False,
        )
        chain = ca.chain_pem + b"\x00"
        self._sig_tail = (
            ak_point
            + qe_report
            + _sign_raw(ca.pck_key, qe_report)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        log.warning(
            "SimulatedTEE created: %s. Evidence is signed by a locally generated CA; "
            "anyone with this host can forge it. Never use it for real secrets.",
            SIMULATED_LABEL,
        )

    def __repr__(self) -> str:
        return f"SimulatedTEE(measurement={self._measurement.hex()[:16]}…, {SIMULATED_LABEL})"

    @property
    def measurement(self) -> bytes:
        return self._measurement

    @property
    def signer(self) -> bytes:
        return self._signer

    def status(self) -> str:
        return f"simulated TEE ({SIMULATED_LABEL})"

    def generate(self, report_data: bytes) -> bytes:
        body = _sgx_report(
            self._measurement,
            self._signer,
            _check_report_data(report_data),
            isv_prod_id=self._isv_prod_id,
            isv_svn=self._isv_svn,
            debug=self._debug,
        )
        signed = self._header + body
        sig_data = _sign_raw(self._ak, signed) + self._sig_tail
        return signed + struct.pack("<I", len(sig_data)) + sig_data


def _issue_pck(
    root_key: ec.EllipticCurvePrivateKey,
    root_name: x509.Name,
    pck_key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    return issue_leaf(
        _name("infaas Simulated PCK Certificate"),
        pck_key.public_key(),
        root_name,
        root_key,
        (not_before, not_after),
        x509.UnrecognizedExtension(SGX_EXTENSION_OID, encode_sgx_extension(SIMULATED_PCK)),
    )


def _sgx_report(
    mr_enclave: bytes,
    mr_signer: bytes,
    report_data: bytes,
    *,
    isv_prod_id: int,
    isv_svn: int,
    debug: bool,
) -> bytes:
    flags = _QE_FLAGS | (0x02 if debug else 0)  # INIT | MODE64BIT | DEBUG
    b = bytearray(384)
    b[48:56] = flags.to_bytes(8, "little")
    b[56:64] = (0x03).to_bytes(8, "little")  # XFRM: x87 | SSE
    b[64:96] = mr_enclave
    b[128:160] = mr_signer
    struct.pack_into("<HH", b, 256, isv_prod_id, isv_svn)
    b[320:384] = report_data
    return bytes(b)
