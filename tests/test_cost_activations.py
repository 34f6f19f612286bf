"""Activation counts by arithmetic (net/cost.py) against published figures and built models."""

import pytest

from effscale.net.arch import BASELINE
from effscale.net.cost import Op, network_activations, peak_live
from effscale.net.scaling import published_variant, scale_network

# pycls MODEL_ZOO / Dollar et al. 2021: EfficientNet-B0 has 6.7M activations at 224.
DOLLAR_B0_ACTS = 6.7e6
# (variant, resolution override or None): odd sides exercise the stride-2 padding rule.
BUILT = [("b0", None), ("b0", 193), ("lite0", None), ("b2", 161)]


def test_b0_acts_match_dollar():
    assert network_activations(BASELINE).acts == pytest.approx(DOLLAR_B0_ACTS, rel=0.01)


def test_acts_grow_with_pixels_params_do_not():
    small = network_activations(BASELINE.with_resolution(112))
    big = network_activations(BASELINE.with_resolution(224))
    # Conv outputs scale with pixels (4x) except the 1x1 SE outputs, the head and the
    # ceil-rounded 4x4 (not 3.5x3.5) last stages at 112.
    assert 3.8 < big.acts / small.acts <= 4.0
    assert 3.9 < big.peak / small.peak <= 4.0


def test_peak_frees_after_last_reader():
    # a -> b -> c, and d reads a and c: a stays alive until d runs.
    ops = [Op("a", "input", 10), Op("b", "other", 5, (0,)), Op("c", "other", 7, (1,)), Op("d", "other", 1, (0, 2))]
    assert peak_live(ops) == 10 + 5 + 7  # while c runs: a (kept for d), b (c's input), c
    chain = [Op("a", "input", 10), Op("b", "other", 5, (0,)), Op("c", "other", 7, (1,))]
    assert peak_live(chain) == 15  # a is dropped once b is written


def test_no_top_drops_the_head():
    full, notop = network_activations(BASELINE), network_activations(BASELINE, include_top=False)
    assert full.acts - notop.acts == 1000  # the dense output


def _keras_counts(model):
    """Dollar acts and peak live elements read off the built model's own graph."""
    import keras

    views = (keras.layers.Dropout, keras.layers.Reshape)
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    owner = {}  # id of a tensor -> the id of the tensor that owns its memory
    sizes, readers, order = {}, {}, []

    def numel(tensor):
        n = 1
        for d in tensor.shape[1:]:
            n *= d
        return n

    for layer in model.layers:
        node = layer._inbound_nodes[0]
        out = node.output_tensors[0]
        ins = [owner.get(id(t), id(t)) for t in node.input_tensors]
        if isinstance(layer, views):
            owner[id(out)] = ins[0]
            continue
        key = id(out)
        order.append(key)
        sizes[key] = numel(out)
        for t in ins:
            readers[t] = len(order) - 1
    acts = sum(numel(layer.output) for layer in model.layers if isinstance(layer, convs))
    peak = 0
    for step, key in enumerate(order):
        live = [k for k in order[: step + 1] if readers.get(k, step) >= step or k == order[-1]]
        peak = max(peak, sum(sizes[k] for k in live))
    return acts, peak


@pytest.mark.slow
@pytest.mark.parametrize("name,resolution", BUILT)
def test_counts_equal_built_keras_model(name, resolution):
    from effscale.net.keras_model import build_model

    spec = scale_network(published_variant(name))
    if resolution:
        spec = spec.with_resolution(resolution)
    acts, peak = _keras_counts(build_model(spec))
    mine = network_activations(spec)
    assert (mine.acts, mine.peak) == (acts, peak)
