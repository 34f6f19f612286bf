"""``effscale report RUN_DIR``: rebuild a run's tables, report files and plots.

Never imports Keras or TensorFlow: everything comes from the run directory's manifest,
logs and histories. Each command's report module provides
``rebuild(run: RunDir, fmt: str) -> None`` (``effscale.grid.report``,
``effscale.transfer.report``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from effscale import console

REPORTERS = {"grid": "effscale.grid.report", "transfer": "effscale.transfer.report"}


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="How to print the tables; report files are always CSV, Markdown and JSON.")
def report(run_dir: Path, fmt: str) -> None:
    """Re-render the tables, report files and plots of a grid or transfer run.

    \b
      effscale report runs/20261125-091500-transfer-b0-cifar10
    """
    from effscale.errors import RunDirError
    from effscale.runs import RunDir

    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; pass a run directory written by grid or transfer")
    run = RunDir(run_dir)
    command = run.read_manifest().get("command")
    if command not in REPORTERS:
        raise RunDirError(f"{run_dir} holds a {command!r} run, which has no report")
    importlib.import_module(REPORTERS[command]).rebuild(run, fmt)
