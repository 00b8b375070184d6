"""The baselines infaas is measured against, as pure policies with `decide`'s signature.

The ablation {FP32, model-less} x {static, autoscaled}:

================  ==========================  ===================================
                  static                      autoscaled
================  ==========================  ===================================
FP32              `static_policy`             `queue_length_policy` (Ray Serve's)
model-less        `static_modelless_policy`   `decide` (infaas), `infaas_policy`
================  ==========================  ===================================

`infaas_policy` follows INFaaS's released code (stanford-mast/INFaaS), rule by
rule, with the file and function each comes from. How its terms map here: an
INFaaS *worker* is a VM running one container per variant replica; here the
VM is the Ray node (its CPUs are the ``cpu_budget``) and a container replica
of variant v is v loaded on one Ray Serve worker replica. INFaaS packs the
containers of several variants on one VM; here the i-th replicas of several
variants share the i-th worker replica (their inference threads, as the
containers share the VM's cores), so two variants need one worker replica,
not two. Replica counts are per variant, as INFaaS counts containers.

1. **Variant per request** (``src/master/queryfe_server.cc``,
   ``gpar_acc_search`` / ``par_lat_search``): among the variants meeting the
   accuracy floor whose profiled latency fits the target, the running one
   that is not blacklisted with the least slack (target minus latency); if
   none runs, the one with the least load + inference latency, which the
   master loads (one replica); if every valid one is blacklisted, the
   least-slack blacklisted one anyway.
2. **Blacklisting** (``src/worker/query_executor.cc``, ``qpsMonitor``): a
   variant is blacklisted when its measured mean latency exceeds 2.5x its
   profiled latency while its per-replica rate is above half its profiled
   throughput, or its queue exceeds 0.8 x replicas x throughput (a variant on
   one CPU replica: 4x, 1.0 and 1.1, since a second replica may be loading);
   it is cleared when the queue is below that bound and the latency below
   1.5x the profile.
3. **Replicas** (``src/worker/autoscaler.cc``, ``checkModvar``): per variant,
   utilisation from the traffic routed to *that variant* (all its classes
   together); add ``ceil((qps - 0.95 x n x mu) / mu)`` replicas at once
   (the CPU heuristic: 5 % headroom), mu = one replica's throughput at batch
   1 (INFaaS uses the measured mean batch; the workers here do not report
   it); request one fewer when n - 1 replicas suffice (``qps <= (n-1) mu``,
   which at n = 1 means no traffic, so the variant is unloaded).
4. **Scale-down delay** (``Autoscaler::CpuAutoscalerDaemon``): a scale-down
   request executes only once more than ``CPU_SCALE_DOWN_DELAY`` = 10 of
   them have piled up since the variant's last executed change: the 11th
   check in a row that finds n - 1 enough scales down. A scale-up above
   ``CPU_MAX_REPLICAS`` (here ``max_replicas_per_variant``) is refused whole,
   not clipped.
5. **Resource limit** (``checkModvar`` / ``checkFastest``: "Exceed resource
   limit"): a scale-up that would need more worker replicas than the node's
   CPUs allow is refused. Requests are taken largest deficit first (INFaaS
   takes them in its queue's order; here nothing is alphabetical).
6. **Upgrade by cost** (``InfaasScaler`` with ``checkFastest``): per parent
   model, replicating the running variants costs their load latencies times
   the replicas added (x 1000 more for any beyond the per-variant maximum);
   scaling the parent's fastest variant costs its load latency times the
   replicas it needs for all that traffic. When replicating costs more than
   1.5x switching, only the fastest variant is scaled up. INFaaS applies this
   between CPU and GPU variants; with one CPU pool here it applies between
   the pool's variants, the fastest being the quickest one that meets the
   floors of the classes routed to the parent. Traffic moves by rule 1 once
   the slow variant is blacklisted. Every running variant, the fastest
   included, is sized by rule 3 (INFaaS checks a running CPU fastest variant
   twice, counting its traffic twice; here once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass

from infaas.types import SLO, Backend, Precision
from scheduler.allocation import Demand, WorkerPlan, eligible, slo_capacity
from scheduler.autoscaler import (
    AutoscalerState,
    AutoscalingContext,
    DemandSignal,
    Policy,
    ScalingDecision,
    _change_events,
    _replica_events,
    decide,
)
from scheduler.policy import (
    IDLE,
    Candidate,
    CandidateSet,
    LoadSnapshot,
    Query,
    Selection,
    _infeasible,
    predict_p99_ms,
)

__all__ = [
    "INFAAS_SCALE_DOWN_CHECKS",
    "POLICIES",
    "blacklisted",
    "infaas_policy",
    "queue_length_policy",
    "select_least_slack",
    "static_modelless_policy",
    "static_policy",
]

INFAAS_SCALE_DOWN_CHECKS = 10
"""``CPU_SCALE_DOWN_DELAY`` in INFaaS's ``src/worker/autoscaler.cc``."""
_CPU_HEADROOM = 0.05
"""``cpuHueristic``: a CPU variant is scaled up before it is full."""
_LOAD_HEURISTIC = 0.0002
"""``loadHeuristic``: the fastest variant's deficit grows with its load latency."""
_SWITCH_FACTOR = 1.5
"""``InfaasScaler``: scale the fastest variant when replicating costs more than this x."""
_OVER_MAX_COST = 1000.0
"""``InfaasScaler``: replicating beyond the per-variant maximum costs load latency x this."""


