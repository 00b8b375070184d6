"""The shared replay record (enclave_workers/replay.py): group-committed, never weaker.

Each test acts as a replayer would: the same (tenant, request id) again, at the
same replica or another one sharing the store, while the first is still being
written, or with the store failing. A claim that is not refused must have its
record in the store before it resolves.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import pytest

from enclave_workers.replay import SharedReplayRecord
from infaas.errors import ReplayedRequest, StoreUnavailable
from infaas.store import MemoryStore, open_store

NOW = 1_000_000.0


class HeldStore(MemoryStore):
    """A real memory store whose group writes wait until the test lets them through, and
    then may fail as a store does."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.go.set()
        self.entered = threading.Event()
        self.fail: Exception | None = None
        self.groups: list[int] = []

    def claim_requests(self, claims: Sequence[tuple[str, str, float]], *, now: float) -> list[bool]:
        self.entered.set()
        self.go.wait(10)
        self.groups.append(len(claims))
        if self.fail is not None:
            raise self.fail
        return super().claim_requests(claims, now=now)


@pytest.fixture
def store() -> Iterator[HeldStore]:
    s = HeldStore()
    yield s
    s.go.set()


def outcomes(results: list[object]) -> list[str]:
    return [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in results]


def test_claims_of_one_loop_iteration_share_one_write(store: HeldStore) -> None:
    record = SharedReplayRecord(store, 300.0)

    async def go() -> list[object]:
        futures = [record.claim("acme", f"r{i}", NOW, NOW) for i in range(8)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    assert outcomes(asyncio.run(go())) == ["ok"] * 8
    assert (record.writes, record.claims) == (1, 8) and store.groups == [8]
    # each record is in the store: a single claim of any of them is a replay now
    assert not any(
        store.claim_request("acme", f"r{i}", now=NOW, expires_at=NOW + 1) for i in range(8)
    )
    record.close()


def test_a_replay_in_the_same_group_or_later_is_refused(store: HeldStore) -> None:
    record = SharedReplayRecord(store, 300.0)

    async def go() -> tuple[list[object], list[object]]:
        first = await asyncio.gather(
            record.claim("acme", "r1", NOW, NOW),
            record.claim("acme", "r1", NOW, NOW),  # the same id twice in one write
            record.claim("globex", "r1", NOW, NOW),  # another tenant's id is its own
            return_exceptions=True,
        )
        later = await asyncio.gather(
            record.claim("acme", "r1", NOW, NOW + 5), return_exceptions=True
        )
        return list(first), list(later)

    first, later = asyncio.run(go())
    assert outcomes(first) == ["ok", "ReplayedRequest", "ok"]
    assert outcomes(later) == ["ReplayedRequest"]
    record.close()


def test_another_replica_sharing_the_store_refuses_the_replay() -> None:
    store = open_store("memory://")
    a, b = SharedReplayRecord(store, 300.0), SharedReplayRecord(store, 300.0)

    async def go() -> list[object]:
        await a.claim("acme", "r1", NOW, NOW)
        return list(await asyncio.gather(b.claim("acme", "r1", NOW, NOW), return_exceptions=True))

    assert outcomes(asyncio.run(go())) == ["ReplayedRequest"]
    a.close()
    b.close()


def test_two_replicas_claiming_at_once_let_exactly_one_through() -> None:
    store = open_store("memory://")
    replicas = [SharedReplayRecord(store, 300.0) for _ in range(4)]

    async def go() -> list[object]:
        claims = [r.claim("acme", f"r{i}", NOW, NOW) for i in range(20) for r in replicas]
        return list(await asyncio.gather(*claims, return_exceptions=True))

    got = outcomes(asyncio.run(go()))
    for i in range(20):  # the four replicas' claims of r{i}: one wins, three are replays
        assert sorted(got[4 * i : 4 * i + 4]) == ["ReplayedRequest"] * 3 + ["ok"]
    for r in replicas:
        r.close()


def test_a_claim_resolves_only_once_its_record_is_written(store: HeldStore) -> None:
    """While the first write is held in the store, its claim stays pending (the answer
    waits), a replay of it at another replica does not get through as well, and claims
    made meanwhile travel together in the next write."""
    record, other = SharedReplayRecord(store, 300.0), SharedReplayRecord(store, 300.0)
    store.go.clear()

    async def go() -> tuple[list[object], bool]:
        first = record.claim("acme", "r1", NOW, NOW)
        await asyncio.sleep(0)  # the write starts at the end of this iteration
        await asyncio.to_thread(store.entered.wait, 10)
        meanwhile = [record.claim("acme", f"m{i}", NOW, NOW) for i in range(5)]
        replay_elsewhere = other.claim("acme", "r1", NOW, NOW)
        await asyncio.sleep(0.05)
        pending = not first.done() and not any(f.done() for f in meanwhile)
        store.go.set()
        got = await asyncio.gather(first, *meanwhile, replay_elsewhere, return_exceptions=True)
        return list(got), pending

    got, pending = asyncio.run(go())
    assert pending
    first, *meanwhile, elsewhere = outcomes(got)
    assert meanwhile == ["ok"] * 5
    # both writes of r1 were held in the store together: whichever lands first wins, and
    # the other replica's claim of the same id is refused (never both answered)
    assert sorted([first, elsewhere]) == ["ReplayedRequest", "ok"]
    assert sorted(store.groups) == [1, 1, 5]  # r1, the replay elsewhere, the five together
    record.close()
    other.close()


@pytest.mark.parametrize(
    "failure",
    [StoreUnavailable("Redis at redis://x failed on set"), OSError("disk gone")],
    ids=["store_unavailable", "driver_error"],
)
def test_a_failed_write_refuses_every_claim_it_carried(
    store: HeldStore, failure: Exception
) -> None:
    record = SharedReplayRecord(store, 300.0)
    store.fail = failure

    async def go() -> list[object]:
        futures = [record.claim("acme", f"r{i}", NOW, NOW) for i in range(3)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    got = asyncio.run(go())
    assert outcomes(got) == ["StoreUnavailable"] * 3
    assert all(isinstance(e, StoreUnavailable) and e.status_code == 503 for e in got)
    assert len({id(e) for e in got}) == 3  # each request raises (and seals) its own
    assert "disk gone" not in str(got[0])  # a driver's message stays out of the answer
    store.fail = None  # the store is back: the same ids are not replays (none was recorded)
    assert outcomes(asyncio.run(go())) == ["ok"] * 3
    record.close()


def test_a_closed_record_refuses_rather_than_answers(store: HeldStore) -> None:
    record = SharedReplayRecord(store, 300.0)
    record.close()

    async def go() -> list[object]:
        return list(
            await asyncio.gather(record.claim("acme", "r1", NOW, NOW), return_exceptions=True)
        )

    assert outcomes(asyncio.run(go())) == ["StoreUnavailable"]


def test_records_expire_with_the_request_window(store: HeldStore) -> None:
    record = SharedReplayRecord(store, 100.0)

    async def go(now: float) -> list[object]:
        return list(
            await asyncio.gather(record.claim("acme", "r1", NOW, now), return_exceptions=True)
        )

    assert outcomes(asyncio.run(go(NOW))) == ["ok"]
    assert outcomes(asyncio.run(go(NOW + 100))) == ["ReplayedRequest"]  # a new loop, same record
    store.prune_replay(NOW + 111)  # 1.1 windows: the request is stale and refused anyway
    assert store.count_replay() == 0
    record.close()


def test_replayed_request_names_the_pair() -> None:
    record = SharedReplayRecord(open_store("memory://"), 300.0)

    async def go() -> list[object]:
        await record.claim("acme", "r1", NOW, NOW)
        return list(
            await asyncio.gather(record.claim("acme", "r1", NOW, NOW), return_exceptions=True)
        )

    (err,) = asyncio.run(go())
    assert isinstance(err, ReplayedRequest) and err.status_code == 409
    record.close()
