"""Intel's SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1), read with pyasn1.

X.509 itself is parsed by `cryptography`; the extension's value is Intel's own
ASN.1: a SEQUENCE of (OID, value) pairs, where the TCB value (.2) is itself a
SEQUENCE of (OID, INTEGER / OCTET STRING) pairs. The simulated platform CA
writes the same structure (`encode_sgx_extension`), so both are read by one
parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ

from infaas.errors import AttestationFailed

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX = "1.2.840.113741.1.13.1"
_PPID, _TCB, _PCEID, _FMSPC, _SGX_TYPE = (f"{_SGX}.{i}" for i in (1, 2, 3, 4, 5))


@dataclass(frozen=True)
class SgxPckExtension:
    """What the verifier needs from a PCK certificate: platform family and its TCB."""

    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


def _pairs(value: object) -> dict[str, object]:
    out: dict[str, object] = {}
    if not isinstance(value, univ.SequenceOf | univ.Sequence):
        raise AttestationFailed("PCK certificate SGX extension: expected a SEQUENCE")
    for item in value:
        if not isinstance(item, univ.Sequence) or len(item) != 2:
            raise AttestationFailed("PCK certificate SGX extension: expected (OID, value) pairs")
        oid, val = item[0], item[1]
        if not isinstance(oid, univ.ObjectIdentifier):
            raise AttestationFailed("PCK certificate SGX extension: pair without an OID")
        out[str(oid)] = val
    return out


def _octets(d: dict[str, object], key: str, size: int | None = None) -> bytes:
    v = d.get(key)
    if not isinstance(v, univ.OctetString):
        raise AttestationFailed(f"PCK certificate SGX extension lacks {key}")
    b = bytes(v)
    if size is not None and len(b) != size:
        raise AttestationFailed(f"PCK certificate SGX extension: {key} must be {size} bytes")
    return b


def _int(d: dict[str, object], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, univ.Integer):
        raise AttestationFailed(f"PCK certificate SGX extension lacks {key}")
    return int(v)


# pure function of the bytes: a verifier sees the same few PCK certificates at every release,
# and pyasn1's decoding is most of a quote's verification time
@lru_cache(maxsize=256)
def parse_sgx_extension(der: bytes) -> SgxPckExtension:
    """Decode the extension's DER value; AttestationFailed if it is malformed or incomplete."""
    try:
        top, rest = decoder.decode(der)
        if rest:
            raise AttestationFailed("PCK certificate SGX extension has trailing bytes")
        outer = _pairs(top)
        tcb = _pairs(outer.get(_TCB))
        return SgxPckExtension(
            ppid=_octets(outer, _PPID),
            tcb_components=tuple(_int(tcb, f"{_TCB}.{i}") for i in range(1, 17)),
            pce_svn=_int(tcb, f"{_TCB}.17"),
            cpu_svn=_octets(tcb, f"{_TCB}.18", 16),
            pce_id=_octets(outer, _PCEID, 2),
            fmspc=_octets(outer, _FMSPC, 6),
            sgx_type=int(_enum_or_int(outer.get(_SGX_TYPE))),
        )
    except PyAsn1Error as exc:
        raise AttestationFailed(f"PCK certificate SGX extension is not valid DER: {exc}") from None


def _enum_or_int(v: object) -> int:
    if isinstance(v, univ.Integer | univ.Enumerated):
        return int(v)
    raise AttestationFailed(f"PCK certificate SGX extension lacks {_SGX_TYPE}")


def sgx_extension(cert: x509.Certificate) -> SgxPckExtension:
    """The SGX extension of a PCK certificate; AttestationFailed if absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise AttestationFailed("PCK certificate has no SGX extension") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        # cryptography parses extensions lazily
        raise AttestationFailed(f"PCK certificate extensions are malformed: {exc}") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise AttestationFailed("PCK certificate SGX extension has an unexpected type")
    return parse_sgx_extension(ext.value)


def encode_sgx_extension(e: SgxPckExtension) -> bytes:
    """The DER value of an SGX extension (the simulated platform CA's PCK certificates)."""

    def pair(oid: str, value: univ.Integer | univ.OctetString | univ.SequenceOf) -> univ.Sequence:
        s = univ.Sequence()
        s.setComponentByPosition(0, univ.ObjectIdentifier(oid))
        s.setComponentByPosition(1, value)
        return s

    tcb = univ.SequenceOf(componentType=univ.Sequence())
    for i, svn in enumerate(e.tcb_components, start=1):
        tcb.append(pair(f"{_TCB}.{i}", univ.Integer(svn)))
    tcb.append(pair(f"{_TCB}.17", univ.Integer(e.pce_svn)))
    tcb.append(pair(f"{_TCB}.18", univ.OctetString(e.cpu_svn)))
    top = univ.SequenceOf(componentType=univ.Sequence())
    top.append(pair(_PPID, univ.OctetString(e.ppid)))
    top.append(pair(_TCB, tcb))
    top.append(pair(_PCEID, univ.OctetString(e.pce_id)))
    top.append(pair(_FMSPC, univ.OctetString(e.fmspc)))
    top.append(pair(_SGX_TYPE, univ.Enumerated(e.sgx_type)))
    return bytes(encoder.encode(top))
