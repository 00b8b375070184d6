"""Cluster-scale experiments on the simulator that runs infaas's own decisions.

One JSON line per experiment on stdout, progress on stderr::

    python bench/sim.py run      # per-request simulation: every policy x CV 1 and 4
    python bench/sim.py alloc    # allocation time and cost as the fleet grows
    python bench/sim.py select   # per-request selection time with 10,000 variants
    python bench/sim.py all
    python bench/sim.py validate --results R.jsonl --store URL [--calibrate 0 1]

`run` replays synthetic fleets (`scheduler.fleet`: models in families,
variant numbers drawn around measured ones, tenants in SLO classes) on the
Azure LLM inference trace's shape (`bench/traces/azure_conv_2023_per_second.csv`,
minute means, one phase offset per class) with Gamma arrivals of CV 1 and 4
within each minute, through `scheduler.simulation.Simulation`. It reports SLO
attainment, replica-seconds against peak provisioning (the greedy plan for
every class's peak rate, held for the whole horizon), served accuracy and the
control tick's time. `alloc` times the allocation (`solve_greedy`,
`solve_milp`, `solve_decomposed`, `solve_auto`) on the fleet's demand at
several minutes of the trace, with each plan's cost over `lower_bound` (its
proven distance from optimal), the MILP's size in binaries and how often it
finished within its limit.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infaas.errors import NoFeasibleVariant
from infaas.settings import AutoscalerSettings
from infaas.types import SLO
from scheduler.allocation import (
    AllocationProblem,
    Demand,
    milp_binaries,
    solve_auto,
    solve_greedy,
    solve_milp,
)
from scheduler.control import with_overhead
from scheduler.decompose import lower_bound, solve_decomposed
from scheduler.fleet import (
    ClassLoad,
    Fleet,
    fleet,
    gamma_arrivals,
    peak_plan,
    peak_rates,
    shifted,
)
from scheduler.fluid import FluidSimulation
from scheduler.policy import Candidate, CandidateSet, LoadSnapshot, Query, VariantLoad, select
from scheduler.simulation import ServiceModel, Simulation

TRACE = Path(__file__).resolve().parent / "traces" / "azure_conv_2023_per_second.csv"
POLICIES = ("infaas", "infaas-style", "queue", "static-modelless", "static", "peak")
"""`peak`: static model-less on the peak plan's replica count (peak provisioning, simulated)."""
SIZES = ((10, 4), (25, 8), (50, 16), (100, 32), (200, 64))
CORES = 16
OVERHEAD_MS = 2.0
"""Request path per request on a replica (assumed; the 2-core bench calibrates 12 ms)."""


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def azure_shape(step_s: float) -> list[float]:
    """The trace's requests per second, averaged over `step_s` windows."""
    with TRACE.open() as f:
        counts = [float(r["requests"]) for r in csv.DictReader(f)]
    n = int(step_s)
    return [sum(counts[i : i + n]) / n for i in range(0, len(counts) - n + 1, n)]


def workload(f: Fleet, horizon_s: float, cv: float, seed: int, step_s: float) -> list[ClassLoad]:
    rng = random.Random(seed)
    shape = azure_shape(60.0)
    out = []
    for task, slo, rps in f.classes:
        rates = shifted(shape, step_s, rps, rng.randrange(len(shape)))
        out.append(ClassLoad(task, slo, gamma_arrivals(rates, horizon_s, cv, rng)))
    return out


