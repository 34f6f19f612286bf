"""Latency summaries and rank/linear correlations with bootstrap intervals. No Keras."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def summarize(seconds: Sequence[float]) -> dict:
    """p50/p90/mean/min in milliseconds of timed runs (warm-up already excluded)."""
    ms = np.asarray(seconds, dtype=float) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": int(ms.size)}


def summarize_blocks(blocks: Sequence[Sequence[float]]) -> dict:
    """``summarize`` over all runs, with p50 the median of the block medians.

    The blocks are spread over time, so a slow spell of a shared machine (seconds to tens
    of seconds) lifts whole blocks; the median of the block medians ignores up to half of
    them. ``spread_pct`` is the range of the block medians over p50: how much the machine's
    speed moved during the measurement.
    """
    flat = [t for block in blocks for t in block]
    medians = np.array([np.median(block) for block in blocks if len(block)]) * 1e3
    p50 = float(np.median(medians))
    return summarize(flat) | {"p50_ms": p50, "p50_all_ms": summarize(flat)["p50_ms"], "blocks": int(medians.size),
                              "block_p50_ms": [float(m) for m in medians],
                              "spread_pct": float((medians.max() - medians.min()) / p50 * 100)}


def _ranks(x: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.Series(x).rank(method="average").to_numpy()


def corr(x: Sequence[float], y: Sequence[float], method: str = "pearson") -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if method == "spearman":
        x, y = _ranks(x), _ranks(y)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap_corr(x: Sequence[float], y: Sequence[float], method: str = "pearson", n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """Correlation and its percentile-bootstrap interval over resampled (x, y) pairs.

    With a handful of points the interval is wide and resamples with one distinct point
    are dropped (their correlation is undefined); the caller should say n is small.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        value = corr(x[idx], y[idx], method)
        if not math.isnan(value):
            draws.append(value)
    tail = (1 - level) / 2
    lo, hi = (np.quantile(draws, [tail, 1 - tail]) if draws else (float("nan"), float("nan")))
    return {"method": method, "r": corr(x, y, method), "lo": float(lo), "hi": float(hi), "n": int(len(x)),
            "level": level}