# ---------------------------------------------------------------- shared shell


def _pack(
    ctx: AutoscalingContext, replicas: Mapping[str, int], by_id: Mapping[str, Candidate]
) -> tuple[WorkerPlan, ...]:
    """Worker replicas hosting the variants: the i-th replicas of all variants share one.

    First fit under the replica memory budget, within one pool; a variant
    never gets two replicas on the same worker.
    """
    cfg = ctx.config
    workers: list[tuple[str, list[str], int]] = []
    order = sorted(replicas, key=lambda v: (-replicas[v], -by_id[v].peak_memory_bytes, v))
    for vid in order:
        c = by_id[vid]
        placed = 0
        for pool, vids, mem in workers:
            if placed == replicas[vid]:
                break
            if pool == c.pool.name and mem + c.peak_memory_bytes <= cfg.replica_memory_bytes:
                vids.append(vid)
                placed += 1
        for i, (pool, vids, mem) in enumerate(workers):
            if vid in vids:
                workers[i] = (pool, vids, mem + c.peak_memory_bytes)
        while placed < replicas[vid]:
            workers.append((c.pool.name, [vid], c.peak_memory_bytes))
            placed += 1
    return tuple(
        WorkerPlan(pool, tuple(vids), tuple(cfg.target_utilisation / len(vids) for _ in vids))
        for pool, vids, _ in workers
    )


def _slots(ctx: AutoscalingContext, c: Candidate) -> int:
    """Worker replicas of `c`'s pool the CPU budget (the node) holds."""
    cfg = ctx.config
    if c.pool.num_cpus <= 0:
        return cfg.max_replicas_per_pool
    return math.floor(cfg.cpu_budget / c.pool.num_cpus + 1e-9)


def _decision(
    ctx: AutoscalingContext,
    routes: Mapping[str, tuple[tuple[str, float], ...]],
    replicas: Mapping[str, int],
    unserved: Mapping[str, float],
    method: str,
    state: AutoscalerState,
) -> tuple[ScalingDecision, AutoscalerState]:
    final = {v: n for v, n in replicas.items() if n > 0}
    by_id = {v: c for v in final if (c := ctx.candidates.get(v)) is not None}
    workers = _pack(ctx, final, by_id)
    primary, events = _change_events(ctx, routes)
    events += _replica_events(ctx, ctx.state.replicas, final)
    price = {c.pool.name: c.pool.cost_per_replica_s for c in by_id.values()}
    decision = ScalingDecision(
        replicas=final,
        workers=workers,
        routes=routes,
        unserved_rps=unserved,
        provisioned_rps={d.key: d.arrival_rps for d in ctx.demands},
        cost_per_s=sum(price[w.pool] for w in workers),
        events=tuple(events),
        method=method,
    )
    new_state = AutoscalerState(
        history=state.history,
        last_active_s=state.last_active_s,
        primary=primary,
        replicas=final,
        pending=state.pending,
        queues=state.queues,
        scale_down_requests=state.scale_down_requests,
        blacklist=state.blacklist,
    )
    return decision, new_state


