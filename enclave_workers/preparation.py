"""Model preparation inside the worker: decrypt, generate variants, profile, seal, record.

After the control ingress stored a registration (the sealed FP32 artifact and
the sealed validation ``.npz``, under the owner's opaque names
`infaas.artifacts.artifact_name`, the `ModelRecord` and its `Task`), a worker:

1. gets the model's data key from the key service (attested release);
2. decrypts both artifacts in memory (the weights and the owner's data never
   touch disk in plaintext);
3. hands both to a child process (`enclave_workers.sandbox`, through a pipe,
   under memory and time limits) which parses the validation set, generates
   the variants (`variants.generate`, INT8 calibrated on the first validation
   inputs) and measures each (`profiler.profile.profile_variant`: accuracy on
   the labels when the set has ``y``, else declared accuracy times agreement
   with FP32, the declared accuracy as the owner sealed it in the set:
   ``declared_accuracy``; a model record that says otherwise fails the job),
   sending back each variant's spec, profile and ONNX bytes;
4. checks what came back, seals each variant's ONNX under the model's data key
   with the variant id as its label (stored under the owner's opaque name for
   it, `infaas.artifacts.artifact_name`), and stores its `VariantSpec` and
   its `Profile`, the latter bound to the spec and the sealed artifact under the
   model's profile key (`authenticate`, `enclave_workers.profiles`): the only
   profiles any worker will believe -- only once the child finished: a failed
   preparation registers nothing.

Progress is the model's `JobStatus` record in the store (`MetadataStore.put_job`):
queued -> running (done/total) -> ready | failed. The store is untrusted, so the job's
message says what failed, never what the data was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import ValidationError

from enclave_workers.sandbox import Emit, Sandbox, SandboxLimits
from infaas.artifacts import (
    MODEL_PART,
    VALIDATION_PART,
    ArtifactStore,
    artifact_name,
    variant_part,
)
from infaas.envelope import artifact_key_id, open_artifact, seal_artifact, wipe
from infaas.errors import InfaasError, InvalidInput, InvalidModel, VariantUnsupported
from infaas.logs import get_logger
from infaas.settings import PreparationSettings, Settings
from infaas.store import MetadataStore
from infaas.types import ModelRecord, Precision, Profile, Task, VariantSpec, variant_id_for
from infaas.wire import JobStatus
from profiler.profile import ProfileOptions, profile_variant
from variants.generate import VARIANT_KINDS, GeneratedVariant, generate_variants

log = get_logger(__name__)

KeySource = Callable[[str, str], bytes]
"""(model id, key id) -> the model's data key (blocking; the worker's key cache)."""

Authenticate = Callable[[VariantSpec, Profile, bytearray], Profile]
"""(spec, measured profile, sealed artifact) -> the profile as stored, MACed by this worker."""

_LIMITS = PreparationSettings()


def validation_artifact(model_id: str) -> str:
    """Sealing label of a model's validation set."""
    return f"{model_id}.validation"


@dataclass(frozen=True)
class PreparationOptions:
    """How a worker prepares a model: pool, largest batch, profiling effort, sandbox limits."""

    pool: str
    max_batch: int
    profile: ProfileOptions
    validation_samples: int
    calibration_samples: int
    memory_limit_bytes: int = _LIMITS.memory_limit_bytes
    time_limit_s: float = _LIMITS.time_limit_s
    poll_interval_s: float = _LIMITS.poll_interval_s

    @classmethod
    def from_settings(
        cls, settings: Settings, pool: str | None = None, quick: bool = False
    ) -> PreparationOptions:
        p = settings.profiler
        serving = settings.pool(pool) if pool else settings.pools[0]
        # time variants as this pool's replicas run them: its intra-op threads, not the
        # profiler's default (2-thread profiles over-promise a 1-thread replica)
        profile = replace(
            ProfileOptions.from_settings(p, quick=quick), threads=serving.threads_per_replica
        )
        return cls(
            pool=serving.name,
            max_batch=max(p.batch_sizes),
            profile=profile,
            validation_samples=p.validation_samples,
            calibration_samples=p.calibration_samples,
            memory_limit_bytes=settings.preparation.memory_limit_bytes,
            time_limit_s=settings.preparation.time_limit_s,
            poll_interval_s=settings.preparation.poll_interval_s,
        )

    @property
    def limits(self) -> SandboxLimits:
        return SandboxLimits(self.memory_limit_bytes, self.time_limit_s, self.poll_interval_s)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparationOptions:
        profile = dict(data["profile"])
        profile["batch_sizes"] = tuple(profile["batch_sizes"])
        return cls(**{**data, "profile": ProfileOptions(**profile)})


