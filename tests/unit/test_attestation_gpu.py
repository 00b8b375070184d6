"""NVIDIA Hopper SPDM evidence: the genuine report verifies to the pinned device identity
root; flipped bytes, a wrong chain and unexpected measurements are refused by name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.simulated import SimulatedPlatformCA
from infaas.attestation.spdm import (
    VerifiedGpuReport,
    decode_gpu_report,
    inspect_gpu_report,
    verify_gpu_report,
)
from infaas.errors import AttestationFailed

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
REPORT = "nvidia/hopper_attestation_report.hex"
CHAIN = "nvidia/hopper_cert_chain.pem"


def _chain(d: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((d / CHAIN).read_bytes())


@pytest.fixture(scope="module")
def genuine(attestation_data: Path) -> VerifiedGpuReport:
    chain = _chain(attestation_data)
    return verify_gpu_report((attestation_data / REPORT).read_bytes(), chain, chain[-1:], now=NOW)


def test_genuine_report_verifies(genuine: VerifiedGpuReport) -> None:
    r = genuine.report
    assert r.request_nonce.hex().startswith("931d8dd0") and len(r.blocks) == 64
    assert len(r.signature) == 96 and r.trailing == b""
    assert [c.name for c in genuine.checks] == ["parse", "device_chain", "report_signature"]
    verdict = AttestationPolicy.cli_default().evaluate(genuine, None, NOW.timestamp())
    assert verdict.ok and {"gpu_root", "gpu_measurements"} <= {c.name for c in verdict.checks}


def test_reference_measurements(genuine: VerifiedGpuReport) -> None:
    recorded = {i: (v.hex(),) for i, v in list(genuine.report.measurements.items())[:5]}
    pol = AttestationPolicy.model_validate({"any_measurement": True, "gpu": {}})
    ok = pol.model_copy(update={"gpu": pol.gpu.model_copy(update={"measurements": recorded})})
    assert ok.evaluate(genuine, None, 0).ok
    first = next(iter(recorded))
    wrong = ok.gpu.model_copy(update={"measurements": recorded | {first: ("ab" * 48,)}})
    failures = ok.model_copy(update={"gpu": wrong}).evaluate(genuine, None, 0).failures
    assert [c.name for c in failures] == ["gpu_measurements"]


def test_every_flipped_byte_is_refused(attestation_data: Path) -> None:
    """Every byte of the report (request, response, signature) is signed or is the
    signature: one bit flipped anywhere is refused naming the parse or the signature.
    The device chain does not read the report, so its check is not repeated 4,000 times:
    the device certificate is the anchor here, and a strided sweep keeps the full chain."""
    raw = decode_gpu_report((attestation_data / REPORT).read_bytes())
    chain = _chain(attestation_data)
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        checks, verified = inspect_gpu_report(bytes(bad), chain[:1], chain[:1], now=NOW)
        assert verified is None, pos
        assert {c.name for c in checks if not c.ok} in ({"parse"}, {"report_signature"}), pos
    for pos in range(0, len(raw), 97):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        checks, verified = inspect_gpu_report(bytes(bad), chain, chain[-1:], now=NOW)
        assert verified is None, pos
        assert {c.name for c in checks if not c.ok} in ({"parse"}, {"report_signature"}), pos
    # the leaf as anchor does verify the genuine report: the sweep above is not vacuous
    assert inspect_gpu_report(raw, chain[:1], chain[:1], now=NOW)[1] is not None


def test_wrong_root_and_unpinned_root(attestation_data: Path) -> None:
    chain = _chain(attestation_data)
    other = SimulatedPlatformCA.generate("gpu").root_cert
    with pytest.raises(AttestationFailed, match="does not end at a trusted root") as ei:
        verify_gpu_report((attestation_data / REPORT).read_bytes(), chain, [other], now=NOW)
    assert ei.value.detail["check"] == "device_chain"
    v = verify_gpu_report(
        (attestation_data / REPORT).read_bytes(), chain[:-1], chain[-2:-1], now=NOW
    )  # an intermediate as the anchor verifies, but the policy's pin refuses it
    failures = AttestationPolicy.cli_default().evaluate(v, None, 0).failures
    assert [c.name for c in failures] == ["gpu_root"]


def test_cli_gpu(attestation_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from infaas.cli import main

    args = ["evidence", "verify", str(attestation_data / REPORT), "--cert"]
    assert main([*args, str(attestation_data / CHAIN), "--now", NOW.isoformat(), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"platform": "nvidia"' in out and "OCSP" in out
