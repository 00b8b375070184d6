"""Instructions per variant selection, counted by callgrind: a figure machine load cannot move.

Wall-clock timings of `select` swing by tens of percent on a shared 2-core machine;
the number of instructions the interpreter executes for it does not. This runs a
driver under ``valgrind --tool=callgrind`` twice per tree, with 0 and with
``--selects`` calls over the workload of ``bench/scheduler.py`` (100 variants,
seed 7, PYTHONHASHSEED=0), and reports the difference per call, so set-up and imports cancel out.
Give ``--baseline-tree`` (another checkout, e.g. a ``git worktree`` of an older
commit) for a same-run ratio.

Run: python bench/select_instructions.py [--selects 4000] [--baseline-tree PATH]
Prints one JSON line. Needs valgrind (Debian's package); takes minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def drive(tree: Path, selects: int) -> None:
    """The measured process: build bench/scheduler.py's selection workload, then select."""
    sys.path.insert(0, str(tree))
    spec = importlib.util.spec_from_file_location("sch", tree / "bench" / "scheduler.py")
    assert spec is not None and spec.loader is not None
    sch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sch)
    rng = random.Random(7)
    specs, profiles = sch.zoo(100, 1, rng)
    cs = sch.CandidateSet.build(specs, profiles, sch.POOLS)
    loads = [sch.random_load(specs, rng) for _ in range(16)]
    q = sch.Query.for_task("task0")
    requests = []
    while len(requests) < 2000:
        slo = sch.SLO(latency_ms=rng.uniform(10, 400), min_accuracy=rng.uniform(0.0, 0.78))
        load = loads[len(requests) % 16]
        try:
            sch.select(cs, q, slo, load)
        except sch.NoFeasibleVariant:
            continue
        requests.append((slo, load))
    for i in range(selects):
        sch.select(cs, q, *requests[i % len(requests)])


def instructions(tree: Path, selects: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--drive",
            str(tree),
            "--selects",
            str(selects),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # string hashing moves counts by ~5%
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def per_select(tree: Path, selects: int) -> float:
    print(f"counting {tree} ...", file=sys.stderr, flush=True)
    return (instructions(tree, selects) - instructions(tree, 0)) / selects


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--selects", type=int, default=4000, help="selections counted")
    p.add_argument("--baseline-tree", type=Path, help="another checkout to compare against")
    p.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive is not None:
        drive(args.drive, args.selects)
        return 0
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt-get install valgrind)")
    out: dict[str, object] = {"bench": "select_instructions", "selects": args.selects}
    ours = per_select(REPO, args.selects)
    out["instructions_per_select"] = round(ours)
    if args.baseline_tree is not None:
        base = per_select(args.baseline_tree.resolve(), args.selects)
        out["baseline_instructions_per_select"] = round(base)
        out["ratio_vs_baseline"] = round(ours / base, 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
