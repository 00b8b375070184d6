"""Request-rate traces for the SLO benchmark: CSV files and the open-loop arrivals they imply.

A trace is a CSV with a ``time_s`` column and one column per demand class,
named ``tenant:task:latency_ms:min_accuracy``; each row holds the rate
(requests/s) of every class from its ``time_s`` until the next row's (the last
row ends the trace). Arrivals are Poisson within each row's interval: open
loop, independent of how fast the service answers.

Shapes (`make_trace`): ``steady`` (flat), ``diurnal`` (one slow sine period),
``bursty`` (a base load with short spikes of several times the base, the
images classes spiking together, digits steady). Run this module to
(re)write ``bench/traces/*.csv``.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
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


def main() -> None:
    for shape in ("steady", "diurnal", "bursty"):
        path = write_trace(make_trace(shape), TRACES_DIR / f"{shape}.csv")
        print(path)


if __name__ == "__main__":
    main()
