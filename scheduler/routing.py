"""What the autoscaler tells the workers, and how a worker follows it (light: no solver).

The control loop (`api.autoscaler`) and the worker runtime share these
records through the store; the worker's per-request variant choice under the
loop's `RoutingHints` is `scheduler.policy.route_select`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infaas.logs import get_logger
from infaas.store import MetadataStore

__all__ = [
    "LoadReport",
    "ReplicaTarget",
    "RouteMode",
    "RoutingHints",
    "read_hints",
    "read_reports",
    "read_target",
]

log = get_logger(__name__)

RouteMode = Literal["prefer", "pin", "least_slack"]


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
    served: dict[str, int] = Field(default_factory=dict)
    """variant -> requests served (cumulative)."""
    served_ms: dict[str, float] = Field(default_factory=dict)
    """variant -> their summed latency in ms, measured in the worker (cumulative)."""


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
