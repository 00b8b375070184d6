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

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = REPO_CONFIGS / "default.yaml"


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


class SLODefaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(200.0, gt=0)
    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)


class AutoscalerSettings(BaseModel):
    """The autoscaler control loop (`scheduler.controller`) and how Serve applies it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Literal["off", "infaas", "static", "queue", "infaas-style"] = Field(
        "off",
        description="off: fixed replicas, per-request selection only; infaas: SLO-aware "
        "policy; static: FP32, static_replicas; queue: FP32, Ray Serve's queue-length "
        "autoscaler; infaas-style: least-slack variant, utilisation thresholds",
    )
    tick_s: float = Field(1.0, gt=0, description="control loop period")
    min_replicas: int = Field(1, ge=0, description="worker replicas, at least")
    max_replicas: int = Field(8, ge=1, description="worker replicas, at most")
    static_replicas: int = Field(2, ge=1, description="static: worker replicas, fixed")
    target_ongoing_requests: float = Field(2.0, gt=0, description="queue: per replica")
    upscale_delay_s: float = Field(30.0, ge=0, description="queue: Ray Serve's default")
    downscale_delay_s: float = Field(600.0, ge=0, description="queue: Ray Serve's default")
    policy_config: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="overrides of scheduler.autoscaler.AutoscalerConfig (e.g. burst_window_s)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaler min_replicas must not exceed max_replicas")
        return self


class Settings(BaseSettings):
    """Everything a deployment of infaas is configured by."""

    model_config = SettingsConfigDict(
        env_prefix="INFAAS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(Path("data"), description="zoo, encrypted artifacts, embedded store")
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
    pools: tuple[Pool, ...] = Field(
        (Pool(name="cpu", num_cpus=1.0, cost_per_replica_s=1.0, threads_per_replica=1),),
        min_length=1,
    )
    profiler: ProfilerSettings = ProfilerSettings()
    slo_defaults: SLODefaults = SLODefaults()
    autoscaler: AutoscalerSettings = AutoscalerSettings()

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        if self.production and self.tee_backend == "simulated":
            raise ValueError(
                "production settings refuse the simulated TEE backend: it is not confidential"
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
