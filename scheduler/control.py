"""The control loop's pure steps: measure, build the policy's context, plan.

Every tick of the loop (`enclave_workers.autoscaling.ControlLoop`, the shell
that owns the clock, the store and the thread)::

    worker load reports (store)  --measure-->  Measurement
    Measurement + candidates + state      --build_context-->  AutoscalingContext
    policy(ctx)  (scheduler.autoscaler: decide or a baseline)  -->  ScalingDecision, state
    ScalingDecision                       --plan-->  Plan
    Plan  --> store: ReplicaTarget, RoutingHints,
              its typed `AutoscalerEvent`s (infaas.telemetry)

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

Everything here is pure: no clock, no store, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from infaas.settings import AutoscalerSettings, Pool
from infaas.types import AutoscalerEvent, Precision, Profile
from scheduler.autoscaler import (
    AutoscalerState,
    AutoscalingContext,
    DemandSignal,
    ScalingDecision,
)
from scheduler.policy import CandidateSet, LoadSnapshot, VariantLoad
from scheduler.routing import (
    LoadReport,
    ReplicaTarget,
    RouteMode,
    RoutingHints,
)

__all__ = [
    "POLICY_NAMES",
    "Measurement",
    "Plan",
    "build_context",
    "measure",
    "parse_demand_key",
    "plan",
    "with_overhead",
]

POLICY_NAMES: Mapping[str, str] = {
    "infaas": "infaas",
    "static": "static",
    "queue": "queue_length",
    "infaas-style": "infaas_baseline",
    "static-modelless": "static_modelless",
}
"""`infaas serve --autoscaler` name -> `scheduler.baselines.POLICIES` name."""

_MODE: Mapping[str, RouteMode] = {
    "infaas": "prefer",
    "static": "pin",
    "queue": "pin",
    # INFaaS's master sends each request to the variant it picked (least slack,
    # not blacklisted), whatever this worker predicts: the policy's route, pinned
    "infaas-style": "pin",
    "static-modelless": "pin",
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

    A variant's measured latency is the mean over the requests it completed
    between the two report sets (INFaaS's ``qpsMonitor`` reads the same).

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
    served: dict[str, tuple[int, float]] = {}
    for rid, rep in current.items():
        before = previous.get(rid)
        for v, n in rep.served.items():
            n0 = before.served.get(v, 0) if before is not None else 0
            ms0 = before.served_ms.get(v, 0.0) if before is not None else 0.0
            k, ms = served.get(v, (0, 0.0))
            served[v] = (k + max(0, n - n0), ms + max(0.0, rep.served_ms.get(v, 0.0) - ms0))
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
            latency_ms=served[v][1] / served[v][0] if served.get(v, (0, 0.0))[0] else 0.0,
        )
        for v in set(outstanding) | set(loaded)
    }
    return Measurement(now_s, rates, LoadSnapshot(by_variant, now_s), replicas)


@dataclass
class RateWindow:
    """What a control loop keeps between ticks: the report sets within the rate window
    (to turn counters into rates) and when each demand class last had arrivals (a class
    keeps its replicas for ``forget_class_s`` after its last request).

    The Serve control loop (`api.autoscaler.ControlLoop`) and both simulators tick
    through it, so they measure and forget alike.
    """

    config: AutoscalerSettings
    seen: list[tuple[float, Mapping[str, LoadReport]]] = field(default_factory=list)
    """(when, reports) of the ticks within the rate window, oldest first."""
    known: dict[str, float] = field(default_factory=dict)
    """demand key -> when it last had arrivals."""

    def observe(self, reports: Mapping[str, LoadReport], now: float) -> Measurement | None:
        """The traffic since the oldest report set in the window; None on the first tick."""
        cfg = self.config
        if not self.seen:
            self.seen.append((now, reports))
            return None
        kept = [(t, r) for t, r in self.seen if now - t <= cfg.rate_window_s + 1e-6]
        then, before = kept[0] if kept else self.seen[-1]
        m = measure(before, reports, now - then, now)
        self.seen = [*kept, (now, reports)]
        for key, rate in m.arrival_rps.items():
            if rate > 0:
                self.known[key] = now
        self.known = {k: t for k, t in self.known.items() if now - t <= cfg.forget_class_s}
        return m


def build_context(
    m: Measurement,
    candidates: CandidateSet,
    config: AutoscalerSettings,
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
    events: tuple[AutoscalerEvent, ...] = ()
    """The decision's events, then a ``replicas`` sample (the dashboard's chart)."""


def parse_demand_key(key: str) -> tuple[str, float, float]:
    """(task, latency_ms, min_accuracy) of a `demand_key`; ValueError if malformed."""
    task, lat, acc = key.rsplit("|", 2)
    return task, float(lat), float(acc)


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
) -> Plan:
    """The replica target and routing hints a decision amounts to (pure).

    Replicas: the decision's worker plans on `pool` (every worker replica is
    one deployment replica hosting its variants); baselines that size per
    variant (one variant per replica) sum their variants' counts. Clamped to
    [min_replicas, max_replicas]. The decision's `min_workers` (the infaas
    queue guard) raises the count; `static_replicas` overrides it.
    """
    if decision.workers:
        want = sum(1 for w in decision.workers if w.pool == pool.name)
    else:
        want = sum(decision.replicas.values())
    want = max(want, decision.min_workers)
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
    sample = AutoscalerEvent(
        ts=now_s,
        kind="replicas",
        reason=f"{policy}: {n} worker replica(s)",
        replicas=dict(decision.replicas),
        to_replicas=n,
    )
    return Plan(
        target=ReplicaTarget(num_replicas=n, ts=now_s, policy=policy),
        hints=RoutingHints(
            ts=now_s, policy=policy, mode=mode, routes=routes, by_task=by_task, keep=keep
        ),
        events=(*decision.events, sample),
    )


# ------------------------------------------------------------------ profiles as served


def plan_tick(
    decision: ScalingDecision,
    config: AutoscalerSettings,
    candidates: CandidateSet,
    pool: Pool,
    now_s: float,
) -> Plan:
    """`plan` under a control loop's settings: what the Serve loop and both simulators call."""
    static = config.policy in ("static", "static-modelless")
    return plan(
        decision,
        config.policy,
        candidates,
        now_s=now_s,
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        pool=pool,
        static_replicas=config.static_replicas if static else None,
    )


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
