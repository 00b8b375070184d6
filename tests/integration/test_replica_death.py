"""A Serve replica killed mid-request: what the caller sees is typed and retryable.

A real Ray Serve instance and a small deployment whose calls can be held open; the test
SIGKILLs the replica's process while a call is in flight, as the fault bench does to an
EnclaveWorker replica, and checks both ways infaas meets that death:

- over HTTP, Ray Serve's proxy answers the in-flight call with a bare 500 (no infaas code
  runs): the client's transport types it `ReplicaUnavailable`, which its retry policy
  retries, and a retry within the deadline is answered by the replacement replica;
- through a handle (the control plane's calls to the workers), the raised Ray error is
  mapped to the same `ReplicaUnavailable` (`api.serve.replica_unavailable`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infaas.client.retry import RetryPolicy, retryable, retrying
from infaas.client.transport import send
from infaas.errors import InfaasError, ReplicaUnavailable
from tests.conftest import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

APP = "doomed"


@serve.deployment(health_check_period_s=0.5, ray_actor_options={"num_cpus": 0})
class Doomed:
    """Answers its pid at once; a ``hold`` call marks a file, then waits to be killed."""

    def __init__(self, marks: str) -> None:
        self._marks = Path(marks)

    def pid(self) -> int:
        return os.getpid()

    async def hold(self) -> int:
        import asyncio

        (self._marks / str(os.getpid())).touch()
        await asyncio.sleep(120)
        return os.getpid()

    async def __call__(self, request: Any) -> dict[str, int]:
        if request.url.path.endswith("/hold"):
            return {"pid": await self.hold()}
        return {"pid": os.getpid()}


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    marks = tmp_path_factory.mktemp("holds")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False},
        )
        serve.run(Doomed.bind(str(marks)), name=APP, route_prefix="/doomed")
        yield f"http://127.0.0.1:{port}", marks
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _kill_when_held(marks: Path, pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL replica `pid` once its ``hold`` call is running."""
    deadline = time.monotonic() + timeout_s
    while not (marks / str(pid)).exists():
        assert time.monotonic() < deadline, "the held call never reached the replica"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_an_in_flight_http_call_gets_a_retryable_error_and_a_retry_is_answered(
    doomed: tuple[str, Path],
) -> None:
    url, marks = doomed
    with httpx.Client(base_url=url, timeout=60.0) as http:
        pid = send(http, "GET", "/doomed/pid").json()["pid"]
        outcome: list[BaseException] = []

        def held() -> None:
            try:
                send(http, "POST", "/doomed/hold")
            except BaseException as e:  # what the caller sees is the point
                outcome.append(e)

        caller = threading.Thread(target=held)
        caller.start()
        _kill_when_held(marks, pid)
        caller.join(timeout=60)
        assert not caller.is_alive(), "the in-flight call hung after its replica died"
        (err,) = outcome
        # Ray's proxy answered a bare 500: typed, and retryable, not an internal error
        assert isinstance(err, ReplicaUnavailable), repr(err)
        assert err.detail.get("http_status") == 500
        assert retryable(err)

        # what the client's retry does with it (each attempt bounded by what is left of
        # the deadline, as `Client.infer` does): the replacement replica answers in time
        deadline = time.monotonic() + 60.0
        for attempt in retrying(RetryPolicy(attempts=50, backoff_s=0.1, max_backoff_s=1.0),
                                deadline=deadline):  # fmt: skip
            with attempt:
                left = deadline - time.monotonic()
                new_pid = send(http, "GET", "/doomed/pid", timeout_s=left).json()["pid"]
        assert new_pid != pid


def test_a_handle_call_whose_replica_dies_maps_to_replica_unavailable(
    doomed: tuple[str, Path],
) -> None:
    from api.serve import replica_unavailable

    _, marks = doomed
    handle = serve.get_app_handle(APP)
    pid = handle.pid.remote().result(timeout_s=60)
    held = handle.hold.remote()
    _kill_when_held(marks, pid)
    with pytest.raises(Exception) as raised:
        held.result(timeout_s=60)
    typed = replica_unavailable(raised.value)
    assert isinstance(typed, ReplicaUnavailable), repr(raised.value)
    assert typed.status_code == 503 and retryable(typed)
    # any other failure is not dressed up as a dead replica
    assert replica_unavailable(ValueError("a bug")) is None
    assert replica_unavailable(InfaasError("an answer")) is None
