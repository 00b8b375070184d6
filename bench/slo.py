"""SLO benchmark: autoscaling policies on a request-rate trace, each against a real `infaas serve`.

For each policy (``--policies``, default ``static,queue,infaas-style,infaas``):

1. start ``infaas serve`` with ``autoscaler.policy`` set to it (one data dir
   for all: the zoo is built and profiled on the first start only; the full
   224x224 zoo by default, where the model dominates a request's cost, or
   ``--zoo small``), worker replicas of ``--replica-cpus`` Ray CPUs with one
   inference thread, at most ``--max-replicas`` of them;
2. warm up (a few requests per class), then replay the trace open-loop
   (`bench.loadgen`: sealed requests from two tenants through the real
   client path, Poisson arrivals per class within each trace step);
3. sample the worker replicas once a second from the workers' own load
   reports (the same for every policy, Serve's own autoscaler included);
4. stop the service.

Prints ONE JSON line per policy: SLO attainment (answered within the class's
latency target by a variant at least as accurate as its floor), violations,
cost (worker replica-seconds over the trace), p50/p99 latency, mean served
accuracy, and ratios to the static baseline (violations static/policy: higher
is better; cost policy/static). Writes a PNG (load, replicas and latency over
time per policy) to ``--plot``.

Policies (the ablation {FP32, model-less} x {static, autoscaled}, and
INFaaS): ``static`` — the registered FP32 model on onnxruntime,
``static_replicas`` replicas; ``queue`` — the same variant under Ray Serve's
own autoscaler (``target_ongoing_requests``, upscale/downscale delays);
``static-modelless`` — each class's cheapest variant meeting its floor on
``static_replicas`` replicas; ``infaas-style`` — INFaaS's autoscaler and
variant search as its code has them (`scheduler.baselines.infaas_policy`);
``infaas`` — `scheduler.autoscaler.decide`. A trace may name any tenants:
each is created (and granted the zoo) on first use.

The evaluation protocol (``--config configs/slo-eval.yaml --results R.jsonl``):
the constants come from the committed config only; every (policy, trace,
seed) of its matrix runs in an order shuffled by its ``order_seed``
(interleaved), each appending one JSON line to ``R.jsonl`` (policy, trace,
seed, attainment, violations, cost in replica-seconds, mean served accuracy,
CPU steal from /proc/stat, the load generator's own send lag, the config's
sha256 and the commit); a run already in the file under the same config is
skipped, so the matrix fills across sessions (``--limit N``: at most N runs
now). ``--summarise R.jsonl`` prints per trace and policy the medians with
95 % bootstrap intervals and the number of runs, and the violation and cost
ratios with theirs (`bench.slo_stats`). ``--smoke`` checks the runner (first
seed, traces at 0.2x): its rows are marked and never mixed with real ones.

Run: python bench/slo.py [--trace bursty|azure|PATH.csv] [--quick] [--plot docs/slo_bursty.png]
     python bench/slo.py --config configs/slo-eval.yaml --results docs/slo-eval.jsonl
     python bench/slo.py --summarise docs/slo-eval.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen import Result, run_trace, slo_met  # noqa: E402
from bench.traces import TRACES_DIR, Trace, make_trace, read_trace, write_trace  # noqa: E402
from tests.e2e.server import Served, start_serve, stop_serve  # noqa: E402

POLICIES = ("static", "queue", "infaas-style", "infaas")
DEFAULT_AUTOSCALER: dict[str, Any] = {
    "min_replicas": 1,
    "burst_window_s": 6,
    "trend_lookahead_s": 6,
    "downscale_delay_s": 20,
    "idle_to_zero_s": 60,
    "queue_guard_ongoing_requests": 6,
}
"""Autoscaler settings of a one-off run; a matrix run takes them from its ``--config``."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Autoscaling policies on a trace (JSON lines).")
    p.add_argument("--trace", default="bursty", help="name under bench/traces/ or a CSV path")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "infaas-slo")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG (default docs/slo_<trace>.png; with --summarise: the last config's runs)",
    )
    p.add_argument(
        "--zoo",
        choices=("full", "small"),
        default="full",
        help="full: 224x224 image models (first start ~10 min); small: 32x32 (fast, but the "
        "request path then dominates and variants matter little)",
    )
    p.add_argument("--quick", action="store_true", help="static and infaas, 45 s trace")
    p.add_argument("--time-scale", type=float, default=1.0, help="stretch the trace in time")
    p.add_argument(
        "--rate-scale",
        type=float,
        default=0.8,
        help="scale every rate (0.8: 9.6 images/s base, 26-35/s bursts: FP32 on both cores "
        "meets the base, not the bursts; INT8 can meet both)",
    )
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs per worker")
    p.add_argument("--max-replicas", type=int, default=2, help="2: one per core here")
    p.add_argument("--static-replicas", type=int, default=2)
    p.add_argument(
        "--overhead-ms", type=float, default=12.0, help="request path per request (autoscalers)"
    )
    p.add_argument(
        "--ingress",
        choices=("default", "haproxy"),
        default="haproxy",
        help="infaas serve --ingress: HAProxy (default here: Serve's Python proxy passed only "
        "12-20 image requests/s on this host during a burst's backlog)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-going", action="store_true", help="a failed policy does not stop")
    p.add_argument(
        "--config",
        type=Path,
        help="the evaluation's frozen constants (configs/slo-eval.yaml): with --results, "
        "runs its matrix",
    )
    p.add_argument(
        "--results",
        type=Path,
        help="matrix mode: append one JSON line per run here, skipping runs already in it",
    )
    p.add_argument("--limit", type=int, default=None, help="matrix mode: at most this many runs")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="matrix mode: the first seed only, the traces at 0.2x their length (shows the "
        "runner works; its rows are marked smoke and never summarised with real runs)",
    )
    p.add_argument("--summarise", type=Path, help="print the summary of a results file and exit")
    args = p.parse_args(argv)
    args.autoscaler = {**DEFAULT_AUTOSCALER, "request_overhead_ms": args.overhead_ms}
    args.config_sha256 = None
    if args.config is not None:
        raw = args.config.read_bytes()
        frozen = yaml.safe_load(raw)
        args.config_sha256 = hashlib.sha256(raw).hexdigest()
        args.eval = frozen
        args.ingress = frozen.get("ingress", "default")  # configs before it had none
        for key in ("zoo", "rate_scale", "time_scale", "replica_cpus", "max_replicas"):
            setattr(args, key, frozen[key])
        args.static_replicas = frozen["static_replicas"]
        args.max_requests = frozen["max_requests"]
        args.autoscaler = dict(frozen["autoscaler"])
        if args.smoke:
            args.time_scale = 0.2 * args.time_scale
    if args.quick:
        if args.policies == ",".join(POLICIES):
            args.policies = "static,infaas"
        args.time_scale = min(args.time_scale, 0.3)
    return args


