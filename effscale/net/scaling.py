"""Compound scaling: rounding rules, the published variants, and derivation for any phi.

Pure Python (no Keras). Published variants and formula-derived ones are kept apart and
every ``Variant`` says where it came from in ``source``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from effscale.net.arch import B0_STAGES, BASELINE, NetworkSpec, StageSpec
from effscale.errors import ConfigError, SanityLimitError

BASE_RESOLUTION = 224
# The derived resolution is rounded to a multiple of 8: close to the formula at small
# phi (224 * 1.15 = 257.6 -> 256) and friendly to accelerator tiling.
RESOLUTION_MULTIPLE = 8


@dataclass(frozen=True)
class ScalingCoefficients:
    """Per-step multipliers: depth alpha, width beta, resolution gamma."""

    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15

    @property
    def flops_factor(self) -> float:
        """alpha * beta^2 * gamma^2: the FLOPs multiplier of one step of phi."""
        # Products, not powers: a huge coefficient overflows to inf instead of raising.
        return self.alpha * self.beta * self.beta * self.gamma * self.gamma

    def validate(self) -> ScalingCoefficients:
        for axis, value in (("alpha", self.alpha), ("beta", self.beta), ("gamma", self.gamma)):
            if not math.isfinite(value) or value < 1.0:
                raise ConfigError(f"{axis} must be a finite number >= 1, got {value}")
        if self.flops_factor <= 1.0:
            raise ConfigError(
                f"alpha*beta^2*gamma^2 = {self.flops_factor:.4g} <= 1: scaling would not grow "
                "the network; raise at least one coefficient above 1"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


PAPER_COEFFICIENTS = ScalingCoefficients(1.2, 1.1, 1.15)
# The paper's constraint alpha * beta^2 * gamma^2 ~ 2: each step of phi doubles the FLOPs.
# The one default for every --budget (grid, scale) and for derive().
DEFAULT_BUDGET = 2.0


@dataclass(frozen=True)
class Family:
    """A family of networks sharing a baseline and a set of scaling rules."""

    name: str
    baseline: NetworkSpec
    scale_stem_head: bool = True
    # Stage indices whose repeats never scale (EfficientNet-Lite keeps first and last).
    fixed_repeat_stages: tuple[int, ...] = ()


LITE_BASELINE = NetworkSpec(
    stem_filters=32,
    stages=tuple(replace(stage, se_ratio=0.0) for stage in B0_STAGES),
    head_filters=1280,
    resolution=224,
    activation="relu6",
    input_norm="lite",
)

FAMILIES: dict[str, Family] = {
    "efficientnet": Family("efficientnet", BASELINE),
    # TF TPU efficientnet_lite_builder: no SE, relu6, fix_head_stem, first/last repeats fixed.
    "lite": Family("lite", LITE_BASELINE, scale_stem_head=False, fixed_repeat_stages=(0, 6)),
}


@dataclass(frozen=True)
class Variant:
    """A named point on the scaling curve: the multipliers applied to a family's baseline."""

    name: str
    phi: float
    width_mult: float
    depth_mult: float
    resolution: int
    dropout_rate: float
    source: str  # "published" (paper table) or "compound" (alpha**phi etc.)
    family: str = "efficientnet"

    def to_dict(self) -> dict:
        return asdict(self)


