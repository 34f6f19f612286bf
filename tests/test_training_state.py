"""The first training step is traced once, not twice (effscale/net/training_state.py)."""

from __future__ import annotations

import numpy as np
import pytest


def _tiny_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _compile_as_the_grid_does(model):
    from effscale.grid import proxy
    from effscale.grid.config import preset

    proxy._compile(model, preset("smoke"), steps_per_epoch=2)


def _compile_as_transfer_does(model):
    from effscale.transfer.config import TransferConfig
    from effscale.transfer.strategies import compile_model, make_optimizer

    config = TransferConfig()
    compile_model(model, config, make_optimizer(config, "head", steps_per_epoch=2, phase_epochs=1), 10)


@pytest.mark.parametrize("compile_as", [_compile_as_the_grid_does, _compile_as_transfer_does])
def test_the_first_training_step_is_traced_once(compile_as):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the double trace is TensorFlow's tf.function")
    model = _tiny_model()
    compile_as(model)
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: traces.append(1) or train_step(data)  # runs once per trace

    rng = np.random.default_rng(0)
    x, y = rng.random((4, 8, 8, 3), dtype=np.float32), np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    for _ in range(3):
        logs = model.train_on_batch(x, y, return_dict=True)
    # Keras 3.15 alone traces twice here: it creates the metric variables inside the first trace
    assert len(traces) == 1
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["accuracy"] <= 1.0
