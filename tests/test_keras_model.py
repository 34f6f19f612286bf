"""The builder against keras.applications: same params, names, weight order and outputs."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REFERENCE = {"b0": "EfficientNetB0", "b1": "EfficientNetB1", "b2": "EfficientNetB2"}


@pytest.fixture(scope="module")
def keras():
    import effscale.net.keras_model  # noqa: F401  (sets the default backend)
    import keras

    return keras


def test_baseline_stages_equal_keras_default_blocks_args(keras):
    from keras.src.applications.efficientnet import DEFAULT_BLOCKS_ARGS

    from effscale.net.arch import BASELINE

    ours = [s.to_dict() for s in BASELINE.stages]
    assert ours == [{k: v for k, v in a.items()} for a in DEFAULT_BLOCKS_ARGS]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_identical_to_keras_applications(keras, name):
    from effscale.net.cost import network_cost
    from effscale.net.keras_model import build_model
    from effscale.net.scaling import published_variant, scale_network

    spec = scale_network(published_variant(name))
    reference = getattr(keras.applications, REFERENCE[name])(weights=None)
    ours = build_model(spec, input_norm="unit")
    assert ours.count_params() == reference.count_params() == network_cost(spec).params
    named = [layer.name for layer in ours.layers if layer.name.startswith(("stem", "block", "top", "pred"))]
    theirs = [layer.name for layer in reference.layers if layer.name.startswith(("stem", "block", "top", "pred"))]
    assert named == theirs
    ours.set_weights(reference.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, spec.resolution, spec.resolution, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_imagenet_norm_standardises_pixels(keras):
    from effscale.net.arch import BASELINE
    from effscale.net.keras_model import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB, build_model

    model = build_model(BASELINE, include_top=False, image_size=32)
    stem = keras.Model(model.input, model.get_layer("stem_conv_pad").input)
    pixel = np.array(IMAGENET_MEAN_RGB) * 255 + np.array(IMAGENET_STDDEV_RGB) * 255
    out = stem.predict(np.broadcast_to(pixel, (1, 32, 32, 3)).astype("float32"), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0, 1.0], rtol=1e-5)  # one std above the mean


def test_set_model_weights_refreshes_normalization(keras):
    from effscale.net.arch import BASELINE
    from effscale.net.keras_model import build_model, set_model_weights

    unit = build_model(BASELINE, include_top=False, image_size=32, input_norm="unit")
    imagenet = build_model(BASELINE, include_top=False, image_size=32)
    set_model_weights(unit, imagenet.get_weights())  # unit now holds mean/std but lacks the extra rescale
    probe = keras.Model(unit.input, unit.get_layer("normalization").output)
    out = probe.predict(np.full((1, 32, 32, 3), 0.485 * 255, "float32"), verbose=0)
    assert abs(float(out[0, 0, 0, 0])) < 1e-5  # the red mean maps to 0 only if the new mean is in use


def test_notop_pooling_and_block_names(keras):
    from effscale.net.arch import BASELINE
    from effscale.net.keras_model import block_names, build_model

    model = build_model(BASELINE, include_top=False, pooling="max", image_size=64)
    assert model.output.shape == (None, 1280)
    names = block_names(model)
    assert names[0] == "block1a" and names[-1] == "block7a" and len(names) == 16


def test_input_range_check(keras):
    from effscale.errors import InputRangeError
    from effscale.net.keras_model import check_input_range

    with pytest.raises(InputRangeError, match="expect 0-255"):
        check_input_range(np.full((2, 8, 8, 3), 0.5, "float32"), pretrained=True)
    with pytest.warns(UserWarning, match="do not divide images by 255"):
        check_input_range(np.full((2, 8, 8, 3), 0.5, "float32"), pretrained=False)
    check_input_range(np.full((2, 8, 8, 3), 200, "uint8"), pretrained=True)  # fine
