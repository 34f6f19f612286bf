"""``effscale scale``: derive a compound-scaled variant, or show the official ones."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console
from effscale.console import Column, fmt_float, fmt_gmacs, fmt_int, fmt_ratio
from effscale.net.scaling import DEFAULT_BUDGET


def fmt_mega(value) -> str:
    return f"{value / 1e6:.1f}"


class Number(click.FloatRange):
    name = "number"  # click's default says "not a valid float range"


POSITIVE_PHI = Number(min=0.0)
COEFF = Number(min=1.0)


def _summary_columns(extra: list[Column] = (), with_source: bool = True) -> list[Column]:
    return [
        Column("name", "variant", justify="left"),
        *([Column("source", "source", justify="left")] if with_source else []),
        Column("phi", "phi", fmt_float(2)),
        Column("width", "width", fmt_float(3)),
        Column("depth", "depth", fmt_float(3)),
        Column("resolution", "res"),
        Column("dropout", "dropout", fmt_float(2)),
        Column("params", "params", fmt_int),
        Column("flops", "GMACs", fmt_gmacs),
        Column("acts", "acts M", fmt_mega),
        Column("peak_act_bytes", "peak MB", fmt_mega),
        *extra,
    ]


ALL_EXTRA = [
    Column("flops_vs_base", "x base", fmt_ratio),
    Column("phi_depth", "phi(depth)", fmt_float(2)),
    Column("phi_width", "phi(width)", fmt_float(2)),
    Column("phi_resolution", "phi(res)", fmt_float(2)),
    Column("phi_flops", "phi(FLOPs)", fmt_float(2)),
    Column("formula_depth", "formula depth", fmt_float(3)),
    Column("formula_width", "formula width", fmt_float(3)),
    Column("formula_resolution", "formula res"),
    Column("formula_flops", "formula GMACs", fmt_gmacs),
    Column("formula_params", "formula params", fmt_int),
]

PHI_EXTRA = [
    Column("flops_vs_base", "x base", fmt_ratio),
    Column("budget_target", "budget^phi", fmt_ratio),
    Column("flops_vs_target", "vs target", fmt_float(3)),
    Column("nearest", "nearest official", justify="left"),
]


def _flatten_official(record: dict) -> dict:
    flat = dict(record)
    for key in ("depth", "width", "resolution", "flops", "params"):
        flat[f"formula_{key}"] = record["formula"][key]
    return flat


def _render_derived(record: dict, title: str) -> None:
    near = record["nearest_official"]
    rows = [
        ("width (beta^phi)", f"{record['width']:.3f}", f"{near['width']:.3f}"),
        ("depth (alpha^phi)", f"{record['depth']:.3f}", f"{near['depth']:.3f}"),
        ("resolution", str(record["resolution"]), str(near["resolution"])),
        ("dropout", f"{record['dropout']:.2f}", f"{near['dropout']:.2f}"),
        ("stem / head filters", f"{record['stem_filters']} / {record['head_filters']}",
         f"{near['stem_filters']} / {near['head_filters']}"),
        ("params (1000-class top)", fmt_int(record["params"]), fmt_int(near["params"])),
        ("GMACs (multiply-adds)", fmt_gmacs(record["flops"]), fmt_gmacs(near["flops"])),
        ("activations (Dollar, batch 1)", fmt_int(record["acts"]), fmt_int(near["acts"])),
        ("peak activation MB (fp32, batch 1)", fmt_mega(record["peak_act_bytes"]),
         fmt_mega(near["peak_act_bytes"])),
        ("MACs vs base", fmt_ratio(record["flops_vs_base"]), ""),
        (f"budget^phi target ({record['budget']:g}^{record['phi']:g})", fmt_ratio(record["budget_target"]), ""),
        ("MACs / target", f"{record['flops_vs_target']:.3f}", ""),
    ]
    from rich.table import Table

    caption = (f"alpha={record['alpha']:g} beta={record['beta']:g} gamma={record['gamma']:g}; "
               f"alpha*beta^2*gamma^2 = {record['flops_factor']:.3f} (budget {record['budget']:g})")
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("", justify="left")
    table.add_column(record["name"], justify="right")
    table.add_column(f"nearest official: {near['name']}", justify="right")
    for row in rows:
        table.add_row(*row)
    console.out.print(table)
    stages = Table(title="Stages (filters out x repeats)", header_style="bold")
    for header in ("stage", "kernel", "stride", "expand", "SE", record["name"], near["name"]):
        stages.add_column(header, justify="right")
    for i, (mine, theirs) in enumerate(zip(record["stages"], near["stages"]), start=1):
        stages.add_row(str(i), str(mine["kernel_size"]), str(mine["strides"]), str(mine["expand_ratio"]),
                       f"{mine['se_ratio']:g}", f"{mine['filters_out']} x {mine['repeats']}",
                       f"{theirs['filters_out']} x {theirs['repeats']}")
    console.out.print(stages)


def _check_build(records: list[dict]) -> None:
    """Build each variant in Keras and compare its parameter count with the arithmetic one."""
    from effscale.scale import report as scale_report
    from effscale.errors import EffscaleError
    from effscale.net.keras_model import build_model
    from effscale.net.scaling import scale_network

    for record in records:
        model = build_model(scale_network(scale_report.record_variant(record)))
        built = model.count_params()
        if built != record["params"]:
            raise EffscaleError(
                f"{record['name']}: Keras model has {built:,} params but arithmetic says "
                f"{record['params']:,}; please report this bug"
            )
        console.info(f"[green]build check[/green] {record['name']}: Keras model has {built:,} params "
                     "= arithmetic count")


@click.command()
@click.option("--phi", type=POSITIVE_PHI, help="Compound coefficient; fractional values allowed.")
@click.option("--all", "show_all", is_flag=True, help="Show every official variant with implied phi.")
@click.option("--variant", "variant_name", metavar="NAME", help="Show one official variant (b0-b7, lite0-lite4).")
@click.option("--family", type=click.Choice(["efficientnet", "lite"]), default="efficientnet",
              show_default=True, help="Which baseline and rules --phi and --all use.")
@click.option("--alpha", type=COEFF, help="Depth coefficient (default 1.2, or from --from).")
@click.option("--beta", type=COEFF, help="Width coefficient (default 1.1, or from --from).")
@click.option("--gamma", type=COEFF, help="Resolution coefficient (default 1.15, or from --from).")
@click.option("--budget", type=Number(min=1.0, min_open=True), default=DEFAULT_BUDGET, show_default=True,
              help="FLOPs multiplier per step of phi that alpha*beta^2*gamma^2 should match.")
@click.option("--from", "from_path", type=click.Path(path_type=Path), metavar="PATH",
              help="Coefficients JSON (docs/schemas.md) or an effscale grid run directory.")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="table (rich), or json/csv/markdown on stdout for scripts.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the variant config as JSON (for effscale transfer --variant FILE).")
@click.option("--build", is_flag=True, help="Build the Keras model and check its parameter count.")
def scale(phi, show_all, variant_name, family, alpha, beta, gamma, budget, from_path, fmt, output, build):
    """Derive a compound-scaled EfficientNet with exact params and FLOPs (multiply-adds).

    \b
      effscale scale --phi 3                   phi=3 with the paper's 1.2/1.1/1.15
      effscale scale --phi 2.5 --beta 1.15     override a coefficient
      effscale scale --phi 3 --from runs/grid  coefficients found by effscale grid
      effscale scale --all                     B0-B7: implied phi per axis vs the formula
    """
    from effscale.scale import report as scale_report
    from effscale.net.scaling import PAPER_COEFFICIENTS, ScalingCoefficients

    chosen = [flag for flag, on in (("--phi", phi is not None), ("--all", show_all),
                                    ("--variant", variant_name is not None)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be combined; pass one of them")
    base, source = PAPER_COEFFICIENTS, "paper"
    if from_path is not None:
        from effscale.schemas import read_coefficients

        base, document = read_coefficients(from_path)
        source = str(from_path)
        family = document.get("family", family)
    coefficients = ScalingCoefficients(
        alpha if alpha is not None else base.alpha,
        beta if beta is not None else base.beta,
        gamma if gamma is not None else base.gamma,
    ).validate()

    if phi is not None:
        record = scale_report.derive(phi, coefficients, budget, family)
        records = [record]
        if fmt == "table":
            _render_derived(record, f"Compound scaling phi={phi:g} (coefficients: {source})")
        else:
            console.emit([record | {"nearest": record["nearest_official"]["name"]}],
                         _summary_columns(PHI_EXTRA), fmt)
    else:
        names = [variant_name] if variant_name else None
        records = scale_report.official(coefficients, family, names)
        title = (f"Official variants vs the formula (alpha={coefficients.alpha:g}, "
                 f"beta={coefficients.beta:g}, gamma={coefficients.gamma:g})")
        console.emit([_flatten_official(r) for r in records], _summary_columns(ALL_EXTRA, with_source=fmt != "table"), fmt, title=title,
                     caption="phi(axis): the phi each axis implies; formula: what alpha^phi etc. give at phi")

    if output is not None:
        if len(records) != 1:
            raise click.UsageError("--output writes one variant; use it with --phi or --variant")
        _write_variant(records[0], coefficients if phi is not None else None, output)
    if build:
        _check_build(records)


def _write_variant(record: dict, coefficients, output: Path) -> None:
    from effscale.fsutil import atomic_write_json
    from effscale.scale.report import record_variant
    from effscale.schemas import variant_document

    atomic_write_json(output, variant_document(record_variant(record), coefficients))
    console.info(f"wrote {output}")
