"""Variant selection: the model-less decision made for every request, and the load it sees.

`select(candidates, query, slo, load)` returns the cheapest variant that is
feasible for the caller's SLO under the current load:

* **accuracy**: ``profile.accuracy >= slo.min_accuracy`` (never relaxed);
* **latency**: predicted p99 ``<= slo.latency_ms`` under current load;
* **cost**: cost per 1000 requests ``<= slo.max_cost`` when the caller set one.

Cost of one request is ``pool.cost_per_replica_s`` times the replica-seconds a
request consumes when the variant runs at its best measured throughput
(``1 / peak_throughput_rps``): the amortised service time the autoscaler
provisions for. Ties in cost go to the lower predicted latency.

Latency under load (documented estimate, cheap enough for the request path)::

    r      = loaded replicas (or all replicas, at least 1, while it is loading)
    k      = outstanding / r + 1            requests at the replica, ours included
    nb     = ceil(k / B)                    batches of at most B = max_batch
    t      = (nb - 1) * L(B) + L(k - (nb - 1) * B)
    p99    = tail * t  (+ load_ms when no replica has the variant loaded)

where ``L(b) = intercept + slope * b`` is the profile's latency model and
``tail = p99 / p50`` at the smallest measured batch; a worker adds the work
other variants have queued on its shared inference threads (``ahead_ms``). The queue is served
FIFO in full batches, the batch in flight counted as a whole batch ahead,
which is conservative. Measured arrival rate is the autoscaler's input; the
instantaneous queue (``outstanding``) already reflects it here.

Consent: a worker passes ``allowed``, the models the tenant may use (its owner
granted it and the tenant accepted it or its owner, as the key service released
them); selection then happens inside that set only, a query naming a model or
variant outside it is refused (403), and the 422 says "a model you accepted".

Everything per variant that does not depend on the request is computed once in
`CandidateSet.build`, when profiles change, so a decision is a short loop over
pre-sorted candidates with an early exit on cost. In a group of at least
`REACH_MIN` candidates it jumps over the runs below the accuracy floor
(`AccuracyReach`) instead of stepping through them; a smaller group is walked
plainly, which costs fewer instructions there (`bench/select_instructions.py`).

The load a decision sees is a `LoadSnapshot` (per-variant `VariantLoad`, `scheduler.load`), built
by the control loop from the workers' reports or by a worker from its own
queues. `route_select` is a worker's per-request choice under the control
loop's `RoutingHints`; `demand_key` names the demand classes both count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from infaas.errors import ModelNotFound, NoFeasibleVariant, PermissionDenied, VariantNotFound
from infaas.settings import Pool
from infaas.types import SLO, Profile, VariantSpec
from scheduler.load import IDLE, LoadSnapshot, VariantLoad
from scheduler.reach import AccuracyReach

if TYPE_CHECKING:  # the hints are a store record; the decision only reads them
    from scheduler.routing import RoutingHints

REACH_MIN = 1024
"""Groups of at least this many candidates get an `AccuracyReach` (measured: below it the
plain walk executes fewer instructions; `bench/sim.py select --reach-sweep`)."""

__all__ = [
    "IDLE",
    "Candidate",
    "CandidateSet",
    "LoadSnapshot",
    "Query",
    "QueryKind",
    "Selection",
    "VariantLoad",
    "demand_key",
    "pinned",
    "predict_p99_ms",
    "route_select",
    "select",
]


# --- the query and the decision ------------------------------------------------------


def demand_key(task: str, latency_ms: float, min_accuracy: float) -> str:
    """The name of a demand class: task x latency target x accuracy floor."""
    return f"{task}|{latency_ms:g}|{min_accuracy:g}"


class QueryKind(StrEnum):
    """How specific a caller is, as INFaaS allows."""

    TASK = "task"
    """Model-less: any variant of any model of the task."""
    ARCHITECTURE = "architecture"
    """Any variant of any model of this architecture."""
    MODEL = "model"
    """Any variant of this registered model."""
    VARIANT = "variant"
    """Exactly this variant."""


@dataclass(frozen=True, slots=True)
class Query:
    """What the caller asked for: a kind and a name."""

    kind: QueryKind
    name: str

    @classmethod
    def for_task(cls, task: str) -> Query:
        return cls(QueryKind.TASK, task)

    @classmethod
    def for_architecture(cls, architecture: str) -> Query:
        return cls(QueryKind.ARCHITECTURE, architecture)

    @classmethod
    def for_model(cls, model_id: str) -> Query:
        return cls(QueryKind.MODEL, model_id)

    @classmethod
    def for_variant(cls, variant_id: str) -> Query:
        return cls(QueryKind.VARIANT, variant_id)

    def __str__(self) -> str:
        return f"{self.kind.value} {self.name}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One variant on its pool, with every request-independent number precomputed."""

    spec: VariantSpec
    profile: Profile
    pool: Pool
    variant_id: str
    accuracy: float
    cost_per_request: float
    """Pool price times replica-seconds per request at the best measured throughput."""
    intercept_ms: float
    slope_ms: float
    max_batch: int
    full_batch_ms: float
    """L(max_batch): latency of one full batch."""
    tail: float
    """p99/p50 at the smallest measured batch (>= 1)."""
    idle_p99_ms: float
    """Predicted p99 of a lone request on a loaded replica: tail * L(1)."""
    load_ms: float
    peak_memory_bytes: int
    peak_throughput_rps: float

    @classmethod
    def of(cls, spec: VariantSpec, profile: Profile, pool: Pool) -> Candidate:
        if profile.variant_id != spec.variant_id:
            raise ValueError(f"profile of {profile.variant_id} given for {spec.variant_id}")
        lm = profile.latency_model
        first = min(profile.batches, key=lambda b: b.batch)
        tail = first.p99_ms / first.p50_ms if first.p50_ms > 0 else 1.0
        tail = max(1.0, tail)
        peak = profile.peak_throughput_rps
        service_s = 1.0 / peak if peak > 0 else max(lm.predict_ms(1), 1e-3) / 1000.0
        max_batch = spec.max_batch
        return cls(
            spec=spec,
            profile=profile,
            pool=pool,
            variant_id=spec.variant_id,
            accuracy=profile.accuracy,
            cost_per_request=pool.cost_per_replica_s * service_s,
            intercept_ms=lm.intercept_ms,
            slope_ms=lm.slope_ms,
            max_batch=max_batch,
            full_batch_ms=lm.predict_ms(max_batch),
            tail=tail,
            idle_p99_ms=tail * lm.predict_ms(1),
            load_ms=profile.load_ms,
            peak_memory_bytes=profile.peak_memory_bytes,
            peak_throughput_rps=peak,
        )

    @property
    def task(self) -> str:
        return self.spec.task

    def batch_ms(self, batch: float) -> float:
        """L(batch) from the profile's latency model."""
        return max(0.0, self.intercept_ms + self.slope_ms * batch)

    def drain_ms(self, requests: float) -> float:
        """Time to run `requests` queued on one replica, in full batches of `max_batch`."""
        if requests <= 0:
            return 0.0
        big = self.max_batch
        if requests <= big:
            return self.batch_ms(requests)
        nb = math.ceil(requests / big)
        return (nb - 1) * self.full_batch_ms + self.batch_ms(requests - (nb - 1) * big)


