"""Peak provisioning, the fleet runs' cost reference: sized on the profiles the simulated
control loop plans with, for every class's peak rate."""

from __future__ import annotations

import pytest

from infaas.types import SLO
from scheduler.allocation import Demand, eligible
from scheduler.control import with_overhead
from scheduler.fleet import ClassLoad, fleet, peak_plan, peak_rates
from scheduler.policy import Candidate, CandidateSet

GIB = 1024**3


def test_peak_rates_are_the_busiest_window_after_the_warm_up() -> None:
    slo = SLO(latency_ms=100.0)
    arrivals = [i / 4 for i in range(8)] + [10.0 + i / 3 for i in range(30)]  # 4/s, then 3/s
    wl = [ClassLoad("t", slo, arrivals)]
    assert peak_rates(wl, 10.0) == {wl[0].key: 3.0}  # [0, 10): 8 -> 0.8/s; [10, 20): 3/s
    assert peak_rates(wl, 2.0) == {wl[0].key: 4.0}  # [0, 2): 8 -> 4/s
    assert peak_rates(wl, 2.0, from_s=10.0) == {wl[0].key: 3.0}
    assert peak_rates(wl, 10.0, from_s=40.0) == {wl[0].key: 0.0}


@pytest.mark.parametrize("overhead_ms", [2.0, 8.0])
def test_the_peak_plan_holds_each_class_peak_on_the_profiles_as_served(
    overhead_ms: float,
) -> None:
    """Every class's peak rate fits the planned replicas' time at the served capacity. The
    plan on the bare profiles (what `bench/sim.py` used to compare against) does not: it
    counts replicas faster than the simulated ones by the request path."""
    f = fleet(10, tenants=100, mean_rps=400.0, seed=3, pools=("cpu",))
    served = CandidateSet(
        Candidate.of(c.spec, with_overhead(c.profile, overhead_ms), c.pool) for c in f.candidates
    )
    wl = [ClassLoad(t, s, [i / r for i in range(int(10 * r))]) for t, s, r in f.classes]
    rates = peak_rates(wl, 10.0)

    def short_of_capacity(cands: CandidateSet) -> float:
        """Replica time the plan lacks when its routes are served at the served capacity."""
        plan = peak_plan(cands, wl, rates, cpu_budget=256, replica_memory_bytes=4 * GIB)
        assert not plan.unserved_rps
        planned: dict[str, float] = {}
        for w in plan.workers:
            for v, share in zip(w.variants, w.shares, strict=True):
                planned[v] = planned.get(v, 0.0) + share
        need: dict[str, float] = {}
        for cl in wl:
            d = next(d for d in _demands(wl, rates) if d.demand_id == cl.key)
            for v, rps in plan.routes.get(cl.key, ()):
                need[v] = need.get(v, 0.0) + rps / eligible(d, served.variant(v), 4 * GIB)
        return sum(max(0.0, t - planned.get(v, 0.0)) for v, t in need.items())

    assert short_of_capacity(served) == pytest.approx(0.0, abs=1e-6)
    assert short_of_capacity(f.candidates) > 0.1


def _demands(wl: list[ClassLoad], rates: dict[str, float]) -> list[Demand]:
    return [
        Demand(cl.key, cl.task, rates[cl.key], cl.slo.latency_ms, cl.slo.min_accuracy) for cl in wl
    ]
