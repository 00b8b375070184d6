"""A minimal DER reader: TLV splitting for Intel's SGX PCK extension and DER cert lists.

X.509 itself is parsed by `cryptography`; this only walks the small custom
ASN.1 structure Intel puts in the PCK certificate (OID 1.2.840.113741.1.13.1).
"""

from __future__ import annotations

from collections.abc import Iterator

from cryptography import x509

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one TLV at `pos`; return (tag, value, next position)."""
    if pos + 2 > len(data):
        raise ValueError("DER truncated")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("DER value truncated")
    return tag, data[pos : pos + length], pos + length


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        tag, value, pos = read_tlv(data, pos)
        yield tag, value


def split_der_certificates(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (some quotes carry DER, not PEM, in type 5)."""
    out: list[bytes] = []
    pos = 0
    data = data.rstrip(b"\x00")
    while pos < len(data):
        start = pos
        _, _, pos = read_tlv(data, pos)
        out.append(data[start:pos])
    return out


def _oid_text(value: bytes) -> str:
    parts: list[int] = []
    first = True
    acc = 0
    for b in value:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            if first:
                parts.extend([min(acc // 40, 2), acc - 40 * min(acc // 40, 2)])
                first = False
            else:
                parts.append(acc)
            acc = 0
    return ".".join(str(p) for p in parts)


def _decode(tag: int, value: bytes) -> object:
    if tag == 0x02:  # INTEGER
        return int.from_bytes(value, "big", signed=False)
    if tag == 0x0A:  # ENUMERATED
        return int.from_bytes(value, "big")
    if tag == 0x30:  # SEQUENCE of (OID, value) pairs
        return _pairs(value)
    return value


def _pairs(data: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    for tag, item in iter_tlv(data):
        if tag != 0x30:
            continue
        elems = list(iter_tlv(item))
        if len(elems) >= 2 and elems[0][0] == 0x06:
            out[_oid_text(elems[0][1])] = _decode(*elems[1])
    return out


def sgx_extensions(cert: x509.Certificate) -> dict[str, object]:
    """Intel's SGX extension of a PCK certificate as {oid: value} (nested for TCB)."""
    ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError("unexpected SGX extension type")
    _, body, _ = read_tlv(ext.value, 0)
    return _pairs(body)
