"""The per-window (fluid) simulation: hand-checked capacity cases, and agreement with the
per-request simulation where both run."""

from __future__ import annotations

import pytest

from infaas.settings import AutoscalerSettings
from infaas.types import SLO
from scheduler.fleet import ClassLoad
from scheduler.fluid import FluidSimulation
from scheduler.simulation import ServiceModel, Simulation
from tests.unit.test_simulation import DET, POOL, bursty, one_variant, static_one, zoo


def steady(rps: float, seconds: float, latency_ms: float) -> list[ClassLoad]:
    n = int(rps * seconds)
    return [ClassLoad("classify", SLO(latency_ms=latency_ms), [i / rps for i in range(n)])]


def test_under_capacity_everything_meets_the_target_and_the_queue_drains() -> None:
    sim = FluidSimulation(one_variant(100.0), [POOL], config=static_one(), service=DET)
    r = sim.run(steady(5.0, 30.0, 1000.0), 30.0)
    assert (r.requests, r.within_slo, r.refused) == (150, 150, 0)
    assert r.replica_s == pytest.approx(30.0)
    assert not sim.queue


def test_over_capacity_the_backlog_grows_and_the_target_is_missed() -> None:
    """20 requests/s on one replica serving 10/s (100 ms, batch 1): the backlog grows by about
    10 requests a second, and from the first seconds the waits pass a 1 s target."""
    cfg = static_one()
    sim = FluidSimulation(one_variant(100.0), [POOL], config=cfg, service=DET)
    r = sim.run(steady(20.0, 30.0, 1000.0), 30.0)
    assert r.within_slo < 0.2 * r.requests
    assert sum(sim.queue.values()) == pytest.approx(300.0, rel=0.1)


@pytest.mark.parametrize(("policy", "cost_rel"), [("static-modelless", 0.05), ("infaas", 0.5)])
def test_fluid_agrees_with_the_per_request_simulation_on_a_small_case(
    policy: str, cost_rel: float
) -> None:
    """Attainment within 5 points. Cost: a fixed fleet's exactly; an autoscaled one's only
    within 50 % (the fluid queues are shorter, so the infaas queue guard adds fewer replicas)."""
    cfg = AutoscalerSettings(policy=policy, max_replicas=3, solver="greedy").for_pool(POOL)
    service = ServiceModel(request_overhead_ms=2.0)
    wl = bursty(2)
    events = Simulation(zoo(), [POOL], config=cfg, service=service, seed=2).run(wl, 45.0)
    fluid = FluidSimulation(zoo(), [POOL], config=cfg, service=service).run(wl, 45.0)
    att = (events.within_slo / events.requests, fluid.within_slo / fluid.requests)
    assert att[1] == pytest.approx(att[0], abs=0.05)
    assert fluid.replica_s == pytest.approx(events.replica_s, rel=cost_rel)


def test_the_warm_up_is_simulated_but_not_counted() -> None:
    """5 requests/s for 30 s on one fixed replica, counted from 10 s: the 100 requests of the
    last 20 s and 20 replica-seconds."""
    sim = FluidSimulation(one_variant(100.0), [POOL], config=static_one(), service=DET)
    r = sim.run(steady(5.0, 30.0, 1000.0), 30.0, measure_from_s=10.0)
    assert (r.requests, r.within_slo, r.refused) == (100, 100, 0)
    assert r.replica_s == pytest.approx(20.0)
    assert len(r.tick_s) > 20  # every tick ran the policy, the warm-up's too
