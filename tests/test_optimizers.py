"""SharedScalarsAdam and FlatStateAdam update exactly as Keras's Adam does, with a smaller traced step
(effscale/net/optimizers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from effscale.net.training_state import create_training_variables


def _model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _train(optimizer, steps: int = 5):
    """Weights and optimizer variables after ``steps`` training steps from the same start and data."""
    model = _model(seed=3)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    create_training_variables(model)  # so that TensorFlow traces the first step once, not twice
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
        model.train_on_batch(x, y)
    return model, [np.asarray(v) for v in model.weights], [np.asarray(v) for v in optimizer.variables]


def _schedule():
    import keras

    # A decaying rate: the shared learning rate must be the step's own, not the first step's.
    return keras.optimizers.schedules.CosineDecay(0.05, decay_steps=5, alpha=0.01)


def test_updates_equal_keras_adam_to_the_bit():
    import keras

    from effscale.net.optimizers import shared_scalars_adam

    _, keras_weights, keras_slots = _train(keras.optimizers.Adam(_schedule()))
    _, ours_weights, ours_slots = _train(shared_scalars_adam(_schedule()))
    start = [np.asarray(v) for v in _model(seed=3).weights]
    assert any(not np.array_equal(a, b) for a, b in zip(start, keras_weights))  # training moved them
    assert len(ours_weights) == len(keras_weights) and len(ours_slots) == len(keras_slots)
    for ours, theirs in zip(ours_weights + ours_slots, keras_weights + keras_slots):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_one_training_step_computes_the_step_scalars_once(monkeypatch):
    import keras
    import keras.src.ops

    from effscale.net.optimizers import shared_scalars_adam

    if keras.backend.backend() == "torch":
        pytest.skip("under torch shared_scalars_adam is Keras's TorchAdam, which has no per-variable scalars")
    calls = []
    power = keras.src.ops.power
    counting = lambda *args, **kwargs: calls.append(1) or power(*args, **kwargs)  # noqa: E731
    for module in (keras.src.ops, keras.ops):  # Keras's Adam calls the first, ours the second
        monkeypatch.setattr(module, "power", counting)

    def powers(optimizer) -> int:
        calls.clear()
        _train(optimizer, steps=1)  # one trace (TensorFlow, JAX) or one eager step (torch)
        return len(calls)

    variables = len(_model(seed=3).trainable_variables)
    assert powers(keras.optimizers.Adam(_schedule())) == 2 * variables  # beta_1 ** t and beta_2 ** t, per variable
    assert powers(shared_scalars_adam(_schedule())) == 2


def test_amsgrad_is_left_to_keras():
    import keras

    from effscale.net.optimizers import _adam_class

    if keras.backend.backend() == "torch":
        pytest.skip("under torch effscale uses Keras's TorchAdam")

    optimizer = _adam_class()(0.01, amsgrad=True)
    _, ours, _ = _train(optimizer)
    _, theirs, _ = _train(keras.optimizers.Adam(0.01, amsgrad=True))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_flat_state_updates_equal_keras_adam_to_the_bit():
    import keras

    from effscale.net.optimizers import flat_state_adam

    keras_adam = keras.optimizers.Adam(_schedule())
    _, keras_weights, _ = _train(keras_adam)
    flat = flat_state_adam(_schedule())
    _, ours_weights, _ = _train(flat)
    for ours, theirs in zip(ours_weights, keras_weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    if keras.backend.backend() != "tensorflow":
        assert not hasattr(flat, "_flat_m")  # SharedScalarsAdam (JAX) or TorchAdam: per-weight state
        return
    # the flat vectors hold Keras's per-weight moments, weight after weight
    for flat_slot, slots in ((flat._flat_m, keras_adam._momentums), (flat._flat_v, keras_adam._velocities)):
        np.testing.assert_array_equal(np.asarray(flat_slot), np.concatenate([np.asarray(v).ravel() for v in slots]))
    assert len(flat.variables) == 3  # the step counter and the two vectors
    assert int(np.asarray(flat.iterations)) == int(np.asarray(keras_adam.iterations)) == 5


def test_flat_state_refuses_a_step_that_leaves_a_weight_out():
    import keras

    from effscale.net.optimizers import flat_state_adam

    if keras.backend.backend() != "tensorflow":
        pytest.skip("flat state is used under TensorFlow only")
    variables = [keras.Variable(np.ones((2, 2), np.float32)), keras.Variable(np.ones(3, np.float32))]
    optimizer = flat_state_adam(0.01)
    optimizer.build(variables)
    optimizer.apply([np.ones((2, 2), np.float32), np.ones(3, np.float32)], variables)
    assert not np.array_equal(np.asarray(variables[1]), np.ones(3))
    # Keras warns about the missing gradient and drops it; the flat update then refuses the step
    with pytest.raises(ValueError, match="every weight"), pytest.warns(UserWarning, match="Gradients do not exist"):
        optimizer.apply([np.ones((2, 2), np.float32), None], variables)


def test_flat_state_keeps_keras_state_for_amsgrad_and_mixed_dtypes():
    import keras

    from effscale.net.optimizers import flat_state_adam

    if keras.backend.backend() != "tensorflow":
        pytest.skip("flat state is used under TensorFlow only")
    optimizer = flat_state_adam(0.01)
    optimizer.amsgrad = True
    _, ours, _ = _train(optimizer)
    _, theirs, _ = _train(keras.optimizers.Adam(0.01, amsgrad=True))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    mixed = flat_state_adam(0.01)
    mixed.build([keras.Variable(np.ones(2, np.float32)), keras.Variable(np.ones(2, np.float16))])
    assert not hasattr(mixed, "_flat_m") and len(mixed._momentums) == len(mixed._velocities) == 2


def test_flat_state_of_a_single_weight_equals_keras_adam():
    import keras

    from effscale.net.optimizers import flat_state_adam

    def steps(optimizer):
        weight = keras.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))
        optimizer.build([weight])
        rng = np.random.default_rng(1)
        for _ in range(3):
            optimizer.apply([rng.normal(size=(2, 3)).astype(np.float32)], [weight])
        return np.asarray(weight)

    np.testing.assert_array_equal(steps(flat_state_adam(0.1)), steps(keras.optimizers.Adam(0.1)))
