"""``effscale grid`` end to end with the fake trainer: output, resume, kill -9, bad input, report, scale --from."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effscale.grid.config import preset
from effscale.grid.search import SearchSpace
from effscale.runs import RunDir
from effscale.grid.trials import TrialStore

SMOKE = ["grid", "--preset", "smoke", "--dataset", "synthetic", "--fake-trials", "0"]
SMOKE_SPACE = SearchSpace.from_config(preset("smoke").replace(dataset="synthetic"))


def _complete_lines(run_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in RunDir(run_dir).read_jsonl("trials.jsonl"):
        if record["status"] == "COMPLETE":
            counts[record["trial_id"]] = counts.get(record["trial_id"], 0) + 1
    return counts


def test_grid_runs_writes_reports_and_best_json(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(*SMOKE, "--run-dir", str(run_dir), "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(SMOKE_SPACE.entries)
    assert {"paper", "depth-only", "width-only", "resolution-only"} <= {r["role"] for r in rows}
    assert rows[0]["rank"] == "1"
    for name in ("ranking.csv", "ranking.md", "ranking.json", "trials.csv"):
        assert (run_dir / "reports" / name).stat().st_size > 0
    assert (run_dir / "plots" / "grid_acc_vs_macs.png").exists()
    assert (run_dir / "plots" / "grid_constraint.png").exists()
    best = json.loads((run_dir / "best.json").read_text())
    assert best["schema"] == "effscale/coefficients@1"
    # best.json holds the chosen row: the cheapest (measured MACs) of the rows tied with the leader
    chosen, ties = best["metrics"]["candidate"], best["metrics"]["tie_set"]
    by_id = {r["candidate"]: r for r in rows}
    assert rows[0]["candidate"] in ties and chosen in ties and best["metrics"]["rule"]
    assert (float(by_id[chosen]["alpha"]), float(by_id[chosen]["beta"])) == (best["alpha"], best["beta"])
    assert int(by_id[chosen]["macs"]) == min(int(by_id[t]["macs"]) for t in ties)
    assert all(by_id[t]["tied"] == "True" for t in ties)
    assert err.rstrip().splitlines()[-1] == best["metrics"]["verdict"]  # the closing sentence
    assert "training images seen" in err and "saved by halving" in err
    assert _complete_lines(run_dir) == {t: 1 for t in _complete_lines(run_dir)}
    assert len(_complete_lines(run_dir)) == SMOKE_SPACE.planned_trials()

    # effscale scale --phi 3 --from RUN_DIR uses the coefficients found
    code, scaled, err = run_cli("scale", "--phi", "3", "--from", str(run_dir), "--format", "json")
    assert code == 0, err
    derived = json.loads(scaled)[0]
    assert derived["depth"] == pytest.approx(best["alpha"] ** 3)
    assert derived["width"] == pytest.approx(best["beta"] ** 3)

    # effscale report RUN_DIR rebuilds the same ranking from the store
    (run_dir / "reports" / "ranking.csv").unlink()
    code, out2, err = run_cli("report", str(run_dir), "--format", "csv")
    assert code == 0, err
    assert out2 == out
    assert (run_dir / "reports" / "ranking.csv").exists()


def test_resume_skips_finished_and_refuses_changed_settings(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*SMOKE, "--run-dir", str(run_dir))[0] == 0
    lines = len(RunDir(run_dir).read_jsonl("trials.jsonl"))
    code, out, err = run_cli("grid", "--resume", str(run_dir), "--fake-trials", "0", "--format", "json")
    assert code == 0, err
    assert len(RunDir(run_dir).read_jsonl("trials.jsonl")) == lines  # nothing rerun
    assert json.loads(out)["summary"]["complete"] == SMOKE_SPACE.planned_trials()
    code, out, err = run_cli("grid", "--resume", str(run_dir), "--budget", "3", "--fake-trials", "0")
    assert code == 1
    assert err.count("\n") == 1 and "was created with budget=2.0; this command asks for budget=3.0." in err
    code, _, err = run_cli("grid", "--resume", str(run_dir), "--preset", "gpu", "--fake-trials", "0")
    assert code == 1 and err.count("\n") == 1 and "base_" in err
    # an existing run dir is never clobbered without --overwrite
    code, _, err = run_cli(*SMOKE, "--run-dir", str(run_dir))
    assert code == 1 and "already exists" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--budget", "1"], "Error: --budget must be > 1"),
    (["--budget", "0.5"], "Error: --budget must be > 1"),
    (["--tolerance", "0.001", "--alpha", "1", "1.5"], "Error: no (alpha, beta, gamma) on the grid"),
    (["--step", "0"], "Error: --step must be > 0"),
    (["--step", "-0.05"], "Error: --step must be > 0"),
    (["--schedule", "fast"], "Error: Invalid value for '--schedule'"),
])
def test_bad_input_is_one_line(run_cli, tmp_path, args, message):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("grid", "--dataset", "synthetic", "--fake-trials", "0", "--run-dir", str(run_dir), *args)
    assert code != 0
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not run_dir.exists()  # nothing written


def test_unknown_dataset_is_one_line(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli("grid", "--dataset", "imagenet-21k", "--run-dir", str(run_dir))
    assert code == 1 and err.startswith("Error: dataset imagenet-21k does not exist") and err.count("\n") == 1
    assert not run_dir.exists()


def test_resume_on_a_non_grid_dir(run_cli, tmp_path):
    code, _, err = run_cli("grid", "--resume", str(tmp_path))
    assert code == 1 and "is not an effscale run directory" in err and err.count("\n") == 1
    RunDir(tmp_path).write_manifest("transfer", {"variant": "b0"})
    code, _, err = run_cli("grid", "--resume", str(tmp_path))
    assert code == 1 and "is an effscale 'transfer' run, not a 'grid' run" in err
    code, _, err = run_cli("grid", "--resume", str(tmp_path / "missing"))
    assert code == 1 and "is not a directory" in err


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "effscale", *SMOKE[:-1], "0.25", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_complete_lines(run_dir) if run_dir.exists() else {}) < 3:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _complete_lines(run_dir)
    assert 3 <= len(before) < SMOKE_SPACE.planned_trials()
    resume = subprocess.run([sys.executable, "-m", "effscale", "grid", "--resume", str(run_dir), "--fake-trials", "0"],
                            capture_output=True, text=True, timeout=120)
    assert resume.returncode == 0, resume.stderr
    after = _complete_lines(run_dir)
    assert set(after) >= set(before)  # nothing finished was lost
    assert all(count == 1 for count in after.values())  # nothing finished twice
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "effscale", *SMOKE, "--run-dir", str(reference)], check=True,
                   capture_output=True, timeout=120)
    assert set(after) == set(_complete_lines(reference))  # the same trial set as an uninterrupted run
    latest = TrialStore(RunDir(run_dir)).latest()
    assert all(r["status"] == "COMPLETE" for r in latest.values())


def test_grid_help_lists_the_documented_flags(run_cli):
    code, out, _ = run_cli("grid", "--help")
    assert code == 0
    for flag in ("--budget", "--tolerance", "--step", "--seeds", "--schedule", "--executor", "--ray-address",
                 "--resume", "--format", "--resolution", "--dataset"):
        assert flag in out
    assert "--fake-trials" not in out


# Every numeric option of grid: huge, tiny, nan, inf, and values that only overflow once
# multiplied out (epochs * eta^(rungs-1), resolution * gamma, width * beta).
NUMERIC_SWEEP = [
    ["--budget", "nan"], ["--budget", "inf"], ["--budget", "-inf"], ["--budget", "1e308"],
    ["--tolerance", "nan"], ["--tolerance", "inf"], ["--tolerance", "1e-300", "--alpha", "1", "1.5"],
    ["--step", "nan"], ["--step", "inf"], ["--step", "1e-300"], ["--step", "1e308"],
    ["--alpha", "1", "1e308"], ["--alpha", "1", "inf"], ["--beta", "nan", "2"], ["--gamma", "1", "1e300"],
    ["--limit-train", "0"], ["--limit-train", "99999999999999999999"], ["--limit-val", "-1"],
    ["--resolution", "0"], ["--resolution", "1e9"], ["--resolution", "999999999"],
    ["--base-width", "nan"], ["--base-width", "1e9"], ["--base-width", "0"], ["--base-depth", "inf"],
    ["--epochs", "0"], ["--epochs", "1000000000000"], ["--eta", "1"], ["--eta", "1000000"],
    ["--rungs", "1000000000"], ["--epochs", "100", "--eta", "10", "--rungs", "8"],
    ["--seeds", "0"], ["--seeds", "1000000"], ["--early-seeds", "0"], ["--seeds", "2", "--early-seeds", "3"],
    ["--batch-size", "0"], ["--batch-size", "1000000000000"],
    ["--learning-rate", "nan"], ["--learning-rate", "inf"], ["--learning-rate", "1e308"], ["--learning-rate", "0"],
    ["--bn-momentum", "nan"], ["--bn-momentum", "inf"], ["--bn-momentum", "1"],
    ["--bn-recalibration-batches", "-1"], ["--bn-recalibration-batches", "1000000000"],
    ["--confirm-phi", "1"], ["--confirm-phi", "0.5"], ["--confirm-phi", "abc"], ["--confirm-phi", "nan"],
    ["--confirm-phi", "1e9"], ["--confirm-phi", "4", "--resolution", "1000"],
    ["--cpus-per-trial", "nan"], ["--cpus-per-trial", "inf"], ["--gpus-per-trial", "1e308"],
    ["--resolution", "1000", "--budget", "100", "--gamma", "1", "10", "--alpha", "1", "1", "--beta", "1", "1",
     "--step", "1", "--tolerance", "0"],
    ["--base-width", "8", "--budget", "256", "--beta", "1", "16", "--alpha", "1", "1", "--gamma", "1", "1",
     "--step", "1", "--tolerance", "0"],
]


@pytest.mark.parametrize("args", NUMERIC_SWEEP, ids=lambda a: " ".join(a))
def test_numeric_options_out_of_range_are_one_line_errors(run_cli, tmp_path, args):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("grid", "--dataset", "synthetic", "--fake-trials", "0", "--run-dir", str(run_dir), *args)
    assert code in (1, 2), err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Unexpected error" not in err and "Traceback" not in err
    assert not run_dir.exists()  # nothing written


def _noisy_trial(spec):
    import warnings

    from effscale.grid.trials import fake_trial

    warnings.warn("`shuffle=True` was passed, but will be ignored", UserWarning)
    return fake_trial(spec)


def test_library_run_keeps_library_warnings_off_the_console(tmp_path, capfd):
    import effscale.grid
    from effscale.grid import GridConfig

    config = preset("smoke").replace(dataset="synthetic")
    result = effscale.grid.run(config, tmp_path / "run", run_trial=_noisy_trial)
    assert result.summary["complete"] == SMOKE_SPACE.planned_trials()
    assert isinstance(result.config, GridConfig) and result.rows[0]["rank"] == 1
    captured = capfd.readouterr()
    assert "shuffle=True" not in captured.err + captured.out
    assert "shuffle=True" in (tmp_path / "run" / "effscale.log").read_text()
    again = effscale.grid.run(config, tmp_path / "run", resume=True, run_trial=_noisy_trial)
    assert again.ran == 0 and again.summary["complete"] == result.summary["complete"]


def test_confirm_phi_retrains_the_chosen_paper_and_single_axis_rows_one_step_up(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(*SMOKE, "--run-dir", str(run_dir), "--confirm-phi", "2", "--format", "json")
    assert code == 0, err
    best = json.loads((run_dir / "best.json").read_text())
    chosen = best["metrics"]["candidate"]
    records = [r for r in RunDir(run_dir / "confirm").read_jsonl("trials.jsonl") if r["status"] == "COMPLETE"]
    # phi=2 of the same proxy base: every coefficient squared (worked out by hand)
    expected = {"a1.44-b1.21-g1.3225", "a4.00-b1.00-g1.00", "a1.00-b2.00-g1.00", "a1.00-b1.00-g2.00"}
    a, b, g = (best["alpha"], best["beta"], best["gamma"])
    expected.add(f"a{a * a:.4f}".rstrip("0").ljust(5, "0") + f"-b{b * b:.4f}".rstrip("0").ljust(6, "0")
                 + f"-g{g * g:.4f}".rstrip("0").ljust(6, "0"))
    assert {r["candidate"]["id"] for r in records} == expected
    assert {r["epochs"] for r in records} == {3}  # the smoke preset's last rung: 1 * 3^(2-1)
    assert {r["seed"] for r in records} == {0, 1}  # the smoke preset's 2 seeds
    assert len(records) == 2 * len(expected)
    starts = [r for r in RunDir(run_dir / "confirm").read_jsonl("trials.jsonl") if r["status"] == "RUNNING"]
    assert [r["seed"] for r in starts] == [0] * len(expected) + [1] * len(expected)  # every row once, then again
    confirm = json.loads((run_dir / "reports" / "confirm.json").read_text())
    assert {row["phi1_id"] for row in confirm["rows"]} >= {chosen, "a1.20-b1.10-g1.15"}
    assert confirm["complete"] == confirm["planned"] == len(records)
    assert "At phi=2 the phi=1 choice" in err
    assert json.loads(out)["summary"]["confirm"]["kendall_tau"] is not None
    versus = confirm["compound_vs_single_axis"]
    ratio = {row["id"]: row["macs_ratio"] for row in confirm["rows"]}
    assert (f"at {ratio[versus['compound']]:.2f}x and {ratio[versus['single_axis']]:.2f}x the base's MACs"
            in confirm["sentence"])
    assert ratio[versus["compound"]] > 1 and ratio[versus["single_axis"]] > 1  # phi=2 rows cost more than the base
    lines = len(RunDir(run_dir / "confirm").read_jsonl("trials.jsonl"))
    code, _, err = run_cli("grid", "--resume", str(run_dir), "--fake-trials", "0")
    assert code == 0, err
    assert len(RunDir(run_dir / "confirm").read_jsonl("trials.jsonl")) == lines  # nothing retrained
    assert "so far" not in err

    # a check stopped early: only the first row's seed 0 finished; its sentence says so
    log = run_dir / "confirm" / "trials.jsonl"
    first = starts[0]["trial_id"]
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["trial_id"] == first]
    log.write_text("\n".join(kept) + "\n")
    code, out, err = run_cli("report", str(run_dir), "--format", "json")
    assert code == 0, err
    sentence = json.loads(out)["summary"]["confirm"]["sentence"]
    missing = [r["phi1_id"] for r in confirm["rows"] if r["id"] != starts[0]["candidate"]["id"]]
    assert sentence.endswith(f"(so far: 1 of {len(records)} trials; no result yet for {', '.join(missing)}).")


def test_a_finished_search_takes_its_confirmation_on_resume_until_it_has_started(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*SMOKE, "--run-dir", str(run_dir))
    assert code == 0, err
    search_lines = len(RunDir(run_dir).read_jsonl("trials.jsonl"))
    code, _, err = run_cli("grid", "--resume", str(run_dir), "--confirm-phi", "2", "--fake-trials", "0")
    assert code == 0, err
    assert len(RunDir(run_dir).read_jsonl("trials.jsonl")) == search_lines  # the search is not retrained
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["confirm_phi"] == 2
    confirm = json.loads((run_dir / "reports" / "confirm.json").read_text())
    assert confirm["complete"] == confirm["planned"] > 0 and "At phi=2 the phi=1 choice" in err
    # once it has started, its phi is fixed; other settings stay refused as before
    code, _, err = run_cli("grid", "--resume", str(run_dir), "--confirm-phi", "3", "--fake-trials", "0")
    assert code != 0 and "confirmation at phi=2" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("grid", "--resume", str(run_dir), "--budget", "3", "--fake-trials", "0")
    assert code != 0 and "budget" in err and len(err.strip().splitlines()) == 1


def test_workers_take_consecutive_runs_of_one_candidate():
    from effscale.grid.search import Candidate, TrialSpec
    from effscale.grid.workers import group_by_candidate

    a, b = Candidate(1.2, 1.1, 1.15), Candidate(2.0, 1.0, 1.0)
    specs = [TrialSpec(c, "grid", seed, 0, 1) for c, seed in ((a, 0), (a, 1), (b, 0), (a, 2))]
    groups = group_by_candidate(specs)
    assert [[(g.candidate.id, g.seed) for g in group] for group in groups] == [
        [(a.id, 0), (a.id, 1)], [(b.id, 0)], [(a.id, 2)]]


def test_kendall_tau():
    from effscale.grid.confirm import kendall_tau

    assert kendall_tau(list("abcd"), list("abcd")) == 1.0
    assert kendall_tau(list("abcd"), list("dcba")) == -1.0
    assert kendall_tau(list("abcd"), list("bacd")) == pytest.approx(4 / 6)  # one of six pairs swapped


def test_only_rows_scaling_two_or_more_axes_count_as_compound():
    from effscale.grid.confirm import compound_rows

    def row(role, alpha, beta, gamma):
        return {"role": role, "alpha": alpha, "beta": beta, "gamma": gamma, "id": f"{role}-{alpha}-{beta}-{gamma}"}

    rows = [row("chosen", 1.0, 1.0, 1.4),  # a grid point, but resolution-only in substance
            row("paper", 1.2, 1.1, 1.15), row("resolution-only", 1.0, 1.0, 1.4142),
            row("chosen, width-only", 1.0, 1.4142, 1.0)]
    assert [r["role"] for r in compound_rows(rows)] == ["paper"]
    assert [r["role"] for r in compound_rows([row("chosen", 1.0, 1.3, 1.1), rows[1]])] == ["chosen", "paper"]
