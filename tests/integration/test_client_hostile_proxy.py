"""What a hostile proxy can make of the client's retry of a bare 500 / 502: little.

The client reads a 500 / 502 without an infaas problem body as the platform's (a
replica that died mid-call: `ReplicaUnavailable`) and tries again. A proxy between
the client and infaas can answer every inference that way, for ever; here a real
HTTP server on a local socket does exactly that (the client's own httpx transport,
untouched, talks to it). The client must then stop: at most `RetryPolicy.attempts`
sends (4 by default), each sealed anew under a request id of its own (so nothing the
proxy kept can be answered twice by infaas), then `ReplicaUnavailable`, within the
call's deadline. A ``Retry-After`` on the bare answer cannot stretch that: a wait
that would end past the deadline is not taken.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from infaas.client import AsyncClient, Client, RetryPolicy
from infaas.errors import ReplicaUnavailable
from infaas.types import Task, TensorSpec
from infaas.wire import envelope_from_frame

TASK = Task(name="digits", input=TensorSpec(name="x", shape=(64,)), num_classes=10)
X = np.zeros((2, 64), np.float32)
CREDS = {"api_token": "acme.secret", "request_key": b"k" * 32, "key_id": "k1"}
DEADLINE_S = 10.0


@dataclass
class Proxy:
    """Answers every ``POST /v1/infer`` with a bare `status` (plain text, `headers`)."""

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)


@pytest.fixture
def proxy() -> Iterator[tuple[Proxy, str]]:
    state = Proxy()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # the test's output stays quiet
            pass

        def _send(self, status: int, body: bytes, content_type: str, **extra: str) -> None:
            self.send_response(status)
            for name, value in {"Content-Type": content_type, **extra}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # the client's task lookup passes through
            assert self.path == "/v1/tasks"
            self._send(200, json.dumps([TASK.model_dump(mode="json")]).encode(), "application/json")

        def do_POST(self) -> None:
            assert self.path == "/v1/infer"
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.request_ids.append(envelope_from_frame(bytearray(body)).request_id)
            self._send(state.status, b"Internal Server Error", "text/plain", **state.headers)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _refused_within_the_deadline(state: Proxy, took_s: float, error: ReplicaUnavailable) -> None:
    assert error.detail["http_status"] == state.status
    assert len(set(state.request_ids)) == len(state.request_ids)  # each attempt sealed anew
    assert took_s < DEADLINE_S


@pytest.mark.parametrize("status", [500, 502])
def test_every_infer_a_bare_failure_the_client_stops_after_its_attempts(
    proxy: tuple[Proxy, str], status: int
) -> None:
    state, url = proxy
    state.status = status
    assert RetryPolicy().attempts == 4
    with Client(url, **CREDS) as client:  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(ReplicaUnavailable) as e:
            client.infer(task="digits", inputs=X, latency_ms=50, timeout_s=DEADLINE_S)
        took_s = time.monotonic() - started
    assert len(state.request_ids) == RetryPolicy().attempts
    _refused_within_the_deadline(state, took_s, e.value)


def test_the_async_client_stops_after_its_attempts_too(proxy: tuple[Proxy, str]) -> None:
    state, url = proxy
    state.status = 502

    async def run() -> tuple[float, ReplicaUnavailable]:
        async with AsyncClient(url, **CREDS) as client:  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(ReplicaUnavailable) as e:
                await client.infer(task="digits", inputs=X, latency_ms=50, timeout_s=DEADLINE_S)
            return time.monotonic() - started, e.value

    took_s, error = asyncio.run(run())
    assert len(state.request_ids) == RetryPolicy().attempts
    _refused_within_the_deadline(state, took_s, error)


def test_a_retry_after_past_the_deadline_is_not_waited_for(proxy: tuple[Proxy, str]) -> None:
    state, url = proxy
    state.headers = {"Retry-After": "3600"}  # the proxy asks for an hour
    with Client(url, **CREDS) as client:  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(ReplicaUnavailable) as e:
            client.infer(task="digits", inputs=X, latency_ms=50, timeout_s=DEADLINE_S)
        took_s = time.monotonic() - started
    assert len(state.request_ids) == 1 and e.value.retry_after_s == 3600
    _refused_within_the_deadline(state, took_s, e.value)
