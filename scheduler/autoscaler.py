"""Autoscaling decisions: replicas per variant, variants per replica, traffic per variant.

Every policy here is a pure function ``policy(ctx) -> (decision, state)`` in the
style of Ray Serve's custom autoscaling policies: the control loop measures
(arrival rates, queues, replicas), builds an `AutoscalingContext` carrying the
state the previous call returned, applies the `ScalingDecision`, and keeps the
new state for the next tick. No clock, no Ray, no I/O. Every delay is a
time kept in the returned `AutoscalerState`, so the loop holds no timer of its
own. The knobs are `infaas.settings.AutoscalerSettings`; what changed comes
back as typed `infaas.types.AutoscalerEvent`s.

`decide` (the infaas policy), per demand class (task x tightest active SLO x
strictest accuracy floor):

1. **Ahead of bursts.** The rate provisioned for is the largest of the current
   rate, the peak over ``burst_window_s`` and, during a sustained rise (three
   or more rising samples), the current rate extrapolated
   ``trend_lookahead_s`` ahead along the rise's least-squares slope (at most
   ``trend_max_factor`` times the current rate). Scaling up therefore happens
   on the tick a rise is seen, and a ramp is met ahead.
2. **Hysteresis down.** The rate used for sizing is also at least every
   forecast of the last ``downscale_delay_s``: capacity falls only once demand
   has stayed low for the whole delay, so a brief dip moves nothing. Loading a variant that is
   not running costs ``switch_penalty`` in the allocation, so near-ties never
   flip variants either.
3. **Scale to zero.** A class with no traffic keeps one warm replica until it
   has been idle for ``idle_to_zero_s``; then it gets none (the next request
   pays the cold start, which `policy.select` counts).
4. **Upgrade / downgrade.** The allocation (`scheduler.allocation`; by default
   the MILP on small problems, greedy at fleet size) picks for each class the
   cheapest mix of variants that meets its accuracy floor and latency target
   within the CPU budget and the replicas' memory budget. When the cheap
   variant cannot keep up within the replica budget, traffic moves to a faster
   one that still meets the floor (an upgrade); when the held demand falls it
   moves back (a downgrade, delayed by the hysteresis of step 2). Variants
   below a class's floor are never offered to it: demand they could have
   absorbed is reported as unserved.
5. **Queue guard.** The decision asks for at least ``held queue /
   queue_guard_ongoing_requests`` worker replicas (`ScalingDecision.min_workers`),
   the held queue being the largest measured over ``downscale_delay_s``: a
   reactive floor under the model-based plan when it proves too optimistic.

The baselines, with the same signature, are in `scheduler.baselines`, with
`POLICIES`, every policy by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infaas.settings import AutoscalerSettings
from infaas.types import AutoscalerEvent, AutoscalerEventKind
from scheduler.allocation import (
    AllocationProblem,
    Demand,
    WorkerPlan,
    slo_capacity,
    solve,
)
from scheduler.policy import CandidateSet, LoadSnapshot

__all__ = [
    "AutoscalerState",
    "AutoscalingContext",
    "DemandSignal",
    "Policy",
    "ScalingDecision",
    "decide",
]


@dataclass(frozen=True, slots=True)
class DemandSignal:
    """Measured traffic of one demand class, as the control loop aggregates it."""

    task: str
    arrival_rps: float
    latency_ms: float
    """Tightest latency target among the class's active callers."""
    min_accuracy: float = 0.0
    """Strictest accuracy floor among the class's active callers."""
    demand_id: str = ""
    """Stable name of the class; the task when empty."""

    @property
    def key(self) -> str:
        return self.demand_id or self.task


@dataclass(frozen=True, slots=True)
class AutoscalerState:
    """What a policy remembers between ticks (returned by it, handed back next tick)."""

    history: Mapping[str, tuple[tuple[float, float, float], ...]] = field(default_factory=dict)
    """demand key -> ((t_s, measured rps, rps provisioned for), ...) within the windows."""
    last_active_s: Mapping[str, float] = field(default_factory=dict)
    primary: Mapping[str, str] = field(default_factory=dict)
    """demand key -> variant carrying most of its traffic at the last decision."""
    replicas: Mapping[str, int] = field(default_factory=dict)
    """variant -> replicas at the last decision."""
    pending: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    """baselines: variant -> (direction of a wanted change, since when)."""
    queues: tuple[tuple[float, int], ...] = ()
    """infaas: (t_s, requests outstanding on all variants) within ``downscale_delay_s``."""
    scale_down_requests: Mapping[str, int] = field(default_factory=dict)
    """INFaaS baseline: variant -> scale-down requests since its last executed change."""
    blacklist: frozenset[str] = frozenset()
    """INFaaS baseline: variants blacklisted by the latency / queue monitor."""


