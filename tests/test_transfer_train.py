"""Training end to end on a tiny variant (seconds per run): run dir, resume after kill -9,
strategies, guards and weights. All @slow: they build Keras models and train."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from effscale.net.arch import NetworkSpec, StageSpec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["manifest.json", "history.csv", "metrics.json", "effscale.log", "checkpoints/last.keras",
             "checkpoints/best.keras", "checkpoints/state.json", "reports/summary.csv", "reports/summary.md",
             "reports/summary.json", "reports/history.csv", "reports/per_class.csv", "reports/confused_pairs.csv",
             "plots/transfer_curves.png"]
METRIC_KEYS = ["top1", "top5", "loss", "confusion", "train_images_per_s", "wall_time_s", "params", "macs"]


def tiny_network(width: int = 8, repeats: int = 2) -> NetworkSpec:
    return NetworkSpec(
        stem_filters=width,
        stages=(StageSpec(3, 1, width, width, 1, 1), StageSpec(3, repeats, width, 2 * width, 2, 2)),
        head_filters=4 * width, resolution=32, dropout_rate=0.0, drop_connect_rate=0.0,
    )


def write_variant(path: Path, width: int = 8) -> Path:
    path.write_text(json.dumps({"schema": "effscale/variant@1", "name": f"tiny{width}",
                                "network": tiny_network(width).to_dict()}))
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_variant(tmp_path / "tiny.json")


def base_args(tiny: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["transfer", "--preset", "smoke", "--variant", str(tiny), "--run-dir", str(run_dir), "--no-progress",
            "--limit-train", "192", "--limit-val", "64", "--cache-dir", str(run_dir.parent / "cache"),
            *extra]


def test_run_writes_the_whole_run_dir(run_cli, tiny, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(*base_args(tiny, run_dir, "--epochs", "2", "--format", "json"))
    assert code == 0, err
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["command"] == "transfer" and manifest["backend"] == "tensorflow"
    assert manifest["config"]["epochs"] == 2 and manifest["config"]["dataset"] == "synthetic"
    assert "keras" in manifest["versions"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(metrics[k] is not None for k in METRIC_KEYS)
    assert np.array(metrics["confusion"]).sum() == 64 and metrics["epochs_done"] == 2
    assert json.loads(out)["summary"][0]["status"] == "complete"
    history = (run_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history] == ["epoch", "1", "2"]
    # The report command rebuilds the same files from the run dir.
    (run_dir / "reports" / "summary.csv").unlink()
    code, _, _ = run_cli("report", str(run_dir), "--format", "csv")
    assert code == 0 and (run_dir / "reports" / "summary.csv").is_file()


def _wait_for_epoch(run_dir: Path, epoch: int, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    state = run_dir / "checkpoints" / "state.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        try:
            if json.loads(state.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError("no epoch committed in time")


def test_kill_9_then_resume_keeps_every_epoch_once(run_cli, tiny, tmp_path):
    run_dir = tmp_path / "run"
    # Augmentation stays on (flip, crop): its draws are a function of (seed, epoch, batch).
    # Dropout is on: the checkpoint keeps where its random stream stands.
    extra = ("--epochs", "4", "--limit-train", "640", "--schedule", "cosine", "--dropout", "0.3",
             "--augment", "flip,crop")
    args = base_args(tiny, run_dir, *extra)
    proc = subprocess.Popen([sys.executable, "-m", "effscale", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_epoch(run_dir, 1, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = json.loads((run_dir / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= killed_at < 4
    code, _, err = run_cli("transfer", "--resume", str(run_dir), "--no-progress")
    assert code == 0, err
    assert f"resuming {run_dir} after epoch {killed_at}/4" in err
    lines = (run_dir / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # The optimizer state came back: the cosine schedule continues where it stopped.
    lr0, steps = 1e-3, math.ceil(640 / 32)
    for r in rows:
        step = (int(r["epoch"]) - 1) * steps
        assert float(r["lr"]) == pytest.approx(lr0 * 0.5 * (1 + math.cos(math.pi * step / (4 * steps))), rel=1e-4)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_done"] == 4
    # Resuming a finished run changes nothing.
    code, _, err = run_cli("transfer", "--resume", str(run_dir), "--no-progress")
    assert code == 0 and (run_dir / "history.csv").read_text().splitlines() == lines
    # The killed and resumed run ends where an uninterrupted one does, to the bit.
    whole = tmp_path / "whole"
    code, _, err = run_cli(*base_args(tiny, whole, *extra))
    assert code == 0, err
    assert _learning_columns(whole) == _learning_columns(run_dir)
    for a, b in zip(_last_weights(whole), _last_weights(run_dir)):
        assert np.array_equal(a, b)


def _learning_columns(run_dir: Path) -> list[dict]:
    """The history without its timings."""
    lines = (run_dir / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]


def _last_weights(run_dir: Path) -> list:
    import keras

    return keras.models.load_model(run_dir / "checkpoints" / "last.keras", compile=False).get_weights()


def test_commit_interrupted_after_state_is_finished_on_resume(tmp_path):
    from effscale.runs import RunDir
    from effscale.transfer.checkpoints import Checkpointer

    run = RunDir(tmp_path)
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    row = {"epoch": 1, "phase": "all", "loss": 1.0}
    (ckpt / "state.json").write_text(json.dumps({"epoch": 2, "history": [row, {**row, "epoch": 2}]}))
    (ckpt / "last.keras").write_text("epoch 1")
    (ckpt / ".epoch-2.keras").write_text("epoch 2")  # killed between the commit and the rename
    (ckpt / ".epoch-3.keras").write_text("half")  # killed while saving epoch 3
    restored = Checkpointer.restore(run)
    assert restored.epochs_done == 2
    assert (ckpt / "last.keras").read_text() == "epoch 2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.keras", "state.json"]
    assert (tmp_path / "history.csv").read_text().splitlines()[1:] == ["1,all,,1.0,,,,,,,,", "2,all,,1.0,,,,,,,,"]


def test_weights_files_load_and_other_architectures_are_refused(tmp_path):
    import keras

    from effscale.errors import WeightsError
    from effscale.net.keras_model import build_model
    from effscale.weights.resolve import load_backbone_weights

    source = build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32, name="efficientnet")
    source.save_weights(tmp_path / "tiny8.weights.h5")
    keras.Model(source.input, source.output).save(tmp_path / "tiny8.keras")
    other = build_model(tiny_network(16), include_top=False, pooling="avg", image_size=32, name="efficientnet")
    other.save_weights(tmp_path / "tiny16.weights.h5")
    other.save(tmp_path / "tiny16.keras")
    for name in ("tiny8.weights.h5", "tiny8.keras"):
        target = build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32, name="efficientnet")
        load_backbone_weights(target, str(tmp_path / name), "tiny8", tiny_network(8))
        for mine, theirs in zip(target.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    # Same widths, one block more (like B1 against B0): every B0 layer exists there, but it is
    # still another network.
    deeper = build_model(tiny_network(8, repeats=3), include_top=False, pooling="avg", image_size=32)
    deeper.save(tmp_path / "deeper.keras")
    deeper.save_weights(tmp_path / "deeper.weights.h5")
    for name in ("tiny16.weights.h5", "tiny16.keras", "deeper.keras", "deeper.weights.h5"):
        target = build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32, name="efficientnet")
        with pytest.raises(WeightsError, match="another|deeper"):
            load_backbone_weights(target, str(tmp_path / name), "tiny8", tiny_network(8))


def test_weights_of_another_architecture_via_cli(run_cli, tiny, tmp_path):
    from effscale.net.keras_model import build_model

    build_model(tiny_network(16), include_top=False, pooling="avg", image_size=32).save_weights(
        tmp_path / "wide.weights.h5")
    code, _, err = run_cli(*base_args(tiny, tmp_path / "run", "--weights", str(tmp_path / "wide.weights.h5")))
    assert code == 1 and "does not fit tiny8" in err.splitlines()[-1]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing left behind


def test_linear_probe_trains_only_the_head_on_cached_features(run_cli, tiny, tmp_path):
    from effscale.net.keras_model import build_model

    pretrained = build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32)
    pretrained.save_weights(tmp_path / "pre.weights.h5")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*base_args(tiny, run_dir, "--strategy", "linear-probe", "--weights",
                                      str(tmp_path / "pre.weights.h5"), "--epochs", "3", "--lr", "0.01"))
    assert code == 0, err
    assert "train activations (32 per image and view" in err and "computed once and cached" in err
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    feats = np.load(Path(state["extra"]["activations_train"]) / "activations.npy")
    assert feats.shape == (2, 192, 32)  # image and flip
    # Inside the --cache-dir named, with the decoded dataset: nothing is written beside it.
    assert Path(state["extra"]["activations_train"]).parent == tmp_path / "cache" / "activations"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "pre.weights.h5", "run", "tiny.json"]
    # The probe is one L-BFGS fit (its L2 tuned on held-out training images), not epochs.
    assert state["epoch"] == 1 and state["extra"]["probe"]["l2"] > 0
    # A second run of the same backbone on the same images (another head) reuses them.
    code, _, err = run_cli(*base_args(tiny, tmp_path / "run2", "--strategy", "linear-probe", "--weights",
                                      str(tmp_path / "pre.weights.h5"), "--dropout", "0.3"))
    assert code == 0 and "train activations (32 per image and view" in err and "reused from the cache" in err
    import keras

    trained = keras.models.load_model(run_dir / "checkpoints" / "last.keras").get_layer("efficientnet")
    for mine, theirs in zip(trained.get_weights(), pretrained.get_weights()):
        np.testing.assert_array_equal(mine, theirs)  # backbone (BN statistics included) untouched


def test_top_blocks_unfreezes_whole_blocks_and_keeps_bn_frozen():
    from effscale.transfer.config import TransferConfig
    from effscale.schemas import resolve_network
    from effscale.transfer.model import build_transfer_model
    from effscale.transfer.strategies import configure_phase

    _, spec = resolve_network("b0")
    config = TransferConfig(strategy="top-blocks", blocks=2)
    model, backbone = build_transfer_model(config, spec, (32, 32, 3), 10, 32)
    configure_phase(model, backbone, config, "top-blocks")
    trainable = {layer.name.split("_", 1)[0] for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == {"block6d", "block7a", "top"}
    assert not any(layer.trainable for layer in backbone.layers if "bn" in layer.name)
    assert model.get_layer("predictions").trainable


def test_nan_loss_stops_cleanly_with_report(run_cli, tiny, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*base_args(tiny, run_dir, "--optimizer", "sgd", "--lr", "1e30", "--epochs", "3"))
    assert code == 1
    assert "loss became NaN at epoch 1" in err.splitlines()[-1]
    summary = json.loads((run_dir / "reports" / "summary.json").read_text())[0]
    assert summary["status"] == "nan"


def test_pretrained_weights_with_0_1_inputs_are_refused(run_cli, tiny, tmp_path):
    from effscale.net.keras_model import build_model

    build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32).save_weights(
        tmp_path / "pre.weights.h5")
    code, _, err = run_cli(*base_args(tiny, tmp_path / "run", "--weights", str(tmp_path / "pre.weights.h5"),
                                      "--augment", "normalize"))
    assert code == 1 and "expect 0-255" in err.splitlines()[-1]


def test_seed_recipe_runs_and_records_its_settings(run_cli, tiny, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*base_args(tiny, run_dir, "--recipe", "seed", "--epochs", "1"))
    assert code == 0, err
    config = json.loads((run_dir / "manifest.json").read_text())["config"]
    assert (config["recipe"], config["optimizer"], config["learning_rate"], config["lr_decay"]) == \
        ("seed", "rmsprop", 0.0064, 1e-6)
    assert (config["pooling"], config["strategy"], config["last_layers"]) == ("max", "last-layers", 4)
    assert config["augment"] == ["normalize", "flip", "rotate", "zoom"]


def test_runs_under_jax_with_the_numpy_pipeline(tiny, tmp_path):
    """Model code is backend-agnostic; without tf.data the PyDataset fallback feeds it."""
    require("jax", load=False)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "effscale", *base_args(tiny, run_dir, "--epochs", "1")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "manifest.json").read_text())["backend"] == "jax"
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_done"] == 1


def test_distribute_runs_under_mirrored_strategy(run_cli, tiny, tmp_path):
    """--distribute builds and trains inside a MirroredStrategy (one CPU replica here)."""
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*base_args(tiny, run_dir, "--epochs", "1", "--distribute"))
    assert code == 0, err
    assert "data parallel: MirroredStrategy over 1 replica(s)" in err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"


def test_smoke_preset_learns(run_cli, tmp_path):
    """`--preset smoke` trains B0 from scratch for a few dozen steps: with BatchNorm statistics
    recalibrated before validation it must score well above chance (10%) and predict several
    classes; with stale statistics it scored 10.2%, every image as one class."""
    run_dir = tmp_path / "run"
    code, _, err = run_cli("transfer", "--preset", "smoke", "--run-dir", str(run_dir), "--no-progress",
                           "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    confusion = np.array(metrics["confusion"])
    assert metrics["top1"] >= 0.3, metrics["top1"]
    assert (confusion.sum(axis=0) > 0).sum() >= 4  # predictions spread over several classes


@pytest.mark.parametrize("probe_features", ["sqrt", "raw"])
def test_the_saved_probe_model_reads_the_features_the_probe_was_fitted_on(tmp_path, probe_features):
    """The L-BFGS probe fits numpy features; the model's graph must transform them the same
    way, and a saved model must load and predict without effscale's code."""
    import keras

    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import HEAD_LAYERS, build_transfer_model
    from effscale.transfer.probe import fit_probe, signed_sqrt

    config = TransferConfig(strategy="linear-probe", probe_features=probe_features, weights="none", dropout=0.0)
    keras.utils.set_random_seed(0)
    model, backbone = build_transfer_model(config, tiny_network(8), (32, 32, 3), 3, 32)
    images = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3)).astype(np.float32)
    pooled = backbone.predict(images, verbose=0)
    assert pooled.min() < 0  # swish: negative features occur, so the sign matters
    labels = np.arange(48) % 3
    features = signed_sqrt(pooled) if probe_features == "sqrt" else pooled
    probe = fit_probe(features, labels, 3, l2_grid=(1e-2,))
    model.get_layer(HEAD_LAYERS[1]).set_weights([probe.kernel, probe.bias])
    expected = probe.predict_proba(features)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    # The other transform gives other probabilities: the test can tell them apart.
    other = pooled if probe_features == "sqrt" else signed_sqrt(pooled)
    assert np.abs(probe.predict_proba(other) - expected).max() > 1e-3
    model.save(tmp_path / "probe.keras")
    code = (f"import keras, numpy as np; m = keras.models.load_model({str(tmp_path / 'probe.keras')!r}); "
            f"np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))")
    np.save(tmp_path / "x.npy", images)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-5)