def settings(policy: str, nodes: int, solver: str = "greedy") -> AutoscalerSettings:
    cpus = nodes * CORES
    return AutoscalerSettings(
        policy=policy,  # type: ignore[arg-type]
        min_replicas=1,
        max_replicas=cpus,
        cpu_budget=cpus,
        replica_memory_bytes=4 * 1024**3,
        max_replicas_per_pool=cpus,
        max_replicas_per_variant=cpus,
        static_replicas=max(1, cpus // 4),
        request_overhead_ms=OVERHEAD_MS,
        solver=solver,  # type: ignore[arg-type]
    )


def problem(f: Fleet, rates: dict[str, float], nodes: int, limit_s: float) -> AllocationProblem:
    ds = tuple(
        Demand(key, t, rates[key], s.latency_ms, s.min_accuracy)
        for t, s, _ in f.classes
        if (key := f"{t}|{s.latency_ms:g}|{s.min_accuracy:g}") in rates
    )
    return AllocationProblem(
        ds,
        f.candidates.all,
        cpu_budget=nodes * CORES,
        replica_memory_bytes=4 * 1024**3,
        max_replicas_per_pool=nodes * CORES,
        time_limit_s=limit_s,
    )


def exp_run(args: argparse.Namespace) -> None:
    models, nodes = args.models, args.nodes
    f = fleet(
        models,
        tenants=args.tenants or 10 * models,
        mean_rps=args.rps,
        seed=args.seed,
        pools=args.pools,
    )
    # the control loop and the workers see profiles with the request path added (as served)
    served = CandidateSet(
        Candidate.of(c.spec, with_overhead(c.profile, OVERHEAD_MS), c.pool) for c in f.candidates
    )
    warm = args.warmup if args.engine == "fluid" else 0.0
    end = warm + args.horizon
    for cv in args.cv:
        wl = workload(f, end, cv, args.seed, args.step)
        # peak provisioning on the profiles the simulated loop plans with (as served)
        peak = peak_plan(
            served,
            wl,
            peak_rates(wl, 10.0, warm),
            cpu_budget=nodes * CORES,
            replica_memory_bytes=4 * 1024**3,
        )
        peak_rs = len(peak.workers) * args.horizon
        for policy in args.policies:
            t0 = time.perf_counter()
            engine = FluidSimulation if args.engine == "fluid" else Simulation
            conf = settings("static-modelless" if policy == "peak" else policy, nodes, args.solver)
            if policy == "peak":  # the peak plan's replicas, every class's cheapest variant
                conf = conf.model_copy(update={"static_replicas": max(1, len(peak.workers))})
            sim = engine(
                served,
                f.pools,
                config=conf,
                nodes=nodes,
                cores_per_node=CORES,
                service=ServiceModel(request_overhead_ms=OVERHEAD_MS, replica_startup_s=5.0),
                **({"seed": args.seed} if args.engine == "events" else {}),
            )
            if args.engine == "fluid":
                res = sim.run(wl, end, measure_from_s=warm)  # type: ignore[call-arg]
            else:
                res = sim.run(wl, end)
            r = res.summary()
            r["policy"] = policy
            line = {
                "experiment": "run",
                "engine": args.engine,
                "models": f.models,
                "tenants": f.tenants,
                "classes": len(f.classes),
                "variants": len(f.candidates),
                "nodes": nodes,
                "cores_per_node": CORES,
                "cv": cv,
                "horizon_s": args.horizon,
                "warmup_s": warm,
                "seed": args.seed,
                "solver": args.solver,
                **r,
                "peak_replicas": len(peak.workers),
                "peak_replica_s": peak_rs,
                "replica_s_over_peak": round(r["replica_s"] / peak_rs, 3) if peak_rs else None,
                "decision_p99_us": round(1e6 * pct(getattr(sim, "decision_s", []), 0.99), 1),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(line), flush=True)
            log(policy, cv, r["attainment"], r["replica_s"], line["wall_s"])


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] if s else 0.0


