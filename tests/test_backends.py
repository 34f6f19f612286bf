"""The builder runs unchanged on the other Keras backends and gives the same outputs."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import require

pytestmark = pytest.mark.slow

SCRIPT = """
import sys, numpy as np
from effscale.net.scaling import compound, scale_network
from effscale.net.keras_model import build_model, set_model_weights
import keras
data = np.load(sys.argv[1])
model = build_model(scale_network(compound(0.5)), num_classes=10, image_size=64)
n = len(model.get_weights())
if 'w0' in data:
    set_model_weights(model, [data[f'w{i}'] for i in range(n)])
out = model.predict(data['x'], verbose=0)
np.savez(sys.argv[2], y=out, backend=keras.backend.backend(), **{f'w{i}': w for i, w in enumerate(model.get_weights())})
"""


def _run(backend: str, source, target):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(source), str(target)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(target)


@pytest.fixture(scope="module")
def tensorflow_reference(tmp_path_factory):
    """Random weights, an input and the TensorFlow outputs, saved for the other backend."""
    folder = tmp_path_factory.mktemp("backends")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.savez(folder / "in.npz", x=x)
    reference = _run("tensorflow", folder / "in.npz", folder / "tf.npz")
    weights = {k: reference[k] for k in reference.files if k.startswith("w")}
    np.savez(folder / "in2.npz", x=x, **weights)
    return folder / "in2.npz", reference["y"]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_same_outputs_as_tensorflow(backend, tmp_path, request):
    require(backend, load=False)
    source, expected = request.getfixturevalue("tensorflow_reference")
    other = _run(backend, source, tmp_path / "other.npz")
    assert str(other["backend"]) == backend
    np.testing.assert_allclose(other["y"], expected, rtol=1e-4, atol=1e-5)
