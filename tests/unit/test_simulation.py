"""The cluster simulator: its clock and queues on hand-checked cases, and that it drives the
project's own decisions (the same inputs give the same decisions outside it)."""

from __future__ import annotations

import itertools
import random
import statistics
from typing import Any

import pytest

import scheduler.simulation as simulation
from infaas.settings import AutoscalerSettings, Pool
from infaas.types import SLO, Precision
from scheduler.autoscaler import AutoscalingContext, ScalingDecision
from scheduler.fleet import ClassLoad, gamma_arrivals
from scheduler.policy import CandidateSet, LoadSnapshot, Query, route_select
from scheduler.simulation import EventLoop, Node, ServiceModel, Simulation
from scheduler.synthetic import synthetic_variant

POOL = Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0)
DET = ServiceModel(deterministic=True, replica_startup_s=0.0)


def one_variant(intercept_ms: float, slope_ms: float = 0.0, max_batch: int = 1) -> CandidateSet:
    spec, prof = synthetic_variant(
        "v",
        intercept_ms=intercept_ms,
        slope_ms=slope_ms,
        tail=1.0,
        load_ms=0.0,
        max_batch=max_batch,
    )
    return CandidateSet.build([spec], [prof], [POOL])


def static_one(**kw: Any) -> AutoscalerSettings:
    return AutoscalerSettings(
        policy="static", static_replicas=1, min_replicas=1, max_replicas=1, **kw
    ).for_pool(POOL)


def test_events_run_in_time_order_ties_in_the_order_set() -> None:
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(1.0, seen.append, "b")
    loop.at(5.0, seen.append, "late")
    loop.run(3.0)
    assert seen == ["a", "b", "c"] and loop.now == 3.0
    loop.after(0.5, seen.append, "d")  # relative to the clock
    loop.run(3.4)
    assert seen[-1] == "c"
    loop.run(3.5)
    assert seen[-1] == "d"


@pytest.mark.parametrize(
    ("cores", "works", "ends"),
    [
        (1, (1.0, 1.0), (2.0, 2.0)),  # two jobs share one core: both at half speed
        (1, (1.0, 2.0), (2.0, 3.0)),  # the short one leaves at 2; the long one alone after
        (2, (1.0, 2.0), (1.0, 2.0)),  # enough cores: no contention
        (2, (3.0, 3.0, 3.0), (4.5, 4.5, 4.5)),  # 3 jobs on 2 cores: rate 2/3
    ],
)
def test_processor_sharing(cores: int, works: tuple[float, ...], ends: tuple[float, ...]) -> None:
    loop = EventLoop()
    node = Node(loop, cores)
    done: list[float] = [0.0] * len(works)
    for i, w in enumerate(works):
        node.submit(w, lambda i=i: done.__setitem__(i, loop.now))
    loop.run(100.0)
    assert done == pytest.approx(list(ends))
    assert node.busy_core_s == pytest.approx(sum(works))


def test_a_job_arriving_later_slows_the_one_running() -> None:
    loop = EventLoop()
    node = Node(loop, 1)
    done: dict[str, float] = {}
    node.submit(1.0, lambda: done.setdefault("a", loop.now))
    loop.at(0.5, node.submit, 1.0, lambda: done.setdefault("b", loop.now))
    loop.run(10.0)
    # a: 0.5 s alone, then its last 0.5 s at half speed -> 1.5; b: 0.5 done by 1.5, rest alone
    assert done == pytest.approx({"a": 1.5, "b": 2.0})


def test_deterministic_single_server_queue_by_hand() -> None:
    """D/D/1: 100 ms service, batch 1, arrivals at 0, 50, 100, 400 ms -> waits 0, 50, 100, 0."""
    sim = Simulation(one_variant(100.0), [POOL], config=static_one(), service=DET)
    wl = [ClassLoad("classify", SLO(latency_ms=1000), [0.0, 0.05, 0.10, 0.40])]
    r = sim.run(wl, horizon_s=1.0)
    assert r.latencies_ms == pytest.approx([100.0, 150.0, 200.0, 100.0])
    assert (r.requests, r.within_slo, r.replica_s) == (4, 4, 1.0)