def predict_p99_ms(c: Candidate, load: VariantLoad) -> float:
    """Predicted p99 latency of one more request sent to `c` under `load` (see module doc)."""
    loaded = load.loaded_replicas
    if loaded > 0:
        r = loaded
        cold = 0.0
    else:
        r = load.replicas if load.replicas > 0 else 1
        cold = c.load_ms
    q = load.outstanding
    if q == 0:
        return c.idle_p99_ms + cold + load.ahead_ms
    return c.tail * c.drain_ms(q / r + 1.0) + cold + load.ahead_ms


@dataclass(frozen=True, slots=True)
class Selection:
    """The decision for one request: which variant on which pool, and why."""

    candidate: Candidate
    predicted_p99_ms: float
    cold_start: bool
    query: Query
    slo: SLO

    @property
    def variant_id(self) -> str:
        return self.candidate.variant_id

    @property
    def pool(self) -> str:
        return self.candidate.pool.name

    @property
    def cost_per_request(self) -> float:
        return self.candidate.cost_per_request

    @property
    def reason(self) -> str:
        c = self.candidate
        cold = f" including a {c.load_ms:.1f} ms cold start" if self.cold_start else ""
        return (
            f"{c.variant_id} on {c.pool.name}: accuracy {c.accuracy:.4f} >= "
            f"{self.slo.min_accuracy:.4f}, predicted p99 {self.predicted_p99_ms:.2f} ms{cold} "
            f"<= {self.slo.latency_ms:g} ms, cost {c.cost_per_request * 1000:.4g}/1000 requests"
        )


