"""The SLO evaluation's protocol: the frozen config's matrix, its order, and the traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.slo import matrix, parse_args
from bench.traces import AZURE_COUNTS, TRACES_DIR, azure_trace, derive_azure, read_trace

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "slo-eval.yaml"


def test_the_frozen_matrix_is_complete_interleaved_and_reproducible() -> None:
    args = parse_args(["--config", str(CONFIG)])
    plan = matrix(args)
    ev = args.eval
    assert len(ev["seeds"]) >= 5
    assert {"infaas", "infaas-style", "queue", "static-modelless", "static"} <= set(ev["policies"])
    assert {"bursty", "azure"} <= set(ev["traces"])
    assert sorted(plan) == sorted(
        (p, t, s) for p in ev["policies"] for t in ev["traces"] for s in ev["seeds"]
    )
    assert plan == matrix(parse_args(["--config", str(CONFIG)]))  # same order every session
    # interleaved: the first runs already cover most policies, not one policy's seeds
    assert len({p for p, _, _ in plan[: len(ev["policies"]) * 2]}) >= 3
    # the constants come from the config, not the command line's defaults
    assert args.autoscaler["downscale_delay_s"] == ev["autoscaler"]["downscale_delay_s"]
    assert len(args.config_sha256) == 64


def test_smoke_takes_one_seed() -> None:
    args = parse_args(["--config", str(CONFIG), "--smoke"])
    assert {s for _, _, s in matrix(args)} == {args.eval["seeds"][0]}
    assert args.time_scale == pytest.approx(0.2 * args.eval["time_scale"])


def test_azure_counts_derive_from_timestamps_and_the_shipped_trace_matches(tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text(
        "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:46.9,1,1\n"
        "2023-11-16 18:15:49.1,1,1\n"
    )
    out = derive_azure(raw, tmp_path / "counts.csv")
    assert out.read_text().split() == ["second,requests", "0,2", "1,0", "2,1"]
    shipped = read_trace(TRACES_DIR / "azure.csv")
    fresh = azure_trace(AZURE_COUNTS)
    assert shipped.rates == fresh.rates and shipped.times_s == fresh.times_s
    assert fresh.expected_requests() / fresh.duration_s == pytest.approx(12.0, rel=0.01)
