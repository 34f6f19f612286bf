"""What ``effscale scale`` reports: one record per variant, as plain dicts (JSON-ready).

Library API for notebooks too::

    from effscale.scale.report import derive, official
    derive(3)            # the phi=3 variant, its cost and the nearest official one
    official()           # B0-B7 with implied phi per axis and the formula beside them
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from effscale.net.cost import Cost, network_activations, network_cost
from effscale.net.scaling import (
    DEFAULT_BUDGET,
    PAPER_COEFFICIENTS,
    ScalingCoefficients,
    Variant,
    check_budget,
    compound,
    implied_phi,
    published_in_family,
    published_variant,
    scale_network,
)

# The summary keys; ``official`` copies them (with filters and repeats) into ``formula``.
SUMMARY_COLUMNS = ["name", "source", "phi", "width", "depth", "resolution", "dropout", "params", "flops"]


def _cost(variant: Variant) -> Cost:
    return network_cost(scale_network(variant))


def base_of(family: str) -> Variant:
    return published_in_family(family)[0]


def variant_record(variant: Variant) -> dict:
    """The keys every output format shares: config, stages, params (1000-class top), MACs."""
    network = scale_network(variant)
    cost = network_cost(network)
    activations = network_activations(network)
    return {
        "name": variant.name,
        "family": variant.family,
        "source": variant.source,
        # Full precision: record_variant() must give back the very same network.
        "phi": variant.phi,
        "width": variant.width_mult,
        "depth": variant.depth_mult,
        "resolution": variant.resolution,
        "dropout": variant.dropout_rate,
        "params": cost.params,
        "flops": cost.macs,
        "acts": activations.acts,
        "peak_act_bytes": activations.peak_bytes(),
        "stem_filters": network.stem_filters,
        "head_filters": network.head_filters,
        "filters": "-".join(str(s.filters_out) for s in network.stages),
        "repeats": "-".join(str(s.repeats) for s in network.stages),
        "stages": [s.to_dict() for s in network.stages],
    }


def record_variant(record: dict) -> Variant:
    """The Variant a record was made from (inverse of ``variant_record``)."""
    return Variant(record["name"], record["phi"], record["width"], record["depth"],
                   record["resolution"], record["dropout"], record["source"], record["family"])


def nearest_official(macs: int, family: str = "efficientnet") -> Variant:
    """The published variant whose MACs are closest on a log scale."""
    return min(published_in_family(family), key=lambda v: abs(math.log(_cost(v).macs / macs)))


def derive(
    phi: float,
    coefficients: ScalingCoefficients = PAPER_COEFFICIENTS,
    budget: float = DEFAULT_BUDGET,
    family: str = "efficientnet",
) -> dict:
    """Record of the compound variant at ``phi`` with its cost ratios and nearest official."""
    budget = check_budget(budget)
    variant = compound(phi, coefficients, family=family)
    record = variant_record(variant)
    base_macs = _cost(base_of(family)).macs
    nearest = nearest_official(record["flops"], family)
    record |= {
        "alpha": coefficients.alpha,
        "beta": coefficients.beta,
        "gamma": coefficients.gamma,
        "flops_factor": round(coefficients.flops_factor, 4),
        "budget": budget,
        "flops_vs_base": record["flops"] / base_macs,
        "budget_target": budget**phi,
        "flops_vs_target": record["flops"] / base_macs / budget**phi,
        "nearest_official": variant_record(nearest),
    }
    return record


def official(
    coefficients: ScalingCoefficients = PAPER_COEFFICIENTS,
    family: str = "efficientnet",
    names: list[str] | None = None,
) -> list[dict]:
    """Published variants with implied phi per axis and what the formula gives at phi = index."""
    variants = [published_variant(n) for n in names] if names else published_in_family(family)
    records = []
    for variant in variants:
        base_macs = _cost(base_of(variant.family)).macs
        record = variant_record(variant)
        implied = implied_phi(variant, coefficients)
        formula = variant_record(compound(variant.phi, coefficients, family=variant.family))
        record |= {
            "flops_vs_base": record["flops"] / base_macs,
            **{f"phi_{axis}": None if value is None else round(value, 3) for axis, value in implied.items()},
            # log2 of the MACs ratio: the phi the paper's 2^phi FLOPs rule would assign.
            "phi_flops": round(math.log2(record["flops"] / base_macs), 3),
            "formula": {k: formula[k] for k in SUMMARY_COLUMNS + ["filters", "repeats"]},
        }
        records.append(record)
    return records


def check_build(record: dict) -> int:
    """Build ``record``'s network in Keras; its parameter count must equal the arithmetic one."""
    from effscale.errors import EffscaleError
    from effscale.net.keras_model import build_model  # the only Keras import of `scale`

    built = build_model(scale_network(record_variant(record))).count_params()
    if built != record["params"]:
        raise EffscaleError(f"{record['name']}: Keras model has {built:,} params but arithmetic says "
                            f"{record['params']:,}; please report this bug")
    return built


