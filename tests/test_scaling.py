import math

import pytest

from effscale.net.arch import BASELINE, NetworkSpec
from effscale.errors import ConfigError, SanityLimitError
from effscale.net.scaling import (
    PUBLISHED_VARIANTS,
    ScalingCoefficients,
    compound,
    dropout_for_phi,
    implied_phi,
    published_variant,
    round_filters,
    round_repeats,
    round_resolution,
    scale_network,
)

# (filters, width multiplier, expected), worked out by hand from the official rule:
# nearest multiple of 8, at least 8, bumped up when it falls >10% below the scaled value.
ROUND_FILTERS = [
    (32, 1.0, 32),
    (32, 1.1, 32),  # 35.2 -> 32 (within 10%)
    (16, 1.4, 24),  # 22.4 -> 24
    (40, 1.2, 48),
    (1280, 2.0, 2560),
    (1280, 1.1, 1408),
    (320, 1.8, 576),
    (17, 0.7, 16),  # 11.9 -> 8 is >10% low, so 16
    (4, 1.0, 8),  # never below the divisor
]

# The published table (Tan & Le 2019; Keras applications): (width, depth, resolution, dropout).
PUBLISHED = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


@pytest.mark.parametrize("filters,mult,expected", ROUND_FILTERS)
def test_round_filters(filters, mult, expected):
    assert round_filters(filters, mult) == expected


def test_round_repeats_is_ceil():
    assert round_repeats(3, 1.1) == 4
    assert round_repeats(1, 3.1) == 4
    assert round_repeats(4, 1.0) == 4


def test_round_resolution_multiple_of_8():
    assert round_resolution(257.6) == 256
    assert round_resolution(224 * 1.15**3) == 344
    assert round_resolution(1) == 8


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_table(name):
    v = published_variant(name)
    assert (v.width_mult, v.depth_mult, v.resolution, v.dropout_rate) == PUBLISHED[name]
    assert v.source == "published"


def test_published_names_are_case_and_prefix_insensitive():
    assert published_variant("EfficientNet-B3") == PUBLISHED_VARIANTS["b3"]
    with pytest.raises(ConfigError, match="unknown variant 'b9'"):
        published_variant("b9")


def test_dropout_rule_reproduces_published_b0_to_b7():
    assert [dropout_for_phi(i) for i in range(8)] == [PUBLISHED[f"b{i}"][3] for i in range(8)]


def test_compound_phi_zero_is_the_baseline():
    assert scale_network(compound(0)) == BASELINE


def test_compound_phi_one_uses_paper_coefficients():
    v = compound(1)
    assert (v.depth_mult, v.width_mult, v.resolution, v.source) == (1.2, 1.1, 256, "compound")
    assert [s.repeats for s in scale_network(v).stages] == [2, 3, 3, 4, 4, 5, 2]


def test_compound_fractional_phi():
    v = compound(2.5)
    assert v.depth_mult == pytest.approx(1.2**2.5)
    assert v.resolution % 8 == 0


@pytest.mark.parametrize("phi", [-1, math.nan, math.inf])
def test_compound_rejects_bad_phi(phi):
    with pytest.raises(ConfigError):
        compound(phi)


def test_compound_sanity_limit():
    with pytest.raises(SanityLimitError, match="exceeds the sanity limit"):
        compound(25)
    with pytest.raises(SanityLimitError, match="resolution"):
        compound(3, ScalingCoefficients(1.0, 1.0, 3.0))


def test_coefficients_must_grow_the_network():
    assert ScalingCoefficients().flops_factor == pytest.approx(1.2 * 1.1**2 * 1.15**2)
    with pytest.raises(ConfigError, match="<= 1"):
        ScalingCoefficients(1.0, 1.0, 1.0).validate()
    with pytest.raises(ConfigError, match="beta"):
        ScalingCoefficients(1.2, 0.9, 1.1).validate()


def test_implied_phi_shows_b1_does_not_scale_width():
    phi = implied_phi(published_variant("b1"))
    assert phi["width"] == 0.0
    assert phi["depth"] == pytest.approx(math.log(1.1) / math.log(1.2))
    assert implied_phi(published_variant("b2"))["depth"] == pytest.approx(1.0)


def test_network_spec_round_trips_through_dict():
    spec = scale_network(published_variant("b5"))
    assert NetworkSpec.from_dict(spec.to_dict()) == spec


def test_network_spec_from_dict_names_missing_fields():
    data = BASELINE.to_dict()
    del data["stem_filters"]
    with pytest.raises(ConfigError, match="stem_filters"):
        NetworkSpec.from_dict(data)


def test_lite_keeps_stem_head_and_end_stage_repeats():
    spec = scale_network(published_variant("lite4"))
    assert (spec.stem_filters, spec.head_filters) == (32, 1280)
    assert spec.stages[0].repeats == 1 and spec.stages[-1].repeats == 1
    assert spec.stages[1].repeats == 4  # ceil(2 * 1.8)
    assert all(s.se_ratio == 0 for s in spec.stages) and spec.activation == "relu6"
