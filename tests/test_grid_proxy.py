"""Slow: the Keras proxy trainer, BatchNorm recalibration, and the Ray executor."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

from effscale.grid.config import preset
from effscale.grid.search import Candidate, SearchSpace, TrialSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    from effscale.data.datasets import load_dataset

    # dropout off: with it, equal results still hold, but a mismatch would hide in the noise
    config = preset("smoke").replace(dataset="synthetic", limit_train=128, limit_val=64, batch_size=32, dropout=0.0)
    return config, load_dataset("synthetic", limit_train=128, limit_val=64, image_size=32)


PAPER = Candidate(1.2, 1.1, 1.15)


def test_proxy_trial_trains_scores_times_itself_and_reuses_its_graph_for_a_repeat(tiny):
    from effscale.grid import proxy
    from effscale.grid.trials import TIMING_PHASES

    config, dataset = tiny
    trainer = proxy.ProxyTrainer(config, dataset)
    result = trainer(TrialSpec(PAPER, "paper", 0, 0, 1))
    metrics = result["metrics"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["val_count"] == 64
    assert result["images_seen"] == metrics["images_trained"] == 128  # 4 whole batches of 32
    assert metrics["bn_recalibration_batches"] == config.bn_recalibration_batches
    assert set(result["timing"]) == set(TIMING_PHASES) and min(result["timing"].values()) >= 0
    # the logged score is the saved predictions' score
    predictions, labels = result["predictions"], result["val_labels"]
    assert predictions.dtype == np.int16 and predictions.shape == (64,)
    np.testing.assert_array_equal(labels, dataset.y_val)
    assert metrics["val_accuracy"] == pytest.approx(float(np.mean(predictions == labels)))
    train_function = proxy._Compiled.model.train_function

    # another seed of the same candidate: the compiled model again, no second trace
    repeat = trainer(TrialSpec(PAPER, "paper", 1, 0, 1))
    assert proxy._Compiled.model.train_function is train_function
    assert repeat["timing"]["first_step"] <= 0.25 * result["timing"]["first_step"]
    assert repeat["metrics"]["val_loss"] != metrics["val_loss"]  # its own initial weights

    # and the first seed again on the reused model: exactly the first result
    again = trainer(TrialSpec(PAPER, "paper", 0, 0, 1))
    assert again["metrics"]["val_loss"] == metrics["val_loss"]
    np.testing.assert_array_equal(again["predictions"], predictions)


def test_a_continued_promotion_equals_one_longer_run(tiny, tmp_path):
    from effscale.grid import checkpoints
    from effscale.grid.proxy import ProxyTrainer

    config, dataset = tiny  # 2 rungs: rung 0 trains 1 epoch, rung 1 three
    trainer = ProxyTrainer(config, dataset).for_run(tmp_path)
    trainer(TrialSpec(PAPER, "paper", 0, 0, 1))
    saved = checkpoints.load_state(checkpoints.checkpoint_path(tmp_path, "a1.20-b1.10-g1.15-s0-r0"))
    assert saved.epochs_done == 1 and len(saved.optimizer) > 1
    continued = trainer(TrialSpec(PAPER, "paper", 0, 1, 3))
    assert continued["metrics"]["continued_from"] == "a1.20-b1.10-g1.15-s0-r0"
    assert continued["images_seen"] == 2 * 128 and continued["metrics"]["images_trained"] == 3 * 128
    assert [row["epoch"] for row in continued["history"]] == [2, 3]
    # the same trial with no run dir to continue from trains all 3 epochs itself
    scratch = ProxyTrainer(config, dataset)(TrialSpec(PAPER, "paper", 0, 1, 3))
    assert scratch["metrics"]["continued_from"] is None and scratch["images_seen"] == 3 * 128
    assert continued["metrics"]["val_loss"] == pytest.approx(scratch["metrics"]["val_loss"], rel=1e-4, abs=1e-5)
    assert np.mean(continued["predictions"] == scratch["predictions"]) >= 0.98
    # the last rung saves nothing: no later rung would continue from it
    assert not checkpoints.checkpoint_path(tmp_path, "a1.20-b1.10-g1.15-s0-r1").exists()


@pytest.mark.parametrize("chunk", [None, 40], ids=["one-call", "unequal-chunks"])
def test_bn_recalibration_sets_the_exact_average_of_batch_statistics(tiny, monkeypatch, chunk):
    import keras

    from effscale.grid import proxy
    from effscale.net import batchnorm

    config, dataset = tiny
    spec = TrialSpec(PAPER, "paper", 0, 0, 1)
    model = proxy.build_proxy_model(spec, config, dataset.image_shape, dataset.num_classes)
    backbone = model.get_layer("proxy")
    stem_bn = backbone.get_layer("stem_bn")
    assert stem_bn.momentum == config.bn_momentum  # lowered for proxy training
    if chunk is not None:  # 75 images in calls of at most 40: 38 and 37, which must be weighted by size
        bound = chunk * batchnorm.largest_batchnorm_input(model)
        monkeypatch.setattr(batchnorm, "RECALIBRATION_CHUNK_ELEMENTS", bound)
    used = batchnorm.recalibrate_batchnorm(model, dataset.x_train, batches=3, batch_size=25)
    assert used == 3 and stem_bn.momentum == config.bn_momentum  # restored
    # independently: the stem conv's output over the same 75 images, per channel
    images = dataset.x_train[np.random.default_rng(0).permutation(len(dataset.x_train))[:75]]
    resize = model.get_layer("resize") if any(l.name == "resize" for l in model.layers) else None
    probe = keras.Model(backbone.input, backbone.get_layer("stem_conv").output)
    x = images.astype("float32")
    if resize is not None:
        x = resize(x)
    conv = keras.ops.convert_to_numpy(probe(x))
    expected = conv.reshape(-1, conv.shape[-1]).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem_bn.moving_mean), expected, rtol=1e-4, atol=1e-5)


def test_ray_executor_gives_the_same_trial_set(tmp_path):
    require("ray")
    from effscale.grid.executors import LocalExecutor, RayExecutor, run_search
    from effscale.runs import RunDir
    from effscale.grid.trials import TrialStore, fake_trial

    space = SearchSpace.from_config(preset("smoke").replace(seeds=2))
    local = TrialStore(RunDir(tmp_path / "local"))
    run_search(space, local, fake_trial, LocalExecutor())
    import ray

    try:
        remote = TrialStore(RunDir(tmp_path / "ray"))
        run_search(space, remote, fake_trial, RayExecutor(num_cpus=1, local_cpus=2))
    finally:
        ray.shutdown()

    def summary(store):
        return {tid: (r["status"], round(r["metrics"]["val_accuracy"], 6)) for tid, r in store.latest().items()}

    assert summary(remote) == summary(local)
    assert len(summary(local)) == space.planned_trials()


class _Environment:
    """A run_trial that reports the malloc settings of the process it ran in."""

    def __call__(self, spec):
        import os

        from effscale.grid.workers import MALLOC_SETTINGS

        return {"metrics": {"val_accuracy": 0.5}, "malloc": {k: os.environ.get(k) for k in MALLOC_SETTINGS}}


def test_ray_tasks_run_with_the_local_workers_malloc_settings(monkeypatch):
    require("ray")
    import sys

    import ray

    from effscale.grid.executors import RayExecutor

    from effscale.grid.workers import MALLOC_SETTINGS

    for name in MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    spec = TrialSpec(PAPER, "paper", 0, 0, 1)
    results = []
    try:
        RayExecutor(num_cpus=1, local_cpus=2).run(
            [spec], _Environment(), lambda s: None, lambda s, result, error, seconds: results.append((result, error)))
    finally:
        ray.shutdown()
    (result, error), = results
    assert error is None and result["malloc"] == MALLOC_SETTINGS  # one arena, no per-step mmap
