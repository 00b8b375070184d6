"""A Ray cluster of separate nodes on this machine, started with `ray start` on loopback.

What an operator does on real nodes, on one host: a head node (GCS, dashboard) and worker
nodes that join it, each its own raylet with its own CPUs and custom resources (a pool, a
TEE kind), all with token authentication (``RAY_AUTH_MODE=token`` and one token file for
every node and driver: Ray 2.x refuses a node or driver without it once the head uses it).

Everything is private to one cluster: its own session directory and ports, so several
clusters (other test sessions' included) coexist. `ray stop` would stop every Ray process
of the machine; `RayNodes.stop` signals only the processes of this cluster, found by its
session directory and GCS port in their command lines, and their descendants.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
TEE = "tee_simulated"
"""The custom resource a node offering the (simulated) TEE advertises."""


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        table[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd.strip())
    return table


@dataclass
class Node:
    """One raylet of the cluster."""

    name: str
    resources: dict[str, float]
    num_cpus: int
    ports: list[int]


@dataclass
class RayNodes:
    """A head and worker nodes; `start_head`, `add_worker`, `kill_worker`, `stop`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="infaas-rc-")))
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Ray's unix sockets live under the session dir: /tmp keeps the path short
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The environment of every node and driver: the token, and this tree's code."""
        return os.environ | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_ADDRESS": self.address,
            "PYTHONPATH": str(REPO),
            "ORT_DISABLE_TELEMETRY": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _ray(self, *args: str, timeout_s: float = 120.0) -> str:
        done = subprocess.run(
            [str(RAY), *args],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        self.log.append(done.stdout[-2000:] + done.stderr[-2000:])
        if done.returncode != 0:
            raise RuntimeError(f"ray {args[0]} failed: {done.stderr[-3000:]}")
        return done.stdout

    def _node_ports(self, n: int) -> tuple[list[int], list[str]]:
        ports = free_ports(n)
        base = free_ports(1)[0]  # workers' port range: 40 ports above a free one
        args = [
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--metrics-export-port={ports[2]}",
            f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}",
            f"--runtime-env-agent-port={ports[5]}",
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 40}",
            "--disable-usage-stats",
        ]
        return ports, args

    def start_head(
        self,
        *,
        num_cpus: int = 1,
        resources: dict[str, float] | None = None,
        system_config: dict[str, object] | None = None,
    ) -> None:
        """The head node; `system_config`: Ray's internal settings (e.g. the GCS's
        ``health_check_period_ms``), which only a head takes."""
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        ports, args = self._node_ports(6)
        res = resources or {}
        self._ray(
            "start",
            "--head",
            f"--port={self.gcs_port}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(res)}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client_port}",
            *([f"--system-config={json.dumps(system_config)}"] if system_config else []),
            *args,
        )
        self.nodes.append(Node("head", res, num_cpus, [*ports, client_port]))

    def add_worker(
        self, name: str, *, num_cpus: int = 1, resources: dict[str, float] | None = None
    ) -> Node:
        ports, args = self._node_ports(6)
        res = resources or {}
        self._ray(
            "start",
            f"--address={self.address}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(res)}",
            f"--temp-dir={self.temp_dir}",
            *args,
        )
        node = Node(name, res, num_cpus, ports)
        self.nodes.append(node)
        return node

    def list(self, what: str) -> list[dict[str, object]]:
        """``ray list nodes|actors --detail`` of this cluster, as JSON."""
        out = self._ray(
            "list", what, "--detail", "--format=json", "--limit=1000",
            f"--address={self.dashboard}",
        )  # fmt: skip
        rows: list[dict[str, object]] = json.loads(out)
        return rows

    def _mine(self, marks: list[str]) -> list[int]:
        table = processes()
        own = {os.getpid()}
        pid = os.getpid()
        while pid > 1 and pid in table:  # never this process or its ancestors
            pid = table[pid][0]
            own.add(pid)
        found = {p for p, (_, cmd) in table.items() if any(m in cmd for m in marks)} - own
        grew = True
        while grew:  # and their descendants (workers, agents)
            grew = False
            for p, (parent, _) in table.items():
                if parent in found and p not in found and p not in own:
                    found.add(p)
                    grew = True
        return sorted(found)

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def _terminate(self, pids: list[int], grace_s: float = 5.0) -> None:
        self._signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        self._signal(pids, signal.SIGKILL)

    def pids(self) -> list[int]:
        """The processes of this cluster (its raylets, GCS, agents and Ray workers)."""
        gcs = f"127.0.0.1:{self.gcs_port}"
        return self._mine([str(self.temp_dir), f":{self.gcs_port} ", f"--gcs-address={gcs}"])

    def kill_worker(self, node: Node) -> None:
        """Kill one worker node's raylet and what it started, as a machine failing would."""
        pids = self._mine([f"--node_manager_port={node.ports[0]}"])
        self._signal(pids, signal.SIGKILL)
        self.nodes.remove(node)

    def stop(self) -> None:
        """Stop every process of this cluster, nothing else; remove its directory."""
        marks = [
            str(self.temp_dir),
            f":{self.gcs_port} ",
            f"--gcs-address=127.0.0.1:{self.gcs_port}",
        ]
        self._terminate(self._mine(marks))
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


# --- infaas on such a cluster ------------------------------------------------------------


def write_cluster_settings(
    path: Path, *, data_dir: Path, store_url: str, http_port: int, **overrides: Any
) -> Path:
    """The settings file every infaas replica of the cluster reads: an absolute data dir
    and a shared store (replicas run in other working directories, on other nodes), one
    1-CPU worker pool that only a node offering `TEE` can hold, a quick profiler;
    `overrides` last."""
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "store_url": store_url,
        "http_port": http_port,
        "num_cpus": 1,
        "pools": [
            {"name": "cpu", "num_cpus": 1, "cost_per_replica_s": 1.0,
             "custom_resources": {TEE: 0.01}},
        ],
        "profiler": {
            "batch_sizes": [1, 2, 4, 8], "warmup_runs": 1, "min_runs": 3, "min_time_s": 0.02,
            "validation_samples": 64, "calibration_samples": 16,
        },
    } | overrides  # fmt: skip
    path.write_text(yaml.safe_dump(settings))
    return path


def infaas_applications(settings_file: Path) -> list[dict[str, Any]]:
    """deploy/serve-config.yaml's applications, each reading `settings_file`."""
    apps = yaml.safe_load((REPO / "deploy" / "serve-config.yaml").read_text())["applications"]
    return [app | {"args": {"config": str(settings_file)}} for app in apps]


def write_serve_config(path: Path, http_port: int, applications: list[dict[str, Any]]) -> Path:
    """The cluster's one Serve config (what ``serve deploy`` applies): one proxy, on the
    head (every node is this host), on loopback, serving `applications`."""
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": applications,
    }
    path.write_text(yaml.safe_dump(config))
    return path
