"""Human-readable output of a profiling run: a table and an accuracy/latency plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from infaas.types import Profile, VariantSpec


@dataclass(frozen=True)
class Row:
    """One variant's outcome: a profile, or the reason it could not be had."""

    spec: VariantSpec
    profile: Profile | None = None
    unsupported: str | None = None


def _at(profile: Profile, batch: int) -> str:
    try:
        return f"{profile.at_batch(batch).p50_ms:.2f}"
    except KeyError:
        return "-"


def render_table(rows: Sequence[Row], title: str = "variant profiles") -> Table:
    table = Table(title=title)
    for col, justify in [
        ("model", "left"),
        ("variant", "left"),
        ("precision", "left"),
        ("backend", "left"),
        ("p50@1 ms", "right"),
        ("p50@8 ms", "right"),
        ("throughput /s", "right"),
        ("load ms", "right"),
        ("accuracy", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        s = r.spec
        quant = "-dyn" if s.quantization.value == "dynamic" else ""
        prec = f"{s.precision.value}{quant}"
        if r.profile is None:
            table.add_row(
                s.model_id,
                s.variant_id.removeprefix(f"{s.model_id}."),
                prec,
                s.backend.value,
                "unsupported",
                "",
                "",
                "",
                r.unsupported or "",
            )
            continue
        p = r.profile
        acc = f"{p.accuracy:.3f}" + (" (agr)" if p.accuracy_kind == "agreement" else "")
        table.add_row(
            s.model_id,
            s.variant_id.removeprefix(f"{s.model_id}."),
            prec,
            s.backend.value,
            _at(p, 1),
            _at(p, 8),
            f"{p.peak_throughput_rps:.0f}",
            f"{p.load_ms:.0f}",
            acc,
        )
    return table


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc)
            for j, (l2, a2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_accuracy_latency(rows: Sequence[Row], path: Path) -> Path:
    """Accuracy vs batch-1 p50 latency, one panel per task, Pareto frontier marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.profile is not None]
    tasks = sorted({r.spec.task for r in measured}) or ["(none)"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    markers = {"onnxruntime": "o", "openvino": "s"}
    colours = {"fp32": "tab:blue", "bf16": "tab:green", "int8": "tab:red"}
    for ax, task in zip(axes[0], tasks, strict=True):
        pts = [r for r in measured if r.spec.task == task]
        xy = [(r.profile.p50_batch1_ms, r.profile.accuracy) for r in pts if r.profile]
        for r, (x, y) in zip(pts, xy, strict=True):
            ax.scatter(
                x,
                y,
                marker=markers.get(r.spec.backend.value, "o"),
                color=colours.get(r.spec.precision.value, "grey"),
                alpha=0.8,
            )
            ax.annotate(r.spec.variant_id.removeprefix(f"{task}-"), (x, y), fontsize=6, alpha=0.7)
        front = pareto_front(xy)
        if front:
            ax.plot(
                [xy[i][0] for i in front],
                [xy[i][1] for i in front],
                "k--",
                lw=1,
                label="Pareto frontier",
            )
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency at batch 1 (ms, log)")
        ax.set_ylabel("top-1 accuracy")
        ax.set_title(f"task {task}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        "variants: accuracy vs latency (o onnxruntime, s OpenVINO; blue fp32, "
        "green bf16, red int8)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
