"""The autoscaler's control loop: measure, decide, apply — a thin shell around pure parts.

Every tick (`ControlLoop.tick`)::

    worker load reports (store, LOAD_NS)  --measure-->  Measurement
    Measurement + candidates + state      --build_context-->  AutoscalingContext
    policy(ctx)  (scheduler.autoscaler: decide or a baseline)  -->  ScalingDecision, state
    ScalingDecision                       --plan-->  Plan
    Plan  --> store: ReplicaTarget (CONTROL_NS/"target"), RoutingHints (CONTROL_NS/"routes"),
              autoscaler events (infaas.telemetry)

Who reads what it writes:

* the Ray Serve controller, through the worker deployment's custom autoscaling
  policy (`enclave_workers.autoscaling.FollowTarget`), turns ``target`` into the
  worker deployment's replica count;
* every worker replica reads ``routes`` (with its candidate refresh) and
  `route_select` prefers the planned variants for each demand class: upgrades
  to a faster variant that still meets the callers' floor under load, back to
  the cheaper one when load falls, FP32 pinned for the static baselines;
* the dashboard reads the events.

Worker replicas write a `LoadReport` every half second: cumulative arrivals per
demand class (task x latency target x accuracy floor, `demand_key`),
outstanding requests per variant and the variants they have loaded. The loop
differentiates the counters over the last ``rate_window_s`` into arrival rates;
the reports are metadata only (no tenant, no payload).

Nothing but `ControlLoop` touches a clock, the store or a thread.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from infaas.settings import Pool
from infaas.store import MetadataStore
from infaas.types import Precision, Profile
from scheduler.autoscaler import (
    POLICIES,
    AutoscalerConfig,
    AutoscalerState,
    AutoscalingContext,
    DemandSignal,
    Policy,
    ScalingDecision,
)
from scheduler.load import LoadSnapshot, VariantLoad
from scheduler.policy import CandidateSet
from scheduler.routing import (
    CONTROL_NS,
    LoadReport,
    ReplicaTarget,
    RouteMode,
    RoutingHints,
    parse_demand_key,
    read_reports,
)

__all__ = [
    "POLICY_NAMES",
    "CandidateCache",
    "ControlLoop",
    "Measurement",
    "Plan",
    "build_context",
    "event_records",
    "measure",
    "plan",
    "with_overhead",
]

log = logging.getLogger("infaas.scheduler.controller")

POLICY_NAMES: Mapping[str, str] = {
    "infaas": "infaas",
    "static": "static",
    "queue": "queue_length",
    "infaas-style": "infaas_baseline",
}
"""`infaas serve --autoscaler` name -> `scheduler.autoscaler.POLICIES` name."""

_MODE: Mapping[str, RouteMode] = {
    "infaas": "prefer",
    "static": "pin",
    "queue": "pin",
    "infaas-style": "least_slack",
}


# ------------------------------------------------------------------ measure


@dataclass(frozen=True, slots=True)
class Measurement:
    """Traffic between two ticks, from the workers' reports."""

    now_s: float
    arrival_rps: Mapping[str, float]
    """demand key -> arrivals per second since the previous tick."""
    load: LoadSnapshot
    replicas: int
    """Worker replicas reporting."""


def measure(
    previous: Mapping[str, LoadReport], current: Mapping[str, LoadReport], dt_s: float, now_s: float
) -> Measurement:
    """Arrival rates from counter deltas; queues and loaded variants from the latest reports.

    A replica new since `previous` counts from zero (its counters started with
    it); one that is gone contributes nothing. `dt_s` <= 0 gives zero rates.
    """
    counts: dict[str, float] = {}
    for rid, rep in current.items():
        before = previous.get(rid)
        for key, n in rep.arrivals.items():
            base = before.arrivals.get(key, 0) if before is not None else 0
            counts[key] = counts.get(key, 0.0) + max(0, n - base)
    rates = {k: (v / dt_s if dt_s > 0 else 0.0) for k, v in counts.items()}
    replicas = len(current)
    outstanding: dict[str, int] = {}
    loaded: dict[str, int] = {}
    for rep in current.values():
        for v, n in rep.outstanding.items():
            outstanding[v] = outstanding.get(v, 0) + max(0, n)
        for v in rep.loaded:
            loaded[v] = loaded.get(v, 0) + 1
    by_variant = {
        v: VariantLoad(
            replicas=max(replicas, loaded.get(v, 0)),
            loaded_replicas=loaded.get(v, 0),
            outstanding=outstanding.get(v, 0),
        )
        for v in set(outstanding) | set(loaded)
    }
    return Measurement(now_s, rates, LoadSnapshot(by_variant, now_s), replicas)


