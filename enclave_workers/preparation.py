"""Model preparation inside the worker: decrypt, generate variants, profile, seal, record.

After the control ingress stored a registration (the sealed FP32 artifact under
``model_id``, the sealed validation ``.npz`` under ``f"{model_id}.validation"``,
the `ModelRecord` and its `Task`), a worker:

1. gets the model's data key from the key service (attested release);
2. decrypts both artifacts in memory (the weights and the owner's data never
   touch disk in plaintext);
3. generates the variants (`variants.generate`), calibrating INT8 on the
   first samples of the validation inputs;
4. measures each (`profiler.profile.profile_variant`): accuracy on the labels
   when the set has ``y``, else declared accuracy times agreement with FP32;
5. seals each variant's ONNX under the model's data key with the variant id as
   the artifact name, and stores its `VariantSpec` and its `Profile`, the
   latter bound to the spec and the sealed artifact under the model's profile
   key (`authenticate`, `enclave_workers.profiles`): the only profiles any
   worker will believe.

Progress is the model's `JobStatus` record in the store (`MetadataStore.put_job`):
queued -> running (done/total) -> ready | failed. The store is untrusted, so the job's
message says what failed, never what the data was.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from infaas.artifacts import ArtifactStore
from infaas.envelope import artifact_key_id, open_artifact, seal_artifact, wipe
from infaas.errors import InfaasError, InvalidInput, InvalidModel, VariantUnsupported
from infaas.logs import get_logger
from infaas.settings import Settings
from infaas.store import MetadataStore
from infaas.types import ModelRecord, Precision, Profile, Task, VariantSpec
from infaas.wire import JobStatus
from profiler.profile import ProfileOptions, profile_variant
from variants.generate import GeneratedVariant, generate_variants

log = get_logger(__name__)

KeySource = Callable[[str, str], bytes]
"""(model id, key id) -> the model's data key (blocking; the worker's key cache)."""

Authenticate = Callable[[VariantSpec, Profile, bytearray], Profile]
"""(spec, measured profile, sealed artifact) -> the profile as stored, MACed by this worker."""


def validation_artifact(model_id: str) -> str:
    """Artifact name (and sealing name) of a model's validation set."""
    return f"{model_id}.validation"


@dataclass(frozen=True)
class PreparationOptions:
    """How a worker prepares a model: pool, largest batch and profiling effort."""

    pool: str
    max_batch: int
    profile: ProfileOptions
    validation_samples: int
    calibration_samples: int

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
        )


def _open(
    artifacts: ArtifactStore, name: str, model_id: str, keys: KeySource
) -> tuple[bytearray, str, bytes]:
    """Decrypt artifact `name` of `model_id`: (plaintext, key id, data key)."""
    blob = artifacts.get(name)
    key_id = artifact_key_id(blob)
    data_key = keys(model_id, key_id)
    return open_artifact({key_id: data_key}, name, blob), key_id, data_key


def _validation(npz: bytearray, task: Task) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            if "x" not in z.files:
                raise InvalidInput("the validation set has no 'x' array")
            x = np.asarray(z["x"])
            y = np.asarray(z["y"]) if "y" in z.files else None
    except (ValueError, OSError) as e:
        raise InvalidInput(f"the validation set is not a readable .npz: {type(e).__name__}") from e
    if x.ndim != len(task.input.shape) + 1 or tuple(x.shape[1:]) != task.input.shape:
        raise InvalidInput(
            f"validation inputs have shape {list(x.shape)}, the task {task.name!r} takes "
            f"[n, {', '.join(map(str, task.input.shape))}]"
        )
    if len(x) < 1:
        raise InvalidInput("the validation set is empty")
    return x.astype(np.float32, copy=False), y


def prepare_model(
    model_id: str,
    *,
    store: MetadataStore,
    artifacts: ArtifactStore,
    keys: KeySource,
    options: PreparationOptions,
    authenticate: Authenticate,
) -> JobStatus:
    """Generate, profile, seal and register every variant of a registered model.

    Returns the final job status (ready or failed) and stores it under
    the model id. Never raises for a problem with the model itself: the
    job says it failed and why.
    """
    job = store.put_job(JobStatus(model_id=model_id, state="running", message="decrypting"))
    try:
        record = store.get_model(model_id)
        task = store.get_task(record.task)
        return _prepare(record, task, store, artifacts, keys, options, authenticate, job)
    except InfaasError as e:
        log.warning("preparing %s failed: %s", model_id, e.message)
        return store.put_job(job.model_copy(update={"state": "failed", "message": e.message}))
    except Exception as e:  # never let a model's problem take the worker down
        log.exception("preparing %s failed unexpectedly", model_id)
        msg = f"internal error while preparing the model ({type(e).__name__})"
        return store.put_job(job.model_copy(update={"state": "failed", "message": msg}))


def _prepare(
    record: ModelRecord,
    task: Task,
    store: MetadataStore,
    artifacts: ArtifactStore,
    keys: KeySource,
    options: PreparationOptions,
    authenticate: Authenticate,
    job: JobStatus,
) -> JobStatus:
    model_id = record.model_id
    weights, blob_key_id, data_key = _open(artifacts, model_id, model_id, keys)
    npz, _, _ = _open(artifacts, validation_artifact(model_id), model_id, keys)
    try:
        x, y = _validation(npz, task)
    finally:
        wipe(npz)
    x = x[: options.validation_samples]
    y = None if y is None else y[: options.validation_samples]
    calibration = x[: options.calibration_samples]
    try:
        job = store.put_job(job.model_copy(update={"message": "generating variants"}))
        generated = generate_variants(
            record, bytes(weights), calibration, pool=options.pool, max_batch=options.max_batch
        )
    finally:
        wipe(weights)
    job = store.put_job(job.model_copy(update={"total": len(generated), "message": "profiling"}))
    reference: np.ndarray | None = None
    ready: list[VariantSpec] = []
    skipped: list[str] = []
    for v in generated:
        if isinstance(v, GeneratedVariant):
            try:
                m = profile_variant(
                    v.spec,
                    v.onnx_bytes,
                    x,
                    labels=y,
                    reference=reference,
                    declared_accuracy=record.declared_accuracy,
                    options=options.profile,
                )
            except (VariantUnsupported, InvalidModel) as e:
                # this backend cannot run this variant here; bad owner data still fails the job
                skipped.append(f"{v.spec.variant_id}: {e.message}")
            else:
                if reference is None and v.spec.precision is Precision.FP32:
                    reference = m.predictions  # the FP32 onnxruntime variant comes first
                sealed = seal_artifact(data_key, blob_key_id, v.spec.variant_id, v.onnx_bytes)
                profile = authenticate(v.spec, m.profile, sealed)
                artifacts.put(v.spec.variant_id, sealed)
                store.put_variant(v.spec)
                store.put_profile(profile)
                ready.append(v.spec)
        else:
            skipped.append(f"{v.spec.variant_id}: {v.reason}")
        job = store.put_job(job.model_copy(update={"done": job.done + 1}))
    if not ready:
        raise InvalidInput(f"no variant of {model_id} could be profiled: {'; '.join(skipped)}")
    message = f"{len(ready)} variant(s) ready"
    if skipped:
        message += f"; unsupported here: {'; '.join(skipped)}"
    log.info("prepared %s: %s", model_id, message)
    return store.put_job(job.model_copy(update={"state": "ready", "message": message}))
