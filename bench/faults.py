"""Faults under load on a Ray cluster of `ray start` nodes on loopback; one JSON line each.

The cluster: a head (1 CPU, no TEE) and two TEE nodes (1 CPU each, ``tee_simulated``), token
authentication, Redis with an fsync-always append-only file as the store, infaas deployed
with ``serve deploy`` (deploy/serve-config.yaml's applications) and bootstrapped with
`infaas bootstrap`; one owner's digits model, one tenant. While `--concurrency` client
threads call ``Client.infer`` back to back (each call bounded by `--deadline-s`, the client
retrying what is safe, each attempt re-sealed under a new request id), one fault at a time:

=============  =========================================================================
``worker``     SIGKILL the worker replica's process (Serve replaces it)
``keyservice`` SIGKILL the key service replica's process (workers hold leased keys)
``redis``      SIGKILL redis-server, start it again on its append-only file 1 s later
``node``       SIGKILL every process of the TEE node the worker replica runs on (its
               raylet included): Ray marks the node dead, Serve starts the replica on the
               other TEE node
``idle``       before anything else, no infaas yet: the bare cluster's processes watched
               as the soak watches them for --idle-s (Ray's own growth, for comparison)
``soak``       no fault, at --soak-load (0.8) of the saturation throughput measured first
               (a ``saturation`` line): errors; each cluster process's RSS (and Redis's)
               by role, growth from the start and from the end of --soak-warmup-s; the
               store's records per namespace, sampled every --soak-sample-s (lines
               ``soak_processes`` and ``soak_samples`` follow the ``soak`` line)
=============  =========================================================================

Each line says: calls, answers, typed errors by code, calls that overran their deadline by
more than 1 s (a hang: must be 0), the slowest call, the outage (from the fault to the first
answer after the last failure, 0 when no call failed), the answer gap (the longest time
after the fault with no call answered: the recovery, whether calls failed or waited) and the
replay check: envelopes answered before the fault, sent again after it, must all be refused
(no request id is answered twice, the replay guard survives the fault).

Run: python bench/faults.py [--scenarios worker,keyservice,redis,node,soak] [--duration-s 30]
     [--concurrency 2] [--deadline-s 10] [--soak-s 60] [--soak-load 0.8] [--soak-warmup-s 120]
     [--soak-sample-s 30] [--idle-s 300] [--health-check-ms 1000] [--replica-health-check-s 10]
(``idle`` runs only when named: ``--scenarios idle`` or ``--scenarios idle,soak``.)

Ray's defaults decide how fast a dead node is noticed (GCS health checks every 3 s, dead
after 5 misses); ``--health-check-ms`` tunes the period (and 3 misses). Serve's controller
notices a dead replica at its next health check of it (Serve's default period 10 s,
infaas's 1 s: ``settings.replica_health_check_period_s``, ``--replica-health-check-s``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.soak_watch import SoakWatch  # noqa: E402
from infaas import Client  # noqa: E402
from infaas.client.enrolment import issue_enrolment_file, login  # noqa: E402
from infaas.errors import InfaasError  # noqa: E402
from infaas.keyservice.enrolment import load_enrolment_key  # noqa: E402
from infaas.settings import Settings  # noqa: E402
from infaas.store import open_store  # noqa: E402
from infaas.wire import InferResponse  # noqa: E402
from infaas.zoo import build_zoo, load_manifest, load_model_bytes, load_validation  # noqa: E402
from tests.ray_nodes import (  # noqa: E402
    TEE,
    RayNodes,
    free_ports,
    infaas_applications,
    write_cluster_settings,
    write_serve_config,
)

MODEL = "digits-mlp-small"


@dataclass
class Call:
    start: float
    end: float
    ok: bool
    error: str = ""
    message: str = ""


@dataclass
class Redis:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING") == "True":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def cli(self, *args: str) -> str:
        import redis

        try:
            with redis.Redis(port=self.port, socket_timeout=2) as r:
                return str(r.execute_command(*args))
        except redis.RedisError:
            return ""

    def used_memory(self) -> int:
        import redis

        with redis.Redis(port=self.port) as r:
            return int(r.info("memory")["used_memory"])

    def dbsize(self) -> int:
        return int(self.cli("DBSIZE") or 0)


@dataclass
class Load:
    credentials: Path
    x: np.ndarray
    deadline_s: float
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, n: int, rate: float | None = None) -> list[threading.Thread]:
        """Start `n` client threads calling until `stop` is set: back to back, or paced so
        that together they offer `rate` calls per second (open loop: a slow answer does
        not delay the next call's slot, unless every thread is busy)."""

        def loop(i: int) -> None:
            client = Client.from_credentials(self.credentials)
            slot = time.monotonic() + (i / rate if rate else 0.0)
            while not self.stop.is_set():
                if rate:
                    time.sleep(max(0.0, slot - time.monotonic()))
                    slot += n / rate
                t0 = time.monotonic()
                try:
                    client.infer(
                        task="digits", inputs=self.x[i % len(self.x)][None], latency_ms=2000,
                        timeout_s=self.deadline_s,
                    )  # fmt: skip
                    self.calls.append(Call(t0, time.monotonic(), True))
                except InfaasError as e:
                    self.calls.append(Call(t0, time.monotonic(), False, e.code, e.message))
                    time.sleep(0.05)
            client.close()

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        return threads


def answered_envelopes(tenant: Client, x: np.ndarray, url: str, n: int) -> list[bytes]:
    """`n` sealed requests sent once and answered (their bodies, to be replayed)."""
    bodies = []
    headers = {"Authorization": f"Bearer {tenant.api_token}", "Content-Type": "application/json"}
    for i in range(n * 5):
        request = tenant.seal_infer(task="digits", inputs=x[i % len(x)][None], latency_ms=2000)
        body = request.model_dump_json().encode()
        r = httpx.post(url + tenant.infer_path, content=body, headers=headers, timeout=30)
        if r.status_code == 200:
            tenant.open_infer(request, InferResponse.model_validate_json(r.content))
            bodies.append(body)
        if len(bodies) == n:
            break
    return bodies


def replayed_answers(tenant: Client, url: str, bodies: list[bytes]) -> int:
    """How many of these already answered envelopes are answered again (must be 0)."""
    headers = {"Authorization": f"Bearer {tenant.api_token}", "Content-Type": "application/json"}
    return sum(
        httpx.post(url + tenant.infer_path, content=b, headers=headers, timeout=30).status_code
        == 200
        for b in bodies
    )


def actor(nodes: RayNodes, class_suffix: str) -> dict[str, Any]:
    rows = [
        a for a in nodes.list("actors")
        if str(a.get("class_name", "")).endswith(class_suffix) and a.get("state") == "ALIVE"
    ]  # fmt: skip
    if len(rows) != 1:
        raise RuntimeError(f"{len(rows)} live actors of {class_suffix}")
    return rows[0]


def summarise(name: str, calls: list[Call], fault_at: float, deadline_s: float) -> dict[str, Any]:
    failed = [c for c in calls if not c.ok]
    after = [c for c in calls if c.end >= fault_at]
    outage: float | None = 0.0
    if [c for c in failed if c.end >= fault_at]:
        last = max(c.end for c in failed)
        firsts = [c.end for c in calls if c.ok and c.end > last]
        outage = (min(firsts) - fault_at) if firsts else None  # not recovered in the run
    # the service's recovery, whether calls failed or waited (queued for a new replica)
    ends = sorted([fault_at] + [c.end for c in calls if c.ok and c.end > fault_at])
    gap = max((b - a for a, b in itertools.pairwise(ends)), default=None)
    return {
        "scenario": name,
        "calls": len(calls),
        "answered": len(calls) - len(failed),
        "errors": dict(Counter(c.error for c in failed)),
        "error_examples": {c.error: c.message[:200] for c in reversed(failed)},
        "hangs": sum(c.end - c.start > deadline_s + 1.0 for c in calls),
        "slowest_call_s": round(max((c.end - c.start for c in calls), default=0.0), 3),
        "slowest_after_fault_s": round(max((c.end - c.start for c in after), default=0.0), 3),
        "outage_s": None if outage is None else round(outage, 2),
        "answer_gap_s": None if gap is None else round(gap, 2),
    }


def make_watch(nodes: RayNodes, store: Redis, args: argparse.Namespace) -> tuple[SoakWatch, Any]:
    """A watch over the cluster's processes and Redis, and the store it counts records of."""
    assert store.proc is not None
    census = open_store(f"redis://127.0.0.1:{store.port}/0")
    watch = SoakWatch(
        [*nodes.pids(), store.proc.pid], census, store.used_memory,
        sample_s=args.soak_sample_s, warmup_s=args.soak_warmup_s,
        node_ports={n.ports[0]: n.name for n in nodes.nodes},
    )  # fmt: skip
    return watch, census


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scenarios",
        default="worker,keyservice,redis,node,soak",
        help="comma-separated, run in this order: worker, keyservice, redis, node, soak; "
        "idle (first, only when named)",
    )
    ap.add_argument("--duration-s", type=float, default=30.0, help="load after each fault")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--deadline-s", type=float, default=10.0, help="each call's deadline")
    ap.add_argument("--soak-s", type=float, default=60.0, help="how long the soak runs")
    ap.add_argument(
        "--soak-load",
        type=float,
        default=0.8,
        help="the soak offers this fraction of the saturation throughput, measured first "
        "with --saturation-concurrency threads back to back for --duration-s",
    )
    ap.add_argument("--saturation-concurrency", type=int, default=8)
    ap.add_argument(
        "--idle-s",
        type=float,
        default=300.0,
        help="scenario idle: how long to watch the bare cluster (Ray's own processes and "
        "Redis, before infaas is deployed), sampled and reported as the soak is",
    )
    ap.add_argument(
        "--soak-warmup-s",
        type=float,
        default=120.0,
        help="RSS growth is also reported from the first sample at or after this many "
        "seconds into the soak (allocator arenas, lazy imports and caches fill first)",
    )
    ap.add_argument(
        "--soak-sample-s",
        type=float,
        default=30.0,
        help="how often the soak samples each process's RSS and the store's records",
    )
    ap.add_argument(
        "--health-check-ms",
        type=int,
        default=0,
        help="the GCS's node health check period (3 failures: dead); 0: Ray's default, "
        "3000 ms and 5 failures",
    )
    ap.add_argument(
        "--replica-health-check-s",
        type=float,
        default=0.0,
        help="Serve's health check period of the worker replicas "
        "(settings.replica_health_check_period_s); 0: infaas's default (1 s); 10: Serve's",
    )
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")

    nodes = RayNodes()
    redis_port, port = free_ports(2)
    store = Redis(redis_port, nodes.root / "redis")
    store.workdir.mkdir()
    try:
        store.start()
        t_setup = time.monotonic()
        tuned = {"health_check_period_ms": args.health_check_ms}
        tuned["health_check_failure_threshold"] = 3
        nodes.start_head(num_cpus=1, system_config=tuned if args.health_check_ms else None)
        tee_nodes = [
            nodes.add_worker(f"tee-{k}", num_cpus=1, resources={TEE: 1.0, f"node_tee_{k}": 1.0})
            for k in ("a", "b")
        ]
        if "idle" in scenarios:  # the bare cluster first: Ray's own growth, no infaas yet
            watch, census = make_watch(nodes, store, args)
            watch.start()
            time.sleep(args.idle_s)
            report = watch.report(watch.stop())
            census.close()
            keep = ("role", "node", "rss_mib", "growth", "growth_after_warmup")
            print(json.dumps({"scenario": "idle", "idle_s": args.idle_s} | {
                k: v for k, v in report.items() if k.startswith(("rss_", "processes", "warmup"))
            } | {"process_table": [{k: r.get(k) for k in keep} for r in report["process_table"]]}),
                flush=True)  # fmt: skip
            scenarios.remove("idle")
            if not scenarios:
                return
        data_dir = nodes.root / "data"
        replica_checks = (
            {"replica_health_check_period_s": args.replica_health_check_s}
            if args.replica_health_check_s
            else {}
        )
        settings = write_cluster_settings(
            nodes.root / "settings.yaml", data_dir=data_dir,
            store_url=f"redis://127.0.0.1:{redis_port}/0", http_port=port, **replica_checks,
        )  # fmt: skip
        config = write_serve_config(nodes.root / "serve.yaml", port, infaas_applications(settings))
        bin_dir = Path(sys.executable).parent
        run = {"env": nodes.env(), "cwd": nodes.root, "check": True, "capture_output": True}
        subprocess.run([bin_dir / "serve", "deploy", "--address", nodes.dashboard, config], **run)  # type: ignore[call-overload]
        url = f"http://127.0.0.1:{port}"
        subprocess.run(  # type: ignore[call-overload]
            [sys.executable, "-m", "infaas.cli", "--config", settings, "bootstrap", "--no-zoo",
             "--url", url, "--wait-s", "600"], **run,
        )  # fmt: skip
        zoo_dir = nodes.root / "zoo"
        build_zoo(zoo_dir, small=True)
        zoo = next(e for e in load_manifest(zoo_dir).models if e.model_id == MODEL)
        x, y = load_validation(zoo_dir, zoo)
        admin = Client.from_credentials(data_dir / "credentials" / "admin.json")
        key = load_enrolment_key(data_dir)
        owner = login(issue_enrolment_file(admin, key, "owner1", "owner"))
        tenant = login(issue_enrolment_file(admin, key, "acme", "tenant"))
        owner.upload_model(
            MODEL, zoo.task, zoo.architecture, load_model_bytes(zoo_dir, zoo), x, y,
            num_classes=zoo.num_classes, input_spec=zoo.input,
            declared_accuracy=zoo.declared_accuracy,
        )  # fmt: skip
        owner.grant(MODEL, "acme")
        tenant.accept("owner1")
        while owner.job(MODEL).state not in ("ready", "failed"):
            time.sleep(1)
        assert owner.job(MODEL).state == "ready", owner.job(MODEL).message
        tenant.infer(task="digits", inputs=x[:1], latency_ms=2000, timeout_s=60)
        tenant_file = data_dir / "credentials" / "acme.json"
        tenant.save_credentials(tenant_file)
        print(json.dumps({"setup_s": round(time.monotonic() - t_setup, 1)}), flush=True)

        rate: float | None = None
        if "soak" in scenarios:
            # saturation first: the soak's offered load is a fraction of it
            load = Load(tenant_file, x, args.deadline_s)
            threads = load.run(args.saturation_concurrency)
            time.sleep(3.0)
            t0, n0 = time.monotonic(), sum(c.ok for c in load.calls)
            time.sleep(args.duration_s)
            saturation = (sum(c.ok for c in load.calls) - n0) / (time.monotonic() - t0)
            load.stop.set()
            for t in threads:
                t.join(timeout=args.deadline_s + 5)
            rate = args.soak_load * saturation
            errors = sum(not c.ok for c in load.calls)
            print(json.dumps({
                "scenario": "saturation", "concurrency": args.saturation_concurrency,
                "rps": round(saturation, 1), "errors": errors, "soak_rps": round(rate, 1),
            }), flush=True)  # fmt: skip

        for name in scenarios:
            before = answered_envelopes(tenant, x, url, 4)
            load = Load(tenant_file, x, args.deadline_s)
            soak = name == "soak"
            threads = load.run(args.saturation_concurrency if soak else args.concurrency,
                               rate=rate if soak else None)  # fmt: skip
            time.sleep(3.0)  # steady load first
            fault_at = time.monotonic()
            extra: dict[str, Any] = {}
            if name == "worker":
                os.kill(int(actor(nodes, ":EnclaveWorker")["pid"]), signal.SIGKILL)
            elif name == "keyservice":
                os.kill(int(actor(nodes, ":KeyService")["pid"]), signal.SIGKILL)
            elif name == "redis":
                store.kill()
                time.sleep(1.0)
                store.start()
            elif name == "node":
                node_id = actor(nodes, ":EnclaveWorker")["node_id"]
                row = next(n for n in nodes.list("nodes") if n["node_id"] == node_id)
                total = row["resources_total"]
                victim = next(n for n in tee_nodes if f"node_tee_{n.name[-1]}" in total)  # type: ignore[operator]
                on_victim = [
                    role for role in (":KeyService", ":Control")
                    if actor(nodes, role)["node_id"] == node_id
                ]  # fmt: skip
                nodes.kill_worker(victim)
                tee_nodes.remove(victim)
                extra["killed_node"] = victim.name
                extra["also_killed"] = [r.strip(":") for r in on_victim]
            elif name == "soak":
                watch, census = make_watch(nodes, store, args)
                watch.start()
                keys0 = store.dbsize()
            time.sleep(args.soak_s if name == "soak" else args.duration_s)
            load.stop.set()
            for t in threads:
                t.join(timeout=args.deadline_s + 5)
            line = summarise(name, load.calls, fault_at, args.deadline_s)
            line["replayed_answered"] = replayed_answers(tenant, url, before)
            line["replay_probes"] = len(before)
            if name == "soak":
                report = watch.report(watch.stop())
                census.close()
                window_s = Settings.model_fields["request_window_s"].default
                extra |= {k: v for k, v in report.items() if k != "process_table"} | {
                    "store_keys": [keys0, store.dbsize()],
                    "replay_records_bound": round((rate or 0.0) * 1.1 * window_s),
                    "rps": round(line["answered"] / (args.soak_s + 3.0), 1),
                    "offered_rps": round(rate or 0.0, 1),
                }
            extra["health_check_ms"] = args.health_check_ms or "default"
            extra["replica_health_check_s"] = args.replica_health_check_s or "default"
            extra["load_avg"] = [round(x, 1) for x in os.getloadavg()]  # a shared host
            print(json.dumps(line | extra), flush=True)
            if name == "soak":  # the detail: per process, then every sample
                detail = {"scenario": "soak_processes", "processes": report["process_table"]}
                print(json.dumps(detail), flush=True)
                print(json.dumps({"scenario": "soak_samples"} | watch.series()), flush=True)
    finally:
        nodes.stop()
        store.kill()


if __name__ == "__main__":
    main()
