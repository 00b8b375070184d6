"""Settings: `configs/default.yaml` (or the file `INFAAS_CONFIG` names), then
`INFAAS_*` environment variables, then explicit keyword arguments.

This is the only module that reads the environment. Reach settings through
`get_settings()`; pass them down by constructor, never as a module global.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from infaas.attestation.policy import GpuPolicy

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = REPO_CONFIGS / "default.yaml"


class GpuAttestation(BaseModel):
    """How the GPUs of a GPU pool prove themselves to the key service.

    A worker of the pool presents composite evidence: its CPU TEE's quote and its GPU's
    SPDM report, both bound to the one verifier nonce; the key service releases keys to
    it only for that composite, judged by `policy` (recorded reference measurements per
    block and the pinned device identity roots).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["simulated"] = Field(
        "simulated",
        description="simulated: a per-deployment simulated GPU (data_dir/simulated-gpu, "
        "NOT confidential; production settings refuse it). No hardware GPU backend is "
        "wired yet: the verifier checks genuine Hopper reports, nothing here produces one",
    )
    policy: GpuPolicy = Field(
        default_factory=GpuPolicy,
        description="what the pool's GPU evidence must show: reference measurements by "
        "block index, pinned device identity roots",
    )


class Pool(BaseModel):
    """A hardware pool: a Ray resource shape workers of this pool ask for, and its price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs one replica reserves")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs one replica reserves")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources, e.g. {'tee_tdx': 1}"
    )
    cost_per_replica_s: float = Field(gt=0.0, description="price of one replica for one second")
    threads_per_replica: int = Field(1, ge=1, le=64, description="intra-op threads per session")
    memory_bytes: int = Field(
        4 * 1024**3, gt=0, description="model packer budget of one replica: loaded variants fit it"
    )
    gpu_attestation: GpuAttestation | None = Field(
        None,
        description="GPU pools: how their GPUs are attested; a worker of the pool gets keys "
        "only for composite evidence (CPU TEE + GPU, one nonce)",
    )

    @model_validator(mode="after")
    def _attested_gpus(self) -> Pool:
        if self.num_gpus > 0 and self.gpu_attestation is None:
            raise ValueError(
                f"pool {self.name!r} reserves GPUs but says nothing of gpu_attestation: "
                "plaintext would reach a device nobody attested"
            )
        return self


class ProfilerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_sizes: tuple[int, ...] = Field((1, 2, 4, 8, 16, 32), min_length=1)
    warmup_runs: int = Field(3, ge=0)
    min_runs: int = Field(10, ge=2, description="timed runs per batch size, at least")
    min_time_s: float = Field(0.5, gt=0, description="time spent per batch size, at least")
    threads: int = Field(
        2,
        ge=1,
        le=64,
        description="intra-op threads of `infaas profile` (workers profile "
        "with their pool's threads_per_replica)",
    )
    validation_samples: int = Field(256, ge=8)
    calibration_samples: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _sorted(self) -> ProfilerSettings:
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError("batch_sizes must be distinct, positive and ascending")
        return self


class PreparationSettings(BaseModel):
    """Limits of the child process that prepares (converts, quantizes, profiles) a model.

    An owner's graph is untrusted code for the runtimes: a decompression bomb
    (a huge ``ConstantOfShape``/``Expand`` output) or a ``Loop`` with a huge trip
    count must fail its own job, not the worker. onnxruntime and OpenVINO reserve
    far more virtual memory than they touch, so the memory limit is on resident
    memory (the child's whole process tree, polled), not on address space.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Honest peaks measured on the 224x224 zoo (bench/preparation.py, default profiler
    # settings, one thread, 2 shared cores at load 11-16): peak RSS of the child's tree /
    # wall time: digits 258-268 MiB / 33 s, ResNet-18 1333 MiB / 463 s, ResNet-34
    # 2058 MiB / 653 s, ResNet-50 3662 MiB / 1259 s. The limits leave 1.6x and 2.9x over
    # ResNet-50; a deployment serving larger models raises them.
    memory_limit_bytes: int = Field(
        6 * 1024**3,
        ge=64 * 1024**2,
        description="resident memory (child and its descendants) a preparation may use",
    )
    time_limit_s: float = Field(
        3600.0, gt=0, description="wall time one preparation may take, profiling included"
    )
    poll_interval_s: float = Field(
        0.02, gt=0, le=1.0, description="how often the watchdog reads the child's memory"
    )


class SLODefaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(200.0, gt=0)
    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)


