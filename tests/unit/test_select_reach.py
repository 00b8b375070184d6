"""Selection jumps over candidates below the accuracy floor (`AccuracyReach`) and still
chooses exactly what the plain cheapest-first walk chose, for every input; groups smaller
than `REACH_MIN` are walked plainly."""

from __future__ import annotations

import math
from collections.abc import Set

from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.errors import InfaasError, NoFeasibleVariant
from infaas.settings import Pool
from infaas.types import SLO
from scheduler.policy import (
    IDLE,
    REACH_MIN,
    Candidate,
    CandidateSet,
    LoadSnapshot,
    Query,
    VariantLoad,
    _infeasible,
    predict_p99_ms,
    select,
)
from scheduler.reach import AccuracyReach
from scheduler.synthetic import synthetic_variant

POOLS = [
    Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0),
    Pool(name="small", num_cpus=1, cost_per_replica_s=0.1),
]
ACCURACIES = (0.5, 0.6, 0.7, 0.74, 0.76, 0.8, 0.9)


def walk_select(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    allowed: Set[str] | None,
) -> tuple[Candidate, float]:
    """The walk `select` made before the accuracy index: every candidate, cheapest first."""
    cands = candidates.matching(query)
    max_cost = slo.max_cost / 1000.0 if slo.max_cost is not None else math.inf
    min_acc = slo.min_accuracy
    loads = load.by_variant
    best: Candidate | None = None
    best_p = best_cost = math.inf
    for c in cands:
        cost = c.cost_per_request
        if cost > best_cost or cost > max_cost:
            break
        if c.accuracy < min_acc or (allowed is not None and c.spec.model_id not in allowed):
            continue
        p = predict_p99_ms(c, loads.get(c.variant_id, IDLE))
        if p <= slo.latency_ms and p < best_p:
            best, best_p, best_cost = c, p, cost
    if best is None:
        raise _infeasible(cands, query, slo, loads, allowed)
    return best, best_p


variant_st = st.tuples(
    st.one_of(st.sampled_from(ACCURACIES), st.floats(0.4, 0.95)),  # accuracy, ties likely
    st.sampled_from([2.0, 5.0, 20.0, 60.0]),  # intercept: equal costs happen
    st.sampled_from([0.0, 0.5, 2.0]),  # slope
    st.sampled_from(["cpu", "small"]),
    st.integers(0, 4),  # model (of 5)
    st.integers(0, 2),  # task (of 3)
    st.integers(0, 2),  # loaded replicas
    st.integers(0, 200),  # outstanding
)


@settings(max_examples=300, deadline=None)
@given(
    variants=st.lists(variant_st, min_size=1, max_size=80),
    latency_ms=st.floats(2.0, 600.0),
    min_accuracy=st.one_of(st.sampled_from(ACCURACIES), st.floats(0.0, 1.0)),
    max_cost=st.one_of(st.none(), st.floats(0.01, 200.0)),
    allowed=st.one_of(st.none(), st.sets(st.integers(0, 4))),
    kind=st.sampled_from(["task", "architecture", "model"]),
    name=st.integers(0, 4),
)
def test_indexed_select_chooses_what_the_full_walk_chose(
    variants: list[tuple[float, float, float, str, int, int, int, int]],
    latency_ms: float,
    min_accuracy: float,
    max_cost: float | None,
    allowed: set[int] | None,
    kind: str,
    name: int,
) -> None:
    specs, profiles, loads = [], [], {}
    for i, (acc, a, b, pool, model, task, rep, q) in enumerate(variants):
        s, p = synthetic_variant(
            f"v{i}",
            task=f"t{task}",
            architecture=f"arch{model % 3}",
            model_id=f"m{model}",
            accuracy=acc,
            intercept_ms=a,
            slope_ms=b,
            pool=pool,
            load_ms=100.0,
        )
        specs.append(s)
        profiles.append(p)
        loads[f"v{i}"] = VariantLoad(rep, rep, q)
    built = CandidateSet.build(specs, profiles, POOLS)
    load = LoadSnapshot(loads)
    slo = SLO(latency_ms=latency_ms, min_accuracy=min_accuracy, max_cost=max_cost)
    query = {
        "task": Query.for_task(f"t{name % 3}"),
        "architecture": Query.for_architecture(f"arch{name % 3}"),
        "model": Query.for_model(f"m{name}"),
    }[kind]
    models = None if allowed is None else {f"m{m}" for m in allowed}
    # the indexed walk (every group indexed) and the plain one (these groups are small)
    for cs in (CandidateSet(built, reach_min=0), built):
        assert_selects_as_the_walk(cs, query, slo, load, models)


def assert_selects_as_the_walk(
    cs: CandidateSet, query: Query, slo: SLO, load: LoadSnapshot, models: set[str] | None
) -> None:
    try:
        want, want_p = walk_select(cs, query, slo, load, models)
    except InfaasError as expected:
        try:
            select(cs, query, slo, load, allowed=models)
        except InfaasError as got:
            assert type(got) is type(expected)
            assert str(got) == str(expected)
            if isinstance(got, NoFeasibleVariant):
                assert got.detail == expected.detail
        else:
            raise AssertionError(f"select chose a variant where the walk raised {expected!r}")
        return
    sel = select(cs, query, slo, load, allowed=models)
    assert sel.candidate is want
    assert sel.predicted_p99_ms == want_p


def test_only_groups_of_reach_min_or_more_are_indexed() -> None:
    specs, profiles = [], []
    for i in range(REACH_MIN):
        s, p = synthetic_variant(
            f"v{i}", task="big" if i < REACH_MIN - 1 else "small", accuracy=0.5 + i / 4096
        )
        specs.append(s)
        profiles.append(p)
    cs = CandidateSet.build(specs, profiles, POOLS)
    assert cs.reach(Query.for_task("big"))[1] is None  # REACH_MIN - 1 candidates
    assert cs.reach(Query.for_task("small"))[1] is None
    extra, extra_profile = synthetic_variant("extra", task="big")
    cs = CandidateSet.build([*specs, extra], [*profiles, extra_profile], POOLS)
    got = cs.reach(Query.for_task("big"))[1]
    assert got is not None and len(got.accuracy) == REACH_MIN


@settings(max_examples=300, deadline=None)
@given(
    accuracy=st.lists(st.one_of(st.sampled_from(ACCURACIES), st.floats(0.0, 1.0)), max_size=70),
    start=st.integers(0, 75),
    floor=st.one_of(st.sampled_from(ACCURACIES), st.floats(-1.0, 2.0)),
)
def test_first_from_is_the_first_position_reaching_the_floor(
    accuracy: list[float], start: int, floor: float
) -> None:
    reach = AccuracyReach(accuracy)
    want = next((j for j in range(start, len(accuracy)) if accuracy[j] >= floor), len(accuracy))
    assert reach.first_from(start, floor) == want
