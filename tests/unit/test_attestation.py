"""Quote parsing and verification on real Intel evidence, tampered copies, simulated quotes."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infaas.attestation import (
    SIMULATED_LABEL,
    AttestationPolicy,
    AttestationVerifier,
    NonceIssuer,
    SimulatedPlatformCA,
    SimulatedTEE,
    inspect_quote,
    load_roots,
    parse_quote,
    report_data_for,
    verify_quote,
)
from infaas.attestation.backends import ConfigfsTsm, GramineSGX
from infaas.attestation.command import evidence_verify_command
from infaas.errors import AttestationFailed, TeeUnavailable

# inside every sample's certificate windows and the collaterals' TCB windows
NOW = datetime(2025, 6, 20, tzinfo=UTC)
SGX = "sgx/phala_sgx_quote_v3.bin"
TDX = "tdx/phala_tdx_quote_v4.bin"
TDX_TRAILER = "tdx/go_tdx_guest_spr_e4_quote_v4_trailer.bin"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def intel_root(attestation_data: Path) -> list:
    return load_roots((attestation_data / "roots/intel_sgx_root_ca.pem").read_bytes())


def _read(d: Path, name: str) -> bytes:
    return (d / name).read_bytes()


# --- genuine evidence -------------------------------------------------------------------


def test_sgx_v3_verifies_with_readme_values(attestation_data: Path, intel_root: list) -> None:
    v = verify_quote(_read(attestation_data, SGX), intel_root, now=NOW)
    assert v.quote.tee.value == "sgx"
    assert v.measurement.hex() == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert v.signer.hex() == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert v.report_data.startswith(b"Hello, world!")
    assert not v.debug
    assert v.quote.body.attribute_flags == 0x05  # type: ignore[union-attr]
    assert not v.simulated
    assert v.root_fingerprint.startswith("44a0196b2b99f889")
    assert [c.name for c in v.checks] == [
        "parse",
        "pck_chain",
        "pck_leaf",
        "qe_report_signature",
        "qe_report_data",
        "quote_signature",
    ]


@pytest.mark.parametrize("name,trailing", [(TDX, 70), (TDX_TRAILER, 39)])
def test_tdx_v4_verifies_and_reports_trailing_bytes(
    attestation_data: Path, intel_root: list, name: str, trailing: int
) -> None:
    v = verify_quote(_read(attestation_data, name), intel_root, now=NOW)
    assert v.quote.tee.value == "tdx"
    assert len(v.quote.trailing) == trailing
    assert len(v.measurement) == 48
    assert len(v.quote.body.rtmrs) == 4  # type: ignore[union-attr]
    assert not v.debug


def test_trailing_garbage_is_not_signed_over(attestation_data: Path, intel_root: list) -> None:
    v = verify_quote(_read(attestation_data, SGX) + b"junk", intel_root, now=NOW)
    assert v.quote.trailing == b"junk"


@pytest.mark.parametrize(
    "name,collateral,status,advisories",
    [
        (
            SGX,
            "sgx/phala_sgx_quote_v3.collateral.json",
            "ConfigurationAndSWHardeningNeeded",
            ("INTEL-SA-00289", "INTEL-SA-00615"),
        ),
        (TDX, "tdx/phala_tdx_quote_v4.collateral.json", "UpToDate", ()),
    ],
)
def test_tcb_status_from_collateral(
    attestation_data: Path,
    intel_root: list,
    name: str,
    collateral: str,
    status: str,
    advisories: tuple[str, ...],
) -> None:
    col = json.loads(_read(attestation_data, collateral))
    v = verify_quote(_read(attestation_data, name), intel_root, now=NOW, collateral=col)
    assert v.tcb is not None
    assert v.tcb.status == status
    assert v.tcb.advisory_ids == advisories


def test_collateral_outside_its_window_fails(attestation_data: Path, intel_root: list) -> None:
    col = json.loads(_read(attestation_data, "sgx/phala_sgx_quote_v3.collateral.json"))
    later = datetime(2025, 8, 1, tzinfo=UTC)
    with pytest.raises(AttestationFailed, match="TCB info is not current"):
        verify_quote(_read(attestation_data, SGX), intel_root, now=later, collateral=col)


def test_tampered_collateral_fails(attestation_data: Path, intel_root: list) -> None:
    col = json.loads(_read(attestation_data, "sgx/phala_sgx_quote_v3.collateral.json"))
    col["tcb_info"] = col["tcb_info"].replace('"pcesvn":13', '"pcesvn":1', 1)
    with pytest.raises(AttestationFailed, match="TCB info signature invalid"):
        verify_quote(_read(attestation_data, SGX), intel_root, now=NOW, collateral=col)


def test_expired_certificates_fail(attestation_data: Path, intel_root: list) -> None:
    with pytest.raises(AttestationFailed, match=r"certificate chain.*not valid at"):
        verify_quote(_read(attestation_data, SGX), intel_root, now=datetime(2051, 1, 1, tzinfo=UTC))


# --- wrong root: Intel's synthetic samples ----------------------------------------------


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_synthetic_samples_fail_against_real_root(
    attestation_data: Path, intel_root: list, tee: str
) -> None:
    d = attestation_data / "synthetic-intel-test-root"
    quote = (d / f"{tee}_quote.dat").read_bytes()
    chain = (d / f"{tee}_pckCert.pem").read_bytes() + (d / f"{tee}_pckSignChain.pem").read_bytes()
    with pytest.raises(AttestationFailed, match="does not end at a trusted root") as ei:
        verify_quote(quote, intel_root, now=NOW, pck_chain_pem=chain)
    assert ei.value.detail["check"] == "pck_chain"
    # right structure: against Intel's *test* root the same bytes verify
    test_root = load_roots((d / f"{tee}_trustedRootCaCert.pem").read_bytes())
    verify_quote(quote, test_root, now=NOW, pck_chain_pem=chain)


# --- tampering --------------------------------------------------------------------------

REGION_CHECK = {
    "header": "quote_signature",
    "body": "quote_signature",
    "signature": "quote_signature",
    "attestation_key": "qe_report_data",
    "qe_report": "qe_report_signature",
    "qe_report_signature": "qe_report_signature",
    "qe_auth_data": "qe_report_data",
    "cert_chain": "pck_chain",
}
MESSAGES = {
    "quote_signature": "quote signature invalid",
    "qe_report_data": "QE report data does not bind the attestation key",
    "qe_report_signature": "QE report signature invalid",
    "pck_chain": "certificate chain",
}


def _tamper(raw: bytes, region: tuple[int, int], name: str) -> bytes:
    start, end = region
    b = bytearray(raw)
    if name == "header":
        pos = 40  # user data: keeps the header parseable
    elif name == "cert_chain":
        # a base64 character inside the PCK leaf certificate's body
        pos = raw.index(b"-----BEGIN CERTIFICATE-----", start) + 200
        b[pos] = ord("A") if b[pos] != ord("A") else ord("B")
        return bytes(b)
    else:
        pos = (start + end) // 2
    b[pos] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("quote_name", [SGX, TDX])
@pytest.mark.parametrize("region", sorted(REGION_CHECK))
def test_every_tampered_region_fails_naming_the_check(
    attestation_data: Path, intel_root: list, quote_name: str, region: str
) -> None:
    raw = _read(attestation_data, quote_name)
    q = parse_quote(raw)
    bad = _tamper(raw, q.regions[region], region)
    assert bad != raw
    with pytest.raises(AttestationFailed) as ei:
        verify_quote(bad, intel_root, now=NOW)
    expected = REGION_CHECK[region]
    assert ei.value.detail["check"] == expected
    assert MESSAGES[expected] in ei.value.message


def test_truncated_quote_is_malformed(attestation_data: Path, intel_root: list) -> None:
    raw = _read(attestation_data, SGX)
    with pytest.raises(AttestationFailed, match=r"quote malformed.*truncated"):
        verify_quote(raw[:1000], intel_root, now=NOW)


def test_unknown_version_is_refused(intel_root: list) -> None:
    with pytest.raises(AttestationFailed, match="unsupported quote version"):
        parse_quote(b"\x07\x00" + bytes(2000))


def test_cli_verifies_real_quote_and_rejects_synthetic(
    attestation_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = attestation_data / "roots/intel_sgx_root_ca.pem"

    def run(quote: Path, **kw: object) -> tuple[int, dict]:
        ns = argparse.Namespace(
            quote=quote, root=root, policy=None, collateral=None, json=True, now=NOW.isoformat()
        )
        for k, v in kw.items():
            setattr(ns, k, v)
        rc = evidence_verify_command(ns)
        return rc, json.loads(capsys.readouterr().out)

    # production by default: the sample's TCB is not UpToDate, so without a policy
    # allowing its status it is refused, naming the rule
    col = attestation_data / (SGX[:-4] + ".collateral.json")
    rc, out = run(attestation_data / SGX, collateral=col)
    assert rc == 1 and out["verdict"] == "rejected"
    assert out["fields"]["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert [p["name"] for p in out["policy"] if not p["ok"]] == ["tcb_status"]
    assert {c["name"] for c in out["checks"]} >= {"tcb_info", "qe_identity", "crl", "tcb_level"}
    allow = tmp_path / "allow.yaml"
    allow.write_text(
        "any_measurement: true\n"
        "allowed_tcb_statuses: [UpToDate, ConfigurationAndSWHardeningNeeded]\n"
    )
    rc, out = run(attestation_data / SGX, collateral=col, policy=allow)
    assert rc == 0 and out["verdict"] == "verified"
    rc, out = run(attestation_data / "synthetic-intel-test-root/tdx_quote.dat")
    assert rc == 1 and out["verdict"] == "rejected"
    assert any(c["name"] == "pck_chain" and not c["ok"] for c in out["checks"])
    # human-readable form
    ns = argparse.Namespace(
        quote=attestation_data / TDX, root=root, policy=None, collateral=None, json=False
    )
    ns.now = NOW.isoformat()
    assert evidence_verify_command(ns) == 0
    assert "VERIFIED" in capsys.readouterr().out


# --- production policy on real evidence -------------------------------------------------


def test_production_policy_accepts_real_quote(attestation_data: Path) -> None:
    base = AttestationPolicy.from_yaml(CONFIGS / "attestation-production.yaml")
    assert base.production and not base.allow_simulated and base.require_tcb
    policy = base.model_copy(
        update={"trusted_roots": (str(attestation_data / "roots/intel_sgx_root_ca.pem"),)}
    )
    col = json.loads(_read(attestation_data, "sgx/phala_sgx_quote_v3.collateral.json"))
    # without collateral the production policy refuses (TCB unknown)
    v = verify_quote(_read(attestation_data, SGX), policy.roots, now=NOW)
    assert [c.name for c in policy.evaluate(v, None, NOW.timestamp()).failures] == ["tcb_status"]
    # with it, the sample's ConfigurationAndSWHardeningNeeded is refused by name...
    v = verify_quote(_read(attestation_data, SGX), policy.roots, now=NOW, collateral=col)
    with pytest.raises(AttestationFailed, match="not in allowed_tcb_statuses") as ei:
        policy.check(v, v.report_data, NOW.timestamp())
    assert ei.value.detail["rule"] == "tcb_status"
    # ...unless the operator accepts that status
    lax = policy.model_copy(
        update={"allowed_tcb_statuses": ("UpToDate", "ConfigurationAndSWHardeningNeeded")}
    )
    assert lax.check(v, v.report_data, NOW.timestamp()).ok


def test_production_policy_refuses_unsafe_settings() -> None:
    with pytest.raises(ValueError, match="allow_simulated"):
        AttestationPolicy(production=True, allow_simulated=True, allowed_measurements=("00" * 32,))
    with pytest.raises(ValueError, match="allowed_measurements"):
        AttestationPolicy(production=True)


def test_root_pin_mismatch_is_refused(tmp_path: Path) -> None:
    ca = SimulatedPlatformCA.generate()
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    policy = AttestationPolicy(
        trusted_roots=(str(tmp_path / "root.pem"),), trusted_root_sha256=("44" * 32,)
    )
    with pytest.raises(AttestationFailed, match="does not match trusted_root_sha256"):
        _ = policy.roots


# --- simulated TEE ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_ca() -> SimulatedPlatformCA:
    return SimulatedPlatformCA.generate("test")


MEASUREMENT = hashlib.sha256(b"worker code v1").digest()


def _sim_policy(**kw: object) -> AttestationPolicy:
    return AttestationPolicy.from_yaml(CONFIGS / "attestation-simulated.yaml").model_copy(
        update={"allowed_measurements": (MEASUREMENT.hex(),), **kw}
    )


def _verifier(
    ca: SimulatedPlatformCA, policy: AttestationPolicy | None = None
) -> AttestationVerifier:
    return AttestationVerifier(policy or _sim_policy(), extra_roots=[ca.root_cert])


def test_simulated_quote_round_trips_same_verifier(sim_ca: SimulatedPlatformCA) -> None:
    tee = SimulatedTEE(sim_ca, MEASUREMENT)
    pk, nonce = b"\x01" * 32, b"\x02" * 32
    quote = tee.generate(report_data_for(pk, nonce))
    verified, verdict = _verifier(sim_ca).verify(quote, public_key=pk, nonce=nonce)
    assert verified.simulated
    assert verified.measurement == MEASUREMENT
    assert verdict.ok
    q = parse_quote(quote)
    assert q.header.version == 3 and len(q.pck_chain_pem()) == 2


def test_simulated_is_labelled_and_warns(
    sim_ca: SimulatedPlatformCA, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="infaas.attestation"):
        tee = SimulatedTEE(sim_ca, MEASUREMENT)
    assert SIMULATED_LABEL in repr(tee)
    assert SIMULATED_LABEL in tee.status()
    assert any(SIMULATED_LABEL in r.getMessage() for r in caplog.records)


def test_production_policy_rejects_simulated(
    attestation_data: Path, sim_ca: SimulatedPlatformCA
) -> None:
    tee = SimulatedTEE(sim_ca, hashlib.sha256(b"x").digest())
    pk, nonce = b"\x01" * 32, b"\x02" * 32
    quote = tee.generate(report_data_for(pk, nonce))
    prod = AttestationPolicy.from_yaml(CONFIGS / "attestation-production.yaml").model_copy(
        update={"trusted_roots": (str(attestation_data / "roots/intel_sgx_root_ca.pem"),)}
    )
    with pytest.raises(AttestationFailed, match="does not end at a trusted root"):
        AttestationVerifier(prod, collateral=sim_ca.collateral()).verify(
            quote, public_key=pk, nonce=nonce
        )
    # even if someone adds the simulated root, the marker on it is seen
    lax = _sim_policy(allow_simulated=False)
    with pytest.raises(AttestationFailed, match="refuses simulated evidence") as ei:
        _verifier(sim_ca, lax).verify(quote, public_key=pk, nonce=nonce)
    assert ei.value.detail["rule"] == "simulated"


def test_another_deployments_simulated_ca_is_not_trusted(sim_ca: SimulatedPlatformCA) -> None:
    other = SimulatedPlatformCA.generate("other")
    quote = SimulatedTEE(other, MEASUREMENT).generate(report_data_for(b"k", b"n"))
    with pytest.raises(AttestationFailed, match="does not end at a trusted root"):
        _verifier(sim_ca).verify(quote, public_key=b"k", nonce=b"n")


def test_wrong_measurement_rejected(sim_ca: SimulatedPlatformCA) -> None:
    tee = SimulatedTEE(sim_ca, hashlib.sha256(b"tampered worker").digest())
    quote = tee.generate(report_data_for(b"k", b"n"))
    with pytest.raises(AttestationFailed, match="not in allowed_measurements"):
        _verifier(sim_ca).verify(quote, public_key=b"k", nonce=b"n")


def test_debug_rejected(sim_ca: SimulatedPlatformCA) -> None:
    tee = SimulatedTEE(sim_ca, MEASUREMENT, debug=True)
    quote = tee.generate(report_data_for(b"k", b"n"))
    with pytest.raises(AttestationFailed, match="forbids debug"):
        _verifier(sim_ca).verify(quote, public_key=b"k", nonce=b"n")
    _verifier(sim_ca, _sim_policy(allow_debug=True)).verify(quote, public_key=b"k", nonce=b"n")


def test_unbound_public_key_or_nonce_rejected(sim_ca: SimulatedPlatformCA) -> None:
    tee = SimulatedTEE(sim_ca, MEASUREMENT)
    quote = tee.generate(report_data_for(b"worker key", b"nonce-1"))
    v = _verifier(sim_ca)
    with pytest.raises(AttestationFailed, match="report data does not bind"):
        v.verify(quote, public_key=b"attacker key", nonce=b"nonce-1")
    with pytest.raises(AttestationFailed, match="report data does not bind"):
        v.verify(quote, public_key=b"worker key", nonce=b"nonce-2")


def test_stale_nonce_rejected(sim_ca: SimulatedPlatformCA) -> None:
    tee = SimulatedTEE(sim_ca, MEASUREMENT)
    quote = tee.generate(report_data_for(b"k", b"n"))
    now = time.time()
    with pytest.raises(AttestationFailed, match="nonce is stale") as ei:
        _verifier(sim_ca).verify(quote, public_key=b"k", nonce=b"n", nonce_issued_at=now - 61)
    assert ei.value.detail["rule"] == "freshness"


def test_min_isv_svn(sim_ca: SimulatedPlatformCA) -> None:
    quote = SimulatedTEE(sim_ca, MEASUREMENT, isv_svn=1).generate(report_data_for(b"k", b"n"))
    with pytest.raises(AttestationFailed, match="below min_isv_svn"):
        _verifier(sim_ca, _sim_policy(min_isv_svn=2)).verify(quote, public_key=b"k", nonce=b"n")


def test_signer_allow_list(sim_ca: SimulatedPlatformCA) -> None:
    quote = SimulatedTEE(sim_ca, MEASUREMENT).generate(report_data_for(b"k", b"n"))
    with pytest.raises(AttestationFailed, match="not in allowed_signers"):
        _verifier(sim_ca, _sim_policy(allowed_signers=("ab" * 32,))).verify(
            quote, public_key=b"k", nonce=b"n"
        )


def test_policy_evaluate_lists_every_rule(sim_ca: SimulatedPlatformCA) -> None:
    quote = SimulatedTEE(sim_ca, MEASUREMENT, debug=True).generate(report_data_for(b"k", b"n"))
    v = verify_quote(quote, [sim_ca.root_cert])
    verdict = _sim_policy().evaluate(v, report_data_for(b"k", b"other"), time.time())
    assert not verdict.ok
    assert {c.name for c in verdict.failures} == {"debug", "report_data"}


def test_nonce_issuer_single_use_and_expiry() -> None:
    t = [1000.0]
    issuer = NonceIssuer(ttl_s=10, clock=lambda: t[0])
    n, issued = issuer.issue()
    assert issuer.consume(n) == issued
    with pytest.raises(AttestationFailed, match="stale nonce"):
        issuer.consume(n)
    n2, _ = issuer.issue()
    t[0] += 11
    with pytest.raises(AttestationFailed, match="stale nonce"):
        issuer.consume(n2)


def test_platform_ca_persists(tmp_path: Path) -> None:
    ca1 = SimulatedPlatformCA.load_or_create(tmp_path / "sim")
    ca2 = SimulatedPlatformCA.load_or_create(tmp_path / "sim")
    assert ca1.root_cert == ca2.root_cert
    assert (tmp_path / "sim" / "root.key").stat().st_mode & 0o077 == 0
    quote = SimulatedTEE(ca2, MEASUREMENT).generate(b"")
    verify_quote(quote, [ca1.root_cert])


def test_hardware_backends_refuse_without_device(tmp_path: Path) -> None:
    with pytest.raises(TeeUnavailable, match="Gramine"):
        GramineSGX(tmp_path / "no-attestation")
    with pytest.raises(TeeUnavailable, match="configfs-tsm"):
        ConfigfsTsm(tmp_path / "no-tsm")


def test_inspect_reports_all_checks_on_failure(sim_ca: SimulatedPlatformCA) -> None:
    quote = bytearray(SimulatedTEE(sim_ca, MEASUREMENT).generate(b""))
    quote[100] ^= 1  # body
    checks, verified = inspect_quote(bytes(quote), [sim_ca.root_cert])
    assert verified is None
    assert {c.name: c.ok for c in checks} == {
        "parse": True,
        "pck_chain": True,
        "pck_leaf": True,
        "qe_report_signature": True,
        "qe_report_data": True,
        "quote_signature": False,
    }


# --- wiring from settings -----------------------------------------------------------------


def test_deployment_wiring_from_settings(tmp_path: Path) -> None:
    from infaas.attestation.deployment import create_tee, create_verifier
    from infaas.settings import load_settings

    settings = load_settings(data_dir=tmp_path)
    tee = create_tee(settings, MEASUREMENT)
    assert tee.simulated
    verifier = create_verifier(settings, measurements=[tee.measurement])
    quote = tee.generate(report_data_for(b"k", b"n"))
    verified, verdict = verifier.verify(quote, public_key=b"k", nonce=b"n")
    assert verified.simulated and verdict.ok
    # a second process of the same deployment trusts the same CA
    assert create_tee(settings, MEASUREMENT).ca.root_cert == tee.ca.root_cert  # type: ignore[attr-defined]


def test_production_settings_need_production_policy(tmp_path: Path) -> None:
    from infaas.attestation.deployment import load_policy
    from infaas.settings import load_settings

    settings = load_settings(
        data_dir=tmp_path,
        production=True,
        tee_backend="tdx-configfs",
        attestation_policy=CONFIGS / "attestation-simulated.yaml",
    )
    with pytest.raises(AttestationFailed, match="production policy"):
        load_policy(settings)


def test_crl_from_another_ca_is_refused(attestation_data: Path, intel_root: list) -> None:
    col = json.loads(_read(attestation_data, "sgx/phala_sgx_quote_v3.collateral.json"))
    col["pck_crl"] = col["root_ca_crl"]
    with pytest.raises(AttestationFailed, match="PCK CRL is issued by another CA"):
        verify_quote(_read(attestation_data, SGX), intel_root, now=NOW, collateral=col)


def test_cli_entry_point_with_collateral_and_now(
    attestation_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infaas.cli import main

    sgx = attestation_data / "sgx"
    root = attestation_data / "roots" / "intel_sgx_root_ca.pem"
    args = [
        "evidence",
        "verify",
        str(sgx / "phala_sgx_quote_v3.bin"),
        "--root",
        str(root),
        "--collateral",
        str(sgx / "phala_sgx_quote_v3.collateral.json"),
        "--json",
    ]
    # production by default: this platform's TCB status is not UpToDate
    assert main([*args, "--now", "2025-06-25T00:00:00Z"]) == 1
    assert "ConfigurationAndSWHardeningNeeded" in capsys.readouterr().out
    tdx = attestation_data / "tdx"
    up_to_date = [
        "evidence",
        "verify",
        str(tdx / "phala_tdx_quote_v4.bin"),
        "--platform",
        "tdx",
        "--root",
        str(root),
        "--collateral",
        str(tdx / "phala_tdx_quote_v4.collateral.json"),
        "--json",
    ]
    assert main([*up_to_date, "--now", "2025-06-25T00:00:00Z"]) == 0
    assert '"tcb_status": "UpToDate"' in capsys.readouterr().out
    # The same collateral read today is past its next-update date: not verified.
    assert main(args) != 0