def build_context(
    m: Measurement,
    candidates: CandidateSet,
    config: AutoscalerConfig,
    state: AutoscalerState,
    known: Mapping[str, float],
) -> AutoscalingContext:
    """The policy's input: one `DemandSignal` per class seen (`known`: key -> last seen).

    Classes seen before but silent now stay in with rate 0, so the policy can
    keep them warm and later scale their variants to zero. Classes of tasks no
    candidate serves are left out.
    """
    tasks = set(candidates.tasks())
    demands = []
    for key in sorted(set(known) | set(m.arrival_rps)):
        try:
            task, lat, acc = parse_demand_key(key)
        except ValueError:
            continue
        if task not in tasks:
            continue
        demands.append(DemandSignal(task, m.arrival_rps.get(key, 0.0), lat, acc, key))
    return AutoscalingContext(
        now_s=m.now_s,
        candidates=candidates,
        load=m.load,
        demands=tuple(demands),
        config=config,
        state=state,
    )


# ------------------------------------------------------------------ plan


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying a decision means for Serve and the workers."""

    target: ReplicaTarget
    hints: RoutingHints
    events: tuple[tuple[str, str, str], ...] = ()
    """(kind, variant, reason) per decision event."""


def _fp32_first(candidates: CandidateSet, task: str, min_accuracy: float) -> list[str]:
    """Plain serving's variant for a class never planned: the most accurate FP32 model."""
    fp32 = [
        c
        for c in candidates.of_task(task)
        if c.spec.precision is Precision.FP32 and c.accuracy >= min_accuracy
    ]
    fp32.sort(key=lambda c: (-c.accuracy, c.cost_per_request, c.variant_id))
    return [c.variant_id for c in fp32[:1]]


def plan(
    decision: ScalingDecision,
    policy: str,
    candidates: CandidateSet,
    *,
    now_s: float,
    min_replicas: int,
    max_replicas: int,
    pool: Pool,
    static_replicas: int | None = None,
    outstanding: int = 0,
    queue_guard: float | None = None,
) -> Plan:
    """The replica target and routing hints a decision amounts to (pure).

    Replicas: the decision's worker plans on `pool` (every worker replica is
    one deployment replica hosting its variants); baselines that size per
    variant (one variant per replica) sum their variants' counts. Clamped to
    [min_replicas, max_replicas]. `static_replicas` overrides the count;
    `queue_guard` (infaas) raises it to at least ``outstanding / queue_guard``
    when the measured queue says the model-based plan is too optimistic.
    """
    if decision.workers:
        want = sum(1 for w in decision.workers if w.pool == pool.name)
    else:
        want = sum(decision.replicas.values())
    if queue_guard is not None and outstanding > 0:
        want = max(want, math.ceil(outstanding / queue_guard))
    if static_replicas is not None:
        want = static_replicas
    n = max(min_replicas, min(max_replicas, want))
    mode = _MODE.get(policy, "prefer")
    routes = {k: [v for v, _ in r] for k, r in decision.routes.items() if r}
    by_task: dict[str, list[str]] = {}
    for key, variants in sorted(routes.items()):
        task = parse_demand_key(key)[0] if "|" in key else key
        for v in variants:
            lst = by_task.setdefault(task, [])
            if v not in lst:
                lst.append(v)
    if mode == "pin":
        # a baseline serves plain FP32 even to a class it has not planned for yet
        for task in candidates.tasks():
            if task not in by_task:
                by_task[task] = _fp32_first(candidates, task, 0.0)
    keep = sorted(decision.replicas)
    events = tuple(_classify(e) for e in decision.events)
    return Plan(
        target=ReplicaTarget(num_replicas=n, ts=now_s, policy=policy),
        hints=RoutingHints(
            ts=now_s, policy=policy, mode=mode, routes=routes, by_task=by_task, keep=keep
        ),
        events=events,
    )


