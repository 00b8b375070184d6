"""The autoscaler's control loop and its Serve application: measure, decide, apply.

The decisions are pure functions in `scheduler` (`scheduler.autoscaler`: the
policies, `scheduler.control`: measure / context / plan); `ControlLoop` is the
shell that gives them a clock, the store and a thread, and the "autoscaler"
Serve application (`build_autoscaler_app`) runs one of it in a replica that
reserves no CPU. What the workers and Serve do with its output (load reports,
routing hints, the worker deployment's `FollowTarget` policy) is
`enclave_workers.autoscaling`. All of it is configured by
`infaas.settings.AutoscalerSettings`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from infaas.logs import get_logger
from infaas.settings import AutoscalerSettings, Pool, Settings
from infaas.store import MetadataStore, open_store
from infaas.telemetry.events import record_autoscaler_event
from infaas.types import AutoscalerEvent
from scheduler.autoscaler import AutoscalerState, Policy, ScalingDecision
from scheduler.baselines import POLICIES
from scheduler.control import (
    POLICY_NAMES,
    Plan,
    RateWindow,
    build_context,
    plan_tick,
    with_overhead,
)
from scheduler.policy import CandidateSet
from scheduler.routing import read_reports

__all__ = [
    "AUTOSCALER_APP",
    "AutoscalerLoop",
    "CandidateCache",
    "ControlLoop",
    "build_autoscaler_app",
]

log = get_logger(__name__)

AUTOSCALER_APP = "infaas-autoscaler"


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
    """Measure, decide, apply, every ``config.tick_s``; `tick` is callable directly (tests, bench).

    `config` is used as given (`AutoscalerSettings.for_pool` fills the budgets
    from the pool). `candidates` is called for the current candidate set (it
    may cache); `record_event` persists one event. The policy's memory of
    earlier decisions, its delays included, is the state it returned last
    (`_state`); the loop itself keeps only what measuring needs (the reports
    within the rate window, the demand classes seen) and when the dashboard's
    replica sample was last written.
    """

    store: MetadataStore
    config: AutoscalerSettings
    pool: Pool
    candidates: Callable[[], CandidateSet]
    record_event: Callable[[AutoscalerEvent], None] | None = None
    clock: Callable[[], float] = time.time
    _policy: Policy = field(init=False)
    _state: AutoscalerState = field(default_factory=AutoscalerState, init=False)
    _window: RateWindow = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _last_sample: object = field(default=None, init=False)
    _last_sample_at: float = field(default=-math.inf, init=False)
    last: ScalingDecision | None = field(default=None, init=False)
    last_plan: Plan | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.config.policy not in POLICY_NAMES:
            raise ValueError(f"no control loop for autoscaler policy {self.config.policy!r}")
        self._policy = POLICIES[POLICY_NAMES[self.config.policy]]
        self._window = RateWindow(self.config)

    def tick(self) -> Plan | None:
        """One round; None until two reports sets are there to differentiate."""
        cfg = self.config
        now = self.clock()
        m = self._window.observe(read_reports(self.store, now), now)
        if m is None:
            return None
        cands = self.candidates()
        if not len(cands):
            return None
        ctx = build_context(m, cands, cfg, self._state, self._window.known)
        decision, self._state = self._policy(ctx)
        p = plan_tick(decision, cfg, cands, self.pool, now)
        self.store.put_replica_target(p.target)
        self.store.put_routing_hints(p.hints)
        if self.record_event is not None:
            # the replicas sample when it changes, else every 5 s (the dashboard's chart)
            sample = (p.target.num_replicas, tuple(sorted(decision.replicas.items())))
            due = sample != self._last_sample or now - self._last_sample_at >= 5.0
            if due:
                self._last_sample, self._last_sample_at = sample, now
            for event in p.events:
                if event.kind == "note" or (event.kind == "replicas" and not due):
                    continue
                self.record_event(event)
        self.last, self.last_plan = decision, p
        return p

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except Exception:  # the loop must outlive a store hiccup or a bad profile
                log.exception("autoscaler tick failed")
            self._stop.wait(max(0.0, self.config.tick_s - (time.monotonic() - t0)))

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


class AutoscalerLoop:
    """The control loop as a Serve replica (no CPU reserved); `status()` for the dashboard."""

    def __init__(self, settings: Settings) -> None:
        pool = settings.pools[0]
        config = settings.autoscaler.for_pool(pool)
        store = open_store(settings.resolved_store_url)

        def record(event: AutoscalerEvent) -> None:
            record_autoscaler_event(store, event)

        self._loop = ControlLoop(
            store=store,
            config=config,
            pool=pool,
            candidates=CandidateCache(
                store, settings.pools, overhead_ms=config.request_overhead_ms
            ),
            record_event=record,
        ).start()
        log.info("autoscaler control loop started (policy %s)", config.policy)

    async def status(self) -> dict[str, Any]:
        p = self._loop.last_plan
        d = self._loop.last
        return {
            "policy": self._loop.config.policy,
            "target": None if p is None else p.target.model_dump(),
            "routes": None if p is None else p.hints.model_dump(),
            "replicas": {} if d is None else dict(d.replicas),
            "unserved_rps": {} if d is None else dict(d.unserved_rps),
        }

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.stop()


def build_autoscaler_app(settings: Settings) -> serve.Application:
    """The "infaas-autoscaler" application (no route): one replica running the control loop."""
    deployment = serve.deployment(
        name="Autoscaler",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False},
    )(AutoscalerLoop)
    app: serve.Application = deployment.bind(settings)
    return app
