"""Dynamic batching: requests for one variant run as one batch, across tenants when safe.

Each request brings its own samples and the largest batch its SLO allows (from
the variant's profiled latency model). A batch takes requests in arrival order
while the total stays within the smallest such limit among them, so the
tightest SLO in a batch bounds the batch. Inputs are decrypted before they get
here and outputs are encrypted after, each under its own tenant's key, so the
batcher only sees plaintext inside the worker.

Outputs are handed back by position, which is safe only if the model keeps
rows apart; a model owner's graph may not (a Concat along the batch axis hands
row i+1 to row i). So a batch holds rows of several tenants only while
`mixes_tenants()` says the variant is proven row-independent; otherwise it holds
one tenant's requests, and the others wait, in order, for a batch of their own.

A failed batch of several requests is run again one request at a time, so one
request's bad input fails that request alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from infaas.logs import get_logger
from infaas.types import LatencyModel

log = get_logger(__name__)


def batch_limit(model: LatencyModel, budget_ms: float, max_batch: int) -> int:
    """The largest batch whose predicted latency fits `budget_ms` (at least 1)."""
    if model.slope_ms <= 0:
        return max_batch
    fit = int((budget_ms - model.intercept_ms) // model.slope_ms)
    return max(1, min(max_batch, fit))


@dataclass
class _Pending:
    x: np.ndarray
    limit: int
    tenant: str
    future: asyncio.Future[np.ndarray]


def _never() -> bool:
    return False


@dataclass
class BatchStats:
    batches: int = 0
    samples: int = 0
    largest: int = 0


@dataclass
class DynamicBatcher:
    """Collects requests for one variant and runs them together in `executor`.

    `run` maps a batch (n, ...) to outputs (n, ...) (and checks they are); it is
    called from the executor's threads, one batch at a time per batcher.
    `mixes_tenants` is asked as each batch forms (the variant's proof can only
    be read once it is loaded); by default a batch is one tenant's. An `inline`
    batcher calls `run` on the event loop itself, for variants whose whole batch
    takes about as long as a hand-off to a thread and back (as plain Ray Serve's
    batch handlers do); not through an executor's future, whose completion wakes
    the loop through its self-pipe once per batch.
    """

    run: Callable[[np.ndarray], np.ndarray]
    executor: Executor
    max_batch: int = 32
    max_wait_ms: float = 2.0
    mixes_tenants: Callable[[], bool] = _never
    inline: bool = False
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _held: deque[_Pending] = field(default_factory=deque)
    """Requests taken from the queue that wait for a later batch, in arrival order."""

    async def submit(self, x: np.ndarray, limit: int | None = None, tenant: str = "") -> np.ndarray:
        """Run `x` (its first axis is the batch) of `tenant` in some batch; returns its own
        outputs."""
        n = int(x.shape[0])
        cap = self.max_batch if limit is None else max(1, min(limit, self.max_batch))
        if n > cap:
            # A request larger than its own limit runs alone rather than being refused.
            cap = n
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(x, cap, tenant, future))
        return await future

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Pending]:
        first = await self._next(None)
        assert first is not None
        batch = [first]
        total, limit = int(first.x.shape[0]), first.limit
        mixes = self.mixes_tenants()
        later: list[_Pending] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000
        while total < limit:
            remaining = deadline - loop.time()
            item = self._next_nowait() if remaining <= 0 else await self._next(remaining)
            if item is None:
                break
            if not mixes and item.tenant != first.tenant:
                later.append(item)
                continue
            n = int(item.x.shape[0])
            if total + n > min(limit, item.limit):
                later.append(item)
                break
            batch.append(item)
            total += n
            limit = min(limit, item.limit)
        if later:
            self._held.extendleft(reversed(later))
        return batch

    def _next_nowait(self) -> _Pending | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            xs = np.concatenate([p.x for p in live]) if len(live) > 1 else live[0].x
            try:
                ys = self.run(xs) if self.inline else await self._threaded(xs)
            except Exception as e:
                # the type only: a runtime's message may quote the rows
                log.warning("batch of %d failed: %s", xs.shape[0], type(e).__name__)
                if len(live) == 1:
                    _fail(live[0], e)
                else:  # which request broke it? each runs alone, and learns for itself
                    await self._one_by_one(live)
                continue
            self._count(int(xs.shape[0]))
            offset = 0
            for p in live:
                n = int(p.x.shape[0])
                if not p.future.done():
                    p.future.set_result(ys[offset : offset + n])
                offset += n

    async def _one_by_one(self, requests: list[_Pending]) -> None:
        for p in requests:
            if p.future.done():
                continue
            try:
                y = self.run(p.x) if self.inline else await self._threaded(p.x)
            except Exception as e:
                _fail(p, e)
                continue
            self._count(int(p.x.shape[0]))
            if not p.future.done():
                p.future.set_result(y)

    async def _threaded(self, xs: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, xs)

    def _count(self, n: int) -> None:
        self.stats.batches += 1
        self.stats.samples += n
        self.stats.largest = max(self.stats.largest, n)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _fail(p: _Pending, e: Exception) -> None:
    if not p.future.done():
        p.future.set_exception(e)
