"""Replay records live as long as they matter, and no longer, on every store backend.

A request is refused as stale once its timestamp is more than the window old, so its
replay record may go then: the shared guard's records expire 1.1 windows after the
request's timestamp. What that must not weaken, and what it buys:

- a replay inside the window is refused (the record is still there);
- a replay after the record expired is refused anyway (by the freshness check);
- the replay namespace holds at most rate x (1.1 window + the prune interval) records
  (Redis expires them itself: rate x 1.1 window);
- the store is untrusted: a host that drops records early lets no replay through the
  worker that saw the request (its own memory guard refuses it).

SQLite and memory expire on the callers' clock, so a fake one drives them; Redis expires
on its own clock, so real time passes there (with a short window).
"""

from __future__ import annotations

import time

import pytest

from infaas.envelope import (
    Envelope,
    MemoryReplayGuard,
    StoreReplayGuard,
    open_request,
    seal_request,
)
from infaas.errors import ExpiredRequest, ReplayedRequest
from infaas.store import REPLAY_PRUNE_INTERVAL_S, MetadataStore, open_store
from tests.integration.test_store_contract import store  # noqa: F401  (the fixture)

KEYS = {"k1": b"\x11" * 32}


class Clock:
    """The workers' clock: fake where the store expires on it, real for Redis."""

    def __init__(self, backend: MetadataStore) -> None:
        self.real = backend.url.startswith("redis")
        self.t = 1_763_760_000.0

    def now(self) -> float:
        return time.time() if self.real else self.t

    def sleep(self, s: float) -> None:
        if self.real:
            time.sleep(s)
        else:
            self.t += s

    def window(self, real_s: float) -> float:
        """`real_s` on Redis's real clock (short: the test waits it out), 30 s on a fake one."""
        return real_s if self.real else 30.0


def envelope(request_id: str, timestamp: float) -> Envelope:
    return seal_request(
        KEYS, b"x", tenant="acme", task="digits", latency_ms=50, min_accuracy=0.9,
        request_id=request_id, timestamp=timestamp,
    )  # fmt: skip


def test_replay_inside_the_window_is_refused(store: MetadataStore) -> None:  # noqa: F811
    clock = Clock(store)
    w = clock.window(1.0)
    guard = StoreReplayGuard(store, w)
    env = envelope("r1", clock.now())
    open_request(env, KEYS, replay_guard=guard, window_s=w, now=clock.now())
    clock.sleep(0.6 * w)
    store.prune_replay(clock.now())  # a prune inside the window keeps the record
    assert store.count_replay() == 1
    with pytest.raises(ReplayedRequest):
        open_request(env, KEYS, replay_guard=guard, window_s=w, now=clock.now())


def test_replay_after_its_record_expired_is_refused_as_stale(store: MetadataStore) -> None:  # noqa: F811
    clock = Clock(store)
    w = clock.window(1.0)
    guard = StoreReplayGuard(store, w)
    env = envelope("r1", clock.now())
    open_request(env, KEYS, replay_guard=guard, window_s=w, now=clock.now())
    clock.sleep(1.2 * w)
    store.prune_replay(clock.now())
    assert store.count_replay() == 0  # the record is gone...
    for g in (guard, MemoryReplayGuard(w), None):  # ...and no guard is needed to refuse it
        with pytest.raises(ExpiredRequest):
            open_request(env, KEYS, replay_guard=g, window_s=w, now=clock.now())


@pytest.mark.parametrize("group", [1, 8], ids=["one-by-one", "group-committed"])
def test_replay_records_are_bounded_by_rate_times_window(
    store: MetadataStore,  # noqa: F811
    group: int,
) -> None:
    # group 8: claims travel together as a worker's replay writer sends them (claim_requests)
    clock = Clock(store)
    w = clock.window(0.3)
    guard = StoreReplayGuard(store, w)
    step = 0.005 if clock.real else 0.05  # one request per step: 200/s real, 20/s fake
    horizon = 8 * w if clock.real else 200.0
    start = clock.now()
    n, most = 0, 0
    while clock.now() - start < horizon:
        t = clock.now()
        if group == 1:
            guard.check_and_record("acme", f"r{n}", t, t)
        else:
            claims = [("acme", f"r{n + k}", guard.expires_at(t)) for k in range(group)]
            assert all(store.claim_requests(claims, now=t))
        n += group
        if n % 24 == 0:
            most = max(most, store.count_replay())
        clock.sleep(step * group)
    rate = n / (clock.now() - start)
    native = clock.real  # Redis drops records itself; the others at the next prune
    bound = rate * (1.1 * w + (0 if native else REPLAY_PRUNE_INTERVAL_S)) + 25
    assert n > 3 * bound  # the run outlasts the bound many times over: it is not trivially met
    assert rate * w / 2 < most <= bound


def test_a_host_dropping_records_lets_no_replay_through_the_same_worker() -> None:
    # the worker's pair of guards (enclave_workers.runtime): its own memory, then the store
    w = 300.0
    memory, shared = MemoryReplayGuard(w), StoreReplayGuard(open_store("memory://"), w)
    t = 1_763_760_000.0
    env = envelope("r1", t)
    open_request(env, KEYS, replay_guard=memory, window_s=w, now=t)
    shared.check_and_record("acme", "r1", t, t)
    wiped = StoreReplayGuard(open_store("memory://"), w)  # the host emptied the store
    wiped.check_and_record("acme", "r1", t, t + 1)  # the store alone would take it again
    with pytest.raises(ReplayedRequest):
        open_request(env, KEYS, replay_guard=memory, window_s=w, now=t + 1)


def test_the_memory_guard_is_bounded_by_rate_times_window() -> None:
    w, step = 30.0, 0.05
    guard = MemoryReplayGuard(w)
    t0 = t = 1_763_760_000.0
    most = 0
    for n in range(8000):  # 400 s at 20/s
        guard.check_and_record("acme", f"r{n}", t, t)
        most = max(most, len(guard._seen))
        t += step
    rate = 1 / step
    # records expire 1.1 windows after their timestamp; pruned every tenth of a window
    assert rate * w < most <= rate * (1.1 * w + w / 10) + 1
    assert t - t0 > 10 * w
