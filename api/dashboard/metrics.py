"""Prometheus metrics of the whole deployment, served by the control plane at ``/metrics``.

A custom collector: at each scrape it reads the merged telemetry of every
replica (`infaas.telemetry.TelemetryReader`, cached a second) and turns it into
metric families. The registry belongs to the app (no process-global
registry). Counters sum over replicas, dead ones included, so they never go
backwards while their records last. Latency is the worker-side time of a
request (authenticate, select, decrypt, batch, run, seal), in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from infaas.telemetry.reader import TelemetryReader, merge_series
from infaas.telemetry.records import INFEASIBLE, LATENCY_BUCKETS_MS


def _le(bound_ms: float) -> str:
    return repr(bound_ms / 1e3)


class InfaasCollector(Collector):
    """Metric families from the replicas' telemetry records."""

    def __init__(self, reader: TelemetryReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        view = self._reader.read()
        totals = view.totals()

        requests = CounterMetricFamily(
            "infaas_requests",
            "Inference requests answered, by tenant, task and variant",
            labels=["tenant", "task", "variant"],
        )
        errors = CounterMetricFamily(
            "infaas_request_errors",
            "Inference requests refused, by tenant, task and error code",
            labels=["tenant", "task", "code"],
        )
        violations = CounterMetricFamily(
            "infaas_slo_violations",
            "Answered requests whose worker-side latency exceeded their SLO target",
            labels=["task", "variant"],
        )
        infeasible = CounterMetricFamily(
            "infaas_slo_infeasible",
            "Requests refused because no variant could meet their SLO",
            labels=["task"],
        )
        samples = CounterMetricFamily(
            "infaas_samples", "Samples (batch rows) inferred", labels=["task", "variant"]
        )
        for s in totals:
            if s.requests:
                requests.add_metric([s.tenant, s.task, s.variant], s.requests)
            for code, n in sorted(s.errors.items()):
                errors.add_metric([s.tenant, s.task, code], n)
        by_variant = merge_series(
            s.model_copy(update={"tenant": ""}, deep=True) for s in totals if s.requests
        )
        latency = HistogramMetricFamily(
            "infaas_request_latency_seconds",
            "Worker-side latency of answered requests",
            labels=["task", "variant"],
        )
        for s in by_variant:
            violations.add_metric([s.task, s.variant], s.requests - s.slo_met)
            samples.add_metric([s.task, s.variant], s.samples)
            cumulative, buckets = 0, []
            for bound, n in zip(LATENCY_BUCKETS_MS, s.latency_buckets, strict=False):
                cumulative += n
                buckets.append((_le(bound), float(cumulative)))
            buckets.append(("+Inf", float(sum(s.latency_buckets))))
            latency.add_metric([s.task, s.variant], buckets, s.latency_sum_ms / 1e3)
        by_task: dict[str, tuple[int, float, int]] = {}
        for s in totals:
            n, total, inf = by_task.get(s.task, (0, 0.0, 0))
            by_task[s.task] = (
                n + s.decisions,
                total + s.decision_sum_ms,
                inf + s.errors.get(INFEASIBLE, 0),
            )
        decision = SummaryMetricFamily(
            "infaas_scheduler_decision_seconds",
            "Time the scheduler took to choose a variant, per request",
            labels=["task"],
        )
        for task, (n, total_ms, inf) in sorted(by_task.items()):
            decision.add_metric([task], n, total_ms / 1e3)
            infeasible.add_metric([task], inf)
        yield from (requests, errors, latency, violations, infeasible, samples, decision)

        live = view.live()
        workers = [r for r in live if r.kind == "worker"]
        replicas = GaugeMetricFamily(
            "infaas_worker_replicas", "Live worker replicas, by pool", labels=["pool"]
        )
        pools: dict[str, int] = {}
        for r in workers:
            pools[r.pool] = pools.get(r.pool, 0) + 1
        for pool, n in sorted(pools.items()):
            replicas.add_metric([pool], n)
        loaded = GaugeMetricFamily(
            "infaas_variant_replicas",
            "Live worker replicas holding a variant loaded",
            labels=["variant"],
        )
        queue = GaugeMetricFamily(
            "infaas_queue_length",
            "Requests waiting or running per variant, over live workers",
            labels=["variant"],
        )
        held: dict[str, int] = {}
        outstanding: dict[str, int] = {}
        for r in workers:
            for v in r.status.get("loaded_variants", []):
                held[str(v)] = held.get(str(v), 0) + 1
            for v, q in (r.status.get("queues") or {}).items():
                outstanding[v] = outstanding.get(v, 0) + int(q.get("outstanding", 0))
        for v, n in sorted(held.items()):
            loaded.add_metric([v], n)
        for v, n in sorted(outstanding.items()):
            queue.add_metric([v], n)
        simulated = GaugeMetricFamily(
            "infaas_tee_simulated",
            "1 where a live replica runs on the simulated TEE (not confidential)",
            labels=["kind", "replica"],
        )
        for r in live:
            if r.kind in ("worker", "keyservice"):
                simulated.add_metric([r.kind, r.replica], float(bool(r.status.get("simulated"))))
        yield from (replicas, loaded, queue, simulated)

        keyservice = [r for r in view.replicas if r.kind == "keyservice"]
        releases = CounterMetricFamily(
            "infaas_keyservice_releases", "Key releases to attested workers"
        )
        released = CounterMetricFamily(
            "infaas_keyservice_released_keys", "Keys released to attested workers"
        )
        refusals = CounterMetricFamily(
            "infaas_keyservice_refusals", "Key release requests refused, by code", labels=["code"]
        )
        releases.add_metric([], sum(r.releases for r in keyservice))
        released.add_metric([], sum(r.released_keys for r in keyservice))
        codes: dict[str, int] = {}
        for r in keyservice:
            for code, n in r.refusals.items():
                codes[code] = codes.get(code, 0) + n
        for code, n in sorted(codes.items()):
            refusals.add_metric([code], n)
        attestation = CounterMetricFamily(
            "infaas_attestation_failures",
            "Attestation failures: evidence the key service refused, requests refused for it",
            labels=["component"],
        )
        attestation.add_metric(["keyservice"], codes.get("attestation_failed", 0))
        attestation.add_metric(
            ["worker"], sum(s.errors.get("attestation_failed", 0) for s in totals)
        )
        yield from (releases, released, refusals, attestation)


def create_registry(reader: TelemetryReader) -> CollectorRegistry:
    """A registry of its own holding only the infaas collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InfaasCollector(reader))
    return registry
