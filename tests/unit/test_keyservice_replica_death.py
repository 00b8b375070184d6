"""A key service replica that dies mid-call, as a worker meets it.

Ray Serve's proxy answers the worker's in-flight key-service call with a bare 500 (no
infaas code runs): the worker's key-service client types it `ReplicaUnavailable` (503,
retryable by the tenant's client) instead of letting an untyped HTTP error become the
tenant's `internal_error`, and the worker's key cache asks again at the next need instead
of pausing the model's keys for a minute as it does after a refusal.
"""

from __future__ import annotations

import httpx
import pytest

from enclave_workers.keycache import KeyCache
from infaas.client.retry import retryable
from infaas.errors import InfaasError, PermissionDenied, ReplicaUnavailable, RollbackDetected
from infaas.keyservice import KeyRequest, KeyServiceHttpClient, ReleasedKey


def _keyservice(answer: httpx.Response) -> KeyServiceHttpClient:
    http = httpx.Client(base_url="http://ks", transport=httpx.MockTransport(lambda request: answer))
    return KeyServiceHttpClient(http)


def test_the_proxys_bare_500_is_a_dead_replica_and_a_problem_stays_itself() -> None:
    for status in (500, 502):
        with pytest.raises(ReplicaUnavailable) as e:
            _keyservice(httpx.Response(status, text="Internal Server Error")).issue_nonce()
        assert e.value.status_code == 503 and retryable(e.value)
    # the key service's own 500 (a problem body) is its answer: not dressed up
    rolled = RollbackDetected("state rolled back")
    with pytest.raises(RollbackDetected):
        _keyservice(httpx.Response(500, json=rolled.to_problem())).issue_nonce()


class Failing:
    """A worker key client whose key service fails every release with `error`."""

    def __init__(self, error: InfaasError) -> None:
        self.error = error
        self.calls = 0

    def fetch(self, requests: list[KeyRequest]) -> list[ReleasedKey]:
        self.calls += 1
        raise self.error


def test_a_dead_key_service_is_asked_again_a_refusal_is_not() -> None:
    dead = Failing(ReplicaUnavailable("the key service's replica went away"))
    cache = KeyCache(dead)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(ReplicaUnavailable):
            cache.profile_key("m")
    assert dead.calls == 2  # no minute's pause: the new replica is asked at once
    with pytest.raises(ReplicaUnavailable):
        cache.prefetch_models(["m"])
    assert dead.calls == 3

    refusing = Failing(PermissionDenied("not granted"))
    cache = KeyCache(refusing)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        cache.profile_key("m")
    with pytest.raises(InfaasError):
        cache.profile_key("m")
    assert refusing.calls == 1  # refused: not asked again for a minute
