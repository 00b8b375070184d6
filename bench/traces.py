"""Request-rate traces for the SLO benchmark: CSV files and the open-loop arrivals they imply.

A trace is a CSV with a ``time_s`` column and one column per demand class,
named ``tenant:task:latency_ms:min_accuracy``; each row holds the rate
(requests/s) of every class from its ``time_s`` until the next row's (the last
row ends the trace). Arrivals are Poisson within each row's interval: open
loop, independent of how fast the service answers.

Shapes (`make_trace`): ``steady`` (flat), ``diurnal`` (one slow sine period),
``bursty`` (a base load with short spikes of several times the base, the
images classes spiking together, digits steady), and ``azure``: the shape of
a public production trace (`azure_trace`, from
``bench/traces/azure_conv_2023_per_second.csv``; source and licence in
``bench/traces/README.md``). Run this module to (re)write ``bench/traces/*.csv``;
``python bench/traces.py --derive-azure RAW.csv`` re-derives the per-second
counts from the published trace.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

TRACES_DIR = Path(__file__).resolve().parent / "traces"


@dataclass(frozen=True, slots=True)
class DemandClass:
    """Who sends what under which SLO."""

    tenant: str
    task: str
    latency_ms: float
    min_accuracy: float

    @property
    def name(self) -> str:
        return f"{self.tenant}:{self.task}:{self.latency_ms:g}:{self.min_accuracy:g}"

    @classmethod
    def parse(cls, name: str) -> DemandClass:
        tenant, task, lat, acc = name.split(":")
        return cls(tenant, task, float(lat), float(acc))


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    classes: tuple[DemandClass, ...]
    times_s: tuple[float, ...]
    """Row start times; the last one is the end of the trace."""
    rates: tuple[tuple[float, ...], ...]
    """rates[i][j]: class j's rate from times_s[i] to times_s[i + 1]."""

    @property
    def duration_s(self) -> float:
        return self.times_s[-1]

    def rate_at(self, t: float) -> list[float]:
        for i in range(len(self.times_s) - 1):
            if self.times_s[i] <= t < self.times_s[i + 1]:
                return list(self.rates[i])
        return [0.0] * len(self.classes)

    def expected_requests(self) -> float:
        return sum(
            sum(self.rates[i]) * (self.times_s[i + 1] - self.times_s[i])
            for i in range(len(self.times_s) - 1)
        )

    def scaled(self, rate_factor: float = 1.0, time_factor: float = 1.0) -> Trace:
        return Trace(
            self.name,
            self.classes,
            tuple(t * time_factor for t in self.times_s),
            tuple(tuple(r * rate_factor for r in row) for row in self.rates),
        )

    def arrivals(self, seed: int = 0, max_requests: int | None = None) -> list[tuple[float, int]]:
        """(send time, class index), sorted: Poisson within each row's interval."""
        rng = random.Random(seed)
        out: list[tuple[float, int]] = []
        for i in range(len(self.times_s) - 1):
            t0, t1 = self.times_s[i], self.times_s[i + 1]
            for j, rate in enumerate(self.rates[i]):
                if rate <= 0:
                    continue
                t = t0 + rng.expovariate(rate)
                while t < t1:
                    out.append((t, j))
                    t += rng.expovariate(rate)
        out.sort()
        return out[:max_requests] if max_requests is not None else out


