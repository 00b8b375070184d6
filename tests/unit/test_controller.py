"""The autoscaler control loop's pure parts, and one loop tick over an in-memory store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from api.autoscaler import ControlLoop
from infaas.client.retry import is_deadline_refusal
from infaas.errors import NoFeasibleVariant
from infaas.settings import AutoscalerSettings, Pool, Settings, load_settings
from infaas.store import MemoryStore, open_store
from infaas.types import SLO, AutoscalerEvent, Backend, Precision
from scheduler.autoscaler import (
    AutoscalerState,
    decide,
)
from scheduler.baselines import infaas_policy, static_policy
from scheduler.control import build_context, measure, parse_demand_key, plan
from scheduler.policy import (
    CandidateSet,
    LoadSnapshot,
    Query,
    VariantLoad,
    demand_key,
    route_select,
)
from scheduler.routing import (
    LoadReport,
    ReplicaTarget,
    RoutingHints,
    read_hints,
    read_target,
)
from scheduler.synthetic import synthetic_variant

MB = 1024**2
POOL = Pool(name="cpu", num_cpus=0.5, cost_per_replica_s=1.0)


def zoo() -> CandidateSet:
    """fp32 (ORT, acc .80, slow), int8 (OV, acc .76, fast), tiny (acc .60, fastest)."""
    specs = [
        synthetic_variant("fp32", accuracy=0.80, intercept_ms=20, slope_ms=2, load_ms=50),
        synthetic_variant(
            "fp32-ov",
            backend=Backend.OPENVINO,
            accuracy=0.80,
            intercept_ms=15,
            slope_ms=1.5,
            load_ms=50,
        ),
        synthetic_variant(
            "int8",
            precision=Precision.INT8,
            backend=Backend.OPENVINO,
            accuracy=0.76,
            intercept_ms=4,
            slope_ms=0.4,
            load_ms=50,
        ),
        synthetic_variant(
            "tiny",
            architecture="mobilenet",
            precision=Precision.INT8,
            accuracy=0.60,
            intercept_ms=1,
            slope_ms=0.1,
            load_ms=50,
        ),
    ]
    return CandidateSet.build([s for s, _ in specs], [p for _, p in specs], [POOL])


CFG = AutoscalerSettings(
    policy="infaas", cpu_budget=2.0, max_replicas_per_pool=4, replica_memory_bytes=4096 * MB
)
KEY = demand_key("classify", 100, 0.75)


def report(replica: str, ts: float, n: int, **kw: object) -> LoadReport:
    return LoadReport(replica=replica, ts=ts, arrivals={KEY: n}, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- records


def test_demand_key_round_trips() -> None:
    assert parse_demand_key(demand_key("images", 150, 0.7)) == ("images", 150.0, 0.7)
    assert parse_demand_key("a|b|c|50|0.5") == ("a|b|c", 50.0, 0.5)
    with pytest.raises(ValueError):
        parse_demand_key("nokey")


# ---------------------------------------------------------------- measure


def test_measure_differentiates_counters_per_replica() -> None:
    prev = {"a": report("a", 0, 100), "b": report("b", 0, 50)}
    cur = {
        "a": report("a", 2, 140, outstanding={"int8": 3}, loaded=["int8"]),
        "c": report("c", 2, 10, outstanding={"int8": 1, "fp32": 2}, loaded=["int8", "fp32"]),
    }
    m = measure(prev, cur, 2.0, 10.0)
    # a: +40, c: new replica counts from zero (+10), b: gone, contributes nothing
    assert m.arrival_rps == {KEY: pytest.approx(25.0)}
    assert m.replicas == 2
    assert m.load.get("int8") == VariantLoad(replicas=2, loaded_replicas=2, outstanding=4)
    assert m.load.get("fp32").loaded_replicas == 1
    assert m.load.get("fp32").outstanding == 2


def test_measure_reads_each_variants_mean_latency_over_the_interval() -> None:
    cur = {
        # a: 10 more in 300 ms; c: new, 2 served in 100 ms; fp32 served nothing since
        "a": report(
            "a",
            2,
            0,
            outstanding={"int8": 0, "fp32": 0},
            served={"int8": 20, "fp32": 5},
            served_ms={"int8": 400.0, "fp32": 50.0},
        ),
        "c": report(
            "c", 2, 0, outstanding={"int8": 0}, served={"int8": 2}, served_ms={"int8": 100.0}
        ),
    }
    prev = {
        "a": report(
            "a", 0, 0, served={"int8": 10, "fp32": 5}, served_ms={"int8": 100.0, "fp32": 50.0}
        )
    }
    m = measure(prev, cur, 2.0, 10.0)
    assert m.load.get("int8").latency_ms == pytest.approx(400.0 / 12)
    assert m.load.get("fp32").latency_ms == 0.0


def test_measure_never_goes_negative_and_zero_dt_means_no_rate() -> None:
    m = measure({"a": report("a", 0, 100)}, {"a": report("a", 1, 90)}, 1.0, 1.0)
    assert m.arrival_rps[KEY] == 0.0
    assert measure({}, {"a": report("a", 1, 90)}, 0.0, 1.0).arrival_rps[KEY] == 0.0


def test_build_context_keeps_silent_classes_and_drops_unknown_tasks() -> None:
    m = measure({}, {"a": report("a", 1, 0)}, 1.0, 5.0)
    known = {KEY: 1.0, demand_key("classify", 50, 0.0): 2.0, demand_key("speech", 50, 0): 2.0}
    ctx = build_context(m, zoo(), CFG, AutoscalerState(), known)
    assert {d.key for d in ctx.demands} == {KEY, demand_key("classify", 50, 0.0)}
    d = next(d for d in ctx.demands if d.key == KEY)
    assert (d.task, d.latency_ms, d.min_accuracy, d.arrival_rps) == ("classify", 100, 0.75, 0)
    assert ctx.now_s == 5.0


# ---------------------------------------------------------------- plan


def ctx_at(rps: float, policy_state: AutoscalerState | None = None) -> object:
    m = measure({}, {"a": report("a", 0, 0)}, 1.0, 10.0)
    m = type(m)(m.now_s, {KEY: rps}, m.load, m.replicas)
    return build_context(m, zoo(), CFG, policy_state or AutoscalerState(), {KEY: 10.0})


def test_plan_of_the_infaas_decision_targets_its_worker_count_and_routes() -> None:
    decision, _ = decide(ctx_at(300.0))  # type: ignore[arg-type]
    p = plan(decision, "infaas", zoo(), now_s=10.0, min_replicas=1, max_replicas=8, pool=POOL)
    assert p.target.num_replicas == len(decision.workers) >= 1
    assert p.hints.mode == "prefer"
    # the planned variant meets the floor: never the .60 one
    assert p.hints.routes[KEY][0] in {"int8", "fp32", "fp32-ov"}
    assert p.hints.by_task["classify"] == p.hints.routes[KEY]
    assert set(p.hints.keep) == set(decision.replicas)


def test_plan_clamps_and_static_overrides() -> None:
    decision, _ = decide(ctx_at(5000.0))  # type: ignore[arg-type]
    p = plan(decision, "infaas", zoo(), now_s=0, min_replicas=1, max_replicas=2, pool=POOL)
    assert p.target.num_replicas == 2
    idle, _ = decide(ctx_at(0.0))  # type: ignore[arg-type]
    p = plan(idle, "infaas", zoo(), now_s=0, min_replicas=1, max_replicas=8, pool=POOL)
    assert p.target.num_replicas >= 1
    s, _ = static_policy(ctx_at(50.0))  # type: ignore[arg-type]
    p = plan(
        s, "static", zoo(), now_s=0, min_replicas=1, max_replicas=8, pool=POOL, static_replicas=3
    )
    assert p.target.num_replicas == 3
    assert p.hints.mode == "pin"


def test_static_plan_pins_the_registered_fp32_model_on_onnxruntime() -> None:
    s, _ = static_policy(ctx_at(50.0))  # type: ignore[arg-type]
    p = plan(s, "static", zoo(), now_s=0, min_replicas=1, max_replicas=8, pool=POOL)
    assert p.hints.routes[KEY] == ["fp32"]


def test_infaas_style_plan_pins_the_masters_choice() -> None:
    d, _ = infaas_policy(ctx_at(20.0))  # type: ignore[arg-type]
    p = plan(d, "infaas-style", zoo(), now_s=0, min_replicas=1, max_replicas=8, pool=POOL)
    assert p.hints.mode == "pin"
    assert p.hints.routes[KEY] == [d.primary(KEY)]
    assert p.target.num_replicas == sum(d.replicas.values())


def test_plan_carries_the_typed_events_and_a_replicas_sample() -> None:
    _, state = decide(ctx_at(20.0))  # type: ignore[arg-type]
    decision2, _ = decide(ctx_at(3000.0, state))  # type: ignore[arg-type]
    p = plan(decision2, "infaas", zoo(), now_s=11, min_replicas=1, max_replicas=8, pool=POOL)
    assert p.events[:-1] == decision2.events
    sample = p.events[-1]
    assert isinstance(sample, AutoscalerEvent) and sample.kind == "replicas"
    assert sample.replicas == dict(decision2.replicas)
    assert sample.to_replicas == p.target.num_replicas and sample.ts == 11
    kinds = {e.kind for e in p.events}
    assert "scale_up" in kinds or "upgrade" in kinds
    # every event names what it is about, no string to parse
    for e in p.events[:-1]:
        if e.kind in ("upgrade", "downgrade"):
            assert (e.task, e.demand, e.variant_id) == ("classify", KEY, p.hints.routes[KEY][0])
        if e.kind.startswith("scale"):
            assert e.variant_id and e.task == "classify" and e.to_replicas is not None


def test_plan_applies_the_queue_guard_of_the_decision() -> None:
    decision, _ = decide(ctx_at(20.0))  # type: ignore[arg-type]
    guarded = dataclasses.replace(decision, min_workers=6)
    for d, want in ((decision, len(decision.workers)), (guarded, 6)):
        p = plan(d, "infaas", zoo(), now_s=0, min_replicas=1, max_replicas=8, pool=POOL)
        assert p.target.num_replicas == want
    p = plan(guarded, "infaas", zoo(), now_s=0, min_replicas=1, max_replicas=4, pool=POOL)
    assert p.target.num_replicas == 4


# ---------------------------------------------------------------- route_select


def hints(mode: str, variants: list[str]) -> RoutingHints:
    return RoutingHints(ts=0, mode=mode, routes={KEY: variants}, by_task={"classify": variants})  # type: ignore[arg-type]


LOADED = LoadSnapshot({v: VariantLoad(1, 1, 0) for v in ("fp32", "fp32-ov", "int8", "tiny")})
SLO_ = SLO(latency_ms=100, min_accuracy=0.75)
Q = Query.for_task("classify")


def test_route_select_prefers_the_planned_variant() -> None:
    assert route_select(zoo(), Q, SLO_, LOADED, hints("prefer", ["fp32"])).variant_id == "fp32"
    # without hints: the cheapest feasible (select)
    assert route_select(zoo(), Q, SLO_, LOADED, None).variant_id == "int8"


def test_route_select_never_relaxes_accuracy() -> None:
    got = route_select(zoo(), Q, SLO_, LOADED, hints("pin", ["tiny", "fp32"]))
    assert got.variant_id == "fp32"


def test_route_select_upgrades_when_the_planned_variant_is_too_slow() -> None:
    busy = LoadSnapshot({"fp32": VariantLoad(1, 1, 200), "int8": VariantLoad(1, 1, 0)})
    assert route_select(zoo(), Q, SLO_, busy, hints("prefer", ["fp32"])).variant_id == "int8"
    # pinned (plain serving) stays on its variant whatever the load
    assert route_select(zoo(), Q, SLO_, busy, hints("pin", ["fp32"])).variant_id == "fp32"


def test_route_select_refuses_at_once_what_the_queue_makes_late() -> None:
    # every variant meeting the floor has 200 requests queued: no answer in time
    busy = LoadSnapshot({v: VariantLoad(1, 1, 200) for v in ("fp32", "fp32-ov", "int8")})
    tight = SLO(latency_ms=100, min_accuracy=0.75)
    with pytest.raises(NoFeasibleVariant) as e:
        route_select(zoo(), Q, tight, busy, hints("prefer", ["fp32"]))
    assert is_deadline_refusal(e.value)  # final for the client: no retry storm
    # plain serving (pinned baselines) answers late instead
    assert route_select(zoo(), Q, tight, busy, hints("pin", ["fp32"])).variant_id == "fp32"


def test_route_select_best_effort_when_only_a_cold_start_is_late() -> None:
    cold = LoadSnapshot({})
    tight = SLO(latency_ms=30, min_accuracy=0.79)
    with pytest.raises(NoFeasibleVariant):
        route_select(zoo(), Q, tight, cold, None)
    got = route_select(zoo(), Q, tight, cold, hints("prefer", ["fp32"]))
    assert got.variant_id == "fp32" and got.cold_start


def test_route_select_follows_named_queries_not_hints() -> None:
    q = Query.for_variant("tiny")
    assert (
        route_select(zoo(), q, SLO(latency_ms=100), LOADED, hints("pin", ["fp32"])).variant_id
        == "tiny"
    )


# ---------------------------------------------------------------- the loop over a store


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_control_loop_tick_writes_target_routes_and_events() -> None:
    store = MemoryStore()
    clock = Clock()
    events: list[AutoscalerEvent] = []
    loop = ControlLoop(
        store=store,
        config=CFG.model_copy(update={"max_replicas": 4}),
        pool=POOL,
        candidates=zoo,
        record_event=events.append,
        clock=clock,
    )

    def publish(n: int) -> None:
        store.put_load_report("w1", report("w1", clock.t, n))

    publish(0)
    assert loop.tick() is None  # nothing to differentiate yet
    for i in range(1, 4):
        clock.t += 1.0
        publish(400 * i)
        p = loop.tick()
    assert p is not None
    target = read_target(store)
    routes = read_hints(store)
    assert isinstance(target, ReplicaTarget) and isinstance(routes, RoutingHints)
    assert 1 <= target.num_replicas <= 4
    assert routes.routes[KEY]
    assert any(e.kind == "replicas" for e in events)
    assert all(isinstance(e, AutoscalerEvent) and e.kind != "note" for e in events)
    # a class gone silent stays known: a replica keeps one of its variants warm
    clock.t += 1.0
    publish(1200)
    loop.tick()
    silent = read_hints(store)
    assert silent is not None and silent.keep
    assert (read_target(store) or target).num_replicas >= 1


def test_control_loop_counts_rates_over_its_window() -> None:
    """A noisy second does not read as a surge: rates span `rate_window_s` of reports."""
    store = MemoryStore()
    clock = Clock()
    loop = ControlLoop(store=store, config=CFG, pool=POOL, candidates=zoo, clock=clock)
    seen: list[float] = []
    counts = [0, 10, 20, 30, 70, 80]  # 10/s, with one second of 40
    for i, n in enumerate(counts):
        clock.t = 1000.0 + i
        store.put_load_report("w1", report("w1", clock.t, n))
        if loop.tick() is not None:
            assert loop.last is not None
            seen.append(loop.last.provisioned_rps[KEY])
    assert CFG.rate_window_s == 3.0
    # at t=4 the rate is (70 - 10) / 3 = 20/s, not the last second's 40/s
    assert seen[:3] == pytest.approx([10.0, 10.0, 10.0])
    assert max(seen) == pytest.approx(20.0)


def test_control_loop_refuses_unknown_policies() -> None:
    with pytest.raises(ValueError):
        ControlLoop(MemoryStore(), CFG.model_copy(update={"policy": "off"}), POOL, zoo)


def test_control_loop_queue_guard_lives_in_the_policy_state() -> None:
    """A measured queue raises the target for `downscale_delay_s`: the delay is kept in the
    state the policy returns (the loop holds no timer of its own), with the same timing."""
    store = MemoryStore()
    clock = Clock()
    cfg = CFG.model_copy(update={"downscale_delay_s": 5.0, "queue_guard_ongoing_requests": 4.0})
    loop = ControlLoop(store=store, config=cfg, pool=POOL, candidates=zoo, clock=clock)
    targets: list[int] = []
    for i in range(10):
        clock.t = 1000.0 + i
        queue = {"int8": 12} if i == 1 else {}
        rep = report("w1", clock.t, 10 * i, outstanding=queue)
        store.put_load_report("w1", rep)
        p = loop.tick()
        if p is not None:
            targets.append(p.target.num_replicas)
    assert targets[:6] == [3] * 6  # ceil(12 / 4), from t=1 to t=6 (5 s, inclusive)
    assert targets[6:] == [1] * 3


# ---------------------------------------------------------------- Serve options (no Ray started)


def test_scaled_options_per_policy(tmp_path: Path) -> None:
    from enclave_workers.autoscaling import scaled_options

    base = {"name": "EnclaveWorker", "num_replicas": 1}

    def opts(**a: object) -> dict[str, object]:
        s = Settings(data_dir=tmp_path, autoscaler=AutoscalerSettings(**a))  # type: ignore[arg-type]
        return scaled_options(s, base)

    assert opts(policy="off") == base
    assert opts(policy="static", static_replicas=3)["num_replicas"] == 3
    q = opts(policy="queue", max_replicas=4, target_ongoing_requests=3)
    assert "num_replicas" not in q
    cfg = q["autoscaling_config"]
    assert isinstance(cfg, dict) and cfg["target_ongoing_requests"] == 3
    assert cfg["max_replicas"] == 4 and "policy" not in cfg
    i = opts(policy="infaas")["autoscaling_config"]
    assert isinstance(i, dict)
    assert i["upscale_delay_s"] == 0 and i["downscale_delay_s"] == 0
    assert i["policy"].policy_function.endswith(":FollowTarget")


def test_one_autoscaler_config_budgets_follow_the_pool_unless_set(tmp_path: Path) -> None:
    pool = Pool(name="cpu", num_cpus=0.5, cost_per_replica_s=1.0, memory_bytes=512 * MB)
    a = AutoscalerSettings(policy="infaas", max_replicas=6, burst_window_s=4)
    got = a.for_pool(pool)
    assert (got.cpu_budget, got.replica_memory_bytes) == (3.0, 512 * MB)
    assert got.max_replicas_per_pool == got.max_replicas_per_variant == 6
    assert got.burst_window_s == 4 and got.policy == "infaas"
    assert AutoscalerSettings(cpu_budget=1.25).for_pool(pool).cpu_budget == 1.25  # set: kept
    free = Pool(name="free", num_cpus=0, cost_per_replica_s=1.0)
    assert a.for_pool(free).cpu_budget == 1.0
    # a deployment's YAML sets every knob in one flat, validated section
    cfg = tmp_path / "c.yaml"
    cfg.write_text("autoscaler:\n  policy: infaas\n  downscale_delay_s: 20\n  tick_s: 0.5\n")
    s = load_settings(cfg, data_dir=tmp_path)
    assert (s.autoscaler.downscale_delay_s, s.autoscaler.tick_s) == (20, 0.5)
    cfg.write_text("autoscaler:\n  policy_config:\n    burst_window_s: 6\n")
    with pytest.raises(ValidationError):
        load_settings(cfg, data_dir=tmp_path)
    with pytest.raises(ValidationError):
        AutoscalerSettings(min_replicas=3, max_replicas=2)


def test_follow_target_reads_the_loop_target(tmp_path: Path) -> None:
    import time

    from enclave_workers.autoscaling import FollowTarget

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    policy = FollowTarget(url, read_every_s=0.0)
    ctx = SimpleNamespace(target_num_replicas=2, policy_state={"k": 1})
    assert policy(ctx)[0] == 2  # type: ignore[arg-type]  # no target yet: keep Serve's
    with open_store(url) as store:
        t = ReplicaTarget(num_replicas=5, ts=time.time(), policy="infaas")
        store.put_replica_target(t)
    n, state = policy(ctx)  # type: ignore[arg-type]
    assert n == 5 and state == {"k": 1}
    with open_store(url) as store:
        stale = ReplicaTarget(num_replicas=7, ts=time.time() - 3600, policy="infaas")
        store.put_replica_target(stale)
    assert policy(ctx)[0] == 2  # type: ignore[arg-type]
