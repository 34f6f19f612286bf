"""``effscale.derive`` and ``effscale.official``: what ``effscale scale`` shows, as dicts.

Pure Python (no Keras): a record holds the variant's multipliers, resolution, dropout,
stages, exact parameter count (1000-class top) and multiply-adds (``flops``), as
``effscale scale --format json`` prints them.
"""

from __future__ import annotations

import os

from effscale.errors import ConfigError
from effscale.net.scaling import ScalingCoefficients


def _choose(coefficients, budget, family):
    """Coefficients given as a ScalingCoefficients, (alpha, beta, gamma), a dict, or the path
    of a coefficients file / grid run directory (whose recorded budget then applies)."""
    from effscale.scale.report import choose_coefficients

    if coefficients is None or isinstance(coefficients, (str, os.PathLike)):
        return choose_coefficients(coefficients, budget=budget, family=family)
    if isinstance(coefficients, dict):
        coefficients = ScalingCoefficients(**coefficients)
    elif isinstance(coefficients, (tuple, list)):
        coefficients = ScalingCoefficients(*coefficients)
    if not isinstance(coefficients, ScalingCoefficients):
        raise ConfigError(f"coefficients must be (alpha, beta, gamma), a dict or a path, got {coefficients!r}")
    c = coefficients
    return choose_coefficients(None, c.alpha, c.beta, c.gamma, budget, family)


def derive(phi: float, coefficients=None, budget: float | None = None, family: str = "efficientnet") -> dict:
    """The compound-scaled variant at ``phi``: depth alpha^phi, width beta^phi, resolution gamma^phi.

    ``coefficients`` defaults to the paper's (1.2, 1.1, 1.15); ``budget`` (the FLOPs multiplier
    per step of phi the variant is judged against) defaults to 2, or to the budget recorded
    in the coefficients file or grid run you pass. The record adds ``flops_vs_base``,
    ``budget_target`` (budget^phi), ``flops_vs_target`` and ``nearest_official``.
    """
    from effscale.scale.report import derive as derive_record

    chosen = _choose(coefficients, budget, family)
    return derive_record(phi, chosen.coefficients, chosen.budget, chosen.family)


def official(name: str, coefficients=None) -> dict:
    """A published variant (``"b0"``-``"b7"``, ``"lite0"``-``"lite4"``) with the phi each axis
    implies under ``coefficients`` and what the formula gives at its phi (``formula``)."""
    from effscale.scale.report import official as official_records

    if not isinstance(name, str) or not name.strip():
        raise ConfigError("give a variant name (b0-b7, lite0-lite4)")
    (record,) = official_records(_choose(coefficients, None, "efficientnet").coefficients, names=[name])
    return record
