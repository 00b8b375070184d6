"""The shared replay record of a replica, written in batches by one thread.

Every request's (tenant, request id) goes to the store (`StoreReplayGuard`) so
that a replay at another replica is refused too; the worker awaits that record
before it seals the answer, so no replay is ever answered twice. The write is
I/O (SQLite, Redis) and runs off the event loop. A thread-pool hop per request
(queue put, a pool thread woken, a self-pipe write back to the loop) was a tenth
of a replica's request-path time under load (`bench/worker_profile.py`); here
one writer thread takes every claim pending when it looks, hands the outcomes
back to each event loop in one callback, and is woken by a claim only when it
has nothing left to write: under load many requests share one wake-up and one
hand-back, and nothing about the record changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from infaas.envelope import ReplayGuard


@dataclass(frozen=True, slots=True)
class _Claim:
    tenant: str
    request_id: str
    timestamp: float
    now: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


Outcomes = list[tuple[asyncio.Future[None], Exception | None]]


def _settle(done: Outcomes) -> None:
    for future, error in done:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class ReplayWriter:
    """Records request ids in `guard` (the store's) from one background thread."""

    def __init__(self, guard: ReplayGuard) -> None:
        self.guard = guard
        self._lock = threading.Lock()
        self._pending: list[_Claim] = []
        self._wake = threading.Event()
        self._idle = False
        """The writer waits for `_wake` (and only then does a claim set it: waking a thread
        per request was itself a fifth of the loop's time under load)."""
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        """Wake-ups that wrote at least one record (claims / batches: the sharing)."""

    def claim(
        self, tenant: str, request_id: str, timestamp: float, now: float
    ) -> asyncio.Future[None]:
        """A future of the running loop: done once the record is written, `ReplayedRequest`
        when it was there already (or the store's error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the replay writer is closed")
            self._pending.append(_Claim(tenant, request_id, timestamp, now, loop, future))
            wake, self._idle = self._idle, False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="infaas-replay-writer", daemon=True
                )
                self._thread.start()
        if wake:
            self._wake.set()
        return future

    def close(self) -> None:
        """Write what is pending, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                closed = self._closed
                if not batch and not closed:
                    self._idle = True
                    self._wake.clear()
            if batch:
                self._write(batch)  # then look again: claims made meanwhile woke no one
            elif closed:
                return
            else:
                self._wake.wait()

    def _write(self, batch: list[_Claim]) -> None:
        self.batches += 1
        outcomes: dict[asyncio.AbstractEventLoop, Outcomes] = {}
        for c in batch:
            error: Exception | None = None
            try:
                self.guard.check_and_record(c.tenant, c.request_id, c.timestamp, c.now)
            except Exception as e:  # ReplayedRequest, or the store's own failure
                error = e
            outcomes.setdefault(c.loop, []).append((c.future, error))
        for loop, done in outcomes.items():
            # a loop that has closed raises: nobody waits for those outcomes any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done)
