"""Prometheus metrics of the whole deployment, served by the control plane at ``/metrics``.

A custom collector: at each scrape it reads every replica's telemetry record
(`infaas.telemetry.TelemetryReader`, cached a second) and turns it into metric
families. Each replica's cumulative counters are exported as that replica's
own series (label ``replica``), never summed here: a replica's counters only
grow, a restarted replica is a new series, and when a long-dead replica's
record is forgotten its series ends instead of pulling a sum down. Sums over
replicas are Prometheus's job (``sum by (task) (rate(...))``). Variant series
carry ``model``, ``precision`` and ``backend`` as labels of their own (from the
registered variant specs). The registry belongs to the app (no process-global
registry). Latency is the worker-side time of a request (authenticate, select,
decrypt, batch, run, seal), in seconds.

Who may read it: an administrator, or a ``metrics`` token (a read-only role
for scrapers, `POST /v1/scrapers`), as ``Authorization: Bearer``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from infaas.store import MetadataStore
from infaas.telemetry.reader import TelemetryReader
from infaas.telemetry.records import (
    BATCH_BUCKETS,
    INFEASIBLE,
    LATENCY_BUCKETS_MS,
    QUEUE_BUCKETS,
    Series,
)

VARIANT_LABELS = ["model", "precision", "backend", "variant"]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """What `infaas_build_info` says: versions of infaas, Python, Ray and the runtimes."""
    return {
        "version": _version("infaas"),
        "python": platform.python_version(),
        "ray": _version("ray"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
    }


def _buckets(
    bounds: Sequence[float], counts: Sequence[int], scale: float = 1.0
) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs of a non-cumulative histogram, +Inf last."""
    out, cumulative = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        cumulative += n
        out.append((repr(bound * scale), float(cumulative)))
    out.append(("+Inf", float(sum(counts))))
    return out


