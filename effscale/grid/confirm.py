"""``--confirm-phi``: does the phi=1 choice hold one step up? (the paper's Figure 3 / Table 3 question)

After the search, five rows are retrained at ``phi = confirm_phi`` of the same proxy base:
the chosen point, the paper's point and the depth-, width- and resolution-only rows (four
when the chosen point is one of them). Each gets the last rung's epochs and the same seeds
as the search's finalists, so the rows are compared at equal training, and all are scored
on the same validation images, so ``grid.stats`` pairs them.

A row at phi is the proxy base scaled by (alpha^phi, beta^phi, gamma^phi), the same network
``search.proxy_variant(config, candidate, phi=phi)`` builds; it is trained as a candidate
with those coefficients at phi=1, so the trainer needs nothing new.

The confirmation is its own run directory, ``<run>/confirm/``, with its own trial log,
predictions and manifest: resumable like the search, and never mixed with its trials.

It reports, per row, the accuracy with its 95% interval and the paired difference to the
phi-step leader; the tie set there; whether the phi=1 choice is in it; Kendall's tau between
the phi=1 ranking of these rows (the search's order) and their order at phi (tau-a over all
pairs, 1 = same order, -1 = reversed; it moves in steps of 0.2 with 5 rows, 1/3 with 4,
so read it with the intervals); and compound against the best single-axis row, with its
interval.

No Keras here.
"""

from __future__ import annotations

from effscale.grid import stats
from effscale.grid.search import Candidate, Entry, SearchSpace, TrialStatus
from effscale.runs import RunDir

SUBDIR = "confirm"
SINGLE_AXIS = ("depth-only", "width-only", "resolution-only")


def confirm_rows(space: SearchSpace, chosen: str) -> list[dict]:
    """The rows to retrain, each with its phi=1 id, its id at phi and its role."""
    phi = space.config.confirm_phi
    picked: dict[str, str] = {chosen: "chosen"}
    for entry in space.entries:
        if entry.role in ("paper", *SINGLE_AXIS):
            picked[entry.id] = entry.role if entry.id != chosen else f"chosen, {entry.role}"
    rows = []
    for key, role in picked.items():
        c = space.by_id[key].candidate
        scaled = Candidate(c.alpha**phi, c.beta**phi, c.gamma**phi)
        rows.append({"phi1_id": key, "id": scaled.id, "role": role, "alpha": c.alpha, "beta": c.beta,
                     "gamma": c.gamma, "phi": phi})
    return rows


def row_role(row: dict) -> str:
    """A row's own role: the reference role of a chosen row that is also one ("chosen, width-only")."""
    return row["role"].split(", ")[-1]


def compound_rows(rows: list[dict]) -> list[dict]:
    """The chosen and paper rows that scale two or more axes: the compound side of the
    compound-against-single-axis comparison. A chosen grid point with alpha = beta = 1
    (a1.00-b1.00-g1.40, which won both Imagenette searches) is resolution-only in all but
    rounding, and comparing it with resolution-only is not the paper's question."""
    return [x for x in rows if row_role(x) in ("chosen", "paper")
            and sum(abs(x[axis] - 1.0) > 1e-9 for axis in ("alpha", "beta", "gamma")) >= 2]


def confirm_space(space: SearchSpace, rows: list[dict]) -> SearchSpace:
    """Every row trained once per seed for the last rung's epochs (a one-rung full schedule).

    Seed-major: every row's seed 0, then every row's seed 1, ... A phi=2 trial trains for
    minutes where its graph trace costs seconds, so reusing the trace across a row's seeds
    saves little, while this order lets a stopped check compare every row on one seed, and
    spreads 5 rows x 3 seeds evenly over two workers (8 trial-lengths, not 9).
    """
    config = space.config.replace(schedule="full", confirm_phi=None)
    entries = [Entry(Candidate(r["alpha"] ** r["phi"], r["beta"] ** r["phi"], r["gamma"] ** r["phi"]),
                     row_role(r), in_grid=False) for r in rows]
    return SearchSpace(config, entries, seed_major=True)


