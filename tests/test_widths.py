"""Every table a command prints is readable at 80 and 120 columns: no cell cut to "…".

Tables are rendered through the real commands with the console narrowed as a terminal
would narrow it. `--format csv|json|markdown` keep every column whatever the width.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from effscale import console
from effscale.console import Column, fmt_pct

WIDTHS = [80, 120]
LONG_PATH = "/home/someone/datasets/" + "very-long-folder-name-" * 4 + "cifar10-jpeg.tar.gz"


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}cols")
def width(request, monkeypatch):
    monkeypatch.setattr(console, "out", Console(width=request.param, soft_wrap=False))
    return request.param


def assert_readable(text: str, width: int) -> None:
    assert text.strip()
    assert "…" not in text, text
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, too_wide


@pytest.mark.parametrize("args", [
    ["scale", "--all"],
    ["scale", "--all", "--family", "lite"],
    ["scale", "--variant", "b7"],
    ["scale", "--phi", "3"],
    ["scale", "--phi", "7.5", "--alpha", "1.25", "--budget", "2.5"],
    ["scale", "--phi", "2", "--family", "lite"],
], ids=" ".join)
def test_scale_tables_fit(run_cli, width, args):
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert_readable(out, width)


@pytest.fixture
def grid_run(run_cli, tmp_path):
    run_dir = tmp_path / "grid"
    code, _, err = run_cli("grid", "--preset", "smoke", "--dataset", "synthetic", "--fake-trials", "0",
                           "--run-dir", str(run_dir), "--format", "json")
    assert code == 0, err
    return run_dir


def test_grid_report_fits(run_cli, width, grid_run):
    code, out, err = run_cli("report", str(grid_run))
    assert code == 0, err
    assert_readable(out, width)
    assert "a1.20-b1.10-g1.15" in out  # the candidate ids themselves are never cut


@pytest.fixture
def transfer_run(tmp_path):
    from test_transfer_report import fake_run

    run = fake_run(tmp_path / "transfer")
    metrics = json.loads(run.metrics_path.read_text())
    # Long names are what real runs have: dataset paths, ImageNet class names.
    metrics["dataset"] = {"name": LONG_PATH}
    metrics["class_names"] = ["great white shark", "English springer spaniel", "garbage truck"]
    run.metrics_path.write_text(json.dumps(metrics))
    return run.path


def test_transfer_report_fits(run_cli, width, transfer_run):
    code, out, err = run_cli("report", str(transfer_run))
    assert code == 0, err
    assert_readable(out, width)
    for name in ("English springer spaniel", "val top-5", "top-1", "GMACs"):
        assert name in out


@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_other_formats_keep_every_column_at_80(run_cli, monkeypatch, fmt):
    monkeypatch.setattr(console, "out", Console(width=80, soft_wrap=False))
    code, out, _ = run_cli("scale", "--all", "--format", fmt)
    assert code == 0
    for key in ("phi_depth", "formula_params", "peak_act_bytes", "flops_vs_base"):
        assert key in out


def test_evaluate_tables_fit(width, capsys):
    from effscale.cli.evaluate import PER_CLASS_COLUMNS, SUMMARY_COLUMNS

    summary = {"model": "lite2 + /home/someone/weights/efficientnet-lite2-finetuned-final.pth",
               "dataset": LONG_PATH, "split": "val", "images": 500, "input_size": 260, "resize": "crop",
               "top1": 0.812, "top5": 0.95, "mean_class_top1": 0.80, "images_per_s": 41.5}
    per_class = [{"class": f"n0{i}123456", "name": "English springer spaniel", "model_index": 217, "images": 50,
                  "top1": 0.9, "top5": 1.0, "most_confused_with": "Brittany spaniel (12)"} for i in range(10)]
    console.emit([summary], SUMMARY_COLUMNS, "table", title="Evaluation")
    console.emit(per_class, PER_CLASS_COLUMNS, "table", title="Per class")
    out = capsys.readouterr().out
    assert_readable(out, width)
    assert "English springer spaniel" in out and "Brittany spaniel (12)" in out


def test_bench_table_fits(width, capsys):
    from effscale.bench.report import COLUMNS, TRAIN_COLUMN

    rows = [{"name": f"runs/20261125-101500-transfer-lite{i}-cifar10 (tflite int8)", "resolution": 224 + 16 * i,
             "macs": 4.0e8 * (i + 1), "acts": 6.7e6 * (i + 1), "p50_ms": 12.5 * (i + 1), "p90_ms": 14.0 * (i + 1),
             "images_per_s": 80.0 / (i + 1), "mem_mb": 512.0, "trace_s": 1.5, "train_step_ms": 240.0}
            for i in range(3)]
    console.emit(rows, [*COLUMNS, TRAIN_COLUMN], "table", title="effscale bench")
    out = capsys.readouterr().out
    assert_readable(out, width)
    assert "tflite int8" in out


def test_a_split_table_repeats_its_key_column(width, capsys):
    columns = [Column("name", "name", justify="left", repeat=True),
               *[Column(f"c{i}", f"column number {i}", fmt_pct) for i in range(12)]]
    rows = [{"name": f"row-{r}", **{f"c{i}": i / 100 for i in range(12)}} for r in range(3)]
    console.emit(rows, columns, "table", title="wide")
    out = capsys.readouterr().out
    assert_readable(out, width)
    parts = out.count("┃ name")
    assert parts >= 2 and out.count("row-2") == parts
    assert all(f"column number {i}" in out for i in range(12))
