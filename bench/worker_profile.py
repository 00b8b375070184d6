"""Where a worker replica's CPU goes per request: a pyinstrument profile under load.

Builds a deployment in this process (attested key service, simulated TEE, memory
store, a small-zoo model registered and prepared by its real worker), seals
`--requests` requests from `--tenants` tenants beforehand (client work, not
profiled), then drives the replica's ASGI app exactly as Ray Serve's proxy does
(raw ASGI messages, the body in 64 KB chunks), `--concurrency` requests in flight,
with pyinstrument sampling the event loop thread, logging configured as a replica
configures it. Replay protection (memory and
the shared store), token checks, telemetry and sealing all run as in production;
only the HTTP hop is absent, so what remains is the replica's own work.

Prints ONE JSON line: requests/s and process CPU µs per request (every thread:
the loop, the inference pool, the store writes), and the profile's top frames
by own time and by inclusive time, each as its share of the loop's samples.
`--html PATH` also writes pyinstrument's flame view.

`--tree PATH` profiles another checkout's code (e.g. a worktree of an older
commit) with the same driver: before/after on the same machine.

Run: python bench/worker_profile.py [--model digits-mlp-large] [--wire binary|json]
     [--requests 3000] [--concurrency 8] [--tree PATH] [--html out.html]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Profile a worker replica under load (JSON line).")
    p.add_argument("--model", default="digits-mlp-large", help="small-zoo model id")
    p.add_argument("--wire", choices=("binary", "json"), default="binary")
    p.add_argument("--requests", type=int, default=3000, help="profiled requests")
    p.add_argument("--warmup", type=int, default=300, help="unprofiled requests first")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--rows", type=int, default=1, help="samples per request")
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--top", type=int, default=15, help="frames listed")
    p.add_argument("--tree", type=Path, default=REPO, help="checkout whose code is profiled")
    p.add_argument("--html", type=Path, default=None, help="also write the flame view here")
    p.add_argument("--session", type=Path, default=None, help="also save pyinstrument's session")
    return p.parse_args(argv)


def build(args: argparse.Namespace, workdir: Path) -> Any:
    """A deployment with `args.model` prepared by its worker, and `args.tenants` tenants."""
    from enclave_workers.preparation import PreparationOptions
    from infaas.attestation import SimulatedPlatformCA
    from infaas.settings import Settings
    from infaas.zoo import build_zoo, load_manifest, load_model_bytes, load_validation
    from profiler.profile import ProfileOptions
    from tests.deployment import Deployment

    zoo = Path(tempfile.gettempdir()) / "infaas-bench" / "zoo-small"
    build_zoo(zoo, small=True)
    manifest = load_manifest(zoo)
    entry = next(e for e in manifest.models if e.model_id == args.model)
    settings = Settings(data_dir=workdir, store_url="memory://")
    dep = Deployment.create(SimulatedPlatformCA.generate("infaas bench"), workdir, settings)
    dep.add_owner("owner1")
    x, y = load_validation(zoo, entry)
    task = manifest.tasks[entry.task]
    dep.register_model("owner1", entry.to_model_record(), task, load_model_bytes(zoo, entry), x, y)
    for i in range(args.tenants):
        dep.add_tenant(f"tenant{i}", owner="owner1", grant=(args.model,))
    prep = PreparationOptions(
        pool="cpu",
        max_batch=8,
        profile=ProfileOptions(batch_sizes=(1, 2, 4, 8), warmup_runs=1, min_runs=3),
        validation_samples=128,
        calibration_samples=32,
    )
    runtime = dep.start_worker(preparation=prep)
    job = runtime.prepare_model(args.model)
    if job.state != "ready":
        raise SystemExit(f"preparation failed: {job.message}")
    return dep


def sealed_bodies(dep: Any, args: argparse.Namespace, n: int) -> list[tuple[str, bytes, bytes]]:
    """(tenant, content type, body) of `n` fresh sealed requests, round robin over tenants."""
    out: list[tuple[str, bytes, bytes]] = []
    rows = dep.x[: args.rows]
    for i in range(n):
        tenant = f"tenant{i % args.tenants}"
        req = dep.request(tenant, rows, latency_ms=1000.0)
        if args.wire == "binary":
            from infaas.wire import ENVELOPE_MEDIA_TYPE, envelope_frame

            out.append((tenant, ENVELOPE_MEDIA_TYPE.encode(), envelope_frame(req.envelope)))
        else:
            out.append((tenant, b"application/json", req.model_dump_json().encode()))
    return out


async def drive(app: Any, dep: Any, bodies: list[tuple[str, bytes, bytes]], c: int) -> Counter[int]:
    """Send every body through `app` as raw ASGI, `c` at a time; the answers' statuses."""
    statuses: Counter[int] = Counter()
    queue = list(reversed(bodies))
    accept = b"application/vnd.infaas.envelope, application/json;q=0.5"

    async def one(tenant: str, kind: bytes, body: bytes) -> None:
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/infer",
            "root_path": "/v1/infer",
            "headers": [
                (b"authorization", f"Bearer {dep.api_tokens[tenant]}".encode()),
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"accept", accept),
            ],
        }

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] += 1

        await app(scope, receive, send)

    async def client() -> None:
        while queue:
            await one(*queue.pop())

    await asyncio.gather(*(client() for _ in range(c)))
    return statuses


