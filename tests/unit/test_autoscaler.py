"""Autoscaling decisions: bursts, hysteresis, scale to zero, upgrade/downgrade, packing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.settings import AutoscalerSettings, Pool
from infaas.types import AutoscalerEvent, Backend, Precision
from scheduler.allocation import (
    Allocation,
    AllocationProblem,
    Demand,
    eligible,
    solve_greedy,
    solve_milp,
)
from scheduler.autoscaler import (
    AutoscalerState,
    AutoscalingContext,
    DemandSignal,
    Policy,
    ScalingDecision,
    decide,
)
from scheduler.baselines import queue_length_policy, static_policy
from scheduler.policy import CandidateSet, LoadSnapshot, VariantLoad
from scheduler.synthetic import synthetic_variant

MB = 1024**2
CPU1 = Pool(name="cpu1", num_cpus=1, cost_per_replica_s=1.0)
CPU4 = Pool(name="cpu4", num_cpus=4, cost_per_replica_s=10.0)


def zoo() -> CandidateSet:
    """At a 100 ms SLO (batch b usable when 2 x p99(b) <= 100):

    int8-ort (cpu1, acc .78): b=16, 500 rps per replica, 0.002 per request
    bf16-ov  (cpu4, acc .77): b=32, 3810 rps per replica, 0.0026 per request
    int8-fast (cpu1, acc .70): b=32, 7620 rps, cheapest, below a .75 floor
    fp32     (cpu1, acc .80): b=8, 222 rps
    """
    specs = [
        synthetic_variant(
            "int8-ort",
            precision=Precision.INT8,
            pool="cpu1",
            accuracy=0.78,
            intercept_ms=8,
            slope_ms=1.5,
            peak_memory_bytes=300 * MB,
        ),
        synthetic_variant(
            "bf16-ov",
            precision=Precision.BF16,
            backend=Backend.OPENVINO,
            pool="cpu4",
            accuracy=0.77,
            intercept_ms=2,
            slope_ms=0.2,
            peak_memory_bytes=1000 * MB,
        ),
        synthetic_variant(
            "int8-fast",
            architecture="mobilenet",
            precision=Precision.INT8,
            pool="cpu1",
            accuracy=0.70,
            intercept_ms=1,
            slope_ms=0.1,
            peak_memory_bytes=100 * MB,
        ),
        synthetic_variant(
            "fp32",
            pool="cpu1",
            accuracy=0.80,
            intercept_ms=20,
            slope_ms=2,
            peak_memory_bytes=800 * MB,
        ),
    ]
    return CandidateSet.build([s for s, _ in specs], [p for _, p in specs], [CPU1, CPU4])


CFG = AutoscalerSettings(
    cpu_budget=8,
    max_replicas_per_pool=2,
    replica_memory_bytes=2048 * MB,
    burst_window_s=10,
    trend_lookahead_s=5,
    downscale_delay_s=30,
    idle_to_zero_s=120,
)


def signal(rps: float, floor: float = 0.75, latency_ms: float = 100) -> tuple[DemandSignal, ...]:
    return (DemandSignal("classify", rps, latency_ms, floor),)


class Loop:
    """Drives a policy tick by tick, feeding back its state and replicas as the load."""

    def __init__(self, policy: Policy = decide, config: AutoscalerSettings = CFG) -> None:
        self.policy = policy
        self.config = config
        self.cands = zoo()
        self.state = AutoscalerState()
        self.now = 0.0
        self.last: ScalingDecision | None = None

    def tick(
        self, demands: Sequence[DemandSignal], dt: float = 1.0, outstanding: int = 0
    ) -> ScalingDecision:
        self.now += dt
        prev = self.last.replicas if self.last else {}
        load = LoadSnapshot(
            {v: VariantLoad(n, n, outstanding, 0.0) for v, n in prev.items()}
            | {
                c.variant_id: VariantLoad(
                    prev.get(c.variant_id, 0), prev.get(c.variant_id, 0), outstanding
                )
                for c in self.cands.all
                if outstanding
            },
            taken_at_s=self.now,
        )
        ctx = AutoscalingContext(
            self.now, self.cands, load, tuple(demands), self.config, self.state
        )
        self.last, self.state = self.policy(ctx)
        return self.last

    def run(self, demands: Sequence[DemandSignal], seconds: int) -> ScalingDecision:
        d = self.tick(demands)
        for _ in range(seconds - 1):
            d = self.tick(demands)
        return d


def has(events: Sequence[AutoscalerEvent], kind: str, **fields: object) -> bool:
    """Whether one of `events` is of `kind` with these field values."""
    return any(
        e.kind == kind and all(getattr(e, k) == v for k, v in fields.items()) for e in events
    )


def test_low_load_uses_cheapest_accurate_variant() -> None:
    d = Loop().run(signal(100), 3)
    assert d.primary("classify") == "int8-ort"
    assert d.replicas == {"int8-ort": 1}
    assert d.cost_per_s == 1.0
    assert not d.unserved_rps


def test_scale_up_immediately_on_burst() -> None:
    loop = Loop()
    loop.run(signal(100), 10)
    assert loop.last is not None and loop.last.replicas == {"int8-ort": 1}
    d = loop.tick(signal(500))  # > 350 rps one replica plans for
    assert d.replicas == {"int8-ort": 2}
    assert has(d.events, "scale_up", variant_id="int8-ort", from_replicas=1, to_replicas=2)
    (up,) = [e for e in d.events if e.kind == "scale_up"]
    assert up.task == "classify" and up.ts == loop.now
    assert up.reason == "scale up int8-ort: 1 -> 2"


def test_rising_trend_is_provisioned_ahead() -> None:
    loop = Loop()
    for rps in (50, 100, 150, 200, 250):
        d = loop.tick(signal(rps))
    # slope 50 rps/s followed 5 s ahead: provisioned for 500 rps, not 250
    assert d.provisioned_rps["classify"] == pytest.approx(500)
    assert d.replicas == {"int8-ort": 2}


def test_trend_of_a_sudden_step_is_capped() -> None:
    loop = Loop()
    for rps in (100, 200, 400, 800):  # the first seconds of a step, seen through a window
        d = loop.tick(signal(rps))
    # the least-squares slope (~230 rps/s) 5 s ahead would be ~2000 rps; capped at 2x 800
    assert d.provisioned_rps["classify"] == pytest.approx(1600)


def test_scale_down_hysteresis_no_flapping_on_brief_dip() -> None:
    loop = Loop()
    loop.run(signal(600), 20)
    history = [loop.tick(signal(100)).replicas for _ in range(5)]  # brief dip
    history += [loop.tick(signal(600)).replicas for _ in range(5)]
    assert all(h == {"int8-ort": 2} for h in history)
    # a sustained fall scales down, but only after the delay
    seen = [loop.tick(signal(100)).replicas for _ in range(45)]
    first_down = next(i for i, h in enumerate(seen) if h == {"int8-ort": 1})
    assert first_down >= 29  # 30 s delay, counted from the last high sample
    assert all(h == {"int8-ort": 1} for h in seen[first_down:])


def test_scale_to_zero_after_idle() -> None:
    loop = Loop()
    loop.run(signal(100), 5)
    kept = [loop.tick(signal(0)).replicas for _ in range(119)]
    assert all(h == {"int8-ort": 1} for h in kept)  # keep one warm while recently active
    d = loop.tick(signal(0))
    assert d.replicas == {}
    assert d.workers == ()
    assert d.cost_per_s == 0
    assert has(d.events, "scale_to_zero", variant_id="int8-ort", from_replicas=1, to_replicas=0)
    # traffic returns: scaled from zero on the same tick
    assert loop.tick(signal(50)).replicas == {"int8-ort": 1}


def test_upgrade_when_cheap_variant_cannot_keep_up_then_downgrade() -> None:
    loop = Loop()
    loop.run(signal(100), 5)
    d = loop.tick(signal(1000))  # int8-ort: 2 replicas max = 700 rps planned
    assert d.primary("classify") == "bf16-ov"
    assert has(
        d.events,
        "upgrade",
        task="classify",
        demand="classify",
        from_variant_id="int8-ort",
        variant_id="bf16-ov",
    )
    assert not d.unserved_rps
    for v, _ in d.routes["classify"]:
        assert loop.cands.variant(v).accuracy >= 0.75
    loop.run(signal(1000), 10)
    # load falls: held for the downscale delay, then back to the cheap variant
    held = [loop.tick(signal(100)) for _ in range(20)]
    assert all(h.primary("classify") == "bf16-ov" for h in held)
    later = [loop.tick(signal(100)) for _ in range(15)]
    assert later[-1].primary("classify") == "int8-ort"
    events = [e for h in later for e in h.events]
    assert has(events, "downgrade", from_variant_id="bf16-ov", variant_id="int8-ort")
    assert later[-1].replicas == {"int8-ort": 1}


def test_upgrade_never_below_accuracy_floor() -> None:
    # far beyond what the accurate variants can do within budget
    d = Loop().run(signal(20_000, floor=0.75), 3)
    hosted = {v for w in d.workers for v in w.variants}
    assert "int8-fast" not in hosted
    assert d.unserved_rps["classify"] > 0
    (unserved,) = [e for e in d.events if e.kind == "unserved"]
    assert (unserved.task, unserved.demand) == ("classify", "classify")
    assert unserved.unserved_rps == pytest.approx(d.unserved_rps["classify"])
    for v, _ in d.routes["classify"]:
        assert zoo().variant(v).accuracy >= 0.75
    # without a floor the fast low-accuracy variant is fair game
    d = Loop().run(signal(20_000, floor=0.0), 3)
    assert d.primary("classify") == "int8-fast"


def test_queue_guard_delay_is_state_the_policy_returns() -> None:
    """The largest queue of the last `downscale_delay_s` sets a floor of worker replicas;
    that memory is in the returned state, so the same context always decides the same."""
    cfg = CFG.model_copy(update={"queue_guard_ongoing_requests": 4.0, "downscale_delay_s": 10})
    cands = zoo()

    def ctx(t: float, outstanding: int, state: AutoscalerState) -> AutoscalingContext:
        load = LoadSnapshot({"int8-ort": VariantLoad(1, 1, outstanding)}, taken_at_s=t)
        return AutoscalingContext(t, cands, load, signal(100), cfg, state)

    d, state = decide(ctx(0.0, 18, AutoscalerState()))
    assert d.min_workers == 5  # ceil(18 / 4)
    held = []
    for t in range(1, 12):
        c = ctx(float(t), 0, state)
        d, state = decide(c)
        assert decide(c)[0] == d  # no hidden state: a replayed context decides the same
        held.append(d.min_workers)
    assert held == [5] * 10 + [0]  # held for the whole delay (inclusive), then gone
    assert max(n for _, n in state.queues) == 0
    # the baselines carry it through untouched
    _, s = static_policy(ctx(12.0, 0, state))
    assert s.queues == state.queues


def two_task_zoo(memory: Sequence[tuple[str, str, int, float]]) -> CandidateSet:
    specs = [
        synthetic_variant(
            vid,
            task=task,
            architecture=vid,
            pool="cpu1",
            intercept_ms=10,
            slope_ms=slope,
            peak_memory_bytes=mem * MB,
        )
        for vid, task, mem, slope in memory
    ]
    return CandidateSet.build([s for s, _ in specs], [p for _, p in specs], [CPU1])


def packing_problem() -> AllocationProblem:
    """Greedy is wrong here: A1 and B1 (each the cheapest for its task) cannot share a
    1000 MB replica, but A1 with the slightly dearer B2 can: one replica, not two."""
    cs = two_task_zoo([("A1", "a", 600, 1.0), ("B1", "b", 600, 1.0), ("B2", "b", 300, 1.2)])
    return AllocationProblem(
        demands=(Demand("a", "a", 10, 200), Demand("b", "b", 10, 200)),
        candidates=cs.all,
        cpu_budget=4,
        replica_memory_bytes=1000 * MB,
    )


def test_milp_beats_greedy_where_greedy_is_wrong() -> None:
    p = packing_problem()
    greedy = solve_greedy(p)
    milp = solve_milp(p)
    assert greedy.cost_per_s == 2.0
    assert {w.variants for w in greedy.workers} == {("A1",), ("B1",)}
    assert milp.method == "milp"
    assert milp.cost_per_s == 1.0
    assert len(milp.workers) == 1
    assert set(milp.workers[0].variants) == {"A1", "B2"}
    assert milp.routes["b"] == (("B2", pytest.approx(10)),)
    assert_valid(p, milp)
    assert_valid(p, greedy)


def assert_valid(p: AllocationProblem, a: Allocation) -> None:
    """Memory per replica, CPU budget, accuracy floors and capacity all hold."""
    by_id = {c.variant_id: c for c in p.candidates}
    cpu = 0.0
    for w in a.workers:
        assert sum(by_id[v].peak_memory_bytes for v in w.variants) <= p.replica_memory_bytes
        assert sum(w.shares) <= p.target_utilisation + 1e-6
        cpu += by_id[w.variants[0]].pool.num_cpus if w.variants else 0
    assert cpu <= p.cpu_budget + 1e-9
    time_used: dict[str, float] = {}
    for d in p.demands:
        routed = sum(r for _, r in a.routes.get(d.demand_id, ()))
        assert routed + a.unserved_rps.get(d.demand_id, 0.0) == pytest.approx(
            d.arrival_rps, abs=1e-4
        )
        for v, r in a.routes.get(d.demand_id, ()):
            mu = eligible(d, by_id[v], p.replica_memory_bytes)
            assert mu > 0, f"{v} may not serve {d.demand_id}"
            time_used[v] = time_used.get(v, 0.0) + r / mu
    hosted_time: dict[str, float] = {}
    for w in a.workers:
        for v, s in zip(w.variants, w.shares, strict=True):
            hosted_time[v] = hosted_time.get(v, 0.0) + s
    for v, t in time_used.items():
        assert t <= hosted_time.get(v, 0.0) + 1e-4


def test_memory_limits_respected_by_placement() -> None:
    cs = two_task_zoo(
        [
            ("A1", "a", 700, 1.0),
            ("B1", "b", 700, 1.0),
            ("C1", "c", 400, 1.0),
            ("D1", "d", 400, 1.0),
            ("huge", "e", 5000, 0.1),
        ]
    )
    p = AllocationProblem(
        demands=tuple(Demand(t, t, 5, 200) for t in "abcde"),
        candidates=cs.all,
        cpu_budget=8,
        replica_memory_bytes=1000 * MB,
    )
    for a in (solve_greedy(p), solve_milp(p)):
        assert_valid(p, a)
        assert "huge" not in {v for w in a.workers for v in w.variants}
        assert a.unserved_rps == {"e": 5}
    assert solve_milp(p).cost_per_s <= solve_greedy(p).cost_per_s


@settings(max_examples=20, deadline=None)
@given(
    # rates below 0.01 rps sit under the MILP solver's numeric tolerance (1e-9 rps made its
    # objective exceed greedy's by 1e-6): an idle class is 0, a real one at least 0.01 rps
    rates=st.lists(st.just(0.0) | st.floats(0.01, 3000), min_size=1, max_size=3),
    floors=st.lists(st.sampled_from([0.0, 0.75, 0.79, 0.9]), min_size=3, max_size=3),
    memory_mb=st.sampled_from([500, 1200, 4096]),
)
def test_allocation_property(rates: list[float], floors: list[float], memory_mb: int) -> None:
    demands = tuple(Demand(f"d{i}", "classify", r, 100, floors[i]) for i, r in enumerate(rates))
    p = AllocationProblem(
        demands=demands,
        candidates=zoo().all,
        cpu_budget=8,
        replica_memory_bytes=memory_mb * MB,
        max_replicas_per_pool=2,
    )
    milp, greedy = solve_milp(p), solve_greedy(p)
    assert_valid(p, milp)
    assert_valid(p, greedy)
    assert milp.objective <= greedy_objective(p, greedy) + 1e-6


def greedy_objective(p: AllocationProblem, a: Allocation) -> float:
    from scheduler.allocation import _objective

    return _objective(p, a)


def test_decide_with_greedy_solver_and_validation() -> None:
    cfg = CFG.model_copy(update={"solver": "greedy"})
    d = Loop(config=cfg).run(signal(100), 3)
    assert d.method == "greedy"
    assert d.replicas == {"int8-ort": 1}
    with pytest.raises(ValueError):
        AutoscalerSettings(min_replicas=3, max_replicas=2)


# ---------------------------------------------------------------- baselines


def test_static_fp32_only_fixed_replicas() -> None:
    cfg = CFG.model_copy(update={"static_replicas": 2})
    loop = Loop(static_policy, cfg)
    for rps in (10, 5000, 0):
        d = loop.tick(signal(rps))
        assert d.replicas == {"fp32": 2}
    d = loop.tick(signal(5000))
    assert d.unserved_rps["classify"] > 0  # 2 x 222 rps is all it has


def test_queue_length_policy_delays() -> None:
    cfg = CFG.model_copy(update={"queue_upscale_delay_s": 3, "queue_downscale_delay_s": 10})
    loop = Loop(queue_length_policy, cfg)
    assert loop.tick(signal(10)).replicas == {"fp32": 1}
    # 8 ongoing per replica with a target of 2: wants 4, only after 3 s of wanting it
    seen = [loop.tick(signal(100), outstanding=8).replicas["fp32"] for _ in range(5)]
    assert seen[:3] == [1, 1, 1]
    assert seen[3] == 4
    seen = [loop.tick(signal(10), outstanding=0).replicas["fp32"] for _ in range(12)]
    assert seen[:10] == [4] * 10
    assert seen[-1] == 1
