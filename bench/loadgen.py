"""Open-loop load generation against a running `infaas serve`, through the real client path.

Every request is sealed by `infaas.Client.seal_infer` (AES-GCM envelope under
its tenant's request key, the SLO in the authenticated metadata), POSTed to
``/v1/infer`` with the tenant's API token on a shared asyncio httpx client, and
the answer opened and checked by `Client.open_infer`. Send times come from the
trace (`bench.traces.Trace.arrivals`), not from answers: a slow service gets a
queue, as a real one would.

A result records the class, the scheduled send time, the end-to-end latency
(from the scheduled time, so time spent queued in this client counts), the
variant that answered and its accuracy, or the error code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import numpy as np

from bench.traces import DemandClass, Trace
from infaas.client import Client, problem_error


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
    clients: Mapping[str, Client],
    inputs: Mapping[str, np.ndarray],
    accuracy: Mapping[str, float],
    *,
    seed: int = 0,
    max_requests: int | None = None,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
) -> list[Result]:
    """Send the trace's arrivals; return one `Result` per request.

    `clients`: tenant -> a Client with its credentials; `inputs`: task -> a
    batch of samples to draw single inputs from; `accuracy`: variant id ->
    profiled accuracy. `on_tick(t)` is called about once a second.
    """
    arrivals = trace.arrivals(seed, max_requests)
    base = next(iter(clients.values())).base_url
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(0, len(inputs[trace.classes[j].task]))) for _, j in arrivals]
    results: list[Result] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as http:

        async def one(t_send: float, j: int, pick: int, start: float) -> None:
            lag = (time.perf_counter() - start - t_send) * 1e3
            c = trace.classes[j]
            client = clients[c.tenant]
            x = inputs[c.task][pick : pick + 1]
            request = client.seal_infer(
                task=c.task, inputs=x, latency_ms=c.latency_ms, min_accuracy=c.min_accuracy
            )
            body = request.model_dump_json().encode()
            headers = {
                "Authorization": f"Bearer {client.api_token}",
                "Content-Type": "application/json",
            }
            try:
                r = await http.post(client.infer_path, content=body, headers=headers)
                lat = (time.perf_counter() - start - t_send) * 1e3
                if r.status_code >= 300:
                    err = problem_error(r)
                    results.append(Result(j, t_send, lat, False, error=err.code, lag_ms=lag))
                    return
                from infaas.wire import InferResponse

                resp = InferResponse.model_validate_json(r.content)
                client.open_infer(request, resp)
                lat = (time.perf_counter() - start - t_send) * 1e3
                results.append(
                    Result(
                        j,
                        t_send,
                        lat,
                        True,
                        resp.variant_id,
                        accuracy.get(resp.variant_id, float("nan")),
                        lag_ms=lag,
                    )
                )
            except httpx.TimeoutException:
                results.append(
                    Result(j, t_send, timeout_s * 1e3, False, error="timeout", lag_ms=lag)
                )
            except httpx.TransportError as e:
                lat = (time.perf_counter() - start - t_send) * 1e3
                results.append(Result(j, t_send, lat, False, error=type(e).__name__, lag_ms=lag))

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
