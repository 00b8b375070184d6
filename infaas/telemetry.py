"""Telemetry: per-request metadata aggregated per replica, flushed to the store; JSON logs.

Only metadata ever enters here (tenant id, task, SLO, variant id, timings, sizes,
error codes): the logs, the metrics and the dashboard are untrusted.

Where live data comes from
--------------------------
Several processes serve: worker replicas (``/v1/infer``), the key service and
the control plane that shows it all. Each serving process keeps a `Recorder`:
counters in memory, updated on the request path under a lock (a few dict
operations, no I/O, no allocation beyond a new series). A `Flusher` thread
writes the recorder's snapshot to the metadata store every second when
something changed, and at least every `HEARTBEAT_S` as a heartbeat — off the
request path. The control plane's `TelemetryReader` lists the namespace, merges
the replicas' records (cached for a second) and serves the dashboard and
``/metrics`` from the merge.

Why the store rather than Serve handles calling ``status()``: a handle call
reaches one replica chosen by the router, not each of them; the store sees
every replica, works unchanged across nodes with Redis, keeps the counters of
a replica that died (so totals never go backwards), and costs a request
nothing.

Record formats (store telemetry records, JSON)
-----------------------------------------------
``<replica>``
    `ReplicaRecord`: who (kind ``worker`` / ``keyservice``, pool, host, pid),
    when (``started_at``, ``updated_at``), the replica's own status (TEE,
    measurement, attestation, queues, loaded variants: see
    ``WorkerRuntime.status``), cumulative `Series` per (tenant, task, variant)
    and the key service's release counters.
``<replica>@<interval start>``
    `IntervalRecord`: the `Series` of one `INTERVAL_S` window and the variants
    loaded then; the writer deletes its own intervals older than `RETAIN_S`.

Store autoscaler events: one `AutoscalerEvent` per key
``<time, 6 decimals, zero padded>-<random>``, so keys sort by time. The
autoscaler control loop writes them with `record_autoscaler_event`; the
dashboard reads them with `read_autoscaler_events`.

Logs
----
`configure_logging` (called by entry points only) installs `JsonFormatter` on
the ``infaas`` logger: one JSON object per line with ``ts``, ``level``,
``logger``, ``msg`` and a fixed whitelist of metadata fields (`LOG_FIELDS`).
Anything else passed as ``extra`` is dropped, and long mixed-case base64-like
strings in messages are replaced by ``[redacted]`` (API tokens look like that),
as a second line of defence behind "never log secrets". Every answered or
refused inference request is one line on ``infaas.requests`` with its request
id, tenant, task, chosen variant, scheduler decision time and latency.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infaas.envelope import Envelope
from infaas.store import MetadataStore
from infaas.types import AutoscalerEvent as AutoscalerEvent
from infaas.wire import InferResponse

log = logging.getLogger("infaas.telemetry")
request_log = logging.getLogger("infaas.requests")

INTERVAL_S = 5
"""Width of one traffic window (the resolution of the dashboard's live charts)."""
RETAIN_S = 600
"""How long windows are kept: the dashboard shows the last ten minutes."""
FLUSH_S = 1.0
HEARTBEAT_S = 5.0
LIVE_S = 15.0
"""A replica whose record is older than this is shown as gone."""
FORGET_S = 3600.0
"""A replica silent this long is removed from the store (its counters with it)."""
MAX_SERIES = 2000
"""Distinct (tenant, task, variant) series one replica keeps; the rest count as "_other"."""

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
)  # fmt: skip
"""Upper bounds of the latency histogram buckets; one more bucket counts the rest (+Inf)."""

INFEASIBLE = "no_feasible_variant"

_decision_s: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "infaas_decision_s", default=None
)


# --- records ---------------------------------------------------------------------------


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


class ReplicaRecord(_Record):
    """What one serving replica last said about itself (see the module docstring)."""

    replica: str
    kind: Literal["worker", "keyservice", "control"]
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


def record_autoscaler_event(
    store: MetadataStore, event: AutoscalerEvent, *, keep: int = 5000
) -> str:
    """Append `event` to the store's autoscaler events (beyond `keep`, the oldest go); its key."""
    key = f"{event.ts:017.6f}-{secrets.token_hex(4)}"
    store.put_autoscaler_event(key, event)
    if keep and secrets.randbelow(50) == 0:  # pruning lists the namespace: not every time
        keys = sorted(store.autoscaler_event_records())
        for old in keys[: max(0, len(keys) - keep)]:
            store.delete_autoscaler_event(old)
    return key


def read_autoscaler_events(
    store: MetadataStore, *, since: float = 0.0, limit: int = 500
) -> list[AutoscalerEvent]:
    """The latest `limit` events at or after `since`, oldest first (malformed ones skipped).

    Keys sort by time, so only the records asked for are parsed.
    """
    floor = f"{max(since, 0.0):017.6f}"
    keys = sorted(store.autoscaler_event_records().items(), reverse=True)
    out: list[AutoscalerEvent] = []
    for key, raw in keys:
        if key < floor or (limit and len(out) >= limit):
            break
        try:
            out.append(AutoscalerEvent.model_validate_json(raw))
        except ValidationError:
            log.warning("skipping a malformed autoscaler event %s", key[:40])
    out.reverse()
    return [e for e in out if e.ts >= since]


# --- recording (request path) ----------------------------------------------------------


