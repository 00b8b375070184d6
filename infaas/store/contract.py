"""The store contract: every namespace of the metadata store and its typed accessors.

`MetadataStore` names each namespace (models, variants, profiles, tasks,
tenants, jobs, API tokens, replay records, autoscaler and telemetry records,
the key service's sealed tables) and reads and writes them through typed
methods on top of eight byte-level primitives that each backend implements
(`infaas.store.backends`). No other module spells a namespace or reaches the
primitives (tests/unit/test_store_namespaces.py checks both).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from infaas.errors import Conflict, ModelNotFound, NotFound, VariantNotFound
from infaas.logs import get_logger
from infaas.types import ModelRecord, Profile, Task, Tenant, VariantSpec
from infaas.wire import JobStatus

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

# Every namespace of the store is named here and nowhere else (a test checks it).
_MODELS = "models"
_VARIANTS = "variants"
_PROFILES = "profiles"
_TENANTS = "tenants"
_TASKS = "tasks"
_JOBS = "jobs"
_TOKENS = "api_tokens"
_DASHBOARD = "dashboard"
_REPLAY = "replay"
_LOAD = "autoscaler_load"
_CONTROL = "autoscaler"
_TELEMETRY = "telemetry"
_EVENTS = "autoscaler_events"

_PLAIN_NAMESPACES = (
    _MODELS, _VARIANTS, _PROFILES, _TENANTS, _TASKS, _JOBS, _TOKENS, _DASHBOARD, _REPLAY,
    _LOAD, _CONTROL, _TELEMETRY, _EVENTS,
)  # fmt: skip

REPLAY_PRUNE_INTERVAL_S = 10.0
"""At most this often (on the callers' clock) a replay claim also drops expired records."""
EXPIRING_NAMESPACES = frozenset({_REPLAY})
"""The namespaces whose records expire (`MetadataStore._put_expiring`)."""


class SealedTable(StrEnum):
    """The key service's namespaces: records sealed under its KEK, opaque to the store."""

    PRINCIPAL = "ks_principal"
    TENANT_KEY = "ks_tenant_key"
    MODEL = "ks_model"
    MODEL_KEY = "ks_model_key"
    AUDIT = "ks_audit"
    """Each principal's private audit trail (`infaas.keyservice.audit`)."""
    LOG = "ks_log"
    TRANSPARENCY = "ks_transparency"
    """The transparency log's latest head, so the log's files cannot be rolled back alone."""
    """The hash-chained log that versions the others (`infaas.keyservice.state`)."""
    ENROLMENT = "ks_enrolment"


class MetadataStore(ABC):
    """Typed access to every namespace, on top of byte-level primitives each backend implements."""

    url: str

    # -- primitives -------------------------------------------------------------------------
    @abstractmethod
    def _put(self, namespace: str, key: str, value: bytes) -> None: ...

    @abstractmethod
    def _put_if_absent(self, namespace: str, key: str, value: bytes) -> bool: ...

    @abstractmethod
    def _get(self, namespace: str, key: str) -> bytes | None: ...

    @abstractmethod
    def _items(self, namespace: str) -> Iterator[tuple[str, bytes]]: ...

    @abstractmethod
    def _delete(self, namespace: str, key: str) -> bool: ...

    @abstractmethod
    def _put_expiring(
        self, namespace: str, key: str, value: bytes, now: float, expires_at: float
    ) -> bool:
        """Put-if-absent of a record that may be dropped once `now` passes `expires_at`."""

    def _put_expiring_many(
        self, namespace: str, records: Sequence[tuple[str, float]], value: bytes, now: float
    ) -> list[bool]:
        """`_put_expiring` of each (key, expires_at) in order, as one store operation where the
        backend has one (a transaction, a pipeline): the first of two equal keys wins."""
        return [self._put_expiring(namespace, k, value, now, t) for k, t in records]

    @abstractmethod
    def _prune_expired(self, namespace: str, now: float) -> int: ...

    @abstractmethod
    def _count(self, namespace: str) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    _replay_prune_due: float = -math.inf

    # -- typed entities ---------------------------------------------------------------------
    def _put_model(self, namespace: str, key: str, obj: BaseModel) -> None:
        self._put(namespace, key, obj.model_dump_json().encode())

    def _get_model(self, namespace: str, key: str, cls: type[M]) -> M | None:
        raw = self._get(namespace, key)
        return None if raw is None else cls.model_validate_json(raw)

    def _list_models(self, namespace: str, cls: type[M]) -> list[M]:
        return [cls.model_validate_json(v) for _, v in sorted(self._items(namespace))]

    def put_model(self, record: ModelRecord) -> None:
        self._put_model(_MODELS, record.model_id, record)

    def get_model(self, model_id: str) -> ModelRecord:
        rec = self._get_model(_MODELS, model_id, ModelRecord)
        if rec is None:
            raise ModelNotFound(f"no model {model_id!r} is registered", model_id=model_id)
        return rec

    def list_models(self, task: str | None = None) -> list[ModelRecord]:
        models = self._list_models(_MODELS, ModelRecord)
        return [m for m in models if task is None or m.task == task]

    def delete_model(self, model_id: str) -> None:
        """Forget a model with its variants and their profiles."""
        self.get_model(model_id)
        for v in self.list_variants(model_id=model_id):
            self._delete(_PROFILES, v.variant_id)
            self._delete(_VARIANTS, v.variant_id)
        self._delete(_MODELS, model_id)

    def put_variant(self, spec: VariantSpec) -> None:
        self.get_model(spec.model_id)
        self._put_model(_VARIANTS, spec.variant_id, spec)

    def get_variant(self, variant_id: str) -> VariantSpec:
        spec = self._get_model(_VARIANTS, variant_id, VariantSpec)
        if spec is None:
            raise VariantNotFound(f"no variant {variant_id!r}", variant_id=variant_id)
        return spec

    def list_variants(
        self, model_id: str | None = None, task: str | None = None
    ) -> list[VariantSpec]:
        return [
            v
            for v in self._list_models(_VARIANTS, VariantSpec)
            if (model_id is None or v.model_id == model_id) and (task is None or v.task == task)
        ]

    def put_profile(self, profile: Profile) -> None:
        self.get_variant(profile.variant_id)
        self._put_model(_PROFILES, profile.variant_id, profile)

    def get_profile(self, variant_id: str) -> Profile | None:
        return self._get_model(_PROFILES, variant_id, Profile)

    def list_profiles(self, task: str | None = None) -> list[Profile]:
        profiles = self._list_models(_PROFILES, Profile)
        if task is None:
            return profiles
        wanted = {v.variant_id for v in self.list_variants(task=task)}
        return [p for p in profiles if p.variant_id in wanted]

    def put_task(self, task: Task) -> None:
        """Define a task; redefining it with another signature is a conflict."""
        old = self._get_model(_TASKS, task.name, Task)
        if old is not None and (old.input, old.num_classes) != (task.input, task.num_classes):
            raise Conflict(
                f"task {task.name!r} exists with input {old.input.model_dump()} and "
                f"{old.num_classes} classes",
                task=task.name,
            )
        self._put_model(_TASKS, task.name, task)

    def get_task(self, name: str) -> Task:
        task = self._get_model(_TASKS, name, Task)
        if task is None:
            raise NotFound(f"no task {name!r} is registered", task=name)
        return task

    def list_tasks(self) -> list[Task]:
        return self._list_models(_TASKS, Task)

    def put_tenant(self, tenant: Tenant) -> None:
        self._put_model(_TENANTS, tenant.tenant_id, tenant)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._get_model(_TENANTS, tenant_id, Tenant)

    def list_tenants(self) -> list[Tenant]:
        return self._list_models(_TENANTS, Tenant)

    # -- preparation jobs (written by the control plane and the workers) ----------------------
    def put_job(self, job: JobStatus) -> JobStatus:
        """Store a model's job status, stamped with the current time; returns what was stored."""
        job = job.model_copy(update={"updated_at": time.time()})
        self._put_model(_JOBS, job.model_id, job)
        return job

    def claim_job(self, job: JobStatus) -> bool:
        """Store a model's first job record; False when it has one (atomic: a registration's
        claim on its model id)."""
        job = job.model_copy(update={"updated_at": time.time()})
        return self._put_if_absent(_JOBS, job.model_id, job.model_dump_json().encode())

    def get_job(self, model_id: str) -> JobStatus | None:
        return self._get_model(_JOBS, model_id, JobStatus)

    def list_jobs(self) -> list[JobStatus]:
        return self._list_models(_JOBS, JobStatus)

    def delete_job(self, model_id: str) -> bool:
        return self._delete(_JOBS, model_id)

    # -- API token records (opaque to the store: `infaas.auth` keeps hashes) ------------------
    def put_token_record(self, principal: str, record: bytes, *, replace: bool) -> bool:
        """Store a principal's token record; unless `replace`, only if it has none (atomic)."""
        if replace:
            self._put(_TOKENS, principal, record)
            return True
        return self._put_if_absent(_TOKENS, principal, record)

    def get_token_record(self, principal: str) -> bytes | None:
        return self._get(_TOKENS, principal)

    def token_records(self) -> dict[str, bytes]:
        return dict(self._items(_TOKENS))

    def delete_token_record(self, principal: str) -> bool:
        return self._delete(_TOKENS, principal)

    # -- the dashboard's session key -----------------------------------------------------------
    def dashboard_session_key(self, candidate: bytes) -> bytes | None:
        """The dashboard's session key: `candidate` unless one was stored first (atomic)."""
        self._put_if_absent(_DASHBOARD, "session_key", candidate)
        return self._get(_DASHBOARD, "session_key")

    # -- key-service records (sealed under its KEK; opaque here) ----------------------------
    def put_sealed(self, table: SealedTable, key: str, blob: bytes) -> None:
        self._put(table.value, key, blob)

    def put_sealed_if_absent(self, table: SealedTable, key: str, blob: bytes) -> bool:
        return self._put_if_absent(table.value, key, blob)

    def get_sealed(self, table: SealedTable, key: str) -> bytes | None:
        return self._get(table.value, key)

    def sealed_records(self, table: SealedTable) -> dict[str, bytes]:
        return dict(self._items(table.value))

    # -- replay records: (tenant, request id) seen, until the request would be stale anyway ---
    def claim_request(self, tenant: str, request_id: str, *, now: float, expires_at: float) -> bool:
        """Record a request id until `expires_at`; False when it is recorded already (a replay).

        Records past their expiry are dropped as part of claiming, at most once per
        `REPLAY_PRUNE_INTERVAL_S` (Redis expires them natively), so the namespace
        holds at most the requests of the last window plus that interval.
        """
        if now >= self._replay_prune_due:
            self._replay_prune_due = now + REPLAY_PRUNE_INTERVAL_S
            self.prune_replay(now)
        return self._put_expiring(_REPLAY, f"{tenant}\x1f{request_id}", b"", now, expires_at)

    def claim_requests(self, claims: Sequence[tuple[str, str, float]], *, now: float) -> list[bool]:
        """`claim_request` of each (tenant, request id, expires_at), in order, in one round
        trip (one SQLite transaction, one Redis pipeline): a replica's concurrent requests
        share it. Each outcome is exactly what `claim_request` would have answered; if the
        store fails, the error is raised and no outcome is known, so none may be trusted."""
        if now >= self._replay_prune_due:
            self._replay_prune_due = now + REPLAY_PRUNE_INTERVAL_S
            self.prune_replay(now)
        records = [(f"{tenant}\x1f{rid}", expires) for tenant, rid, expires in claims]
        return self._put_expiring_many(_REPLAY, records, b"", now)

    def prune_replay(self, now: float) -> int:
        """Drop replay records whose expiry `now` has passed; how many went."""
        return self._prune_expired(_REPLAY, now)

    def count_replay(self) -> int:
        """Replay records held now (expired ones not yet dropped included)."""
        return self._count(_REPLAY)

    # -- the autoscaler's records (types owned by the scheduler, validated here) -------------
    def _get_valid(self, namespace: str, key: str, cls: type[M]) -> M | None:
        try:
            return self._get_model(namespace, key, cls)
        except ValidationError:
            log.warning("ignoring a malformed %s/%s record", namespace, key[:80])
            return None

    def put_load_report(self, replica: str, report: BaseModel) -> None:
        self._put_model(_LOAD, replica, report)

    def load_reports(self, cls: type[M]) -> dict[str, M]:
        """Every replica's load report that parses as `cls` (malformed ones skipped)."""
        out: dict[str, M] = {}
        for key, raw in self._items(_LOAD):
            try:
                out[key] = cls.model_validate_json(raw)
            except ValidationError:
                continue
        return out

    def delete_load_report(self, replica: str) -> bool:
        return self._delete(_LOAD, replica)

    def put_replica_target(self, target: BaseModel) -> None:
        self._put_model(_CONTROL, "target", target)

    def get_replica_target(self, cls: type[M]) -> M | None:
        return self._get_valid(_CONTROL, "target", cls)

    def put_routing_hints(self, hints: BaseModel) -> None:
        self._put_model(_CONTROL, "routes", hints)

    def get_routing_hints(self, cls: type[M]) -> M | None:
        return self._get_valid(_CONTROL, "routes", cls)

    def delete_routing_hints(self) -> bool:
        return self._delete(_CONTROL, "routes")

    def clear_autoscaler_state(self) -> None:
        """Forget load reports, the replica target and routing hints (a fresh run)."""
        for ns in (_LOAD, _CONTROL):
            for key, _ in list(self._items(ns)):
                self._delete(ns, key)

    # -- telemetry and autoscaler events (the dashboard's data; JSON for its reader) ---------
    def put_telemetry(self, key: str, record: BaseModel) -> None:
        self._put_model(_TELEMETRY, key, record)

    def telemetry_records(self) -> dict[str, bytes]:
        """Raw JSON per key: replica records and windows share the namespace (by key form)."""
        return dict(self._items(_TELEMETRY))

    def delete_telemetry(self, key: str) -> bool:
        return self._delete(_TELEMETRY, key)

    def put_autoscaler_event(self, key: str, event: BaseModel) -> None:
        self._put_model(_EVENTS, key, event)

    def autoscaler_event_records(self) -> dict[str, bytes]:
        """Raw JSON per key (keys sort by time, so a reader parses only what it needs)."""
        return dict(self._items(_EVENTS))

    def delete_autoscaler_event(self, key: str) -> bool:
        return self._delete(_EVENTS, key)

    # -- census ------------------------------------------------------------------------------
    def record_counts(self) -> dict[str, int]:
        """Records held per namespace, the key service's sealed tables included (expired
        records not yet dropped count): what a soak run watches to see the store bounded."""
        names = [*_PLAIN_NAMESPACES, *(t.value for t in SealedTable)]
        return {ns: self._count(ns) for ns in names}

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
