"""Discrete-event simulation of an infaas cluster, driven by the project's own decisions.

What is simulated, and what is the real code:

* **real**: every request's variant is `scheduler.policy.route_select` on the
  replica it lands on, with the load that replica sees (its own queues, the
  work other variants queued on its thread ahead: as the worker builds it);
  every control tick runs `scheduler.control.measure` / `build_context` /
  `plan` and the policy itself (`decide` or a baseline of
  `scheduler.baselines.POLICIES`), with the workers' `LoadReport`s,
  the `ReplicaTarget` and the `RoutingHints` passing through an in-memory
  `MetadataStore` (`infaas.store`), as they pass through the real store;
* **simulated** (`ServiceModel`): the clock; a replica's start-up; a
  variant's load (its profile's ``load_ms``); the batcher (one inference
  thread per replica, FIFO over its variants, up to ``max_batch`` queued
  requests per batch, optionally waiting ``batch_wait_ms`` for a fuller one);
  a batch's time from the variant's profile (``intercept + slope * b`` p50,
  log-normal with the profile's p99/p50 tail, or deterministic) plus the
  request path's overhead per request; Serve's router (power of two choices
  on outstanding requests); and CPU contention: the replicas of a node share
  its cores by processor sharing (`Node`).

The clock is a heap of ``(time, sequence, callback)`` (`EventLoop`); nothing
here reads the wall clock but the timing of the decisions themselves.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infaas.errors import NoFeasibleVariant
from infaas.settings import AutoscalerSettings, Pool
from infaas.store import MetadataStore
from infaas.store.backends import MemoryStore
from infaas.types import SLO
from scheduler.autoscaler import AutoscalerState, Policy
from scheduler.baselines import POLICIES
from scheduler.control import POLICY_NAMES, RateWindow, build_context, plan_tick
from scheduler.fleet import ClassLoad
from scheduler.policy import (
    Candidate,
    CandidateSet,
    LoadSnapshot,
    Query,
    VariantLoad,
    route_select,
)
from scheduler.routing import LoadReport, RoutingHints, read_hints, read_reports, read_target

__all__ = [
    "EventLoop",
    "Node",
    "Replica",
    "Result",
    "ServiceModel",
    "Simulation",
]


# --------------------------------------------------------------------- the clock


class EventLoop:
    """A simulated clock: callbacks run in time order (ties in the order they were set)."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (max(t, self.now), self._seq, fn, args))
        self._seq += 1

    def after(self, dt: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + max(0.0, dt), fn, *args)

    def run(self, until: float) -> None:
        """Run every event due at or before `until`; the clock then reads `until`."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            fn(*args)
        self.now = max(self.now, until)


class Node:
    """A node's cores shared by processor sharing among the jobs running on it.

    Each job needs one core for `work_s` seconds; with n jobs on c cores each
    progresses at ``min(1, c / n)``.
    """

    def __init__(self, loop: EventLoop, cores: float, name: str = "node") -> None:
        self.loop = loop
        self.cores = cores
        self.name = name
        self._jobs: dict[int, list[Any]] = {}  # id -> [remaining work s, callback]
        self._t = 0.0
        self._version = 0
        self._ids = 0
        self.busy_core_s = 0.0

    @property
    def running(self) -> int:
        return len(self._jobs)

    def _rate(self) -> float:
        n = len(self._jobs)
        return 1.0 if n <= self.cores else self.cores / n

    def _advance(self) -> None:
        dt = self.loop.now - self._t
        if dt > 0 and self._jobs:
            r = self._rate()
            for j in self._jobs.values():
                j[0] -= dt * r
            self.busy_core_s += dt * min(len(self._jobs), self.cores)
        self._t = self.loop.now

    def _reschedule(self) -> None:
        self._version += 1
        if self._jobs:
            rem = min(j[0] for j in self._jobs.values())
            self.loop.after(max(0.0, rem) / self._rate(), self._finish, self._version)

    def submit(self, work_s: float, done: Callable[[], None]) -> None:
        self._advance()
        self._ids += 1
        self._jobs[self._ids] = [work_s, done]
        self._reschedule()

    def _finish(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        done = [jid for jid, j in self._jobs.items() if j[0] <= 1e-9]
        callbacks = [self._jobs.pop(jid)[1] for jid in done]
        self._reschedule()
        for cb in callbacks:
            cb()


# --------------------------------------------------------------------- service model


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """The measured constants a simulated replica runs with."""

    request_overhead_ms: float = 0.0
    """Replica time per request outside the model (HTTP, envelope, scheduling)."""
    replica_startup_s: float = 5.0
    """From Serve adding a replica to the replica accepting requests."""
    batch_wait_ms: float = 0.0
    """How long a batch smaller than max_batch waits for more requests (the worker's default: 0)."""
    deterministic: bool = False
    """Batch times at their profile's p50 exactly (else log-normal with its p99/p50 tail)."""
    report_s: float = 0.5
    """Workers' load report period."""


@dataclass(slots=True)
class _Request:
    arrival: float
    key: str
    task: str
    slo: SLO
    variant: str = ""
    accuracy: float = 0.0


class _Loads(Mapping[str, VariantLoad]):
    """A replica's load per variant, as the worker computes it for `route_select`."""

    def __init__(self, rep: Replica) -> None:
        self._rep = rep
        self._ahead: float | None = None

    def _own_ms(self, vid: str) -> float:
        n = self._rep.outstanding_of(vid)
        c = self._rep.cands.get(vid)
        return c.drain_ms(n) if n and c is not None else 0.0

    def __getitem__(self, vid: str) -> VariantLoad:
        rep = self._rep
        if self._ahead is None:
            self._ahead = sum(self._own_ms(v) for v in rep.queues)
        return VariantLoad(
            replicas=1,
            loaded_replicas=1 if rep.loaded.get(vid, math.inf) <= rep.sim.loop.now else 0,
            outstanding=rep.outstanding_of(vid),
            ahead_ms=max(0.0, self._ahead - self._own_ms(vid)),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(set(self._rep.queues) | set(self._rep.loaded))

    def __len__(self) -> int:
        return len(set(self._rep.queues) | set(self._rep.loaded))


class Replica:
    """One worker replica: a thread, its loaded variants, one FIFO queue per variant."""

    def __init__(self, sim: Simulation, name: str, pool: Pool, node: Node, ready_at: float) -> None:
        self.sim = sim
        self.name = name
        self.pool = pool
        self.node = node
        self.cands = sim.pool_candidates[pool.name]
        self.ready_at = ready_at
        self.loaded: dict[str, float] = {}  # variant -> time its load completes
        self.queues: dict[str, deque[_Request]] = {}
        self.busy = False
        self.running: tuple[str, int] = ("", 0)  # the batch in flight: variant, size
        self.draining = False
        self.wake_pending = False
        self.arrivals: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.served_ms: dict[str, float] = {}

    @property
    def outstanding(self) -> int:
        return sum(len(q) for q in self.queues.values()) + self.running[1]

    def outstanding_of(self, vid: str) -> int:
        """Requests of `vid` queued or in flight here (the worker's count)."""
        q = self.queues.get(vid)
        return (len(q) if q else 0) + (self.running[1] if self.running[0] == vid else 0)

    def report(self, now: float) -> LoadReport:
        return LoadReport(
            replica=self.name,
            ts=now,
            arrivals=dict(self.arrivals),
            outstanding={v: n for v in self.queues if (n := self.outstanding_of(v))},
            loaded=[v for v, t in self.loaded.items() if t <= now],
            served=dict(self.served),
            served_ms=dict(self.served_ms),
        )

    def load(self, vid: str) -> None:
        if vid not in self.loaded:
            c = self.cands.get(vid)
            t = max(self.sim.loop.now, self.ready_at) + (c.load_ms / 1000.0 if c else 0.0)
            self.loaded[vid] = t
            self.sim.loop.at(t, self.dispatch)

    def handle(self, req: _Request) -> None:
        sim = self.sim
        self.arrivals[req.key] = self.arrivals.get(req.key, 0) + 1
        snap = LoadSnapshot(_Loads(self), sim.loop.now)
        t0 = time.perf_counter()
        try:
            sel = route_select(self.cands, Query.for_task(req.task), req.slo, snap, sim.hints)
        except NoFeasibleVariant:
            sim.decision_s.append(time.perf_counter() - t0)
            sim.finish(req, None)
            return
        sim.decision_s.append(time.perf_counter() - t0)
        req.variant = sel.variant_id
        req.accuracy = sel.candidate.accuracy
        self.queues.setdefault(sel.variant_id, deque()).append(req)
        self.load(sel.variant_id)
        self.dispatch()

    def dispatch(self) -> None:
        """Start the next batch when the thread is free: the variant whose head waited longest."""
        now = self.sim.loop.now
        if self.busy or now < self.ready_at:
            return
        head: tuple[float, str] | None = None
        for vid, q in self.queues.items():
            if (
                q
                and self.loaded.get(vid, math.inf) <= now
                and (head is None or q[0].arrival < head[0])
            ):
                head = (q[0].arrival, vid)
        if head is None:
            return
        vid = head[1]
        q = self.queues[vid]
        c = self.cands.variant(vid)
        wait = self.sim.service.batch_wait_ms / 1000.0
        if len(q) < c.max_batch and wait > 0 and now < q[0].arrival + wait:
            if not self.wake_pending:
                self.wake_pending = True
                self.sim.loop.at(q[0].arrival + wait, self._wake)
            return
        batch = [q.popleft() for _ in range(min(len(q), c.max_batch))]
        self.busy = True
        self.running = (vid, len(batch))
        self.node.submit(self.sim.batch_s(c, len(batch)), lambda: self._done(vid, batch))

    def _wake(self) -> None:
        self.wake_pending = False
        self.dispatch()

    def _done(self, vid: str, batch: list[_Request]) -> None:
        now = self.sim.loop.now
        self.busy = False
        self.running = ("", 0)
        self.served[vid] = self.served.get(vid, 0) + len(batch)
        self.served_ms[vid] = self.served_ms.get(vid, 0.0) + sum(
            (now - r.arrival) * 1000.0 for r in batch
        )
        for r in batch:
            self.sim.finish(r, now)
        self.dispatch()

    def follow(self, hints: RoutingHints | None) -> None:
        """Evict idle variants the plan no longer keeps; load the ones it plans (pre-load)."""
        if hints is None:
            return
        keep = set(hints.keep)
        for vid in list(self.loaded):
            if vid not in keep and keep and not self.queues.get(vid):
                del self.loaded[vid]
                self.queues.pop(vid, None)
        for vid in hints.keep:
            if self.cands.get(vid) is not None:
                self.load(vid)


# --------------------------------------------------------------------- the cluster


@dataclass
class Result:
    """What one simulated run measured."""

    policy: str
    requests: int = 0
    within_slo: int = 0
    refused: int = 0
    accuracy_sum: float = 0.0
    replica_s: float = 0.0
    cost: float = 0.0
    tick_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        served = len(self.latencies_ms)
        ticks = sorted(self.tick_s)
        lat = sorted(self.latencies_ms)

        def pct(xs: list[float], p: float) -> float:
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0

        return {
            "policy": self.policy,
            "requests": self.requests,
            "attainment": self.within_slo / self.requests if self.requests else 1.0,
            "violations": self.requests - self.within_slo,
            "refused": self.refused,
            "replica_s": round(self.replica_s, 1),
            "cost": round(self.cost, 3),
            "served_accuracy": self.accuracy_sum / served if served else 0.0,
            "p50_ms": round(pct(lat, 0.5), 2),
            "p99_ms": round(pct(lat, 0.99), 2),
            "tick_p50_ms": round(1000 * pct(ticks, 0.5), 3),
            "tick_p99_ms": round(1000 * pct(ticks, 0.99), 3),
        }


class Simulation:
    """A fleet of pools on nodes, a control loop running `policy`, and a workload.

    `candidates` are the registered variants as the control loop sees them
    (profiles with the request overhead already added: `scheduler.control.with_overhead`).
    Replicas of a pool go on the node with the most free cores.
    """

    def __init__(
        self,
        candidates: CandidateSet,
        pools: Sequence[Pool],
        *,
        config: AutoscalerSettings,
        nodes: int = 1,
        cores_per_node: float = 2.0,
        service: ServiceModel = ServiceModel(),
        seed: int = 0,
        store: MetadataStore | None = None,
        initial_replicas: int | None = None,
        control: Callable[[], object] | None = None,
    ) -> None:
        self.loop = EventLoop()
        self.rng = random.Random(seed)
        self.store = store if store is not None else MemoryStore()
        self.candidates = candidates
        self.pools = {p.name: p for p in pools}
        self.pool_candidates = {
            p.name: CandidateSet(c for c in candidates if c.pool.name == p.name) for p in pools
        }
        self.policy: Policy = POLICIES[POLICY_NAMES[config.policy]]
        self.control = control
        """The real control loop's tick, when one pool (else `_decide`, its multi-pool twin)."""
        self.config = config
        self.service = service
        self.nodes = [Node(self.loop, cores_per_node, f"node{i}") for i in range(nodes)]
        self.replicas: dict[str, list[Replica]] = {p.name: [] for p in pools}
        self.hints: RoutingHints | None = None
        self.state = AutoscalerState()
        self.window = RateWindow(config)
        self.decision_s: list[float] = []
        self.decisions: list[Any] = []
        self.result = Result(config.policy)
        self._names = 0
        first = initial_replicas if initial_replicas is not None else config.min_replicas
        for p in pools:
            for _ in range(first if self.pool_candidates[p.name] else 0):
                self._add(p, ready_at=0.0)

    # --- service
    def batch_s(self, c: Candidate, b: int) -> float:
        ms = c.batch_ms(b) + b * self.service.request_overhead_ms
        if not self.service.deterministic and c.tail > 1.0:
            sigma = math.log(c.tail) / 2.326
            ms *= self.rng.lognormvariate(-sigma * sigma / 2.0, sigma)
        return ms / 1000.0

    def finish(self, req: _Request, done_at: float | None) -> None:
        r = self.result
        r.requests += 1
        if done_at is None:
            r.refused += 1
            return
        lat = (done_at - req.arrival) * 1000.0
        r.latencies_ms.append(lat)
        r.accuracy_sum += req.accuracy
        if lat <= req.slo.latency_ms:
            r.within_slo += 1

    # --- replicas (what Serve does with the target)
    def _add(self, pool: Pool, ready_at: float) -> Replica:
        node = max(self.nodes, key=lambda n: n.cores - self._placed(n))
        self._names += 1
        rep = Replica(self, f"{pool.name}-{self._names}", pool, node, ready_at)
        self.replicas[pool.name].append(rep)
        rep.follow(self.hints)
        return rep

    def _placed(self, node: Node) -> float:
        return sum(
            r.pool.num_cpus for reps in self.replicas.values() for r in reps if r.node is node
        )

    def _scale(self, pool: Pool, n: int) -> None:
        reps = self.replicas[pool.name]
        live = [r for r in reps if not r.draining]
        for _ in range(n - len(live)):
            self._add(pool, self.loop.now + self.service.replica_startup_s)
        if n < len(live):
            for r in sorted(live, key=lambda r: r.outstanding)[: len(live) - n]:
                r.draining = True
        # a drained replica leaves once its queues are empty
        self.replicas[pool.name] = [r for r in reps if not (r.draining and r.outstanding == 0)]

    # --- the workload
    def route(self, req: _Request) -> None:
        """Serve's router: the pool the plan routes the class to, then two random replicas."""
        pool = self._pool_for(req)
        live = [r for r in self.replicas.get(pool, ()) if not r.draining]
        # Serve routes to a replica once it is up (to a starting one only when none is)
        reps = [r for r in live if r.ready_at <= self.loop.now] or live
        if not reps:
            self.finish(req, None)
            return
        if len(reps) > 1:
            a, b = self.rng.sample(reps, 2)
            rep = a if a.outstanding <= b.outstanding else b
        else:
            rep = reps[0]
        rep.handle(req)

    def _pool_for(self, req: _Request) -> str:
        if len(self.pools) == 1:
            return next(iter(self.pools))
        h = self.hints
        hinted = (h.routes.get(req.key) or h.by_task.get(req.task) or []) if h else []
        for vid in hinted:
            c = self.candidates.get(vid)
            if c is not None:
                return c.pool.name
        task = self.candidates.of_task(req.task)
        return task[0].pool.name if task else ""

    # --- the control loop
    def tick(self) -> None:
        """Workers report; the control loop decides; Serve scales; workers follow the hints."""
        now = self.loop.now
        for reps in self.replicas.values():
            for r in reps:
                if now >= r.ready_at:
                    self.store.put_load_report(r.name, r.report(now))
        t0 = time.perf_counter()
        if self.control is not None:  # the real loop, on this clock and this store
            self.control()
            target = read_target(self.store)
            if target is not None:
                self._scale(next(iter(self.pools.values())), target.num_replicas)
        else:
            self._decide(now)
        self.result.tick_s.append(time.perf_counter() - t0)
        self.hints = read_hints(self.store)
        for reps in self.replicas.values():
            for r in reps:
                r.follow(self.hints)

    def _decide(self, now: float) -> None:
        """The control loop's tick (`api.autoscaler.ControlLoop.tick`) for several pools."""
        cfg = self.config
        m = self.window.observe(read_reports(self.store, now), now)
        if m is None:
            return
        ctx = build_context(m, self.candidates, cfg, self.state, self.window.known)
        decision, self.state = self.policy(ctx)
        self.decisions.append(decision)
        for pool in self.pools.values():
            if not self.pool_candidates[pool.name]:
                continue
            p = plan_tick(decision, cfg, self.candidates, pool, now)
            self.store.put_replica_target(p.target)
            self.store.put_routing_hints(p.hints)
            target = read_target(self.store)
            self._scale(pool, target.num_replicas if target else 0)

    def _account(self, dt: float) -> None:
        for reps in self.replicas.values():
            for r in reps:
                self.result.replica_s += dt
                self.result.cost += dt * r.pool.cost_per_replica_s

    def run(self, workload: Sequence[ClassLoad], horizon_s: float, drain_s: float = 60.0) -> Result:
        """Replay `workload` for `horizon_s` simulated s; what is queued then drains (late)."""
        for cl in workload:
            for t in cl.arrivals:
                if t < horizon_s:
                    self.loop.at(t, self.route, _Request(t, cl.key, cl.task, cl.slo))
        tick = self.config.tick_s
        t = 0.0
        while t < horizon_s:
            step = min(tick, horizon_s - t)
            self.loop.at(t, self.tick)
            self.loop.run(t + step - 1e-12)
            self._account(step)
            t += step
        # no more ticks: what is queued drains (and counts late if it is)
        self.loop.run(horizon_s + drain_s)
        for reps in self.replicas.values():
            for r in reps:
                self.result.requests += r.outstanding
        return self.result
