"""The recorder: one replica's request counters in memory, updated on the request path.

`Recorder` is the only telemetry code a request runs: a few dict operations
under a lock, no I/O; a `Flusher` (`infaas.telemetry.flusher`) snapshots it
off the request path. Each refused request is also one line on the
``requests`` logger below this module (metadata only); an answered one only at
DEBUG: at INFO, formatting and writing a JSON line per answer was an eighth of a
replica's request-path time under load (`bench/worker_profile.py`), and its
counters already reach the store aggregated.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from infaas.envelope import Envelope
from infaas.logs import get_logger
from infaas.telemetry.records import (
    BATCH_BUCKETS,
    INTERVAL_S,
    LATENCY_BUCKETS_MS,
    MAX_SERIES,
    RETAIN_S,
    IntervalRecord,
    ReplicaKind,
    ReplicaRecord,
    Series,
)
from infaas.wire import InferResponse

request_log = get_logger(__name__, "requests")

_decision_s: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "infaas_decision_s", default=None
)


class _Counts:
    """The mutable, slotted twin of `Series` updated on the request path."""

    __slots__ = (
        "batch_buckets", "decision_sum_ms", "decisions", "errors", "latency_buckets",
        "latency_sum_ms", "requests", "samples", "slo_met",
    )  # fmt: skip

    def __init__(self) -> None:
        self.requests = 0
        self.slo_met = 0
        self.errors: dict[str, int] = {}
        self.latency_sum_ms = 0.0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.decisions = 0
        self.decision_sum_ms = 0.0
        self.samples = 0
        self.batch_buckets = [0] * (len(BATCH_BUCKETS) + 1)

    def series(self, key: tuple[str, str, str]) -> Series:
        return Series(
            tenant=key[0],
            task=key[1],
            variant=key[2],
            requests=self.requests,
            slo_met=self.slo_met,
            errors=dict(self.errors),
            latency_sum_ms=self.latency_sum_ms,
            latency_buckets=list(self.latency_buckets),
            decisions=self.decisions,
            decision_sum_ms=self.decision_sum_ms,
            samples=self.samples,
            batch_buckets=list(self.batch_buckets),
        )


def _bucket(value: float, bounds: tuple[float, ...] = LATENCY_BUCKETS_MS) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def new_replica_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


class Recorder:
    """In-memory counters of one replica; thread-safe, cheap, flushed by a `Flusher`."""

    def __init__(self, kind: ReplicaKind, *, pool: str = "") -> None:
        self.kind = kind
        self.pool = pool
        self.replica = new_replica_id(kind)
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str, str], _Counts] = {}
        self._intervals: dict[int, dict[tuple[str, str, str], _Counts]] = {}
        self._dirty: set[int] = set()
        self.changed = True
        self.releases = 0
        self.released_keys = 0
        self.refusals: dict[str, int] = {}

    # worker side ------------------------------------------------------------------------

    @staticmethod
    def decided(seconds: float) -> None:
        """Note how long the scheduler's decision took for the request in this context."""
        _decision_s.set(seconds)

    def request_served(self, envelope: Envelope, response: InferResponse) -> None:
        """`served` from a request's clear metadata and the worker's answer."""
        self.served(
            request_id=envelope.request_id,
            tenant=envelope.tenant,
            task=envelope.task,
            variant=response.variant_id,
            latency_ms=response.latency_ms,
            slo_ms=envelope.latency_ms,
            min_accuracy=envelope.min_accuracy,
            batch=response.batch_size,
            queue_ms=response.queue_ms,
        )

    def request_failed(self, envelope: Envelope, code: str, started: float) -> None:
        """`failed` from a request's clear metadata; `started` is its `time.perf_counter()`."""
        self.failed(
            request_id=envelope.request_id,
            tenant=envelope.tenant,
            task=envelope.task,
            code=code,
            latency_ms=(time.perf_counter() - started) * 1e3,
            slo_ms=envelope.latency_ms,
            min_accuracy=envelope.min_accuracy,
        )

    def served(
        self,
        *,
        request_id: str,
        tenant: str,
        task: str,
        variant: str,
        latency_ms: float,
        slo_ms: float,
        min_accuracy: float,
        batch: int = 1,
        queue_ms: float = 0.0,
    ) -> None:
        """One answered request (the worker-side latency is held against the SLO's target)."""
        decision = _decision_s.get()
        _decision_s.set(None)
        met = latency_ms <= slo_ms
        self._add(tenant, task, variant, latency_ms, met, None, decision, batch)
        if request_log.isEnabledFor(logging.DEBUG):
            request_log.debug(
                "served",
                extra={
                    "request_id": request_id,
                    "tenant": tenant,
                    "task": task,
                    "variant": variant,
                    "pool": self.pool,
                    "decision_ms": None if decision is None else round(decision * 1e3, 4),
                    "latency_ms": round(latency_ms, 3),
                    "queue_ms": round(queue_ms, 3),
                    "batch": batch,
                    "slo_ms": slo_ms,
                    "min_accuracy": min_accuracy,
                    "slo_met": met,
                },
            )

    def failed(
        self,
        *,
        request_id: str,
        tenant: str,
        task: str,
        code: str,
        latency_ms: float,
        slo_ms: float,
        min_accuracy: float,
    ) -> None:
        """One refused request, by its error code (``no_feasible_variant``: SLO infeasible)."""
        decision = _decision_s.get()
        _decision_s.set(None)
        self._add(tenant, task, "", latency_ms, False, code, decision, 0)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
                "refused",
                extra={
                    "request_id": request_id,
                    "tenant": tenant,
                    "task": task,
                    "pool": self.pool,
                    "code": code,
                    "decision_ms": None if decision is None else round(decision * 1e3, 4),
                    "latency_ms": round(latency_ms, 3),
                    "slo_ms": slo_ms,
                    "min_accuracy": min_accuracy,
                },
            )

    def _add(
        self,
        tenant: str,
        task: str,
        variant: str,
        latency_ms: float,
        met: bool,
        code: str | None,
        decision_s: float | None,
        batch: int,
    ) -> None:
        key = (tenant[:128], task[:128], variant[:200])
        start = int(time.time() // INTERVAL_S) * INTERVAL_S
        with self._lock:
            if key not in self._totals and len(self._totals) >= MAX_SERIES:
                key = ("_other", "_other", "_other")
            window = self._intervals.get(start)
            if window is None:
                window = self._intervals[start] = {}
            for table in (self._totals, window):
                s = table.get(key)
                if s is None:
                    s = table[key] = _Counts()
                if code is None:
                    s.requests += 1
                    s.slo_met += met
                    s.latency_sum_ms += latency_ms
                    s.latency_buckets[_bucket(latency_ms)] += 1
                    s.samples += batch
                    s.batch_buckets[_bucket(batch, BATCH_BUCKETS)] += 1
                else:
                    s.errors[code] = s.errors.get(code, 0) + 1
                if decision_s is not None:
                    s.decisions += 1
                    s.decision_sum_ms += decision_s * 1e3
            self._dirty.add(start)
            self.changed = True

    # key service side -------------------------------------------------------------------

    def released(self, keys: int) -> None:
        with self._lock:
            self.releases += 1
            self.released_keys += keys
            self.changed = True

    def refused(self, code: str) -> None:
        with self._lock:
            self.refusals[code[:64]] = self.refusals.get(code[:64], 0) + 1
            self.changed = True

    # snapshots (flusher thread) ---------------------------------------------------------

    def snapshot(
        self, status: Mapping[str, Any] | None = None
    ) -> tuple[ReplicaRecord, list[IntervalRecord], list[float]]:
        """The replica record, the windows changed since the last snapshot, expired windows."""
        now = time.time()
        with self._lock:
            # the current window is written even when idle: it carries the loaded variants
            current = int(now // INTERVAL_S) * INTERVAL_S
            self._intervals.setdefault(current, {})
            self._dirty.add(current)
            totals = [c.series(k) for k, c in self._totals.items()]
            loaded = [str(v) for v in (status or {}).get("loaded_variants", [])]
            windows = [
                IntervalRecord(
                    replica=self.replica,
                    start=float(t),
                    series=[c.series(k) for k, c in self._intervals[t].items()],
                    loaded=loaded,
                )
                for t in sorted(self._dirty)
                if t in self._intervals
            ]
            self._dirty.clear()
            expired = [t for t in self._intervals if t < now - RETAIN_S]
            for t in expired:
                del self._intervals[t]
            self.changed = False
            record = ReplicaRecord(
                replica=self.replica,
                kind=self.kind,
                pool=self.pool,
                host=socket.gethostname()[:64],
                pid=os.getpid(),
                started_at=self.started_at,
                updated_at=now,
                status=dict(status or {}),
                totals=totals,
                releases=self.releases,
                released_keys=self.released_keys,
                refusals=dict(self.refusals),
            )
        return record, windows, [float(t) for t in expired]
