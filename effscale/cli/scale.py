"""``effscale scale``: derive a compound-scaled variant, or show the official ones."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console
from effscale.cli.options import Number

POSITIVE_PHI = Number(min=0.0)
COEFF = Number(min=1.0)


@click.command()
@click.option("--phi", type=POSITIVE_PHI, help="Compound coefficient; fractional values allowed.")
@click.option("--all", "show_all", is_flag=True, help="Show every official variant with implied phi.")
@click.option("--variant", "variant_name", metavar="NAME", help="Show one official variant (b0-b7, lite0-lite4).")
@click.option("--family", type=click.Choice(["efficientnet", "lite"]), default="efficientnet",
              show_default=True, help="Which baseline and rules --phi and --all use.")
@click.option("--alpha", type=COEFF, help="Depth coefficient (default 1.2, or from --from).")
@click.option("--beta", type=COEFF, help="Width coefficient (default 1.1, or from --from).")
@click.option("--gamma", type=COEFF, help="Resolution coefficient (default 1.15, or from --from).")
@click.option("--budget", type=Number(min=1.0, min_open=True),
              help="FLOPs multiplier per step of phi that alpha*beta^2*gamma^2 should match "
                   "(default 2, or the budget --from recorded).")
@click.option("--from", "from_path", type=click.Path(path_type=Path), metavar="PATH",
              help="Coefficients JSON (docs/schemas.md) or an effscale grid run directory.")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="table (rich), or json/csv/markdown on stdout for scripts.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the variant config as JSON (for effscale transfer --variant FILE).")
@click.option("--build", is_flag=True, help="Build the Keras model and check its parameter count.")
@click.option("--target-latency", metavar="TIME", help="Largest phi (0.25 steps) whose measured latency "
              "on this device fits TIME (e.g. 30ms); builds and times models.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size the --target-latency measurements use.")
def scale(phi, show_all, variant_name, family, alpha, beta, gamma, budget, from_path, fmt, output, build,
          target_latency, batch):
    """Derive a compound-scaled EfficientNet with exact params and FLOPs (multiply-adds).

    \b
      effscale scale --phi 3                   phi=3 with the paper's 1.2/1.1/1.15
      effscale scale --phi 2.5 --beta 1.15     override a coefficient
      effscale scale --phi 3 --from runs/grid  coefficients found by effscale grid
      effscale scale --all                     B0-B7: implied phi per axis vs the formula
      effscale scale --target-latency 80ms     largest phi that runs in 80 ms here
    """
    from effscale.scale import render
    from effscale.scale import report as scale_report

    chosen = [flag for flag, on in (("--phi", phi is not None), ("--all", show_all),
                                    ("--variant", variant_name is not None),
                                    ("--target-latency", target_latency is not None)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be combined; pass one of them")
    if variant_name is not None and not variant_name.strip():
        raise click.BadParameter("give a variant name (b0-b7, lite0-lite4), or leave --variant out",
                                 param_hint="'--variant'")
    chosen = scale_report.choose_coefficients(from_path, alpha, beta, gamma, budget, family)
    if chosen.warning:
        console.warn(chosen.warning)
    coefficients, budget, family, source = chosen.coefficients, chosen.budget, chosen.family, chosen.source

    measured = None
    if target_latency is not None:
        from effscale.bench.search import measured_search, parse_latency_ms

        measured = measured_search(parse_latency_ms(target_latency), coefficients, family, batch, report=console.info)
        phi = measured["phi"]
    if phi is not None:
        if line := scale_report.tie_set_cost_line(chosen, phi):
            console.info(line)
        record = scale_report.derive(phi, coefficients, budget, family) | ({"latency": measured} if measured else {})
        records = [record]
        if fmt == "table":
            render.render_derived(record, f"Compound scaling phi={phi:g} (coefficients: {source})")
            if measured:
                from effscale.bench.report import scale_latency_line

                console.out.print(scale_latency_line(measured, batch))
        else:
            console.emit([record | {"nearest": record["nearest_official"]["name"]}],
                         render.summary_columns(render.PHI_EXTRA), fmt)
    else:
        records = scale_report.official(coefficients, family, [variant_name] if variant_name else None)
        if fmt == "table":
            render.emit_official(records, coefficients)
        else:
            console.emit([render.flatten_official(r) for r in records], render.summary_columns(render.ALL_EXTRA), fmt)

    if output is not None:
        if len(records) != 1:
            raise click.UsageError("--output writes one variant; use it with --phi or --variant")
        scale_report.write_variant(records[0], coefficients if phi is not None else None, output)
        console.info(f"wrote {output}")
    if build:
        for record in records:
            built = scale_report.check_build(record)
            console.info(f"[green]build check[/green] {record['name']}: Keras model has {built:,} params "
                         "= arithmetic count")

