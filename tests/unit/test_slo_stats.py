"""The SLO bench's summary statistics: bootstrap intervals and ratios on known samples."""

from __future__ import annotations

import pytest

from bench.slo_stats import bootstrap_median, bootstrap_ratio, summarise


def test_bootstrap_median_brackets_the_median_and_shrinks_with_agreement() -> None:
    med, lo, hi = bootstrap_median([10, 11, 12, 13, 50])
    assert med == 12 and lo <= med <= hi
    assert bootstrap_median([5, 5, 5, 5, 5]) == (5.0, 5.0, 5.0)


def test_ratio_interval_excludes_one_only_when_the_samples_separate() -> None:
    far = bootstrap_ratio([300, 320, 310, 305, 330], [100, 90, 110, 95, 105])
    assert far[0] == pytest.approx(310 / 100) and far[1] > 1
    close = bootstrap_ratio([100, 300, 120, 90, 250], [110, 280, 95, 130, 200])
    assert close[1] < 1 < close[2]
    # no violations at all counts as one: finite
    assert bootstrap_ratio([10, 10], [0, 0])[0] == 10


def test_summarise_reports_every_run_and_the_ratios() -> None:
    runs = [
        {
            "trace": "t",
            "policy": p,
            "seed": s,
            "violations": v,
            "cost_replica_s": c,
            "slo_attainment": 0.9,
            "mean_accuracy": 0.8,
        }
        for p, v, c in (("infaas", 10, 80), ("static", 60, 100), ("infaas-style", 40, 90))
        for s in range(5)
    ]
    runs.append({"trace": "t", "policy": "static", "seed": 9, "error": "RuntimeError: boom"})
    rows = summarise(runs)
    per = {r["policy"]: r for r in rows if r["kind"] == "policy"}
    assert {p: r["runs"] for p, r in per.items()} == {"infaas": 5, "static": 5, "infaas-style": 5}
    assert per["static"]["violations"]["median"] == 60
    assert per["static"]["failed_runs"] == 1 and per["infaas"]["failed_runs"] == 0
    ratios = {r["baseline"]: r for r in rows if r["kind"] == "ratio"}
    assert ratios["static"]["violations_baseline_over_infaas"]["point"] == 6.0
    assert ratios["static"]["cost_infaas_over_static"]["point"] == 0.8
    assert ratios["infaas-style"]["violations_baseline_over_infaas"]["excludes_1"]
    assert "cost_infaas_over_static" not in ratios["infaas-style"]
    one = summarise([r for r in runs if r.get("seed") == 0])
    assert all(
        r["violations_baseline_over_infaas"]["excludes_1"] is None
        for r in one
        if r["kind"] == "ratio"
    )
