"""A module's Ray (2 CPUs, no dashboard) and Serve, with the key service application running.

What the Serve integration tests share: the worker replicas they start attest
to the key service, so it runs before anything else; the caller adds its own
applications inside the context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infaas.settings import Settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def serve_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a Serve test: data and SQLite store under `tmp`, a free port, 2 CPUs."""
    return Settings(
        data_dir=tmp,
        store_url=f"sqlite:///{tmp / 'infaas.db'}",
        http_port=free_port(),
        num_cpus=2,
        **overrides,
    )


@contextmanager
def ray_serve_with_keyservice(settings: Settings) -> Iterator[str]:
    """Start Ray and Serve on ``settings.http_port`` with the key service; yield the URL."""
    import ray
    from ray import serve

    from api.serve import KEYSERVICE_APP, build_keyservice_app
    from infaas.keyservice.server import PREFIX as KEYSERVICE_PREFIX

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "ORT_DISABLE_TELEMETRY": "1"}},
    )
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": settings.http_port},
            logging_config={"enable_access_log": False},
        )
        serve.run(
            build_keyservice_app(settings), name=KEYSERVICE_APP, route_prefix=KEYSERVICE_PREFIX
        )
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
