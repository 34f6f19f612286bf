"""The live console view of a running search: trial i of N, the trial running, the best so far.

``effscale.grid.run`` reports to any object with ``begin``/``started``/``finished``
(``executors.Progress`` is the silent one); the CLI passes ``ConsoleProgress``, which draws
a rich progress bar on stderr so stdout keeps only the ranked table. No Keras here.
"""

from __future__ import annotations

from effscale import console
from effscale.grid.search import TrialStatus


class ConsoleProgress:
    """Rich live progress on stderr and one line per finished trial."""

    def __init__(self, label: str = "grid"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console.err,
                                 transient=False)
        self.task = None
        self.best = "-"

    def __enter__(self) -> ConsoleProgress:
        return self  # the bar starts with the first trial, so an early error prints one line only

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def opened(self, run, space, fresh: bool, done: int) -> None:
        config = space.config
        console.info(f"{'Run dir' if fresh else 'Resuming'} {run.path}: {len(space.entries)} candidates "
                     f"(incl. reference rows), {space.planned_trials()} trials planned"
                     + (f", {done} already complete" if done else "")
                     + f"; dataset {config.dataset}, {config.limit_train} train / {config.limit_val} val images")

    def begin(self, total: int, done: int) -> None:
        if self.task is None:
            self.progress.start()
        else:  # a second phase (the phi confirmation) gets its own bar
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task("", total=total, completed=done)

    def started(self, spec) -> None:
        self.progress.update(self.task, description=f"running {spec.trial_id} ({spec.epochs} ep) | best {self.best}")

    def finished(self, record, best) -> None:
        if best is not None:
            self.best = f"{best['candidate']['id']} {100 * best['metrics']['val_accuracy']:.1f}% (rung {best['rung']})"
        if record.status is TrialStatus.COMPLETE:
            line = f"{record.trial_id}: {100 * record.metrics['val_accuracy']:.1f}% in {record.seconds:.0f}s"
        else:
            line = f"[red]{record.trial_id} {TrialStatus.FAILED.value}[/red]: {record.error}"
        self.progress.console.print(line, highlight=False)
        self.progress.update(self.task, advance=1, description=f"best {self.best}")
