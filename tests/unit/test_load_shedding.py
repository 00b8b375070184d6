"""Load shedding at the worker: a flood beyond what a replica holds gets 503 with
Retry-After at once, through the shared HTTP edge, instead of an ever-growing queue.

Driven as Ray Serve's proxy drives a replica (raw ASGI) against a real worker
runtime of the shared deployment. A request whose body has not finished
arriving is held by the replica, so the test fills the replica deterministically
with slow senders, then floods it, then lets the held requests finish.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from enclave_workers.deployment import deployment_options
from enclave_workers.endpoint import Admission, serve_app
from infaas.client import problem_error
from infaas.errors import Overloaded
from infaas.settings import Pool
from tests.deployment import Deployment


class Exchange:
    """One HTTP exchange as raw ASGI: the body arrives in two parts, the second only when
    `release` is set; the answer is collected."""

    def __init__(self, body: bytes, token: str) -> None:
        self.body = body
        self.token = token
        self.release = asyncio.Event()
        self.sent_first = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.answer = b""

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "POST",
            "path": "/v1/infer",
            "root_path": "/v1/infer",
            "headers": [
                (b"authorization", f"Bearer {self.token}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
            ],
        }

    async def receive(self) -> dict[str, Any]:
        half = len(self.body) // 2
        if not self.sent_first:
            self.sent_first = True
            return {"type": "http.request", "body": self.body[:half], "more_body": True}
        await self.release.wait()
        return {"type": "http.request", "body": self.body[half:], "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.answer += message.get("body", b"")


def test_a_flood_beyond_the_replicas_limit_is_shed_with_retry_after(
    deployment: Deployment,
) -> None:
    dep = deployment
    runtime = dep.new_worker()
    admission = Admission(limit=3, retry_after_s=2.5)
    app = serve_app(runtime, max_request_bytes=1 << 20, admission=admission)
    token = dep.api_tokens["acme"]

    def exchange() -> Exchange:
        body = dep.request("acme", dep.x[:1]).model_dump_json().encode()
        return Exchange(body, token)

    async def flood() -> tuple[list[Exchange], list[Exchange], Exchange]:
        held = [exchange() for _ in range(3)]
        tasks = [asyncio.create_task(app(h.scope(), h.receive, h.send)) for h in held]
        while admission.held < 3:
            await asyncio.sleep(0.001)
        # the replica holds its limit: a flood of ten more is answered at once, none queued
        flooded = [exchange() for _ in range(10)]
        for f in flooded:
            f.release.set()
            await asyncio.wait_for(app(f.scope(), f.receive, f.send), timeout=5)
        assert admission.held == 3
        # the held requests finish, and the replica takes requests again
        for h in held:
            h.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        after = exchange()
        after.release.set()
        await asyncio.wait_for(app(after.scope(), after.receive, after.send), timeout=60)
        return held, flooded, after

    try:
        held, flooded, after = asyncio.run(flood())
    finally:
        asyncio.run(runtime.close())

    for f in flooded:
        assert f.status == 503
        assert f.headers["retry-after"] == "3"  # whole seconds, rounded up
        assert f.headers["content-type"] == "application/problem+json"  # RFC 9457, the edge
        response = httpx.Response(
            503,
            headers=f.headers,
            content=f.answer,
            request=httpx.Request("POST", "http://t/v1/infer"),
        )
        err = problem_error(response)  # what the client makes of it: retryable, with its wait
        assert isinstance(err, Overloaded) and err.retry_after_s == 3.0
        assert json.loads(f.answer)["code"] == "overloaded"
    assert admission.shed == 10 and admission.held == 0
    assert [h.status for h in held] == [200, 200, 200]
    assert after.status == 200


def test_the_worker_deployment_bounds_serves_own_queue_too() -> None:
    pool = Pool(name="cpu", num_cpus=1.0, cost_per_replica_s=1.0)
    options = deployment_options(pool, 32, 1, max_queued_requests=64, retry_after_s=2.0)
    # the replica is handed one past its limit (so it sheds, with a problem answer) ...
    assert options["max_ongoing_requests"] == 128  # and never fewer than 4 batches
    assert deployment_options(pool, 8, 1, max_queued_requests=64)["max_ongoing_requests"] == 65
    # ... and what waits in Serve's router when every replica is full is bounded too
    assert options["max_queued_requests"] == 64
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.0}


def test_an_admission_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Admission(limit=0)