# --------------------------------------------------------------------------- the service


def write_config(path: Path, args: argparse.Namespace) -> Path:
    text = (REPO / "configs" / "default.yaml").read_text()
    text = text.replace(
        "  - name: cpu\n    num_cpus: 1\n", f"  - name: cpu\n    num_cpus: {args.replica_cpus}\n"
    )
    # request_overhead_ms: profiles time the model alone; a served request also costs the
    # HTTP proxy hop, the envelope and scheduling (ARCHITECTURE: the request path dominates)
    auto = {
        "max_replicas": args.max_replicas,
        "static_replicas": args.static_replicas,
        **args.autoscaler,
    }
    text += yaml.safe_dump({"autoscaler": auto}, sort_keys=False)
    path.write_text(text)
    return path


def snapshot(dest: Path) -> Path:
    """The committed tree (``git archive HEAD``) under `dest`, where every policy's serve runs.

    A worker's TEE measurement covers its code: a replica started mid-run from a
    tree someone is editing measures differently and the key service rightly
    refuses it keys. Autoscaling starts replicas mid-run; a frozen tree keeps
    that from penalising it. Falls back to the working tree outside git.
    """
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return REPO
    return dest


def start_policy(args: argparse.Namespace, config: Path, policy: str) -> Served:
    """`infaas serve` under `policy`, from the frozen code copy, logging to serve-<policy>.log."""
    return start_serve(
        args.data_dir,
        "--autoscaler",
        policy,
        "--ingress",
        args.ingress,
        *(["--small"] if args.zoo == "small" else []),
        env={"INFAAS_CONFIG": str(config)},
        cwd=args.code,
        log_name=f"serve-{policy}.log",
        timeout_s=1800,
    )


