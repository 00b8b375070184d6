"""Every evidence parser under hypothesis (bounded): only AttestationFailed escapes, and
mutated genuine evidence never verifies."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infaas.attestation import inspect_quote, load_roots, parse_quote
from infaas.attestation.snp import inspect_snp_report, parse_snp_report
from infaas.attestation.spdm import decode_gpu_report, inspect_gpu_report, parse_gpu_report
from infaas.errors import AttestationFailed

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
INTEL = {
    "sgx-v3": "sgx/phala_sgx_quote_v3.bin",
    "tdx-v4": "tdx/phala_tdx_quote_v4.bin",
    "tdx-v5": "tdx/go_tdx_guest_quote_v5.bin",
}


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """Up to 4 edits: flip a byte, set a byte, truncate, or insert a byte."""
    kind = st.sampled_from(["flip", "set", "truncate", "insert"])
    edit = st.tuples(kind, st.integers(0, size - 1), st.integers(1, 255))
    return draw(st.lists(edit, min_size=1, max_size=4))


def _apply(raw: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(raw)
    for kind, pos, val in edits:
        pos %= max(len(b), 1)
        if kind == "flip":
            b[pos] ^= val
        elif kind == "set":
            b[pos] = val
        elif kind == "truncate":
            del b[pos:]
        else:
            b.insert(pos, val)
        if not b:
            break
    return bytes(b)


def _only_typed(fn: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(AttestationFailed):
        fn(data)


# a mutated certificate name makes cryptography warn while the certificate is refused
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")


@pytest.mark.parametrize("name", sorted(INTEL))
@FUZZ
@given(data=st.data())
def test_intel_quote_parser_and_verifier(
    attestation_data: Path, name: str, data: st.DataObject
) -> None:
    raw = (attestation_data / INTEL[name]).read_bytes()
    signed_end = len(raw) - len(parse_quote(raw).trailing)
    edits = data.draw(mutations(signed_end))
    bad = _apply(raw, edits)
    _only_typed(parse_quote, bad)
    roots = load_roots((attestation_data / "roots/intel_sgx_root_ca.pem").read_bytes())
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC) if name == "tdx-v5" else NOW
    _, verified = inspect_quote(bad, roots, now=now)
    if bad[:signed_end] != raw[:signed_end]:
        assert verified is None, edits


@FUZZ
@given(data=st.data())
def test_snp_parser_and_verifier(attestation_data: Path, data: st.DataObject) -> None:
    raw = (attestation_data / "snp/go_sev_guest_milan_report_v2.bin").read_bytes()
    bad = _apply(raw, data.draw(mutations(len(raw))))
    _only_typed(parse_snp_report, bad)
    chain = x509.load_pem_x509_certificates(
        (attestation_data / "snp/amd_ask_ark_milan.pem").read_bytes()
    )
    vcek = (attestation_data / "snp/go_sev_guest_milan_vcek.der").read_bytes()
    _, verified = inspect_snp_report(bad, vcek, chain, now=NOW)
    if bad[: len(raw)] != raw:
        assert verified is None


@FUZZ
@given(data=st.data())
def test_spdm_parser_and_verifier(attestation_data: Path, data: st.DataObject) -> None:
    raw = decode_gpu_report(
        (attestation_data / "nvidia/hopper_attestation_report.hex").read_bytes()
    )
    bad = _apply(raw, data.draw(mutations(len(raw))))
    _only_typed(parse_gpu_report, bad)
    _only_typed(parse_gpu_report, bad.hex().encode())
    chain = x509.load_pem_x509_certificates(
        (attestation_data / "nvidia/hopper_cert_chain.pem").read_bytes()
    )
    _, verified = inspect_gpu_report(bad, chain, chain[-1:], now=NOW)
    if bad[: len(raw)] != raw:
        assert verified is None


@FUZZ
@given(blob=st.binary(max_size=2048))
def test_random_bytes_only_fail_typed(blob: bytes) -> None:
    for parse in (parse_quote, parse_snp_report, parse_gpu_report):
        _only_typed(parse, blob)
