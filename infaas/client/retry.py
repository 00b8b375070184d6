"""When and how long the client waits before trying a call again (tenacity underneath).

A call is retried when the service is unreachable or answers 429 / 503
(overloaded, store or TEE unavailable, the replica serving it died:
`ReplicaUnavailable`, which the transport also makes of the serving platform's
bare 500 / 502), at most `RetryPolicy.attempts` times in all, never past the
call's deadline:

- the wait is full-jitter exponential backoff (tenacity's
  `wait_random_exponential`), but never shorter than the answer's
  ``Retry-After``;
- a refusal that says the deadline cannot be met (``reason: latency``) is
  final, and so is a wait that would end past the deadline: the caller hears
  the refusal now rather than a `Timeout` later;
- a `Timeout` is final: the deadline is spent.

Each attempt of an inference is sealed anew, with a new request id (the
worker's replay guard refuses a re-sent envelope): the retry wraps sealing and
sending, never a sealed body. `sleep` and `clock` are injectable, so the waits
are tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, Retrying
from tenacity.retry import retry_if_exception
from tenacity.stop import stop_after_attempt
from tenacity.wait import wait_random_exponential

from infaas.errors import InfaasError, Timeout, Unreachable

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is tried (``attempts=1``: never retried)."""

    attempts: int = 4
    backoff_s: float = 0.2
    """Scale of the exponential backoff: the n-th wait is uniform in [0, backoff_s * 2**n]."""
    max_backoff_s: float = 10.0


NO_RETRY = RetryPolicy(attempts=1)


def is_deadline_refusal(exc: InfaasError) -> bool:
    """The service said no variant can meet the request's latency target: trying again
    cannot help."""
    return exc.detail.get("reason") == "latency"


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, Timeout) or not isinstance(exc, InfaasError):
        return False
    if isinstance(exc, Unreachable):
        return True
    return exc.status_code in RETRY_STATUSES and not is_deadline_refusal(exc)


class _Wait:
    """Backoff with jitter, at least the service's ``Retry-After``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = wait_random_exponential(
            multiplier=policy.backoff_s, max=policy.max_backoff_s
        )

    def __call__(self, state: RetryCallState) -> float:
        backoff = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after_s", None)
        return max(backoff, float(hint)) if hint is not None else backoff


class _Stop:
    """After the last attempt, or when the next wait would end past the deadline."""

    def __init__(self, policy: RetryPolicy, deadline: float | None, clock: Callable[[], float]):
        self._attempts = stop_after_attempt(policy.attempts)
        self._deadline = deadline
        self._clock = clock

    def __call__(self, state: RetryCallState) -> bool:
        if self._attempts(state):
            return True
        return self._deadline is not None and (
            self._clock() + state.upcoming_sleep > self._deadline
        )


def _options(
    policy: RetryPolicy, deadline: float | None, clock: Callable[[], float]
) -> dict[str, Any]:
    return {
        "retry": retry_if_exception(retryable),
        "wait": _Wait(policy),
        "stop": _Stop(policy, deadline, clock),
        "reraise": True,
    }


def retrying(
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """The attempts of one call (``for attempt in retrying(...): with attempt: ...``)."""
    return Retrying(sleep=sleep, **_options(policy, deadline, clock))


def async_retrying(
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """`retrying` for coroutines (``async for attempt in async_retrying(...)``)."""
    return AsyncRetrying(sleep=sleep, **_options(policy, deadline, clock))