def run_confirmation(run: RunDir, space: SearchSpace, verdict: dict, trainer, executor, progress,
                     num_classes: int) -> dict:
    from effscale.grid.executors import run_search
    from effscale.grid.trials import TrialStore

    sub = RunDir(run.path / SUBDIR)
    rows = confirm_rows(space, verdict["chosen"])
    if sub.manifest_path.exists():
        rows = sub.read_manifest()["config"]["rows"]  # the rows chosen when it started
    else:
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.write_manifest("grid-confirm", {"phi": space.config.confirm_phi, "rows": rows})
    run_search(confirm_space(space, rows), TrialStore(sub), trainer, executor, progress, False, num_classes)
    return summarize(run, space)


def kendall_tau(first: list[str], second: list[str]) -> float | None:
    """Kendall's tau-a between two orderings of the same items."""
    items = [k for k in first if k in second]
    if len(items) < 2:
        return None
    pos = {k: second.index(k) for k in items}
    pairs = [(a, b) for i, a in enumerate(items) for b in items[i + 1:]]
    return sum(1 if pos[a] < pos[b] else -1 for a, b in pairs) / len(pairs)


def summarize(run: RunDir, space: SearchSpace, phi1_rows: list[dict] | None = None) -> dict | None:
    """The confirmation's table and verdict from ``<run>/confirm`` alone (None before it ran)."""
    from effscale.grid.report import _samples
    from effscale.grid.trials import TrialStore

    sub = RunDir(run.path / SUBDIR)
    if not sub.manifest_path.exists():
        return None
    rows = sub.read_manifest()["config"]["rows"]
    trials = [r for r in TrialStore(sub).latest().values() if r["status"] == TrialStatus.COMPLETE]
    cspace = confirm_space(space, rows)
    macs = {}
    for r in trials:
        macs[r["candidate"]["id"]] = float((r.get("cost") or {}).get("macs") or 0)
    samples = _samples(sub, {0: trials}, macs).get(0, [])
    results = stats.compare(samples)
    verdict = stats.verdict(samples, results) if results else {}
    order1 = [r["candidate"] for r in (phi1_rows or []) if r["candidate"] in {x["phi1_id"] for x in rows}]
    to_phi = {x["phi1_id"]: x["id"] for x in rows}
    order_phi = sorted(results, key=lambda k: -results[k]["acc"])
    tau = kendall_tau([to_phi[k] for k in order1], order_phi) if order1 else None
    out_rows = []
    for x in rows:
        res = results.get(x["id"], {})
        cost = next((r.get("cost") for r in trials if r["candidate"]["id"] == x["id"]), None) or {}
        out_rows.append(x | {k: res.get(k) for k in ("acc", "acc_lo", "acc_hi", "diff", "diff_lo", "diff_hi",
                                                       "tied", "seeds")}
                        | {"macs_ratio": cost.get("macs_ratio"), "resolution": cost.get("resolution"),
                           "phi1_rank": order1.index(x["phi1_id"]) + 1 if x["phi1_id"] in order1 else None})
    by_role = {row_role(x): x["id"] for x in rows}
    compound = [x["id"] for x in compound_rows(rows) if x["id"] in results]
    singles = [by_role[r] for r in SINGLE_AXIS if by_role.get(r) in results]
    versus = None
    if compound and singles:
        best_c = max(compound, key=lambda k: results[k]["acc"])
        best_s = max(singles, key=lambda k: results[k]["acc"])
        by_key = {s.key: s for s in samples}
        versus = {"compound": best_c, "single_axis": best_s,
                  **stats.paired_difference(by_key[best_c], by_key[best_s])}
    chosen_id = next((x["id"] for x in rows if x["role"].startswith("chosen")), None)
    planned = len(cspace.entries) * space.config.seeds
    return {"phi": rows[0]["phi"] if rows else None, "rows": out_rows, "verdict": verdict, "kendall_tau": tau,
            "chosen_in_tie_set": chosen_id in verdict.get("tie_set", []) if verdict else None,
            "compound_vs_single_axis": versus, "complete": len(trials), "planned": planned,
            "sentence": _sentence(verdict, chosen_id, tau, versus, out_rows, len(trials), planned,
                                  [x["phi1_id"] for x in rows if x["id"] not in results])}