_EVENT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("upgrade", re.compile(r"^upgrade \S+: \S+ -> (\S+)")),
    ("downgrade", re.compile(r"^downgrade \S+: \S+ -> (\S+)")),
    ("scale_up", re.compile(r"^scale up (\S+):")),
    ("scale_to_zero", re.compile(r"^scale to zero (\S+):")),
    ("scale_down", re.compile(r"^scale down (\S+):")),
    ("unserved", re.compile(r"^unserved (\S+):")),
)


def _classify(event: str) -> tuple[str, str, str]:
    for kind, pat in _EVENT_PATTERNS:
        m = pat.match(event)
        if m:
            return kind, m.group(1) if kind != "unserved" else "", event
    return "note", "", event


def event_records(p: Plan, replicas: Mapping[str, int], now_s: float) -> list[dict[str, object]]:
    """The plan's events as `infaas.telemetry.AutoscalerEvent` fields (pure; no I/O).

    One ``replicas`` sample per tick carries the replica count per variant
    (the dashboard's chart) and the deployment target.
    """
    out: list[dict[str, object]] = []
    for kind, variant, reason in p.events:
        rec: dict[str, object] = {"ts": now_s, "kind": kind, "reason": reason[:500]}
        if variant:
            rec["variant_id"] = variant
        m = re.search(r": (\d+) -> (\d+)$", reason)
        if m:
            rec["from_replicas"], rec["to_replicas"] = int(m.group(1)), int(m.group(2))
        key = re.search(r"(\S+?)\|[\d.e+-]+\|[\d.e+-]+", reason)  # a demand_key in the reason
        if key:
            rec["task"] = key.group(1)
        out.append(rec)
    out.append(
        {
            "ts": now_s,
            "kind": "replicas",
            "reason": f"{p.target.policy}: {p.target.num_replicas} worker replica(s)",
            "replicas": dict(replicas),
            "to_replicas": p.target.num_replicas,
        }
    )
    return out


# ------------------------------------------------------------------ the loop (shell)


def with_overhead(profile: Profile, overhead_ms: float) -> Profile:
    """`profile` as a serving replica sees it: `overhead_ms` of request path per request.

    A batch of b requests costs the replica its model time plus b times the
    overhead, so throughput falls to ``b / (b / throughput + b * overhead)``;
    a request's own latency grows by one overhead.
    """
    if overhead_ms <= 0:
        return profile
    batches = []
    for b in profile.batches:
        per_req_ms = 1000.0 / b.throughput_rps if b.throughput_rps > 0 else b.p50_ms / b.batch
        batches.append(
            b.model_copy(
                update={
                    "p50_ms": b.p50_ms + overhead_ms,
                    "p99_ms": b.p99_ms + overhead_ms,
                    "throughput_rps": 1000.0 / (per_req_ms + overhead_ms),
                }
            )
        )
    return profile.model_copy(update={"batches": tuple(batches)})


class CandidateCache:
    """The candidate set from the store's variants and profiles, rebuilt every `refresh_s`.

    Profiles get the request path's `overhead_ms` added (`with_overhead`), so
    replica capacities are those of a serving replica, not of the bare model.
    """

    def __init__(
        self,
        store: MetadataStore,
        pools: tuple[Pool, ...],
        refresh_s: float = 10.0,
        overhead_ms: float = 0.0,
    ) -> None:
        self.store = store
        self.pools = pools
        self.refresh_s = refresh_s
        self.overhead_ms = overhead_ms
        self._at = -math.inf
        self._set = CandidateSet([])

    def __call__(self) -> CandidateSet:
        now = time.monotonic()
        if now - self._at >= self.refresh_s or not len(self._set):
            profiles = [with_overhead(p, self.overhead_ms) for p in self.store.list_profiles()]
            self._set = CandidateSet.build(self.store.list_variants(), profiles, self.pools)
            self._at = now
        return self._set