def test_a_request_predicted_late_by_its_queue_is_refused_at_once() -> None:
    """The worker's admission (`route_select`): at 100 ms, one request runs and one waits,
    so a third is predicted at 300 ms > 250 ms and refused; the one at 400 ms is served."""
    sim = Simulation(one_variant(100.0), [POOL], config=static_one(), service=DET)
    wl = [ClassLoad("classify", SLO(latency_ms=250), [0.0, 0.05, 0.10, 0.40])]
    r = sim.run(wl, horizon_s=1.0)
    assert r.latencies_ms == pytest.approx([100.0, 150.0, 100.0])
    assert (r.requests, r.within_slo, r.refused) == (4, 3, 1)


def test_the_batcher_takes_what_is_queued_up_to_max_batch() -> None:
    """L(b) = 50 + 10 b ms, max batch 2: request 0 alone (60 ms); 1, 2 and 3 queue behind it,
    1+2 ride together (70 ms, end 130), 3 alone (60 ms, end 190)."""
    sim = Simulation(one_variant(50.0, 10.0, 2), [POOL], config=static_one(), service=DET)
    wl = [ClassLoad("classify", SLO(latency_ms=1000), [0.0, 0.01, 0.02, 0.03])]
    r = sim.run(wl, horizon_s=1.0)
    assert r.latencies_ms == pytest.approx([60.0, 120.0, 110.0, 160.0])


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    """Poisson arrivals at 5/s, deterministic 100 ms service: W = rho / (2 mu (1 - rho)) = 50 ms."""
    rng = random.Random(3)
    arrivals = gamma_arrivals([(0.0, 5.0)], 1500.0, 1.0, rng)
    sim = Simulation(one_variant(100.0), [POOL], config=static_one(), service=DET)
    r = sim.run([ClassLoad("classify", SLO(latency_ms=10_000), arrivals)], horizon_s=1500.0)
    assert statistics.fmean(r.latencies_ms) == pytest.approx(150.0, rel=0.08)


def test_gamma_arrivals_have_the_rate_and_burstiness_asked() -> None:
    rng = random.Random(1)
    for cv in (1.0, 4.0):
        ts = gamma_arrivals([(0.0, 20.0)], 5000.0, cv, rng)
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert len(ts) / 5000.0 == pytest.approx(20.0, rel=0.05)
        assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.1)


def zoo() -> CandidateSet:
    vs = [
        synthetic_variant("r50-fp32", accuracy=0.78, intercept_ms=45, slope_ms=6),
        synthetic_variant(
            "r50-int8", accuracy=0.76, precision=Precision.INT8, intercept_ms=9, slope_ms=1.5
        ),
        synthetic_variant(
            "r18-int8",
            architecture="resnet18",
            accuracy=0.68,
            precision=Precision.INT8,
            intercept_ms=4,
            slope_ms=0.8,
        ),
    ]
    return CandidateSet.build([v for v, _ in vs], [p for _, p in vs], [POOL])


def bursty(seed: int) -> list[ClassLoad]:
    rng = random.Random(seed)
    rates = [(0.0, 10.0), (20.0, 60.0), (35.0, 10.0)]
    return [
        ClassLoad(
            "classify",
            SLO(latency_ms=300, min_accuracy=0.7),
            gamma_arrivals(rates, 60, 1, rng),
        ),
        ClassLoad(
            "classify",
            SLO(latency_ms=100, min_accuracy=0.6),
            gamma_arrivals(rates, 60, 4, rng),
        ),
    ]