def _single_variant(
    ctx: AutoscalingContext,
    chosen: Mapping[str, Candidate],
    replicas: Mapping[str, int],
    method: str,
    state: AutoscalerState,
) -> tuple[ScalingDecision, AutoscalerState]:
    """One variant per class; each variant's replicas cut to what the node's CPUs hold."""
    # packed variants share worker replicas: the node's CPUs bound each variant, not their sum
    by_id = {c.variant_id: c for c in chosen.values()}
    final = {vid: min(n, _slots(ctx, by_id[vid])) for vid, n in replicas.items()}
    routes: dict[str, tuple[tuple[str, float], ...]] = {}
    unserved: dict[str, float] = {}
    load_on: dict[str, float] = {}
    for d in ctx.demands:
        got = chosen.get(d.key)
        if got is None:
            if d.arrival_rps > 0:
                unserved[d.key] = d.arrival_rps
            continue
        if d.arrival_rps > 0:
            routes[d.key] = ((got.variant_id, d.arrival_rps),)
        load_on[got.variant_id] = load_on.get(got.variant_id, 0.0) + d.arrival_rps
    for d in ctx.demands:
        got = chosen.get(d.key)
        if got is None or d.arrival_rps <= 0:
            continue
        cap = final.get(got.variant_id, 0) * slo_capacity(got, d.latency_ms)[1]
        total = load_on[got.variant_id]
        if total > cap:
            unserved[d.key] = (total - cap) * d.arrival_rps / total
    return _decision(ctx, routes, final, unserved, method, state)


# ---------------------------------------------------------------- static and Serve's


def _fp32(ctx: AutoscalingContext, d: DemandSignal) -> Candidate | None:
    """Plain serving's variant: the task's most accurate FP32 model, on onnxruntime if any."""
    best: Candidate | None = None
    for c in ctx.candidates.of_task(d.task):
        if c.spec.precision is not Precision.FP32 or c.accuracy < d.min_accuracy:
            continue
        key = (c.accuracy, c.spec.backend is Backend.ONNXRUNTIME, -c.cost_per_request)
        if best is None or key > (
            best.accuracy,
            best.spec.backend is Backend.ONNXRUNTIME,
            -best.cost_per_request,
        ):
            best = c
    return best


def static_policy(ctx: AutoscalingContext) -> tuple[ScalingDecision, AutoscalerState]:
    """FP32 x static: `static_replicas` replicas of each task's FP32 variant, whatever the load."""
    chosen = {d.key: c for d in ctx.demands if (c := _fp32(ctx, d)) is not None}
    replicas = {c.variant_id: ctx.config.static_replicas for c in chosen.values()}
    return _single_variant(ctx, chosen, replicas, "static", ctx.state)


def _cheapest_meeting(ctx: AutoscalingContext, d: DemandSignal) -> Candidate | None:
    """The cheapest variant per request that meets the class's floor and target at all."""
    best: Candidate | None = None
    for c in ctx.candidates.of_task(d.task):
        if eligible(_as_demand(d), c, ctx.config.replica_memory_bytes) <= 0:
            continue
        if best is None or (c.cost_per_request, c.idle_p99_ms, c.variant_id) < (
            best.cost_per_request,
            best.idle_p99_ms,
            best.variant_id,
        ):
            best = c
    return best


def static_modelless_policy(ctx: AutoscalingContext) -> tuple[ScalingDecision, AutoscalerState]:
    """Model-less x static: each class on its cheapest variant meeting its floor, fixed replicas.

    Every chosen variant gets `static_replicas` replicas, packed on the same
    `static_replicas` worker replicas where memory allows. Nothing moves with
    load: the ablation's "model-less, not autoscaled" cell.
    """
    chosen = {d.key: c for d in ctx.demands if (c := _cheapest_meeting(ctx, d)) is not None}
    replicas = {c.variant_id: ctx.config.static_replicas for c in chosen.values()}
    return _single_variant(ctx, chosen, replicas, "static_modelless", ctx.state)


