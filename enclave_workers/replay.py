"""The shared replay record of a replica: claims group-committed to the store.

Replay protection is two checks. The replica's memory (`MemoryReplayGuard`,
synchronous) refuses a replay at this replica at once. The store's record
(`MetadataStore.claim_requests`, put-if-absent until the request goes stale)
refuses a replay sent to *another* replica; for that, a request is answered only
after its own record is written: the answer awaits its claim before it is
sealed, so of two replicas given the same request, the one whose claim loses
seals a refusal and no output. Nothing here shortens that: there is no window in
which an answer has left and the record is not yet written.

What is cheap is how the record travels. The store's write is I/O (SQLite,
Redis) and runs off the event loop; a thread-pool hop per request (queue put, a
pool thread woken, a self-pipe write back to the loop) was the largest single
frame of a replica's loop under load (`bench/worker_profile.py`). A thread that
a claim wakes does not help (an earlier attempt): it wakes per request too. Here
the event loop batches as a database group-commits: a claim only appends to a
list on the loop; one write is in flight per loop at a time, on one thread,
carrying every claim made before it started (one SQLite transaction, one Redis
pipeline); claims made meanwhile wait for the next one, which starts from the
first one's completion callback. N requests in flight cost one hop, not N, and
each answer still waits for its own record.

A store failure fails every claim of its write (SQLite rolls the transaction
back; a Redis pipeline's outcome is unknown): each of those requests is refused
with `StoreUnavailable`, never answered without a record.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from infaas.envelope import StoreReplayGuard
from infaas.errors import ReplayedRequest, StoreUnavailable
from infaas.logs import get_logger
from infaas.store import MetadataStore

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Claim:
    tenant: str
    request_id: str
    expires_at: float
    now: float
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Group:
    """One event loop's pending claims and whether a write is in flight for it."""

    pending: list[_Claim] = field(default_factory=list)
    writing: bool = False


class SharedReplayRecord:
    """Records (tenant, request id) in the store for every replica, group-committed.

    `claim` returns a future of the running loop: done once the record is written,
    `ReplayedRequest` when it was there already, `StoreUnavailable` when the store
    failed. `writes` and `claims` count store round trips and the claims they
    carried (their ratio is the sharing).
    """

    def __init__(self, store: MetadataStore, window_s: float) -> None:
        self.guard = StoreReplayGuard(store, window_s)
        """The same record claimed one at a time (and the window's expiry rule)."""
        self.store = store
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Group] = (
            weakref.WeakKeyDictionary()
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="infaas-replay")
        self.writes = 0
        self.claims = 0

    def claim(
        self, tenant: str, request_id: str, timestamp: float, now: float
    ) -> asyncio.Future[None]:
        """Claim the pair in the store, with the other claims of this loop iteration."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _Group()
        expires = self.guard.expires_at(timestamp)
        group.pending.append(_Claim(tenant, request_id, expires, now, future))
        if not group.writing:
            group.writing = True
            # at the end of this loop iteration: the claims made in it travel together
            loop.call_soon(self._write, loop, group)
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _write(self, loop: asyncio.AbstractEventLoop, group: _Group) -> None:
        batch, group.pending = group.pending, []
        if not batch:
            group.writing = False
            return
        claims = [(c.tenant, c.request_id, c.expires_at) for c in batch]
        self.writes += 1
        self.claims += len(batch)
        try:
            job = loop.run_in_executor(self._executor, self._claim, claims, batch[-1].now)
        except RuntimeError:  # the executor is shut down: the worker is closing
            job = loop.create_future()
            job.set_exception(StoreUnavailable("the replay record is closed"))
        job.add_done_callback(lambda j: self._settle(loop, group, batch, j))

    def _claim(self, claims: list[tuple[str, str, float]], now: float) -> list[bool]:
        return self.store.claim_requests(claims, now=now)

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        group: _Group,
        batch: list[_Claim],
        job: asyncio.Future[list[bool]],
    ) -> None:
        failure = ""
        outcomes: list[bool] = []
        if job.cancelled():
            failure = "replay record not written: the write was cancelled"
        elif (e := job.exception()) is not None:
            # the type only from a driver: its message is the store's business
            failure = e.message if isinstance(e, StoreUnavailable) else type(e).__name__
            log.warning("replay record not written (%d requests refused): %s", len(batch), failure)
        else:
            outcomes = job.result()
        for i, c in enumerate(batch):
            if c.future.done():  # cancelled: its request is gone
                continue
            if failure:  # one instance per request: each is raised and sealed on its own
                c.future.set_exception(StoreUnavailable(f"replay record not written: {failure}"))
            elif outcomes[i]:
                c.future.set_result(None)
            else:
                c.future.set_exception(
                    ReplayedRequest(
                        "request id already used", tenant=c.tenant, request_id=c.request_id
                    )
                )
        self._write(loop, group)  # what was claimed meanwhile goes now, as one write