@pytest.mark.parametrize("policy", ["infaas", "infaas-style", "queue", "static-modelless"])
def test_policy_in_the_simulator_decides_as_it_does_directly(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tick's context handed to the real policy again outside the simulator gives the
    same decision; every request's load snapshot handed to `route_select` directly gives
    the same variant."""
    cfg = AutoscalerSettings(policy=policy, max_replicas=3).for_pool(POOL)
    sim = Simulation(zoo(), [POOL], config=cfg, service=ServiceModel(request_overhead_ms=2.0))
    ticks: list[tuple[AutoscalingContext, ScalingDecision]] = []
    real_policy = sim.policy

    def recorded(ctx: AutoscalingContext) -> Any:
        decision, state = real_policy(ctx)
        ticks.append((ctx, decision))
        return decision, state

    sim.policy = recorded
    picks: list[tuple[Any, ...]] = []

    def select_recorded(
        cands: CandidateSet, q: Query, slo: SLO, load: LoadSnapshot, hints: Any
    ) -> Any:
        frozen = LoadSnapshot({v: load.by_variant[v] for v in load.by_variant}, load.taken_at_s)
        sel = route_select(cands, q, slo, load, hints)
        picks.append((cands, q, slo, frozen, hints, sel.variant_id))
        return sel

    monkeypatch.setattr(simulation, "route_select", select_recorded)
    r = sim.run(bursty(0), horizon_s=45.0)
    assert r.requests > 1000 and len(ticks) >= 40
    for ctx, decision in ticks[::3]:
        again, _ = real_policy(ctx)
        assert again.replicas == decision.replicas and again.routes == decision.routes
    assert {p[-1] for p in picks} >= {"r50-int8"} or policy == "queue"
    for cands, q, slo, frozen, hints, vid in picks[::7]:
        assert route_select(cands, q, slo, frozen, hints).variant_id == vid


def test_the_real_control_loop_on_the_simulated_clock_matches_the_built_in_tick() -> None:
    """`api.autoscaler.ControlLoop` driven by the simulator's clock and store gives the run
    the simulator's own (several-pool) tick gives: same requests, violations, replica-seconds."""
    autoscaler = pytest.importorskip("api.autoscaler")
    cands = zoo()
    cfg = AutoscalerSettings(policy="infaas", max_replicas=3, solver="greedy").for_pool(POOL)
    own = Simulation(cands, [POOL], config=cfg, seed=5).run(bursty(1), 60.0)
    sim = Simulation(cands, [POOL], config=cfg, seed=5)
    loop = autoscaler.ControlLoop(
        store=sim.store, config=cfg, pool=POOL, candidates=lambda: cands, clock=lambda: sim.loop.now
    )
    sim.control = loop.tick
    real = sim.run(bursty(1), 60.0)
    assert real.summary() | {"tick_p50_ms": 0, "tick_p99_ms": 0} == own.summary() | {
        "tick_p50_ms": 0,
        "tick_p99_ms": 0,
    }
    assert real.requests > 1000


def test_a_bench_slo_row_replays_with_its_trace_seed_and_settings() -> None:
    """The validation path (`bench/sim.py validate`): a `bench/slo.py` row is replayed on the
    same trace and seed, so it sends exactly the requests the real run sent."""
    import yaml

    from bench.sim import TRACE, _replay
    from bench.sim import ServiceModel as BenchService
    from bench.traces import read_trace

    cfg = yaml.safe_load((TRACE.parents[2] / "configs" / "slo-eval.yaml").read_text())
    vs = [
        synthetic_variant("r50", task="images", accuracy=0.78, intercept_ms=45, slope_ms=6),
        synthetic_variant("mlp", task="digits", architecture="mlp", accuracy=0.97, intercept_ms=1),
    ]
    cands = CandidateSet.build([v for v, _ in vs], [p for _, p in vs], [POOL])
    row = {"policy": "static", "trace": "bursty", "seed": 3}
    out = _replay(row, cfg, cands, BenchService(request_overhead_ms=12.0))
    trace = read_trace(TRACE.parent / "bursty.csv").scaled(cfg["rate_scale"], cfg["time_scale"])
    assert out["requests"] == len(trace.arrivals(3, cfg["max_requests"]))
    assert out["replica_s"] == pytest.approx(cfg["static_replicas"] * trace.duration_s, rel=0.02)
