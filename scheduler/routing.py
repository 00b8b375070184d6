"""What the autoscaler tells the workers, and how a worker follows it (light: no solver).

The control loop (`api.autoscaler`) and the worker runtime share these
records through the store; `route_select` is the worker's per-request variant
choice under the loop's `RoutingHints`.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infaas.errors import NoFeasibleVariant
from infaas.store import MetadataStore
from infaas.types import SLO
from scheduler.load import IDLE, LoadSnapshot
from scheduler.policy import (
    CandidateSet,
    Query,
    QueryKind,
    Selection,
    predict_p99_ms,
    select,
    select_least_slack,
)

__all__ = [
    "LoadReport",
    "ReplicaTarget",
    "RouteMode",
    "RoutingHints",
    "demand_key",
    "parse_demand_key",
    "read_hints",
    "read_reports",
    "read_target",
    "route_select",
]

log = logging.getLogger("infaas.scheduler.routing")

RouteMode = Literal["prefer", "pin", "least_slack"]


def demand_key(task: str, latency_ms: float, min_accuracy: float) -> str:
    """The name of a demand class: task x latency target x accuracy floor."""
    return f"{task}|{latency_ms:g}|{min_accuracy:g}"


def parse_demand_key(key: str) -> tuple[str, float, float]:
    """(task, latency_ms, min_accuracy) of a `demand_key`; ValueError if malformed."""
    task, lat, acc = key.rsplit("|", 2)
    return task, float(lat), float(acc)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoadReport(_Record):
    """What one worker replica says about its traffic (cumulative counters since it started)."""

    replica: str
    ts: float
    arrivals: dict[str, int] = Field(default_factory=dict)
    """demand key -> requests that arrived (authenticated, SLO parsed)."""
    outstanding: dict[str, int] = Field(default_factory=dict)
    """variant -> requests queued or running now."""
    loaded: list[str] = Field(default_factory=list)


class ReplicaTarget(_Record):
    """The worker deployment's replica count the loop wants."""

    num_replicas: int = Field(ge=0)
    ts: float
    policy: str = ""


class RoutingHints(_Record):
    """Where each demand class's traffic should go, as the last decision planned it."""

    ts: float
    policy: str = ""
    mode: RouteMode = "prefer"
    routes: dict[str, list[str]] = Field(default_factory=dict)
    """demand key -> variants, the one carrying most of its traffic first."""
    by_task: dict[str, list[str]] = Field(default_factory=dict)
    """task -> variants planned for any class of it (for classes not seen yet)."""
    keep: list[str] = Field(default_factory=list)
    """Variants the plan hosts; the others may be evicted (scale to zero)."""


def read_target(store: MetadataStore) -> ReplicaTarget | None:
    return store.get_replica_target(ReplicaTarget)


def read_hints(store: MetadataStore) -> RoutingHints | None:
    return store.get_routing_hints(RoutingHints)


def read_reports(store: MetadataStore, now: float, max_age_s: float = 5.0) -> dict[str, LoadReport]:
    """Live replicas' reports; reports older than `max_age_s` are of gone replicas."""
    out: dict[str, LoadReport] = {}
    for key, r in store.load_reports(LoadReport).items():
        if now - r.ts <= max_age_s:
            out[key] = r
        elif now - r.ts > 600:
            store.delete_load_report(key)
    return out


def route_select(
    candidates: CandidateSet,
    query: Query,
    slo: SLO,
    load: LoadSnapshot,
    hints: RoutingHints | None,
) -> Selection:
    """The variant a worker serves a request with, given the loop's routing hints (pure).

    Only model-less (task) queries follow hints; a caller naming a model or a
    variant gets what it named. Accuracy is never relaxed: a hinted variant
    below the caller's floor is skipped.

    * ``pin`` (static / queue-length baselines): the first hinted variant that
      meets the floor, whatever its predicted latency — plain serving does not
      switch variants;
    * ``prefer`` (infaas): the first hinted variant that meets the floor and is
      predicted to meet the latency target under this replica's load; else the
      cheapest feasible one (`select`);
    * ``least_slack`` (INFaaS-style): as ``prefer``, falling back to
      `select_least_slack`.

    When neither a hinted variant nor the fallback is predicted to meet the
    target, the first hinted variant that meets the floor serves anyway: a
    late answer from the planned variant beats a refusal (and warms it).
    """
    fallback = select_least_slack if hints and hints.mode == "least_slack" else select
    if hints is None or query.kind is not QueryKind.TASK:
        return fallback(candidates, query, slo, load)
    key = demand_key(query.name, slo.latency_ms, slo.min_accuracy)
    hinted = hints.routes.get(key) or hints.by_task.get(query.name) or []
    best_effort: Selection | None = None
    for vid in hinted:
        c = candidates.get(vid)
        if c is None or c.spec.task != query.name or c.accuracy < slo.min_accuracy:
            continue
        vl = load.by_variant.get(vid, IDLE)
        p99 = predict_p99_ms(c, vl)
        chosen = Selection(c, p99, vl.loaded_replicas == 0, query, slo)
        if hints.mode == "pin" or p99 <= slo.latency_ms:
            return chosen
        best_effort = best_effort or chosen
    try:
        return fallback(candidates, query, slo, load)
    except NoFeasibleVariant:
        if best_effort is None:
            raise
        return best_effort
