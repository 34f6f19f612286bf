"""What ``effscale grid`` reports, rebuilt from the run directory alone (no Keras).

* ``ranking(space, trials, num_classes)``: one row per candidate and reference row, ranked
  by the highest rung reached, then mean validation accuracy over seeds;
  ``paired_statistics(rows, trials, run)`` gives each row its accuracy with a 95% interval
  and its difference to its rung's leader with a paired bootstrap interval (``grid.stats``);
  ``tied`` marks the rows whose difference interval contains 0.
* ``summary``: the verdict (chosen row, tie set, rule, one sentence), and the compute
  halving saved (training images seen against the full schedule on the same rows).
* ``write_reports``: reports/trials.csv, ranking.csv, ranking.md, ranking.json, the plots
  and ``best.json`` (the coefficients schema ``effscale scale --from RUN_DIR`` reads; its
  metrics record the choice, the tie set and the rule).
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
from effscale.grid import stats
from effscale.grid.config import GridConfig
from effscale.grid.search import SearchSpace, candidate_cost, next_candidates
from effscale.grid.trials import TrialStatus, TrialStore, timing_summary
from effscale.runs import RunDir



def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _noise(mean: float, std: float, n: int, val_count: int | None) -> float:
    binomial = math.sqrt(max(mean * (1 - mean), 1e-6) / val_count) if val_count else 0.0
    seeds = std / math.sqrt(n) if n >= 2 and not math.isnan(std) else 0.0
    return max(binomial, seeds)


def _samples(run: RunDir | None, records_by_rung: dict[int, list[dict]], macs: dict[str, float]) -> dict[int, list]:
    """stats.RowSample per row at each rung, with per-image correctness where it was saved."""
    labels = stats.load_labels(run) if run is not None else None
    out: dict[int, list] = {}
    for rung, records in sorted(records_by_rung.items()):
        by_row: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_row[r["candidate"]["id"]].append(r)
        samples = []
        for key, rs in by_row.items():
            rs.sort(key=lambda r: r["seed"])
            correct = stats.load_correct(run, [r["trial_id"] for r in rs], labels) if labels is not None else None
            val_count = min(int(r["metrics"].get("val_count") or 0) for r in rs) or None
            samples.append(stats.RowSample(key, [float(r["metrics"]["val_accuracy"]) for r in rs], correct,
                                           val_count, float(macs.get(key) or 0)))
        out[rung] = samples
    return out


def paired_statistics(rows: list[dict], trials: dict, run: RunDir | None = None) -> dict:
    """Adds intervals and ``tied`` to ``rows`` (each at its top rung); returns the verdict."""
    done = [r for r in trials.values() if r["status"] == TrialStatus.COMPLETE]
    by_rung: dict[int, list[dict]] = defaultdict(list)
    for r in done:
        by_rung[int(r["rung"])].append(r)
    samples = _samples(run, by_rung, {row["candidate"]: row["macs"] for row in rows})
    results = {rung: stats.compare(s) for rung, s in samples.items()}
    for row in rows:
        found = results.get(row["rung"], {}).get(row["candidate"]) if row["rung"] is not None else None
        row |= {k: (found or {}).get(k) for k in ("acc_lo", "acc_hi", "diff", "diff_lo", "diff_hi")}
        row["stats_method"] = (found or {}).get("method")
        top = max(results) if results else None
        row["tied"] = bool(found and found["tied"] and row["rung"] == top)
    if not results:
        return {}
    top = max(results)
    return stats.verdict(samples[top], results[top], rung=top)


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
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank if row["acc_mean"] is not None else None
    return rows


def summary(space: SearchSpace, trials: dict, rows: list[dict], verdict: dict | None = None) -> dict:
    statuses = [r["status"] for r in trials.values()]
    images = sum(int(r.get("images_seen") or 0) for r in trials.values())
    per_epoch = max((int(r.get("images_seen") or 0) // max(1, int(r["epochs"])) for r in trials.values()
                     if r.get("status") == TrialStatus.COMPLETE), default=None)
    full = space.images_full_schedule(per_epoch)
    winner = chosen_row(rows, verdict)
    planned = space.planned_trials()
    return {
        "schedule": space.config.schedule,
        "budget": space.config.budget,
        "entries": len(space.entries),
        "planned_trials": planned,
        "complete": statuses.count(TrialStatus.COMPLETE),
        "failed": statuses.count(TrialStatus.FAILED),
        "running": statuses.count(TrialStatus.RUNNING),
        "finished": not statuses.count(TrialStatus.RUNNING) and bool(trials) and not next_candidates(space, trials),
        "images_seen": images,
        "images_full_schedule": full,
        "images_ratio": images / full if full else None,
        "trial_seconds": sum(float(r.get("seconds") or 0) for r in trials.values()),
        "winner": winner["candidate"] if winner else None,
        "winner_role": winner["role"] if winner else None,
        "winner_acc": winner["acc_mean"] if winner else None,
        "verdict": verdict or {},
        "timing": timing_summary(trials),  # seconds per phase and the non-training share
    }


def chosen_row(rows: list[dict], verdict: dict | None) -> dict | None:
    """The row the verdict chose; without one (no statistics yet), the top-ranked row."""
    chosen = (verdict or {}).get("chosen")
    found = next((r for r in rows if r["candidate"] == chosen), None)
    return found or (rows[0] if rows and rows[0]["acc_mean"] is not None else None)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _interval(lo_key: str, hi_key: str):
    def render(row: dict) -> str:
        lo, hi = row.get(lo_key), row.get(hi_key)
        return "-" if lo is None or hi is None else f"{100 * lo:.1f}..{100 * hi:.1f}"
    return render


# The console table keeps what the decision needs and fits 80 columns; --format
# csv/json/markdown keep every column, reports/ranking.md the WIDE_COLUMNS.
SHORT_ROLES = {"grid": "grid", "paper": "paper", "depth-only": "depth", "width-only": "width",
               "resolution-only": "res"}
RANKING_COLUMNS = [
    Column("rank", "#"),
    Column("candidate", "candidate", justify="left"),
    Column("role_short", "role", justify="left"),
    Column("acc_mean", "acc %", _pct),
    Column("acc_ci", "95% CI"),
    Column("diff", "behind", _pct),
    Column("diff_ci", "95% CI"),
    Column("flag", "verdict", justify="left"),
]
WIDE_COLUMNS = RANKING_COLUMNS[:2] + [Column("role", "role", justify="left"), Column("rung", "rung"),
    Column("flops_factor", "a*b^2*g^2", fmt_float(3)),
    Column("macs_ratio", "MACs x (measured)", fmt_float(2)),
    Column("resolution", "res"), Column("blocks", "blocks"), Column("epochs", "epochs"), Column("seeds", "seeds"),
] + RANKING_COLUMNS[3:] + [Column("acc_rung0", "acc@rung0 %", _pct)]


def ranking_table(rows: list[dict], verdict: dict | None, title: str, caption: str):
    """The console's ranked table: no vertical rules, so eight columns fit in 80."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False, collapse_padding=True)
    for col in RANKING_COLUMNS:
        table.add_column(col.header, justify=col.justify, no_wrap=True)
    for row in display_rows(rows, verdict):
        table.add_row(*(col.fmt(row.get(col.key)) if row.get(col.key) is not None else "-" for col in RANKING_COLUMNS))
    return table

