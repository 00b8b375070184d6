"""AMD SEV-SNP: the genuine Milan report verifies to the pinned ARK, production refuses it
(debug allowed), every flipped byte of the signed region is refused by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
from pathlib import Path

import pytest
from cryptography import x509

from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.snp import (
    SIGNED_LEN,
    VerifiedSnpReport,
    inspect_snp_report,
    parse_snp_report,
    verify_snp_report,
)
from infaas.errors import AttestationFailed

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
REPORT = "snp/go_sev_guest_milan_report_v2.bin"
VCEK = "snp/go_sev_guest_milan_vcek.der"


def _chain(d: Path, name: str = "amd_ask_ark_milan.pem") -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((d / "snp" / name).read_bytes())


@pytest.fixture(scope="module")
def genuine(attestation_data: Path) -> VerifiedSnpReport:
    return verify_snp_report(
        (attestation_data / REPORT).read_bytes(),
        (attestation_data / VCEK).read_bytes(),
        _chain(attestation_data),
        now=NOW,
    )


def test_genuine_report_verifies_with_readme_values(genuine: VerifiedSnpReport) -> None:
    r = genuine.report
    assert r.version == 2 and r.policy == 0xB0000 and r.debug and r.smt_allowed
    assert r.measurement.hex().startswith("b07af962") and r.measurement.hex().endswith("2b01")
    assert r.report_data.startswith(bytes.fromhex("0102030405"))
    assert genuine.product == "Milan" and not genuine.simulated
    assert [c.name for c in genuine.checks] == [
        "parse",
        "amd_chain",
        "vcek_binding",
        "report_signature",
    ]


def test_production_default_refuses_debug_guest(genuine: VerifiedSnpReport) -> None:
    verdict = AttestationPolicy.cli_default().evaluate(genuine, None, NOW.timestamp())
    assert [c.name for c in verdict.failures] == ["debug"]
    lax = AttestationPolicy(any_measurement=True, allow_debug=True)
    assert lax.evaluate(genuine, None, NOW.timestamp()).ok


def test_cli_snp(
    attestation_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from infaas.cli import main

    args = [
        "evidence",
        "verify",
        str(attestation_data / REPORT),
        "--cert",
        str(attestation_data / VCEK),
        "--root",
        str(attestation_data / "snp/amd_ask_ark_milan.pem"),
        "--now",
        NOW.isoformat(),
        "--json",
    ]
    assert main(args) == 1  # auto-detected as SNP; debug refused by default
    assert '"platform": "snp"' in capsys.readouterr().out
    (tmp_path / "p.yaml").write_text("any_measurement: true\nallow_debug: true\n")
    assert main([*args, "--policy", str(tmp_path / "p.yaml")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "chain,message",
    [("amd_ask_ark_genoa.pem", "signature invalid"), ("amd_asvk_ark_milan.pem", "signature")],
)
def test_wrong_amd_chain_is_refused(attestation_data: Path, chain: str, message: str) -> None:
    with pytest.raises(AttestationFailed, match=message) as ei:
        verify_snp_report(
            (attestation_data / REPORT).read_bytes(),
            (attestation_data / VCEK).read_bytes(),
            _chain(attestation_data, chain),
            now=NOW,
        )
    assert ei.value.detail["check"] == "amd_chain"


def test_unpinned_ark_is_refused(attestation_data: Path) -> None:
    with pytest.raises(AttestationFailed, match="not a pinned AMD root") as ei:
        verify_snp_report(
            (attestation_data / REPORT).read_bytes(),
            (attestation_data / VCEK).read_bytes(),
            _chain(attestation_data),
            now=NOW,
            pinned_arks={"Milan": "00" * 32},
        )
    assert ei.value.detail["check"] == "amd_chain"


def test_every_flipped_signed_byte_is_refused(attestation_data: Path) -> None:
    raw = (attestation_data / REPORT).read_bytes()
    vcek = (attestation_data / VCEK).read_bytes()
    chain = _chain(attestation_data)
    # the signed region, and the r and s of the signature
    for pos in [*range(SIGNED_LEN), *range(0x2A0, 0x2A0 + 144)]:
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        checks, verified = inspect_snp_report(bytes(bad), vcek, chain, now=NOW)
        assert verified is None, pos
        failed = {c.name for c in checks if not c.ok}
        assert failed <= {"parse", "vcek_binding", "report_signature"}, (pos, failed)
        if not 0x00 <= pos < 0x08 and not 0x30 <= pos < 0x38 and pos != 0x48:
            assert "report_signature" in failed, pos


def _with(v: VerifiedSnpReport, **fields: object) -> VerifiedSnpReport:
    return dataclasses.replace(v, report=dataclasses.replace(v.report, **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields,policy,rule",
    [
        ({"policy": 0x30000 | (1 << 18)}, {}, "snp_migration_agent"),
        ({"policy": 0x30000}, {"allow_smt": False}, "snp_smt"),
        ({"vmpl": 2}, {}, "snp_vmpl"),
        ({}, {"min_reported_tcb": {"snp": 8}}, "snp_reported_tcb"),
        ({}, {"host_data": ["11" * 32]}, "snp_host_data"),
    ],
)
def test_guest_policy_rules(
    genuine: VerifiedSnpReport, fields: dict[str, object], policy: dict[str, object], rule: str
) -> None:
    pol = AttestationPolicy.model_validate(
        {"any_measurement": True, "allow_debug": True, "snp": policy}
    )
    v = _with(genuine, **fields)
    assert [c.name for c in pol.evaluate(v, None, 0).failures] == [rule]


def test_v3_layout_reads_cpuid_and_turin_tcb(attestation_data: Path) -> None:
    raw = bytearray((attestation_data / REPORT).read_bytes())
    struct.pack_into("<I", raw, 0, 3)
    raw[0x188:0x18B] = bytes([0x1A, 0x02, 0x01])  # Turin
    struct.pack_into("<Q", raw, 0x180, int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little"))
    r = parse_snp_report(bytes(raw))
    assert r.version == 3 and r.cpuid == (0x1A, 0x02, 0x01)
    assert r.reported_tcb.components() == {
        "bootloader": 2,
        "tee": 3,
        "snp": 4,
        "microcode": 9,
        "fmc": 1,
    }
    with pytest.raises(AttestationFailed, match="version 7"):
        parse_snp_report(b"\x07" + bytes(0x4A0))
    with pytest.raises(AttestationFailed, match="truncated"):
        parse_snp_report(bytes(raw[:0x200]))
