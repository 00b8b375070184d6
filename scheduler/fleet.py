"""Synthetic fleets and workloads for the cluster simulator (`scheduler.simulation`).

A fleet is models in families (one task per family), each model in several
variants on several pools, and tenants in SLO classes. The numbers a variant
gets are drawn around measured ones, and every ratio not measured here is an
assumption named in `ANCHORS`:

* FP32 on one CPU thread: ResNet-50 on onnxruntime, 51 ms a request (README,
  ``bench/variants.py``); a model's size scales it log-normally (sigma 0.6:
  ResNet-18 to ResNet-152 span about 1/3x to 2x);
* INT8 (OpenVINO): 9.9 / 51 = 0.19x FP32 (measured, same run); accuracy
  0.01 below FP32 (assumed);
* BF16 on an AMX pool: 0.5x FP32 (assumed), accuracy 0.002 below;
* a GPU-like pool: 0.1x FP32 at batch 1 with a batch slope 1/20 of a CPU's,
  at 8x a CPU replica's price (assumed ratios, not measured: no GPU here).

Arrivals: per class, a rate shape (the bench feeds the Azure trace's) with a
phase offset per class, and Gamma gaps of a given coefficient of variation
within it (`gamma_arrivals`; CV 1 is Poisson, 4 is bursty).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from infaas.settings import Pool
from infaas.types import SLO, Backend, Precision
from scheduler.allocation import Allocation, AllocationProblem, Demand, solve_greedy
from scheduler.policy import Candidate, CandidateSet, demand_key
from scheduler.synthetic import synthetic_variant

__all__ = [
    "ANCHORS",
    "ClassLoad",
    "Fleet",
    "fleet",
    "gamma_arrivals",
    "peak_plan",
    "peak_rates",
    "shifted",
]

ANCHORS = {
    "fp32_ms": 51.0,
    "int8_ratio": 9.9 / 51.0,
    "bf16_ratio": 0.5,
    "gpu_ratio": 0.1,
    "gpu_price": 8.0,
}
POOLS = (
    Pool(name="cpu", num_cpus=1, cost_per_replica_s=1.0),
    Pool(name="amx", num_cpus=1, cost_per_replica_s=1.2, custom_resources={"amx": 1}),
    Pool(
        name="gpu",
        num_cpus=4,
        cost_per_replica_s=ANCHORS["gpu_price"],
        custom_resources={"gpu_like": 1},
    ),
)


@dataclass(frozen=True, slots=True)
class ClassLoad:
    """One demand class of the workload: arrival times of its requests."""

    task: str
    slo: SLO
    arrivals: Sequence[float]

    @property
    def key(self) -> str:
        return demand_key(self.task, self.slo.latency_ms, self.slo.min_accuracy)


def gamma_arrivals(
    rates: Sequence[tuple[float, float]], end_s: float, cv: float, rng: random.Random
) -> list[float]:
    """Arrival times whose gaps are Gamma with coefficient of variation `cv` (1: Poisson),
    at the piecewise-constant rate `rates` ((from_s, rps), ...) until `end_s`."""
    out: list[float] = []
    shape = 1.0 / (cv * cv)
    for i, (t0, rps) in enumerate(rates):
        t1 = rates[i + 1][0] if i + 1 < len(rates) else end_s
        if rps <= 0:
            continue
        t = t0 + rng.gammavariate(shape, 1.0 / (shape * rps))
        while t < t1:
            out.append(t)
            t += rng.gammavariate(shape, 1.0 / (shape * rps))
    return out


def shifted(
    shape: Sequence[float], step_s: float, mean_rps: float, offset: int
) -> list[tuple[float, float]]:
    """`shape` (one value per `step_s`) rotated by `offset` steps and scaled to `mean_rps`."""
    n = len(shape)
    mean = sum(shape) / n if n else 0.0
    if mean <= 0:
        return [(0.0, 0.0)]
    return [(i * step_s, mean_rps * shape[(i + offset) % n] / mean) for i in range(n)]


@dataclass(frozen=True, slots=True)
class Fleet:
    candidates: CandidateSet
    pools: tuple[Pool, ...]
    classes: tuple[tuple[str, SLO, float], ...]
    """(task, SLO, mean rps) per demand class: its tenants' traffic together."""
    tenants: int

    @property
    def models(self) -> int:
        return len({c.spec.model_id for c in self.candidates})


