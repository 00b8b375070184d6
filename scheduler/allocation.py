"""Replica allocation: which worker replicas to run and which variants each one hosts.

A worker replica belongs to a pool (a Ray resource shape with a price per
second) and hosts one or more variants packed under its memory budget (the
enclave packer's budget): the peak memory of the variants it hosts must fit.
It divides its time between them; no replica is planned above the target
utilisation, which leaves the queueing headroom the latency estimate needs.

Demand comes in classes (a task with the tightest active latency target and
the strictest accuracy floor of its callers). A class may be served by any
variant of its task whose accuracy meets its floor and whose SLO-feasible batch
(`slo_capacity`) exists; such a variant on one replica serves
``mu[d, v]`` requests per second of it.

`solve_milp` states the whole problem as one mixed-integer program
(`scipy.optimize.milp`, HiGHS)::

    minimise   sum_w cost_w y_w                      (replicas running)
             + switch * sum_{v not running} x_vw     (loading a variant somewhere new)
             + eps * sum x_vw                        (host nothing unneeded)
             + unserved * sum_d u_d + warm * sum_d z_d
    s.t.       sum_v a_dv + u_d = lambda_d           demand covered (u_d: shed)
               sum_d a_dv / mu_dv <= sum_w s_vw      capacity of v = its replicas' time
               s_vw <= rho x_vw,  x_vw <= y_w        time only where hosted, on open replicas
               sum_v s_vw <= rho y_w                 utilisation target per replica
               sum_v mem_v x_vw <= M y_w             packer memory budget per replica
               sum_w cpus_w y_w <= C                 CPU budget
               sum_{v ok for d} sum_w x_vw + z_d >= 1  keep-warm classes keep one replica
               y_w >= y_{w+1}                        symmetry breaking within a pool
               x, y binary;  s, a, u, z >= 0

`solve_greedy` is the obvious rule (each class on its cheapest-per-request
variant, replicas by ceiling, first-fit-decreasing packing) used as the MILP's
fallback and as its upper bound on replica counts; it is wrong whenever a
slightly dearer variant packs better or rounding wastes a replica.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from infaas.settings import Pool
from scheduler.policy import Candidate

__all__ = [
    "Allocation",
    "AllocationProblem",
    "Demand",
    "WorkerPlan",
    "eligible",
    "milp_binaries",
    "slo_capacity",
    "solve",
    "solve_auto",
    "solve_greedy",
    "solve_milp",
]

_EPS_HOST = 1e-4


@dataclass(frozen=True, slots=True)
class Demand:
    """One class of traffic to provision for."""

    demand_id: str
    task: str
    arrival_rps: float
    latency_ms: float
    min_accuracy: float = 0.0
    keep_warm: bool = False
    """Keep at least one replica able to serve this class even at zero demand."""


@dataclass(frozen=True, slots=True)
class AllocationProblem:
    demands: tuple[Demand, ...]
    candidates: tuple[Candidate, ...]
    cpu_budget: float
    """CPUs all replicas together may reserve."""
    replica_memory_bytes: int
    """Packer memory budget of one replica."""
    target_utilisation: float = 0.7
    max_replicas_per_pool: int = 16
    running: frozenset[str] = frozenset()
    """Variants loaded somewhere now: keeping them avoids a cold start."""
    switch_penalty: float = 0.1
    """Objective cost of loading a variant on a replica where it is not running."""
    unserved_penalty_per_rps: float = 1000.0
    keep_warm_penalty: float = 100.0
    max_variants_per_demand: int = 3
    """Pareto-pruned candidates kept per demand class (the MILP's size)."""
    time_limit_s: float = 1.0
    milp_max_binaries: int = 100
    """`solve_auto`: the MILP up to this many binaries (`milp_binaries`), greedy beyond."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker replica: its pool and the variants packed on it, with time shares."""

    pool: str
    variants: tuple[str, ...]
    shares: tuple[float, ...]
    """Planned fraction of the replica's time per variant (sums to <= utilisation)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    workers: tuple[WorkerPlan, ...]
    routes: Mapping[str, tuple[tuple[str, float], ...]]
    """demand_id -> ((variant_id, requests/s routed), ...), largest first."""
    unserved_rps: Mapping[str, float]
    cost_per_s: float
    """Price per second of the replicas planned."""
    method: str
    objective: float = math.nan
    notes: tuple[str, ...] = field(default=())

    @property
    def replicas(self) -> dict[str, int]:
        """Variant id -> number of replicas that host it."""
        out: dict[str, int] = {}
        for w in self.workers:
            for v in w.variants:
                out[v] = out.get(v, 0) + 1
        return out

    def primary(self, demand_id: str) -> str | None:
        r = self.routes.get(demand_id, ())
        return r[0][0] if r else None


def slo_capacity(c: Candidate, latency_ms: float) -> tuple[int, float]:
    """(batch, requests/s per replica) at the largest batch that keeps p99 within target.

    A request may wait for the batch in flight and then ride in its own, so a
    batch size b is usable when ``2 * p99(b) <= latency_ms``; capacity is the
    throughput measured at that batch. (0, 0.0) when not even batch 1 fits.
    """
    best: tuple[int, float] = (0, 0.0)
    for b in c.profile.batches:
        if b.batch <= c.max_batch and 2.0 * b.p99_ms <= latency_ms:
            rps = (
                b.throughput_rps if b.throughput_rps > 0 else 1000.0 * b.batch / max(b.p50_ms, 1e-6)
            )
            if rps > best[1]:
                best = (b.batch, rps)
    return best


def eligible(d: Demand, c: Candidate, replica_memory_bytes: int) -> float:
    """Requests/s of class `d` one replica of `c` serves at full utilisation; 0 if it may not."""
    if c.spec.task != d.task or c.accuracy < d.min_accuracy:
        return 0.0
    if c.peak_memory_bytes > replica_memory_bytes:
        return 0.0
    return slo_capacity(c, d.latency_ms)[1]


def _by_task(cands: Sequence[Candidate]) -> dict[str, list[Candidate]]:
    """Candidates per task: a class is only ever served by its own task's variants."""
    out: dict[str, list[Candidate]] = {}
    for c in cands:
        out.setdefault(c.spec.task, []).append(c)
    return out


def _pool_slots(p: AllocationProblem, pool: Pool) -> int:
    by_cpu = (
        math.floor(p.cpu_budget / pool.num_cpus + 1e-9)
        if pool.num_cpus > 0
        else p.max_replicas_per_pool
    )
    return max(0, min(by_cpu, p.max_replicas_per_pool))


def _prune(p: AllocationProblem) -> tuple[list[Candidate], dict[tuple[int, int], float]]:
    """Candidates worth offering the MILP, and mu[(demand index, candidate index)]."""
    keep: dict[str, Candidate] = {}
    of_task = _by_task(p.candidates)
    for d in p.demands:
        options = []
        for c in of_task.get(d.task, ()):
            mu = eligible(d, c, p.replica_memory_bytes)
            if mu > 0:
                options.append((c.pool.cost_per_replica_s / mu, c.peak_memory_bytes, -mu, c))
        options.sort(key=lambda o: (o[0], o[1], o[2]))
        front: list[tuple[float, int, float, Candidate]] = []
        for o in options:
            # dominated: some kept option is no dearer per request, no larger, no slower
            if (
                any(
                    f[3].pool.name == o[3].pool.name
                    and f[0] <= o[0]
                    and f[1] <= o[1]
                    and f[2] <= o[2]
                    for f in front
                )
                and o[3].variant_id not in p.running
            ):
                continue
            front.append(o)
        running = [o for o in front if o[3].variant_id in p.running]
        chosen = front[: p.max_variants_per_demand] + running
        for o in chosen:
            keep[o[3].variant_id] = o[3]
    cands = sorted(keep.values(), key=lambda c: c.variant_id)
    mu_map: dict[tuple[int, int], float] = {}
    index = {c.variant_id: ci for ci, c in enumerate(cands)}
    kept_of_task = _by_task(cands)
    for di, d in enumerate(p.demands):
        for c in kept_of_task.get(d.task, ()):
            ci = index[c.variant_id]
            mu = eligible(d, c, p.replica_memory_bytes)
            if mu > 0:
                mu_map[(di, ci)] = mu
    return cands, mu_map


@dataclass(slots=True)
class _OpenWorker:
    pool: str
    vids: list[str]
    shares: list[float]
    mem: int
    used: float


def solve_greedy(p: AllocationProblem) -> Allocation:
    """Each class on its cheapest-per-request variant; first-fit-decreasing packing."""
    rho = p.target_utilisation
    need: dict[str, float] = {}  # variant -> replica-time needed
    cand: dict[str, Candidate] = {}
    routes: dict[str, tuple[tuple[str, float], ...]] = {}
    unserved: dict[str, float] = {}
    notes: list[str] = []
    of_task = _by_task(p.candidates)
    capacity: dict[tuple[str, float], float] = {}  # classes share latency targets
    for d in p.demands:
        if d.arrival_rps <= 0 and not d.keep_warm:
            continue
        best: tuple[float, float, Candidate] | None = None
        for c in of_task.get(d.task, ()):
            if c.accuracy < d.min_accuracy or c.peak_memory_bytes > p.replica_memory_bytes:
                continue
            mu = capacity.get((c.variant_id, d.latency_ms), -1.0)
            if mu < 0:
                mu = capacity[(c.variant_id, d.latency_ms)] = slo_capacity(c, d.latency_ms)[1]
            if mu <= 0:
                continue
            key = (c.pool.cost_per_replica_s / mu, c.peak_memory_bytes)
            if best is None or key < (best[0], best[2].peak_memory_bytes):
                best = (key[0], mu, c)
        if best is None:
            unserved[d.demand_id] = d.arrival_rps
            notes.append(f"{d.demand_id}: no eligible variant")
            continue
        _, mu, c = best
        cand[c.variant_id] = c
        t = d.arrival_rps / mu
        need[c.variant_id] = need.get(c.variant_id, 0.0) + max(t, 1e-9)
        if d.arrival_rps > 0:
            routes[d.demand_id] = ((c.variant_id, d.arrival_rps),)

    # pieces: whole replicas of a variant, then its remainder, biggest first
    pieces: list[tuple[float, str]] = []
    for vid, t in need.items():
        full = int(t // rho)
        rest = t - full * rho
        pieces.extend((rho, vid) for _ in range(full))
        if rest > 1e-9 or full == 0:
            pieces.append((max(rest, 1e-9), vid))
    pieces.sort(key=lambda pv: (-pv[0], -cand[pv[1]].peak_memory_bytes, pv[1]))

    open_: list[_OpenWorker] = []
    cpu_used = 0.0
    pool_count: dict[str, int] = {}
    shed_time: dict[str, float] = {}
    for t, vid in pieces:
        c = cand[vid]
        placed = False
        # a whole replica's piece fits no open one: pieces come largest first, so every
        # replica open by then already holds a whole replica's share
        for w in open_ if t < rho else ():
            if w.pool != c.pool.name or w.used + t > rho + 1e-9:
                continue
            if vid in w.vids:
                w.shares[w.vids.index(vid)] += t
                w.used += t
                placed = True
                break
            if w.mem + c.peak_memory_bytes <= p.replica_memory_bytes:
                w.vids.append(vid)
                w.shares.append(t)
                w.used += t
                w.mem += c.peak_memory_bytes
                placed = True
                break
        if placed:
            continue
        if cpu_used + c.pool.num_cpus <= p.cpu_budget + 1e-9 and pool_count.get(
            c.pool.name, 0
        ) < _pool_slots(p, c.pool):
            cpu_used += c.pool.num_cpus
            pool_count[c.pool.name] = pool_count.get(c.pool.name, 0) + 1
            open_.append(_OpenWorker(c.pool.name, [vid], [t], c.peak_memory_bytes, t))
        else:
            shed_time[vid] = shed_time.get(vid, 0.0) + t
    if shed_time:
        notes.append("replica budget exhausted: " + ", ".join(sorted(shed_time)))
        # shed the classes routed to variants that did not fit, in proportion
        for d in p.demands:
            r = routes.get(d.demand_id)
            if not r:
                continue
            vid, rps = r[0]
            lost = shed_time.get(vid, 0.0)
            if lost > 0:
                frac = min(1.0, lost / need[vid])
                u = rps * frac
                unserved[d.demand_id] = unserved.get(d.demand_id, 0.0) + u
                routes[d.demand_id] = ((vid, rps - u),) if rps - u > 1e-9 else ()
    workers = tuple(WorkerPlan(w.pool, tuple(w.vids), tuple(w.shares)) for w in open_)
    price = {c.pool.name: c.pool.cost_per_replica_s for c in p.candidates}
    cost = sum(price[w.pool] for w in workers)
    return Allocation(
        workers=workers,
        routes=routes,
        unserved_rps={k: v for k, v in unserved.items() if v > 1e-9},
        cost_per_s=cost,
        method="greedy",
        notes=tuple(notes),
    )


def _slots(
    p: AllocationProblem, cands: Sequence[Candidate], greedy: Allocation, greedy_obj: float
) -> list[Pool]:
    """The MILP's worker slots in the pools of `cands`: per pool, budget-bound and never more
    than greedy's objective can pay for."""
    pools: dict[str, Pool] = {}
    for c in cands:
        pools.setdefault(c.pool.name, c.pool)
    slots: list[Pool] = []
    for name in sorted(pools):
        pool = pools[name]
        n = _pool_slots(p, pool)
        if math.isfinite(greedy_obj) and not greedy.unserved_rps:
            n = min(n, int(greedy_obj / pool.cost_per_replica_s + 1e-9))
        slots.extend([pool] * n)
    return slots


def milp_binaries(p: AllocationProblem, greedy: Allocation | None = None) -> int:
    """Binary variables of `solve_milp`'s program for `p`: a slot's y and its (variant, slot) x."""
    cands, _ = _prune(p)
    greedy = greedy or solve_greedy(p)
    per_pool: dict[str, int] = {}
    for c in cands:
        per_pool[c.pool.name] = per_pool.get(c.pool.name, 0) + 1
    return sum(1 + per_pool[s.name] for s in _slots(p, cands, greedy, _objective(p, greedy)))


def solve_milp(p: AllocationProblem, greedy: Allocation | None = None) -> Allocation:
    """The cost-optimal allocation (see module doc); falls back to greedy if HiGHS fails.
    `greedy`: `solve_greedy(p)` if the caller has it already."""
    cands, mu = _prune(p)
    # a class no variant may serve is unserved whatever the plan: keep it out of the
    # program, where its constant penalty would only blur the optimality gap
    servable = {di for (di, _ci) in mu}
    live = [
        di
        for di, d in enumerate(p.demands)
        if (d.arrival_rps > 0 or d.keep_warm) and di in servable
    ]
    dead = {
        d.demand_id: d.arrival_rps
        for di, d in enumerate(p.demands)
        if di not in servable and d.arrival_rps > 0
    }
    if not live:
        return Allocation(
            (), {}, dead, 0.0, "milp", p.unserved_penalty_per_rps * sum(dead.values())
        )
    greedy = greedy or solve_greedy(p)
    greedy_obj = _objective(p, greedy)
    slots = _slots(p, cands, greedy, greedy_obj)

    rho = p.target_utilisation
    nw = len(slots)
    pairs = [(ci, wi) for ci, c in enumerate(cands) for wi in range(nw) if slots[wi] is c.pool]
    live_set = set(live)
    arcs = [(di, ci) for (di, ci) in mu if di in live_set]
    # variable layout: y | x(pairs) | s(pairs) | a(arcs) | u(live) | z(live)
    oy, ox = 0, nw
    os_ = ox + len(pairs)
    oa = os_ + len(pairs)
    ou = oa + len(arcs)
    oz = ou + len(live)
    n = oz + len(live)
    cost = np.zeros(n)
    integrality = np.zeros(n)
    lb = np.zeros(n)
    ub = np.full(n, np.inf)
    for wi, pool in enumerate(slots):
        cost[oy + wi] = pool.cost_per_replica_s
    integrality[oy:os_] = 1
    ub[oy:os_] = 1
    for k, (ci, _wi) in enumerate(pairs):
        running = cands[ci].variant_id in p.running
        cost[ox + k] = _EPS_HOST + (0.0 if running else p.switch_penalty)
        ub[os_ + k] = rho
    for k in range(len(live)):
        cost[ou + k] = p.unserved_penalty_per_rps
        cost[oz + k] = p.keep_warm_penalty
        ub[oz + k] = 1
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    rlo: list[float] = []
    rhi: list[float] = []

    def row(entries: Sequence[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(rlo)
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        rlo.append(lo)
        rhi.append(hi)

    live_pos = {di: k for k, di in enumerate(live)}
    arcs_of_d: dict[int, list[int]] = {}
    arcs_of_c: dict[int, list[int]] = {}
    for k, (di, ci) in enumerate(arcs):
        arcs_of_d.setdefault(di, []).append(k)
        arcs_of_c.setdefault(ci, []).append(k)
    pairs_of_c: dict[int, list[int]] = {}
    pairs_of_w: dict[int, list[int]] = {}
    for k, (ci, wi) in enumerate(pairs):
        pairs_of_c.setdefault(ci, []).append(k)
        pairs_of_w.setdefault(wi, []).append(k)

    for di in live:
        d = p.demands[di]
        ent = [(oa + k, 1.0) for k in arcs_of_d.get(di, [])]
        ent.append((ou + live_pos[di], 1.0))
        row(ent, d.arrival_rps, d.arrival_rps)
        if d.keep_warm:
            ok = {ci for (dd, ci) in arcs if dd == di}
            ent = [(ox + k, 1.0) for ci in ok for k in pairs_of_c.get(ci, [])]
            ent.append((oz + live_pos[di], 1.0))
            row(ent, 1.0, np.inf)
    for ci in range(len(cands)):
        ent = [(oa + k, 1.0 / mu[arcs[k]]) for k in arcs_of_c.get(ci, [])]
        ent += [(os_ + k, -1.0) for k in pairs_of_c.get(ci, [])]
        if ent:
            row(ent, -np.inf, 0.0)
    for k, (_ci, wi) in enumerate(pairs):
        row([(os_ + k, 1.0), (ox + k, -rho)], -np.inf, 0.0)
        row([(ox + k, 1.0), (oy + wi, -1.0)], -np.inf, 0.0)
    for wi in range(nw):
        ks = pairs_of_w.get(wi, [])
        row([(os_ + k, 1.0) for k in ks] + [(oy + wi, -rho)], -np.inf, 0.0)
        mem = [(ox + k, float(cands[pairs[k][0]].peak_memory_bytes)) for k in ks]
        row([*mem, (oy + wi, -float(p.replica_memory_bytes))], -np.inf, 0.0)
        if wi > 0 and slots[wi] is slots[wi - 1]:
            row([(oy + wi, 1.0), (oy + wi - 1, -1.0)], -np.inf, 0.0)
    if nw:
        row([(oy + wi, pool.num_cpus) for wi, pool in enumerate(slots)], -np.inf, p.cpu_budget)

    if not rlo:
        return greedy
    a_mat = coo_array((vals, (rows, cols)), shape=(len(rlo), n)).tocsr()
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(lb, ub),
        constraints=LinearConstraint(a_mat, np.array(rlo), np.array(rhi)),
        options={"time_limit": p.time_limit_s, "mip_rel_gap": 1e-6},
    )
    if res.x is None:
        return _fall_back(greedy, greedy_obj, f"milp failed: {res.message}")
    x = res.x
    workers = []
    wcost = 0.0
    for wi, pool in enumerate(slots):
        if x[oy + wi] < 0.5:
            continue
        vids: list[str] = []
        shares: list[float] = []
        for k in pairs_of_w.get(wi, []):
            if x[ox + k] > 0.5:
                vids.append(cands[pairs[k][0]].variant_id)
                shares.append(max(0.0, float(x[os_ + k])))
        workers.append(WorkerPlan(pool.name, tuple(vids), tuple(shares)))
        wcost += pool.cost_per_replica_s
    routes: dict[str, tuple[tuple[str, float], ...]] = {}
    for di in live:
        r = [
            (cands[arcs[k][1]].variant_id, float(x[oa + k]))
            for k in arcs_of_d.get(di, [])
            if x[oa + k] > 1e-6
        ]
        r.sort(key=lambda vr: -vr[1])
        if r:
            routes[p.demands[di].demand_id] = tuple(r)
    unserved = dead | {
        p.demands[di].demand_id: float(x[ou + live_pos[di]])
        for di in live
        if x[ou + live_pos[di]] > 1e-6
    }
    notes = () if res.success else (f"milp stopped early: {res.message}",)
    objective = float(res.fun) + p.unserved_penalty_per_rps * sum(dead.values())
    if not res.success and greedy_obj < objective:
        # stopped at the time limit with an incumbent worse than the greedy plan
        return _fall_back(greedy, greedy_obj, f"milp incumbent worse than greedy: {res.message}")
    return Allocation(tuple(workers), routes, unserved, wcost, "milp", objective, notes)


def _fall_back(greedy: Allocation, objective: float, why: str) -> Allocation:
    """The greedy plan with its objective, noting why the MILP's plan was not taken."""
    return replace(greedy, method="greedy", objective=objective, notes=(*greedy.notes, why))


def _objective(p: AllocationProblem, a: Allocation) -> float:
    """The MILP objective evaluated on any allocation (for bounds and comparisons)."""
    price = {c.pool.name: c.pool.cost_per_replica_s for c in p.candidates}
    obj = sum(price[w.pool] for w in a.workers)
    for w in a.workers:
        for v in w.variants:
            obj += _EPS_HOST + (0.0 if v in p.running else p.switch_penalty)
    obj += p.unserved_penalty_per_rps * sum(a.unserved_rps.values())
    hosted = {v for w in a.workers for v in w.variants}
    by_id = {c.variant_id: c for c in p.candidates}
    for d in p.demands:
        if d.keep_warm and not any(
            eligible(d, by_id[v], p.replica_memory_bytes) > 0 for v in hosted if v in by_id
        ):
            obj += p.keep_warm_penalty
    return obj


def solve_auto(p: AllocationProblem) -> Allocation:
    """The MILP where it is small enough to finish within its limit, the greedy plan beyond.

    Measured (`bench/sim.py alloc --sizes ...`, README): on a quiet machine HiGHS closes the
    gap within 1 s on most demand snapshots up to ~100 binaries and on almost none from ~200;
    on a loaded one it stops at the limit from ~45. The greedy plan costs at most twice the
    optimum plus one replica per pool (tests/unit/test_allocation_scale.py), and
    `decompose.lower_bound` measures its gap."""
    greedy = solve_greedy(p)
    # a floor without pruning (slow at fleet size): each variant greedy hosts is the first
    # of its classes' pruned options, so every slot of its pool has a y and an x for it
    hosted: dict[str, set[str]] = {}
    for w in greedy.workers:
        hosted.setdefault(w.pool, set()).update(w.variants)
    in_use = [c for c in p.candidates if c.pool.name in hosted]
    n = sum(1 + len(hosted[s.name]) for s in _slots(p, in_use, greedy, _objective(p, greedy)))
    if n <= p.milp_max_binaries:
        n = milp_binaries(p, greedy)
        if n <= p.milp_max_binaries:
            return solve_milp(p, greedy)
    return replace(greedy, notes=(*greedy.notes, f"auto: greedy (MILP of {n}+ binaries)"))


def solve(p: AllocationProblem, method: str = "auto") -> Allocation:
    """Solve with `method` ("auto", "milp" or "greedy")."""
    if method == "greedy":
        return solve_greedy(p)
    if method == "milp":
        return solve_milp(p)
    if method == "auto":
        return solve_auto(p)
    raise ValueError(f"unknown allocation method {method!r}")
