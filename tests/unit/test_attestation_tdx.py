"""TDX identity in policy: RTMRs, MRCONFIGID, MROWNER(CONFIG), TD attributes, SEPT_VE_DISABLE,
on genuine quotes v4 and v5."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from infaas.attestation import AttestationPolicy, load_roots, verify_quote
from infaas.attestation.quote import TdReport
from infaas.attestation.verify import VerifiedQuote

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
V4 = "tdx/phala_tdx_quote_v4.bin"
V5 = "tdx/go_tdx_guest_quote_v5.bin"
NO_SEPT = "tdx/go_tdx_guest_spr_e4_quote_v4_trailer.bin"
TDX_RULES = [
    "tdx_mr_config_id",
    "tdx_mr_owner",
    "tdx_mr_owner_config",
    "tdx_rtmr0",
    "tdx_rtmr1",
    "tdx_rtmr2",
    "tdx_rtmr3",
]


def _verified(d: Path, name: str) -> VerifiedQuote:
    roots = load_roots((d / "roots/intel_sgx_root_ca.pem").read_bytes())
    # the v5 sample's PCK certificate is valid from 2026-01-27
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC) if name == V5 else NOW
    return verify_quote((d / name).read_bytes(), roots, now=now)


def _pinning(td: TdReport, **over: object) -> AttestationPolicy:
    """A policy pinning every TD identity field of `td` (what an operator records)."""
    tdx = {
        "mr_config_id": [td.mr_config_id.hex()],
        "mr_owner": [td.mr_owner.hex()],
        "mr_owner_config": [td.mr_owner_config.hex()],
        **{f"rtmr{i}": [td.rtmrs[i].hex()] for i in range(4)},
        "td_attributes": td.td_attributes.hex(),
    }
    if td.mr_servicetd is not None:
        tdx["mr_servicetd"] = [td.mr_servicetd.hex()]
    tdx.update(over)  # type: ignore[arg-type]
    doc = {"attestation": {"allowed_measurements": [td.mr_td.hex()], "tdx": tdx}}
    return AttestationPolicy.model_validate(yaml.safe_load(yaml.safe_dump(doc))["attestation"])


@pytest.mark.parametrize("name,version", [(V4, 4), (V5, 5)])
def test_every_td_identity_field_is_a_named_rule(
    attestation_data: Path, name: str, version: int
) -> None:
    v = _verified(attestation_data, name)
    assert v.quote.header.version == version
    td = v.quote.body
    assert isinstance(td, TdReport)
    verdict = _pinning(td).evaluate(v, None, NOW.timestamp())
    names = [c.name for c in verdict.checks]
    assert {*TDX_RULES, "tdx_td_attributes", "sept_ve_disable"} <= set(names)
    assert ("tdx_mr_servicetd" in names) == (version == 5)
    assert verdict.ok, verdict.failures


@pytest.mark.parametrize("name", [V4, V5])
@pytest.mark.parametrize("field", [r[4:] for r in TDX_RULES])
def test_a_different_td_identity_is_refused_by_name(
    attestation_data: Path, name: str, field: str
) -> None:
    v = _verified(attestation_data, name)
    assert isinstance(v.quote.body, TdReport)
    policy = _pinning(v.quote.body, **{field: ["ab" * 48]})
    failures = policy.evaluate(v, None, NOW.timestamp()).failures
    assert [c.name for c in failures] == [f"tdx_{field}"]


def test_td_attributes_under_mask(attestation_data: Path) -> None:
    v = _verified(attestation_data, V4)
    assert isinstance(v.quote.body, TdReport)
    want_debug = (0x10000001).to_bytes(8, "little").hex()
    failures = _pinning(v.quote.body, td_attributes=want_debug).evaluate(v, None, 0).failures
    assert [c.name for c in failures] == ["tdx_td_attributes"]
    # the mask leaves the DEBUG bit out of the comparison
    masked = _pinning(v.quote.body, td_attributes=want_debug, td_attributes_mask="feffffffffffffff")
    assert masked.evaluate(v, None, 0).ok


def test_sept_ve_disable_required_by_default(attestation_data: Path) -> None:
    v = _verified(attestation_data, NO_SEPT)
    verdict = AttestationPolicy.cli_default().evaluate(v, None, NOW.timestamp())
    assert [c.name for c in verdict.failures] == ["sept_ve_disable"]
    lax = AttestationPolicy.model_validate(
        {"any_measurement": True, "tdx": {"require_sept_ve_disable": False}}
    )
    assert lax.evaluate(v, None, NOW.timestamp()).ok


def test_tdx_policy_rejects_malformed_values() -> None:
    with pytest.raises(ValueError, match="rtmr1"):
        AttestationPolicy.model_validate({"tdx": {"rtmr1": ["00" * 32]}})
    with pytest.raises(ValueError, match="extra"):
        AttestationPolicy.model_validate({"tdx": {"rtmr9": ["00" * 48]}})
