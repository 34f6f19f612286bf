"""How ``effscale scale`` shows its records: column lists and the per-variant layout.

No Keras here. The ``--all`` table goes through ``console.emit``, which splits it to fit
the terminal; ``--phi`` uses a vertical layout (one row per quantity) beside the nearest
official variant, which is readable at 80 columns.
"""

from __future__ import annotations

from rich.table import Table

from effscale import console
from effscale.console import Column, fmt_float, fmt_gmacs, fmt_int, fmt_ratio


def fmt_mega(value) -> str:
    return f"{value / 1e6:.1f}"


def summary_columns(extra: list[Column] = (), with_source: bool = True) -> list[Column]:
    return [
        Column("name", "variant", justify="left", repeat=True),
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


# ``scale --all`` as a table: four views of the same rows, each narrower than 80 columns.
OFFICIAL_VIEWS = [
    ("Official variants", ["phi", "width", "depth", "resolution", "dropout", "params", "flops"], None),
    ("Activations at batch 1", ["acts", "peak_act_bytes"],
     "acts: conv output sizes summed (Dollar et al.), in millions; peak: live fp32 activations"),
    ("The phi each axis implies under alpha={alpha:g}, beta={beta:g}, gamma={gamma:g}",
     ["flops_vs_base", "phi_depth", "phi_width", "phi_resolution", "phi_flops"],
     "phi(FLOPs): log2 of the MACs ratio, the phi the paper's 2^phi rule assigns"),
    ("The formula at the same phi: depth alpha^phi, width beta^phi, resolution gamma^phi",
     ["formula_depth", "formula_width", "formula_resolution", "formula_params", "formula_flops"], None),
]


def emit_official(records: list[dict], coefficients) -> None:
    """``scale --all`` in a terminal: the published numbers, implied phi, and the formula."""
    by_key = {col.key: col for col in summary_columns(ALL_EXTRA)}
    rows = [flatten_official(r) for r in records]
    for title, keys, caption in OFFICIAL_VIEWS:
        columns = [by_key["name"]]
        for key in keys:
            col = by_key[key]
            # Inside the formula view "formula" is the title's word, not every header's.
            columns.append(Column(col.key, col.header.removeprefix("formula "), col.fmt, col.justify))
        console.emit(rows, columns, "table", title=title.format(**coefficients.to_dict()), caption=caption)


def flatten_official(record: dict) -> dict:
    flat = dict(record)
    for key in ("depth", "width", "resolution", "flops", "params"):
        flat[f"formula_{key}"] = record["formula"][key]
    return flat


def render_derived(record: dict, title: str) -> None:
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