def _describe(c: Candidate, p99_ms: float | None, cold: bool | None) -> dict[str, object]:
    d: dict[str, object] = {
        "variant_id": c.variant_id,
        "pool": c.pool.name,
        "accuracy": c.accuracy,
        "cost_per_1000": c.cost_per_request * 1000,
    }
    if p99_ms is not None:
        d["predicted_p99_ms"] = round(p99_ms, 3)
        d["cold_start"] = bool(cold)
    return d


class CandidateSet:
    """Every registered variant with its profile and pool, indexed for fast selection.

    Build it once when variants, profiles or pools change; it is immutable after.
    Within every index the candidates are sorted by (cost, idle p99), so the
    first feasible one met is the cheapest.
    """

    __slots__ = ("_by_key", "_by_variant", "_ordered", "_reach")

    def __init__(self, candidates: Iterable[Candidate], *, reach_min: int | None = None) -> None:
        ordered = sorted(candidates, key=lambda c: (c.cost_per_request, c.idle_p99_ms))
        by_variant: dict[str, Candidate] = {}
        by_key: dict[tuple[QueryKind, str], tuple[Candidate, ...]] = {}
        groups: dict[tuple[QueryKind, str], list[Candidate]] = {}
        for c in ordered:
            if c.variant_id in by_variant:
                raise ValueError(f"variant {c.variant_id} registered twice")
            by_variant[c.variant_id] = c
            for key in (
                (QueryKind.TASK, c.spec.task),
                (QueryKind.ARCHITECTURE, c.spec.architecture),
                (QueryKind.MODEL, c.spec.model_id),
                (QueryKind.VARIANT, c.variant_id),
            ):
                groups.setdefault(key, []).append(c)
        for key, group in groups.items():
            by_key[key] = tuple(group)
        least = REACH_MIN if reach_min is None else reach_min
        # one lookup per select: the group with its index (None under REACH_MIN)
        self._reach = {
            k: (g, AccuracyReach([c.accuracy for c in g]) if len(g) >= least else None)
            for k, g in by_key.items()
        }
        self._ordered = tuple(ordered)
        self._by_variant = by_variant
        self._by_key = by_key

    @classmethod
    def build(
        cls,
        variants: Iterable[VariantSpec],
        profiles: Iterable[Profile],
        pools: Iterable[Pool],
    ) -> CandidateSet:
        """Join variants with their profile on their pool; unprofiled variants are skipped."""
        pool_by_name = {p.name: p for p in pools}
        prof = {(p.variant_id, p.pool): p for p in profiles}
        out = []
        for v in variants:
            p = prof.get((v.variant_id, v.pool))
            pool = pool_by_name.get(v.pool)
            if p is None or pool is None:
                continue
            out.append(Candidate.of(v, p, pool))
        return cls(out)

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._ordered)

    @property
    def all(self) -> tuple[Candidate, ...]:
        """Every candidate, cheapest first."""
        return self._ordered

    def variant(self, variant_id: str) -> Candidate:
        try:
            return self._by_variant[variant_id]
        except KeyError:
            raise VariantNotFound(f"variant {variant_id} is not registered") from None

    def get(self, variant_id: str) -> Candidate | None:
        return self._by_variant.get(variant_id)

    def matching(self, query: Query) -> tuple[Candidate, ...]:
        """Candidates the query names, cheapest first; raises when it names none."""
        found = self._by_key.get((query.kind, query.name))
        if found:
            return found
        raise self._unmatched(query)

    def reach(self, query: Query) -> tuple[tuple[Candidate, ...], AccuracyReach | None]:
        """`matching(query)` with the index of its candidates' accuracies (None in a group
        smaller than `REACH_MIN`)."""
        found = self._reach.get((query.kind, query.name))
        if found and found[0]:
            return found
        raise self._unmatched(query)

    @staticmethod
    def _unmatched(query: Query) -> Exception:
        if query.kind is QueryKind.VARIANT:
            return VariantNotFound(f"variant {query.name} is not registered or not profiled")
        if query.kind is QueryKind.MODEL:
            return ModelNotFound(f"model {query.name} has no profiled variant")
        return NoFeasibleVariant(
            f"no profiled variant is registered for {query}",
            reason="unregistered",
            query=str(query),
        )

    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted({c.spec.task for c in self._ordered}))

    def of_task(self, task: str) -> tuple[Candidate, ...]:
        return self._by_key.get((QueryKind.TASK, task), ())


