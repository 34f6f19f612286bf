"""``effscale grid``: options -> GridConfig -> ``effscale.grid.run`` -> the ranked table."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click
from click.core import ParameterSource

from effscale import console
from effscale.grid.config import PRESETS, GridConfig

DEFAULTS, RANGE = GridConfig(), click.Tuple([float, float])  # every default is defined on the dataclass
# (flag, GridConfig field, type, help): the options that make up the run's settings
SETTINGS = [
    ("--budget", "budget", float, "FLOPs multiplier per step of phi: keep alpha*beta^2*gamma^2 close to it (> 1)."),
    ("--tolerance", "tolerance", float, "Keep candidates with |alpha*beta^2*gamma^2 - budget| <= this."),
    ("--step", "step", float, "Grid step of alpha, beta and gamma (> 0)."),
    ("--alpha", "alpha_range", RANGE, "Depth range."),
    ("--beta", "beta_range", RANGE, "Width range."),
    ("--gamma", "gamma_range", RANGE, "Resolution range."),
    ("--dataset", "dataset", str, "cifar100, cifar10, synthetic, an image folder or a .tar.gz of one."),
    ("--data-dir", "data_dir", str, "Where the CIFAR archives are (offline machines)."),
    ("--limit-train", "limit_train", int, "Training images of the proxy task."),
    ("--limit-val", "limit_val", int, "Validation images that score trials."),
    ("--resolution", "resolution", int, "Proxy base resolution in pixels, which gamma scales."),
    ("--base-width", "base_width", float, "Width of the proxy base (x B0)."),
    ("--base-depth", "base_depth", float, "Depth of the proxy base (x B0)."),
    ("--epochs", "epochs", int, "Epochs of the first rung; rung r trains epochs*eta^r (full: the last rung's)."),
    ("--schedule", "schedule", click.Choice(["halving", "full"]),
     "Successive halving, or every candidate trained the same amount."),
    ("--eta", "eta", int, "Halving keeps the best 1/eta per rung."),
    ("--rungs", "rungs", int, "Rungs of successive halving."),
    ("--seeds", "seeds", int, "Seeds per finalist at the last rung (the paired intervals use them)."),
    ("--early-seeds", "early_seeds", int, "Seeds per row at the earlier rungs."),
    ("--batch-size", "batch_size", int, "Training batch size."),
    ("--learning-rate", "learning_rate", float, "Adam learning rate (cosine decay over each trial)."),
    ("--bn-momentum", "bn_momentum", float,
     "BatchNorm momentum while training the proxy (Keras default 0.99 is too slow to settle)."),
    ("--bn-recalibration-batches", "bn_recalibration_batches", int,
     "Recompute BatchNorm statistics on this many training batches before scoring (0: off)."),
    ("--confirm-phi", "confirm_phi", float, "Then retrain the chosen, paper and single-axis rows at this phi "
     "(e.g. 2; last rung's epochs and seeds) and check the phi=1 ranking holds. "
     "Can be added on --resume of a search run without it."),
]


def settings_options(command):
    for flag, name, kind, text in reversed(SETTINGS):
        default = getattr(DEFAULTS, name)
        command = click.option(flag, name, type=kind, default=default, show_default=default is not None,
                               metavar="MIN MAX" if kind is RANGE else None, help=text)(command)
    return command


@click.command()
@settings_options
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Named settings (docs/grid.md); flags win.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: two worker processes on 2+ cores (in-process on one); ray: Ray tasks.")
@click.option("--ray-address", metavar="ADDR", help="Ray cluster address (default: start Ray on this machine).")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, max=1024), default=1.0, show_default=True,
              help="Ray: CPUs each trial asks for.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0, max=64), default=0.0, show_default=True,
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
def grid(ctx, preset, executor, ray_address, cpus_per_trial, gpus_per_trial, run_dir, overwrite, resume_dir,
         retry_failed, cache_dir, fmt, fake_trials, **settings):
    """Search alpha, beta, gamma at phi=1 under alpha*beta^2*gamma^2 ~ budget, by proxy training.

    \b
      effscale grid --budget 2 --dataset ../shared/data/cifar10-jpeg.tar.gz
      effscale grid --preset smoke --dataset synthetic      a one-minute try-out
      effscale grid --resume runs/20261125-091500-grid-cifar10
      effscale scale --phi 3 --from runs/20261125-091500-grid-cifar10
    """
    from effscale.cli import state
    from effscale.grid import report
    from effscale.grid.progress import ConsoleProgress
    from effscale.grid.run import run, stored_config
    from effscale.grid.trials import fake_trial

    if retry_failed and resume_dir is None:
        raise click.UsageError("--retry-failed only applies with --resume RUN_DIR")
    elif resume_dir is not None and (run_dir is not None or overwrite):
        raise click.UsageError("--resume cannot be combined with --run-dir or --overwrite")
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    explicit = {k: tuple(v) if isinstance(v, (tuple, list)) else v for k, v in settings.items()
                if ctx.get_parameter_source(k) in given}
    # on --resume, a preset or flag that disagrees with the stored settings is refused by run()
    base = stored_config(resume_dir) if resume_dir is not None else DEFAULTS
    config = base.replace(**{**PRESETS.get(preset or "", {}), **explicit})
    trainer = None if fake_trials is None else partial(fake_trial, sleep=fake_trials)

    def started(run_, space, fresh, done):
        state.log_path, state.resume_hint = run_.log_path, f"effscale grid --resume {run_.path}"
        progress.opened(run_, space, fresh, done)

    with ConsoleProgress() as progress:
        result = run(config, resume_dir if resume_dir is not None else run_dir, resume=resume_dir is not None,
                     executor=executor, run_trial=trainer, progress=progress, overwrite=overwrite,
                     retry_failed=retry_failed, cache_dir=cache_dir, ray_address=ray_address,
                     cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, on_start=started)
    report.emit_ranking(result.rows, result.summary, fmt)
    console.info(f"Search took {result.seconds:.0f}s ({result.ran} trials run now). Reports: "
                 f"{result.run_dir / 'reports'}. Next: effscale scale --phi 3 --from {result.run_dir}")
    for line in report.summary_lines(result.summary):  # the verdict's sentence comes last
        console.info(line)
