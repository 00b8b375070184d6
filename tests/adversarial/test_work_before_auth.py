"""Nobody gets work done on their behalf before they are authenticated, and no flood of
made-up ids grows a worker's state.

Each attack is run as an outsider or a tenant would: a registration with a bad token
and a body that would take ages to read, oversized bodies to the key service (declared,
and streamed without a length), an inference with a bad token, and a tenant sending
thousands of requests under random key ids (each of which once cost a full attested
key release and a lock that was never freed) while honest tenants keep asking.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from enclave_workers.endpoint import serve_app
from enclave_workers.runtime import WorkerRuntime
from infaas.errors import InfaasError, Overloaded, UnknownKey
from infaas.keyservice import create_keyservice_app
from infaas.keyservice.server import MAX_REQUEST_BYTES
from infaas.settings import Settings
from infaas.store import MemoryStore
from infaas.wire import InferResponse
from tests.deployment import Deployment

MODEL = "digits-mlp-small"


class Drive:
    """Calls an ASGI app directly, counting what it reads of the body."""

    def __init__(self, chunks: int, chunk: bytes = b" " * 65536) -> None:
        self.left = chunks
        self.chunk = chunk
        self.read_bytes = 0
        self.status = 0
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        if self.left <= 0:
            return {"type": "http.disconnect"}
        self.left -= 1
        self.read_bytes += len(self.chunk)
        return {"type": "http.request", "body": self.chunk, "more_body": self.left > 0}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def post(self, app: Any, path: str, headers: dict[str, str], root: str = "") -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": root,
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        asyncio.run(app(scope, self.receive, self.send))


def test_a_registration_with_a_bad_token_reads_no_body(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, store_url="memory://")
    app = create_app(settings, store=MemoryStore())
    declared = str(settings.max_model_bytes)  # 1 GiB: within the registration limit
    for headers in (
        {"content-length": declared, "content-type": "application/json"},
        {"content-length": declared, "authorization": "Bearer owner.not-a-token"},
    ):
        drive = Drive(chunks=16384)  # a GiB, if anyone asks for it
        drive.post(app, "/v1/models", headers)
        assert drive.status == 401, drive.body
        assert drive.read_bytes == 0, f"{drive.read_bytes} body bytes read before the token"


def test_the_key_service_bounds_every_body(deployment: Deployment) -> None:
    app = create_keyservice_app(deployment.service)
    # declared too large: refused before a byte is read
    drive = Drive(chunks=1000)
    drive.post(app, "/v1/keyservice/release", {"content-length": str(64 * MAX_REQUEST_BYTES)})
    assert drive.status == 413 and drive.read_bytes == 0
    # streamed without a length: refused once over the limit, not after 64 MiB
    drive = Drive(chunks=1000)
    drive.post(app, "/v1/keyservice/release", {"content-type": "application/json"})
    assert drive.status == 413, drive.body
    assert drive.read_bytes <= MAX_REQUEST_BYTES + 65536


def test_an_inference_with_a_bad_token_reads_no_body(deployment: Deployment) -> None:
    app = serve_app(deployment.runtime, max_request_bytes=deployment.settings.max_request_bytes)
    drive = Drive(chunks=256)
    drive.post(app, "/", {"content-length": str(8 << 20), "authorization": "Bearer acme.x"})
    assert drive.status == 401 and drive.read_bytes == 0


@pytest.fixture(scope="module")
def flooded(deployment: Deployment) -> Iterator[tuple[Deployment, WorkerRuntime]]:
    """A fresh worker of the shared deployment, and a tenant that will flood it."""
    dep = deployment
    dep.add_tenant("flooder", owner="owner1", grant=(MODEL,))
    worker = dep.new_worker()
    try:
        yield dep, worker
    finally:
        asyncio.run(worker.close())


def _serve(worker: WorkerRuntime, dep: Deployment, tenant: str, **kw: Any) -> Any:
    req = dep.request(tenant, dep.x[:2])
    if "key_id" in kw:
        env = req.envelope.model_copy(update={"key_id": kw["key_id"]})
        req = req.model_copy(update={"envelope": env})
    return worker.infer(req, dep.api_tokens[tenant])


def test_random_key_ids_cost_no_release_each_and_no_memory(
    flooded: tuple[Deployment, WorkerRuntime],
) -> None:
    dep, worker = flooded

    async def run() -> tuple[list[Any], list[Any], int, int]:
        # everybody's key is released once, honestly (the flooder's own key too)
        for tenant in ("acme", "globex", "flooder"):
            assert isinstance(await _serve(worker, dep, tenant), InferResponse)
        asked = worker._keys.release_requests
        started = time.monotonic()
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        flood: list[Any] = []
        honest: list[Any] = []
        for _ in range(10):
            batch = [
                _serve(worker, dep, "flooder", key_id=f"k-{secrets.token_hex(8)}")
                for _ in range(300)
            ]
            batch += [_serve(worker, dep, t) for t in ("acme", "globex")]
            out = await asyncio.gather(*batch, return_exceptions=True)
            # keep the outcomes' types only: the errors' tracebacks are the test's, not state
            flood += [type(r) for r in out[:-2]]
            honest += [r if isinstance(r, InfaasError) else type(r) for r in out[-2:]]
            del out, batch
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        elapsed = time.monotonic() - started
        return flood, honest, worker._keys.release_requests - asked, grown, elapsed

    flood, honest, asked, grown, elapsed = asyncio.run(run())
    assert len(flood) == 3000
    # every random id is refused with a typed error, most without asking the key service
    assert set(flood) <= {UnknownKey, Overloaded}, flood
    assert flood.count(Overloaded) > 2900
    # the flooder's bucket: 8 at once, then one a second (refused releases count too)
    assert asked <= 8 + elapsed + 2, f"{asked} attested releases for 3000 random key ids"
    # the worker's per-tenant state stays within its bounds
    stats = worker._keys.stats()
    assert stats["tenant_keys"] <= 3 * 4 and stats["tenants"] <= 3
    assert grown < 4 << 20, f"the flood left {grown} bytes behind"
    # honest tenants were served all along, and the flooder's own key still works
    assert all(r is InferResponse for r in honest), honest
    # the flooder's own key still works at once: the refusals never evicted it, and its
    # lease, if it lapsed during the flood, is renewed without the unknown-id bucket
    assert isinstance(asyncio.run(_serve(worker, dep, "flooder")), InferResponse)