def _sentence(verdict: dict, chosen_id: str | None, tau, versus, rows, complete: int, planned: int,
              untrained: list[str]) -> str | None:
    """One sentence, naming rows by their phi=1 ids (the ids the search table shows).

    A check that has not finished says so, and which rows it has not scored yet: a tie set
    or a tau over the rows trained so far must not read as the final answer.
    """
    if not verdict:
        return None
    phi, back = rows[0]["phi"], {x["id"]: x["phi1_id"] for x in rows}
    kept = "stays in" if chosen_id in verdict.get("tie_set", []) else "drops out of"
    text = (f"At phi={phi:g} the phi=1 choice {back.get(chosen_id)} {kept} the tie set "
            f"({', '.join(back[k] for k in verdict['tie_set'])})")
    if tau is not None:
        text += f"; Kendall tau with the phi=1 order {tau:+.2f}"
    if versus:
        text += (f"; best compound {back[versus['compound']]} minus best single-axis "
                 f"{back[versus['single_axis']]}: "
                 f"{100 * versus['diff']:+.1f} points, 95% CI [{100 * versus['diff_lo']:+.1f}, "
                 f"{100 * versus['diff_hi']:+.1f}]")
        # Rounding moves each row off the budget; a comparison "at equal FLOPs" should show by how much.
        macs = {x["id"]: x.get("macs_ratio") for x in rows}
        pair = (macs.get(versus["compound"]), macs.get(versus["single_axis"]))
        if None not in pair:
            text += f", at {pair[0]:.2f}x and {pair[1]:.2f}x the base's MACs"
    if complete < planned:
        text += f" (so far: {complete} of {planned} trials"
        text += f"; no result yet for {', '.join(untrained)})" if untrained else ")"
    return text + "."


def _ci(lo_key: str, hi_key: str):
    def render(row: dict) -> str:
        lo, hi = row.get(lo_key), row.get(hi_key)
        return "-" if lo is None or hi is None else f"{100 * lo:.1f}..{100 * hi:.1f}"
    return render


def table_rows(summary: dict) -> list[dict]:
    chosen = (summary.get("verdict") or {}).get("tie_set", [])
    short = {"depth-only": "depth", "width-only": "width", "resolution-only": "res"}
    return [r | {"acc_ci": _ci("acc_lo", "acc_hi")(r), "diff_ci": _ci("diff_lo", "diff_hi")(r),
                 "role_short": "/".join(short.get(p, p) for p in r["role"].split(", ")),
                 "flag": "-" if r.get("acc") is None else ("tied" if r["id"] in chosen else "worse")}
            for r in sorted(summary["rows"], key=lambda r: -(r.get("acc") or -1))]


def columns(wide: bool = False):
    """The console's columns (fit 80) or, for csv/json/markdown, every column."""
    from effscale.console import Column, fmt_float

    def pct(value) -> str:
        return f"{100 * value:.1f}"

    narrow = [Column("phi1_id", "row (phi=1 id)", justify="left"), Column("role_short", "role", justify="left"),
              Column("acc", "acc %", pct), Column("acc_ci", "95% CI"), Column("diff", "behind", pct),
              Column("diff_ci", "95% CI"), Column("flag", "tied", justify="left")]
    if not wide:
        return narrow
    return narrow[:2] + [Column("id", "id_at_phi"), Column("phi", "phi"), Column("phi1_rank", "phi1_rank"),
                         Column("macs_ratio", "macs_ratio", fmt_float(3)), Column("resolution", "resolution"),
                         Column("seeds", "seeds")] + narrow[2:]


def emit(summary: dict, fmt: str) -> None:
    """The confirmation table (stdout) in the command's format."""
    from effscale import console

    if fmt == "table":
        from rich import box
        from rich.table import Table

        table = Table(title=f"scale-up check at phi={summary['phi']:g} ({summary['complete']} of "
                            f"{summary['planned']} trials)", header_style="bold", box=box.SIMPLE_HEAD,
                      pad_edge=False, show_edge=False, collapse_padding=True)
        cols = columns()
        for col in cols:
            table.add_column(col.header, justify=col.justify, no_wrap=True)
        for row in table_rows(summary):
            table.add_row(*(col.fmt(row.get(col.key)) if row.get(col.key) is not None else "-" for col in cols))
        console.out.print(table)
    else:
        console.emit(table_rows(summary), columns(wide=True), fmt)