CSV_COLUMNS = [
    Column("rank", "rank"), Column("candidate", "candidate"), Column("role", "role"),
    Column("in_grid", "in_grid"), Column("alpha", "alpha"), Column("beta", "beta"), Column("gamma", "gamma"),
    Column("flops_factor", "flops_factor"), Column("macs", "macs"), Column("macs_ratio", "macs_ratio"),
    Column("params", "params"), Column("params_ratio", "params_ratio"), Column("resolution", "resolution"),
    Column("blocks", "blocks"), Column("rung", "rung"), Column("epochs", "epochs"), Column("seeds", "seeds"),
    Column("acc_mean", "acc_mean"), Column("acc_std", "acc_std"), Column("acc_lo", "acc_lo"),
    Column("acc_hi", "acc_hi"), Column("diff", "diff_to_leader"), Column("diff_lo", "diff_lo"),
    Column("diff_hi", "diff_hi"), Column("tied", "tied_with_best"), Column("stats_method", "stats_method"),
    Column("noise", "noise"), Column("acc_rung0", "acc_rung0"), Column("val_loss", "val_loss"),
    Column("failed", "failed"), Column("images_seen", "images_seen"), Column("seconds", "seconds"),
    Column("error", "error"),
]

TRIAL_COLUMNS = ["trial_id", "candidate_id", "role", "seed", "rung", "epochs", "status", "val_accuracy",
                 "val_loss", "images_seen", "seconds", "macs", "macs_ratio", "params", "attempt",
                 "started_at", "finished_at", "error"]


def display_rows(rows: list[dict], verdict: dict | None = None) -> list[dict]:
    chosen, top = (verdict or {}).get("chosen"), (verdict or {}).get("rung")
    out = []
    for row in rows:
        flag = "chosen" if row["candidate"] == chosen else ("tied" if row.get("tied") else "worse")
        if row["rung"] is None:
            flag = "failed" if row.get("failed") else "-"
        elif top is not None and row["rung"] < top:
            flag = f"cut r{row['rung']}"
        out.append(row | {"acc_ci": _interval("acc_lo", "acc_hi")(row), "flag": flag,
                          "role_short": SHORT_ROLES.get(row["role"], row["role"]),
                          "diff_ci": _interval("diff_lo", "diff_hi")(row)})
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
    """Compute and trial counts, then the verdict's one sentence last."""
    lines = []
    if info["images_full_schedule"]:
        ratio = info["images_ratio"]
        if info["schedule"] == "halving":
            lines.append(f"Compute: {info['images_seen']:,} training images seen; the full schedule would need "
                         f"{info['images_full_schedule']:,} ({ratio:.2f}x, {100 * (1 - ratio):.0f}% saved by halving).")
        else:
            lines.append(f"Compute: {info['images_seen']:,} training images seen (full schedule).")
    lines.append(f"Trials: {info['complete']} complete, {info['failed']} failed, {info['running']} interrupted "
                 f"(of {info['planned_trials']} planned).")
    if info.get("timing"):
        share, seconds = info["timing"]["non_training_share"], info["timing"]["seconds"]
        lines.append(f"Time: {share:.0%} of {seconds:.0f}s of trial time was not training (build, compile, "
                     "first step and its trace, BN recalibration, eval, teardown).")
    if (info.get("confirm") or {}).get("sentence"):
        lines.append(info["confirm"]["sentence"])
    sentence = (info.get("verdict") or {}).get("sentence")
    if sentence:
        lines.append(sentence)
    elif info["winner"]:
        lines.append(f"Best: {info['winner']} ({info['winner_role']}), val accuracy {100 * info['winner_acc']:.1f}%.")
    return lines


