"""A per-window (fluid) twin of `scheduler.simulation`, for fleets too large for per-request events.

The control path is the same real code: workers' `LoadReport`s through an
in-memory store, `measure`, `build_context`, the policy, `plan`, and every
class's variant chosen by `route_select` on the load a replica sees. What is
aggregated is the traffic, over windows of ``tick_s``:

* a class's arrivals in a window are routed together, by one `route_select`
  on a typical replica's load (the pool's queue split over its ready replicas);
  a refusal refuses them all;
* a pool's ready replicas serve its queued work at one thread each, slowed by
  CPU sharing when the pool has more replicas than its nodes have cores; a
  request of variant v costs ``L(b) / b`` plus the request path, b being the
  per-replica queue of v capped at ``max_batch``; when the work exceeds the
  capacity every variant's queue is served in proportion (FIFO over variants,
  in the mean);
* a window's arrivals wait for the work queued ahead of them in the pool, then
  their own batch at the profile's p99: all of them meet the target or none.

It is trusted only as far as `bench/sim.py fluid-check` agrees with the
per-request simulation at sizes both run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from infaas.errors import NoFeasibleVariant
from infaas.settings import AutoscalerSettings, Pool
from infaas.store.backends import MemoryStore
from scheduler.autoscaler import AutoscalerState, Policy
from scheduler.baselines import POLICIES
from scheduler.control import POLICY_NAMES, RateWindow, build_context, plan_tick
from scheduler.fleet import ClassLoad
from scheduler.policy import CandidateSet, LoadSnapshot, Query, VariantLoad, route_select
from scheduler.routing import LoadReport, RoutingHints, read_reports
from scheduler.simulation import Result, ServiceModel

__all__ = ["FluidSimulation"]


class FluidSimulation:
    """Per-window simulation of `candidates` on `pools` under `config.policy` (module doc)."""

    def __init__(
        self,
        candidates: CandidateSet,
        pools: Sequence[Pool],
        *,
        config: AutoscalerSettings,
        nodes: int = 1,
        cores_per_node: float = 2.0,
        service: ServiceModel | None = None,
    ) -> None:
        self.candidates = candidates
        self.pools = {p.name: p for p in pools}
        self.by_pool = {
            p.name: CandidateSet(c for c in candidates if c.pool.name == p.name) for p in pools
        }
        self.config = config
        self.policy: Policy = POLICIES[POLICY_NAMES[config.policy]]
        self.cores = nodes * cores_per_node
        self.service = service or ServiceModel()
        self.store = MemoryStore()
        self.state = AutoscalerState()
        self.window = RateWindow(config)
        self.hints: RoutingHints | None = None
        # per pool: replicas as (ready at), per variant: queued requests and when loaded
        self.replicas: dict[str, list[float]] = {
            p.name: [0.0] * config.min_replicas if self.by_pool[p.name] else [] for p in pools
        }
        self.queue: dict[str, float] = {}
        self.loaded: dict[str, float] = {}
        self.arrived: dict[str, int] = {}
        self.result = Result(config.policy)

    def _ready(self, pool: str, now: float) -> int:
        return sum(1 for t in self.replicas[pool] if t <= now)

    def _report(self, now: float) -> None:
        pool_of = {v: self.candidates.variant(v).pool.name for v in (*self.queue, *self.loaded)}
        for name, reps in self.replicas.items():
            n = max(1, self._ready(name, now))
            # every ready replica of a pool reports the same share of its queues
            outstanding = {
                v: round(q / n)
                for v, q in self.queue.items()
                if q >= 0.5 * n and pool_of[v] == name
            }
            loaded = [v for v, at in self.loaded.items() if at <= now and pool_of[v] == name]
            for i, t in enumerate(reps):
                if t > now:
                    continue
                rep = LoadReport(
                    replica=f"{name}-{i}",
                    ts=now,
                    # cumulative counters on the oldest replica only: the loop differentiates
                    # each replica's, and a split that moves as replicas come would not sum
                    arrivals=dict(self.arrived) if i == 0 else {},
                    outstanding=dict(outstanding),
                    loaded=list(loaded),
                )
                self.store.put_load_report(rep.replica, rep)

    def _tick(self, now: float) -> None:
        cfg = self.config
        self._report(now)
        m = self.window.observe(read_reports(self.store, now), now)
        if m is None:
            return
        ctx = build_context(m, self.candidates, cfg, self.state, self.window.known)
        t0 = time.perf_counter()
        decision, self.state = self.policy(ctx)
        self.result.tick_s.append(time.perf_counter() - t0)
        for name, pool in self.pools.items():
            if not self.by_pool[name]:
                continue
            p = plan_tick(decision, cfg, self.candidates, pool, now)
            self.hints = p.hints
            reps = self.replicas[name]
            want = p.target.num_replicas
            if want > len(reps):
                reps += [now + self.service.replica_startup_s] * (want - len(reps))
            elif want < len(reps):
                reps.sort()
                del reps[want:]
        if self.hints is not None:
            for v in self.hints.keep:
                c = self.candidates.get(v)
                if c is not None and v not in self.loaded:
                    self.loaded[v] = now + c.load_ms / 1000.0

    def _work_s(self, v: str, per_replica: float) -> float:
        c = self.candidates.variant(v)
        b = min(float(c.max_batch), max(1.0, per_replica))
        return (c.batch_ms(b) / b + self.service.request_overhead_ms) / 1000.0

    def run(
        self, workload: Sequence[ClassLoad], horizon_s: float, measure_from_s: float = 0.0
    ) -> Result:
        """Simulate until `horizon_s`; the result counts the windows from `measure_from_s` on
        (a warm-up before it: the fleet starts with `min_replicas` and every variant cold)."""
        dt = self.config.tick_s
        steps = math.ceil(horizon_s / dt)
        counts = []
        for cl in workload:
            row = [0] * steps
            for t in cl.arrivals:
                if t < horizon_s:
                    row[int(t // dt)] += 1
            counts.append(row)
        measured = self.result
        warmup = Result(self.config.policy)
        for i in range(steps):
            now = i * dt
            r = measured if now >= measure_from_s - 1e-9 else warmup
            self._tick(now)
            ahead_s: dict[str, float] = {}  # pool -> queued work per ready replica
            ready = {name: self._ready(name, now) for name in self.pools}
            for name, n in ready.items():
                qs = [
                    (v, q)
                    for v, q in self.queue.items()
                    if self.candidates.variant(v).pool.name == name
                ]
                ahead_s[name] = sum(q * self._work_s(v, q / max(1, n)) for v, q in qs) / max(1, n)
            seen: dict[int, dict[str, VariantLoad]] = {}  # per replica count: loads so far
            for cl, row in zip(workload, counts, strict=True):
                a = row[i]
                if not a:
                    continue
                self.arrived[cl.key] = self.arrived.get(cl.key, 0) + a
                r.requests += a
                pool = self._pool_for(cl)
                n = max(1, ready.get(pool, 0))
                loads = seen.get(n)
                if loads is None:
                    loads = seen[n] = self._loads(n, now)
                try:
                    sel = route_select(
                        self.by_pool.get(pool) or self.candidates,
                        Query.for_task(cl.task),
                        cl.slo,
                        LoadSnapshot(loads, now),
                        self.hints,
                    )
                except NoFeasibleVariant:
                    r.refused += a
                    continue
                c = sel.candidate
                v = c.variant_id
                cold = max(0.0, self.loaded.get(v, math.inf) - now)
                if math.isinf(cold):
                    self.loaded[v] = now + c.load_ms / 1000.0
                    cold = c.load_ms / 1000.0
                per_rep = (self.queue.get(v, 0.0) + a) / n
                b = min(float(c.max_batch), max(1.0, per_rep))
                slow = max(1.0, sum(ready.values()) / self.cores)
                lat_s = (ahead_s.get(pool, 0.0) * slow + cold) + c.tail * c.batch_ms(b) / 1000.0
                lat_s += self.service.request_overhead_ms / 1000.0
                if ready.get(pool, 0) == 0:
                    lat_s += self.service.replica_startup_s
                if lat_s * 1000.0 <= cl.slo.latency_ms:
                    r.within_slo += a
                r.latencies_ms.extend([lat_s * 1000.0] * a)
                r.accuracy_sum += c.accuracy * a
                self.queue[v] = self.queue.get(v, 0.0) + a
                for k, kl in seen.items():  # the loads a later class sees include these
                    kl[v] = self._load(v, k, now)
            self._serve(ready, dt)
            r.replica_s += dt * sum(len(reps) for reps in self.replicas.values())
            r.cost += dt * sum(
                len(reps) * self.pools[name].cost_per_replica_s
                for name, reps in self.replicas.items()
            )
        return measured

    def _load(self, v: str, n: int, now: float) -> VariantLoad:
        """A typical replica's view of variant `v` among `n` ready replicas."""
        ready = 1 if self.loaded.get(v, math.inf) <= now else 0
        return VariantLoad(1, ready, round(self.queue.get(v, 0.0) / n))

    def _loads(self, n: int, now: float) -> dict[str, VariantLoad]:
        """`_load` of every variant queued or loaded."""
        return {v: self._load(v, n, now) for v in (*self.queue, *self.loaded)}

    def _pool_for(self, cl: ClassLoad) -> str:
        if len(self.pools) == 1:
            return next(iter(self.pools))
        h = self.hints
        for v in (h.routes.get(cl.key) or h.by_task.get(cl.task) or []) if h else []:
            c = self.candidates.get(v)
            if c is not None:
                return c.pool.name
        task = self.candidates.of_task(cl.task)
        return task[0].pool.name if task else ""

    def _serve(self, ready: dict[str, int], dt: float) -> None:
        slow = max(1.0, sum(ready.values()) / self.cores)
        for name, n in ready.items():
            qs = [
                (v, q)
                for v, q in self.queue.items()
                if self.candidates.variant(v).pool.name == name
            ]
            if not qs or n == 0:
                continue
            work = sum(q * self._work_s(v, q / n) for v, q in qs)
            cap = n * dt / slow
            f = 1.0 if work <= cap else cap / work
            for v, q in qs:
                left = q * (1.0 - f)
                if left < 1e-6:
                    del self.queue[v]
                else:
                    self.queue[v] = left