def _open(
    artifacts: ArtifactStore, record: ModelRecord, part: str, label: str, keys: KeySource
) -> tuple[bytearray, str, bytes]:
    """Decrypt `part` of the model (sealed as `label`): (plaintext, key id, data key)."""
    blob = artifacts.get(artifact_name(record.owner, record.model_id, part))
    key_id = artifact_key_id(blob)
    data_key = keys(record.model_id, key_id)
    return open_artifact({key_id: data_key}, label, blob), key_id, data_key


def _validation(npz: bytearray, task: Task) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(x, y or None, the declared accuracy the owner sealed or None) of a validation set."""
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            if "x" not in z.files:
                raise InvalidInput("the validation set has no 'x' array")
            x = np.asarray(z["x"])
            y = np.asarray(z["y"]) if "y" in z.files else None
            declared: float | None = None
            if "declared_accuracy" in z.files:
                sealed = np.asarray(z["declared_accuracy"], dtype=np.float64)
                if sealed.shape != () or not 0.0 <= float(sealed) <= 1.0:
                    raise InvalidInput("the sealed declared_accuracy is not one number in 0..1")
                declared = float(sealed)
    except (ValueError, OSError) as e:
        raise InvalidInput(f"the validation set is not a readable .npz: {type(e).__name__}") from e
    if x.ndim != len(task.input.shape) + 1 or tuple(x.shape[1:]) != task.input.shape:
        raise InvalidInput(
            f"validation inputs have shape {list(x.shape)}, the task {task.name!r} takes "
            f"[n, {', '.join(map(str, task.input.shape))}]"
        )
    if len(x) < 1:
        raise InvalidInput("the validation set is empty")
    return x.astype(np.float32, copy=False), y, declared


def prepare_model(
    model_id: str,
    *,
    store: MetadataStore,
    artifacts: ArtifactStore,
    keys: KeySource,
    options: PreparationOptions,
    authenticate: Authenticate,
    sandbox: Sandbox | None = None,
) -> JobStatus:
    """Generate, profile, seal and register every variant of a registered model.

    The model's own work runs in `sandbox` (one made from `options` if not
    given). Returns the final job status (ready or failed) and stores it under
    the model id. Never raises for a problem with the model itself: the job
    says it failed and why.
    """
    job = store.put_job(JobStatus(model_id=model_id, state="running", message="decrypting"))
    try:
        record = store.get_model(model_id)
        task = store.get_task(record.task)
        box = sandbox or Sandbox(options.limits)
        return _prepare(record, task, store, artifacts, keys, options, authenticate, job, box)
    except InfaasError as e:
        log.warning("preparing %s failed: %s", model_id, e.message)
        failed = {"state": "failed", "message": e.message, "code": e.code}
        return store.put_job((store.get_job(model_id) or job).model_copy(update=failed))
    except Exception as e:  # never let a model's problem take the worker down
        log.exception("preparing %s failed unexpectedly", model_id)
        msg = f"internal error while preparing the model ({type(e).__name__})"
        failed = {"state": "failed", "message": msg, "code": "internal_error"}
        return store.put_job((store.get_job(model_id) or job).model_copy(update=failed))


class _Collected:
    """What the child sent back, checked against the model it was asked to prepare."""

    def __init__(self, record: ModelRecord, options: PreparationOptions, weights: bytearray):
        self.record = record
        self.options = options
        self.blobs: dict[str, bytearray] = {hashlib.sha256(weights).hexdigest(): weights}
        self.variants: list[tuple[VariantSpec, Profile, str]] = []
        self.skipped: list[str] = []

    def take(self, msg: dict[str, Any], payload: bytearray | None) -> tuple[int, int] | None:
        """Record one message; returns (done, total) progress when it is one."""
        kind = msg["kind"]
        if kind == "blob" and payload is not None:
            if len(self.blobs) > len(VARIANT_KINDS):  # the owner's bytes and one per variant
                raise ValueError("more variant graphs than variants")
            self.blobs[hashlib.sha256(payload).hexdigest()] = payload
        elif kind == "variant":
            try:
                spec = VariantSpec.model_validate(msg["spec"])
                profile = Profile.model_validate(msg["profile"])
            except (KeyError, ValidationError) as e:
                raise ValueError(f"a variant message does not validate: {type(e).__name__}") from e
            digest = str(msg.get("sha256", ""))
            expected = variant_id_for(
                self.record.model_id, spec.precision, spec.backend, spec.quantization
            )
            if (
                spec.variant_id != expected
                or spec.model_id != self.record.model_id
                or spec.task != self.record.task
                or spec.pool != self.options.pool
                or profile.variant_id != spec.variant_id
                or profile.pool != spec.pool
                or digest not in self.blobs
            ):
                raise ValueError(f"variant {spec.variant_id!r} is not one of this model's")
            if any(v[0].variant_id == spec.variant_id for v in self.variants):
                raise ValueError(f"variant {spec.variant_id!r} came back twice")
            self.variants.append((spec, profile, digest))
        elif kind == "skipped":
            if len(self.skipped) >= len(VARIANT_KINDS):
                raise ValueError("more skipped variants than variants")
            self.skipped.append(f"{msg.get('variant_id', '?')}: {msg.get('reason', '')}"[:500])
        elif kind == "progress":
            done, total = msg.get("done", 0), msg.get("total", 0)
            if not all(isinstance(n, int) and 0 <= n <= len(VARIANT_KINDS) for n in (done, total)):
                raise ValueError("a progress message does not count variants")
            return done, total
        return None

    def wipe(self) -> None:
        for b in self.blobs.values():
            wipe(b)


def _prepare(
    record: ModelRecord,
    task: Task,
    store: MetadataStore,
    artifacts: ArtifactStore,
    keys: KeySource,
    options: PreparationOptions,
    authenticate: Authenticate,
    job: JobStatus,
    sandbox: Sandbox,
) -> JobStatus:
    model_id = record.model_id
    weights, blob_key_id, data_key = _open(artifacts, record, MODEL_PART, model_id, keys)
    collected = _Collected(record, options, weights)
    try:
        label = validation_artifact(model_id)
        npz, _, _ = _open(artifacts, record, VALIDATION_PART, label, keys)
        state = {"job": job}

        def on_message(msg: dict[str, Any], payload: bytearray | None) -> None:
            progress = collected.take(msg, payload)
            if progress is not None:
                done, total = progress
                update = {"done": done, "total": total, "message": str(msg.get("message", ""))}
                state["job"] = store.put_job(state["job"].model_copy(update=update))

        def on_wait() -> None:
            update = {"message": "waiting for this worker's previous preparation"}
            state["job"] = store.put_job(state["job"].model_copy(update=update))

        request = {"record": record.model_dump(mode="json"), "task": task.model_dump(mode="json")}
        request["options"] = options.to_json()
        try:
            run = sandbox.run(
                request,
                [weights, npz],
                on_message,
                # a variant is never much larger than its FP32 parent (QDQ adds small tensors)
                max_payload_bytes=2 * len(weights) + (1 << 20),
                on_wait=on_wait,
            )
        finally:
            wipe(npz)
        job = state["job"]
        if not collected.variants:
            raise InvalidInput(f"no variant of {model_id} came back from preparation")
        for spec, profile, digest in collected.variants:
            sealed = seal_artifact(data_key, blob_key_id, spec.variant_id, collected.blobs[digest])
            stored = authenticate(spec, profile, sealed)
            artifacts.put(
                artifact_name(record.owner, model_id, variant_part(spec.variant_id)), sealed
            )
            store.put_variant(spec)
            store.put_profile(stored)
    finally:
        collected.wipe()
    message = f"{len(collected.variants)} variant(s) ready"
    if collected.skipped:
        message += f"; unsupported here: {'; '.join(collected.skipped)}"
    log.info(
        "prepared %s in %.1f s (peak RSS %d MiB): %s",
        model_id,
        run.wall_s,
        run.peak_rss_bytes // 2**20,
        message,
    )
    return store.put_job(job.model_copy(update={"state": "ready", "message": message}))


# ------------------------------------------------------------------------------ in the child


def prepare_in_child(request: dict[str, Any], payloads: list[bytearray], emit: Emit) -> None:
    """The child's side (`enclave_workers.sandbox`): generate and profile, emit the results.

    Emits ``progress``, one ``blob`` per distinct variant graph (not the
    owner's own bytes, which the worker holds), ``variant`` (spec, profile,
    the blob's SHA-256) and ``skipped`` messages. Raises for a bad model or
    validation set: the sandbox reports the error to the worker.
    """
    record = ModelRecord.model_validate(request["record"])
    task = Task.model_validate(request["task"])
    options = PreparationOptions.from_json(request["options"])
    weights, npz = payloads
    x, y, declared = _validation(npz, task)
    # without labels, accuracy comes from the declared one: only the owner's sealed copy
    # counts, the model record beside it is the store's word
    if y is None and declared != record.declared_accuracy:
        raise InvalidInput(
            f"the model record declares accuracy {record.declared_accuracy}, the owner's sealed "
            f"validation set {declared}: a validation set without labels must carry the "
            "declared accuracy, and the record must agree with it"
        )
    x = x[: options.validation_samples]
    y = None if y is None else y[: options.validation_samples]
    calibration = x[: options.calibration_samples]
    emit({"kind": "progress", "message": "generating variants"}, None)
    own = hashlib.sha256(weights).hexdigest()
    generated = generate_variants(
        record, bytes(weights), calibration, pool=options.pool, max_batch=options.max_batch
    )
    total = len(generated)
    emit({"kind": "progress", "message": "profiling", "total": total}, None)
    sent = {own}
    reference: np.ndarray | None = None
    ready = 0
    skipped: list[str] = []
    for i, v in enumerate(generated):
        if isinstance(v, GeneratedVariant):
            try:
                m = profile_variant(
                    v.spec,
                    v.onnx_bytes,
                    x,
                    labels=y,
                    reference=reference,
                    declared_accuracy=declared,
                    options=options.profile,
                )
            except (VariantUnsupported, InvalidModel) as e:
                # this backend cannot run this variant here; bad owner data still fails the job
                skipped.append(f"{v.spec.variant_id}: {e.message}")
                skip = {"kind": "skipped", "variant_id": v.spec.variant_id, "reason": e.message}
                emit(skip, None)
            else:
                if reference is None and v.spec.precision is Precision.FP32:
                    reference = m.predictions  # the FP32 onnxruntime variant comes first
                digest = hashlib.sha256(v.onnx_bytes).hexdigest()
                if digest not in sent:
                    emit({"kind": "blob", "sha256": digest}, v.onnx_bytes)
                    sent.add(digest)
                spec = v.spec.model_dump(mode="json")
                profile = m.profile.model_dump(mode="json")
                emit({"kind": "variant", "spec": spec, "profile": profile, "sha256": digest}, None)
                ready += 1
        else:
            skipped.append(f"{v.spec.variant_id}: {v.reason}")
            emit({"kind": "skipped", "variant_id": v.spec.variant_id, "reason": v.reason}, None)
        emit({"kind": "progress", "message": "profiling", "done": i + 1, "total": total}, None)
    if not ready:
        reasons = "; ".join(skipped)
        raise InvalidInput(f"no variant of {record.model_id} could be profiled: {reasons}")