def _within(
    cands: Sequence[Candidate], query: Query, allowed: Set[str] | None
) -> Sequence[Candidate]:
    """`cands` restricted to the models the tenant may use (all when `allowed` is None)."""
    if allowed is None:
        return cands
    if query.kind in (QueryKind.MODEL, QueryKind.VARIANT) and cands:
        model_id = cands[0].spec.model_id
        if model_id not in allowed:
            raise PermissionDenied(
                f"model {model_id!r} is not one you accepted (accept it or its owner) "
                "and were granted by its owner",
                model_id=model_id,
            )
    inside = [c for c in cands if c.spec.model_id in allowed]
    if not inside:
        raise NoFeasibleVariant(
            f"no model you accepted (and were granted) serves {query}; "
            f"{len({c.spec.model_id for c in cands})} other model(s) do",
            reason="consent",
            query=str(query),
        )
    return inside


def _infeasible(
    cands: Sequence[Candidate],
    query: Query,
    slo: SLO,
    loads: Mapping[str, VariantLoad],
    allowed: Set[str] | None = None,
) -> NoFeasibleVariant:
    """Why nothing fits, most fundamental reason first, with the closest option."""
    cands = _within(cands, query, allowed)
    base = {"query": str(query), "latency_ms": slo.latency_ms, "min_accuracy": slo.min_accuracy}
    what = f"a model you accepted for {query}" if allowed is not None else str(query)
    accurate = [c for c in cands if c.accuracy >= slo.min_accuracy]
    if not accurate:
        best = max(cands, key=lambda c: (c.accuracy, -c.cost_per_request))
        return NoFeasibleVariant(
            f"no variant of {what} reaches min_accuracy {slo.min_accuracy:g} "
            f"(best {best.accuracy:g}: {best.variant_id})",
            reason="accuracy",
            closest=_describe(best, None, None),
            **base,
        )
    predicted = [(predict_p99_ms(c, loads.get(c.variant_id, IDLE)), c) for c in accurate]
    fast = [(p, c) for p, c in predicted if p <= slo.latency_ms]
    if not fast:
        p, c = min(predicted, key=lambda pc: (pc[0], pc[1].cost_per_request))
        cold = loads.get(c.variant_id, IDLE).loaded_replicas == 0
        why = f", {c.load_ms:.1f} ms of it cold start" if cold and c.load_ms > 0 else ""
        return NoFeasibleVariant(
            f"no variant of {what} with accuracy >= {slo.min_accuracy:g} meets "
            f"{slo.latency_ms:g} ms p99 under current load (fastest {c.variant_id} "
            f"predicts {p:.1f} ms p99{why})",
            reason="latency",
            closest=_describe(c, p, cold),
            **base,
        )
    p, c = min(fast, key=lambda pc: (pc[1].cost_per_request, pc[0]))
    cold = loads.get(c.variant_id, IDLE).loaded_replicas == 0
    return NoFeasibleVariant(
        f"no variant of {what} meeting accuracy {slo.min_accuracy:g} and "
        f"{slo.latency_ms:g} ms p99 costs at most {slo.max_cost:g} per 1000 requests "
        f"(cheapest {c.variant_id} costs {c.cost_per_request * 1000:.4g})",
        reason="cost",
        closest=_describe(c, p, cold),
        max_cost=slo.max_cost,
        **base,
    )


