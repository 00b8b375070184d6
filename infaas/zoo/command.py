"""`infaas zoo build`: build the example zoo with a progress bar and print its table."""

from __future__ import annotations

import argparse

from infaas.settings import Settings
from infaas.zoo.build import build_zoo


def zoo_build_command(args: argparse.Namespace, settings: Settings) -> int:
    """`infaas zoo build`: build the zoo under the settings' zoo dir with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # piped: rich would fold the table into 80 columns
    n_models = 6
    with Progress(
        TextColumn("[bold]zoo[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        t = bar.add_task("starting", total=n_models)
        started = [False]

        def progress(desc: str) -> None:
            if started[0]:
                bar.advance(t)
            started[0] = True
            bar.update(t, description=desc)

        entries = build_zoo(
            settings.zoo_dir, small=bool(args.small), force=bool(args.force), progress=progress
        )
        bar.advance(t)
    table = Table(title=f"model zoo in {settings.zoo_dir}")
    for col in ("model", "task", "architecture", "input", "params", "size", "accuracy"):
        table.add_column(col)
    for e in entries:
        acc = (
            f"{e.heldout_accuracy:.3f} (held-out)"
            if e.heldout_accuracy is not None
            else f"{e.declared_accuracy:.3f} (declared)"
        )
        table.add_row(
            e.model_id,
            e.task,
            e.architecture,
            "x".join(map(str, e.input.shape)),
            f"{e.num_parameters:,}",
            f"{e.size_bytes / 1e6:.1f} MB",
            acc,
        )
    console.print(table)
    return 0
