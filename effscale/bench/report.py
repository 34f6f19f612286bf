"""Tables, correlations and the latency-vs-MACs plot of bench records. No Keras."""

from __future__ import annotations

import os
from pathlib import Path

from effscale.bench.stats import bootstrap_corr
from effscale.console import Column, fmt_float


def _mega(value) -> str:
    return f"{value / 1e6:.1f}"


def _giga(value) -> str:
    return f"{value / 1e9:.2f}"


# Eleven narrow columns (times in ms, trace in s, said in the caption): the rich table fits
# an 80-column terminal for model names up to 12 characters.
COLUMNS = [
    Column("name", "model", justify="left"),
    Column("resolution", "res"),
    Column("macs", "GMACs", _giga),
    Column("acts", "acts M", _mega),
    Column("p50_ms", "p50", fmt_float(1)),
    Column("p90_ms", "p90", fmt_float(1)),
    Column("spread_pct", "drift%", fmt_float(0)),
    Column("cpu_p50_ms", "cpu50", fmt_float(1)),
    Column("images_per_s", "img/s", fmt_float(1)),
    Column("mem_mb", "mem MB", fmt_float(0)),
    Column("trace_s", "trace", fmt_float(1)),
]
TRAIN_COLUMN = Column("train_step_ms", "train", fmt_float(0))
# CSV/Markdown keep these too (raw values); JSON keeps everything.
EXPORT_COLUMNS = COLUMNS + [
    Column("params", "params"), Column("peak_act_bytes", "peak_act_bytes"), Column("runtime", "runtime"),
    Column("batch", "batch"), Column("runs", "runs"), Column("blocks", "blocks"), Column("p50_all_ms", "p50_all_ms"), Column("throughput_batch", "throughput_batch"),
    Column("train_step_ms", "train_step_ms"), Column("peak_rss_mb", "peak_rss_mb"), Column("load_s", "load_s"),
    Column("threads", "threads"),
]


def correlations(records: list[dict], latency_key: str = "p50_ms", n_boot: int = 2000) -> list[dict]:
    """Pearson and Spearman of latency with MACs and with activations, 95% bootstrap intervals."""
    rows = [r for r in records if r.get("macs") and r.get("acts") and r.get(latency_key)]
    if len(rows) < 3:
        return []
    latency = [r[latency_key] for r in rows]
    out = []
    for key, label in (("macs", "MACs"), ("acts", "activations")):
        for method in ("pearson", "spearman"):
            result = bootstrap_corr([r[key] for r in rows], latency, method, n_boot=n_boot)
            out.append({"against": label, **result})
    return out


def correlation_caption(rows: list[dict]) -> str:
    if not rows:
        return ""
    parts = [f"{r['against']} {r['method'][0].upper()} {r['r']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]" for r in rows]
    return f"latency correlation, n={rows[0]['n']}, 95% bootstrap: " + "; ".join(parts)


def latency_vs_macs(records: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Batch-1 p50 latency (p90 as the bar's top) against MACs, one labelled point per model."""
    from effscale.plots import _pyplot, _save

    rows = [r for r in records if r.get("macs") and r.get("p50_ms")]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.errorbar([r["macs"] / 1e9], [r["p50_ms"]], yerr=[[0], [r["p90_ms"] - r["p50_ms"]]], fmt="o",
                    color="tab:blue", capsize=2)
        ax.annotate(r["name"], (r["macs"] / 1e9, r["p50_ms"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("GMACs (multiply-adds, by arithmetic)")
    ax.set_ylabel(f"batch-{rows[0]['batch'] if rows else 1} latency, ms (p50; bar to p90)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def scale_latency_line(found: dict, batch: int) -> str:
    """The line ``scale --target-latency`` prints under the variant."""
    line = (f"measured latency: phi={found['phi']:g} p50 {found['latency_ms']:.1f} ms at batch {batch} "
            f"(target {found['target_ms']:g} ms)")
    if found["next_phi"] is not None:
        line += f"; phi={found['next_phi']:g} p50 {found['next_latency_ms']:.1f} ms is over"
    return line
