"""What ``effscale grid`` reports, rebuilt from the run directory alone (no Keras).

* ``ranking(space, trials)``: one row per candidate and reference row, ranked by the
  highest rung reached, then mean validation accuracy over seeds; ``noise`` is the
  standard error of that mean (the larger of the seeds' std/sqrt(n) and the binomial
  error of an accuracy measured on ``val_count`` images) and ``within_noise`` flags rows
  whose gap to the top is under two combined standard errors.
* ``summary``: the winner, how many rows are within noise of it, and the compute halving
  saved (training images seen against the full schedule on the same rows).
* ``write_reports``: reports/trials.csv, ranking.csv, ranking.md, ranking.json, the plots
  and ``best.json`` (the coefficients schema ``effscale scale --from RUN_DIR`` reads).
* ``rebuild(run, fmt)``: what ``effscale report RUN_DIR`` calls.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from effscale import console
from effscale.console import Column, fmt_float
from effscale.fsutil import atomic_write_json, atomic_write_text
from effscale.grid.config import GridConfig
from effscale.grid.search import SearchSpace, candidate_cost
from effscale.runs import RunDir
from effscale.grid.trials import TrialStatus, TrialStore

NOISE_Z = 2.0  # "within noise": gap <= 2 combined standard errors


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _noise(mean: float, std: float, n: int, val_count: int | None) -> float:
    binomial = math.sqrt(max(mean * (1 - mean), 1e-6) / val_count) if val_count else 0.0
    seeds = std / math.sqrt(n) if n >= 2 and not math.isnan(std) else 0.0
    return max(binomial, seeds)


def ranking(space: SearchSpace, trials: dict, num_classes: int = 100) -> list[dict]:
    """One row per entry (grid candidates and reference rows), best first."""
    by_entry: dict[str, list[dict]] = defaultdict(list)
    for record in trials.values():
        by_entry[record["candidate"]["id"]].append(record)
    rows = []
    for entry in space.entries:
        records = by_entry.get(entry.id, [])
        cost = next((r["cost"] for r in records if r.get("cost")), None)
        if cost is None:
            cost = candidate_cost(space.config, entry.candidate, num_classes).to_dict()
        c = entry.candidate
        row = {
            "candidate": entry.id, "role": entry.role, "in_grid": entry.in_grid,
            "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma, "flops_factor": c.flops_factor,
            "macs_ratio": cost["macs_ratio"], "params_ratio": cost["params_ratio"],
            "macs": cost["macs"], "params": cost["params"], "resolution": cost["resolution"],
            "blocks": cost["blocks"],
            "rung": None, "epochs": None, "seeds": 0, "acc_mean": None, "acc_std": None, "noise": None,
            "acc_rung0": None, "val_loss": None, "failed": sum(r["status"] == TrialStatus.FAILED for r in records),
            "images_seen": sum(int(r.get("images_seen") or 0) for r in records),
            "seconds": sum(float(r.get("seconds") or 0) for r in records if r["status"] != TrialStatus.RUNNING),
            "error": next((r.get("error") for r in records if r["status"] == TrialStatus.FAILED), None),
        }
        done = [r for r in records if r["status"] == TrialStatus.COMPLETE]
        if done:
            top = max(r["rung"] for r in done)
            at_top = [r for r in done if r["rung"] == top]
            accs = [float(r["metrics"]["val_accuracy"]) for r in at_top]
            mean, std = _mean_std(accs)
            val_count = min(int(r["metrics"].get("val_count") or 0) for r in at_top) or None
            losses = [r["metrics"].get("val_loss") for r in at_top if r["metrics"].get("val_loss") is not None]
            rung0 = [float(r["metrics"]["val_accuracy"]) for r in done if r["rung"] == 0]
            row |= {"rung": top, "epochs": at_top[0]["epochs"], "seeds": len(accs), "acc_mean": mean,
                    "acc_std": None if math.isnan(std) else std, "noise": _noise(mean, std, len(accs), val_count),
                    "acc_rung0": sum(rung0) / len(rung0) if rung0 else None,
                    "val_loss": sum(losses) / len(losses) if losses else None}
        rows.append(row)
    rows.sort(key=lambda r: (r["acc_mean"] is None, -(r["rung"] or 0), -(r["acc_mean"] or 0), r["candidate"]))
    top = rows[0] if rows and rows[0]["acc_mean"] is not None else None
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank if row["acc_mean"] is not None else None
        row["within_noise"] = bool(
            top is not None and row["acc_mean"] is not None and row["rung"] == top["rung"]
            and top["acc_mean"] - row["acc_mean"] <= NOISE_Z * math.hypot(top["noise"], row["noise"])
        )
    return rows


def summary(space: SearchSpace, trials: dict, rows: list[dict]) -> dict:
    statuses = [r["status"] for r in trials.values()]
    images = sum(int(r.get("images_seen") or 0) for r in trials.values())
    per_epoch = max((int(r.get("images_seen") or 0) // max(1, int(r["epochs"])) for r in trials.values()
                     if r.get("status") == TrialStatus.COMPLETE), default=None)
    full = space.images_full_schedule(per_epoch)
    winner = rows[0] if rows and rows[0]["acc_mean"] is not None else None
    planned = space.planned_trials()
    return {
        "schedule": space.config.schedule,
        "budget": space.config.budget,
        "entries": len(space.entries),
        "planned_trials": planned,
        "complete": statuses.count(TrialStatus.COMPLETE),
        "failed": statuses.count(TrialStatus.FAILED),
        "running": statuses.count(TrialStatus.RUNNING),
        "finished": not statuses.count(TrialStatus.RUNNING) and bool(trials) and _search_done(space, trials),
        "images_seen": images,
        "images_full_schedule": full,
        "images_ratio": images / full if full else None,
        "trial_seconds": sum(float(r.get("seconds") or 0) for r in trials.values()),
        "winner": winner["candidate"] if winner else None,
        "winner_role": winner["role"] if winner else None,
        "winner_acc": winner["acc_mean"] if winner else None,
        "within_noise": [r["candidate"] for r in rows if r["within_noise"]],
    }


def _search_done(space: SearchSpace, trials: dict) -> bool:
    from effscale.grid.search import next_candidates

    return not next_candidates(space, trials)


def _acc(row: dict) -> str:
    if row.get("acc_mean") is None:
        return "failed" if row.get("failed") else "-"
    text = f"{100 * row['acc_mean']:.1f}"
    if row.get("acc_std") is not None:
        text += f" ± {100 * row['acc_std']:.1f}"
    return text


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


RANKING_COLUMNS = [
    Column("rank", "#"),
    Column("candidate", "candidate", justify="left"),
    Column("role", "role", justify="left"),
    Column("flops_factor", "a*b^2*g^2", fmt_float(3)),
    Column("macs_ratio", "MACs x (measured)", fmt_float(2)),
    Column("params_ratio", "params x", fmt_float(2)),
    Column("resolution", "res"),
    Column("blocks", "blocks"),
    Column("rung", "rung"),
    Column("epochs", "epochs"),
    Column("seeds", "seeds"),
    Column("acc_text", "val acc %", justify="right"),
    Column("noise", "± noise %", _pct),
    Column("acc_rung0", "acc@rung0 %", _pct),
    Column("noise_flag", "top", justify="left"),
]

CSV_COLUMNS = [
    Column("rank", "rank"), Column("candidate", "candidate"), Column("role", "role"),
    Column("in_grid", "in_grid"), Column("alpha", "alpha"), Column("beta", "beta"), Column("gamma", "gamma"),
    Column("flops_factor", "flops_factor"), Column("macs", "macs"), Column("macs_ratio", "macs_ratio"),
    Column("params", "params"), Column("params_ratio", "params_ratio"), Column("resolution", "resolution"),
    Column("blocks", "blocks"), Column("rung", "rung"), Column("epochs", "epochs"), Column("seeds", "seeds"),
    Column("acc_mean", "acc_mean"), Column("acc_std", "acc_std"), Column("noise", "noise"),
    Column("within_noise", "within_noise"), Column("acc_rung0", "acc_rung0"), Column("val_loss", "val_loss"),
    Column("failed", "failed"), Column("images_seen", "images_seen"), Column("seconds", "seconds"),
    Column("error", "error"),
]

TRIAL_COLUMNS = ["trial_id", "candidate_id", "role", "seed", "rung", "epochs", "status", "val_accuracy",
                 "val_loss", "images_seen", "seconds", "macs", "macs_ratio", "params", "attempt",
                 "started_at", "finished_at", "error"]


def display_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        flag = "winner" if row["rank"] == 1 else ("within noise" if row["within_noise"] else "")
        out.append(row | {"acc_text": _acc(row), "noise_flag": flag})
    return out


def trial_rows(trials: dict) -> list[dict]:
    rows = []
    for r in trials.values():
        metrics, cost = r.get("metrics") or {}, r.get("cost") or {}
        rows.append({
            "trial_id": r["trial_id"], "candidate_id": r["candidate"]["id"], "role": r["role"],
            "seed": r["seed"], "rung": r["rung"], "epochs": r["epochs"], "status": r["status"],
            "val_accuracy": metrics.get("val_accuracy"), "val_loss": metrics.get("val_loss"),
            "images_seen": r.get("images_seen"), "seconds": r.get("seconds"),
            "macs": cost.get("macs"), "macs_ratio": cost.get("macs_ratio"), "params": cost.get("params"),
            "attempt": r.get("attempt"), "started_at": r.get("started_at"),
            "finished_at": r.get("finished_at"), "error": r.get("error"),
        })
    return rows


def summary_lines(info: dict) -> list[str]:
    lines = []
    if info["winner"]:
        lines.append(f"Best: {info['winner']} ({info['winner_role']}), val accuracy {100 * info['winner_acc']:.1f}%.")
        others = [c for c in info["within_noise"] if c != info["winner"]]
        if others:
            lines.append(f"Within noise of the best ({len(others)}): {', '.join(others[:8])}"
                         f"{' ...' if len(others) > 8 else ''}; more seeds or data would separate them.")
        else:
            lines.append("No other row at the top rung is within noise of the best.")
    if info["images_full_schedule"]:
        ratio = info["images_ratio"]
        if info["schedule"] == "halving":
            lines.append(f"Compute: {info['images_seen']:,} training images seen; the full schedule would need "
                         f"{info['images_full_schedule']:,} ({ratio:.2f}x, {100 * (1 - ratio):.0f}% saved by halving).")
        else:
            lines.append(f"Compute: {info['images_seen']:,} training images seen (full schedule).")
    lines.append(f"Trials: {info['complete']} complete, {info['failed']} failed, {info['running']} interrupted "
                 f"(of {info['planned_trials']} planned).")
    return lines


def _markdown(config: GridConfig, rows: list[dict], info: dict) -> str:
    table = console.render(display_rows(rows), RANKING_COLUMNS, "markdown")
    settings = ", ".join(f"{k}={v}" for k, v in config.to_dict().items())
    return (
        f"# effscale grid: budget {config.budget:g}\n\n"
        + "\n".join(f"- {line}" for line in summary_lines(info))
        + "\n\n"
        + "MACs x is measured on the rounded proxy network relative to the proxy base; "
        "a*b^2*g^2 is the formula. Accuracy is the mean over seeds at the highest rung reached.\n\n"
        + table
        + f"\n\nSettings: {settings}\n"
    )


def write_reports(run: RunDir, config: GridConfig, space: SearchSpace, trials: dict, rows: list[dict],
                  info: dict) -> dict[str, Path]:
    written = {
        "trials.csv": atomic_write_text(run.report("trials.csv"),
                                        console.to_frame(trial_rows(trials)).reindex(columns=TRIAL_COLUMNS)
                                        .to_csv(index=False)),
        "ranking.csv": atomic_write_text(run.report("ranking.csv"), console.render(rows, CSV_COLUMNS, "csv")),
        "ranking.md": atomic_write_text(run.report("ranking.md"), _markdown(config, rows, info)),
        "ranking.json": atomic_write_json(run.report("ranking.json"),
                                          json.loads(json.dumps({"summary": info, "rows": rows}, default=str))),
    }
    winner = rows[0] if rows and rows[0]["acc_mean"] is not None else None
    if winner is not None:
        from effscale.net.scaling import ScalingCoefficients
        from effscale.schemas import write_coefficients

        written["best.json"] = write_coefficients(
            run.best_path,
            ScalingCoefficients(winner["alpha"], winner["beta"], winner["gamma"]),
            config.budget,
            source=f"effscale grid {run.path}",
            metrics={"candidate": winner["candidate"], "role": winner["role"], "val_accuracy": winner["acc_mean"],
                     "val_accuracy_std": winner["acc_std"], "noise": winner["noise"], "rung": winner["rung"],
                     "epochs": winner["epochs"], "seeds": winner["seeds"], "macs_ratio": winner["macs_ratio"],
                     "within_noise": info["within_noise"], "search_finished": info["finished"]},
        )
    try:
        from effscale import plots

        written["grid_acc_vs_macs.png"] = plots.grid_accuracy_vs_macs(
            rows, run.plot("grid_acc_vs_macs.png"), title=f"budget {config.budget:g}")
        written["grid_constraint.png"] = plots.grid_constraint_surface(
            rows, config.budget, run.plot("grid_constraint.png"))
    except Exception as exc:  # noqa: BLE001 - a plot must never lose the tables
        console.warn(f"plots were not written: {type(exc).__name__}: {exc}")
    return written


def build(run: RunDir) -> tuple[GridConfig, SearchSpace, dict, list[dict], dict]:
    manifest = run.read_manifest()
    config = GridConfig.from_dict(manifest["config"])
    space = SearchSpace.from_config(config)
    trials = TrialStore(run).latest()
    num_classes = int(manifest.get("num_classes") or (manifest.get("dataset") or {}).get("num_classes") or 100)
    rows = ranking(space, trials, num_classes)
    return config, space, trials, rows, summary(space, trials, rows)


def emit_ranking(rows: list[dict], info: dict, fmt: str) -> None:
    if fmt == "json":
        import sys

        sys.stdout.write(json.dumps({"summary": info, "rows": rows}, indent=2, default=str) + "\n")
        return
    console.emit(display_rows(rows), RANKING_COLUMNS if fmt == "table" else CSV_COLUMNS, fmt,
                 title=f"effscale grid (budget {info['budget']:g}, {info['schedule']})",
                 caption="MACs x: measured on the rounded proxy network; accuracy: mean ± std over seeds")


def rebuild(run: RunDir, fmt: str = "table") -> None:
    """``effscale report RUN_DIR`` for a grid run: files, plots, then the ranked table."""
    config, space, trials, rows, info = build(run)
    written = write_reports(run, config, space, trials, rows, info)
    emit_ranking(rows, info, fmt)
    for line in summary_lines(info):
        console.info(line)
    console.info(f"Reports in {run.reports_dir}" + (f"; best.json in {run.path}" if "best.json" in written else ""))
