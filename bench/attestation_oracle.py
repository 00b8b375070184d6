"""dcap-qvl as a differential oracle over EVERY byte of the genuine SGX/TDX quotes with
collateral: one JSON line per quote (flips, agreements, where we are stricter, time per
flip of each verifier). Exit 1 if we ever accept what dcap-qvl refuses or disagree on the
TCB status (tests/dcap_oracle.py; the CI test samples the PCK chain's bytes).

Run: python bench/attestation_oracle.py [--vectors DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dcap_oracle import CASES, sweep

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "attestation"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = ap.parse_args()
    failed = False
    for quote, collateral in CASES:
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            # a flipped byte inside a certificate's name makes cryptography warn as it refuses
            warnings.simplefilter("ignore", UserWarning)
            r = sweep(args.vectors, quote, collateral)
        problems = r.problems()
        failed |= bool(problems)
        line = {
            "bench": "attestation_oracle",
            "quote": quote,
            "bytes": r.size,
            "flips": r.flips,
            "agreed": r.agreed,
            "stricter": len(r.stricter),
            "problems": problems[:10],
            "checks_named": sorted(r.checks_named),
            "ours_ms_per_flip": round(1000 * r.ours_s / r.flips, 3),
            "dcap_qvl_ms_per_flip": round(1000 * r.theirs_s / r.flips, 3),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
        }
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
