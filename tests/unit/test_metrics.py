"""Telemetry records -> store -> control plane: /metrics parses and moves, sessions, JSON logs.

No Ray: a `Recorder` stands for a worker replica and another for the key
service, a `Flusher` writes their records to a memory store, and the control
plane made by `create_app` reads them, as in a deployment.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.dashboard.session import COOKIE
from infaas.auth import TokenRegistry
from infaas.keyservice.telemetry import KeyServiceTelemetry
from infaas.logs import JsonFormatter
from infaas.settings import Settings
from infaas.store import MemoryStore
from infaas.telemetry.events import read_autoscaler_events, record_autoscaler_event
from infaas.telemetry.flusher import Flusher
from infaas.telemetry.reader import TelemetryReader, quantile_ms
from infaas.telemetry.recorder import Recorder
from infaas.telemetry.records import LATENCY_BUCKETS_MS
from infaas.types import (
    AutoscalerEvent,
    Backend,
    ModelRecord,
    Precision,
    Quantization,
    VariantSpec,
)
from tests.asgi import TestClient

VARIANT = "digits-mlp.int8.onnxruntime"
SPEC = VariantSpec(
    variant_id=VARIANT,
    model_id="digits-mlp",
    task="digits",
    architecture="mlp",
    precision=Precision.INT8,
    backend=Backend.ONNXRUNTIME,
    quantization=Quantization.STATIC_QDQ,
)
SPEC_LABELS = {"model": "digits-mlp", "precision": "int8", "backend": "onnxruntime"}
STATUS = {
    "tee_backend": "simulated",
    "simulated": True,
    "measurement": "ab" * 32,
    "attested_at": 1.0,
    "loaded_variants": [VARIANT],
    "queues": {VARIANT: {"outstanding": 3}},
}


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.store = MemoryStore()
        self.store.put_model(
            ModelRecord(
                model_id="digits-mlp", task="digits", architecture="mlp",
                artifact_sha256="0" * 64, size_bytes=1, num_parameters=1,
            )
        )  # fmt: skip
        self.store.put_variant(SPEC)
        self.worker = Recorder("worker", pool="cpu")
        self.keyservice = Recorder("keyservice")
        self.flushers = [
            Flusher(self.store, self.worker, status=lambda: STATUS),
            Flusher(self.store, self.keyservice, status=lambda: {"simulated": True}),
        ]
        self.app = create_app(Settings(data_dir=tmp, store_url="memory://"), store=self.store)
        self.app.state.dashboard.reader.max_age_s = 0.0  # read the store at every scrape
        registry = TokenRegistry(self.store)
        self.admin = registry.issue("admin", "admin")
        self.tenant = registry.issue("demo", "tenant")
        self.http = TestClient(self.app)

    def serve(self, n: int, *, latency_ms: float = 4.0, slo_ms: float = 10.0) -> None:
        for i in range(n):
            self.worker.decided(20e-6)
            self.worker.served(
                request_id=f"r{i}",
                tenant="demo",
                task="digits",
                variant=VARIANT,
                latency_ms=latency_ms,
                slo_ms=slo_ms,
                min_accuracy=0.9,
                batch=2,
            )

    def flush(self) -> None:
        for f in self.flushers:
            f.flush()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        resp = self.http.get("/metrics", headers={"Authorization": f"Bearer {self.admin}"})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text)
            for s in fam.samples
        }


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    yield Deployment(tmp_path)


def _get(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_under_load(dep: Deployment) -> None:
    dep.flush()
    before = dep.scrape()
    replica = dep.worker.replica
    labels = {"replica": replica, "task": "digits", "variant": VARIANT, **SPEC_LABELS}
    assert _get(before, "infaas_requests_total", tenant="demo", **labels) == 0
    assert _get(before, "infaas_worker_replicas", pool="cpu") == 1
    assert _get(before, "infaas_queue_length", replica=replica, variant=VARIANT) == 3

    dep.serve(5)
    dep.serve(2, latency_ms=40.0)  # over the 10 ms target
    dep.worker.failed(
        request_id="x",
        tenant="demo",
        task="digits",
        code="no_feasible_variant",
        latency_ms=0.1,
        slo_ms=1.0,
        min_accuracy=0.99,
    )
    dep.flush()
    after = dep.scrape()
    assert _get(after, "infaas_requests_total", tenant="demo", **labels) == 7
    assert _get(after, "infaas_slo_violations_total", **labels) == 2
    assert _get(after, "infaas_slo_infeasible_total", replica=replica, task="digits") == 1
    refused = {"replica": replica, "tenant": "demo", "task": "digits"}
    assert _get(after, "infaas_request_errors_total", code="no_feasible_variant", **refused) == 1
    assert _get(after, "infaas_samples_total", **labels) == 14
    # the latency histogram: cumulative buckets in seconds, +Inf = count
    assert _get(after, "infaas_request_latency_seconds_count", **labels) == 7
    assert _get(after, "infaas_request_latency_seconds_bucket", le="0.005", **labels) == 5
    assert _get(after, "infaas_request_latency_seconds_bucket", le="+Inf", **labels) == 7
    assert _get(after, "infaas_request_latency_seconds_sum", **labels) == pytest.approx(0.1)
    assert (
        _get(after, "infaas_scheduler_decision_seconds_count", replica=replica, task="digits") == 7
    )
    # every answered request ran in a batch of 2
    assert _get(after, "infaas_batch_size_bucket", le="1.0", **labels) == 0
    assert _get(after, "infaas_batch_size_bucket", le="2.0", **labels) == 7
    assert _get(after, "infaas_batch_size_count", **labels) == 7


def test_key_service_releases_refusals_and_attestation_failures(dep: Deployment) -> None:
    answers = iter(
        [
            (200, {"keys": [{"kind": "model"}, {"kind": "tenant"}]}),
            (403, {"code": "attestation_failed", "status": 403}),
            (403, {"code": "permission_denied", "status": 403}),
        ]
    )

    async def keyservice(scope: Any, receive: Any, send: Any) -> None:
        status, body = next(answers)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    app = KeyServiceTelemetry(keyservice, dep.keyservice)
    scope = {"type": "http", "method": "POST", "path": "/v1/keyservice/release"}

    async def noop_receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def noop_send(message: Any) -> None:
        pass

    for _ in range(3):
        asyncio.run(app(scope, noop_receive, noop_send))
    dep.flush()
    m = dep.scrape()
    ks = {"replica": dep.keyservice.replica}
    assert _get(m, "infaas_keyservice_releases_total", **ks) == 1
    assert _get(m, "infaas_keyservice_released_keys_total", **ks) == 2
    assert _get(m, "infaas_keyservice_refusals_total", code="attestation_failed", **ks) == 1
    assert _get(m, "infaas_keyservice_refusals_total", code="permission_denied", **ks) == 1
    assert _get(m, "infaas_attestation_failures_total", component="keyservice", **ks) == 1


def test_dashboard_needs_an_admin(dep: Deployment) -> None:
    http = dep.http
    assert http.get("/metrics").status_code == 401
    assert (
        http.get("/metrics", headers={"Authorization": f"Bearer {dep.tenant}"}).status_code == 403
    )
    assert http.get("/dashboard/api/traffic").status_code == 401
    page = http.get("/dashboard/traffic", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].endswith("/dashboard/login")
    assert http.post("/dashboard/login", data={"token": dep.tenant}).status_code == 401
    assert COOKIE not in http.cookies

    resp = http.post("/dashboard/login", data={"token": dep.admin}, follow_redirects=False)
    assert resp.status_code == 303
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and dep.admin not in cookie
    page = http.get("/dashboard/traffic")
    assert page.status_code == 200 and "SIMULATED TEE — NOT CONFIDENTIAL" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert http.get("/dashboard/api/traffic").status_code == 200
    # a forged or tampered session is refused; so is one whose admin token was rotated
    session = http.cookies[COOKIE]
    http.cookies.set(COOKIE, session.replace("v1.", "v1.9", 1))
    assert http.get("/dashboard/api/traffic").status_code == 403
    http.cookies.set(COOKIE, session)
    TokenRegistry(dep.store).issue("admin", "admin", replace=True)
    assert http.get("/dashboard/api/traffic").status_code == 403


def test_traffic_and_autoscaler_views(dep: Deployment) -> None:
    assert read_autoscaler_events(dep.store) == []
    dep.serve(4)
    dep.flush()
    auth = {"Authorization": f"Bearer {dep.admin}"}
    traffic = dep.http.get("/dashboard/api/traffic", headers=auth).json()
    assert traffic["totals"]["requests"] == 4 and traffic["totals"]["slo_attainment"] == 1.0
    assert sum(traffic["by_task"]["digits"]["rps"]) > 0
    (row,) = traffic["rows"]
    assert row["tenant"] == "demo" and row["variants"] == [VARIANT] and row["p99_ms"] <= 5.0
    scaler = dep.http.get("/dashboard/api/autoscaler", headers=auth).json()
    assert scaler["events"] == [] and scaler["replicas"]["source"] == "workers"
    assert scaler["replicas"]["series"][VARIANT][-1] == 1

    for n, kind in ((1, "scale_up"), (2, "replicas")):
        record_autoscaler_event(
            dep.store,
            AutoscalerEvent(
                kind=kind,  # type: ignore[arg-type]
                reason=f"scale up {VARIANT}: 0 -> {n}",
                task="digits",
                variant_id=VARIANT,
                from_replicas=0,
                to_replicas=n,
                replicas={VARIANT: n},
            ),
        )
    record_autoscaler_event(
        dep.store,
        AutoscalerEvent(
            kind="upgrade",
            reason="upgrade digits|50|0.9: a -> b",
            task="digits",
            demand="digits|50|0.9",
            from_variant_id="a",
            variant_id="b",
        ),
    )
    scaler = dep.http.get("/dashboard/api/autoscaler", headers=auth).json()
    assert [e["kind"] for e in scaler["events"]] == ["upgrade", "scale_up"]
    upgrade, up = scaler["events"]
    # the typed fields reach the page as they were decided
    assert (up["task"], up["variant_id"], up["from_replicas"], up["to_replicas"]) == (
        "digits",
        VARIANT,
        0,
        1,
    )
    assert (upgrade["demand"], upgrade["from_variant_id"], upgrade["variant_id"]) == (
        "digits|50|0.9",
        "a",
        "b",
    )
    assert scaler["replicas"]["source"] == "autoscaler"
    assert scaler["replicas"]["series"][VARIANT] == [1, 2]


def test_quantiles_and_reader_cache() -> None:
    buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    buckets[3] = 100  # (5, 10] ms
    assert 5.0 < quantile_ms(buckets, 0.5) <= 10.0  # type: ignore[operator]
    assert quantile_ms([0] * len(buckets), 0.5) is None
    store = MemoryStore()
    rec = Recorder("worker", pool="cpu")
    reader = TelemetryReader(store, max_age_s=60.0)
    assert reader.read().replicas == []
    Flusher(store, rec).flush()
    assert reader.read().replicas == []  # cached
    reader.max_age_s = 0.0
    assert [r.replica for r in reader.read().replicas] == [rec.replica]


def test_json_log_lines_keep_metadata_and_drop_the_rest() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("infaas.test_metrics")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = "demo.Zx9" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9"
    try:
        logger.info(
            "token %s used",
            token,
            extra={"tenant": "demo", "task": "digits", "payload": b"\x01\x02", "slo_met": True},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["tenant"] == "demo" and first["slo_met"] is True and "payload" not in first
    assert token[5:] not in first["msg"] and "[redacted]" in first["msg"]
    assert second["exc_type"] == "ValueError" and second["stack"]
