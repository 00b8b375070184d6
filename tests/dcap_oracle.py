"""dcap-qvl (the Rust DCAP verifier) as a differential oracle on genuine quotes with collateral.

For the quote and for one bit flipped at each chosen byte, our verifier must never accept
what dcap-qvl refuses, and when both accept they must agree on the TCB status; each of
our refusals names the failed check.

Where we refuse and dcap-qvl accepts, the byte lies in data dcap-qvl does not read: the
copy of Intel's root certificate the quote carries (it trusts its own root), the bytes
around and between the PEM blocks, and TDX's outer certification-data type. Refusing
mutated evidence there is deliberate; `Sweep.problems` allows exactly that difference.

Shared by the CI test (every byte before the PCK chain, the chain sampled) and
``bench/attestation_oracle.py`` (every byte, timed).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dcap_qvl

from infaas.attestation import inspect_quote, load_roots, parse_quote

NOW = dt.datetime(2025, 6, 20, tzinfo=dt.UTC)
CASES = (
    ("sgx/phala_sgx_quote_v3.bin", "sgx/phala_sgx_quote_v3.collateral.json"),
    ("tdx/phala_tdx_quote_v4.bin", "tdx/phala_tdx_quote_v4.collateral.json"),
)

Outcome = tuple[bool, str | None]
"""(verifies, TCB status)"""


@dataclass
class Sweep:
    """The outcome of one quote's sweep."""

    quote: str
    size: int
    chain_start: int
    flips: int = 0
    agreed: int = 0
    genuine: tuple[Outcome, Outcome] = ((False, None), (False, None))
    accepted_refused: list[int] = field(default_factory=list)
    """Bytes where we accept what dcap-qvl refuses (or report another TCB status)."""
    stricter: list[int] = field(default_factory=list)
    """Bytes where we refuse what dcap-qvl accepts."""
    unnamed: list[int] = field(default_factory=list)
    """Bytes where we refuse without naming a failed check."""
    checks_named: set[str] = field(default_factory=set)
    """The failed checks the refusals named."""
    stricter_allowed: Callable[[int], bool] = lambda _pos: False
    ours_s: float = 0.0
    theirs_s: float = 0.0

    def problems(self) -> list[str]:
        out = []
        ours, theirs = self.genuine
        if not (ours == theirs and ours[0]):
            out.append(f"genuine quote: ours {ours}, dcap-qvl {theirs}")
        out += [f"byte {p}: we accept what dcap-qvl refuses" for p in self.accepted_refused]
        out += [f"byte {p}: refused without naming the check" for p in self.unnamed]
        out += [
            f"byte {p}: refused outside the data dcap-qvl ignores"
            for p in self.stricter
            if not self.stricter_allowed(p)
        ]
        return out


def sweep(data_dir: Path, quote: str, collateral: str, positions: str = "all") -> Sweep:
    """Flip bit 0 of each byte `positions` names ("all", or "signed+chain/N": every byte
    before the PCK chain and every N-th inside it) and compare both verifiers."""
    raw = (data_dir / quote).read_bytes()
    col_json = (data_dir / collateral).read_text()
    col = json.loads(col_json)
    oracle_col = dcap_qvl.QuoteCollateralV3.from_json(col_json)
    roots = load_roots((data_dir / "roots/intel_sgx_root_ca.pem").read_bytes())
    regions = parse_quote(raw).regions
    chain_start = regions["cert_chain"][0]
    outer_type = (regions["attestation_key"][1], regions["attestation_key"][1] + 2)
    result = Sweep(
        quote,
        len(raw),
        chain_start,
        stricter_allowed=lambda p: (
            p >= regions["qe_auth_data"][1] or outer_type[0] <= p < outer_type[1]
        ),
    )

    failed: list[str] = []

    def ours(b: bytes) -> Outcome:
        checks, v = inspect_quote(b, roots, now=NOW, collateral=col)
        failed[:] = [c.name for c in checks if not c.ok]
        return (v is not None, v.tcb.status if v is not None and v.tcb else None)

    def theirs(b: bytes) -> Outcome:
        try:
            r = dcap_qvl.verify(b, oracle_col, int(NOW.timestamp()))
        except ValueError:
            return (False, None)
        return (True, str(r.status))

    result.genuine = (ours(raw), theirs(raw))
    picked: Iterable[int] = range(len(raw))
    if positions != "all":
        stride = int(positions.rpartition("/")[2])
        picked = [*range(chain_start), *range(chain_start, len(raw), stride)]
    for pos in picked:
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        t0 = time.perf_counter()
        a = ours(bytes(bad))
        t1 = time.perf_counter()
        b = theirs(bytes(bad))
        result.ours_s += t1 - t0
        result.theirs_s += time.perf_counter() - t1
        result.flips += 1
        if not a[0]:
            result.checks_named.update(failed)
            if not failed:
                result.unnamed.append(pos)
        if a == b:
            result.agreed += 1
        elif a[0]:
            result.accepted_refused.append(pos)
        else:
            result.stricter.append(pos)
    return result
