"""The control plane's side: every replica's telemetry records, merged and cached.

The dashboard and ``/metrics`` read through one `TelemetryReader`; it also
forgets replicas silent for `FORGET_S` (and their stray windows).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from infaas.logs import get_logger
from infaas.store import MetadataStore
from infaas.telemetry.records import (
    LATENCY_BUCKETS_MS,
    RETAIN_S,
    IntervalRecord,
    ReplicaRecord,
    Series,
)

log = get_logger(__name__)

LIVE_S = 15.0
"""A replica whose record is older than this is shown as gone."""
FORGET_S = 3600.0
"""A replica silent this long is removed from the store (its counters with it)."""


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The `q` quantile of a latency histogram, linearly interpolated within its bucket."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lo = LATENCY_BUCKETS_MS[i - 1] if i > 0 else 0.0
            hi = LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else lo * 2
            return lo + (hi - lo) * max(0.0, rank - seen) / n
        seen += n
    return float(LATENCY_BUCKETS_MS[-1])


@dataclass
class TelemetryView:
    """Every replica's records merged, as of `at`."""

    at: float
    replicas: list[ReplicaRecord] = field(default_factory=list)
    intervals: list[IntervalRecord] = field(default_factory=list)

    def live(self, kind: str | None = None) -> list[ReplicaRecord]:
        return [
            r
            for r in self.replicas
            if self.at - r.updated_at <= LIVE_S and (kind is None or r.kind == kind)
        ]

    def totals(self) -> list[Series]:
        """Cumulative series over every replica (dead ones included: counters never fall)."""
        return merge_series(s for r in self.replicas for s in r.totals)

    def windows(self, since: float) -> dict[float, list[Series]]:
        """Series per window start, merged over replicas, for windows starting at/after `since`."""
        by_start: dict[float, list[Series]] = {}
        for w in self.intervals:
            if w.start >= since:
                by_start.setdefault(w.start, []).extend(w.series)
        return {t: merge_series(ss) for t, ss in sorted(by_start.items())}

    def loaded_over_time(self, since: float) -> dict[float, dict[str, int]]:
        """Replicas with each variant loaded, per window (from the workers' own records)."""
        out: dict[float, dict[str, int]] = {}
        for w in self.intervals:
            if w.start >= since:
                row = out.setdefault(w.start, {})
                for v in w.loaded:
                    row[v] = row.get(v, 0) + 1
        return dict(sorted(out.items()))


def merge_series(series: Iterable[Series]) -> list[Series]:
    merged: dict[tuple[str, str, str], Series] = {}
    for s in series:
        m = merged.get(s.key)
        if m is None:
            merged[s.key] = s.model_copy(deep=True)
        else:
            m.merge(s)
    return [merged[k] for k in sorted(merged)]


class TelemetryReader:
    """Reads and merges the telemetry namespace; caches the result for `max_age_s`."""

    def __init__(self, store: MetadataStore, *, max_age_s: float = 1.0) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._cached: TelemetryView | None = None
        self._cached_at = -math.inf

    def read(self) -> TelemetryView:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached_at < self.max_age_s:
                return self._cached
            view = self._read()
            self._cached, self._cached_at = view, time.monotonic()
            return view

    def _read(self) -> TelemetryView:
        now = time.time()
        view = TelemetryView(at=now)
        forget: list[str] = []
        for key, raw in self.store.telemetry_records().items():
            try:
                if "@" in key:
                    w = IntervalRecord.model_validate_json(raw)
                    if w.start >= now - RETAIN_S:
                        view.intervals.append(w)
                    elif w.start < now - RETAIN_S - FORGET_S:
                        forget.append(key)
                else:
                    r = ReplicaRecord.model_validate_json(raw)
                    if now - r.updated_at > FORGET_S:
                        forget.append(key)
                    else:
                        view.replicas.append(r)
            except ValidationError:
                log.warning("skipping a malformed telemetry record %s", key[:80])
        for key in forget:  # replicas long gone (or their stray windows): tidy up
            self.store.delete_telemetry(key)
        view.replicas.sort(key=lambda r: (r.kind, r.pool, r.started_at))
        return view
