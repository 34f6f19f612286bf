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

    config = preset("smoke").replace(dataset="synthetic", limit_train=128, limit_val=64, batch_size=32)
    return config, load_dataset("synthetic", limit_train=128, limit_val=64, image_size=32)


def test_proxy_trial_trains_scores_and_times_itself(tiny):
    import keras

    from effscale.grid.proxy import ProxyTrainer

    config, dataset = tiny
    trainer = ProxyTrainer(config, dataset)
    result = trainer(TrialSpec(Candidate(1.2, 1.1, 1.15), "paper", 0, 0, 1))
    metrics = result["metrics"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["val_count"] == 64
    assert result["images_seen"] == 128
    assert metrics["bn_recalibration_batches"] == config.bn_recalibration_batches
    for key in ("build", "compile", "first_step", "train", "recalibrate", "evaluate", "teardown", "overhead"):
        assert result["timings"][key] >= 0
    assert result["timings"]["train"] >= result["timings"]["first_step"]
    # clear_session ran: a fresh model gets the default names again
    assert keras.layers.Dense(1).name == "dense"
    # the score does not depend on what ran before in the process (resume, Ray workers)
    trainer(TrialSpec(Candidate(1.0, 1.0, 1.4142), "resolution-only", 1, 0, 1))
    again = trainer(TrialSpec(Candidate(1.2, 1.1, 1.15), "paper", 0, 0, 1))
    assert again["metrics"]["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert again["metrics"]["val_accuracy"] == metrics["val_accuracy"]


def test_bn_recalibration_sets_the_exact_average_of_batch_statistics(tiny):
    import keras

    from effscale.grid.proxy import build_proxy_model, recalibrate_batchnorm

    config, dataset = tiny
    spec = TrialSpec(Candidate(1.0, 1.0, 1.0), "grid", 0, 0, 1)
    model = build_proxy_model(spec, config, dataset.image_shape, dataset.num_classes)
    backbone = model.get_layer("proxy")
    stem_bn = backbone.get_layer("stem_bn")
    assert stem_bn.momentum == config.bn_momentum  # lowered for proxy training
    images = dataset.x_train[:96]
    used = recalibrate_batchnorm(model, images, batches=3, batch_size=32)
    assert used == 3 and stem_bn.momentum == config.bn_momentum  # restored
    # independently: the stem conv's output over the same 96 images, per channel
    resize = model.get_layer("resize") if any(l.name == "resize" for l in model.layers) else None
    probe = keras.Model(backbone.input, backbone.get_layer("stem_conv").output)
    x = images.astype("float32")
    if resize is not None:
        x = resize(x)
    conv = keras.ops.convert_to_numpy(probe(x))
    expected = conv.reshape(-1, conv.shape[-1]).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem_bn.moving_mean), expected, rtol=1e-4, atol=1e-5)
    keras.backend.clear_session()


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