def round_filters(filters: int, width_mult: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor``.

    Rounds to nearest, but never drops more than 10% below the scaled value (the
    official rule, identical to Keras's closure of the same name).
    """
    scaled = filters * width_mult
    new_filters = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * scaled:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Scale a stage's block count, rounding up: depth never shrinks below the formula."""
    return int(math.ceil(depth_mult * repeats))


def round_resolution(resolution: float, multiple: int = RESOLUTION_MULTIPLE) -> int:
    return max(multiple, int(round(resolution / multiple)) * multiple)


def dropout_for_phi(phi: float) -> float:
    """0.2 at B0, +0.1 every two steps, capped at 0.5: reproduces the published B0-B7."""
    return round(min(0.5, 0.2 + 0.1 * math.floor(phi / 2)), 2)


def _published(family: str, prefix: str, rows) -> dict[str, Variant]:
    return {
        f"{prefix}{i}": Variant(f"{prefix}{i}", float(i), w, d, r, p, "published", family)
        for i, (w, d, r, p) in enumerate(rows)
    }


# Tan & Le 2019 / keras.applications: (width, depth, resolution, dropout).
PUBLISHED_VARIANTS: dict[str, Variant] = _published(
    "efficientnet",
    "b",
    [
        (1.0, 1.0, 224, 0.2),
        (1.0, 1.1, 240, 0.2),
        (1.1, 1.2, 260, 0.3),
        (1.2, 1.4, 300, 0.3),
        (1.4, 1.8, 380, 0.4),
        (1.6, 2.2, 456, 0.4),
        (1.8, 2.6, 528, 0.5),
        (2.0, 3.1, 600, 0.5),
    ],
)
# TF TPU repository, efficientnet_lite_builder.efficientnet_lite_params.
PUBLISHED_VARIANTS |= _published(
    "lite",
    "lite",
    [
        (1.0, 1.0, 224, 0.2),
        (1.0, 1.1, 240, 0.2),
        (1.1, 1.2, 260, 0.3),
        (1.2, 1.4, 280, 0.3),
        (1.4, 1.8, 300, 0.3),
    ],
)


def published_variant(name: str) -> Variant:
    key = name.strip().lower()
    key = re.sub(r"^efficientnet[-_]?", "", key)
    if key not in PUBLISHED_VARIANTS:
        known = ", ".join(PUBLISHED_VARIANTS)
        raise ConfigError(f"unknown variant {name!r}; choose one of {known}")
    return PUBLISHED_VARIANTS[key]


def published_in_family(family: str) -> list[Variant]:
    return [v for v in PUBLISHED_VARIANTS.values() if v.family == family]


@dataclass(frozen=True)
class SanityLimits:
    """Beyond these a derived network is almost surely a typo (phi=300) and is refused."""

    max_phi: float = 20.0
    max_resolution: int = 2048
    max_width_mult: float = 16.0
    max_depth_mult: float = 32.0
    # FLOPs multiplier per step of phi; the paper uses 2, and 100 is far past any grid
    # worth running (it also keeps budget**phi finite for every phi up to max_phi).
    max_budget: float = 100.0


SANITY_LIMITS = SanityLimits()


def _limit(name: str, what: str, value: float, limit: float) -> None:
    if value > limit:
        raise SanityLimitError(
            f"{name}: {what} {value:.4g} exceeds the sanity limit {limit:g} "
            "(see docs/scale.md); use a smaller phi or smaller coefficients"
        )


def check_sanity(variant: Variant, limits: SanityLimits = SANITY_LIMITS) -> Variant:
    _limit(variant.name, "phi", variant.phi, limits.max_phi)
    _limit(variant.name, "resolution", variant.resolution, limits.max_resolution)
    _limit(variant.name, "width multiplier", variant.width_mult, limits.max_width_mult)
    _limit(variant.name, "depth multiplier", variant.depth_mult, limits.max_depth_mult)
    return variant


def check_budget(budget: float, limits: SanityLimits = SANITY_LIMITS) -> float:
    """The FLOPs budget per step of phi: a finite number above 1 and within the sanity limit."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 1:
        raise ConfigError(f"budget must be a finite number > 1 (the paper uses 2), got {budget}")
    if budget > limits.max_budget:
        raise SanityLimitError(f"budget {budget:.4g} exceeds the sanity limit {limits.max_budget:g} "
                               "(see docs/scale.md); the paper uses 2")
    return float(budget)


def _power(base: float, exponent: float) -> float:
    """``base ** exponent``, or inf where floats overflow: the sanity limits then reject it."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def compound(
    phi: float,
    coefficients: ScalingCoefficients = PAPER_COEFFICIENTS,
    family: str = "efficientnet",
    base_resolution: int | None = None,
    name: str | None = None,
) -> Variant:
    """The variant the compound rule gives at ``phi``: depth a^phi, width b^phi, res g^phi."""
    if not isinstance(phi, (int, float)) or not math.isfinite(phi) or phi < 0:
        raise ConfigError(f"phi must be a finite number >= 0, got {phi}")
    coefficients.validate()
    name = name or f"phi{phi:g}"
    # Checked before any power is taken: alpha**1e9 overflows before it can be compared.
    _limit(name, "phi", phi, SANITY_LIMITS.max_phi)
    base = FAMILIES[family].baseline.resolution if base_resolution is None else base_resolution
    raw_resolution = base * _power(coefficients.gamma, phi)
    _limit(name, "resolution", raw_resolution, SANITY_LIMITS.max_resolution)
    variant = Variant(
        name=name,
        phi=float(phi),
        width_mult=_power(coefficients.beta, phi),
        depth_mult=_power(coefficients.alpha, phi),
        resolution=round_resolution(raw_resolution),
        dropout_rate=dropout_for_phi(phi),
        source="compound",
        family=family,
    )
    return check_sanity(variant)


def implied_phi(variant: Variant, coefficients: ScalingCoefficients = PAPER_COEFFICIENTS) -> dict:
    """The phi each axis of ``variant`` corresponds to under ``coefficients``.

    The published B1-B7 were hand-tuned: B1 keeps width 1.0, so its width-phi is 0. An
    axis whose coefficient is 1 does not scale at all, so its phi is None (undefined).
    """
    base = FAMILIES[variant.family].baseline.resolution

    def axis(ratio: float, coefficient: float) -> float | None:
        return None if coefficient == 1.0 else math.log(ratio) / math.log(coefficient)

    return {
        "depth": axis(variant.depth_mult, coefficients.alpha),
        "width": axis(variant.width_mult, coefficients.beta),
        "resolution": axis(variant.resolution / base, coefficients.gamma),
    }


def scale_network(variant: Variant) -> NetworkSpec:
    """Apply a variant's multipliers, with the official rounding, to its family's baseline."""
    family = FAMILIES[variant.family]
    base = family.baseline

    def filters(n: int) -> int:
        return round_filters(n, variant.width_mult)

    stages = []
    for index, stage in enumerate(base.stages):
        fixed = index in family.fixed_repeat_stages
        stages.append(
            StageSpec(
                kernel_size=stage.kernel_size,
                repeats=stage.repeats if fixed else round_repeats(stage.repeats, variant.depth_mult),
                filters_in=filters(stage.filters_in),
                filters_out=filters(stage.filters_out),
                expand_ratio=stage.expand_ratio,
                strides=stage.strides,
                se_ratio=stage.se_ratio,
                id_skip=stage.id_skip,
            )
        )
    stem_head = filters if family.scale_stem_head else (lambda n: n)
    # Lite keeps the stem fixed, so the first stage must read those unscaled channels.
    if not family.scale_stem_head:
        stages[0] = replace(stages[0], filters_in=base.stem_filters)
    return replace(
        base,
        stem_filters=stem_head(base.stem_filters),
        stages=tuple(stages),
        head_filters=stem_head(base.head_filters),
        resolution=variant.resolution,
        dropout_rate=variant.dropout_rate,
    )