def ensure_tenant(data_dir: Path, url: str, tenant: str) -> None:
    """A second tenant with its own request key, granted every zoo model (once)."""
    from infaas.client import Client
    from infaas.client.enrolment import issue_enrolment_file, login
    from infaas.keyservice.enrolment import load_enrolment_key

    creds = data_dir / "credentials"
    path = creds / f"{tenant}.json"
    if path.exists():
        return
    with Client.from_credentials(creds / "admin.json", base_url=url) as admin:
        key = load_enrolment_key(data_dir)
        enrolment = issue_enrolment_file(admin, key, tenant, "tenant", "SLO benchmark tenant")
    with login(enrolment) as client:
        client.accept("zoo-owner")
        client.save_credentials(path)
    with Client.from_credentials(creds / "zoo-owner.json", base_url=url) as owner:
        for info in owner.models():
            owner.grant(info.model.model_id, tenant)


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    policy: str
    results: list[Result]
    samples: list[tuple[float, int, int | None, dict[str, int]]] = field(default_factory=list)
    """(t, worker replicas reporting, target, replicas per loaded variant)."""
    cpu_steal: float | None = None
    """Share of this VM's CPU time the hypervisor gave to others during the replay."""


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields[:8]]
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def sample(store: Any, t: float) -> tuple[float, int, int | None, dict[str, int]]:
    from scheduler.routing import read_reports, read_target

    now = time.time()
    reports = read_reports(store, now, max_age_s=2.0)
    loaded: dict[str, int] = {}
    for r in reports.values():
        for v in r.loaded:
            loaded[v] = loaded.get(v, 0) + 1
    target = read_target(store)
    return (t, len(reports), target.num_replicas if target is not None else None, loaded)


def run_policy(policy: str, trace: Trace, args: argparse.Namespace, config: Path) -> Run:
    from infaas.store import open_store
    from infaas.zoo import load_manifest, load_validation

    data_dir = args.data_dir / "data"
    print(f"[slo] {policy}: starting infaas serve", file=sys.stderr, flush=True)
    if (data_dir / "infaas.db").exists():  # no report or target of an earlier run
        with open_store(f"sqlite:///{data_dir / 'infaas.db'}") as old:
            old.clear_autoscaler_state()
    served = start_policy(args, config, policy)
    try:
        tenants = {c.tenant for c in trace.classes}
        for t in sorted(tenants):  # whatever tenants the trace names
            ensure_tenant(data_dir, served.url, t)
        creds = {t: data_dir / "credentials" / f"{t}.json" for t in tenants}
        manifest = load_manifest(data_dir / "zoo")
        inputs: dict[str, np.ndarray] = {}
        for m in manifest.models:
            if m.task not in inputs:
                inputs[m.task] = load_validation(data_dir / "zoo", m)[0][:64]
        # warm-up: every class a few times at a low rate, then let the loop settle
        warm = Trace("warm", trace.classes, (0.0, 6.0), (tuple(2.0 for _ in trace.classes),))
        asyncio.run(run_trace(warm, creds, served.url, inputs, seed=args.seed + 1))
        time.sleep(2.0)
        store = open_store(f"sqlite:///{data_dir / 'infaas.db'}")
        run = Run(policy, [])

        def on_tick(t: float) -> None:
            run.samples.append(sample(store, t))

        print(f"[slo] {policy}: replaying {trace.name}", file=sys.stderr, flush=True)
        cpu_before = cpu_times()
        run.results = asyncio.run(
            run_trace(
                trace,
                creds,
                served.url,
                inputs,
                seed=args.seed,
                max_requests=args.max_requests,
                on_tick=on_tick,
            )
        )
        run.cpu_steal = steal_share(cpu_before, cpu_times())
        store.close()
        return run
    finally:
        stop_serve(served)


# --------------------------------------------------------------------------- report


