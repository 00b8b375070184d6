"""Selection chooses what its documented rule chooses, for every input, by both walks.

The oracle is brute force over every candidate, written from `scheduler.policy`'s
rule and sharing none of `select`'s loop: the candidates the query names (task,
architecture or model), inside the tenant's models when given, that are feasible
(accuracy ``>= slo.min_accuracy``; predicted p99 ``<= slo.latency_ms``; cost per
request ``<= slo.max_cost / 1000`` when set), the minimum by (cost, predicted p99)
— "ties in cost go to the lower predicted latency" — and, where both tie, the
first in the candidate set's order (`CandidateSet.all`: cost, then idle p99, then
registration). When none is feasible, the refusal names the first constraint
nothing meets, in the documented order: unregistered, consent, accuracy, latency,
cost. Both walks must agree with it: the indexed one (every group given an
`AccuracyReach`) and the plain one (groups under `REACH_MIN`), through `select`
and through `route_select` without hints.
"""

from __future__ import annotations

import math
from collections.abc import Set

from hypothesis import given, settings
from hypothesis import strategies as st

from infaas.errors import ModelNotFound, NoFeasibleVariant, PermissionDenied
from infaas.settings import Pool
from infaas.types import SLO
from scheduler.policy import (
    REACH_MIN,
    Candidate,
    CandidateSet,
    LoadSnapshot,
    Query,
    QueryKind,
    VariantLoad,
    predict_p99_ms,
    route_select,
    select,
)
from scheduler.reach import AccuracyReach
from scheduler.synthetic import synthetic_variant

POOLS = [
    Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0),
    Pool(name="small", num_cpus=1, cost_per_replica_s=0.1),
]
ACCURACIES = (0.5, 0.6, 0.7, 0.74, 0.76, 0.8, 0.9)


def _named(c: Candidate, query: Query) -> bool:
    return {
        QueryKind.TASK: c.spec.task,
        QueryKind.ARCHITECTURE: c.spec.architecture,
        QueryKind.MODEL: c.spec.model_id,
        QueryKind.VARIANT: c.variant_id,
    }[query.kind] == query.name


def cheapest_feasible(
    cs: CandidateSet, query: Query, slo: SLO, load: LoadSnapshot, allowed: Set[str] | None
) -> tuple[Candidate, float] | tuple[type[Exception], str | None]:
    """The documented choice, by brute force: (candidate, its predicted p99), or the
    refusal's (type, reason) when nothing is feasible."""
    order = {c.variant_id: i for i, c in enumerate(cs.all)}
    named = [c for c in cs.all if _named(c, query)]
    if not named:
        if query.kind is QueryKind.MODEL:
            return ModelNotFound, None
        return NoFeasibleVariant, "unregistered"
    if allowed is not None:
        if query.kind is QueryKind.MODEL and query.name not in allowed:
            return PermissionDenied, None
        named = [c for c in named if c.spec.model_id in allowed]
        if not named:
            return NoFeasibleVariant, "consent"
    accurate = [c for c in named if c.accuracy >= slo.min_accuracy]
    if not accurate:
        return NoFeasibleVariant, "accuracy"
    predicted = [(c, predict_p99_ms(c, load.get(c.variant_id))) for c in accurate]
    fast = [(c, p) for c, p in predicted if p <= slo.latency_ms]
    if not fast:
        return NoFeasibleVariant, "latency"
    max_cost = math.inf if slo.max_cost is None else slo.max_cost / 1000.0
    cheap = [(c, p) for c, p in fast if c.cost_per_request <= max_cost]
    if not cheap:
        return NoFeasibleVariant, "cost"
    return min(cheap, key=lambda cp: (cp[0].cost_per_request, cp[1], order[cp[0].variant_id]))


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
def test_both_walks_choose_the_cheapest_feasible_variant(
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
    want = cheapest_feasible(built, query, slo, load, models)
    # the indexed walk (every group indexed) and the plain one (these groups are small)
    for cs in (CandidateSet(built, reach_min=0), built):
        assert cs.all == built.all
        for choose in (select, lambda *a, **k: route_select(*a, None, **k)):
            try:
                sel = choose(cs, query, slo, load, allowed=models)
            except (NoFeasibleVariant, ModelNotFound, PermissionDenied) as e:
                got: tuple[object, object] = (type(e), e.detail.get("reason"))
            else:
                assert sel.cold_start == (load.get(sel.variant_id).loaded_replicas == 0)
                got = (sel.candidate, sel.predicted_p99_ms)
            assert got == want, (cs, choose)


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
