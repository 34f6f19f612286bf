"""Figures from report tables: small functions, matplotlib's Agg backend, PNG out. No Keras here.

Each function takes a pandas frame (or plain records) and a target path, draws one
figure, writes it atomically and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def learning_curves(history, path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch (train and validation); dotted lines mark phase changes.

    ``history`` is a frame with ``epoch, loss, val_loss, accuracy, val_accuracy`` and
    optionally ``phase``.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "top-1 accuracy")):
        scale = 100.0 if key == "accuracy" else 1.0
        ax.plot(epochs, history[key] * scale, marker="o", label=f"train {label}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"] * scale, marker="s", label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label + (" (%)" if scale != 1.0 else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    if "phase" in history and len(history) > 1:
        phases = list(history["phase"])
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(epochs.iloc[i] - 0.5, linestyle=":", color="gray")
                    ax.text(epochs.iloc[i] - 0.45, ax.get_ylim()[1], phases[i], va="top", fontsize=8, color="gray")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def per_class_accuracy(frame, path: str | os.PathLike, title: str = "", limit: int = 100) -> Path:
    """Horizontal bars of per-class validation accuracy, worst first (at most ``limit`` classes)."""
    plt = _pyplot()
    data = frame.sort_values("accuracy").head(limit)
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.18 * len(data) + 1)))
    ax.barh(data["class"].astype(str), data["accuracy"] * 100)
    ax.set_xlabel("validation accuracy (%)")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
