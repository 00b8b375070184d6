"""Summaries of the SLO benchmark's runs: medians with 95 % bootstrap intervals, and ratios.

Input: the JSON lines `bench/slo.py --results` appends, one per run (policy,
trace, seed, ...). Per trace and policy: the number of runs and, for each
metric, the median with its percentile-bootstrap 95 % interval. Per trace and
baseline: the ratio of the baseline's median violations to infaas's (higher
is better for infaas) and of infaas's median cost to static FP32's, each with
a bootstrap interval (the two policies' runs resampled independently), and
whether the interval excludes 1. Every run in the file is used; none is
dropped: a run that failed (its row has ``error``) is counted as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("slo_attainment", "violations", "cost_replica_s", "mean_accuracy")
SUBJECT = "infaas"
COST_BASELINE = "static"


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of `path` (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bootstrap_median(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): the median and its 95 % percentile-bootstrap interval."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    return float(np.median(x)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def bootstrap_ratio(
    num: Sequence[float], den: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(ratio, low, high) of median(num) / median(den), both resampled independently.

    A zero denominator is replaced by 1 in the point estimate and in each
    resample (a policy with no violation counts as one, so ratios stay finite
    and conservative).
    """
    a = np.asarray(num, dtype=float)
    b = np.asarray(den, dtype=float)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), size=(resamples, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), size=(resamples, len(b)))], axis=1)
    r = ma / np.maximum(mb, 1.0)
    point = float(np.median(a) / max(float(np.median(b)), 1.0))
    return point, float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))


def _group(runs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["trace"], r["policy"]), []).append(r)
    return out


def summarise(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (trace, policy) and one per (trace, baseline) ratio (see module doc)."""
    failed = _group(r for r in runs if "error" in r)
    groups = _group(r for r in runs if "error" not in r)
    rows: list[dict[str, Any]] = []
    for (trace, policy), rs in sorted(groups.items()):
        row: dict[str, Any] = {
            "kind": "policy",
            "trace": trace,
            "policy": policy,
            "runs": len(rs),
            "failed_runs": len(failed.get((trace, policy), [])),
        }
        for m in METRICS:
            vals = [float(r[m]) for r in rs if r.get(m) is not None]
            if vals:
                med, lo, hi = bootstrap_median(vals)
                row[m] = {"median": round(med, 4), "ci95": [round(lo, 4), round(hi, 4)]}
        rows.append(row)
    for trace in sorted({t for t, _ in groups}):
        subject = groups.get((trace, SUBJECT))
        if not subject:
            continue
        for (t, policy), rs in sorted(groups.items()):
            if t != trace or policy == SUBJECT:
                continue
            ratio: dict[str, Any] = {
                "kind": "ratio",
                "trace": trace,
                "baseline": policy,
                "runs": [len(rs), len(subject)],
            }
            enough = min(len(rs), len(subject)) >= 2  # one run has no interval to speak of
            v, lo, hi = bootstrap_ratio(
                [r["violations"] for r in rs], [r["violations"] for r in subject]
            )
            ratio["violations_baseline_over_infaas"] = {
                "point": round(v, 3),
                "ci95": [round(lo, 3), round(hi, 3)],
                "excludes_1": (lo > 1 or hi < 1) if enough else None,
            }
            if policy == COST_BASELINE:
                c, lo, hi = bootstrap_ratio(
                    [r["cost_replica_s"] for r in subject], [r["cost_replica_s"] for r in rs]
                )
                ratio["cost_infaas_over_static"] = {
                    "point": round(c, 3),
                    "ci95": [round(lo, 3), round(hi, 3)],
                    "excludes_1": (lo > 1 or hi < 1) if enough else None,
                }
            rows.append(ratio)
    return rows


def plot_runs(runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Per trace: every run's SLO attainment and cost (one dot each) and each policy's median
    with its 95 % bootstrap interval, so the spread between seeds is seen, not only a median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(r for r in runs if "error" not in r)
    traces = sorted({t for t, _ in groups})
    policies = sorted({p for _, p in groups})
    fig, axes = plt.subplots(2, len(traces), figsize=(5 * len(traces), 7), squeeze=False)
    for col, trace in enumerate(traces):
        for row, (metric, label) in enumerate(
            (("slo_attainment", "SLO attainment"), ("cost_replica_s", "worker replica-seconds"))
        ):
            ax = axes[row][col]
            for i, policy in enumerate(policies):
                vals = [float(r[metric]) for r in groups.get((trace, policy), [])]
                if not vals:
                    continue
                ax.plot([i] * len(vals), vals, "o", alpha=0.5, color="C0")
                med, lo, hi = bootstrap_median(vals)
                ax.errorbar([i + 0.15], [med], yerr=[[med - lo], [hi - med]], fmt="s",
                            color="C3", capsize=4)  # fmt: skip
                ax.annotate(f"n={len(vals)}", (i, min(vals)), textcoords="offset points",
                            xytext=(0, -12), ha="center", fontsize=7)  # fmt: skip
            ax.set_xticks(range(len(policies)), policies, rotation=30, fontsize=8)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(trace)
                ax.axhline(0.95, color="grey", lw=0.8, ls="--")  # the bursty target
                ax.set_ylim(0.0, 1.02)
    fig.suptitle("runs (dots); medians, 95 % bootstrap intervals (squares)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(path: Path, plot: Path | None = None) -> None:
    """The summary of a results file, one JSON line per row: runs under each config (its
    sha256) apart, in the file's order, and smoke runs apart, marked. `plot`: a PNG of the
    last config's real (not smoke) runs (`plot_runs`)."""
    runs = read_runs(path)
    configs = list(dict.fromkeys(r.get("config_sha256") for r in runs))
    if plot is not None and configs:
        plot_runs([r for r in runs if r.get("config_sha256") == configs[-1]
                   and not r.get("smoke")], plot)  # fmt: skip
    for sha in configs:
        mine = [r for r in runs if r.get("config_sha256") == sha]
        for smoke in (False, True):
            for row in summarise([r for r in mine if bool(r.get("smoke")) == smoke]):
                row = row | {"config_sha256": sha}
                print(json.dumps(row | {"smoke": True} if smoke else row))
