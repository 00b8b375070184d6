"""The replica's shared replay record (`enclave_workers.replay.ReplayWriter`): written by
one thread for many requests at once, and still refusing every replay it is shown."""

from __future__ import annotations

import asyncio
import time

import pytest

from enclave_workers.replay import ReplayWriter
from infaas.envelope import StoreReplayGuard
from infaas.errors import ReplayedRequest, StoreUnavailable
from infaas.store import MemoryStore


def test_concurrent_claims_share_writes_and_replays_are_refused() -> None:
    store = MemoryStore()
    writer = ReplayWriter(StoreReplayGuard(store))
    now = time.time()

    async def burst() -> list[BaseException | None]:
        futures = [writer.claim("acme", f"r{i}", now, now) for i in range(200)]
        futures += [writer.claim("acme", "r7", now, now)]  # a replay inside the burst
        futures += [writer.claim("globex", "r7", now, now)]  # another tenant's id: not one
        done = await asyncio.gather(*futures, return_exceptions=True)
        return [d if isinstance(d, BaseException) else None for d in done]

    try:
        outcomes = asyncio.run(burst())
        assert outcomes[:200] == [None] * 200 and outcomes[-1] is None
        assert isinstance(outcomes[200], ReplayedRequest)
        assert store.count_replay() == 201
        assert writer.batches < 201  # claims pending at a wake-up were written together

        # another event loop of the same process is answered too
        async def again() -> None:
            await writer.claim("acme", "r3", now, now)

        with pytest.raises(ReplayedRequest):
            asyncio.run(again())
    finally:
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(again())


class _Down(StoreReplayGuard):
    def check_and_record(self, tenant: str, request_id: str, timestamp: float, now: float) -> None:
        raise StoreUnavailable("the store is down")


def test_a_store_failure_reaches_the_request_and_the_writer_goes_on() -> None:
    writer = ReplayWriter(_Down(MemoryStore()))

    async def one() -> None:
        await writer.claim("acme", "r1", time.time(), time.time())

    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                asyncio.run(one())
    finally:
        writer.close()
