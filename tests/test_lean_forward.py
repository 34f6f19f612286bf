"""lean_call: the same forward pass as Keras's eager call, holding only the live tensors."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from effscale.net.batchnorm import batchnorm_layers  # noqa: E402
from effscale.net.lean_forward import lean_call  # noqa: E402


def _chain_model(depth: int = 30):
    """A nested functional model: a chain of Dense layers with one residual add and a BatchNorm."""
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16)(inputs)
    skip = x
    for _ in range(depth):
        x = keras.layers.Dense(16)(x)
    x = keras.layers.BatchNormalization()(keras.layers.Add()([x, skip]))
    inner = keras.Model(inputs, x, name="inner")
    outer_in = keras.Input((8,))
    return keras.Model(outer_in, keras.layers.Dense(3)(inner(keras.layers.Rescaling(0.5)(outer_in))))


def _peak_live_outputs(monkeypatch, call) -> int:
    """The most layer outputs alive at once during ``call()``, counted with weak references."""
    from keras.src.models import functional

    real, refs, peak = functional.operation_fn, [], [0]

    def spy(operation, **context):
        inner = real(operation, **context)

        def wrapped(*args, **kwargs):
            out = inner(*args, **kwargs)
            if not isinstance(operation, functional.Functional):
                refs.extend(weakref.ref(t) for t in keras.tree.flatten(out))
                peak[0] = max(peak[0], sum(r() is not None for r in refs))
            return out

        return wrapped

    monkeypatch.setattr(functional, "operation_fn", spy)
    call()
    return peak[0]


def test_lean_call_drops_each_output_after_its_last_use_where_keras_keeps_them_all(monkeypatch):
    model = _chain_model(30)
    x = np.ones((4, 8), "float32")
    kept = _peak_live_outputs(monkeypatch, lambda: model(x, training=True))
    lean = _peak_live_outputs(monkeypatch, lambda: lean_call(model, x, training=True))
    assert kept >= 30  # Keras's eager call: every layer's output until the call returns
    assert lean <= 4  # the chain's current tensor, the skip, the add's other input, the output


def _bn_state(model) -> np.ndarray:
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for bn in batchnorm_layers(model)
                           for v in (bn.moving_mean, bn.moving_variance)])


@pytest.mark.parametrize("training", [True, False])
def test_lean_call_gives_the_same_outputs_and_batchnorm_updates_as_keras(training):
    """A grid proxy (nested functional model, residual adds, squeeze-excitation, dropout, BN),
    built twice from the same seed: the two calls must agree to the bit."""
    from effscale.grid import proxy
    from effscale.grid.config import preset
    from effscale.grid.search import Candidate, TrialSpec

    spec = TrialSpec(Candidate(1.2, 1.1, 1.15), "paper", 0, 0, 1)
    config = preset("smoke").replace(dataset="synthetic")  # dropout on: its draws must match too
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype("float32")
    results = []
    for call in (lambda m: m(x, training=training), lambda m: lean_call(m, x, training=training)):
        keras.utils.set_random_seed(3)
        model = proxy.build_proxy_model(spec, config, (32, 32, 3), 10)
        for bn in batchnorm_layers(model):
            bn.momentum = 0.5  # so a training-mode call visibly moves the statistics
        initial = _bn_state(model)
        out = keras.ops.convert_to_numpy(call(model))
        results.append((out, _bn_state(model)))
    (out_keras, bn_keras), (out_lean, bn_lean) = results
    np.testing.assert_array_equal(out_lean, out_keras)
    np.testing.assert_array_equal(bn_lean, bn_keras)
    assert (not np.array_equal(bn_keras, initial)) == training  # not vacuous: training mode moved BN


def test_lean_call_falls_back_to_the_model_call_for_a_subclassed_model():
    class Twice(keras.Model):
        def call(self, x):
            return 2 * x

    np.testing.assert_array_equal(keras.ops.convert_to_numpy(lean_call(Twice(), np.ones((2, 3), "float32"))),
                                  np.full((2, 3), 2.0))