def select(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    *,
    allowed: Set[str] | None = None,
) -> Selection:
    """The cheapest feasible variant for `query` under `slo` and `load`, among the models
    in `allowed` when given (the tenant's: granted to it and accepted by it).

    Raises `NoFeasibleVariant` (422) saying which constraint nothing meets, with
    the closest option in ``detail["closest"]``; `VariantNotFound` /
    `ModelNotFound` when the query names nothing registered; `PermissionDenied`
    when it names a model outside `allowed`.
    """
    cands, reach = candidates.reach(query)
    min_acc = slo.min_accuracy
    target = slo.latency_ms
    max_cost = slo.max_cost / 1000.0 if slo.max_cost is not None else math.inf
    loads = load.by_variant
    best: Candidate | None = None
    best_p = math.inf
    best_cost = math.inf
    if reach is None:  # a small group: the plain walk, cheapest first
        for c in cands:
            cost = c.cost_per_request
            if cost > best_cost or cost > max_cost:
                break
            if c.accuracy < min_acc or (allowed is not None and c.spec.model_id not in allowed):
                continue
            p = predict_p99_ms(c, loads.get(c.variant_id, IDLE))
            if p <= target and p < best_p:
                best, best_p, best_cost = c, p, cost
    else:  # cheapest first; a run below the accuracy floor is jumped (costs only grow past it)
        accuracy = reach.accuracy
        n = len(cands)
        i = 0
        while i < n:
            if accuracy[i] < min_acc:
                i = reach.first_from(i, min_acc)
                if i == n:
                    break
            c = cands[i]
            i += 1
            cost = c.cost_per_request
            if cost > best_cost or cost > max_cost:
                break
            if allowed is None or c.spec.model_id in allowed:
                p = predict_p99_ms(c, loads.get(c.variant_id, IDLE))
                if p <= target and p < best_p:
                    best, best_p, best_cost = c, p, cost
    if best is None:
        raise _infeasible(cands, query, slo, loads, allowed)
    cold = loads.get(best.variant_id, IDLE).loaded_replicas == 0
    return Selection(best, best_p, cold, query, slo)


def pinned(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    *,
    allowed: Set[str] | None = None,
) -> Selection:
    """The pinned variant (its model in `allowed`), unfiltered: its p99 is reported, and its
    accuracy checked by the holder of the authenticated floor (the worker)."""
    (c,) = _within(candidates.matching(query), query, allowed)
    vl = load.get(c.variant_id)
    return Selection(c, predict_p99_ms(c, vl), vl.loaded_replicas == 0, query, slo)


def _least_slack() -> Callable[..., Selection]:
    """The INFaaS-style baseline (`scheduler.baselines`), loaded only when the loop asks for it."""
    from scheduler.baselines import select_least_slack

    return select_least_slack


def route_select(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    hints: RoutingHints | None,
    *,
    allowed: Set[str] | None = None,
) -> Selection:
    """The variant a worker serves a request with, given the loop's routing hints (pure).

    `allowed`: the models the tenant may use; neither hints nor the fallback leave them.

    Only model-less (task) queries follow hints; a caller naming a model gets
    its cheapest feasible variant, a caller pinning a variant gets exactly that
    variant (`pinned`: the worker then checks its accuracy against the
    caller's authenticated floor). Accuracy is never relaxed: a hinted variant
    below the caller's floor is skipped.

    * ``pin`` (static / queue-length baselines): the first hinted variant that
      meets the floor, whatever its predicted latency — plain serving does not
      switch variants;
    * ``prefer`` (infaas): the first hinted variant that meets the floor and is
      predicted to meet the latency target under this replica's load; else the
      cheapest feasible one (`select`);
    * ``least_slack`` (INFaaS-style): as ``prefer``, falling back to
      `select_least_slack`.

    Admission (Clockwork's lesson): when neither a hinted variant nor the
    fallback is predicted to meet the target, a hinted variant late only by its
    cold start serves anyway (the answer warms it); one late because of the
    queue ahead of it is refused at once, `NoFeasibleVariant` with ``reason:
    latency``, which the client never retries: serving it would only delay
    the requests behind it past their deadlines too, as a burst's backlog does.
    """
    if query.kind is QueryKind.VARIANT:
        return pinned(candidates, query, slo, load, allowed=allowed)
    fallback = _least_slack() if hints and hints.mode == "least_slack" else select
    if hints is None or query.kind is not QueryKind.TASK:
        return fallback(candidates, query, slo, load, allowed=allowed)
    key = demand_key(query.name, slo.latency_ms, slo.min_accuracy)
    hinted = hints.routes.get(key) or hints.by_task.get(query.name) or []
    best_effort: Selection | None = None
    for vid in hinted:
        c = candidates.get(vid)
        if c is None or c.spec.task != query.name or c.accuracy < slo.min_accuracy:
            continue
        if allowed is not None and c.spec.model_id not in allowed:
            continue
        vl = load.by_variant.get(vid, IDLE)
        p99 = predict_p99_ms(c, vl)
        chosen = Selection(c, p99, vl.loaded_replicas == 0, query, slo)
        if hints.mode == "pin" or p99 <= slo.latency_ms:
            return chosen
        if chosen.cold_start:
            best_effort = best_effort or chosen
    try:
        return fallback(candidates, query, slo, load, allowed=allowed)
    except NoFeasibleVariant:
        if best_effort is None:
            raise
        return best_effort
