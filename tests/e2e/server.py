"""Start `infaas serve` as a subprocess for end-to-end tests, and stop it with SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import uvicorn

from infaas import Client

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = float(os.environ.get("INFAAS_E2E_START_TIMEOUT_S", "900"))
STOP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """An ASGI app under uvicorn in a thread on a free loopback port, as a context manager."""

    def __init__(self, app: object, *, lifespan: Literal["auto", "on", "off"] = "off") -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan=lifespan,
            ws="none",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass
class Served:
    """A running `infaas serve`: where it listens and where it writes."""

    url: str
    data_dir: Path
    ray_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def credentials(self, name: str) -> Path:
        return self.data_dir / "credentials" / f"{name}.json"

    def client(self, name: str) -> Client:
        return Client.from_credentials(self.credentials(name), base_url=self.url)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# Debian's chromium, headless, with nothing that reaches for the (closed) network
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def start_serve(
    root: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    log_name: str = "serve.log",
    timeout_s: float = START_TIMEOUT_S,
) -> Served:
    """Run ``infaas serve`` with data dir ``root/data``, its own Ray session dir and port.

    Waits for READY (`timeout_s`); runs the code under `cwd` (the repository,
    or a frozen copy of it) and logs to ``root/log_name``.
    """
    port = free_port()
    data_dir = root / "data"
    # Ray's unix sockets live under the session dir: keep the path short
    ray_dir = Path(tempfile.mkdtemp(prefix="infaas-e2e-ray-", dir="/tmp"))
    log = root / log_name
    cmd = [
        sys.executable,
        "-m",
        "infaas.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--ray-temp-dir",
        str(ray_dir),
        "--no-progress",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", data_dir, ray_dir, log, proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "\nREADY" in served.log_text():
            return served
        if proc.poll() is not None:
            break
        time.sleep(1.0)
    tail = served.log_text()[-6000:]
    stop_serve(served)
    raise RuntimeError(f"infaas serve did not become ready (exit {proc.poll()}):\n{tail}")


def stop_serve(served: Served, *, remove_ray_dir: bool = True) -> int | None:
    """SIGTERM, wait for Serve's shutdown (tens of seconds), then kill what remains."""
    proc = served.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    if remove_ray_dir:
        shutil.rmtree(served.ray_dir, ignore_errors=True)
    return proc.returncode
