"""The EnclaveWorker Ray Serve deployment: the inference endpoint and the model preparer.

Layout of a deployment (the CLI composes the applications)::

    application "infaas-keyservice"  the key service (attested key custody)
    application "infaas-control"     route "/"          the control API (FastAPI ingress)
    application "infaas-infer"       route "/v1/infer"  EnclaveWorker replicas (this module)

An inference request goes proxy -> EnclaveWorker replica, which authenticates,
selects the variant, decrypts, batches, runs and seals (`WorkerRuntime`): the
same number of hops as plain Ray Serve. The control API reaches the workers
through a handle for everything else::

    handle = serve.get_app_handle("infaas-infer")
    job = await handle.prepare_model.remote(model_id)   # -> infaas.wire.JobStatus
    info = await handle.status.remote()                  # -> dict (see WorkerRuntime.status)

Each replica reserves its pool's resources (`settings.pools[0]` unless named),
accepts more concurrent requests than its largest batch (so batches can fill),
and talks to the key service over HTTP (`KeyServiceHttpClient`), proving itself with
fresh evidence of its measurement (`worker_measurement`, which covers its pool) at every
key release; a GPU pool's replica adds its GPU's evidence over the same nonce.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve import Application

from enclave_workers.autoscaling import LoadAgent, scaled_options
from enclave_workers.endpoint import Admission, WorkerASGI, serve_app
from enclave_workers.measurement import deployment_trust, worker_measurement
from enclave_workers.runtime import DEFAULT_MEMORY_BUDGET_BYTES, WorkerRuntime
from infaas.artifacts import ArtifactStore
from infaas.attestation.deployment import create_gpu, create_tee
from infaas.keyservice import KeyServiceHttpClient, KeyServiceTrust
from infaas.logs import configure_logging, get_logger
from infaas.settings import Pool, Settings
from infaas.store import open_store
from infaas.telemetry.flusher import Flusher
from infaas.wire import JobStatus

log = get_logger(__name__)

APP_NAME = "infaas-infer"
ROUTE_PREFIX = "/v1/infer"
DEPLOYMENT_NAME = "EnclaveWorker"


class EnclaveWorker:
    """One worker replica: a `WorkerRuntime` behind FastAPI, plus handle methods."""

    def __init__(
        self,
        settings: Settings,
        keyservice_url: str,
        pool_name: str | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        batch_wait_ms: float = 0.0,
        shared_replay_guard: bool = True,
        keyservice_trust: dict[str, Any] | None = None,
    ) -> None:
        configure_logging()  # JSON lines on stderr; Ray forwards them to the driver's output
        pool = settings.pool(pool_name) if pool_name else settings.pools[0]
        store = open_store(settings.resolved_store_url)
        artifacts = ArtifactStore(settings.data_dir / "artifacts")
        tee = create_tee(settings, worker_measurement(settings, pool=pool.name))
        transport = KeyServiceHttpClient(httpx.Client(base_url=keyservice_url, timeout=30.0))
        self._settings = settings
        self._node_id = ray.get_runtime_context().get_node_id()
        self._runtime = WorkerRuntime(
            settings,
            store,
            artifacts,
            transport,
            tee,
            keyservice=KeyServiceTrust.from_json(keyservice_trust or {}),
            gpu=create_gpu(settings, pool),
            pool=pool,
            memory_budget_bytes=memory_budget_bytes,
            batch_wait_ms=batch_wait_ms,
            shared_replay_guard=shared_replay_guard,
        )
        self._runtime.start()
        self._admission = Admission.of(settings)
        # per-request aggregates and this replica's status -> the store, once a second
        self._telemetry = Flusher(store, self._runtime.telemetry, status=self._status)
        self._telemetry.start()
        # the autoscaler's measurements and routing hints (settings.autoscaler.policy); the
        # variants the plan keeps are loaded before this constructor returns
        self._load_agent = (
            LoadAgent(self._runtime, store).start() if settings.autoscaler.policy != "off" else None
        )

    def __serve_build_asgi_app__(self) -> WorkerASGI:
        return serve_app(
            self._runtime,
            max_request_bytes=self._settings.max_request_bytes,
            admission=self._admission,
        )

    def _status(self) -> dict[str, Any]:
        return {
            **self._runtime.status(),
            "admission": self._admission.snapshot(),
            "ray_node_id": self._node_id,  # which node of the cluster this replica runs on
        }

    async def prepare_model(self, model_id: str) -> JobStatus:
        """Generate, profile and register a stored model's variants (in a thread)."""
        return await asyncio.to_thread(self._runtime.prepare_model, model_id)

    async def status(self) -> dict[str, Any]:
        """Measurement, TEE kind, attestation time, packer, queues, admission, counters."""
        return self._status()


