"""The key service as a Ray Serve deployment: its own TEE workload with its own evidence.

`KeyServiceIngress` builds the service from `Settings` in the replica (store,
TEE, verifier of worker evidence, sealing key, monotonic counter), serves `create_keyservice_app`
under the route prefix ``/v1/keyservice`` and flushes its release counters
(`KeyServiceTelemetry`) to the store for the dashboard. The worker
measurements it releases keys to, one per pool, and the administrator's enrolment key
(`infaas.keyservice.enrolment`) are given by the composition root (`api.serve`), which
knows the worker deployment and the data directory; a GPU pool's workers get keys only
for composite evidence (`create_worker_verifiers`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from starlette.types import Receive, Scope, Send

from infaas.attestation.deployment import create_tee, create_worker_verifiers
from infaas.keyservice.counter import MemoryCounter, MonotonicCounter, SimulatedCounter
from infaas.keyservice.measurement import keyservice_measurement
from infaas.keyservice.sealing import gramine_sealing_key, simulated_sealing_key
from infaas.keyservice.server import create_keyservice_app
from infaas.keyservice.service import KeyService
from infaas.keyservice.telemetry import KeyServiceTelemetry
from infaas.logs import configure_logging, get_logger
from infaas.settings import Settings
from infaas.store import open_store
from infaas.telemetry.flusher import Flusher
from infaas.telemetry.recorder import Recorder
from infaas.transparency.log import TransparencyLog, derived_log_key, simulated_log_key

log = get_logger(__name__)


class _UnprefixedRoot:
    """ASGI shim: route on the full path under the Serve route prefix.

    Serve sets ``root_path`` to the application's route prefix, so Starlette would
    route on the path below it; the key service's router already carries the
    ``/v1/keyservice`` prefix, which would otherwise be needed twice.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def add_exception_handler(self, *args: Any, **kwargs: Any) -> None:
        self.app.add_exception_handler(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope, root_path="")
        await self.app(scope, receive, send)


@serve.deployment(
    name="KeyService",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
    logging_config={"enable_access_log": False},
)
@serve.ingress()
class KeyServiceIngress:
    """The key service as a Serve replica; one replica owns its store namespace."""

    def __init__(
        self,
        settings: Settings,
        worker_measurements_hex: dict[str, str],
        enrolment_key_hex: str | None,
    ) -> None:
        configure_logging()
        store = open_store(settings.resolved_store_url)
        tee = create_tee(settings, keyservice_measurement())
        verifier = create_worker_verifiers(
            settings, {pool: bytes.fromhex(m) for pool, m in worker_measurements_hex.items()}
        )
        kek = (
            simulated_sealing_key(settings.data_dir)
            if settings.tee_backend == "simulated"
            else gramine_sealing_key()
        )
        # the length of its state's log, where the host cannot roll it back (SIMULATED: a
        # file under data_dir/simulated-tee/; a TPM NV counter or a replicated ledger on
        # hardware, `infaas.keyservice.counter`); a memory store's state ends with the
        # process, and so does its counter
        counter: MonotonicCounter = (
            MemoryCounter() if store.url == "memory://" else SimulatedCounter(settings.data_dir)
        )
        if settings.tee_backend != "simulated":
            log.warning("key service rollback protection uses a SIMULATED counter")
        # what it trusts is appended to its public transparency log before it serves
        transparency = TransparencyLog(
            simulated_log_key(settings.data_dir)
            if settings.tee_backend == "simulated"
            else derived_log_key(kek),
            settings.data_dir / "transparency",
        )
        # its release policy (and so its identity) follows settings.production and the
        # administrator's enrolment key too
        self._service = KeyService(
            store,
            kek,
            tee,
            verifier,
            production=settings.production,
            counter=counter,
            transparency=transparency,
            enrolment_key=bytes.fromhex(enrolment_key_hex) if enrolment_key_hex else None,
        )
        # key releases and refusals (by code) -> the store, for the dashboard and /metrics
        self._telemetry = Recorder("keyservice")
        info: dict[str, Any] = {"measurement": tee.measurement.hex(), "tee_backend": tee.name}
        info |= {"simulated": tee.simulated, "tee_status": tee.status()}
        Flusher(store, self._telemetry, status=lambda: info).start()

    def __serve_build_asgi_app__(self) -> _UnprefixedRoot:
        app = create_keyservice_app(self._service)
        app.add_middleware(KeyServiceTelemetry, recorder=self._telemetry)
        return _UnprefixedRoot(app)