@dataclass(frozen=True, slots=True)
class AutoscalingContext:
    now_s: float
    candidates: CandidateSet
    load: LoadSnapshot
    demands: tuple[DemandSignal, ...]
    config: AutoscalerSettings = field(default_factory=AutoscalerSettings)
    state: AutoscalerState = field(default_factory=AutoscalerState)


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """What the control loop applies."""

    replicas: Mapping[str, int]
    """variant -> replicas that must host it (absent: none)."""
    workers: tuple[WorkerPlan, ...]
    """The replicas to run and the variants packed on each."""
    routes: Mapping[str, tuple[tuple[str, float], ...]]
    """demand key -> ((variant, rps), ...): where its traffic is planned, largest first."""
    unserved_rps: Mapping[str, float]
    """demand key -> rps the budget cannot serve within SLO (shed or queued)."""
    provisioned_rps: Mapping[str, float]
    """demand key -> the rate the plan was sized for (after burst and hysteresis)."""
    cost_per_s: float
    events: tuple[AutoscalerEvent, ...] = ()
    method: str = ""
    min_workers: int = 0
    """Worker replicas to run at least, whatever the plan (infaas: the queue guard)."""

    def primary(self, key: str) -> str | None:
        r = self.routes.get(key, ())
        return r[0][0] if r else None


Policy = Callable[[AutoscalingContext], tuple[ScalingDecision, AutoscalerState]]


# ---------------------------------------------------------------- infaas policy


def _trend_forecast(
    samples: tuple[tuple[float, float, float], ...], ahead: float, max_factor: float
) -> float:
    """The latest rate pushed `ahead` seconds along a sustained rise, if there is one.

    Only the trailing run of strictly rising samples counts, and only when it
    has at least three of them: a ramp is followed, a single step (already
    provisioned for by its own rate) is not extrapolated into a phantom surge.
    The forecast is at most `max_factor` times the latest rate: the steep
    first seconds of a step would otherwise extrapolate to many times it.
    """
    last = samples[-1][1]
    i = len(samples) - 1
    while i > 0 and samples[i][1] > samples[i - 1][1]:
        i -= 1
    run = samples[i:]
    if len(run) < 3:
        return last
    n = len(run)
    mt = sum(s[0] for s in run) / n
    mr = sum(s[1] for s in run) / n
    var = sum((s[0] - mt) ** 2 for s in run)
    if var <= 0:
        return last
    slope = sum((s[0] - mt) * (s[1] - mr) for s in run) / var
    return min(last + max(0.0, slope) * ahead, max_factor * last)


def _update_history(
    ctx: AutoscalingContext,
) -> tuple[dict[str, tuple[tuple[float, float, float], ...]], dict[str, float], dict[str, float]]:
    """Append this tick's samples; return (history, last_active, rate to size for) per key.

    A sample is (t, measured rate, max(measured, trend forecast)). The rate to
    size for is the largest forecast of the last `downscale_delay_s` and the
    largest measured rate of the last `burst_window_s`.
    """
    cfg = ctx.config
    now = ctx.now_s
    keep_s = max(cfg.burst_window_s, cfg.downscale_delay_s)
    history: dict[str, tuple[tuple[float, float, float], ...]] = {}
    last_active = dict(ctx.state.last_active_s)
    sizing: dict[str, float] = {}
    for d in ctx.demands:
        key = d.key
        old = tuple(
            s for s in ctx.state.history.get(key, ()) if now - s[0] <= keep_s and s[0] < now
        )
        rate = max(0.0, d.arrival_rps)
        burst = tuple(s for s in old if now - s[0] <= cfg.burst_window_s)
        window = (*burst, (now, rate, rate))
        forecast = max(rate, _trend_forecast(window, cfg.trend_lookahead_s, cfg.trend_max_factor))
        samples = (*old, (now, rate, forecast))
        history[key] = samples
        if rate > 0:
            last_active[key] = now
        peak = max(s[1] for s in window)
        held = max(s[2] for s in samples if now - s[0] <= cfg.downscale_delay_s)
        sizing[key] = max(peak, held)
    return history, last_active, sizing


def _event(
    ctx: AutoscalingContext, kind: AutoscalerEventKind, reason: str, **fields: Any
) -> AutoscalerEvent:
    return AutoscalerEvent(ts=ctx.now_s, kind=kind, reason=reason[:500], **fields)