def _delayed(
    current: int,
    desired: int,
    pending: tuple[int, float] | None,
    now: float,
    up_delay: float,
    down_delay: float,
) -> tuple[int, tuple[int, float] | None]:
    """Ray Serve's rule: act only once the same direction was wanted for the delay."""
    direction = (desired > current) - (desired < current)
    if direction == 0:
        return current, None
    since = pending[1] if pending is not None and pending[0] == direction else now
    delay = up_delay if direction > 0 else down_delay
    if now - since >= delay:
        return desired, None
    return current, (direction, since)


def queue_length_policy(ctx: AutoscalingContext) -> tuple[ScalingDecision, AutoscalerState]:
    """FP32 x autoscaled: Ray Serve's default autoscaler on each task's FP32 variant.

    desired = ceil(ongoing requests / target_ongoing_requests), within
    [1, max_replicas_per_variant]; applied after `queue_upscale_delay_s` /
    `queue_downscale_delay_s` of consistently wanting the same direction.
    """
    cfg = ctx.config
    chosen = {d.key: c for d in ctx.demands if (c := _fp32(ctx, d)) is not None}
    replicas: dict[str, int] = {}
    pending: dict[str, tuple[int, float]] = {}
    for vid in sorted({c.variant_id for c in chosen.values()}):
        vl = ctx.load.get(vid)
        current = ctx.state.replicas.get(vid, max(vl.replicas, 1))
        desired = math.ceil(vl.outstanding / cfg.target_ongoing_requests)
        desired = max(1, min(cfg.max_replicas_per_variant, desired))
        n, p = _delayed(
            current,
            desired,
            ctx.state.pending.get(vid),
            ctx.now_s,
            cfg.queue_upscale_delay_s,
            cfg.queue_downscale_delay_s,
        )
        replicas[vid] = n
        if p is not None:
            pending[vid] = p
    state = AutoscalerState(
        history=ctx.state.history, last_active_s=ctx.state.last_active_s, pending=pending
    )
    return _single_variant(ctx, chosen, replicas, "queue_length", state)


# ---------------------------------------------------------------- INFaaS


def _as_demand(d: DemandSignal) -> Demand:
    return Demand(d.key, d.task, d.arrival_rps, d.latency_ms, d.min_accuracy)


def _inf_ms(c: Candidate) -> float:
    """The profiled latency of one request (INFaaS's ``slope * batch + intercept`` at batch 1).

    Taken from the profile's batch-1 row, which carries the request path's
    overhead when the control loop added it, so throughput and latency agree.
    """
    rows = [b for b in c.profile.batches if b.batch == 1]
    if rows and rows[0].p50_ms > 0:
        return rows[0].p50_ms
    return max(c.batch_ms(1), 1e-3)


def _mu(c: Candidate) -> float:
    """One replica's throughput at batch 1, requests/s (``single_throughput``)."""
    return 1000.0 / _inf_ms(c)


def blacklisted(
    c: Candidate, replicas: int, qps: float, queue: int, latency_ms: float, was: bool
) -> bool:
    """``qpsMonitor``'s rule for one variant (see module doc, rule 2).

    `qps`: requests/s routed to the variant (all replicas); `queue`: requests
    outstanding on it; `latency_ms`: the mean latency measured over the last
    interval (0 when nothing completed: only the queue clause can then fire).
    """
    if replicas <= 0:
        return False
    inf = _inf_ms(c)
    cap = 1000.0 / inf
    lat_h, qps_h, queue_h = (4.0, 1.0, 1.1) if replicas == 1 else (2.5, 0.5, 0.8)
    queue_bound = queue_h * replicas * cap
    if (latency_ms > inf * lat_h and qps / replicas > qps_h * cap) or queue > queue_bound:
        return True
    if queue < queue_bound and latency_ms < inf * 1.5:
        return False
    return was


