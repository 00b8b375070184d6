"""The allocation at fleet scale: one program per model family, and a bound on any plan.

`scheduler.allocation.solve_milp` states the whole fleet as one MILP; its
worker slots are symmetric binaries, and HiGHS needs seconds to close the gap
even on two families (see `bench/sim.py alloc`). A class is only ever served by
its own task's variants, so the problem splits by task except for two
couplings: the CPU budget, and variants of different tasks sharing a replica.

`solve_decomposed` keeps the first and drops the second: each family gets the
CPUs its greedy plan needs (scaled down in proportion when the fleet's greedy
needs more than the budget), and its own MILP under a time limit of its share
of `time_limit_s`, falling back to its greedy plan (as `solve_milp` does).
Replicas are not shared across families: that costs at most the remainder
replica of each family and pool, which the measured gap to `lower_bound` shows.

`lower_bound` is the cost of the linear relaxation's optimum when nothing is
shed: every class on the variant with the least price per request at its SLO,
replica time at exactly the target utilisation. Every feasible plan that
serves all demand costs at least this; ``plan.cost_per_s / lower_bound(p)`` is
its proven distance from optimal.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from scheduler.allocation import (
    Allocation,
    AllocationProblem,
    WorkerPlan,
    eligible,
    solve_greedy,
    solve_milp,
)

__all__ = ["lower_bound", "solve_decomposed"]


def lower_bound(p: AllocationProblem) -> float:
    """Price per second no plan serving all of `p`'s demand can go below."""
    total = 0.0
    for d in p.demands:
        if d.arrival_rps <= 0:
            continue
        best = math.inf
        for c in p.candidates:
            if c.spec.task != d.task:
                continue
            mu = eligible(d, c, p.replica_memory_bytes)
            if mu > 0:
                best = min(best, c.pool.cost_per_replica_s / (p.target_utilisation * mu))
        if math.isfinite(best):
            total += d.arrival_rps * best
    return total


def _cpus(a: Allocation, p: AllocationProblem) -> float:
    cpus = {c.pool.name: c.pool.num_cpus for c in p.candidates}
    return sum(cpus[w.pool] for w in a.workers)


def solve_decomposed(p: AllocationProblem, method: str = "milp") -> Allocation:
    """One `solve_milp` (or greedy) per task, CPUs split by each family's greedy need."""
    t0 = time.perf_counter()
    tasks = sorted({d.task for d in p.demands})
    parts: dict[str, AllocationProblem] = {}
    need: dict[str, float] = {}
    for task in tasks:
        sub = replace(
            p,
            demands=tuple(d for d in p.demands if d.task == task),
            candidates=tuple(c for c in p.candidates if c.spec.task == task),
        )
        parts[task] = sub
        need[task] = max(_cpus(solve_greedy(sub), p), 1e-9)
    scale = min(1.0, p.cpu_budget / sum(need.values())) if need else 1.0
    workers: list[WorkerPlan] = []
    routes: dict[str, tuple[tuple[str, float], ...]] = {}
    unserved: dict[str, float] = {}
    notes: list[str] = []
    cost = 0.0
    methods: set[str] = set()
    left = p.time_limit_s - (time.perf_counter() - t0)
    for i, task in enumerate(tasks):
        # each family's budget: what its greedy plan needs, at most its share of the fleet's
        limit = max(1e-3, left / (len(tasks) - i))
        sub = replace(parts[task], cpu_budget=need[task] * scale, time_limit_s=limit)
        t1 = time.perf_counter()
        a = solve_milp(sub) if method == "milp" else solve_greedy(sub)
        left -= time.perf_counter() - t1
        workers += a.workers
        routes.update(a.routes)
        unserved.update(a.unserved_rps)
        notes += [f"{task}: {n}" for n in a.notes]
        cost += a.cost_per_s
        methods.add(a.method)
    return Allocation(
        workers=tuple(workers),
        routes=routes,
        unserved_rps=unserved,
        cost_per_s=cost,
        method="decomposed-" + "+".join(sorted(methods)),
        notes=tuple(notes),
    )
