"""The soak's process roles (bench/soak_watch.py): each cluster process named for what it is."""

from __future__ import annotations

import pytest

from bench.soak_watch import role_of


@pytest.mark.parametrize(
    ("cmd", "role"),
    [
        ("ray::ServeReplica:infaas-infer:EnclaveWorker", "replica infaas-infer:EnclaveWorker"),
        ("ray::ServeReplica:infaas-infer:Worker.handle_request", "replica infaas-infer:Worker"),
        ("ray::ProxyActor.receive_asgi_messages", "serve proxy"),
        ("ray::ServeController.listen_for_change", "serve controller"),
        ("ray::IDLE", "idle ray worker"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=x", "gcs"),
        ("/venv/ray/core/src/ray/raylet/raylet --node_manager_port=1", "raylet"),
        ("/usr/bin/redis-server 127.0.0.1:6379", "redis"),
        ("/venv/bin/python -u /venv/lib/ray/_private/log_monitor.py --x", "log monitor"),
        ("/venv/bin/python /venv/lib/ray/_private/runtime_env/agent/main.py", "runtime env agent"),
        ("/venv/bin/python -u /venv/lib/ray/dashboard/agent.py --x", "dashboard agent"),
        ("", "?"),
    ],
)  # fmt: skip
def test_roles(cmd: str, role: str) -> None:
    assert role_of(cmd) == role