def summarise(run: Run, trace: Trace) -> dict[str, Any]:
    res = run.results
    met = [slo_met(r, trace.classes[r.cls]) for r in res]
    lat = np.array([r.latency_ms for r in res if r.ok]) if any(r.ok for r in res) else np.zeros(1)
    acc = [r.accuracy for r in res if r.ok and not np.isnan(r.accuracy)]
    lags = np.array([r.lag_ms for r in res]) if res else np.zeros(1)
    ts = [s[0] for s in run.samples]
    reps = [s[1] for s in run.samples]
    cost = float(np.trapezoid(reps, ts)) if len(ts) > 1 else 0.0
    per_class = {}
    for j, c in enumerate(trace.classes):
        mine = [m for r, m in zip(res, met, strict=True) if r.cls == j]
        per_class[c.name] = round(sum(mine) / len(mine), 4) if mine else None
    variants: dict[str, int] = {}
    for r in res:
        if r.ok:
            variants[r.variant] = variants.get(r.variant, 0) + 1
    errors: dict[str, int] = {}
    for r in res:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "policy": run.policy,
        "trace": trace.name,
        "requests": len(res),
        "slo_attainment": round(sum(met) / len(res), 4) if res else None,
        "violations": len(res) - sum(met),
        "cost_replica_s": round(cost, 1),
        "mean_replicas": round(float(np.mean(reps)), 2) if reps else None,
        "max_replicas": max(reps) if reps else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_accuracy": round(float(np.mean(acc)), 4) if acc else None,
        "attainment_by_class": per_class,
        "served_by": dict(sorted(variants.items(), key=lambda kv: -kv[1])[:6]),
        "errors": errors,
        # how late the load generator itself sent requests: large values mean the client,
        # not the service, shaped the run
        "loadgen_lag_p50_ms": round(float(np.percentile(lags, 50)), 2),
        "loadgen_lag_p99_ms": round(float(np.percentile(lags, 99)), 2),
        "loadgen_lag_max_ms": round(float(np.max(lags)), 2),
    }


def with_ratios(row: dict[str, Any], static: dict[str, Any] | None) -> dict[str, Any]:
    if static is None:
        return row
    v, sv = row["violations"], static["violations"]
    row["violations_static_over_policy"] = round(sv / v, 2) if v else None
    row["cost_over_static"] = (
        round(row["cost_replica_s"] / static["cost_replica_s"], 3)
        if static["cost_replica_s"]
        else None
    )
    return row


def plot(runs: list[Run], trace: Trace, path: Path, window_s: float = 5.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    t = np.arange(0, trace.duration_s, 0.5)
    total = [sum(trace.rate_at(x)) for x in t]
    axes[0].plot(t, total, color="black", label="offered load (all classes)")
    for j, c in enumerate(trace.classes):
        axes[0].plot(t, [trace.rate_at(x)[j] for x in t], lw=0.8, label=c.name)
    axes[0].set_ylabel("requests/s")
    axes[0].legend(fontsize=7, loc="upper left")
    for run in runs:
        axes[1].step(
            [s[0] for s in run.samples], [s[1] for s in run.samples], where="post", label=run.policy
        )
        edges = np.arange(0, trace.duration_s + window_s, window_s)
        mids, viol = [], []
        for a, b in itertools.pairwise(edges):
            rs = [r for r in run.results if a <= r.sent_s < b]
            if rs:
                mids.append((a + b) / 2)
                viol.append(100.0 * sum(not slo_met(r, trace.classes[r.cls]) for r in rs) / len(rs))
        axes[2].plot(mids, viol, marker=".", label=run.policy)
    axes[1].set_ylabel("worker replicas")
    axes[1].legend(fontsize=8)
    axes[2].set_ylabel(f"SLO violations, % per {window_s:g} s")
    axes[2].set_xlabel("trace time, s")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"infaas autoscaling on the {trace.name} trace")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_trace(args: argparse.Namespace, name: str | None = None) -> Trace:
    name = name or args.trace
    path = Path(name)
    if not path.is_file():
        path = TRACES_DIR / f"{name}.csv"
        if not path.is_file():
            write_trace(make_trace(name), path)
    trace = read_trace(path)
    if args.time_scale != 1.0 or args.rate_scale != 1.0:
        trace = trace.scaled(args.rate_scale, args.time_scale)
    return trace


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.decode().strip()


