"""Transfer reports rebuilt from a run directory, without Keras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from effscale.transfer.config import TransferConfig
from effscale.runs import RunDir
from effscale.transfer.report import confused_pairs, per_class_records, rebuild

# A 3-class confusion matrix (rows: true class, columns: predicted) and what it implies.
CONFUSION = [[8, 2, 0],
             [5, 4, 1],
             [0, 0, 10]]
NAMES = ["cat", "dog", "fox"]
PER_CLASS = {"cat": 0.8, "dog": 0.4, "fox": 1.0}
TOP_PAIRS = [("dog", "cat", 5, 0.5), ("cat", "dog", 2, 0.2), ("dog", "fox", 1, 0.1)]


def fake_run(root: Path, with_metrics: bool = True) -> RunDir:
    run = RunDir(root)
    root.mkdir(parents=True)
    run.write_manifest("transfer", TransferConfig(weights="none", epochs=3).to_dict(), seed=0, backend="tensorflow")
    history = [{"epoch": e, "phase": "all", "lr": 1e-3, "loss": 2.0 / e, "accuracy": 0.3 * e, "top5": 0.9,
                "val_loss": 2.1 / e, "val_accuracy": 0.25 * e, "val_top5": 0.9, "train_time_s": 1.0,
                "epoch_time_s": 1.2, "images_per_s": 100.0 + e} for e in (1, 2)]
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "state.json").write_text(json.dumps(
        {"epoch": 2, "history": history, "best_epoch": 2, "wall_time_s": 5.0, "status": "running"}))
    if with_metrics:
        (root / "metrics.json").write_text(json.dumps({
            "status": "complete", "epochs_done": 2, "best_epoch": 2, "variant": "b0", "image_size": 32,
            "dataset": {"name": "pets"}, "class_names": NAMES, "top1": 22 / 30, "top5": 1.0, "loss": 0.7,
            "confusion": CONFUSION, "params": 123, "macs": 456, "train_images_per_s": 102.0, "wall_time_s": 5.0}))
    return run


def test_per_class_and_confused_pairs():
    metrics = {"confusion": CONFUSION, "class_names": NAMES}
    assert {r["class"]: r["accuracy"] for r in per_class_records(metrics)} == PER_CLASS
    pairs = confused_pairs(metrics)
    assert [(p["true"], p["predicted"], p["count"], p["share_of_true"]) for p in pairs] == TOP_PAIRS


def test_rebuild_writes_every_report_file(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    rebuild(run, "json")
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"][0]["top1"] == pytest.approx(22 / 30)
    assert printed["summary"][0]["epochs"] == "2/3"
    for name in ("summary", "history", "per_class", "confused_pairs"):
        for suffix in ("csv", "md", "json"):
            assert (run.path / "reports" / f"{name}.{suffix}").stat().st_size > 0
    assert (run.path / "plots" / "transfer_curves.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((run.path / "reports" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]


def test_interrupted_run_still_reports(tmp_path, capsys):
    run = fake_run(tmp_path / "run", with_metrics=False)
    rebuild(run, "csv")
    out = capsys.readouterr().out
    assert "interrupted" in out and "2/3" in out
    assert not (run.path / "reports" / "per_class.csv").exists()


def test_report_command_never_imports_keras(tmp_path):
    run = fake_run(tmp_path / "run")
    code = (
        "import sys\n"
        "from effscale.cli import cli\n"
        f"rc = cli.main(['report', {str(run.path)!r}, '--format', 'markdown'], standalone_mode=False)\n"
        "heavy = [m for m in ('keras', 'tensorflow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc or 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "Most confused pairs" in result.stdout and "| dog" in result.stdout


def test_the_summary_shows_the_epochs_the_run_planned_not_the_flag():
    from effscale.transfer.report import summary_record

    probe = summary_record({"config": {"strategy": "linear-probe", "epochs": 10}},
                           {"epochs_done": 1, "epochs_planned": 1, "status": "complete"}, {})
    assert probe["epochs"] == "1/1"
    interrupted = summary_record({"config": {"strategy": "full", "epochs": 10}}, None, {"epoch": 3})
    assert interrupted["epochs"] == "3/10"