def deployment_options(
    pool: Pool,
    max_batch: int,
    num_replicas: int,
    *,
    max_queued_requests: int = 256,
    retry_after_s: float = 1.0,
    health_check_period_s: float = 1.0,
    health_check_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Ray Serve options of EnclaveWorker on `pool` (pure; see the module docstring).

    Requests are handed to a replica up to one past what it holds
    (`max_queued_requests`), so a flood meets the replica's own shedding (a
    problem answer with ``Retry-After``); what still waits in Serve's router,
    when every replica is full, is bounded by Serve's ``max_queued_requests``
    (503 with the same ``Retry-After``), so no queue grows without bound.
    """
    actor: dict[str, Any] = {"num_cpus": pool.num_cpus}
    if pool.num_gpus:
        actor["num_gpus"] = pool.num_gpus
    if pool.custom_resources:
        actor["resources"] = dict(pool.custom_resources)
    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": num_replicas,
        "ray_actor_options": actor,
        # requests must be able to queue at the replica for a batch to fill, and reach it
        # when it is full, to be shed there
        "max_ongoing_requests": max(4 * max_batch, 16, max_queued_requests + 1),
        "max_queued_requests": max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        # Serve's access log costs ~12 % of a small request's CPU
        "logging_config": {"enable_access_log": False},
    }


def build_infer_app(
    settings: Settings,
    keyservice_url: str,
    *,
    pool_name: str | None = None,
    num_replicas: int = 1,
    memory_budget_bytes: int | None = None,
    batch_wait_ms: float = 0.0,
    shared_replay_guard: bool = True,
    keyservice: KeyServiceTrust | None = None,
) -> Application:
    """The "infaas-infer" application; run it with ``serve.run(app, name=APP_NAME,
    route_prefix=ROUTE_PREFIX)``.

    `keyservice_url` is the HTTP base URL of the key service (e.g.
    ``http://127.0.0.1:8000``). `batch_wait_ms` is how long a batch waits for
    more requests once one is there (0: batches form from what queued while
    the previous one ran). `shared_replay_guard=False` keeps replay records in
    each replica's memory only: faster on a SQLite store, but sound only for a
    single replica that is not restarted within the request window. The packer's
    memory budget is the pool's `memory_bytes` unless `memory_budget_bytes` says.
    `keyservice` is the trust bundle workers check the key service against (default:
    this tree's and settings', `deployment_trust`).
    """
    pool = settings.pool(pool_name) if pool_name else settings.pools[0]
    max_batch = max(settings.profiler.batch_sizes)
    ingress = serve.ingress()(EnclaveWorker)
    options = scaled_options(
        settings,
        deployment_options(
            pool,
            max_batch,
            num_replicas,
            max_queued_requests=settings.max_queued_requests,
            retry_after_s=settings.shed_retry_after_s,
            health_check_period_s=settings.replica_health_check_period_s,
            health_check_timeout_s=settings.replica_health_check_timeout_s,
        ),
    )
    deployment = serve.deployment(**options)(ingress)
    budget = pool.memory_bytes if memory_budget_bytes is None else memory_budget_bytes
    trust = keyservice or deployment_trust(settings)
    app: Application = deployment.bind(
        settings,
        keyservice_url,
        pool.name,
        budget,
        batch_wait_ms,
        shared_replay_guard,
        trust.to_json(),
    )
    return app
