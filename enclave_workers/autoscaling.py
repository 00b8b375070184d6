"""The workers' and Serve's side of autoscaling: report load, follow the plan.

The decisions are pure and live in `scheduler` (`scheduler.autoscaler`: the
policies; `scheduler.control`: measure, context, plan); the control loop that
runs them, and its Serve application, are `api.autoscaler`. This module is
what the worker deployment itself runs or is configured with, and it imports
no policy: the control loop is untrusted, so its code stays out of the
worker's (measured) code::

    EnclaveWorker replica --LoadAgent (thread, 2 Hz)--> store load reports (arrivals, queues)
                          <------------------------- store "routes"     (RoutingHints)
    application "infaas-autoscaler" (api.autoscaler): the control loop
                          ---> store "target", "routes", autoscaler events
    ServeController: the worker deployment's custom autoscaling policy `FollowTarget`
                          <--- store "target"   ->  replica count of EnclaveWorker

Everything is configured by one model, `infaas.settings.AutoscalerSettings`
(``settings.autoscaler``). Per its ``policy``:

=============  ============================================  =========================
policy         worker replicas                               variant routing
=============  ============================================  =========================
off            fixed (``num_replicas``)                      `select` per request
static         fixed ``static_replicas``                     FP32 pinned
static-        fixed ``static_replicas``                     cheapest variant meeting
modelless                                                    each class's floor, pinned
queue          Ray Serve's own autoscaler                    FP32 pinned
               (``target_ongoing_requests``, its delays)
infaas-style   `FollowTarget` <- `infaas_policy`             INFaaS's: least slack, not
                                                             blacklisted, pinned
infaas         `FollowTarget` <- `decide`                    planned variants, upgrades
=============  ============================================  =========================

Serve's own upscale/downscale delays are set to zero for `FollowTarget`: the
policies carry their own hysteresis, as state they return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import threading
import time
from typing import Any

from ray.serve.config import AutoscalingContext, AutoscalingPolicy

from infaas.logs import get_logger
from infaas.settings import Settings
from infaas.store import MetadataStore, open_store
from scheduler.routing import read_hints, read_target

log = get_logger(__name__)

TARGET_MAX_AGE_S = 30.0
"""A target older than this is stale (the loop is gone): keep the replicas Serve has."""


class FollowTarget:
    """Ray Serve custom autoscaling policy: the replica count the control loop last wrote.

    Runs in the Serve controller on every autoscaling tick; reads the store at
    most every `read_every_s`. Without a fresh target it keeps the current one.
    """

    def __init__(self, store_url: str, read_every_s: float = 0.5) -> None:
        self.store_url = store_url
        self.read_every_s = read_every_s
        self._store: MetadataStore | None = None
        self._read_at = -1e18
        self._target: int | None = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        if now - self._read_at >= self.read_every_s:
            self._read_at = now
            try:
                if self._store is None:
                    self._store = open_store(self.store_url)
                t = read_target(self._store)
                fresh = t is not None and time.time() - t.ts <= TARGET_MAX_AGE_S
                self._target = t.num_replicas if t is not None and fresh else None
            except Exception as e:  # never take the Serve controller down
                log.warning("autoscaler target unreadable: %s", e)
                self._target = None
        n = self._target if self._target is not None else ctx.target_num_replicas
        return n, dict(ctx.policy_state)


def scaled_options(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """The worker deployment's Serve options under `settings.autoscaler` (see module doc)."""
    a = settings.autoscaler
    out = dict(options)
    if a.policy == "off":
        return out
    if a.policy in ("static", "static-modelless"):
        out["num_replicas"] = a.static_replicas
        return out
    out.pop("num_replicas", None)
    config: dict[str, Any] = {
        "min_replicas": a.min_replicas,
        "initial_replicas": max(a.min_replicas, 1),
        "max_replicas": a.max_replicas,
    }
    if a.policy == "queue":
        config.update(
            target_ongoing_requests=a.target_ongoing_requests,
            upscale_delay_s=a.queue_upscale_delay_s,
            downscale_delay_s=a.queue_downscale_delay_s,
        )
    else:
        config.update(
            upscale_delay_s=0.0,
            downscale_delay_s=0.0,
            policy=AutoscalingPolicy(  # type: ignore[no-untyped-call]
                policy_function=f"{__name__}:FollowTarget",
                policy_kwargs={"store_url": settings.resolved_store_url},
            ),
        )
    out["autoscaling_config"] = config
    return out


class LoadAgent:
    """A worker replica's side of the loop: publish its load, pick up the routing hints."""

    def __init__(self, runtime: Any, store: MetadataStore, period_s: float = 0.5) -> None:
        self.runtime = runtime
        self.store = store
        self.period_s = period_s
        self.replica = f"worker-{os.getpid()}-{secrets.token_hex(3)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infaas-load-agent", daemon=True)
        self._warming: concurrent.futures.Future[None] | None = None

    def start(self) -> LoadAgent:
        """Report, pick up the routing hints and load what they keep, then run.

        Called from the replica's constructor, which Serve waits for before it
        routes requests here: a replica started for a burst must not answer it
        cold. (Later placements load in the background, `step`.)
        """
        try:
            self.step()
        except Exception as e:
            log.warning("first load report failed: %s", e)
        hints = self.runtime.routing
        if hints is not None and hints.keep:
            loaded = self.runtime.host.preload(hints.keep)
            log.info("pre-loaded %d planned variant(s): %s", len(loaded), ", ".join(loaded))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        # a store gone at shutdown: the loop ages the report out
        with contextlib.suppress(Exception):
            self.store.delete_load_report(self.replica)

    def step(self) -> None:
        report = self.runtime.load_report(self.replica)
        self.store.put_load_report(self.replica, report)
        hints = read_hints(self.store)
        if hints is None:
            return
        self.runtime.routing = hints
        # pre-load the variants the plan hosts, one at a time (loads take CPU from serving)
        loop = self.runtime.loop  # the replica's serving loop, once a request has come
        if loop is None or not loop.is_running() or self._warming is not None:
            return
        loaded = set(report.loaded)
        for vid in hints.keep:
            if vid not in loaded and self.runtime.candidates.get(vid) is not None:
                self._warming = asyncio.run_coroutine_threadsafe(self.runtime.host.warm(vid), loop)
                self._warming.add_done_callback(self._warmed)
                log.info("pre-loading variant %s (autoscaler placement)", vid)
                return

    def _warmed(self, f: concurrent.futures.Future[None]) -> None:
        self._warming = None
        if not f.cancelled() and f.exception() is not None:
            log.warning("pre-loading failed: %s", f.exception())

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.step()
            except Exception as e:  # a store hiccup must not stop serving
                log.warning("load report failed: %s", e)
