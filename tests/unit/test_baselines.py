"""The baselines, each INFaaS rule pinned to its reference behaviour on small synthetic loads.

Reference: stanford-mast/INFaaS, ``src/worker/autoscaler.cc`` (``checkModvar``,
``InfaasScaler``, ``CpuAutoscalerDaemon``), ``src/master/queryfe_server.cc``
(variant search) and ``src/worker/query_executor.cc`` (``qpsMonitor``'s
blacklist). Numbers: fp32 serves one request in 20 ms (50 rps a replica),
int8 in 5 ms (200 rps), both of model resnet50; tiny (mobilenet) in 2 ms but
below a 0.75 floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infaas.settings import AutoscalerSettings, Pool
from infaas.types import Precision
from scheduler.autoscaler import AutoscalerState, AutoscalingContext, DemandSignal, ScalingDecision
from scheduler.baselines import (
    INFAAS_SCALE_DOWN_CHECKS,
    blacklisted,
    infaas_policy,
    static_modelless_policy,
    static_policy,
)
from scheduler.policy import CandidateSet, LoadSnapshot, VariantLoad
from scheduler.synthetic import synthetic_variant

MB = 1024**2
CPU = Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0)


def zoo() -> CandidateSet:
    specs = [
        synthetic_variant(
            "fp32",
            accuracy=0.80,
            intercept_ms=18,
            slope_ms=2,
            load_ms=300,
            peak_memory_bytes=800 * MB,
        ),
        synthetic_variant(
            "int8",
            precision=Precision.INT8,
            accuracy=0.78,
            intercept_ms=4,
            slope_ms=1,
            load_ms=200,
            peak_memory_bytes=300 * MB,
        ),
        synthetic_variant(
            "tiny",
            architecture="mobilenet",
            precision=Precision.INT8,
            accuracy=0.70,
            intercept_ms=1,
            slope_ms=1,
            load_ms=100,
            peak_memory_bytes=100 * MB,
        ),
    ]
    return CandidateSet.build([s for s, _ in specs], [p for _, p in specs], [CPU])


CFG = AutoscalerSettings(
    cpu_budget=8,
    max_replicas_per_pool=8,
    max_replicas_per_variant=8,
    replica_memory_bytes=2048 * MB,
    static_replicas=2,
)
KEY = "classify"


def sig(rps: float, floor: float = 0.75, latency_ms: float = 100) -> tuple[DemandSignal, ...]:
    return (DemandSignal("classify", rps, latency_ms, floor),)


def step(
    demands: Sequence[DemandSignal],
    state: AutoscalerState,
    *,
    load: Mapping[str, VariantLoad] | None = None,
    cfg: AutoscalerSettings = CFG,
    now: float = 1.0,
) -> tuple[ScalingDecision, AutoscalerState]:
    ctx = AutoscalingContext(
        now, zoo(), LoadSnapshot(dict(load or {}), now), tuple(demands), cfg, state
    )
    return infaas_policy(ctx)


def running(replicas: Mapping[str, int], primary: str | None = None) -> AutoscalerState:
    return AutoscalerState(replicas=dict(replicas), primary={KEY: primary} if primary else {})


# ---------------------------------------------------------------- variant selection (master)


def test_master_loads_the_quickest_to_load_and_run_variant_when_none_runs() -> None:
    d, _ = step(sig(10), AutoscalerState())
    # fp32: 300 + 20 ms, int8: 200 + 5 ms; tiny is below the floor
    assert d.primary(KEY) == "int8"
    assert d.replicas == {"int8": 1}


def test_master_prefers_the_running_variant_with_least_slack() -> None:
    d, _ = step(sig(10), running({"fp32": 1, "int8": 1}))
    assert d.primary(KEY) == "fp32"  # 100 - 20 < 100 - 5
    d, _ = step(sig(10, latency_ms=10), running({"fp32": 1, "int8": 1}))
    assert d.primary(KEY) == "int8"  # fp32's 20 ms does not fit a 10 ms target


def test_master_skips_a_blacklisted_variant() -> None:
    state = AutoscalerState(replicas={"fp32": 1, "int8": 1}, blacklist=frozenset({"fp32"}))
    # fp32 is still over its bound (queue 60 > 1.1 x 1 x 50): stays blacklisted
    d, st = step(sig(10), state, load={"fp32": VariantLoad(1, 1, 60)})
    assert d.primary(KEY) == "int8"
    assert st.blacklist == frozenset({"fp32"})


# ---------------------------------------------------------------- blacklist (qpsMonitor)


def test_blacklist_thresholds() -> None:
    c = zoo().get("fp32")
    assert c is not None
    # two replicas: 2.5x the 20 ms profile while above half the 50 rps capacity per replica
    assert blacklisted(c, 2, qps=60, queue=0, latency_ms=51, was=False)
    assert not blacklisted(c, 2, qps=60, queue=0, latency_ms=49, was=False)
    assert not blacklisted(c, 2, qps=40, queue=0, latency_ms=51, was=False)  # 20 rps a replica
    # or a queue above 0.8 x replicas x capacity
    assert blacklisted(c, 2, qps=0, queue=81, latency_ms=0, was=False)
    # one CPU replica: 4x, the full capacity and 1.1x the queue
    assert not blacklisted(c, 1, qps=60, queue=0, latency_ms=70, was=False)
    assert blacklisted(c, 1, qps=60, queue=0, latency_ms=81, was=False)
    assert blacklisted(c, 1, qps=0, queue=56, latency_ms=0, was=False)
    # cleared below 1.5x the profile with a short queue; kept in between
    assert not blacklisted(c, 2, qps=60, queue=0, latency_ms=29, was=True)
    assert blacklisted(c, 2, qps=60, queue=0, latency_ms=31, was=True)


# ---------------------------------------------------------------- replicas (checkModvar + daemon)


def test_scale_up_adds_every_replica_needed_at_once() -> None:
    # floor .79: int8 (.78) is no alternative, so fp32 replicates
    # 180 rps on one 50 rps replica: ceil((180 - 0.95 x 50) / 50) = ceil(2.65) = 3 more
    d, _ = step(sig(180, floor=0.79), running({"fp32": 1}, "fp32"))
    assert d.replicas == {"fp32": 4}
    # headroom: 48 rps on one replica (above 0.95 x 50) already asks for one more
    d, _ = step(sig(48, floor=0.79), running({"fp32": 1}, "fp32"))
    assert d.replicas == {"fp32": 2}
    d, _ = step(sig(47, floor=0.79), running({"fp32": 1}, "fp32"))
    assert d.replicas == {"fp32": 1}


def test_scale_up_beyond_the_per_variant_maximum_is_refused_whole() -> None:
    cfg = CFG.model_copy(update={"max_replicas_per_variant": 2})
    d, _ = step(sig(180, floor=0.79), running({"fp32": 1}, "fp32"), cfg=cfg)
    assert d.replicas == {"fp32": 1}  # 1 + 3 > 2: "Exceeds maximum CPU replicas", not clipped


def test_scale_up_beyond_the_node_is_refused() -> None:
    cfg = CFG.model_copy(update={"cpu_budget": 3})
    d, _ = step(sig(180, floor=0.79), running({"fp32": 1}, "fp32"), cfg=cfg)
    assert d.replicas == {"fp32": 1}  # 4 worker replicas do not fit 3 CPUs


def test_scale_down_after_eleven_checks_where_one_fewer_suffices() -> None:
    state = running({"fp32": 3}, "fp32")
    seen = []
    for i in range(INFAAS_SCALE_DOWN_CHECKS + 1):
        # 90 rps: 2 x 50 suffice
        d, state = step(sig(90, floor=0.79), state, now=float(i))
        seen.append(d.replicas["fp32"])
    assert seen == [3] * INFAAS_SCALE_DOWN_CHECKS + [2]
    # the count restarts after an executed change
    d, state = step(sig(90, floor=0.79), state, now=20.0)
    assert d.replicas["fp32"] == 2


def test_an_executed_scale_up_resets_the_scale_down_count() -> None:
    state = running({"fp32": 3}, "fp32")
    for i in range(INFAAS_SCALE_DOWN_CHECKS):
        _, state = step(sig(90, floor=0.79), state, now=float(i))
    d, state = step(sig(200, floor=0.79), state, now=11.0)
    assert d.replicas["fp32"] == 5  # ceil((200 - 0.95 x 150) / 50) = 2 more
    d, state = step(sig(90, floor=0.79), state, now=12.0)
    assert d.replicas["fp32"] == 5


def test_an_idle_variant_is_unloaded_after_the_delay() -> None:
    state = running({"fp32": 1, "int8": 1}, "fp32")
    for i in range(INFAAS_SCALE_DOWN_CHECKS + 1):
        d, state = step(sig(10, floor=0.79), state, now=float(i))
    assert d.replicas == {"fp32": 1}  # int8 carried nothing


def test_utilisation_is_per_variant_over_all_its_classes() -> None:
    # two classes, 30 rps each, both on fp32: 60 rps on one 50 rps replica -> scale up
    demands = (
        DemandSignal("classify", 30, 100, 0.79, "a"),
        DemandSignal("classify", 30, 200, 0.79, "b"),
    )
    state = AutoscalerState(replicas={"fp32": 1}, primary={"a": "fp32", "b": "fp32"})
    d, _ = step(demands, state)
    assert d.replicas == {"fp32": 2}


def test_variants_are_packed_on_worker_replicas() -> None:
    d, _ = step(sig(10), running({"fp32": 1, "int8": 1}, "fp32"))
    assert len(d.workers) == 1 and set(d.workers[0].variants) == {"fp32", "int8"}


# ---------------------------------------------------------------- upgrade by cost (InfaasScaler)


def test_switches_to_the_fastest_variant_when_replicating_costs_more_than_1_5x() -> None:
    # fp32 needs 3 more replicas: 3 x 300 ms of loading; int8 needs 1: 200 ms; 900 > 1.5 x 200
    d, _ = step(sig(180), running({"fp32": 1}, "fp32"))
    assert d.replicas == {"fp32": 1, "int8": 1}


def test_replicates_when_switching_is_not_cheap_enough() -> None:
    # fp32 needs 1 more (300 ms); int8 would need 1 (200 ms): 300 <= 1.5 x 200, replicate
    d, _ = step(sig(60), running({"fp32": 1}, "fp32"))
    assert d.replicas == {"fp32": 2}


# ---------------------------------------------------------------- static baselines


def test_static_modelless_cheapest_variant_per_floor_on_fixed_replicas() -> None:
    demands = (
        DemandSignal("classify", 10, 100, 0.75, "a"),
        DemandSignal("classify", 10, 100, 0.60, "b"),
        DemandSignal("classify", 10, 100, 0.79, "c"),
    )
    for rps in (1, 1000):
        ds = tuple(
            DemandSignal(d.task, rps, d.latency_ms, d.min_accuracy, d.demand_id) for d in demands
        )
        ctx = AutoscalingContext(1.0, zoo(), LoadSnapshot({}, 1.0), ds, CFG, AutoscalerState())
        d, _ = static_modelless_policy(ctx)
        assert {k: d.primary(k) for k in "abc"} == {"a": "int8", "b": "tiny", "c": "fp32"}
        assert d.replicas == {"int8": 2, "tiny": 2, "fp32": 2}
        assert len(d.workers) == 2  # packed: 1200 MB of variants per 2048 MB replica


def test_static_fp32_is_not_model_less() -> None:
    ctx = AutoscalingContext(1.0, zoo(), LoadSnapshot({}, 1.0), sig(10), CFG, AutoscalerState())
    d, _ = static_policy(ctx)
    assert d.replicas == {"fp32": 2} and d.primary(KEY) == "fp32"