def _variants(
    task: str, model: str, fp32_ms: float, acc: float, pools: set[str]
) -> list[Candidate]:
    size = fp32_ms / ANCHORS["fp32_ms"]
    load = 300.0 + 700.0 * size
    mem = int(100 * 1024**2 * size)
    kinds = [
        ("cpu", "fp32-ort", Precision.FP32, Backend.ONNXRUNTIME, 1.0, 0.0, 0.2, 0.8),
        ("cpu", "int8-ov", Precision.INT8, Backend.OPENVINO, ANCHORS["int8_ratio"], 0.01, 0.2, 0.8),
        (
            "amx",
            "bf16-ov",
            Precision.BF16,
            Backend.OPENVINO,
            ANCHORS["bf16_ratio"],
            0.002,
            0.2,
            0.8,
        ),
        (
            "amx",
            "int8-ov",
            Precision.INT8,
            Backend.OPENVINO,
            ANCHORS["int8_ratio"] * 0.7,
            0.01,
            0.2,
            0.8,
        ),
        (
            "gpu",
            "fp32-ort",
            Precision.FP32,
            Backend.ONNXRUNTIME,
            ANCHORS["gpu_ratio"],
            0.0,
            0.9,
            0.05,
        ),
    ]
    pool_of = {p.name: p for p in POOLS}
    out = []
    for pool, name, prec, backend, ratio, drop, a, b in kinds:
        if pool not in pools:
            continue
        ms = fp32_ms * ratio
        spec, prof = synthetic_variant(
            f"{model}-{name}-{pool}",
            task=task,
            architecture=model,
            model_id=model,
            precision=prec,
            backend=backend,
            pool=pool,
            accuracy=round(acc - drop, 4),
            intercept_ms=a * ms,
            slope_ms=b * ms,
            load_ms=load,
            peak_memory_bytes=mem,
        )
        out.append(Candidate.of(spec, prof, pool_of[pool]))
    return out


def fleet(
    models: int,
    *,
    tenants: int,
    mean_rps: float,
    seed: int = 0,
    family_size: int = 5,
    pools: Sequence[str] = ("cpu", "amx", "gpu"),
    latencies_ms: Sequence[float] = (100.0, 200.0, 400.0, 800.0),
) -> Fleet:
    """`models` models in families of `family_size`; `tenants` tenants in SLO classes whose
    traffic sums to `mean_rps` (per-tenant rates log-normal, sigma 1.5: a few heavy tenants)."""
    rng = random.Random(seed)
    cands: list[Candidate] = []
    family_acc: dict[str, list[float]] = {}
    for m in range(models):
        task = f"task{m // family_size}"
        fp32 = ANCHORS["fp32_ms"] * math.exp(rng.gauss(0.0, 0.6))
        acc = min(0.95, 0.6 + 0.1 * math.log(fp32 / 10.0) + rng.gauss(0.0, 0.02))
        cands += _variants(task, f"m{m}", fp32, acc, set(pools))
        family_acc.setdefault(task, []).append(acc - 0.01)
    tasks = sorted(family_acc)
    weights = [1.0 / (i + 1) for i in range(len(tasks))]  # Zipf popularity of families
    per_class: dict[tuple[str, float, float], float] = {}
    for _ in range(tenants):
        task = rng.choices(tasks, weights)[0]
        accs = sorted(family_acc[task])
        floor = round(accs[rng.randrange(len(accs))] - 0.005, 3)
        lat = rng.choice(latencies_ms)
        rate = math.exp(rng.gauss(0.0, 1.5))
        key = (task, lat, floor)
        per_class[key] = per_class.get(key, 0.0) + rate
    total = sum(per_class.values())
    classes = tuple(
        (t, SLO(latency_ms=lat, min_accuracy=acc), mean_rps * r / total)
        for (t, lat, acc), r in sorted(per_class.items())
    )
    pool_objs = tuple(p for p in POOLS if p.name in set(pools))
    return Fleet(CandidateSet(cands), pool_objs, classes, tenants)


def peak_rates(
    workload: Sequence[ClassLoad], window_s: float = 10.0, from_s: float = 0.0
) -> dict[str, float]:
    """Each class's highest rate over `window_s` windows of its arrivals from `from_s` on."""
    out: dict[str, float] = {}
    for cl in workload:
        counts: dict[int, int] = {}
        for t in cl.arrivals:
            if t >= from_s:
                k = int((t - from_s) // window_s)
                counts[k] = counts.get(k, 0) + 1
        out[cl.key] = max(counts.values(), default=0) / window_s
    return out


def peak_plan(
    candidates: CandidateSet,
    workload: Sequence[ClassLoad],
    rates: dict[str, float],
    *,
    cpu_budget: float,
    replica_memory_bytes: int,
) -> Allocation:
    """Peak provisioning: the greedy plan for every class at its peak rate (`peak_rates`).

    `candidates` must be the ones the simulated control loop plans with (profiles as
    served, with the request path: `scheduler.control.with_overhead`), or the plan counts
    replicas faster than the simulated ones."""
    demands = tuple(
        Demand(cl.key, cl.task, rates.get(cl.key, 0.0), cl.slo.latency_ms, cl.slo.min_accuracy)
        for cl in workload
    )
    return solve_greedy(
        AllocationProblem(
            demands,
            candidates.all,
            cpu_budget=cpu_budget,
            replica_memory_bytes=replica_memory_bytes,
            max_replicas_per_pool=int(cpu_budget),
        )
    )
