import pytest

from effscale.net.arch import BASELINE
from effscale.net.cost import Cost, block_costs, network_cost, stem_cost
from effscale.net.scaling import published_variant, scale_network

# keras.applications.EfficientNetB0..B7(weights=None).count_params(), 1000-class top.
KERAS_PARAMS = {
    "b0": 5_330_571,
    "b1": 7_856_239,
    "b2": 9_177_569,
    "b3": 12_320_535,
    "b4": 19_466_823,
    "b5": 30_562_527,
    "b6": 43_265_143,
    "b7": 66_658_687,
}
# Tan & Le 2019, Table 2, billions of FLOPs (multiply-adds) at native resolution.
PAPER_GFLOPS = {"b0": 0.39, "b1": 0.70, "b2": 1.0, "b3": 1.8, "b4": 4.2, "b5": 9.9, "b6": 19, "b7": 37}


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_params_equal_keras_applications(name):
    assert network_cost(scale_network(published_variant(name))).params == KERAS_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_macs_within_5_percent_of_paper(name):
    macs = network_cost(scale_network(published_variant(name))).macs
    assert macs / 1e9 == pytest.approx(PAPER_GFLOPS[name], rel=0.05)


def test_notop_and_class_count():
    # keras.applications.EfficientNetB0(include_top=False) has 4,049,571 params.
    assert network_cost(BASELINE, include_top=False).params == 4_049_571
    ten = network_cost(BASELINE, num_classes=10)
    assert ten.params == 4_049_571 + 1280 * 10 + 10
    assert ten.macs == network_cost(BASELINE, include_top=False).macs + 1280 * 10


def test_macs_grow_with_resolution_params_do_not():
    small = network_cost(BASELINE.with_resolution(112))
    big = network_cost(BASELINE.with_resolution(448))
    assert small.params == big.params
    # Convolution MACs scale with pixels (16x); SE and the dense head do not.
    assert 14 < big.macs / small.macs < 16.01


def test_block_costs_are_each_block_by_hand_and_add_up_to_the_network():
    blocks = block_costs(scale_network(published_variant("b0")))
    assert len(blocks) == 16
    # block1a at 224 px: 3x3 depthwise on 112x112x32, SE 32->8->32 (with biases), project 32->16,
    # two BatchNorms (4 vectors each), as keras.applications.EfficientNetB0 lists its layers.
    assert blocks[0].params == 288 + 4 * 32 + (32 * 8 + 8) + (8 * 32 + 32) + 32 * 16 + 4 * 16
    assert blocks[0].macs == 112 * 112 * 9 * 32 + 32 * 8 + 8 * 32 + 112 * 112 * 32 * 16
    # Stem (conv 3x3 3->32 at 112x112, BN, input Normalization) and head (conv 1x1 320->1280
    # at 7x7, BN, dense 1280->1000) are all the network has besides its blocks.
    stem = 27 * 32 + 4 * 32 + 7
    assert stem_cost(scale_network(published_variant("b0"))) == Cost(stem, 112 * 112 * 27 * 32)
    head = 320 * 1280 + 4 * 1280 + 1280 * 1000 + 1000
    assert sum(b.params for b in blocks) + stem + head == KERAS_PARAMS["b0"]
    assert sum(b.macs for b in blocks) + 112 * 112 * 27 * 32 + 49 * 320 * 1280 + 1280 * 1000 == \
        network_cost(scale_network(published_variant("b0"))).macs
