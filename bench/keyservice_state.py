"""Key-service state (rollback-protected log) costs; prints ONE JSON line.

On a SQLite store with the simulated counter (a file under simulated-tee/, synced
on each advance), as a deployment runs it:

- write: seconds per record write (log entry + record + counter), p50 / p99;
- read: seconds per record read (counter check, record, digest, AES-GCM open), p50
  / p99, and its ratio to a bare read of the same record in the same run (store get
  + AES-GCM open, what a read cost before the log: >1 means slower);
- start: seconds to open the state (replay the log up to the counter and check every
  record), and per log entry.

Run: python bench/keyservice_state.py [--entries N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infaas.envelope import new_key
from infaas.keyservice.counter import SimulatedCounter
from infaas.keyservice.state import SealedRecords
from infaas.logs import configure_logging
from infaas.store import SealedTable, open_store


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def run(entries: int, reads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        store = open_store(f"sqlite:///{data / 'infaas.db'}")
        kek, counter = new_key(), SimulatedCounter(data)
        records = SealedRecords(store, kek, counter)
        writes = []
        for i in range(entries):
            t = time.perf_counter()
            records.put(SealedTable.PRINCIPAL, f"p{i % 200}", {"id": f"p{i}", "grants": [i]})
            writes.append(time.perf_counter() - t)
        aead = AESGCM(kek)
        ad = f"infaas-keyservice/v2\x1f{SealedTable.PRINCIPAL.value}\x1fp7".encode()
        logged, bare = [], []
        for _ in range(reads):
            t = time.perf_counter()
            records.get(SealedTable.PRINCIPAL, "p7")
            logged.append(time.perf_counter() - t)
            t = time.perf_counter()
            blob = store.get_sealed(SealedTable.PRINCIPAL, "p7")
            assert blob is not None
            aead.decrypt(blob[:12], blob[12:], ad)
            bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        again = SealedRecords(store, kek, counter)
        start = time.perf_counter() - t
        assert again.head == records.head
        store.close()
    return {
        "write_p50_s": statistics.median(writes),
        "write_p99_s": _pct(writes, 0.99),
        "read_p50_s": statistics.median(logged),
        "read_p99_s": _pct(logged, 0.99),
        "read_ratio_vs_bare": statistics.median(logged) / statistics.median(bare),
        "start_s": start,
        "start_per_entry_s": start / entries,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=2000, help="log entries written")
    p.add_argument("--reads", type=int, default=2000, help="reads timed per run")
    p.add_argument("--runs", type=int, default=3, help="independent runs")
    args = p.parse_args(argv)
    configure_logging(level=logging.WARNING)
    runs = [run(args.entries, args.reads) for _ in range(args.runs)]
    out: dict[str, object] = {
        "bench": "keyservice_state",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "entries": args.entries,
        "runs": args.runs,
    }
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_spread"] = max(values) - min(values)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