@contextlib.contextmanager
def c_stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def exp_alloc(args: argparse.Namespace) -> None:
    shape = azure_shape(60.0)
    lines: list[dict[str, Any]] = []
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes] if args.sizes else SIZES
    for models, nodes in sizes:
        if models > args.max_models:
            continue
        f = fleet(models, tenants=10 * models, mean_rps=args.rps_per_model * models, seed=args.seed)
        rng = random.Random(args.seed)
        offsets = [rng.randrange(len(shape)) for _ in f.classes]
        mean = statistics.fmean(shape)
        times: dict[str, list[float]] = {"greedy": [], "decomposed": [], "auto": [], "milp": []}
        ratio: dict[str, list[float]] = {k: [] for k in times}
        binaries: list[int] = []
        finished: list[bool] = []
        auto_milp: list[bool] = []
        for minute in range(0, len(shape), max(1, len(shape) // args.snapshots)):
            rates = {
                f"{t}|{s.latency_ms:g}|{s.min_accuracy:g}": rps
                * shape[(minute + o) % len(shape)]
                / mean
                for (t, s, rps), o in zip(f.classes, offsets, strict=True)
            }
            p = problem(f, rates, nodes, args.milp_limit)
            lb = lower_bound(p)
            binaries.append(milp_binaries(p))
            solvers = {
                "greedy": solve_greedy,
                "decomposed": lambda q: solve_decomposed(q, "greedy"),
                "auto": solve_auto,
            }
            if models <= args.milp_max_models:
                solvers["milp"] = solve_milp
            for name, fn in solvers.items():
                with c_stdout_to_stderr():  # HiGHS writes notes to fd 1: keep stdout JSON
                    t0 = time.perf_counter()
                    a = fn(p)
                    times[name].append(time.perf_counter() - t0)
                ratio[name].append(
                    a.cost_per_s / lb if lb > 0 and not a.unserved_rps else float("nan")
                )
                if name == "milp":  # HiGHS proved its optimum within the limit
                    finished.append(not any("milp" in n for n in a.notes))
                if name == "auto":
                    auto_milp.append(not any(n.startswith("auto:") for n in a.notes))
        line: dict[str, Any] = {
            "experiment": "alloc",
            "models": models,
            "nodes": nodes,
            "classes": len(f.classes),
            "variants": len(f.candidates),
            "snapshots": len(times["greedy"]),
            "milp_binaries_p50": int(statistics.median(binaries)),
            "milp_binaries_max": max(binaries),
            "auto_chose_milp": f"{sum(auto_milp)}/{len(auto_milp)}",
        }
        if finished:
            line["milp_finished_in_limit"] = f"{sum(finished)}/{len(finished)}"
        for name in times:
            if times[name]:
                line[f"{name}_p50_ms"] = round(1000 * pct(times[name], 0.5), 1)
                line[f"{name}_p99_ms"] = round(1000 * pct(times[name], 0.99), 1)
                line[f"{name}_cost_over_bound_max"] = round(max(ratio[name]), 4)
        print(json.dumps(line), flush=True)
        log("alloc", models, nodes, line)
        lines.append(line)
    if args.plot:
        plot_alloc(lines, Path(args.plot))


def plot_alloc(lines: list[dict[str, Any]], path: Path) -> None:
    """Allocation p99 time and cost over the relaxation's bound, against the fleet's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, label in (
        ("greedy", "greedy"),
        ("milp", "MILP (1 s limit)"),
        ("decomposed", "per family"),
    ):
        pts = [
            (x["models"], x[f"{name}_p99_ms"], x[f"{name}_cost_over_bound_max"])
            for x in lines
            if f"{name}_p99_ms" in x
        ]
        if not pts:
            continue
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    ax1.axhline(1000, color="grey", ls="--", lw=0.8)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="models (on 4, 8, 16, 32, 64 nodes)",
        ylabel="allocation p99 (ms)",
    )
    ax2.set(xscale="log", xlabel="models", ylabel="cost / relaxation bound (max)")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def exp_select(args: argparse.Namespace) -> None:
    """`select` with 10,000 variants: 2,000 models in families of 5 (25 variants a task) and,
    the worst case, all 10,000 in one task. Each decision is timed 3 times, the least kept
    (the others' processes on a shared host preempt single runs); refusals are timed apart."""
    rng = random.Random(args.seed)
    for family in (5, 2000):
        f = fleet(2000, tenants=2000, mean_rps=1.0, seed=args.seed, family_size=family)
        tasks = f.candidates.tasks()
        # every variant loaded and idle: the decision's cost, not a cold start's refusal
        load = LoadSnapshot({c.variant_id: VariantLoad(1, 1) for c in f.candidates})
        ok: list[float] = []
        refused: list[float] = []
        n = args.requests if family < 2000 else max(1, args.requests // 10)
        for _ in range(n):
            task = rng.choice(tasks)
            slo = SLO(
                latency_ms=rng.choice((100.0, 200.0, 400.0)), min_accuracy=rng.uniform(0.5, 0.8)
            )
            best = float("inf")
            feasible = True
            for _ in range(3):
                t0 = time.perf_counter()
                try:
                    select(f.candidates, Query.for_task(task), slo, load)
                except NoFeasibleVariant:
                    feasible = False
                best = min(best, time.perf_counter() - t0)
            (ok if feasible else refused).append(best)
        line = {
            "experiment": "select",
            "variants": len(f.candidates),
            "variants_per_task": len(f.candidates) // len(tasks),
            "selected": len(ok),
            "p50_us": round(1e6 * pct(ok, 0.5), 1),
            "p99_us": round(1e6 * pct(ok, 0.99), 1),
            "refused": len(refused),
            "refused_p99_us": round(1e6 * pct(refused, 0.99), 1),
        }
        print(json.dumps(line), flush=True)


def exp_reach_sweep(args: argparse.Namespace) -> None:
    """Mean `select` time per task size, plain walk against the `AccuracyReach` walk (the same
    decisions, interleaved, best of 5 rounds): where the index starts to pay (`REACH_MIN`)."""
    rng = random.Random(args.seed)
    for per_task in (25, 50, 100, 200, 400, 800, 1600, 10000):
        f = fleet(per_task // 5, tenants=10, mean_rps=1.0, seed=args.seed, family_size=10**6)
        plain = CandidateSet(f.candidates, reach_min=10**9)
        indexed = CandidateSet(f.candidates, reach_min=0)
        load = LoadSnapshot({c.variant_id: VariantLoad(1, 1) for c in f.candidates})
        q = Query.for_task(f.candidates.tasks()[0])
        slos = [
            SLO(latency_ms=rng.choice((100.0, 200.0, 400.0)), min_accuracy=rng.uniform(0.5, 0.8))
            for _ in range(max(50, args.requests // 20))
        ]
        best = {"plain": math.inf, "indexed": math.inf}
        for _ in range(5):
            for name, cs in (("plain", plain), ("indexed", indexed)):
                t0 = time.perf_counter()
                for slo in slos:
                    with contextlib.suppress(NoFeasibleVariant):
                        select(cs, q, slo, load)
                best[name] = min(best[name], (time.perf_counter() - t0) / len(slos))
        line = {
            "experiment": "reach-sweep",
            "variants_per_task": len(f.candidates),
            "plain_us": round(1e6 * best["plain"], 2),
            "indexed_us": round(1e6 * best["indexed"], 2),
            "indexed_over_plain": round(best["indexed"] / best["plain"], 3),
        }
        print(json.dumps(line), flush=True)


def _replay(
    row: dict[str, Any], cfg: dict[str, Any], cands: Any, service: ServiceModel
) -> dict[str, Any]:
    """One `bench/slo.py` result row replayed in the simulator: same trace, seed and settings."""
    from bench.traces import read_trace  # the bench's own trace reader and arrival draw
    from infaas.settings import Pool

    trace = read_trace(TRACE.parent / f"{row['trace']}.csv").scaled(
        cfg.get("rate_scale", 1.0), cfg.get("time_scale", 1.0)
    )
    sent = trace.arrivals(int(row["seed"]), cfg.get("max_requests"))
    loads = [
        ClassLoad(
            c.task,
            SLO(latency_ms=c.latency_ms, min_accuracy=c.min_accuracy),
            [t for t, j in sent if j == i],
        )
        for i, c in enumerate(trace.classes)
    ]
    pool = Pool(name="cpu", num_cpus=cfg.get("replica_cpus", 1.0), cost_per_replica_s=1.0)
    conf = AutoscalerSettings(
        policy=row["policy"],
        max_replicas=cfg.get("max_replicas", 2),
        static_replicas=cfg.get("static_replicas", 2),
        **cfg.get("autoscaler", {}),
    ).for_pool(pool)
    sim = Simulation(
        cands,
        [pool],
        config=conf,
        nodes=1,
        cores_per_node=2.0,
        service=service,
        seed=int(row["seed"]),
    )
    return sim.run(loads, trace.duration_s).summary()


def exp_validate(args: argparse.Namespace) -> None:
    """Calibrate the service model on `--calibrate` seeds of real `bench/slo.py` rows, predict
    the other seeds; one line per predicted row, then the agreement (violations within 20 %,
    cost within 5 %, the policies ranked alike per trace and seed)."""
    import yaml

    from infaas.store import open_store
    from scheduler.control import with_overhead
    from scheduler.policy import CandidateSet

    raw = Path(args.config).read_bytes()
    cfg = yaml.safe_load(raw)
    sha = hashlib.sha256(raw).hexdigest()
    rows = [json.loads(x) for x in Path(args.results).read_text().splitlines() if x.strip()]
    # only the runs made under this very config: others ran under other constants
    rows = [
        r
        for r in rows
        if "violations" in r and not r.get("smoke") and r.get("config_sha256") == sha
    ]
    store = open_store(args.store)
    variants, profiles = store.list_variants(), store.list_profiles()
    from infaas.settings import Pool

    pool = Pool(name="cpu", num_cpus=cfg.get("replica_cpus", 1.0), cost_per_replica_s=1.0)
    calib = [r for r in rows if r["seed"] in args.calibrate]
    held = [r for r in rows if r["seed"] not in args.calibrate]
    best: tuple[float, float, float] | None = None
    for overhead in (4.0, 8.0, 12.0, 16.0, 24.0):
        cands = CandidateSet.build(variants, [with_overhead(p, overhead) for p in profiles], [pool])
        for startup in (2.0, 5.0, 10.0):
            service = ServiceModel(request_overhead_ms=overhead, replica_startup_s=startup)
            err = 0.0
            for r in calib:
                pred = _replay(r, cfg, cands, service)
                err += abs(pred["violations"] - r["violations"]) / max(1, r["violations"])
            log("calibrate", overhead, startup, round(err, 3))
            if best is None or err < best[0]:
                best = (err, overhead, startup)
    if best is None:
        raise SystemExit("no calibration rows (--calibrate names seeds absent from --results)")
    _, overhead, startup = best
    cands = CandidateSet.build(variants, [with_overhead(p, overhead) for p in profiles], [pool])
    service = ServiceModel(request_overhead_ms=overhead, replica_startup_s=startup)
    ok_v = ok_c = 0
    ranks: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for r in held:
        pred = _replay(r, cfg, cands, service)
        ev = abs(pred["violations"] - r["violations"]) / max(1, r["violations"])
        ec = abs(pred["replica_s"] - r["cost_replica_s"]) / max(1e-9, r["cost_replica_s"])
        ok_v += ev <= 0.2
        ok_c += ec <= 0.05
        ranks.setdefault((r["trace"], r["seed"]), []).append(
            (r["policy"], r["violations"], pred["violations"])
        )
        print(
            json.dumps(
                {
                    "experiment": "validate",
                    "policy": r["policy"],
                    "trace": r["trace"],
                    "seed": r["seed"],
                    "violations": r["violations"],
                    "predicted_violations": pred["violations"],
                    "cost_replica_s": r["cost_replica_s"],
                    "predicted_replica_s": pred["replica_s"],
                    "violations_error": round(ev, 3),
                    "cost_error": round(ec, 3),
                }
            ),
            flush=True,
        )
    same_rank = sum(
        [p for p, _, _ in sorted(g, key=lambda x: x[1])]
        == [p for p, _, _ in sorted(g, key=lambda x: x[2])]
        for g in ranks.values()
    )
    print(
        json.dumps(
            {
                "experiment": "validate-summary",
                "calibrated_on_seeds": args.calibrate,
                "request_overhead_ms": overhead,
                "replica_startup_s": startup,
                "predicted_rows": len(held),
                "violations_within_20pct": ok_v,
                "cost_within_5pct": ok_c,
                "ranked_alike": f"{same_rank}/{len(ranks)}",
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("experiment", choices=("run", "alloc", "select", "validate", "all"))
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--tenants", type=int, default=0, help="default: 10 per model")
    ap.add_argument("--rps", type=float, default=300.0, help="run: the fleet's mean request rate")
    ap.add_argument("--horizon", type=float, default=300.0, help="run: simulated seconds")
    ap.add_argument(
        "--warmup",
        type=float,
        default=120.0,
        help="run, fluid: simulated seconds before the horizon, not counted (the fleet starts "
        "with one replica a pool and every variant cold; peak provisioning is up from the start)",
    )
    ap.add_argument("--step", type=float, default=10.0, help="run: simulated s per trace minute")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument(
        "--engine",
        choices=("events", "fluid"),
        default="events",
        help="run: per-request events, or per-window aggregates (scheduler.fluid)",
    )
    ap.add_argument("--cv", nargs="+", type=float, default=[1.0, 4.0], help="run: arrival CVs")
    ap.add_argument(
        "--pools",
        nargs="+",
        default=["cpu"],
        help="run: pools of the fleet (cpu amx gpu; the control loop's plan is per pool)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--solver",
        choices=("auto", "greedy", "milp"),
        default="auto",
        help="run: infaas's allocation (auto: the MILP where small, greedy at fleet sizes)",
    )
    ap.add_argument("--max-models", type=int, default=200, help="alloc: largest fleet")
    ap.add_argument(
        "--sizes", nargs="+", help="alloc: fleets as MODELSxNODES (default 10x4 ... 200x64)"
    )
    ap.add_argument("--rps-per-model", type=float, default=250.0, help="alloc: mean load")
    ap.add_argument("--snapshots", type=int, default=20, help="alloc: demand snapshots per size")
    ap.add_argument("--milp-limit", type=float, default=1.0, help="alloc: MILP time limit, s")
    ap.add_argument("--milp-max-models", type=int, default=25, help="alloc: MILP up to this size")
    ap.add_argument("--plot", help="alloc: write the scaling plot here (PNG)")
    ap.add_argument("--requests", type=int, default=20000, help="select: decisions timed")
    ap.add_argument(
        "--reach-sweep",
        action="store_true",
        help="select: also time the plain and the indexed walk as one task's group grows",
    )
    ap.add_argument("--results", help="validate: bench/slo.py result rows (JSON lines)")
    ap.add_argument("--config", default="configs/slo-eval.yaml", help="validate: their config")
    ap.add_argument("--store", help="validate: the store URL of their runs (the zoo's profiles)")
    ap.add_argument("--calibrate", nargs="+", type=int, default=[0, 1], help="validate: seeds")
    args = ap.parse_args()
    if args.experiment == "validate":
        exp_validate(args)
        return
    if args.experiment in ("select", "all"):
        exp_select(args)
        if args.reach_sweep:
            exp_reach_sweep(args)
    if args.experiment in ("alloc", "all"):
        exp_alloc(args)
    if args.experiment in ("run", "all"):
        exp_run(args)


if __name__ == "__main__":
    main()
