"""`infaas profile`: generate and measure every variant of the zoo's models, store profiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from infaas.errors import InvalidInput, ModelNotFound
from infaas.logs import get_logger
from infaas.settings import Settings
from infaas.store import open_store
from infaas.types import Profile, VariantSpec
from infaas.zoo import (
    build_zoo,
    load_calibration,
    load_manifest,
    load_model_bytes,
    load_validation,
)
from profiler.profile import ProfileOptions, profile_model
from profiler.report import Row, plot_accuracy_latency, render_table
from variants.generate import VARIANT_KINDS

log = get_logger(__name__)


def parse_batch_sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError as e:
        raise InvalidInput(f"--batch-sizes must be comma-separated integers, got {text!r}") from e
    if not sizes or sizes[0] < 1:
        raise InvalidInput(f"--batch-sizes must be positive, got {text!r}")
    return tuple(sizes)


def profile_command(args: argparse.Namespace, settings: Settings) -> int:
    """Profile the zoo (building it first if missing); store, print and plot the results."""
    console = Console(stderr=bool(args.json))
    if not console.is_terminal:
        # piped or captured: rich would fold the table into 80 columns
        console = Console(stderr=bool(args.json), width=150)
    zoo_dir = settings.zoo_dir
    try:
        manifest = load_manifest(zoo_dir)
    except FileNotFoundError:
        console.print(
            f"[yellow]no model zoo in {zoo_dir}: building it now "
            "(run `infaas zoo build` to do this ahead of time; --small for a fast one)[/yellow]"
        )
        build_zoo(zoo_dir)
        manifest = load_manifest(zoo_dir)
    entries = list(manifest.models)
    if args.model:
        known = {e.model_id for e in entries}
        missing = [m for m in args.model if m not in known]
        if missing:
            raise ModelNotFound(f"not in the zoo: {', '.join(missing)} (known: {sorted(known)})")
        entries = [e for e in entries if e.model_id in args.model]
    options = ProfileOptions.from_settings(
        settings.profiler, quick=bool(args.quick), batch_sizes=parse_batch_sizes(args.batch_sizes)
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with (
        open_store(settings.resolved_store_url) as store,
        Progress(
            TextColumn("[bold]profile[/bold] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("", total=len(entries) * len(VARIANT_KINDS))
        for entry in entries:
            record = entry.to_model_record()
            store.put_model(record)
            bar.update(task, description=f"{entry.model_id}: generating variants")
            x, y = load_validation(zoo_dir, entry)
            x = x[: settings.profiler.validation_samples]
            y = None if y is None else y[: settings.profiler.validation_samples]
            calibration = load_calibration(zoo_dir, entry)[: settings.profiler.calibration_samples]

            def done(spec: VariantSpec, profile: Profile | None, reason: str | None) -> None:
                store.put_variant(spec)
                if profile is not None:
                    store.put_profile(profile)
                rows.append(Row(spec, profile, reason))
                bar.advance(task)
                bar.update(task, description=f"{spec.variant_id} done")

            profile_model(
                record,
                load_model_bytes(zoo_dir, entry),
                calibration,
                x,
                y,
                options=options,
                max_batch=max(options.batch_sizes),
                on_variant=done,
            )
    plot_path = args.plot or settings.data_dir / "profiles.png"
    plot_accuracy_latency(rows, Path(plot_path))
    if args.json:
        for r in rows:
            if r.profile is not None:
                sys.stdout.write(r.profile.model_dump_json() + "\n")
        for r in rows:
            if r.profile is None:
                console.print(f"unsupported: {r.spec.variant_id}: {r.unsupported}")
    else:
        console.print(render_table(rows, title=f"variant profiles ({options.threads} threads)"))
        console.print(f"accuracy/latency plot: {plot_path}")
    return 0
