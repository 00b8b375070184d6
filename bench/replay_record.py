"""What the shared replay record costs per request, alone: a thread-pool hop each vs group commit.

`--concurrency` request-like coroutines on one event loop each claim a fresh request
id in the store and await it, doing `--work-us` of CPU on the loop between claims
(as a request does while its record is written), `--requests` in all. Mode ``hop``
is the old worker path (`run_in_executor` of `StoreReplayGuard.check_and_record`
per request); ``group`` is `enclave_workers.replay.SharedReplayRecord`. Prints
ONE JSON line per mode and round: process CPU µs per request, the same less the
simulated work (the record's own cost, every thread), wall µs, store writes, and
the load average (the machine is shared: CPU time is the steadier figure).

Run: python bench/replay_record.py [--store memory|sqlite] [--requests 20000]
     [--concurrency 8] [--work-us 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from enclave_workers.replay import SharedReplayRecord
from infaas.envelope import StoreReplayGuard
from infaas.store import MetadataStore, open_store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Replay record cost per request (JSON lines).")
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--work-us", type=float, default=300.0, help="loop CPU per request")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of both modes")
    return p.parse_args(argv)


def _spin(us: float) -> None:
    """`us` of this thread's CPU (not wall time: the machine is shared)."""
    end = time.thread_time() + us / 1e6
    while time.thread_time() < end:
        pass


async def _drive(store: MetadataStore, mode: str, args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    guard = StoreReplayGuard(store, 300.0)
    record = SharedReplayRecord(store, 300.0)
    left = [args.requests]
    writes = [0]

    async def one() -> None:
        while left[0] > 0:
            left[0] -= 1
            rid, now = uuid.uuid4().hex, time.time()
            if mode == "hop":
                pending = loop.run_in_executor(None, guard.check_and_record, "acme", rid, now, now)
                writes[0] += 1
            else:
                pending = record.claim("acme", rid, now, now)
            await asyncio.sleep(0)  # the request's own awaits meanwhile
            _spin(args.work_us)
            await pending

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(args.concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    record.close()
    n = args.requests
    return {
        "cpu_us_per_request": round(cpu / n * 1e6, 1),
        "record_cpu_us_per_request": round(cpu / n * 1e6 - args.work_us, 1),
        "wall_us_per_request": round(wall / n * 1e6, 1),
        "store_writes": writes[0] if mode == "hop" else record.writes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for mode in ("hop", "group"):
                url = (
                    "memory://" if args.store == "memory" else f"sqlite:///{Path(tmp)}/{r}{mode}.db"
                )
                store = open_store(url)
                load = round(os.getloadavg()[0], 2)
                out = asyncio.run(_drive(store, mode, args))
                store.close()
                line = {
                    "bench": "replay_record",
                    "mode": mode,
                    "round": r,
                    "store": args.store,
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "work_us": args.work_us,
                    **out,
                    "loadavg_1m": load,
                }
                print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