def matrix(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every (policy, trace, seed) of the frozen config, in its shuffled, interleaved order."""
    ev = args.eval
    seeds = ev["seeds"][:1] if args.smoke else ev["seeds"]
    plan = [(p, t, s) for p in ev["policies"] for t in ev["traces"] for s in seeds]
    random.Random(ev["order_seed"]).shuffle(plan)
    return plan


def run_matrix(args: argparse.Namespace) -> int:
    """The resumable runner: each run not yet in ``--results`` under this config, appended.

    A failed run is appended too, with its error (every run is reported), and
    tried again by the next session. Each run's samples and per-request results
    go to ``DATA_DIR/run-<trace>-<policy>-<seed>.json`` beside it.
    """
    from bench.slo_stats import read_runs

    results: Path = args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if results.exists():
        for r in read_runs(results):
            same = r.get("config_sha256") == args.config_sha256 and r.get("smoke") == args.smoke
            if same and "error" not in r:  # a failed run stays recorded and is tried again
                done.add((r["policy"], r["trace"], r["seed"]))
    args.data_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(args.data_dir / "slo-config.yaml", args)
    args.code = snapshot(args.data_dir / "code")
    commit = _commit()
    ran = 0
    for policy, trace_name, seed in matrix(args):
        if (policy, trace_name, seed) in done:
            continue
        if args.limit is not None and ran >= args.limit:
            break
        ran += 1
        trace = load_trace(args, trace_name)
        args.seed = seed
        base = {
            "policy": policy,
            "trace": trace.name,
            "seed": seed,
            "smoke": args.smoke,
            "config_sha256": args.config_sha256,
            "commit": commit,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "ingress": args.ingress,
        }
        try:
            run = run_policy(policy, trace, args, config)
            row = base | summarise(run, trace) | {"cpu_steal": run.cpu_steal}
            write_run(args.data_dir / f"run-{trace.name}-{policy}-{seed}.json", row, run)
        except Exception as e:
            print(f"[slo] {policy} {trace_name} seed {seed} failed: {e}", file=sys.stderr)
            row = base | {"error": f"{type(e).__name__}: {e}"[:500]}
        row["load_avg_1m"] = round(os.getloadavg()[0], 2)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarise is not None:
        from bench.slo_stats import print_summary

        print_summary(args.summarise, args.plot)
        return 0
    if args.results is not None:
        if args.config is None:
            raise SystemExit("--results runs the matrix of a --config (configs/slo-eval.yaml)")
        return run_matrix(args)
    trace = load_trace(args)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(args.data_dir / "slo-config.yaml", args)
    args.code = snapshot(args.data_dir / "code")
    policies = [p for p in args.policies.split(",") if p]
    if "static" in policies:  # ratios are to static: run it first
        policies.remove("static")
        policies.insert(0, "static")
    runs: list[Run] = []
    static_row: dict[str, Any] | None = None
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "duration_s": trace.duration_s,
        "replica_cpus": args.replica_cpus,
        "replica_limit": args.max_replicas,
        "static_replicas": args.static_replicas,
        "ingress": args.ingress,
    }
    for policy in policies:
        try:
            run = run_policy(policy, trace, args, config)
        except Exception as e:
            print(f"[slo] {policy} failed: {e}", file=sys.stderr, flush=True)
            if not args.keep_going:
                raise
            continue
        runs.append(run)
        row = summarise(run, trace)
        if policy == "static":
            static_row = row
        row = with_ratios(row, static_row)
        # steal: the share of this VM's CPU a shared host gave to others during the replay;
        # runs far apart in it are not comparable
        row.update(meta, load_avg_1m=round(os.getloadavg()[0], 2), cpu_steal=run.cpu_steal)
        print(json.dumps(row), flush=True)
        write_run(args.data_dir / f"run-{trace.name}-{policy}.json", row, run)
    if runs:
        out = args.plot or REPO / "docs" / f"slo_{trace.name}.png"
        plot(runs, trace, out)
        print(f"[slo] plot: {out}", file=sys.stderr)
    return 0


def write_run(path: Path, row: dict[str, Any], run: Run) -> None:
    """A run's row, its once-a-second samples and every request's result, for looking into
    one run later (the results file keeps only the row)."""
    results = [_res(r) for r in run.results]
    path.write_text(json.dumps({"row": row, "samples": run.samples, "results": results}))


def _res(r: Result) -> dict[str, Any]:
    return {
        "cls": r.cls,
        "sent_s": r.sent_s,
        "latency_ms": r.latency_ms,
        "ok": r.ok,
        "variant": r.variant,
        "accuracy": r.accuracy,
        "error": r.error,
    }


if __name__ == "__main__":
    sys.exit(main())
