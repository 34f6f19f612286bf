"""``effscale grid``: the phi=1 compound-scaling grid search with proxy training."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from effscale import console

# option name -> GridConfig field (the options that make up the run's settings)
CONFIG_OPTIONS = {
    "budget": "budget", "tolerance": "tolerance", "step": "step", "alpha": "alpha_range", "beta": "beta_range",
    "gamma": "gamma_range", "dataset": "dataset", "data_dir": "data_dir", "limit_train": "limit_train",
    "limit_val": "limit_val", "resolution": "resolution", "base_width": "base_width", "base_depth": "base_depth",
    "epochs": "epochs", "schedule": "schedule", "eta": "eta", "rungs": "rungs", "seeds": "seeds",
    "batch_size": "batch_size", "learning_rate": "learning_rate", "bn_momentum": "bn_momentum",
    "bn_recalibration_batches": "bn_recalibration_batches",
}
RANGE = click.Tuple([float, float])


def _resolve_config(ctx: click.Context, params: dict, base: dict, overrides: dict | None = None):
    """Base (defaults, or the resumed run's settings) < preset overrides < explicit flags."""
    from effscale.grid.config import GridConfig

    explicit = dict(overrides or {})
    for option, field in CONFIG_OPTIONS.items():
        if ctx.get_parameter_source(option) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            value = params[option]
            explicit[field] = tuple(value) if isinstance(value, (tuple, list)) else value
    return GridConfig.from_dict(base).replace(**explicit).validate(), explicit


class _Progress:
    """Rich live progress on stderr: trial i of N, the trial running, the best so far."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]grid[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console.err,
                                 transient=False)
        self.task = None
        self.best = "-"

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def begin(self, total: int, done: int) -> None:
        self.task = self.progress.add_task("", total=total, completed=done)

    def started(self, spec) -> None:
        self.progress.update(self.task, description=f"running {spec.trial_id} ({spec.epochs} ep) | best {self.best}")

    def finished(self, record, best) -> None:
        if best is not None:
            self.best = f"{best['candidate']['id']} {100 * best['metrics']['val_accuracy']:.1f}% (rung {best['rung']})"
        if record.status.value == "COMPLETE":
            line = (f"{record.trial_id}: {100 * record.metrics['val_accuracy']:.1f}% "
                    f"in {record.seconds:.0f}s")
        else:
            line = f"[red]{record.trial_id} FAILED[/red]: {record.error}"
        self.progress.console.print(line, highlight=False)
        self.progress.update(self.task, advance=1, description=f"best {self.best}")


@click.command()
@click.option("--budget", type=float, default=2.0, show_default=True,
              help="FLOPs multiplier per step of phi: keep alpha*beta^2*gamma^2 close to it (> 1).")
@click.option("--tolerance", type=float, default=0.08, show_default=True,
              help="Keep candidates with |alpha*beta^2*gamma^2 - budget| <= this.")
@click.option("--step", type=float, default=0.1, show_default=True, help="Grid step of alpha, beta and gamma (> 0).")
@click.option("--alpha", type=RANGE, default=(1.0, 2.0), show_default=True, metavar="MIN MAX", help="Depth range.")
@click.option("--beta", type=RANGE, default=(1.0, 1.5), show_default=True, metavar="MIN MAX", help="Width range.")
@click.option("--gamma", type=RANGE, default=(1.0, 1.5), show_default=True, metavar="MIN MAX",
              help="Resolution range.")
@click.option("--dataset", default="cifar100", show_default=True,
              help="cifar100, cifar10, synthetic, an image folder or a .tar.gz of one.")
@click.option("--data-dir", help="Where the CIFAR archives are (offline machines).")
@click.option("--limit-train", type=int, default=4000, show_default=True, help="Training images of the proxy task.")
@click.option("--limit-val", type=int, default=1000, show_default=True, help="Validation images that score trials.")
@click.option("--resolution", type=int, default=48, show_default=True,
              help="Proxy base resolution in pixels, which gamma scales.")
@click.option("--base-width", type=float, default=0.5, show_default=True, help="Width of the proxy base (x B0).")
@click.option("--base-depth", type=float, default=1.0, show_default=True, help="Depth of the proxy base (x B0).")
@click.option("--epochs", type=int, default=1, show_default=True,
              help="Epochs of the first rung; rung r trains epochs*eta^r (full: the last rung's).")
@click.option("--schedule", type=click.Choice(["halving", "full"]), default="halving", show_default=True,
              help="Successive halving, or every candidate trained the same amount.")
@click.option("--eta", type=int, default=3, show_default=True, help="Halving keeps the best 1/eta per rung.")
@click.option("--rungs", type=int, default=3, show_default=True, help="Rungs of successive halving.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Repeats of every trial with other seeds.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Training batch size.")
@click.option("--learning-rate", type=float, default=2e-3, show_default=True,
              help="Adam learning rate (cosine decay over each trial).")
@click.option("--bn-momentum", type=float, default=0.9, show_default=True,
              help="BatchNorm momentum while training the proxy (Keras default 0.99 is too slow to settle).")
@click.option("--bn-recalibration-batches", type=int, default=8, show_default=True,
              help="Recompute BatchNorm statistics on this many training batches before scoring (0: off).")
@click.option("--preset", type=click.Choice(["cpu", "smoke", "gpu"]), help="Named settings (docs/grid.md); flags win.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run trials here, one after another, or as Ray tasks.")
@click.option("--ray-address", metavar="ADDR", help="Ray cluster address (default: start Ray on this machine).")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Ray: CPUs each trial asks for.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Ray: GPUs each trial asks for.")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory (default runs/<time>-grid-<data>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Finish a search: skips finished trials, refuses changed settings.")
@click.option("--retry-failed", is_flag=True, help="With --resume: run FAILED trials again.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Decoded-image cache for folders/tarballs.")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="How to print the ranked table; report files are always CSV, Markdown and JSON.")
@click.option("--fake-trials", type=float, hidden=True,
              help="Testing: a deterministic fake trainer taking this many seconds per trial.")
@click.pass_context
def grid(ctx, **params):
    """Search alpha, beta, gamma at phi=1 under alpha*beta^2*gamma^2 ~ budget, by proxy training.

    \b
      effscale grid --budget 2 --dataset ../shared/data/cifar10-jpeg.tar.gz
      effscale grid --preset smoke --dataset synthetic      a one-minute try-out
      effscale grid --resume runs/20261125-091500-grid-cifar10
      effscale scale --phi 3 --from runs/20261125-091500-grid-cifar10
    """
    from effscale.grid import report as grid_report
    from effscale.cli import state
    from effscale.grid.executors import make_executor, run_search
    from effscale.grid.config import GridConfig
    from effscale.grid.search import SearchSpace
    from effscale.runs import open_run_dir, prepare_run_dir, timestamp_name
    from effscale.grid.trials import TrialStore

    resume_dir = params["resume_dir"]
    if params["retry_failed"] and resume_dir is None:
        raise click.UsageError("--retry-failed only applies with --resume RUN_DIR")
    from effscale.grid.config import PRESETS

    overrides = PRESETS[params["preset"]] if params["preset"] else {}
    if resume_dir is not None:
        if params["run_dir"] is not None or params["overwrite"]:
            raise click.UsageError("--resume cannot be combined with --run-dir or --overwrite")
        run = open_run_dir(resume_dir, "grid")
        base = run.read_manifest().get("config", {})
    else:
        run = None
        base = GridConfig().to_dict()
    # on --resume, a preset or flag that disagrees with the manifest is refused below
    config, _ = _resolve_config(ctx, params, base, overrides)
    space = SearchSpace.from_config(config)  # errors for an empty grid come before anything is written

    fake = params["fake_trials"]
    if fake is None:
        from effscale.grid.proxy import ProxyTrainer

        trainer = ProxyTrainer.load(config, cache_dir=params["cache_dir"])
        num_classes = trainer.num_classes
        dataset_info = trainer.dataset_summary
        backend = trainer.backend
    else:
        import functools

        from effscale.grid.trials import fake_trial

        trainer = functools.partial(fake_trial, sleep=fake)
        num_classes, dataset_info, backend = 10, {"name": "fake"}, None

    if run is None:
        label = Path(str(config.dataset).rstrip("/")).name.split(".")[0] or "data"
        run = prepare_run_dir(params["run_dir"] or Path("runs") / timestamp_name("grid", label), params["overwrite"])
        fresh = True
    else:
        fresh = False
    with run:
        if fresh:
            manifest = run.write_manifest("grid", config.to_dict(), seed=config.data_seed, backend=backend)
            from effscale.fsutil import atomic_write_json

            atomic_write_json(run.manifest_path, manifest | {"num_classes": num_classes, "dataset": dataset_info})
        else:
            run.check_manifest("grid", config.to_dict())
        logger = run.attach_log()
        state.log_path = run.log_path
        state.resume_hint = f"effscale grid --resume {run.path}"
        logger.info("grid %s: %d entries, %d planned trials, executor %s", "start" if fresh else "resume",
                    len(space.entries), space.planned_trials(), params["executor"])
        store = TrialStore(run)
        done = sum(1 for r in store.latest().values() if r["status"] == "COMPLETE")
        console.info(f"{'Resuming' if not fresh else 'Run dir'} {run.path}: {len(space.entries)} candidates "
                     f"(incl. reference rows), {space.planned_trials()} trials planned"
                     + (f", {done} already complete" if done else "")
                     + f"; dataset {config.dataset}, {config.limit_train} train / {config.limit_val} val images")
        executor = make_executor(params["executor"], params["ray_address"], params["cpus_per_trial"],
                                 params["gpus_per_trial"])
        try:
            with _Progress() as progress:
                outcome = run_search(space, store, trainer, executor, progress, params["retry_failed"], num_classes)
        finally:
            try:
                _, _, trials, rows, info = grid_report.build(run)
                grid_report.write_reports(run, config, space, trials, rows, info)
            except Exception as exc:  # noqa: BLE001 - never hide why the search stopped
                logger.exception("writing the reports failed")
                console.warn(f"reports were not written: {type(exc).__name__}: {exc}")
        grid_report.emit_ranking(rows, info, params["fmt"])
        for line in grid_report.summary_lines(info):
            console.info(line)
        console.info(f"Search took {outcome.seconds:.0f}s ({outcome.ran} trials run now). "
                     f"Reports: {run.path / 'reports'}. Next: effscale scale --phi 3 --from {run.path}")
