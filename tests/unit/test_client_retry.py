"""The client's retries, deadlines and typed transport errors (sync and asyncio).

The service here is a scripted one (an httpx transport answering what each
test scripts: 503 with Retry-After, a refusal, a dropped connection): what is
under test is the client's reaction. Waits go through an injected `sleep` on a
fake clock, so they are asserted exactly and cost no time. The retry of a
real worker's answer is in tests/unit/test_client.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from infaas.client import AsyncClient, Client, RetryPolicy, problem_error
from infaas.client.transport import retry_after_s
from infaas.errors import (
    InfaasError,
    NoFeasibleVariant,
    Overloaded,
    RateLimited,
    ReplicaUnavailable,
    Timeout,
    Unreachable,
)
from infaas.types import Task, TensorSpec
from infaas.wire import envelope_from_frame

TASK = Task(name="digits", input=TensorSpec(name="x", shape=(64,)), num_classes=10)
X = np.zeros((2, 64), np.float32)

Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeTime:
    """A clock that moves only when the client sleeps."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s

    async def asleep(self, s: float) -> None:
        self.sleep(s)


@dataclass
class Scripted:
    """A service that answers the n-th ``/v1/infer`` with ``script[n]`` (the last repeats),
    and records the request id of every envelope it was sent."""

    script: list[Answer]
    request_ids: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tasks":
            return httpx.Response(200, json=[TASK.model_dump(mode="json")])
        self.request_ids.append(envelope_from_frame(request.read()).request_id)
        n = len(self.request_ids) - 1
        return self.script[min(n, len(self.script) - 1)](request)


def problem(err: InfaasError, **headers: str) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(err.status_code, json=err.to_problem(), headers=headers)

    return answer


