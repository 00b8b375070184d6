"""Open-loop load generation against a running `infaas serve`, through the real client path.

Every request is one `infaas.AsyncClient.infer` call of its class's tenant
(sealed under the tenant's request key, the SLO in the authenticated metadata,
sent as the binary envelope frame a client sends by default, the answer opened
and checked), tried once: a refusal is a result, not something to retry. Send
times come from the trace (`bench.traces.Trace.arrivals`), not from answers:
a slow service gets a queue, as a real one would.

The tenants' clients share one HTTP connection pool of `MAX_IN_FLIGHT`
connections, and at most that many requests are in flight at once; later ones
wait here, and that wait counts in their latency. An unbounded pool is not
neutral: httpx's pool does work per event that grows with the connections and
queued requests it holds, so during a burst's backlog the generator itself took
the CPU the service needed (measured: 96 % busy, its sends up to 2.9 s late)
and turned a burst into a minute-long cascade.

A result records the class, the scheduled send time, the end-to-end latency
(from the scheduled time, so time spent queued in this client counts), the
variant that answered and the accuracy bound into its sealed answer, or the
error code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.traces import DemandClass, Trace
from infaas.client import AsyncClient
from infaas.client.retry import NO_RETRY
from infaas.errors import InfaasError

MAX_IN_FLIGHT = 128
"""Requests in flight at once (above every policy's replicas x Serve's max_ongoing_requests
here, so the service, not this client, holds the queue)."""


@dataclass(slots=True)
class Result:
    cls: int
    sent_s: float
    """Scheduled send time, seconds from the start of the trace."""
    latency_ms: float
    ok: bool
    variant: str = ""
    accuracy: float = float("nan")
    error: str = ""
    lag_ms: float = 0.0
    """How late this load generator itself sent it (its own event loop's delay)."""


def slo_met(r: Result, c: DemandClass) -> bool:
    """Answered within the latency target by a variant at least as accurate as asked."""
    return r.ok and r.latency_ms <= c.latency_ms and r.accuracy >= c.min_accuracy - 1e-9


async def run_trace(
    trace: Trace,
    credentials: Mapping[str, Path],
    base_url: str,
    inputs: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    max_requests: int | None = None,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
) -> list[Result]:
    """Send the trace's arrivals; return one `Result` per request.

    `credentials`: tenant -> its credentials file; `inputs`: task -> a batch of
    samples to draw single inputs from. `timeout_s` bounds each request from its
    scheduled send time. `on_tick(t)` is called about once a second.
    """
    arrivals = trace.arrivals(seed, max_requests)
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(0, len(inputs[trace.classes[j].task]))) for _, j in arrivals]
    results: list[Result] = []
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as http:
        clients = {
            t: AsyncClient.from_credentials(path, base_url=base_url, http=http, retry=NO_RETRY)
            for t, path in credentials.items()
        }
        for client in clients.values():
            await client.tasks()

        async def one(t_send: float, j: int, pick: int, start: float) -> None:
            lag = (time.perf_counter() - start - t_send) * 1e3
            c = trace.classes[j]
            x = inputs[c.task][pick : pick + 1]
            try:
                async with asyncio.timeout(max(0.0, timeout_s - lag / 1e3)), gate:
                    out = await clients[c.tenant].infer(
                        task=c.task, inputs=x, latency_ms=c.latency_ms,
                        min_accuracy=c.min_accuracy, timeout_s=timeout_s,
                    )  # fmt: skip
            except TimeoutError:
                results.append(
                    Result(j, t_send, timeout_s * 1e3, False, error="timeout", lag_ms=lag)
                )
                return
            except InfaasError as e:
                lat = (time.perf_counter() - start - t_send) * 1e3
                results.append(Result(j, t_send, lat, False, error=e.code, lag_ms=lag))
                return
            lat = (time.perf_counter() - start - t_send) * 1e3
            results.append(Result(j, t_send, lat, True, out.variant_id, out.accuracy, lag_ms=lag))

        start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        next_tick = 0.0
        for (t_send, j), pick in zip(arrivals, picks, strict=True):
            now = time.perf_counter() - start
            while now < t_send:
                if on_tick is not None and now >= next_tick:
                    on_tick(now)
                    next_tick = now + 1.0
                await asyncio.sleep(min(t_send - now, 0.05))
                now = time.perf_counter() - start
            tasks.append(asyncio.create_task(one(t_send, j, pick, start)))
        end = trace.duration_s
        while (now := time.perf_counter() - start) < end:
            if on_tick is not None and now >= next_tick:
                on_tick(now)
                next_tick = now + 1.0
            await asyncio.sleep(0.05)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5)
    return results
