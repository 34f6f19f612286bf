"""Tables, report files and plots of a transfer run, rebuilt from its run directory.

Raw files (by ``effscale.transfer.runner``, ``checkpoints`` and ``train``):
``manifest.json``, ``history.csv``, ``checkpoints/state.json`` and, once the run ends,
``metrics.json`` (including the validation confusion matrix). Everything under
``reports/`` and ``plots/`` is derived from them here, so ``effscale report RUN_DIR``
rebuilds it without Keras or TensorFlow.

reports/: ``summary``, ``history``, ``per_class``, ``confused_pairs``, each as ``.csv``,
``.md`` and ``.json``; plots/: ``transfer_curves.png``, ``per_class_accuracy.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from effscale import console
from effscale.console import Column, fmt_float, fmt_gmacs, fmt_int, fmt_pct
from effscale.fsutil import atomic_write_text
from effscale.runs import RunDir

TOP_CONFUSED = 10

SUMMARY_COLUMNS = [
    Column("variant", "variant", justify="left"),
    Column("dataset", "dataset", justify="left"),
    Column("recipe", "recipe", justify="left"),
    Column("strategy", "strategy", justify="left"),
    Column("weights", "weights", justify="left"),
    Column("image_size", "res"),
    Column("status", "status", justify="left"),
    Column("epochs", "epochs", justify="left"),
    Column("best_epoch", "best"),
    Column("top1", "top-1", fmt_pct),
    Column("top5", "top-5", fmt_pct),
    Column("val_views", "scored on", justify="left"),
    Column("loss", "val loss", fmt_float(4)),
    Column("train_images_per_s", "train img/s", fmt_float(1)),
    Column("wall_time_s", "wall s", fmt_float(1)),
    Column("params", "params", fmt_int),
    Column("macs", "GMACs", fmt_gmacs),
]

HISTORY_COLUMNS = [
    Column("epoch", "epoch"),
    Column("phase", "phase", justify="left"),
    Column("lr", "lr", lambda v: f"{v:.2e}"),
    Column("loss", "loss", fmt_float(4)),
    Column("accuracy", "acc", fmt_pct),
    Column("val_loss", "val loss", fmt_float(4)),
    Column("val_accuracy", "val acc", fmt_pct),
    Column("val_top5", "val top-5", fmt_pct),
    Column("images_per_s", "img/s", fmt_float(1)),
    Column("epoch_time_s", "epoch s", fmt_float(1)),
]

PER_CLASS_COLUMNS = [
    Column("class", "class", justify="left"),
    Column("images", "images"),
    Column("correct", "correct"),
    Column("accuracy", "accuracy", fmt_pct),
]

CONFUSED_COLUMNS = [
    Column("true", "true class", justify="left"),
    Column("predicted", "predicted as", justify="left"),
    Column("count", "images"),
    Column("share_of_true", "share of class", fmt_pct),
]


def read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def history_records(run: RunDir) -> list[dict]:
    """Committed epochs: ``checkpoints/state.json`` (the commit point), else history.csv."""
    state = read_json_or_none(run.state_path)
    if state is not None:
        return list(state.get("history", []))
    path = run.history_path
    if not path.is_file():
        return []
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def summary_record(manifest: dict, metrics: dict | None, state: dict | None) -> dict:
    config = manifest.get("config", {})
    metrics = metrics or {}
    state = state or {}
    done = metrics.get("epochs_done", state.get("epoch", 0))
    status = metrics.get("status") or ("interrupted" if state else "not started")
    return {
        "variant": metrics.get("variant") or config.get("variant"),
        "dataset": (metrics.get("dataset") or {}).get("name") or config.get("dataset"),
        "recipe": config.get("recipe"),
        "strategy": config.get("strategy"),
        "weights": config.get("weights"),
        "image_size": metrics.get("image_size") or config.get("image_size"),
        "status": status,
        # A tuned linear probe is one fit, not --epochs epochs: the run records what it planned.
        "epochs": f"{done}/{metrics.get('epochs_planned') or config.get('epochs')}",
        "best_epoch": metrics.get("best_epoch", state.get("best_epoch")),
        "top1": metrics.get("top1"),
        "top5": metrics.get("top5"),
        "val_views": metrics.get("val_views"),  # "image", or "image+flip" averaged
        "loss": metrics.get("loss"),
        "train_images_per_s": metrics.get("train_images_per_s"),
        "wall_time_s": metrics.get("wall_time_s", state.get("wall_time_s")),
        "params": metrics.get("params") or (state.get("extra") or {}).get("params"),
        "trainable_params": metrics.get("trainable_params"),
        "macs": metrics.get("macs") or (state.get("extra") or {}).get("macs"),
        "val_images": metrics.get("val_images"),
        "backend": manifest.get("backend"),
        "nan_at": metrics.get("nan_at"),
    }


def _class_names(metrics: dict) -> list[str]:
    """The run's class names, or the confusion matrix's indices when none were recorded."""
    return metrics.get("class_names") or [str(i) for i in range(len(metrics["confusion"]))]


def per_class_records(metrics: dict | None) -> list[dict]:
    if not metrics or not metrics.get("confusion"):
        return []
    names = _class_names(metrics)
    records = []
    for i, row in enumerate(metrics["confusion"]):
        total = sum(row)
        records.append({"class": names[i], "images": total, "correct": row[i],
                        "accuracy": row[i] / total if total else None})
    return records


def confused_pairs(metrics: dict | None, top: int = TOP_CONFUSED) -> list[dict]:
    if not metrics or not metrics.get("confusion"):
        return []
    names = _class_names(metrics)
    pairs = []
    for i, row in enumerate(metrics["confusion"]):
        total = sum(row)
        for j, count in enumerate(row):
            if i != j and count:
                pairs.append({"true": names[i], "predicted": names[j], "count": count,
                              "share_of_true": count / total if total else None})
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    return pairs[:top]


def tables(run: RunDir) -> dict[str, tuple[list[dict], list[Column]]]:
    manifest = run.read_manifest()
    metrics = read_json_or_none(run.metrics_path)
    state = read_json_or_none(run.state_path)
    history = [{k: _clean(v) for k, v in row.items()} for row in history_records(run)]
    return {
        "summary": ([summary_record(manifest, metrics, state)], SUMMARY_COLUMNS),
        "history": (history, HISTORY_COLUMNS),
        "per_class": (per_class_records(metrics), PER_CLASS_COLUMNS),
        "confused_pairs": (confused_pairs(metrics), CONFUSED_COLUMNS),
    }


def write_reports(run: RunDir, built: dict | None = None) -> list[Path]:
    """reports/<table>.{csv,md,json} and plots/*.png; returns the paths written."""
    built = built or tables(run)
    written = []
    for name, (records, columns) in built.items():
        if not records:
            continue
        keys = [c.key for c in columns] + sorted({k for r in records for k in r} - {c.key for c in columns})
        full_columns = [Column(k, k) for k in keys]
        for fmt, suffix in (("csv", "csv"), ("markdown", "md"), ("json", "json")):
            path = run.report(f"{name}.{suffix}")
            atomic_write_text(path, console.render(records, full_columns, fmt))
            written.append(path)
    written += write_plots(run, built)
    return written


def write_plots(run: RunDir, built: dict) -> list[Path]:
    from effscale import plots

    written = []
    history, _ = built["history"]
    summary = built["summary"][0][0]
    title = f"{summary['variant']} on {summary['dataset']} ({summary['strategy']}, {summary['recipe']})"
    if history:
        import pandas as pd

        frame = pd.DataFrame(history)
        written.append(plots.learning_curves(frame, run.plot("transfer_curves.png"), title))
    per_class, _ = built["per_class"]
    if per_class:
        import pandas as pd

        written.append(plots.per_class_accuracy(pd.DataFrame(per_class), run.plot("per_class_accuracy.png"),
                                                f"per-class accuracy: {title}", limit=40))
    return written


def render(built: dict, fmt: str = "table") -> None:
    """Print the tables: rich tables on stdout, or the whole report as json/csv/markdown."""
    if fmt == "json":
        import sys

        sys.stdout.write(json.dumps({name: records for name, (records, _) in built.items()}, indent=2,
                                    default=str) + "\n")
        return
    summary = built["summary"][0][0]
    titles = {"summary": "Transfer run", "history": "Per-epoch history",
              "per_class": "Per-class accuracy (worst 10)", "confused_pairs": "Most confused pairs"}
    for name, (records, columns) in built.items():
        if not records:
            continue
        if name == "per_class":
            records = sorted(records, key=lambda r: (r["accuracy"] is None, r["accuracy"] or 0))[:10]
        if fmt == "table":
            caption = None
            if name == "summary":
                caption = "GMACs = multiply-adds at the training resolution; img/s = median training throughput"
                if summary.get("nan_at"):
                    caption += f"; stopped on a NaN loss at epoch {summary['nan_at'].get('epoch')}"
            console.emit(records, columns, "table", title=titles[name], caption=caption)
        else:
            import sys

            if fmt == "markdown":
                sys.stdout.write(f"\n## {titles[name]}\n\n")
            console.emit(records, columns, fmt)


def rebuild(run: RunDir, fmt: str = "table") -> None:
    """``effscale report RUN_DIR`` for a transfer run."""
    built = tables(run)
    written = write_reports(run, built)
    render(built, fmt)
    console.info(f"wrote {len(written)} report files under {run.reports_dir} and {run.plots_dir}")