def raising(exc: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("scripted", request=request)

    return answer


CREDS = {"api_token": "acme.secret", "request_key": b"k" * 32, "key_id": "k1"}


def client(service: Scripted, time: FakeTime, **kw: object) -> Client:
    http = httpx.Client(base_url="http://svc", transport=httpx.MockTransport(service))
    return Client("http://svc", http=http, clock=time.clock, sleep=time.sleep, **CREDS, **kw)  # type: ignore[arg-type]


def async_client(service: Scripted, time: FakeTime, **kw: object) -> AsyncClient:
    http = httpx.AsyncClient(base_url="http://svc", transport=httpx.MockTransport(service))
    return AsyncClient("http://svc", http=http, clock=time.clock, sleep=time.asleep, **CREDS, **kw)  # type: ignore[arg-type]


def test_connection_errors_are_retried_with_backoff_then_unreachable() -> None:
    service, time = Scripted([raising(httpx.ConnectError)]), FakeTime()
    policy = RetryPolicy(attempts=4, backoff_s=0.5, max_backoff_s=2.0)
    with pytest.raises(Unreachable, match="cannot reach"):
        client(service, time, retry=policy).infer(task="digits", inputs=X, latency_ms=50)
    assert len(service.request_ids) == 4 and len(set(service.request_ids)) == 4
    # full jitter: the n-th wait lies in [0, 0.5 * 2**n], capped at 2 s
    assert len(time.slept) == 3
    assert all(0 <= s <= min(2.0, 0.5 * 2**n) for n, s in enumerate(time.slept, start=1))


def test_connection_refused_then_an_answer_is_retried() -> None:
    # a refused connection, then a 429 with Retry-After, then an overloaded worker
    service = Scripted(
        [
            raising(httpx.ConnectError),
            problem(RateLimited("slow down"), **{"Retry-After": "2"}),
            problem(NoFeasibleVariant("nothing is registered", reason="unregistered")),
        ]
    )
    time = FakeTime()
    with pytest.raises(NoFeasibleVariant):
        client(service, time).infer(task="digits", inputs=X, latency_ms=50)
    assert len(set(service.request_ids)) == 3
    assert time.slept[1] >= 2.0


def test_a_refusal_that_the_deadline_cannot_be_met_is_final() -> None:
    for refusal in (
        NoFeasibleVariant("no variant meets 5 ms p99", reason="latency"),
        Overloaded("cannot finish in time", retry_after_s=1.0, reason="latency"),
    ):
        service, time = Scripted([problem(refusal, **{"Retry-After": "1"})]), FakeTime()
        with pytest.raises(type(refusal)):
            client(service, time).infer(task="digits", inputs=X, latency_ms=5)
        assert len(service.request_ids) == 1 and time.slept == []


def test_a_wait_past_the_deadline_is_not_taken() -> None:
    service = Scripted([problem(Overloaded("busy", retry_after_s=30), **{"Retry-After": "30"})])
    time = FakeTime()
    with pytest.raises(Overloaded) as e:
        client(service, time).infer(task="digits", inputs=X, latency_ms=50, timeout_s=5)
    assert e.value.retry_after_s == 30
    assert len(service.request_ids) == 1 and time.slept == []


def test_the_deadline_is_the_calls_not_each_attempts() -> None:
    # Retry-After 2 s three times fits a 5 s deadline twice: the third wait would pass it
    service = Scripted([problem(Overloaded("busy", retry_after_s=2), **{"Retry-After": "2"})])
    time = FakeTime()
    with pytest.raises(Overloaded):
        client(service, time, retry=RetryPolicy(attempts=10, backoff_s=0.01)).infer(
            task="digits", inputs=X, latency_ms=50, timeout_s=5
        )
    assert time.slept == [2.0, 2.0] and len(service.request_ids) == 3


def test_a_read_timeout_is_a_typed_timeout_and_final() -> None:
    service, time = Scripted([raising(httpx.ReadTimeout)]), FakeTime()
    with pytest.raises(Timeout):
        client(service, time).infer(task="digits", inputs=X, latency_ms=50)
    assert len(service.request_ids) == 1


def test_the_async_client_retries_503_resealing_and_honouring_retry_after() -> None:
    service = Scripted(
        [
            problem(Overloaded("busy", retry_after_s=3), **{"Retry-After": "3"}),
            raising(httpx.ConnectError),
            raising(httpx.ReadTimeout),
        ]
    )
    time = FakeTime()

    async def run() -> None:
        async with async_client(service, time) as c:
            with pytest.raises(Timeout):
                await c.infer(task="digits", inputs=X, latency_ms=50)

    asyncio.run(run())
    assert len(service.request_ids) == 3 and len(set(service.request_ids)) == 3
    assert time.slept[0] >= 3.0


def test_plain_503_and_http_dates_carry_the_wait() -> None:
    req = httpx.Request("POST", "http://svc/v1/infer")
    # Ray Serve's own back-pressure answer: plain text with Retry-After
    plain = httpx.Response(503, text="dropped", headers={"Retry-After": "4"}, request=req)
    err = problem_error(plain)
    assert isinstance(err, Overloaded) and err.retry_after_s == 4.0
    dated = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    assert retry_after_s(dated, now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_get_is_retried_but_a_post_that_creates_is_not() -> None:
    calls: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return httpx.Response(503, json=Overloaded("busy").to_problem())

    time = FakeTime()
    http = httpx.Client(base_url="http://svc", transport=httpx.MockTransport(flaky))
    c = Client("http://svc", api_token="admin.x", http=http, clock=time.clock, sleep=time.sleep)
    with pytest.raises(Overloaded):
        c.models()
    with pytest.raises(Overloaded):
        c.create_tenant("acme")
    assert calls.count("GET /v1/models") == 4 and calls.count("POST /v1/tenants") == 1
    assert json.dumps(c.credentials())  # credentials still serialise


def bare(status: int, text: str = "Internal Server Error") -> Answer:
    """What Ray Serve's proxy answers when the replica serving the call died mid-call."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=text, headers={"content-type": "text/plain"})

    return answer


def test_a_replica_dying_mid_call_is_retried_resealed_to_an_answer_within_the_deadline() -> None:
    # the replica serving the call is killed: the proxy's bare 500, then (the router still
    # tries the dead replica) a bare 502, then the replacement refuses with a typed answer
    final = NoFeasibleVariant("nothing is registered", reason="unregistered")
    service = Scripted([bare(500), bare(502, "Bad Gateway"), problem(final)])
    time = FakeTime()
    with pytest.raises(NoFeasibleVariant):
        client(service, time).infer(task="digits", inputs=X, latency_ms=50, timeout_s=10)
    # each attempt re-sealed under its own request id: none is ever answered twice
    assert len(service.request_ids) == 3 and len(set(service.request_ids)) == 3
    assert len(time.slept) == 2 and time.now - 1000.0 <= 10.0


def test_a_dead_replica_is_retried_only_while_the_deadline_allows() -> None:
    service, time = Scripted([bare(500)]), FakeTime()
    policy = RetryPolicy(attempts=100, backoff_s=1.0, max_backoff_s=4.0)
    with pytest.raises(ReplicaUnavailable) as e:
        client(service, time, retry=policy).infer(
            task="digits", inputs=X, latency_ms=50, timeout_s=10
        )
    assert e.value.detail["http_status"] == 500 and e.value.code == "replica_unavailable"
    assert len(service.request_ids) == len(time.slept) + 1 >= 3
    assert time.now - 1000.0 <= 10.0  # never a wait past the deadline


def test_the_async_client_retries_a_dead_replica_resealed() -> None:
    service, time = Scripted([bare(500), bare(500), raising(httpx.ReadTimeout)]), FakeTime()

    async def run() -> None:
        async with async_client(service, time) as c:
            with pytest.raises(Timeout):
                await c.infer(task="digits", inputs=X, latency_ms=50, timeout_s=10)

    asyncio.run(run())
    assert len(service.request_ids) == 3 and len(set(service.request_ids)) == 3


def test_an_infaas_internal_error_is_an_answer_and_not_retried() -> None:
    # a 500 with infaas's problem body was written by infaas (a worker's own failure):
    # it is final, unlike the platform's bare 500
    service, time = Scripted([problem(InfaasError("internal error in the worker"))]), FakeTime()
    with pytest.raises(InfaasError) as e:
        client(service, time).infer(task="digits", inputs=X, latency_ms=50)
    assert type(e.value) is InfaasError and e.value.code == "internal_error"
    assert len(service.request_ids) == 1 and time.slept == []
    # a bare 504 (a gateway's own timeout) is not a dead replica either
    service = Scripted([bare(504, "Gateway Timeout")])
    with pytest.raises(InfaasError) as e:
        client(service, FakeTime()).infer(task="digits", inputs=X, latency_ms=50)
    assert not isinstance(e.value, ReplicaUnavailable) and len(service.request_ids) == 1
