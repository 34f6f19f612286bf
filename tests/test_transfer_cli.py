"""effscale transfer: flags, recipes and bad input (one line, non-zero exit, nothing destroyed).

These fail before Keras is imported, so they are fast.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

# (args, exit code, text the one-line error must contain)
BAD_INPUT = [
    (["--variant", "b9"], 1, "unknown variant 'b9'"),
    (["--variant", "missing.json"], 1, "variant file missing.json does not exist"),
    (["--dataset", "no/such/dir"], 1, "dataset no/such/dir does not exist"),
    (["--batch-size", "0"], 2, "0 is not in the range x>=1"),
    (["--image-size", "16"], 1, "image size 16 is below 32"),
    (["--weights", "nope.weights.h5"], 1, "weights file nope.weights.h5 does not exist"),
    (["--augment", "flip,blur"], 2, "unknown augmentation blur"),
    (["--strategy", "all"], 2, "'all' is not one of"),
]


def one_error_line(err: str) -> bool:
    """Exactly one line of stderr is the error, and it is the last one (progress lines may precede it)."""
    lines = err.rstrip("\n").split("\n")
    return lines[-1].startswith("Error: ") and sum(line.startswith("Error") for line in lines) == 1 \
        and "Traceback" not in err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args, code, message", BAD_INPUT)
def test_bad_input_one_line_error_and_no_run_dir(run_cli, in_tmp, args, code, message):
    exit_code, out, err = run_cli("transfer", "--preset", "smoke", *args)
    assert exit_code == code
    assert message in err
    assert one_error_line(err)
    assert not (in_tmp / "runs").exists()


def _folder(root, corrupt=False):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (9, 9, 9)).save(root / split / cls / "0.png")
    if corrupt:
        (root / "train" / "a" / "1.jpg").write_bytes(b"garbage")


@pytest.mark.parametrize("kind, message", [("empty", "has no train/ or val/ folder"),
                                           ("corrupt", "cannot decode image")])
def test_bad_dataset_folders(run_cli, in_tmp, kind, message):
    root = in_tmp / "ds"
    root.mkdir()
    if kind == "corrupt":
        _folder(root, corrupt=True)
    code, _, err = run_cli("transfer", "--preset", "smoke", "--dataset", str(root), "--cache-dir",
                           str(in_tmp / "cache"))
    assert code == 1 and message in err and one_error_line(err)
    assert not (in_tmp / "runs").exists()


def test_existing_run_dir_is_not_touched(run_cli, in_tmp):
    previous = in_tmp / "old"
    previous.mkdir()
    (previous / "notes.txt").write_text("keep me")
    code, _, err = run_cli("transfer", "--preset", "smoke", "--run-dir", str(previous))
    assert code == 1 and "already exists" in err
    assert (previous / "notes.txt").read_text() == "keep me"


def test_resume_needs_a_transfer_run(run_cli, in_tmp):
    code, _, err = run_cli("transfer", "--resume", str(in_tmp))
    assert code == 1 and "not an effscale run directory" in err


def test_print_config_records_the_seed_recipe(run_cli, in_tmp):
    code, out, _ = run_cli("transfer", "--recipe", "seed", "--print-config")
    assert code == 0
    config = json.loads(out)
    assert (config["optimizer"], config["learning_rate"], config["lr_decay"]) == ("rmsprop", 0.0064, 1e-6)
    assert (config["batch_size"], config["epochs"], config["pooling"], config["image_size"]) == (128, 20, "max", 224)
    assert config["augment"] == ["normalize", "flip", "rotate", "zoom"] and config["last_layers"] == 4


def test_flags_override_recipe(run_cli, in_tmp):
    code, out, _ = run_cli("transfer", "--recipe", "seed", "--lr", "0.001", "--augment", "none", "--print-config")
    config = json.loads(out)
    assert config["learning_rate"] == 0.001 and config["augment"] == [] and config["optimizer"] == "rmsprop"
