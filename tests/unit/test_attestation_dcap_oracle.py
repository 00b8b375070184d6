"""dcap-qvl as a differential oracle on the genuine SGX/TDX quotes with collateral
(tests/dcap_oracle.py): one bit flipped at every byte of the signed quote before the PCK
chain, and at every CHAIN_STRIDE-th byte of the chain; never accept what dcap-qvl refuses,
and name the failed check of every refusal.

Every byte of the chain too is ``python bench/attestation_oracle.py`` (about a minute of
CPU: too long for the suite's budget, the same comparison).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("dcap_qvl", reason="dcap-qvl (dev extra) is not installed")

from tests.dcap_oracle import CASES, sweep

CHAIN_STRIDE = 13


# a flipped byte inside a certificate's name makes cryptography warn while it refuses it
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("quote,collateral", CASES)
def test_agrees_with_dcap_qvl_on_flipped_bytes(
    attestation_data: Path, quote: str, collateral: str
) -> None:
    result = sweep(attestation_data, quote, collateral, positions=f"signed+chain/{CHAIN_STRIDE}")
    assert result.flips >= result.chain_start  # every byte before the chain was flipped
    assert result.problems() == []
    assert result.agreed > result.flips // 2
    assert {"quote_signature", "qe_report_signature", "pck_chain"} <= result.checks_named
