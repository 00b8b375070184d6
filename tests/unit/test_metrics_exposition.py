"""``/metrics`` as a Prometheus server sees it: valid exposition (promtool), counters that
never decrease when a replica ages out, build info, and the scraper's read-only role.

No Ray: `Recorder`s stand for worker replicas and a `Flusher` writes their
records to a memory store, which the control plane made by `create_app` reads,
as in a deployment (tests/unit/test_metrics.py).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from infaas.auth import TokenRegistry
from infaas.settings import Settings
from infaas.store import MemoryStore
from infaas.telemetry.flusher import Flusher
from infaas.telemetry.reader import FORGET_S
from infaas.telemetry.recorder import Recorder
from infaas.telemetry.records import ReplicaRecord
from tests.asgi import TestClient

VARIANT = "digits-mlp.fp32.onnxruntime"
STATUS = {
    "simulated": True,
    "loaded_variants": [VARIANT],
    "queues": {VARIANT: {"outstanding": 1}},
    "admission": {"limit": 4, "held": 1, "shed": 2, "queue_buckets": [3, 1], "queue_sum": 1},
}


class Scraped:
    """A control plane over a memory store that worker `Recorder`s flush into."""

    def __init__(self, tmp: Path) -> None:
        self.store = MemoryStore()
        self.app = create_app(Settings(data_dir=tmp, store_url="memory://"), store=self.store)
        self.app.state.dashboard.reader.max_age_s = 0.0
        self.tokens = TokenRegistry(self.store)
        self.admin = self.tokens.issue("admin", "admin")
        self.http = TestClient(self.app)

    def worker(self) -> tuple[Recorder, Flusher]:
        recorder = Recorder("worker", pool="cpu")
        return recorder, Flusher(self.store, recorder, status=lambda: STATUS)

    def text(self, token: str | None = None) -> str:
        r = self.http.get("/metrics", headers={"Authorization": f"Bearer {token or self.admin}"})
        assert r.status_code == 200, r.text
        return r.text

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(self.text())
            if fam.type in ("counter", "histogram", "summary")
            for s in fam.samples
            if s.name.endswith(("_total", "_count", "_sum", "_bucket"))
        }


def serve(recorder: Recorder, n: int) -> None:
    for i in range(n):
        recorder.served(
            request_id=f"r{i}", tenant="demo", task="digits", variant=VARIANT,
            latency_ms=3.0, slo_ms=50.0, min_accuracy=0.9, batch=4,
        )  # fmt: skip


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Scraped]:
    yield Scraped(tmp_path)


def test_metrics_pass_promtool(scraped: Scraped, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is absent (Debian package `prometheus`; .ci/run installs it)")
    a, fa = scraped.worker()
    serve(a, 3)
    a.failed(
        request_id="x", tenant="demo", task="digits", code="no_feasible_variant",
        latency_ms=0.1, slo_ms=1.0, min_accuracy=0.99,
    )  # fmt: skip
    fa.flush()
    text = scraped.text()
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "infaas_build_info{" in text and 'version="' in text
    assert "infaas_queue_length_on_arrival_bucket" in text
    assert "infaas_requests_shed_total" in text


def test_no_counter_decreases_when_a_replica_ages_out(scraped: Scraped) -> None:
    a, fa = scraped.worker()
    b, fb = scraped.worker()
    serve(a, 5)
    serve(b, 7)
    fa.flush()
    fb.flush()
    before = scraped.counters()
    # replica a dies and, long after, its record is forgotten; b keeps serving
    key = a.replica
    record = ReplicaRecord.model_validate_json(scraped.store.telemetry_records()[key])
    old = time.time() - FORGET_S - 60
    scraped.store.put_telemetry(
        key, record.model_copy(update={"updated_at": old, "started_at": old - 1})
    )
    serve(b, 2)
    fb.flush()
    after = scraped.counters()
    assert not any(k[1] and dict(k[1]).get("replica") == key for k in after)  # a's series ended
    for k, v in before.items():
        if k in after:
            assert after[k] >= v, f"{k} went from {v} to {after[k]}"
    # b's series went on growing, on its own
    b_requests = ("infaas_requests_total", b.replica)
    grew = [
        (before[k], after[k]) for k in after
        if k[0] == b_requests[0] and dict(k[1]).get("replica") == b.replica
    ]  # fmt: skip
    assert grew == [(7.0, 9.0)]


def test_a_scraper_reads_metrics_and_nothing_else(scraped: Scraped) -> None:
    created = scraped.http.post(
        "/v1/scrapers",
        json={"scraper_id": "prometheus"},
        headers={"Authorization": f"Bearer {scraped.admin}"},
    )
    assert created.status_code == 201 and created.json()["role"] == "metrics"
    token = created.json()["token"]
    assert "infaas_build_info" in scraped.text(token)
    auth = {"Authorization": f"Bearer {token}"}
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tenants"),
        ("GET", "/dashboard/api/traffic"),
        ("POST", "/v1/scrapers"),
    ]:
        r = scraped.http.request(method, path, headers=auth, json={"scraper_id": "x"})
        assert r.status_code in (401, 403), (method, path, r.status_code)
    assert scraped.http.post("/dashboard/login", data={"token": token}).status_code == 401
    # a tenant cannot create scrapers
    tenant = scraped.tokens.issue("demo", "tenant")
    r = scraped.http.post(
        "/v1/scrapers", json={"scraper_id": "y"}, headers={"Authorization": f"Bearer {tenant}"}
    )
    assert r.status_code == 403
