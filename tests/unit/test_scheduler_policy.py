"""Variant selection: cheapest feasible under accuracy, latency-under-load and cost."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.errors import ModelNotFound, NoFeasibleVariant, VariantNotFound
from infaas.settings import Pool
from infaas.types import SLO, Backend, Precision
from scheduler.baselines import select_least_slack
from scheduler.policy import (
    CandidateSet,
    LoadSnapshot,
    Query,
    VariantLoad,
    predict_p99_ms,
    select,
)
from scheduler.synthetic import synthetic_variant

CPU = Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0)
SMALL = Pool(name="small", num_cpus=1, cost_per_replica_s=0.1)
TASK = Query.for_task("classify")


def zoo() -> CandidateSet:
    """idle p99 (tail 1.2): slow-cheap 52.8, mid 26.4, int8 7.8, bf16 7.2, big 66 ms."""
    specs = [
        synthetic_variant("slow-cheap", pool="small", accuracy=0.76, intercept_ms=40, slope_ms=4),
        synthetic_variant("mid", accuracy=0.76, intercept_ms=20, slope_ms=2),
        synthetic_variant(
            "int8",
            precision=Precision.INT8,
            accuracy=0.74,
            intercept_ms=6,
            slope_ms=0.5,
        ),
        synthetic_variant(
            "bf16",
            precision=Precision.BF16,
            backend=Backend.OPENVINO,
            accuracy=0.755,
            intercept_ms=5,
            slope_ms=0.4,
        ),
        synthetic_variant(
            "big",
            architecture="resnet152",
            accuracy=0.78,
            intercept_ms=50,
            slope_ms=5,
        ),
    ]
    return CandidateSet.build([s for s, _ in specs], [p for _, p in specs], [CPU, SMALL])


ALL = ("slow-cheap", "mid", "int8", "bf16", "big")


def loaded(*ids: str, outstanding: int = 0) -> LoadSnapshot:
    return LoadSnapshot({v: VariantLoad(1, 1, outstanding) for v in ids})


def test_cheapest_feasible_chosen_with_loose_slo() -> None:
    sel = select(zoo(), TASK, SLO(latency_ms=100), loaded(*ALL))
    assert sel.variant_id == "slow-cheap"
    assert sel.pool == "small"
    assert not sel.cold_start
    assert "slow-cheap on small" in sel.reason
    costs = {c.variant_id: c.cost_per_request for c in zoo().all}
    assert costs["slow-cheap"] == min(costs.values())


def test_tight_slo_picks_faster_variant_than_loose_one() -> None:
    cs, load = zoo(), loaded(*ALL)
    loose = select(cs, TASK, SLO(latency_ms=100), load)
    tight = select(cs, TASK, SLO(latency_ms=10), load)
    assert tight.variant_id == "bf16"
    assert tight.predicted_p99_ms < loose.predicted_p99_ms
    assert tight.predicted_p99_ms <= 10


def test_accuracy_floor_respected() -> None:
    sel = select(zoo(), TASK, SLO(latency_ms=100, min_accuracy=0.77), loaded(*ALL))
    assert sel.variant_id == "big"
    assert sel.candidate.accuracy >= 0.77


def test_cold_start_counted() -> None:
    cs = zoo()
    slo = SLO(latency_ms=30, min_accuracy=0.75)
    # bf16 is the cheapest that fits, but only while it is loaded: 300 ms load breaks 30 ms
    warm = select(cs, TASK, slo, loaded(*ALL))
    assert warm.variant_id == "bf16"
    cold = select(cs, TASK, slo, loaded("slow-cheap", "mid", "big"))
    assert cold.variant_id == "mid"
    assert not cold.cold_start
    # with a loose target the cold start is affordable and reported
    relaxed = select(cs, Query.for_variant("bf16"), SLO(latency_ms=400), LoadSnapshot())
    assert relaxed.cold_start
    assert relaxed.predicted_p99_ms == pytest.approx(300 + 1.2 * 5.4)
    assert "cold start" in relaxed.reason


def test_queue_moves_choice_to_less_loaded_variant() -> None:
    cs = zoo()
    busy = LoadSnapshot(
        {
            "bf16": VariantLoad(1, 1, outstanding=200),
            "int8": VariantLoad(1, 1, 0),
            "mid": VariantLoad(1, 1, 0),
        }
    )
    sel = select(cs, TASK, SLO(latency_ms=30), busy)
    assert sel.variant_id == "int8"
    # more replicas of bf16 spread the same queue: it is feasible again
    spread = LoadSnapshot({"bf16": VariantLoad(16, 16, outstanding=200)})
    assert select(cs, TASK, SLO(latency_ms=30), spread).variant_id == "bf16"


def test_queue_estimate_full_batches() -> None:
    c = zoo().variant("bf16")
    # 40 ahead on one replica, ours the 41st: one full batch of 32, then 9
    p = predict_p99_ms(c, VariantLoad(1, 1, outstanding=40))
    assert p == pytest.approx(1.2 * ((5 + 0.4 * 32) + (5 + 0.4 * 9)))
    # loading replicas: queue spreads over them and the load time is added
    p_cold = predict_p99_ms(c, VariantLoad(2, 0, outstanding=2))
    assert p_cold == pytest.approx(300 + 1.2 * (5 + 0.4 * 2))


def test_work_of_other_variants_on_shared_threads_counts() -> None:
    cs = zoo()
    c = cs.variant("int8")
    idle = predict_p99_ms(c, VariantLoad(1, 1, 0))
    # another variant's queue on the same inference thread runs first
    assert predict_p99_ms(c, VariantLoad(1, 1, 0, ahead_ms=80.0)) == pytest.approx(idle + 80.0)
    behind = LoadSnapshot(
        {"int8": VariantLoad(1, 1, 0, ahead_ms=500.0), "mid": VariantLoad(1, 1, 0)}
    )
    assert select(cs, TASK, SLO(latency_ms=60), loaded("int8", "mid")).variant_id == "int8"
    assert select(cs, TASK, SLO(latency_ms=60), behind).variant_id != "int8"
    with pytest.raises(ValueError, match="ahead_ms"):
        VariantLoad(1, 1, 0, ahead_ms=-1.0)


def test_ties_in_cost_go_to_lower_latency() -> None:
    a = synthetic_variant("a", intercept_ms=10, slope_ms=1)  # L(32)=42, L(1)=11
    b = synthetic_variant("b", intercept_ms=26, slope_ms=0.5)  # L(32)=42, L(1)=26.5
    cs = CandidateSet.build([b[0], a[0]], [b[1], a[1]], [CPU])
    ca, cb = cs.variant("a"), cs.variant("b")
    assert ca.cost_per_request == pytest.approx(cb.cost_per_request)
    assert select(cs, TASK, SLO(latency_ms=100), loaded("a", "b")).variant_id == "a"


def test_no_variant_accurate_enough() -> None:
    with pytest.raises(NoFeasibleVariant) as e:
        select(zoo(), TASK, SLO(latency_ms=100, min_accuracy=0.99), loaded(*ALL))
    err = e.value
    assert err.status_code == 422
    assert err.message == "no variant of task classify reaches min_accuracy 0.99 (best 0.78: big)"
    assert err.detail["reason"] == "accuracy"
    assert err.detail["closest"]["variant_id"] == "big"


def test_no_variant_fast_enough() -> None:
    with pytest.raises(NoFeasibleVariant) as e:
        select(zoo(), TASK, SLO(latency_ms=5, min_accuracy=0.757), loaded(*ALL))
    err = e.value
    assert err.detail["reason"] == "latency"
    assert "meets 5 ms p99" in err.message
    assert "fastest mid predicts 26.4 ms p99" in err.message
    assert err.detail["closest"]["variant_id"] == "mid"
    assert err.detail["closest"]["predicted_p99_ms"] == pytest.approx(26.4)
    body = err.to_problem()
    assert body["code"] == "no_feasible_variant"


def test_infeasible_names_cold_start() -> None:
    with pytest.raises(NoFeasibleVariant) as e:
        select(zoo(), Query.for_variant("bf16"), SLO(latency_ms=50), LoadSnapshot())
    assert "300.0 ms of it cold start" in e.value.message
    assert e.value.detail["closest"]["cold_start"] is True


def test_max_cost() -> None:
    cs = zoo()
    ok = select(cs, TASK, SLO(latency_ms=100, max_cost=10.0), loaded(*ALL))
    assert ok.variant_id == "slow-cheap"
    with pytest.raises(NoFeasibleVariant) as e:
        select(cs, TASK, SLO(latency_ms=10, max_cost=0.1), loaded(*ALL))
    assert e.value.detail["reason"] == "cost"
    assert e.value.detail["closest"]["variant_id"] == "bf16"


def test_query_by_architecture_model_and_variant() -> None:
    cs, load = zoo(), loaded(*ALL)
    assert select(
        cs, Query.for_architecture("resnet152"), SLO(latency_ms=100), load
    ).variant_id == ("big")
    # an exact variant is honoured even when a cheaper one would do
    assert select(cs, Query.for_variant("mid"), SLO(latency_ms=100), load).variant_id == "mid"
    assert select(cs, Query.for_model("resnet50"), SLO(latency_ms=10), load).variant_id == "bf16"
    with pytest.raises(VariantNotFound):
        select(cs, Query.for_variant("nope"), SLO(latency_ms=100), load)
    with pytest.raises(ModelNotFound):
        select(cs, Query.for_model("nope"), SLO(latency_ms=100), load)
    with pytest.raises(NoFeasibleVariant) as e:
        select(cs, Query.for_task("translate"), SLO(latency_ms=100), load)
    assert e.value.detail["reason"] == "unregistered"


def test_least_slack_baseline() -> None:
    cs, load = zoo(), loaded(*ALL)
    sel = select_least_slack(cs, TASK, SLO(latency_ms=30), load)
    assert sel.variant_id == "mid"  # 26.4 ms: the least slack under 30 ms
    # it prefers a loaded variant over an unloaded one that fits with less slack
    sel = select_least_slack(cs, TASK, SLO(latency_ms=400), loaded("bf16"))
    assert sel.variant_id == "bf16"
    with pytest.raises(NoFeasibleVariant):
        select_least_slack(cs, TASK, SLO(latency_ms=100, min_accuracy=0.99), load)


def test_candidate_set_build() -> None:
    s, p = synthetic_variant("x")
    s2, _ = synthetic_variant("unprofiled")
    cs = CandidateSet.build([s, s2], [p], [CPU])
    assert [c.variant_id for c in cs.all] == ["x"]
    with pytest.raises(ValueError, match="twice"):
        CandidateSet([cs.variant("x"), cs.variant("x")])
    assert cs.tasks() == ("classify",)


# ---------------------------------------------------------------- properties

variant_st = st.tuples(
    st.floats(0.5, 0.95),  # accuracy
    st.floats(1.0, 60.0),  # intercept
    st.floats(0.0, 5.0),  # slope
    st.sampled_from(["cpu", "small"]),
    st.integers(0, 2),  # loaded replicas
    st.integers(0, 300),  # outstanding
    st.sampled_from([0.0, 50.0, 500.0]),  # load_ms
)


@settings(max_examples=150, deadline=None)
@given(
    variants=st.lists(variant_st, min_size=1, max_size=12),
    latency_ms=st.floats(2.0, 800.0),
    min_accuracy=st.floats(0.0, 1.0),
)
def test_selection_matches_brute_force(
    variants: list[tuple[float, float, float, str, int, int, float]],
    latency_ms: float,
    min_accuracy: float,
) -> None:
    specs, profiles, loads = [], [], {}
    for i, (acc, a, b, pool, rep, q, load_ms) in enumerate(variants):
        s, p = synthetic_variant(
            f"v{i}", accuracy=acc, intercept_ms=a, slope_ms=b, pool=pool, load_ms=load_ms
        )
        specs.append(s)
        profiles.append(p)
        loads[f"v{i}"] = VariantLoad(rep, rep, q)
    cs = CandidateSet.build(specs, profiles, [CPU, SMALL])
    load = LoadSnapshot(loads)
    slo = SLO(latency_ms=latency_ms, min_accuracy=min_accuracy)
    feasible = [
        c
        for c in cs.all
        if c.accuracy >= min_accuracy and predict_p99_ms(c, load.get(c.variant_id)) <= latency_ms
    ]
    try:
        sel = select(cs, TASK, slo, load)
    except NoFeasibleVariant as e:
        assert not feasible
        assert e.detail["reason"] in {"accuracy", "latency"}
        assert e.detail["closest"]["variant_id"] in {c.variant_id for c in cs.all}
        return
    assert sel.candidate.accuracy >= min_accuracy  # the floor is never violated
    assert sel.predicted_p99_ms <= latency_ms
    assert sel.cost_per_request == min(c.cost_per_request for c in feasible)
    assert math.isclose(
        sel.predicted_p99_ms,
        min(
            predict_p99_ms(c, load.get(c.variant_id))
            for c in feasible
            if c.cost_per_request == sel.cost_per_request
        ),
    )


@settings(max_examples=100, deadline=None)
@given(
    a=st.floats(0.5, 50.0),
    b=st.floats(0.0, 5.0),
    replicas=st.integers(1, 8),
    q1=st.integers(0, 500),
    q2=st.integers(0, 500),
)
def test_prediction_grows_with_queue(a: float, b: float, replicas: int, q1: int, q2: int) -> None:
    c = CandidateSet.build(
        *[[x] for x in synthetic_variant("v", intercept_ms=a, slope_ms=b)], [CPU]
    )
    v = c.variant("v")
    lo, hi = sorted((q1, q2))
    assert (
        predict_p99_ms(v, VariantLoad(replicas, replicas, lo))
        <= predict_p99_ms(v, VariantLoad(replicas, replicas, hi)) + 1e-9
    )