class AutoscalerSettings(BaseModel):
    """The autoscaler: its control loop, how Serve applies it, and its policies' knobs.

    One model for all of it: the control loop (`enclave_workers.autoscaling`)
    reads it from `Settings.autoscaler`, and the pure policies
    (`scheduler.autoscaler`) take it in their context. The policy's budgets
    follow the worker pool unless set (`for_pool`). Units are in the names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- the control loop and Serve
    policy: Literal["off", "infaas", "static", "static-modelless", "queue", "infaas-style"] = Field(
        "off",
        description="off: fixed replicas, per-request selection only; infaas: SLO-aware "
        "policy; static: FP32, static_replicas; static-modelless: each class's cheapest "
        "variant meeting its floor, static_replicas; queue: FP32, Ray Serve's queue-length "
        "autoscaler; infaas-style: INFaaS's own autoscaler (scheduler.baselines)",
    )
    tick_s: float = Field(1.0, gt=0, description="control loop period")
    min_replicas: int = Field(1, ge=0, description="worker replicas, at least")
    max_replicas: int = Field(8, ge=1, description="worker replicas, at most")
    rate_window_s: float = Field(
        3.0,
        gt=0,
        description="control loop: arrival rates are counted over this window (a one-second "
        "count of Poisson arrivals is too noisy to read a trend from)",
    )
    forget_class_s: float = Field(
        600.0, gt=0, description="control loop: a demand class silent this long is forgotten"
    )
    request_overhead_ms: float = Field(
        0.0,
        ge=0,
        description="replica time one request costs outside the model (HTTP, envelope, "
        "scheduling): profiles measure the model alone; the control loop adds it",
    )
    # --- budgets (derived from the pool and max_replicas unless set: `for_pool`)
    cpu_budget: float = Field(
        2.0, gt=0, description="CPUs all replicas together may reserve (pool: max_replicas x cpus)"
    )
    replica_memory_bytes: int = Field(
        4 * 1024**3,
        gt=0,
        description="packer memory budget of one worker replica (pool: its memory_bytes)",
    )
    max_replicas_per_pool: int = Field(
        16, ge=1, description="replicas of one pool, at most (pool: max_replicas)"
    )
    max_replicas_per_variant: int = Field(
        8, ge=1, description="baselines: replicas per variant, at most (pool: max_replicas)"
    )
    # --- the infaas policy
    target_utilisation: float = Field(
        0.7, gt=0, le=1, description="planned busy fraction of a replica (queueing headroom)"
    )
    burst_window_s: float = Field(10.0, gt=0, description="window of the recent peak and trend")
    trend_lookahead_s: float = Field(5.0, ge=0, description="how far ahead the trend is followed")
    trend_max_factor: float = Field(
        2.0, ge=1, description="a rise is followed to at most this many times the current rate"
    )
    downscale_delay_s: float = Field(
        30.0, ge=0, description="infaas: demand must stay low this long before capacity falls"
    )
    idle_to_zero_s: float = Field(120.0, ge=0, description="idle this long: no replica at all")
    switch_penalty: float = Field(
        0.1, ge=0, description="allocation cost of loading a variant on a new replica"
    )
    unserved_penalty_per_rps: float = Field(
        1000.0, gt=0, description="allocation cost of one request per second left unserved"
    )
    queue_guard_ongoing_requests: float = Field(
        8.0,
        gt=0,
        description="infaas: at least outstanding / this many worker replicas, a reactive "
        "floor under the model-based plan when the measured queue says it is too optimistic "
        "(the largest queue of the last downscale_delay_s)",
    )
    solver: Literal["auto", "milp", "greedy"] = Field(
        "auto",
        description="the allocation's solver; auto: the MILP on problems small enough to "
        "finish within its limit (scheduler.allocation.solve_auto), greedy beyond",
    )
    solver_time_limit_s: float = Field(
        1.0, gt=0, description="MILP time limit; past it the better of incumbent and greedy"
    )
    # --- the baselines
    static_replicas: int = Field(2, ge=1, description="static: worker replicas, fixed")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="queue: ongoing requests per replica"
    )
    queue_upscale_delay_s: float = Field(30.0, ge=0, description="queue: Ray Serve's default")
    queue_downscale_delay_s: float = Field(600.0, ge=0, description="queue: Ray Serve's default")

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalerSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaler min_replicas must not exceed max_replicas")
        return self

    def for_pool(self, pool: Pool) -> AutoscalerSettings:
        """These settings with the budgets not set explicitly derived from `pool`.

        The CPU budget is `max_replicas` replicas of the pool (1 CPU when its
        replicas reserve none), a replica's memory is the pool's packer budget,
        and no pool or variant gets more than `max_replicas` replicas.
        """
        derived: dict[str, Any] = {
            "cpu_budget": self.max_replicas * pool.num_cpus if pool.num_cpus > 0 else 1.0,
            "replica_memory_bytes": pool.memory_bytes,
            "max_replicas_per_pool": self.max_replicas,
            "max_replicas_per_variant": self.max_replicas,
        }
        unset = {k: v for k, v in derived.items() if k not in self.model_fields_set}
        return self.model_validate(self.model_dump() | unset)


class Settings(BaseSettings):
    """Everything a deployment of infaas is configured by."""

    model_config = SettingsConfigDict(
        env_prefix="INFAAS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(
        Path("data"),
        description="zoo, encrypted artifacts, embedded store; a relative path is resolved "
        "against the working directory when the settings are made, so every replica, in "
        "whatever directory or on whatever node, reaches the same files",
    )
    store_url: str = Field(
        "",
        description="'sqlite:///PATH', 'memory://' or 'redis://HOST:PORT/DB'; "
        "empty means sqlite under data_dir",
    )
    tee_backend: Literal["simulated", "sgx-gramine", "tdx-configfs"] = "simulated"
    production: bool = Field(
        False, description="refuse anything insecure: the simulated TEE, debug evidence"
    )
    attestation_policy: Path | None = Field(None, description="YAML attestation policy file")
    attestation_collateral: Path | None = Field(
        None,
        description="Intel PCS collateral JSON (one, or a bundle per FMSPC) the operator "
        "refreshes; required in production; nothing is fetched at run time",
    )
    ray_address: str | None = None
    num_cpus: int = Field(2, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest inference request body"
    )
    max_model_bytes: int = Field(
        1 << 30, ge=1024, description="largest sealed model (or validation set) to register"
    )
    request_window_s: float = Field(300.0, gt=0, description="replay window for request ids")
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="inference requests one worker replica holds at once, running or waiting; "
        "beyond it a request is answered 503 with Retry-After at once instead of queuing",
    )
    shed_retry_after_s: float = Field(
        1.0, gt=0, description="the Retry-After of a request shed because the queue is full"
    )
    replica_health_check_period_s: float = Field(
        1.0,
        gt=0,
        description="how often Serve's controller checks each worker replica (Ray Serve's "
        "default: 10 s); a dead replica is noticed, and replaced, only at its next check",
    )
    replica_health_check_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a worker replica's health check unanswered this long fails (3 failures "
        "in a row: replaced; Ray Serve's default: 30 s)",
    )
    pools: tuple[Pool, ...] = Field(
        (Pool(name="cpu", num_cpus=1.0, cost_per_replica_s=1.0, threads_per_replica=1),),
        min_length=1,
    )
    profiler: ProfilerSettings = ProfilerSettings()
    preparation: PreparationSettings = PreparationSettings()
    slo_defaults: SLODefaults = SLODefaults()
    autoscaler: AutoscalerSettings = AutoscalerSettings()

    @field_validator("data_dir", "attestation_policy", "attestation_collateral")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # Settings travel to replicas that run in other working directories (a Ray
        # node's own, another node's): a relative path would name another file there.
        return None if path is None else path.expanduser().resolve()

    @field_validator("store_url")
    @classmethod
    def _absolute_sqlite(cls, url: str) -> str:
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
            return prefix + str(Path(url[len(prefix) :]).expanduser().resolve())
        return url

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        if self.production and self.tee_backend == "simulated":
            raise ValueError(
                "production settings refuse the simulated TEE backend: it is not confidential"
            )
        simulated_gpus = [
            p.name
            for p in self.pools
            if p.gpu_attestation is not None and p.gpu_attestation.backend == "simulated"
        ]
        if self.production and simulated_gpus:
            raise ValueError(
                f"production settings refuse the simulated GPU of pools {simulated_gpus}: "
                "it is not confidential"
            )
        names = [p.name for p in self.pools]
        if len(names) != len(set(names)):
            raise ValueError(f"pool names must be unique, got {names}")
        return self

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'infaas.db'}"

    @property
    def zoo_dir(self) -> Path:
        return self.data_dir / "zoo"

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = Path(os.environ.get("INFAAS_CONFIG", str(DEFAULT_CONFIG)))
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config)
        return (init_settings, env_settings, yaml_source)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from a given YAML file (or the default one), env and overrides."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    previous = os.environ.get("INFAAS_CONFIG")
    os.environ["INFAAS_CONFIG"] = str(config_file)
    try:
        return Settings(**overrides)
    finally:
        if previous is None:
            del os.environ["INFAAS_CONFIG"]
        else:
            os.environ["INFAAS_CONFIG"] = previous


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
