"""dcap-qvl (the Rust DCAP verifier) as a differential oracle on genuine quotes with collateral:
for the quote and for one bit flipped at a byte (see STRIDE), we never accept what it refuses, and
when both accept they agree on the TCB status.

Where we refuse and dcap-qvl accepts, the byte lies in data dcap-qvl does not read: the
copy of Intel's root certificate the quote carries (it trusts its own root), the bytes
around and between the PEM blocks, and TDX's outer certification-data type. Refusing
mutated evidence there is deliberate; the test pins that this is the only difference.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from infaas.attestation import inspect_quote, load_roots, parse_quote

dcap_qvl = pytest.importorskip("dcap_qvl", reason="dcap-qvl (dev extra) is not installed")

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
CASES = [
    ("sgx/phala_sgx_quote_v3.bin", "sgx/phala_sgx_quote_v3.collateral.json"),
    ("tdx/phala_tdx_quote_v4.bin", "tdx/phala_tdx_quote_v4.collateral.json"),
]
# bounded CI time: every 3rd byte up to the PEM chain, every 13th inside it; with
# STRIDE = CHAIN_STRIDE = 1 (every byte, about 60 s on 2 cores) the test passes as well
STRIDE = 3
CHAIN_STRIDE = 13


# a flipped byte inside a certificate's name makes cryptography warn while it refuses it
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("quote,collateral", CASES)
def test_agrees_with_dcap_qvl_on_every_flipped_byte(
    attestation_data: Path, quote: str, collateral: str
) -> None:
    raw = (attestation_data / quote).read_bytes()
    col_json = (attestation_data / collateral).read_text()
    col = json.loads(col_json)
    oracle_col = dcap_qvl.QuoteCollateralV3.from_json(col_json)
    roots = load_roots((attestation_data / "roots/intel_sgx_root_ca.pem").read_bytes())
    regions = parse_quote(raw).regions
    chain_start = regions["cert_chain"][0]

    def ours(b: bytes) -> tuple[bool, str | None]:
        _, v = inspect_quote(b, roots, now=NOW, collateral=col)
        return (v is not None, v.tcb.status if v is not None and v.tcb else None)

    def theirs(b: bytes) -> tuple[bool, str | None]:
        try:
            r = dcap_qvl.verify(b, oracle_col, int(NOW.timestamp()))
        except ValueError:
            return (False, None)
        return (True, str(r.status))

    assert ours(raw) == theirs(raw) and ours(raw)[0]
    stricter: list[int] = []
    positions = [*range(0, chain_start, STRIDE), *range(chain_start, len(raw), CHAIN_STRIDE)]
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        a, b = ours(bytes(bad)), theirs(bytes(bad))
        if a == b:
            continue
        assert not a[0], f"byte {pos}: we accept what dcap-qvl refuses ({b})"
        stricter.append(pos)
    outer_type = (regions["attestation_key"][1], regions["attestation_key"][1] + 2)
    for pos in stricter:
        assert pos >= regions["qe_auth_data"][1] or outer_type[0] <= pos < outer_type[1], pos
