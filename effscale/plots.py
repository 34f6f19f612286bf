"""Figures from report tables: small functions, matplotlib's Agg backend, PNG out. No Keras here.

Each function takes a pandas frame (or plain records) and a target path, draws one
figure, writes it atomically and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from effscale.fsutil import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) and always close the figure."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def learning_curves(history, path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch (train and validation); dotted lines mark phase changes.

    ``history`` is a frame with ``epoch, loss, val_loss, accuracy, val_accuracy`` and
    optionally ``phase``.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "top-1 accuracy")):
        scale = 100.0 if key == "accuracy" else 1.0
        ax.plot(epochs, history[key] * scale, marker="o", label=f"train {label}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"] * scale, marker="s", label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    return _save(fig, path)


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
    return _save(fig, path)


# --- effscale grid ---------------------------------------------------------------------------
_ROLE_STYLE = {  # role -> (marker, color)
    "grid": ("o", "tab:blue"),
    "paper": ("*", "tab:red"),
    "depth-only": ("s", "tab:green"),
    "width-only": ("^", "tab:orange"),
    "resolution-only": ("D", "tab:purple"),
}


def grid_accuracy_vs_macs(rows, path: str | os.PathLike, title: str = "") -> Path:
    """Validation accuracy against *measured* MACs (x the proxy base) for every grid row.

    ``rows`` are ``effscale.grid.report.ranking`` records. Error bars are the rows' noise
    (standard error); hollow markers stopped at an earlier halving rung; reference rows
    (paper point, single-axis baselines) are labelled.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top_rung = max((r["rung"] for r in rows if r.get("acc_mean") is not None), default=0)
    for role, (marker, color) in _ROLE_STYLE.items():
        for final in (True, False):
            pick = [r for r in rows if r["role"] == role and r.get("acc_mean") is not None
                    and (r["rung"] == top_rung) == final]
            if not pick:
                continue
            ax.errorbar([r["macs_ratio"] for r in pick], [100 * r["acc_mean"] for r in pick],
                        yerr=[100 * (r.get("noise") or 0) for r in pick], fmt=marker, color=color,
                        mfc=color if final else "none", ms=9 if role == "paper" else 6, capsize=2,
                        label=f"{role}{'' if final else ' (stopped early)'}")
    for r in rows:
        if r["role"] != "grid" and r.get("acc_mean") is not None:
            ax.annotate(r["role"], (r["macs_ratio"], 100 * r["acc_mean"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    ax.set_xlabel("measured MACs of the rounded network (x proxy base)")
    ax.set_ylabel("validation accuracy (%) at the highest rung reached")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def grid_constraint_surface(rows, budget: float, path: str | os.PathLike, title: str = "") -> Path:
    """Where the candidates lie on alpha * beta^2 * gamma^2 = budget (3-D), coloured by accuracy."""
    import numpy as np

    plt = _pyplot()
    fig = plt.figure(figsize=(7, 5.5))
    ax = fig.add_subplot(projection="3d")
    betas = [r["beta"] for r in rows]
    gammas = [r["gamma"] for r in rows]
    b, g = np.meshgrid(np.linspace(1.0, max(betas + [1.05]), 25), np.linspace(1.0, max(gammas + [1.05]), 25))
    a = budget / (b**2 * g**2)
    a = np.where(a >= 1.0, a, np.nan)
    ax.plot_wireframe(b, g, a, color="lightgray", linewidth=0.5)
    scored = [r for r in rows if r.get("acc_mean") is not None]
    if scored:
        points = ax.scatter([r["beta"] for r in scored], [r["gamma"] for r in scored], [r["alpha"] for r in scored],
                            c=[100 * r["acc_mean"] for r in scored], cmap="viridis", s=30, depthshade=False)
        fig.colorbar(points, ax=ax, shrink=0.6, pad=0.12, label="validation accuracy (%)")
    unscored = [r for r in rows if r.get("acc_mean") is None]
    if unscored:
        ax.scatter([r["beta"] for r in unscored], [r["gamma"] for r in unscored], [r["alpha"] for r in unscored],
                   marker="x", color="gray", label="failed / not run")
        ax.legend(fontsize=7)
    for r in rows:
        if r["role"] != "grid":
            ax.text(r["beta"], r["gamma"], r["alpha"], f" {r['role']}", fontsize=7)
    ax.set_xlabel("beta (width)")
    ax.set_ylabel("gamma (resolution)")
    ax.set_zlabel("alpha (depth)")
    ax.set_title(title or f"candidates on alpha*beta^2*gamma^2 = {budget:g}")
    return _save(fig, path)