def _batches(runtime: Any) -> tuple[int, int]:
    """(batches run, samples in them) over every variant the replica holds."""
    stats = [st.batcher.stats for st in runtime.host.states.values()]
    return sum(s.batches for s in stats), sum(s.samples for s in stats)


def _key(frame: Any) -> str:
    path = str(frame.file_path_short or frame.file_path or "?")
    return f"{frame.function} ({path.rsplit('site-packages/', 1)[-1]})"


_DRIVER = ("worker_profile.py", "asyncio/base_events.py", "asyncio/events.py")


def summarize(root: Any, top: int) -> dict[str, Any]:
    """Top frames by own time and by
    inclusive time (once per stack), as shares of the busy samples: the loop waiting in
    ``select`` is idle, reported apart; the driver's own frames are left out."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    idle = 0.0

    def walk(frame: Any, above: frozenset[str]) -> None:
        nonlocal idle
        if frame.is_synthetic:  # "[self]": already in its parent's total_self_time
            return
        key = _key(frame)
        if frame.function in ("select", "poll") and "selectors" in key:
            idle += frame.time
            return
        own[key] += frame.total_self_time
        if key not in above:
            incl[key] += frame.time
        for child in frame.children:
            walk(child, above | {key})

    walk(root, frozenset())
    busy = max(root.time - idle, 1e-9)

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        kept = ((k, v) for k, v in c.most_common() if not any(d in k for d in _DRIVER))
        return [(k, round(v / busy, 4)) for k, v in list(kept)[:top]]

    return {
        "sampled_s": round(root.time, 3),
        "idle_share": round(idle / max(root.time, 1e-9), 4),
        "top_self": share(own),
        "top_inclusive": share(incl),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.tree.resolve()))
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    from pyinstrument import Profiler

    from enclave_workers.endpoint import serve_app
    from infaas.logs import configure_logging

    # as a replica logs (JSON lines at INFO), into the void rather than this terminal
    configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115

    with tempfile.TemporaryDirectory() as tmp:
        dep = build(args, Path(tmp))
        app = serve_app(dep.runtime, max_request_bytes=dep.settings.max_request_bytes)
        warm = sealed_bodies(dep, args, args.warmup)
        bodies = sealed_bodies(dep, args, args.requests)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(drive(app, dep, warm, args.concurrency))
            load_start = round(os.getloadavg()[0], 2)
            batches0 = _batches(dep.runtime)
            shared = getattr(dep.runtime, "_shared_replay", None)  # absent before group commit
            writes0, claims0 = (shared.writes, shared.claims) if shared is not None else (0, 0)
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            cpu0, t0 = time.process_time(), time.perf_counter()
            profiler.start()
            statuses = loop.run_until_complete(drive(app, dep, bodies, args.concurrency))
            profiler.stop()
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            batches = [a - b for a, b in zip(_batches(dep.runtime), batches0, strict=True)]
            sharing = (  # store round trips of the replay record, and the claims they carried
                {"replay_writes": shared.writes - writes0, "replay_claims": shared.claims - claims0}
                if shared is not None
                else {}
            )
            loop.run_until_complete(dep.runtime.close())
        finally:
            loop.close()
        dep.worker = None
    session = profiler.last_session
    assert session is not None
    if args.html is not None:
        args.html.write_text(profiler.output_html())
    if args.session is not None:
        session.save(str(args.session))
    root = session.root_frame()
    result = {
        "bench": "worker_profile",
        "run_id": uuid.uuid4().hex[:8],
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tree": str(args.tree.resolve()),
        "model": args.model,
        "wire": args.wire,
        "rows": args.rows,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "statuses": dict(statuses),
        "requests_per_s": round(args.requests / wall, 1),
        "cpu_us_per_request": round(cpu / args.requests * 1e6, 1),
        "body_bytes": len(bodies[0][2]),
        **sharing,
        "batches": batches[0],
        "mean_batch": round(batches[1] / max(batches[0], 1), 2),
        "loadavg_1m_start": load_start,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **(summarize(root, args.top) if root is not None else {}),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