class _Counts:
    """The mutable, slotted twin of `Series` updated on the request path."""

    __slots__ = (
        "decision_sum_ms", "decisions", "errors", "latency_buckets", "latency_sum_ms",
        "requests", "samples", "slo_met",
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
        )


def _bucket(latency_ms: float) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return i
    return len(LATENCY_BUCKETS_MS)


def new_replica_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


class Recorder:
    """In-memory counters of one replica; thread-safe, cheap, flushed by a `Flusher`."""

    def __init__(self, kind: Literal["worker", "keyservice", "control"], *, pool: str = "") -> None:
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
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
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


def interval_key(replica: str, start: float) -> str:
    return f"{replica}@{int(start):d}"


class Flusher:
    """Writes a `Recorder`'s snapshots to the store from a daemon thread.

    `status` (e.g. ``WorkerRuntime.status``) is read at each flush, in this
    thread; a status that fails once (a dict changing under iteration) is
    retried at the next flush.
    """

    def __init__(
        self,
        store: MetadataStore,
        recorder: Recorder,
        *,
        status: Callable[[], Mapping[str, Any]] | None = None,
        interval_s: float = FLUSH_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self._status = status
        self._interval_s = interval_s
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_status: Mapping[str, Any] = {}
        self._last_write = -math.inf
        self._written_windows: set[float] = set()

    def start(self) -> Flusher:
        self._thread = threading.Thread(
            target=self._run, name=f"infaas-telemetry-{self.recorder.kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, flush: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if flush:
            self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                due = time.monotonic() - self._last_write >= self._heartbeat_s
                if self.recorder.changed or due:
                    self.flush()
            except Exception as e:  # a store hiccup must never stop telemetry for good
                log.warning("telemetry flush failed: %s", type(e).__name__)

    def flush(self) -> None:
        """Write the replica record and the changed windows now (blocking)."""
        if self._status is not None:
            try:
                self._last_status = dict(self._status())
            except Exception as e:
                log.debug("replica status unavailable this time: %s", type(e).__name__)
        record, windows, expired = self.recorder.snapshot(self._last_status)
        for w in windows:
            self.store.put_telemetry(interval_key(w.replica, w.start), w)
            self._written_windows.add(w.start)
        for t in expired:
            if t in self._written_windows:
                self._written_windows.discard(t)
                self.store.delete_telemetry(interval_key(record.replica, t))
        self.store.put_telemetry(record.replica, record)
        self._last_write = time.monotonic()


class KeyServiceTelemetry:
    """ASGI middleware counting the key service's key releases and refusals by error code.

    Only ``POST …/release`` is observed; a refusal's code is read from its JSON
    problem body (small, metadata only).
    """

    def __init__(self, app: Any, recorder: Recorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not str(scope.get("path", "")).endswith("/release")
        ):
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def observe(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and len(body) < 65536:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self._count(status, bytes(body))

    def _count(self, status: int, body: bytes) -> None:
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if 200 <= status < 300:
            keys = doc.get("keys") if isinstance(doc, dict) else None
            self.recorder.released(len(keys) if isinstance(keys, list) else 0)
        else:
            code = doc.get("code") if isinstance(doc, dict) else None
            self.recorder.refused(code if isinstance(code, str) else f"http_{status}")


# --- reading (control plane) -----------------------------------------------------------


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


# --- structured logs -------------------------------------------------------------------

LOG_FIELDS: tuple[str, ...] = (
    "request_id",
    "tenant",
    "task",
    "variant",
    "model_id",
    "pool",
    "decision_ms",
    "latency_ms",
    "queue_ms",
    "batch",
    "slo_ms",
    "min_accuracy",
    "slo_met",
    "code",
    "replica",
    "status",
)
"""The only ``extra`` fields a log line carries: metadata, by name."""

# long base64/base64url runs mixing upper and lower case: API tokens, keys, ciphertext.
# Hex (measurements, hashes) and uuids are lower case and stay readable.
_SECRETISH = re.compile(r"(?=[A-Za-z0-9_+/-]*[a-z])(?=[A-Za-z0-9_+/-]*[A-Z])[A-Za-z0-9_+/-]{32,}=*")


def redact(text: str) -> str:
    """`text` with long mixed-case base64-like runs replaced by ``[redacted]``."""
    return _SECRETISH.sub("[redacted]", text) if len(text) >= 32 else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, whitelisted metadata, exception."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            msg = str(record.msg)
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(msg)[:2000],
        }
        fields = record.__dict__
        for name in LOG_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            if type(value) in (str, bool, int, float):
                doc[name] = redact(value)[:200] if type(value) is str else value
            else:
                doc[name] = redact(str(value))[:200]
        if record.exc_info and record.exc_info[0] is not None:
            etype, evalue, tb = record.exc_info
            doc["exc_type"] = etype.__name__
            doc["exc_msg"] = redact(str(evalue))[:500]
            # where, not what: frames without their locals or source lines
            doc["stack"] = [
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_tb(tb)[-8:]
            ]
        return json.dumps(doc, ensure_ascii=False, default=str)


class _InfaasHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    level: int = logging.INFO, *, json_lines: bool = True, stream: Any = None
) -> None:
    """One handler on the root logger: JSON lines (or text); ``infaas`` loggers at `level`.

    For entry points only (the CLI's ``serve``, a Serve replica's constructor);
    idempotent. Other libraries' loggers pass warnings and above.
    """
    handler = _InfaasHandler(stream or sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(JsonFormatter() if json_lines else text)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _InfaasHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("infaas").setLevel(level)