def _route(
    ctx: AutoscalingContext, d: DemandSignal, running: Mapping[str, int], black: frozenset[str]
) -> Candidate | None:
    """The master's variant for a class (rule 1)."""
    valid = [
        c
        for c in ctx.candidates.of_task(d.task)
        if c.accuracy >= d.min_accuracy - 1e-12
        and _inf_ms(c) <= d.latency_ms
        and c.peak_memory_bytes <= ctx.config.replica_memory_bytes
    ]
    if not valid:
        return None

    def slack(c: Candidate) -> tuple[float, str]:
        return (d.latency_ms - _inf_ms(c), c.variant_id)

    ok = [c for c in valid if running.get(c.variant_id, 0) > 0 and c.variant_id not in black]
    if ok:
        return min(ok, key=slack)
    idle = [c for c in valid if running.get(c.variant_id, 0) <= 0]
    if idle:
        return min(idle, key=lambda c: (c.load_ms + _inf_ms(c), c.variant_id))
    return min(valid, key=slack)


@dataclass(slots=True)
class _Check:
    """One variant's scaling check (``checkModvar`` / ``checkFastest``)."""

    vid: str
    count: int
    deficit: float
    """Weighted qps beyond what the variant's replicas serve (``weighted_delta_qps``)."""


def _check(n: int, qps: float, mu: float, headroom: float, extra: float = 0.0) -> _Check:
    deficit = qps - n * mu * (1.0 - headroom) + extra
    up = math.ceil(deficit / mu - 1e-9) if qps > 0 else 0
    if up > 0:
        return _Check("", up, deficit)
    if n > 0 and qps <= max(0.0, (n - 1) * mu):
        return _Check("", -1, deficit)
    return _Check("", 0, deficit)


def infaas_policy(ctx: AutoscalingContext) -> tuple[ScalingDecision, AutoscalerState]:
    """INFaaS's autoscaler and variant selection as its code does them (module doc)."""
    cfg = ctx.config
    running = {v: n for v, n in ctx.state.replicas.items() if n > 0}
    # rule 2: the monitor, on the traffic each variant carried since the last tick
    carried: dict[str, float] = {}
    for d in ctx.demands:
        vid = ctx.state.primary.get(d.key)
        if vid is not None:
            carried[vid] = carried.get(vid, 0.0) + max(0.0, d.arrival_rps)
    black: set[str] = set()
    for vid, n in running.items():
        c = ctx.candidates.get(vid)
        if c is None:
            continue
        vl = ctx.load.get(vid)
        was = vid in ctx.state.blacklist
        if blacklisted(c, n, carried.get(vid, 0.0), vl.outstanding, vl.latency_ms, was):
            black.add(vid)
    blacklist = frozenset(black)
    # rule 1: the master routes each class; a variant it picks that is not running is loaded
    replicas = dict(running)
    routes: dict[str, tuple[tuple[str, float], ...]] = {}
    unserved: dict[str, float] = {}
    qps: dict[str, float] = {}
    floor: dict[str, float] = {}
    for d in ctx.demands:
        if d.arrival_rps <= 0:
            continue
        c = _route(ctx, d, running, blacklist)
        if c is None:
            unserved[d.key] = d.arrival_rps
            continue
        routes[d.key] = ((c.variant_id, d.arrival_rps),)
        qps[c.variant_id] = qps.get(c.variant_id, 0.0) + d.arrival_rps
        parent = c.spec.model_id
        floor[parent] = max(floor.get(parent, 0.0), d.min_accuracy)
        replicas.setdefault(c.variant_id, 0)
        if replicas[c.variant_id] == 0:
            replicas[c.variant_id] = 1
    # rules 3 and 6: per parent model, replicating its variants against scaling its fastest
    requests: list[_Check] = []
    parents: dict[str, list[str]] = {}
    for vid in sorted(running):  # one being loaded is not checked ("num_replicas > 0")
        c = ctx.candidates.get(vid)
        if c is not None:
            parents.setdefault(c.spec.model_id, []).append(vid)
    for parent, vids in sorted(parents.items()):
        individual: list[_Check] = []
        sum_deficit = 0.0
        sum_cost = 0.0
        for vid in vids:
            c = ctx.candidates.get(vid)
            assert c is not None
            chk = _check(replicas[vid], qps.get(vid, 0.0), _mu(c), _CPU_HEADROOM)
            chk.vid = vid
            if chk.count > 0:
                sum_deficit += chk.deficit
                sum_cost += c.load_ms * chk.count
                if replicas[vid] + chk.count > cfg.max_replicas_per_variant:
                    sum_cost += c.load_ms * _OVER_MAX_COST
            if chk.count:
                individual.append(chk)
        family = [
            c
            for c in ctx.candidates.all
            if c.spec.model_id == parent
            and c.accuracy >= floor.get(parent, 0.0) - 1e-12
            and c.peak_memory_bytes <= cfg.replica_memory_bytes
        ]
        fastest = min(family, key=lambda c: (_inf_ms(c), c.variant_id), default=None)
        growing = {r.vid for r in individual if r.count > 0}
        if fastest is not None and growing and fastest.variant_id not in growing:
            fv = fastest.variant_id
            n_f = replicas.get(fv, 0)
            extra = _LOAD_HEURISTIC * fastest.load_ms
            fchk = _check(n_f, qps.get(fv, 0.0) + sum_deficit, _mu(fastest), 0.0, extra)
            fchk.vid = fv
            if fchk.count > 0 and sum_cost > _SWITCH_FACTOR * fastest.load_ms * fchk.count:
                # "Escape individual scale up": only the fastest variant grows
                individual = [r for r in individual if r.count < 0 and r.vid != fv] + [fchk]
        requests += individual
    # rules 4 and 5: the daemon executes the requests, largest deficit first
    downs = dict(ctx.state.scale_down_requests)
    for chk in sorted(requests, key=lambda r: (-r.deficit, r.vid)):
        c = ctx.candidates.get(chk.vid)
        assert c is not None
        n = replicas.get(chk.vid, 0)
        if chk.count < 0:
            downs[chk.vid] = downs.get(chk.vid, 0) + 1
            if downs[chk.vid] <= INFAAS_SCALE_DOWN_CHECKS:
                continue
            downs[chk.vid] = 0
            replicas[chk.vid] = max(0, n - 1)
            continue
        downs[chk.vid] = 0
        after = n + chk.count
        if after > cfg.max_replicas_per_variant or after > _slots(ctx, c):
            continue  # refused whole: "Exceeds maximum CPU replicas" / "Exceed resource limit"
        replicas[chk.vid] = after
    replicas = {v: n for v, n in replicas.items() if n > 0}
    downs = {v: k for v, k in downs.items() if v in replicas and k > 0}
    for key, r in list(routes.items()):
        if r[0][0] not in replicas:  # unloaded this tick: the class is re-routed next tick
            del routes[key]
            unserved[key] = r[0][1]
    state = AutoscalerState(
        history=ctx.state.history,
        last_active_s=ctx.state.last_active_s,
        scale_down_requests=downs,
        blacklist=frozenset(v for v in blacklist if v in replicas),
    )
    return _decision(ctx, routes, replicas, unserved, "infaas_baseline", state)