class InfaasCollector(Collector):
    """Metric families from the replicas' telemetry records, one series set per replica."""

    def __init__(self, reader: TelemetryReader, store: MetadataStore | None = None) -> None:
        self._reader = reader
        self._store = store if store is not None else reader.store

    def _variant_labels(self) -> dict[str, list[str]]:
        return {
            v.variant_id: [v.model_id, str(v.precision), str(v.backend), v.variant_id]
            for v in self._store.list_variants()
        }

    def collect(self) -> Iterator[Metric]:
        build = InfoMetricFamily("infaas_build", "The infaas build serving this deployment")
        build.add_metric([], build_labels())
        yield build
        yield from self._requests()
        yield from self._live()
        yield from self._keyservice()

    def _requests(self) -> Iterator[Metric]:
        view = self._reader.read()
        known = self._variant_labels()

        def vl(variant: str) -> list[str]:
            return known.get(variant, ["", "", "", variant])

        requests = CounterMetricFamily(
            "infaas_requests",
            "Inference requests answered, by replica, tenant, task and variant",
            labels=["replica", "tenant", "task", *VARIANT_LABELS],
        )
        errors = CounterMetricFamily(
            "infaas_request_errors",
            "Inference requests refused, by replica, tenant, task and error code",
            labels=["replica", "tenant", "task", "code"],
        )
        by_variant = ["replica", "task", *VARIANT_LABELS]
        violations = CounterMetricFamily(
            "infaas_slo_violations",
            "Answered requests whose worker-side latency exceeded their SLO target",
            labels=by_variant,
        )
        samples = CounterMetricFamily(
            "infaas_samples", "Samples (batch rows) inferred", labels=by_variant
        )
        latency = HistogramMetricFamily(
            "infaas_request_latency_seconds",
            "Worker-side latency of answered requests",
            labels=by_variant,
        )
        batch = HistogramMetricFamily(
            "infaas_batch_size",
            "Size of the batch each answered request ran in",
            labels=by_variant,
        )
        infeasible = CounterMetricFamily(
            "infaas_slo_infeasible",
            "Requests refused because no variant could meet their SLO",
            labels=["replica", "task"],
        )
        decision = SummaryMetricFamily(
            "infaas_scheduler_decision_seconds",
            "Time the scheduler took to choose a variant, per request",
            labels=["replica", "task"],
        )
        for r in view.replicas:
            if r.kind != "worker":
                continue
            variants: dict[tuple[str, str], Series] = {}
            tasks: dict[str, Series] = {}
            for s in r.totals:
                if s.requests:
                    requests.add_metric([r.replica, s.tenant, s.task, *vl(s.variant)], s.requests)
                    key = (s.task, s.variant)
                    if key in variants:
                        variants[key].merge(s)
                    else:
                        variants[key] = s.model_copy(deep=True)
                for code, n in sorted(s.errors.items()):
                    errors.add_metric([r.replica, s.tenant, s.task, code], n)
                if s.task in tasks:
                    tasks[s.task].merge(s)
                else:
                    tasks[s.task] = s.model_copy(deep=True)
            for (task, variant), s in sorted(variants.items()):
                labels = [r.replica, task, *vl(variant)]
                violations.add_metric(labels, s.requests - s.slo_met)
                samples.add_metric(labels, s.samples)
                latency.add_metric(
                    labels,
                    _buckets(LATENCY_BUCKETS_MS, s.latency_buckets, 1e-3),
                    s.latency_sum_ms / 1e3,
                )
                batch.add_metric(labels, _buckets(BATCH_BUCKETS, s.batch_buckets), s.samples)
            for task, s in sorted(tasks.items()):
                decision.add_metric([r.replica, task], s.decisions, s.decision_sum_ms / 1e3)
                infeasible.add_metric([r.replica, task], s.errors.get(INFEASIBLE, 0))
        yield from (requests, errors, latency, batch, violations, infeasible, samples, decision)

    def _live(self) -> Iterator[Metric]:
        view = self._reader.read()
        workers = [r for r in view.live() if r.kind == "worker"]
        replicas = GaugeMetricFamily(
            "infaas_worker_replicas", "Live worker replicas, by pool", labels=["pool"]
        )
        pools: dict[str, int] = {}
        for r in workers:
            pools[r.pool] = pools.get(r.pool, 0) + 1
        for pool, n in sorted(pools.items()):
            replicas.add_metric([pool], n)
        loaded = GaugeMetricFamily(
            "infaas_variant_loaded",
            "1 where a live worker replica holds a variant loaded",
            labels=["replica", "variant"],
        )
        queue = GaugeMetricFamily(
            "infaas_queue_length",
            "Requests waiting or running per variant, by live worker replica",
            labels=["replica", "variant"],
        )
        arrivals = HistogramMetricFamily(
            "infaas_queue_length_on_arrival",
            "Requests a worker replica held when another arrived",
            labels=["replica"],
        )
        shed = CounterMetricFamily(
            "infaas_requests_shed",
            "Requests a worker replica refused with 503 because it held its limit",
            labels=["replica"],
        )
        for r in workers:
            for v in r.status.get("loaded_variants", []):
                loaded.add_metric([r.replica, str(v)], 1)
            for v, q in sorted((r.status.get("queues") or {}).items()):
                queue.add_metric([r.replica, v], int(q.get("outstanding", 0)))
            admission = r.status.get("admission")
            if isinstance(admission, dict):
                counts = [int(n) for n in admission.get("queue_buckets", [])]
                total = float(admission.get("queue_sum", 0))
                arrivals.add_metric([r.replica], _buckets(QUEUE_BUCKETS, counts), total)
                shed.add_metric([r.replica], int(admission.get("shed", 0)))
        simulated = GaugeMetricFamily(
            "infaas_tee_simulated",
            "1 where a live replica runs on the simulated TEE (not confidential)",
            labels=["kind", "replica"],
        )
        for r in view.live():
            if r.kind in ("worker", "keyservice"):
                simulated.add_metric([r.kind, r.replica], float(bool(r.status.get("simulated"))))
        yield from (replicas, loaded, queue, arrivals, shed, simulated)

    def _keyservice(self) -> Iterator[Metric]:
        view = self._reader.read()
        releases = CounterMetricFamily(
            "infaas_keyservice_releases", "Key releases to attested workers", labels=["replica"]
        )
        released = CounterMetricFamily(
            "infaas_keyservice_released_keys",
            "Keys released to attested workers",
            labels=["replica"],
        )
        refusals = CounterMetricFamily(
            "infaas_keyservice_refusals",
            "Key release requests refused, by code",
            labels=["replica", "code"],
        )
        attestation = CounterMetricFamily(
            "infaas_attestation_failures",
            "Attestation failures: evidence the key service refused, requests refused for it",
            labels=["component", "replica"],
        )
        for r in view.replicas:
            if r.kind == "keyservice":
                releases.add_metric([r.replica], r.releases)
                released.add_metric([r.replica], r.released_keys)
                for code, n in sorted(r.refusals.items()):
                    refusals.add_metric([r.replica, code], n)
                failed = r.refusals.get("attestation_failed", 0)
                attestation.add_metric(["keyservice", r.replica], failed)
            elif r.kind == "worker":
                failed = sum(s.errors.get("attestation_failed", 0) for s in r.totals)
                attestation.add_metric(["worker", r.replica], failed)
        yield from (releases, released, refusals, attestation)


def create_registry(reader: TelemetryReader) -> CollectorRegistry:
    """A registry of its own holding only the infaas collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InfaasCollector(reader))
    return registry
