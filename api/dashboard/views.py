"""What each dashboard page shows, as JSON-ready dicts: pure functions of the store and telemetry.

Metadata only, by construction: the inputs are the store's typed records
(tasks, models, variants, profiles, tenants), the merged `TelemetryView`
(counters by tenant, task, variant; replicas' TEE status) and autoscaler
events. None of them holds a key, a token, an input or an output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from infaas.settings import Settings
from infaas.store import MetadataStore
from infaas.telemetry.reader import TelemetryView, merge_series, quantile_ms
from infaas.telemetry.records import INFEASIBLE, INTERVAL_S, ReplicaRecord, Series
from infaas.types import AutoscalerEvent, Profile, Tenant, VariantSpec
from profiler.report import pareto_front

Json = dict[str, Any]


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


# --- overview -------------------------------------------------------------------------


def attestation_verdict(status: Mapping[str, Any]) -> str:
    """A worker's standing with the key service's attestation policy, from its own record."""
    attested = status.get("attested_at")
    failures = int((status.get("errors") or {}).get("attestation_failed", 0))
    if attested:
        verdict = "accepted by the key service's policy"
        if failures:
            verdict += f" ({failures} refusal(s) since start)"
        return verdict
    if failures:
        return "refused by the key service's policy"
    return "not attested yet (no key released)"


def _worker_row(r: ReplicaRecord, at: float, live: bool) -> Json:
    st = r.status
    attested_at = st.get("attested_at")
    served = sum(s.requests for s in r.totals)
    errors = sum(s.error_count for s in r.totals)
    return {
        "replica": r.replica,
        "pool": r.pool,
        "host": r.host,
        "pid": r.pid,
        "live": live,
        "age_s": _r(at - r.updated_at, 1),
        "uptime_s": _r(at - r.started_at, 0),
        "tee_backend": st.get("tee_backend", "?"),
        "simulated": bool(st.get("simulated", False)),
        "measurement": str(st.get("measurement", "")),
        "verdict": attestation_verdict(st),
        "evidence_age_s": _r(at - float(attested_at), 1) if attested_at else None,
        "key_releases": st.get("key_releases"),
        "loaded_variants": list(st.get("loaded_variants", [])),
        "outstanding": sum(int(q.get("outstanding", 0)) for q in (st.get("queues") or {}).values()),
        "requests": served,
        "errors": errors,
    }


def overview(settings: Settings, view: TelemetryView, workers_health: str) -> Json:
    """Deployment health, TEE and attestation per worker, replicas per pool, totals."""
    live = {r.replica for r in view.live()}
    workers = [
        _worker_row(r, view.at, r.replica in live) for r in view.replicas if r.kind == "worker"
    ]
    keyservice = [
        {
            "replica": r.replica,
            "live": r.replica in live,
            "age_s": _r(view.at - r.updated_at, 1),
            "tee_backend": r.status.get("tee_backend", "?"),
            "simulated": bool(r.status.get("simulated", False)),
            "measurement": str(r.status.get("measurement", "")),
            "releases": r.releases,
            "released_keys": r.released_keys,
            "refusals": dict(r.refusals),
        }
        for r in view.replicas
        if r.kind == "keyservice"
    ]
    pools = []
    for p in settings.pools:
        rows = [w for w in workers if w["pool"] == p.name and w["live"]]
        pools.append(
            {
                "pool": p.name,
                "replicas": len(rows),
                "num_cpus": p.num_cpus,
                "num_gpus": p.num_gpus,
                "cost_per_replica_s": p.cost_per_replica_s,
            }
        )
    totals = view.totals()
    simulated = settings.tee_backend == "simulated" or any(w["simulated"] for w in workers)
    ks_live = any(k["live"] for k in keyservice)
    return {
        "at": view.at,
        "tee_backend": settings.tee_backend,
        "simulated": simulated,
        "health": {
            "control": "ok",
            "workers": workers_health,
            "live_workers": sum(1 for w in workers if w["live"]),
            "keyservice": "live" if ks_live else ("silent" if keyservice else "no record yet"),
        },
        "workers": workers,
        "keyservice": keyservice,
        "pools": pools,
        "totals": _totals(totals),
    }


def _totals(series: Iterable[Series]) -> Json:
    ss = list(series)
    requests = sum(s.requests for s in ss)
    errors: dict[str, int] = {}
    for s in ss:
        for code, n in s.errors.items():
            errors[code] = errors.get(code, 0) + n
    met = sum(s.slo_met for s in ss)
    return {
        "requests": requests,
        "errors": sum(errors.values()),
        "errors_by_code": dict(sorted(errors.items())),
        "infeasible": errors.get(INFEASIBLE, 0),
        "slo_met": met,
        "slo_attainment": _r(met / requests, 4) if requests else None,
    }


# --- models and variants --------------------------------------------------------------


def _best_batch(p: Profile) -> tuple[int, float]:
    best = max(p.batches, key=lambda b: b.throughput_rps)
    return best.batch, best.p50_ms


def models(store: MetadataStore) -> Json:
    """Per task: every profiled variant (accuracy, batch-1 and best-batch latency), frontiers."""
    specs = {v.variant_id: v for v in store.list_variants()}
    profiles = {p.variant_id: p for p in store.list_profiles()}
    model_records = {m.model_id: m for m in store.list_models()}
    tasks = []
    for task in store.list_tasks():
        rows: list[Json] = []
        for vid, spec in sorted(specs.items()):
            if spec.task != task.name:
                continue
            p = profiles.get(vid)
            rows.append(_variant_row(spec, p))
        measured = [r for r in rows if r["accuracy"] is not None]
        for kind, x in (("b1", "p50_b1_ms"), ("best", "best_batch_p50_ms")):
            front = pareto_front([(r[x], r["accuracy"]) for r in measured])
            ids = [measured[i]["variant_id"] for i in front]
            for r in rows:
                r[f"pareto_{kind}"] = r["variant_id"] in ids
        tasks.append(
            {
                "task": task.name,
                "num_classes": task.num_classes,
                "input": task.input.model_dump(mode="json"),
                "models": sorted(m.model_id for m in model_records.values() if m.task == task.name),
                "variants": rows,
                "profiled": len(measured),
            }
        )
    return {"tasks": tasks}


def _variant_row(spec: VariantSpec, p: Profile | None) -> Json:
    row: Json = {
        "variant_id": spec.variant_id,
        "model_id": spec.model_id,
        "architecture": spec.architecture,
        "precision": spec.precision.value,
        "backend": spec.backend.value,
        "quantization": spec.quantization.value,
        "pool": spec.pool,
        "accuracy": None,
    }
    if p is None:
        return row
    best, best_ms = _best_batch(p)
    row |= {
        "accuracy": _r(p.accuracy, 4),
        "accuracy_kind": p.accuracy_kind,
        "p50_b1_ms": _r(p.p50_batch1_ms),
        "p99_b1_ms": _r(p.batches[0].p99_ms),
        "best_batch": best,
        "best_batch_p50_ms": _r(best_ms),
        "peak_throughput_rps": _r(p.peak_throughput_rps, 1),
        "load_ms": _r(p.load_ms, 1),
        "peak_memory_mb": _r(p.peak_memory_bytes / 2**20, 1),
    }
    return row


# --- live traffic ---------------------------------------------------------------------


def _window_stats(series: Sequence[Series], seconds: float) -> Json:
    buckets = [sum(col) for col in zip(*(s.latency_buckets for s in series), strict=False)]
    requests = sum(s.requests for s in series)
    errors = sum(s.error_count for s in series)
    infeasible = sum(s.errors.get(INFEASIBLE, 0) for s in series)
    met = sum(s.slo_met for s in series)
    return {
        "rps": _r(requests / seconds if seconds > 0 else 0.0),
        "p50": _r(quantile_ms(buckets, 0.5)) if buckets else None,
        "p99": _r(quantile_ms(buckets, 0.99)) if buckets else None,
        "slo": _r(met / requests, 4) if requests else None,
        "errors": errors,
        "infeasible": infeasible,
        "requests": requests,
    }


def traffic(view: TelemetryView, *, window_s: float = 600.0) -> Json:
    """Requests/s, p50/p99 latency, SLO attainment per task and per tenant, per window."""
    now = view.at
    first = (int((now - window_s) // INTERVAL_S) + 1) * INTERVAL_S
    starts = list(range(first, int(now // INTERVAL_S) * INTERVAL_S + 1, INTERVAL_S))
    windows = view.windows(float(first))
    groups: dict[str, dict[str, Json]] = {"task": {}, "tenant": {}}
    for by in ("task", "tenant"):
        names = sorted({getattr(s, by) for ss in windows.values() for s in ss})
        for name in names:
            points = []
            for t in starts:
                ss = [s for s in windows.get(float(t), []) if getattr(s, by) == name]
                span = min(INTERVAL_S, max(1.0, now - t))  # the current window is partial
                points.append(_window_stats(ss, span))
            groups[by][name] = {
                key: [pt[key] for pt in points]
                for key in ("rps", "p50", "p99", "slo", "errors", "infeasible")
            }
    # per (tenant, task): the whole window and the last minute
    recent = [s for t, ss in windows.items() if t >= now - 60 for s in ss]
    in_window = merge_series(s for ss in windows.values() for s in ss)
    totals = view.totals()
    rows = []
    for tenant, task in sorted({(s.tenant, s.task) for s in [*in_window, *totals]}):
        mine = [s for s in in_window if (s.tenant, s.task) == (tenant, task)]
        last = [s for s in recent if (s.tenant, s.task) == (tenant, task)]
        ever = [s for s in totals if (s.tenant, s.task) == (tenant, task)]
        w = _window_stats(mine, window_s)
        rows.append(
            {
                "tenant": tenant,
                "task": task,
                "requests": w["requests"],
                "rps_1m": _window_stats(last, 60.0)["rps"],
                "p50_ms": w["p50"],
                "p99_ms": w["p99"],
                "slo_attainment": w["slo"],
                "errors": w["errors"],
                "infeasible": w["infeasible"],
                "variants": sorted({s.variant for s in mine if s.variant}),
                "total_requests": sum(s.requests for s in ever),
            }
        )
    return {
        "at": now,
        "interval_s": INTERVAL_S,
        "window_s": window_s,
        "t": [float(t) for t in starts],
        "by_task": groups["task"],
        "by_tenant": groups["tenant"],
        "rows": rows,
        "totals": _totals(totals),
        "window_totals": _totals(in_window),
    }


# --- autoscaler -----------------------------------------------------------------------


def autoscaler(
    view: TelemetryView, events: Sequence[AutoscalerEvent], *, window_s: float = 600.0
) -> Json:
    """Decisions (newest first) and replicas per variant over time.

    Replica counts come from the autoscaler's events when it has written any;
    until then, from the workers' own records (replicas holding each variant).
    """
    sampled = [e for e in events if e.kind == "replicas" or e.replicas]
    if sampled:
        variants = sorted({v for e in sampled for v in e.replicas})
        series: dict[str, list[int | None]] = {
            v: [e.replicas.get(v, 0) for e in sampled] for v in variants
        }
        if any(e.to_replicas is not None for e in sampled if e.kind == "replicas"):
            series["worker replicas (target)"] = [
                e.to_replicas if e.kind == "replicas" else None for e in sampled
            ]
        replicas = {"source": "autoscaler", "t": [e.ts for e in sampled], "series": series}
    else:
        loaded = view.loaded_over_time(view.at - window_s)
        variants = sorted({v for row in loaded.values() for v in row})
        replicas = {
            "source": "workers",
            "t": list(loaded),
            "series": {v: [row.get(v, 0) for row in loaded.values()] for v in variants},
        }
    # newest first; a decision repeated tick after tick (e.g. "unserved ...") is one row
    decisions: list[Json] = []
    seen: dict[tuple[str, str], Json] = {}
    for e in reversed(events):
        if e.kind == "replicas":
            continue
        row = seen.get((e.kind, e.reason))
        if row is not None:
            row["count"] += 1
            row["first_ts"] = e.ts
            continue
        row = seen[(e.kind, e.reason)] = e.model_dump(mode="json") | {"count": 1, "first_ts": e.ts}
        decisions.append(row)
    return {
        "at": view.at,
        "events": decisions[:200],
        "event_count": len(events),
        "decision_count": sum(d["count"] for d in decisions),
        "replicas": replicas,
    }


# --- tenants --------------------------------------------------------------------------


def tenants(store: MetadataStore, view: TelemetryView) -> Json:
    """Tenants, and the models each has been served by (grants stay sealed in the key service)."""
    model_of = {v.variant_id: v.model_id for v in store.list_variants()}
    totals = view.totals()
    out = []
    known = store.list_tenants()
    # principals served without a tenant record (tokens issued directly); answered requests
    # only: a refused request's tenant id is unauthenticated
    recorded = {t.tenant_id for t in known}
    served = sorted({s.tenant for s in totals if s.requests and s.tenant not in recorded})
    for tenant_id in served:
        try:
            known.append(Tenant(tenant_id=tenant_id, name="(no tenant record)", created_at=0.0))
        except ValidationError:  # "_other", the overflow series
            continue
    for t in known:
        mine = [s for s in totals if s.tenant == t.tenant_id]
        variants = sorted({s.variant for s in mine if s.variant and s.requests})
        out.append(
            {
                "tenant_id": t.tenant_id,
                "name": t.name,
                "created_at": t.created_at,
                "models_served": sorted({model_of.get(v, v.split(".")[0]) for v in variants}),
                "variants_served": variants,
                "tasks": sorted({s.task for s in mine}),
                "requests": sum(s.requests for s in mine),
                "errors": sum(s.error_count for s in mine),
            }
        )
    return {
        "tenants": out,
        "grants_note": "Grants are sealed in the key service, which lists none; shown here "
        "are the models each tenant has been served by.",
    }