def write_trace(trace: Trace, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", *(c.name for c in trace.classes)])
        for t, row in zip(trace.times_s, (*trace.rates, None), strict=True):
            w.writerow([f"{t:g}", *(f"{r:g}" for r in (row or [0.0] * len(trace.classes)))])
    return path


def read_trace(path: Path) -> Trace:
    with path.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if header[0] != "time_s" or len(body) < 2:
        raise ValueError(f"{path}: want a time_s column and at least two rows")
    classes = tuple(DemandClass.parse(n) for n in header[1:])
    times = tuple(float(r[0]) for r in body)
    if list(times) != sorted(times):
        raise ValueError(f"{path}: time_s must ascend")
    rates = tuple(tuple(float(x) for x in r[1:]) for r in body[:-1])
    return Trace(path.stem, classes, times, rates)


# the classes of the benchmark: two tenants, two tasks, three SLOs; the image targets suit
# the 224x224 zoo on one core per replica (ResNet-50 FP32 takes ~50 ms a request there)
CLASSES: tuple[DemandClass, ...] = (
    DemandClass("demo", "images", 300, 0.7),
    DemandClass("bench-b", "images", 200, 0.6),
    DemandClass("bench-b", "digits", 50, 0.95),
)
BASE_RPS: tuple[float, ...] = (6.0, 4.0, 2.0)
"""Per-class base rates; the images classes carry the bursts."""


def make_trace(
    shape: str,
    duration_s: float = 150.0,
    step_s: float = 2.0,
    classes: Sequence[DemandClass] = CLASSES,
    base_rps: Sequence[float] = BASE_RPS,
    seed: int = 7,
) -> Trace:
    """A synthetic trace of `shape` (steady, diurnal, bursty)."""
    rng = random.Random(seed)
    n = int(duration_s / step_s)
    times = tuple(i * step_s for i in range(n + 1))
    rows = []
    # bursty: spikes of 3-4x the base on the images classes, 16-24 s long, starting at
    # 20 %, 50 % and 78 % of the trace
    spikes = [(0.2, 20.0, 3.5), (0.5, 16.0, 4.0), (0.78, 24.0, 3.0)]
    for i in range(n):
        t = times[i]
        row = []
        for j, (c, base) in enumerate(zip(classes, base_rps, strict=True)):
            factor = 1.0
            if shape == "diurnal":
                factor = 1.0 + 0.8 * math.sin(2 * math.pi * t / duration_s - math.pi / 2)
                factor = max(0.2, factor)
            elif shape == "bursty" and c.task == "images":
                for start, length, peak in spikes:
                    s0 = start * duration_s
                    if s0 <= t < s0 + length:
                        factor = peak * (0.9 + 0.2 * rng.random())
            elif shape != "steady" and shape != "bursty":
                raise ValueError(f"unknown trace shape {shape!r}")
            del j
            row.append(round(base * factor, 2))
        rows.append(tuple(row))
    return Trace(shape, tuple(classes), times, tuple(rows))


AZURE_COUNTS = TRACES_DIR / "azure_conv_2023_per_second.csv"


def derive_azure(raw: Path, out: Path = AZURE_COUNTS) -> Path:
    """Requests per second of the Azure LLM inference trace 2023 (``TIMESTAMP`` column).

    Only the count of arrivals in each second from the first one is kept:
    no token counts, no timestamps.
    """
    with raw.open(encoding="utf-8-sig") as f:
        stamps = [datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in csv.DictReader(f)]
    t0 = min(stamps)
    counts: dict[int, int] = {}
    for t in stamps:
        s = int((t - t0).total_seconds())
        counts[s] = counts.get(s, 0) + 1
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["second", "requests"])
        for s in range(max(counts) + 1):
            w.writerow([s, counts.get(s, 0)])
    return out


def azure_trace(
    counts_path: Path = AZURE_COUNTS,
    duration_s: float = 150.0,
    step_s: float = 2.0,
    classes: Sequence[DemandClass] = CLASSES,
    base_rps: Sequence[float] = BASE_RPS,
) -> Trace:
    """The production trace's shape at the bench's scale.

    The whole trace (about an hour) is compressed into `duration_s`: each step's
    rate is the mean arrival rate over the matching stretch of the trace (48 s
    for the defaults), so its minute-scale swings are kept and the per-second
    Poisson noise is left to the load generator. Rates are scaled so the
    mean total equals ``sum(base_rps)`` and split across `classes` in
    proportion to `base_rps`.
    """
    with counts_path.open() as f:
        counts = [int(r["requests"]) for r in csv.DictReader(f)]
    n = int(duration_s / step_s)
    per = len(counts) / n
    means = []
    for i in range(n):
        a, b = int(i * per), max(int((i + 1) * per), int(i * per) + 1)
        means.append(sum(counts[a:b]) / (b - a))
    scale = sum(base_rps) / (sum(means) / n)
    share = [r / sum(base_rps) for r in base_rps]
    rows = tuple(tuple(round(m * scale * s, 2) for s in share) for m in means)
    times = tuple(i * step_s for i in range(n + 1))
    return Trace("azure", tuple(classes), times, rows)


def main() -> None:
    p = argparse.ArgumentParser(description="(Re)write the bench's traces.")
    p.add_argument("--derive-azure", type=Path, help="AzureLLMInferenceTrace_conv.csv")
    args = p.parse_args()
    if args.derive_azure is not None:
        print(derive_azure(args.derive_azure))
    for shape in ("steady", "diurnal", "bursty"):
        path = write_trace(make_trace(shape), TRACES_DIR / f"{shape}.csv")
        print(path)
    print(write_trace(azure_trace(), TRACES_DIR / "azure.csv"))


if __name__ == "__main__":
    main()
