"""The telemetry record formats a replica writes and the control plane reads.

The store's telemetry records (`MetadataStore.put_telemetry`), JSON:

``<replica>``
    `ReplicaRecord`: who (kind ``worker`` / ``keyservice``, pool, host, pid),
    when (``started_at``, ``updated_at``), the replica's own status (TEE,
    measurement, attestation, queues, loaded variants: see
    ``WorkerRuntime.status``), cumulative `Series` per (tenant, task, variant)
    and the key service's release counters.
``<replica>@<interval start>``
    `IntervalRecord`: the `Series` of one `INTERVAL_S` window and the variants
    loaded then; the writer deletes its own intervals older than `RETAIN_S`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INTERVAL_S = 5
"""Width of one traffic window (the resolution of the dashboard's live charts)."""
RETAIN_S = 600
"""How long windows are kept: the dashboard shows the last ten minutes."""
MAX_SERIES = 2000
"""Distinct (tenant, task, variant) series one replica keeps; the rest count as "_other"."""

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
)  # fmt: skip
"""Upper bounds of the latency histogram buckets; one more bucket counts the rest (+Inf)."""

BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds of the batch-size histogram (the batch each answered request ran in)."""

QUEUE_BUCKETS: tuple[float, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Upper bounds of the queue-length histogram: requests a replica held when one arrived."""

INFEASIBLE = "no_feasible_variant"
"""The error code of a request refused because no variant met its SLO."""

ReplicaKind = Literal["worker", "keyservice", "control"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Series(_Record):
    """Counters of one (tenant, task, variant): answered requests and errors.

    ``variant`` is empty for requests refused before a variant was chosen.
    ``latency_buckets[i]`` counts answered requests with latency at most
    ``LATENCY_BUCKETS_MS[i]`` (not cumulative; the last counts the rest).
    """

    tenant: str
    task: str
    variant: str = ""
    requests: int = 0
    slo_met: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    latency_sum_ms: float = 0.0
    latency_buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    decisions: int = 0
    decision_sum_ms: float = 0.0
    samples: int = 0
    batch_buckets: list[int] = Field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.task, self.variant)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: Series) -> None:
        self.requests += other.requests
        self.slo_met += other.slo_met
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.latency_sum_ms += other.latency_sum_ms
        for i, n in enumerate(other.latency_buckets[: len(self.latency_buckets)]):
            self.latency_buckets[i] += n
        self.decisions += other.decisions
        self.decision_sum_ms += other.decision_sum_ms
        self.samples += other.samples
        for i, n in enumerate(other.batch_buckets[: len(self.batch_buckets)]):
            self.batch_buckets[i] += n


class ReplicaRecord(_Record):
    """What one serving replica last said about itself (see the module docstring)."""

    replica: str
    kind: ReplicaKind
    pool: str = ""
    host: str = ""
    pid: int = 0
    started_at: float
    updated_at: float
    status: dict[str, Any] = Field(default_factory=dict)
    totals: list[Series] = Field(default_factory=list)
    releases: int = 0
    released_keys: int = 0
    refusals: dict[str, int] = Field(default_factory=dict)


class IntervalRecord(_Record):
    """One replica's traffic in the window ``[start, start + INTERVAL_S)``."""

    replica: str
    start: float
    series: list[Series] = Field(default_factory=list)
    loaded: list[str] = Field(default_factory=list)


def interval_key(replica: str, start: float) -> str:
    """The store key of `replica`'s window starting at `start`."""
    return f"{replica}@{int(start):d}"
