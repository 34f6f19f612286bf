"""Paired statistics of grid rows on synthetic predictions where the right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from effscale.grid import report, stats
from effscale.grid.config import preset
from effscale.grid.search import SearchSpace
from effscale.runs import RunDir

N = 1000  # validation images
RNG = np.random.default_rng(1234)


def _row(key, correct, macs=1.0):
    correct = np.atleast_2d(np.asarray(correct, dtype=bool))
    return stats.RowSample(key, [float(c.mean()) for c in correct], correct, correct.shape[1], macs)


def _mask(p, n=N, rng=RNG):
    return rng.random(n) < p


def test_a_clearly_better_row_beats_the_other():
    good, bad = _row("good", _mask(0.80)), _row("bad", _mask(0.60))
    results = stats.compare([bad, good])
    assert results["bad"]["leader"] == "good"
    assert not results["bad"]["tied"] and results["good"]["tied"]
    diff = good.accuracy - bad.accuracy  # about 0.2 by construction
    assert results["bad"]["diff_lo"] > 0.1 and results["bad"]["diff_lo"] < diff < results["bad"]["diff_hi"]
    verdict = stats.verdict([bad, good], results, rung=2)
    assert verdict["chosen"] == "good" and verdict["tie_set"] == ["good"]
    assert verdict["sentence"].startswith("good beats every other row at rung 2 (smallest margin ")


def test_identical_rows_are_tied_and_the_cheaper_is_chosen():
    same = _mask(0.5)
    rows = [_row("costly", same, macs=2.0e6), _row("cheap", same, macs=1.5e6)]
    results = stats.compare(rows)
    assert results["costly"]["diff"] == 0 and results["cheap"]["diff"] == 0
    assert results["costly"]["tied"] and results["cheap"]["tied"]
    verdict = stats.verdict(rows, results)
    assert verdict["chosen"] == "cheap" and set(verdict["tie_set"]) == {"costly", "cheap"}
    assert verdict["sentence"].startswith("2 rows are statistically tied: ")
    assert "chose cheap by fewest measured MACs" in verdict["sentence"]


def test_pairing_separates_a_small_consistent_difference_that_binomial_errors_cannot():
    base = _mask(0.6)
    better = base.copy()
    better[np.flatnonzero(~base)[:15]] = True  # right on 15 more images, wrong on none more
    paired = stats.compare([_row("base", base), _row("better", better)])
    assert paired["base"]["leader"] == "better" and not paired["base"]["tied"]
    assert paired["base"]["diff"] == pytest.approx(0.015)
    unpaired = stats.compare([stats.RowSample("base", [base.mean()], None, N),
                              stats.RowSample("better", [better.mean()], None, N)])
    assert unpaired["base"]["tied"]  # 1.5 points is inside two binomial errors of ~1.5 points each
    assert unpaired["base"]["method"].startswith("normal approximation")


def test_seed_spread_widens_the_interval():
    # three seeds that disagree by 10 points each, against one seed's image-only interval
    spread = np.stack([_mask(p) for p in (0.55, 0.65, 0.75)])
    steady = np.stack([_mask(0.65) for _ in range(3)])
    one = stats.compare([_row("spread", spread), _row("steady", steady)])
    width = {k: r["acc_hi"] - r["acc_lo"] for k, r in one.items()}
    assert width["spread"] > 2 * width["steady"]
    assert "3 seeds" in one["spread"]["method"]


def test_the_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered = 0
    trials = 200
    for i in range(trials):
        sample = _row("x", rng.random(500) < 0.7)
        r = stats.compare([sample], replicates=500, seed=i)["x"]
        covered += r["acc_lo"] <= 0.7 <= r["acc_hi"]
    assert 0.88 * trials <= covered <= 0.99 * trials


def test_results_are_reproducible():
    rows = [_row("a", np.stack([_mask(0.5), _mask(0.52)])), _row("b", np.stack([_mask(0.51), _mask(0.5)]))]
    assert stats.compare(rows) == stats.compare(rows)


def test_the_order_of_the_rows_changes_no_interval_and_no_verdict():
    """The trial log's order depends on which worker finished first; the report must not.
    Three seeds per row, so each row's seed draws matter; two rows tied to the last digit
    (same correctness, same MACs), so only their names can break the tie."""
    twin = np.stack([_mask(0.55), _mask(0.50), _mask(0.60)])
    rows = [_row("c", np.stack([_mask(0.50), _mask(0.45), _mask(0.55)]), macs=3.0),
            _row("b", twin, macs=2.0), _row("a", twin.copy(), macs=2.0),
            _row("d", np.stack([_mask(0.40), _mask(0.42), _mask(0.38)]), macs=1.0)]
    forward, backward = stats.compare(rows), stats.compare(rows[::-1])
    assert forward == backward
    assert forward["a"]["leader"] == "a"  # a and b are equal: the name decides, not the order
    verdicts = [stats.verdict(order, stats.compare(order)) for order in (rows, rows[::-1])]
    assert verdicts[0] == verdicts[1] and verdicts[0]["chosen"] == "a"


def _write_run(tmp_path, accuracies: dict[str, list[float]]):
    """A finished smoke-config run dir whose last rung holds these rows, with predictions."""
    config = preset("smoke").replace(dataset="synthetic")
    space = SearchSpace.from_config(config)
    run = RunDir(tmp_path)
    run.write_manifest("grid", config.to_dict())
    labels = np.arange(N, dtype=np.int16) % 10
    np.save(run.val_labels_path, labels)
    by_id = {e.id: e for e in space.entries}
    rng = np.random.default_rng(0)
    for key, seeds in accuracies.items():
        entry = by_id[key]
        for seed, acc in enumerate(seeds):
            trial_id = f"{key}-s{seed}-r1"
            right = rng.permutation(N) < int(acc * N)
            predictions = np.where(right, labels, (labels + 1) % 10).astype(np.int16)
            run.trial_dir(trial_id).mkdir(parents=True)
            np.save(run.predictions_path(trial_id), predictions)
            run.append_jsonl("trials.jsonl", {
                "trial_id": trial_id, "candidate": entry.candidate.to_dict(), "role": entry.role, "seed": seed,
                "rung": 1, "epochs": 3, "status": "COMPLETE", "metrics": {"val_accuracy": acc, "val_count": N},
                "cost": {"macs": 1000 + len(key), "macs_ratio": 2.0, "params": 1, "params_ratio": 1.0,
                         "resolution": 32, "blocks": 4}, "images_seen": 768})
    return run


def test_report_reads_predictions_from_the_run_dir_and_best_json_records_the_tie_set(tmp_path, run_cli):
    run = _write_run(tmp_path, {"a1.20-b1.10-g1.15": [0.50, 0.52], "a1.25-b1.00-g1.25": [0.80, 0.78]})
    config, space, trials, rows, info = report.build(run)
    verdict = info["verdict"]
    assert verdict["chosen"] == "a1.25-b1.00-g1.25" and verdict["tie_set"] == ["a1.25-b1.00-g1.25"]
    assert verdict["method"] == "paired bootstrap over images and 2 seeds"
    loser = next(r for r in rows if r["candidate"] == "a1.20-b1.10-g1.15")
    assert loser["diff"] == pytest.approx(0.28) and loser["diff_lo"] > 0.2 and not loser["tied"]
    report.write_reports(run, config, space, trials, rows, info)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["metrics"]["tie_set"] == ["a1.25-b1.00-g1.25"] and best["metrics"]["rule"]
    code, _, err = run_cli("scale", "--phi", "2", "--from", str(tmp_path))
    assert code == 0 and "could not separate" not in err and "tied rows cost" not in err


def test_scale_from_warns_when_the_tie_set_has_several_rows(tmp_path, run_cli):
    run = _write_run(tmp_path, {"a1.20-b1.10-g1.15": [0.60, 0.61], "a1.25-b1.00-g1.25": [0.60, 0.61]})
    config, space, trials, rows, info = report.build(run)
    assert len(info["verdict"]["tie_set"]) == 2
    report.write_reports(run, config, space, trials, rows, info)
    code, _, err = run_cli("scale", "--phi", "2", "--from", str(tmp_path))
    assert code == 0 and "Warning: the grid search could not separate 2 rows" in err


def test_scale_from_a_tie_names_each_tied_rows_cost_at_that_phi(tmp_path, run_cli):
    # Two rows the proxy cannot separate; at phi=3 on B0 they cost different MACs, which
    # `effscale scale --alpha/--beta/--gamma` computes independently for each.
    rows = {"a1.00-b1.4142-g1.00": [0.60, 0.61], "a1.00-b1.00-g1.4142": [0.60, 0.61]}
    run = _write_run(tmp_path, rows)
    config, space, trials, ranked, info = report.build(run)
    report.write_reports(run, config, space, trials, ranked, info)
    code, _, err = run_cli("scale", "--phi", "3", "--from", str(tmp_path))
    assert code == 0
    line = " ".join(err.split())
    assert "At phi=3 on B0 the tied rows cost (MACs):" in line
    macs = {}
    for row in rows:
        alpha, beta, gamma = (part[1:] for part in row.split("-"))
        code, out, _ = run_cli("scale", "--phi", "3", "--alpha", alpha, "--beta", beta, "--gamma", gamma,
                               "--format", "json")
        macs[row] = json.loads(out)[0]["flops"]
        assert f"{row} {macs[row] / 1e9:.2f} G" in line
    assert macs["a1.00-b1.4142-g1.00"] != macs["a1.00-b1.00-g1.4142"]
    assert f"the cheapest there is {min(macs, key=macs.get)}" in line
    assert "(chosen)" in line  # the grid's choice is marked among them


@pytest.mark.parametrize("width", [80, 120])
def test_ranking_table_fits_the_terminal_without_truncated_cells(tmp_path, width):
    from rich.console import Console

    run = _write_run(tmp_path, {"a1.20-b1.10-g1.15": [0.50, 0.52], "a1.00-b1.00-g1.4142": [0.81, 0.83]})
    _, _, _, rows, info = report.build(run)
    console = Console(width=width, record=True, file=open(tmp_path / "out.txt", "w"))
    console.print(report.ranking_table(rows, info["verdict"], "title", "caption"))
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert "a1.00-b1.00-g1.4142" in text and "chosen" in text


def test_the_ranking_caption_says_when_cut_rows_have_fewer_seeds():
    from effscale.grid.stats import fewer_seeds_note

    halving = [{"seeds": 3}, {"seeds": 3}, {"seeds": 1}, {"seeds": 1}, {"seeds": 0}]
    assert "rows with 1 seed (cut early): over images only" in fewer_seeds_note(halving)
    assert fewer_seeds_note([{"seeds": 3}, {"seeds": 2}]).endswith("rows with 2 seeds (cut early): over their seeds only")
    assert fewer_seeds_note([{"seeds": 3}, {"seeds": 3}]) == ""  # the full schedule: every row alike