@dataclass(frozen=True)
class ChosenCoefficients:
    coefficients: ScalingCoefficients
    budget: float
    family: str
    source: str  # "paper" or the --from path
    warning: str | None = None  # e.g. the grid's winner is statistically tied with others
    tie_set: tuple[str, ...] = ()  # the grid's tied candidate ids, when it could not separate them
    chosen_id: str | None = None


def tie_set_costs(tie_set, phi: float, family: str = "efficientnet") -> list[tuple[str, int]]:
    """MACs of the family's base scaled to ``phi`` with each tied row's coefficients (ids
    ``aA-bB-gC`` as ``effscale grid`` names them; others are skipped), cheapest first.

    The grid breaks a tie by MACs measured on its proxy at phi=1, where rounding channels and
    pixels can favour a row that costs more one step up; this shows the cost where it is used."""
    from effscale.grid.search import Candidate  # only when there is a tie: keeps `scale` quick to start

    candidates = [(str(row), Candidate.from_id(row)) for row in tie_set]
    costs = [(row, _cost(compound(phi, candidate, family=family)).macs) for row, candidate in candidates if candidate]
    return sorted(costs, key=lambda item: item[1])


def tie_set_cost_line(chosen: ChosenCoefficients, phi: float) -> str | None:
    """One sentence naming each tied row's MACs at ``phi`` and the cheapest; None without a tie."""
    costs = tie_set_costs(chosen.tie_set, phi, chosen.family)
    if len(costs) < 2:
        return None
    base = base_of(chosen.family).name.upper()
    listed = ", ".join(f"{row} {macs / 1e9:.2f} G" + (" (chosen)" if row == chosen.chosen_id else "")
                       for row, macs in costs)
    return (f"At phi={phi:g} on {base} the tied rows cost (MACs): {listed}; the cheapest there is {costs[0][0]}. "
            f"Pass --alpha/--beta/--gamma to scale another.")


def choose_coefficients(from_path=None, alpha: float | None = None, beta: float | None = None,
                        gamma: float | None = None, budget: float | None = None,
                        family: str = "efficientnet") -> ChosenCoefficients:
    """The paper's coefficients, or a grid's ``best.json``, with explicit values on top."""
    base, source, recorded_budget, warning = PAPER_COEFFICIENTS, "paper", DEFAULT_BUDGET, None
    tie_set, chosen_id = (), None
    if from_path is not None:
        from effscale.schemas import read_coefficients, tie_set_warning
        from effscale.schemas import tie_set as read_tie_set

        base, document = read_coefficients(from_path)
        warning = tie_set_warning(document)
        tie_set, chosen_id = read_tie_set(document), (document.get("metrics") or {}).get("candidate")
        source = str(from_path)
        family = document.get("family", family)
        # The grid judged its coefficients against its own budget; 2 would misread a budget-3 search.
        recorded_budget = document.get("budget", DEFAULT_BUDGET)
    coefficients = ScalingCoefficients(
        alpha if alpha is not None else base.alpha,
        beta if beta is not None else base.beta,
        gamma if gamma is not None else base.gamma,
    ).validate()
    return ChosenCoefficients(coefficients, recorded_budget if budget is None else budget, family, source,
                              warning or None, tie_set, chosen_id)


def write_variant(record: dict, coefficients: ScalingCoefficients | None, output: Path) -> Path:
    """The variant file ``effscale transfer --variant FILE`` reads."""
    from effscale.fsutil import atomic_write_json
    from effscale.schemas import variant_document

    return atomic_write_json(output, variant_document(record_variant(record), coefficients))
