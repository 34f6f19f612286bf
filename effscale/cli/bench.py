"""``effscale bench``: measured latency, throughput and memory beside params, MACs, activations."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console

POSITIVE = click.IntRange(min=1)
# Block medians further apart than this say the machine changed speed mid-run.
SPREAD_WARN_PCT = 10.0


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[MODEL_PATH]...")
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="b0-b7, lite0-lite4 or a variant JSON (repeatable).")
@click.option("--phi", "phis", multiple=True, type=click.FloatRange(min=0.0), help="Compound phi (repeatable).")
@click.option("--family", type=click.Choice(["efficientnet", "lite"]), default="efficientnet", show_default=True,
              help="Baseline --phi scales.")
@click.option("--resolution", type=POSITIVE, help="Input side for --variant/--phi (default: the variant's).")
@click.option("--batch", type=POSITIVE, default=1, show_default=True, help="Batch size of the latency runs.")
@click.option("--runs", type=click.IntRange(min=30), default=50, show_default=True,
              help="Timed latency runs (after warm-up) per model.")
@click.option("--blocks", type=POSITIVE, default=5, show_default=True,
              help="Spread the runs over this many blocks; p50 is the median of block medians.")
@click.option("--block-gap", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="Seconds between the starts of one model's blocks.")
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True,
              help="Untimed calls after the first (tracing) call.")
@click.option("--throughput-batch", type=click.IntRange(min=0), default=32, show_default=True,
              help="Batch for the throughput runs (0: skip).")
@click.option("--throughput-runs", type=POSITIVE, default=5, show_default=True, help="Timed throughput batches.")
@click.option("--train", is_flag=True, help="Also time a training step (SGD, batch --train-batch).")
@click.option("--train-batch", type=POSITIVE, default=8, show_default=True, help="Batch of the --train step.")
@click.option("--threads", type=POSITIVE, help="Intra-op threads (default: the runtime's, all cores).")
@click.option("--same-process", is_flag=True,
              help="Measure every model in this process: faster, but memory after the first model is wrong.")
@click.option("--format", "fmt", type=click.Choice(console.FORMATS), default="table", show_default=True,
              help="table (rich), or json/csv/markdown on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write latency vs MACs as PNG.")
def bench(paths, variants, phis, family, resolution, batch, runs, blocks, block_gap, warmup, throughput_batch, throughput_runs,
          train, train_batch, threads, same_process, fmt, plot):
    """Measure batch latency (p50/p90), throughput and peak memory on this device.

    MODEL_PATH: a transfer run directory, a .keras file, or an exported artifact
    (.tflite, .onnx, SavedModel directory).

    \b
      effscale bench --variant b0 --variant lite0
      effscale bench --phi 0 --phi 0.5 --phi 1 --plot latency.png
      effscale bench lite0.tflite lite0-int8.tflite --throughput-batch 0
    """
    from effscale.bench.report import COLUMNS, EXPORT_COLUMNS, TRAIN_COLUMN, correlation_caption, correlations
    from effscale.bench.targets import resolve_targets
    from effscale.export.artifacts import check_output_path

    targets = resolve_targets(variants, phis, paths, family=family, resolution=resolution)
    if plot is not None:
        check_output_path(plot)

    from effscale.bench.interleave import measure_all
    from effscale.bench.measure import BenchSettings

    if blocks > runs:
        raise click.BadParameter(f"{blocks} blocks need at least {blocks} runs", param_hint="'--blocks'")
    settings = BenchSettings(batch=batch, runs=runs, warmup=warmup, throughput_batch=throughput_batch,
                             throughput_runs=throughput_runs, train=train, train_batch=train_batch, threads=threads,
                             blocks=blocks, block_gap_s=block_gap)
    records = measure_all(targets, settings, isolated=not same_process, progress=console.info)
    for record in records:
        if record["spread_pct"] > SPREAD_WARN_PCT:
            console.warn(f"{record['name']}: block medians {min(record['block_p50_ms']):.1f}-"
                         f"{max(record['block_p50_ms']):.1f} ms: the machine's speed changed during the run "
                         "(p50 is their median; rerun to compare runs)")
    if any(record.get("threads_applied") is False for record in records):
        console.warn(f"--threads {threads} was not applied: TensorFlow had already started its thread pools in "
                     "this process, so the runtime's default is in force (run without --same-process)")
    corr = correlations(records)
    columns = COLUMNS + ([TRAIN_COLUMN] if train else [])
    first = records[0]
    caption = (f"ms at batch {batch}, {runs} runs in {blocks} blocks; cpu50: CPU ms/call; trace: 1st call, s; "
               f"threads {_threads_in_force(first, threads)}/{first['cpu_count']}")
    if fmt == "json":
        console.emit([{"records": records, "correlations": corr, "settings": settings.to_dict()}], columns, fmt)
    else:
        console.emit(records, columns if fmt == "table" else EXPORT_COLUMNS, fmt,
                     title="effscale bench", caption=caption)
    if corr and fmt in ("table", "markdown"):
        if fmt == "markdown":
            click.echo(f"\n{correlation_caption(corr)}")
        else:
            console.info(correlation_caption(corr))
    if plot is not None:
        from effscale.bench.report import latency_vs_macs

        console.info(f"wrote {latency_vs_macs(records, plot, title=f'latency vs MACs, batch {batch}')}")


def _threads_in_force(record: dict, requested: int | None) -> str:
    """The intra-op threads the record ran with: TF's own figure, else the request if it was applied."""
    if record.get("tf_intra_op"):
        return str(record["tf_intra_op"])
    if requested and record.get("threads_applied", True):
        return str(requested)
    return "all"