def _markdown(config: GridConfig, rows: list[dict], info: dict) -> str:
    table = console.render(display_rows(rows, info.get("verdict")), WIDE_COLUMNS, "markdown")
    settings = ", ".join(f"{k}={v}" for k, v in config.to_dict().items())
    return (
        f"# effscale grid: budget {config.budget:g}\n\n"
        + "\n".join(f"- {line}" for line in summary_lines(info))
        + "\n\n"
        + "MACs x is measured on the rounded proxy network relative to the proxy base; "
        "a*b^2*g^2 is the formula. Accuracy is the mean over seeds at the highest rung reached, with a 95% "
        f"interval ({(info.get('verdict') or {}).get('method', '-')}); 'behind' is the difference to the "
        "leader of that rung (docs/grid.md).\n\n"
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
    if info.get("confirm"):
        from effscale.grid import confirm

        written["confirm.json"] = atomic_write_json(run.sub("reports", "confirm.json"),
                                                    json.loads(json.dumps(info["confirm"], default=str)))
        written["confirm.csv"] = atomic_write_text(run.sub("reports", "confirm.csv"), console.render(
            confirm.table_rows(info["confirm"]), confirm.columns(wide=True), "csv"))
    winner = chosen_row(rows, info.get("verdict"))
    if winner is not None:
        from effscale.net.scaling import ScalingCoefficients
        from effscale.schemas import write_coefficients

        verdict = info.get("verdict") or {}
        written["best.json"] = write_coefficients(
            run.best_path,
            ScalingCoefficients(winner["alpha"], winner["beta"], winner["gamma"]),
            config.budget,
            source=f"effscale grid {run.path}",
            metrics={"candidate": winner["candidate"], "role": winner["role"], "val_accuracy": winner["acc_mean"],
                     "val_accuracy_ci": [winner.get("acc_lo"), winner.get("acc_hi")],
                     "val_accuracy_std": winner["acc_std"], "rung": winner["rung"],
                     "epochs": winner["epochs"], "seeds": winner["seeds"], "macs_ratio": winner["macs_ratio"],
                     "leader": verdict.get("leader"), "tie_set": verdict.get("tie_set", [winner["candidate"]]),
                     "rule": verdict.get("rule"), "verdict": verdict.get("sentence"),
                     "stats_method": verdict.get("method"), "search_finished": info["finished"]},
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
    verdict = paired_statistics(rows, trials, run)
    info = summary(space, trials, rows, verdict)
    if config.confirm_phi is not None:
        from effscale.grid import confirm

        info["confirm"] = confirm.summarize(run, space, rows)
    return config, space, trials, rows, info


def emit_ranking(rows: list[dict], info: dict, fmt: str) -> None:
    if fmt == "json":
        import sys

        sys.stdout.write(json.dumps({"summary": info, "rows": rows}, indent=2, default=str) + "\n")
        return
    verdict = info.get("verdict") or {}
    title = f"effscale grid (budget {info['budget']:g}, {info['schedule']})"
    if fmt != "table":
        console.emit(display_rows(rows, verdict), CSV_COLUMNS, fmt, title=title)
        return
    caption = (f"95% CI: {verdict.get('method', '-')}; behind: points to the leader of the row's "
               f"last rung; cut rN: stopped by halving at rung N") + stats.fewer_seeds_note(rows)
    console.out.print(ranking_table(rows, verdict, title, caption))
    if info.get("confirm") and fmt == "table":
        from effscale.grid import confirm

        confirm.emit(info["confirm"], fmt)


def rebuild(run: RunDir, fmt: str = "table") -> None:
    """``effscale report RUN_DIR`` for a grid run: files, plots, then the ranked table."""
    config, space, trials, rows, info = build(run)
    written = write_reports(run, config, space, trials, rows, info)
    emit_ranking(rows, info, fmt)
    for line in summary_lines(info):
        console.info(line)
    console.info(f"Reports in {run.reports_dir}" + (f"; best.json in {run.path}" if "best.json" in written else ""))