def _change_events(
    ctx: AutoscalingContext, routes: Mapping[str, tuple[tuple[str, float], ...]]
) -> tuple[dict[str, str], list[AutoscalerEvent]]:
    """Each class's primary variant now, and an upgrade / downgrade event where it moved.

    Faster at the class's latency target (more requests per second on one
    replica) is an upgrade; a move between variants no longer both known is a note.
    """
    primary: dict[str, str] = {}
    events: list[AutoscalerEvent] = []
    for d in ctx.demands:
        r = routes.get(d.key, ())
        if not r:
            continue
        new = r[0][0]
        primary[d.key] = new
        old = ctx.state.primary.get(d.key)
        if old is None or old == new:
            continue
        where = {"task": d.task, "demand": d.key, "variant_id": new, "from_variant_id": old}
        a, b = ctx.candidates.get(old), ctx.candidates.get(new)
        if a is None or b is None:
            events.append(_event(ctx, "note", f"{d.key}: {old} -> {new}", **where))
            continue
        mu_old = slo_capacity(a, d.latency_ms)[1]
        mu_new = slo_capacity(b, d.latency_ms)[1]
        kind: AutoscalerEventKind = "upgrade" if mu_new > mu_old else "downgrade"
        events.append(_event(ctx, kind, f"{kind} {d.key}: {old} -> {new}", **where))
    return primary, events


def _replica_events(
    ctx: AutoscalingContext, old: Mapping[str, int], new: Mapping[str, int]
) -> list[AutoscalerEvent]:
    events = []
    for v in sorted(set(old) | set(new)):
        a, b = old.get(v, 0), new.get(v, 0)
        if a == b:
            continue
        kind: AutoscalerEventKind = "scale_up" if b > a else "scale_down" if b else "scale_to_zero"
        words = "scale up" if b > a else "scale down" if b else "scale to zero"
        c = ctx.candidates.get(v)
        events.append(
            _event(
                ctx,
                kind,
                f"{words} {v}: {a} -> {b}",
                task=c.spec.task if c is not None else "",
                variant_id=v,
                from_replicas=a,
                to_replicas=b,
            )
        )
    return events


def _held_queue(ctx: AutoscalingContext) -> tuple[tuple[tuple[float, int], ...], int]:
    """This tick's queue appended to the state's; the largest of the last ``downscale_delay_s``.

    The queue guard's hysteresis: a queue once seen holds its floor under the
    replica count for the whole delay, as demand does (step 2).
    """
    q = sum(vl.outstanding for vl in ctx.load.by_variant.values())
    keep = ctx.config.downscale_delay_s
    queues = (*(s for s in ctx.state.queues if ctx.now_s - s[0] <= keep), (ctx.now_s, q))
    return queues, max(n for _, n in queues)


def decide(ctx: AutoscalingContext) -> tuple[ScalingDecision, AutoscalerState]:
    """The infaas policy (see module doc)."""
    cfg = ctx.config
    history, last_active, sizing = _update_history(ctx)
    demands = []
    for d in ctx.demands:
        rate = sizing[d.key]
        idle_for = ctx.now_s - last_active[d.key] if d.key in last_active else math.inf
        warm = rate <= 0 and idle_for < cfg.idle_to_zero_s
        demands.append(Demand(d.key, d.task, rate, d.latency_ms, d.min_accuracy, keep_warm=warm))
    running = frozenset(v for v, vl in ctx.load.by_variant.items() if vl.replicas > 0) | frozenset(
        v for v, n in ctx.state.replicas.items() if n > 0
    )
    problem = AllocationProblem(
        demands=tuple(demands),
        candidates=ctx.candidates.all,
        cpu_budget=cfg.cpu_budget,
        replica_memory_bytes=cfg.replica_memory_bytes,
        target_utilisation=cfg.target_utilisation,
        max_replicas_per_pool=cfg.max_replicas_per_pool,
        running=running,
        switch_penalty=cfg.switch_penalty,
        unserved_penalty_per_rps=cfg.unserved_penalty_per_rps,
        time_limit_s=cfg.solver_time_limit_s,
    )
    alloc = solve(problem, cfg.solver)
    replicas = alloc.replicas
    primary, events = _change_events(ctx, alloc.routes)
    events += _replica_events(ctx, ctx.state.replicas, replicas)
    events += [_event(ctx, "note", note) for note in alloc.notes]
    task_of = {d.key: d.task for d in ctx.demands}
    for key, u in sorted(alloc.unserved_rps.items()):
        reason = f"unserved {key}: {u:.1f} rps beyond budget or accuracy floor"
        events.append(
            _event(ctx, "unserved", reason, task=task_of.get(key, ""), demand=key, unserved_rps=u)
        )
    queues, held = _held_queue(ctx)
    decision = ScalingDecision(
        replicas=replicas,
        workers=alloc.workers,
        routes=alloc.routes,
        unserved_rps=alloc.unserved_rps,
        provisioned_rps=sizing,
        cost_per_s=alloc.cost_per_s,
        events=tuple(events),
        method=alloc.method,
        min_workers=math.ceil(held / cfg.queue_guard_ongoing_requests),
    )
    state = AutoscalerState(
        history=history,
        last_active_s=last_active,
        primary=primary,
        replicas=replicas,
        queues=queues,
    )
    return decision, state