POLICIES: Mapping[str, Policy] = {
    "infaas": decide,
    "static": static_policy,
    "static_modelless": static_modelless_policy,
    "queue_length": queue_length_policy,
    "infaas_baseline": infaas_policy,
}
"""Every policy by name, for benchmarks and the control loop's configuration."""


def select_least_slack(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    *,
    allowed: Set[str] | None = None,
) -> Selection:
    """INFaaS-style baseline: the feasible variant with the least latency slack.

    Among variants meeting the accuracy floor and predicted to meet the latency
    target under current load, pick the one whose predicted p99 is closest to
    the target (the slowest that still fits), preferring variants already
    loaded on some replica, as INFaaS does; cost is ignored except as a
    tie-break.
    """
    cands = candidates.matching(query)
    loads = load.by_variant
    best: Candidate | None = None
    best_key = (True, math.inf, math.inf)
    best_p = math.inf
    for c in cands:
        if c.accuracy < slo.min_accuracy:
            continue
        vl = loads.get(c.variant_id, IDLE)
        p = predict_p99_ms(c, vl)
        if p > slo.latency_ms:
            continue
        key = (vl.loaded_replicas == 0, slo.latency_ms - p, c.cost_per_request)
        if key < best_key:
            best, best_key, best_p = c, key, p
    if best is None:
        raise _infeasible(cands, query, slo.model_copy(update={"max_cost": None}), loads, allowed)
    return Selection(best, best_p, best_key[0], query, slo)