@dataclass
class ControlLoop:
    """Measure, decide, apply, every `tick_s`; `tick` is callable directly (tests, bench).

    `candidates` is called for the current candidate set (it may cache);
    `record_event` persists one event's fields (`event_records`).
    """

    store: MetadataStore
    policy_name: str
    config: AutoscalerConfig
    pool: Pool
    candidates: Callable[[], CandidateSet]
    min_replicas: int = 1
    max_replicas: int = 8
    tick_s: float = 1.0
    forget_class_s: float = 600.0
    static_replicas: int | None = None
    record_event: Callable[[dict[str, object]], None] | None = None
    clock: Callable[[], float] = time.time
    _policy: Policy = field(init=False)
    _state: AutoscalerState = field(default_factory=AutoscalerState, init=False)
    _seen: list[tuple[float, dict[str, LoadReport]]] = field(default_factory=list, init=False)
    """(when, reports) of the ticks within the rate window, oldest first."""
    _known: dict[str, float] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _queues: list[tuple[float, int]] = field(default_factory=list, init=False)
    _last_sample: object = field(default=None, init=False)
    _last_sample_at: float = field(default=-math.inf, init=False)
    last: ScalingDecision | None = field(default=None, init=False)
    last_plan: Plan | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.policy_name not in POLICY_NAMES:
            raise ValueError(f"unknown autoscaler policy {self.policy_name!r}")
        self._policy = POLICIES[POLICY_NAMES[self.policy_name]]

    def tick(self) -> Plan | None:
        """One round; None until two reports sets are there to differentiate."""
        now = self.clock()
        reports = read_reports(self.store, now)
        if not self._seen:
            self._seen.append((now, reports))
            return None
        # rates over the window: the oldest reports at most rate_window_s old (or the last)
        window = self.config.rate_window_s
        kept = [(t, r) for t, r in self._seen if now - t <= window + 1e-6]
        then, before = kept[0] if kept else self._seen[-1]
        m = measure(before, reports, now - then, now)
        self._seen = [*kept, (now, reports)]
        for key, rate in m.arrival_rps.items():
            if rate > 0:
                self._known[key] = now
        self._known = {k: t for k, t in self._known.items() if now - t <= self.forget_class_s}
        cands = self.candidates()
        if not len(cands):
            return None
        ctx = build_context(m, cands, self.config, self._state, self._known)
        decision, self._state = self._policy(ctx)
        p = plan(
            decision,
            self.policy_name,
            cands,
            now_s=now,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            pool=self.pool,
            static_replicas=self.static_replicas,
            outstanding=self._held_outstanding(m, now),
            queue_guard=(
                self.config.queue_guard_ongoing_requests if self.policy_name == "infaas" else None
            ),
        )
        self.store.put_record(CONTROL_NS, "target", p.target.model_dump_json().encode())
        self.store.put_record(CONTROL_NS, "routes", p.hints.model_dump_json().encode())
        if self.record_event is not None:
            # the replicas sample when it changes, else every 5 s (the dashboard's chart)
            sample = (p.target.num_replicas, tuple(sorted(decision.replicas.items())))
            due = sample != self._last_sample or now - self._last_sample_at >= 5.0
            if due:
                self._last_sample, self._last_sample_at = sample, now
            for rec in event_records(p, decision.replicas, now):
                if rec["kind"] == "note" or (rec["kind"] == "replicas" and not due):
                    continue
                self.record_event(rec)
        self.last, self.last_plan = decision, p
        return p

    def _held_outstanding(self, m: Measurement, now: float) -> int:
        """The largest queue of the last ``downscale_delay_s``: the guard's hysteresis."""
        q = sum(vl.outstanding for vl in m.load.by_variant.values())
        keep = self.config.downscale_delay_s
        self._queues = [(t, n) for t, n in self._queues if now - t <= keep] + [(now, q)]
        return max(n for _, n in self._queues)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except Exception:  # the loop must outlive a store hiccup or a bad profile
                log.exception("autoscaler tick failed")
            self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - t0)))

    def start(self) -> ControlLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infaas-autoscaler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
