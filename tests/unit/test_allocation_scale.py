"""The allocation at fleet scale: the greedy plan and the per-family plan are feasible, no plan
costs less than `lower_bound`, and on small instances they stay within a stated factor of the
MILP's plan."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from scheduler.allocation import (
    Allocation,
    AllocationProblem,
    Demand,
    eligible,
    milp_binaries,
    solve,
    solve_auto,
    solve_greedy,
    solve_milp,
)
from scheduler.decompose import lower_bound, solve_decomposed
from scheduler.fleet import fleet


def small(seed: int, models: int = 6, rps: float = 400.0, cpus: int = 32) -> AllocationProblem:
    f = fleet(models, tenants=30, mean_rps=rps, seed=seed, family_size=3)
    rng = random.Random(seed)
    demands = tuple(
        Demand(
            f"{t}|{s.latency_ms:g}|{s.min_accuracy:g}",
            t,
            r * rng.uniform(0.5, 2.0),
            s.latency_ms,
            s.min_accuracy,
        )
        for t, s, r in f.classes
    )
    return AllocationProblem(
        demands,
        f.candidates.all,
        cpu_budget=cpus,
        replica_memory_bytes=4 * 1024**3,
        max_replicas_per_pool=cpus,
        time_limit_s=1.0,
    )


def assert_feasible(p: AllocationProblem, a: Allocation) -> None:
    """Every routed request has replica time on a variant its class may use; no replica over
    the utilisation target or its memory; the CPU budget holds."""
    by_id = {c.variant_id: c for c in p.candidates}
    cpus = 0.0
    time_of: dict[str, float] = {}
    for w in a.workers:
        assert sum(w.shares) <= p.target_utilisation + 1e-6
        assert sum(by_id[v].peak_memory_bytes for v in w.variants) <= p.replica_memory_bytes
        assert all(by_id[v].pool.name == w.pool for v in w.variants)
        cpus += by_id[w.variants[0]].pool.num_cpus
        for v, s in zip(w.variants, w.shares, strict=True):
            time_of[v] = time_of.get(v, 0.0) + s
    assert cpus <= p.cpu_budget + 1e-6
    need: dict[str, float] = {}
    for d in p.demands:
        routed = sum(r for _, r in a.routes.get(d.demand_id, ()))
        assert routed + a.unserved_rps.get(d.demand_id, 0.0) == pytest.approx(
            d.arrival_rps, abs=1e-6
        )
        for v, r in a.routes.get(d.demand_id, ()):
            mu = eligible(d, by_id[v], p.replica_memory_bytes)
            assert mu > 0, f"{d.demand_id} routed to {v}, which may not serve it"
            need[v] = need.get(v, 0.0) + r / mu
    for v, t in need.items():
        assert time_of.get(v, 0.0) >= t - 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_plans_are_feasible_and_bounded(seed: int) -> None:
    p = small(seed)
    lb = lower_bound(p)
    greedy, milp, per_family = solve_greedy(p), solve_milp(p), solve_decomposed(p)
    for a in (greedy, milp, per_family):
        assert_feasible(p, a)
        assert not a.unserved_rps
        assert a.cost_per_s >= lb - 1e-6  # the relaxation bounds every plan
    # the stated bounds: greedy packs whole replicas and first-fit remainders, so it pays at
    # most twice the relaxation plus one replica per pool; the MILP is never worse than it
    pools = {c.pool.name: c.pool.cost_per_replica_s for c in p.candidates}
    assert greedy.cost_per_s <= 2 * lb + sum(pools.values())
    assert milp.cost_per_s <= greedy.cost_per_s + 1e-6
    assert greedy.cost_per_s <= 2 * milp.cost_per_s + sum(pools.values())


def test_lower_bound_is_the_relaxation_by_hand() -> None:
    """One class, 100 rps, variants of 40 and 100 rps per replica at 0.7 utilisation on a
    pool at 1/s: the relaxation's cost is 100 / (0.7 * 100) = 1.4286 per second."""
    p = small(0)
    c = max(p.candidates, key=lambda c: eligible(p.demands[0], c, p.replica_memory_bytes))
    mu = eligible(p.demands[0], c, p.replica_memory_bytes)
    d = Demand("x", p.demands[0].task, mu, p.demands[0].latency_ms, p.demands[0].min_accuracy)
    one = AllocationProblem((d,), (c,), cpu_budget=8, replica_memory_bytes=4 * 1024**3)
    assert lower_bound(one) == pytest.approx(c.pool.cost_per_replica_s / 0.7)
    a = solve_greedy(one)
    assert a.cost_per_s == pytest.approx(2 * c.pool.cost_per_replica_s)  # 1/0.7 -> 2 replicas


def test_milp_binaries_by_hand() -> None:
    """One variant needing 1/0.7 replicas: greedy plans 2, so the MILP gets 2 slots, each a
    y and one x: 4 binaries."""
    p = small(0)
    c = max(p.candidates, key=lambda c: eligible(p.demands[0], c, p.replica_memory_bytes))
    mu = eligible(p.demands[0], c, p.replica_memory_bytes)
    d = Demand("x", p.demands[0].task, mu, p.demands[0].latency_ms, p.demands[0].min_accuracy)
    one = AllocationProblem((d,), (c,), cpu_budget=8, replica_memory_bytes=4 * 1024**3)
    assert milp_binaries(one) == 4


@pytest.mark.parametrize("seed", range(2))
def test_auto_is_the_milp_when_small_and_greedy_beyond(seed: int) -> None:
    # a limit far beyond its solve time (~0.7 s), so both runs reach the same optimum
    p = replace(small(seed, models=2), time_limit_s=60.0)
    n = milp_binaries(p)
    small_enough = replace(p, milp_max_binaries=n)
    a, m = solve_auto(small_enough), solve_milp(small_enough)
    assert a.method == m.method == "milp"
    assert a.cost_per_s == pytest.approx(m.cost_per_s)
    assert a.cost_per_s < solve_greedy(p).cost_per_s  # here greedy rounds up a GPU replica
    too_big = replace(p, milp_max_binaries=n - 1)
    g, b = solve_greedy(too_big), solve_auto(too_big)
    assert b.method == "greedy"
    assert b.workers == g.workers and b.routes == g.routes
    assert any("auto" in note for note in b.notes)
    assert solve(p).method == solve(p, "auto").method  # auto is the default


def test_the_budget_is_respected_when_demand_exceeds_it() -> None:
    p = small(1, rps=20000.0, cpus=8)
    for a in (solve_greedy(p), solve_decomposed(p)):
        assert_feasible(p, a)
        assert a.unserved_rps  # something had to give
