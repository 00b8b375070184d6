"""The load a selection sees: per-variant `VariantLoad` in a `LoadSnapshot` (pure values).

The control loop builds a snapshot from the workers' reports, a worker from its
own queues; `scheduler.policy` predicts latency from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["IDLE", "LoadSnapshot", "VariantLoad"]


@dataclass(frozen=True, slots=True)
class VariantLoad:
    """Live load of one variant across its replicas."""

    replicas: int = 0
    """Worker replicas that host the variant (loaded or loading)."""
    loaded_replicas: int = 0
    """Replicas on which the variant's session is ready (no cold start)."""
    outstanding: int = 0
    """Requests queued or in flight on the variant, over all its replicas."""
    arrival_rps: float = 0.0
    """Measured arrival rate routed to the variant, requests per second."""
    ahead_ms: float = 0.0
    """Work of *other* variants queued on the same replica's inference threads (ms per
    thread): variants packed on one replica share them, so it delays this one too."""
    latency_ms: float = 0.0
    """Mean latency of the requests the variant completed since the last measurement
    (0: none completed, or not measured)."""

    def __post_init__(self) -> None:
        if self.replicas < 0 or self.loaded_replicas < 0 or self.outstanding < 0:
            raise ValueError("replica and request counts must be non-negative")
        if self.loaded_replicas > self.replicas:
            raise ValueError("loaded_replicas cannot exceed replicas")
        if self.arrival_rps < 0 or self.ahead_ms < 0 or self.latency_ms < 0:
            raise ValueError("arrival_rps, ahead_ms and latency_ms must be non-negative")


IDLE = VariantLoad()
"""The load of a variant the snapshot does not mention: no replica, no traffic."""


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """Per-variant load at `taken_at_s` (seconds on the control loop's clock)."""

    by_variant: Mapping[str, VariantLoad] = field(default_factory=dict)
    taken_at_s: float = 0.0

    def get(self, variant_id: str) -> VariantLoad:
        return self.by_variant.get(variant_id, IDLE)
