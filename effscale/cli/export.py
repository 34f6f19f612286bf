"""``effscale export``: SavedModel, TFLite (float32/float16/int8) or ONNX, verified on real images."""

from __future__ import annotations

from pathlib import Path

import click

from effscale import console


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path), metavar="[MODEL]")
@click.option("--variant", metavar="NAME|FILE", help="Export b0-b7, lite0-lite4 or a variant JSON instead of MODEL.")
@click.option("--weights", metavar="lite0|lite1|lite2|PATH", help="ImageNet weights for --variant (default: random).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path),
              help="Artifact path: NAME.tflite, NAME.onnx, or a directory name for a SavedModel.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "tflite", "onnx"]),
              help="Artifact type  [default: from --output's suffix].")
@click.option("--quantize", type=click.Choice(["none", "float16", "int8"]), default="none", show_default=True,
              help="TFLite only: float16 weights, or full-integer int8 (needs --calibration).")
@click.option("--calibration", metavar="DATASET", help="Representative images for int8: folder, .tar.gz or .npy.")
@click.option("--calibration-split", metavar="SPLIT", help="Split of --calibration  [default: val, else test, else train].")
@click.option("--calibration-size", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images drawn (seeded) from --calibration.")
@click.option("--verify", "verify_data", metavar="DATASET",
              help="Images to compare artifact and Keras on (e.g. Imagenette's .tar.gz).")
@click.option("--label-map", metavar="CSV", help="Also report top-1 accuracy of both (as in effscale evaluate).")
@click.option("--verify-limit", type=click.IntRange(min=1), help="Verify on a seeded subset of this many images.")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="Exit 1 below this top-1 agreement  [default: 0.99 float, 0.90 int8].")
@click.option("--threads", type=click.IntRange(min=1), help="Interpreter threads (default: all cores).")
def export(source, variant, weights, output, fmt, quantize, calibration, calibration_split, calibration_size,
           verify_data, label_map, verify_limit, min_agreement, threads):
    """Write a deployable artifact and check it against the Keras model.

    MODEL: a transfer run directory or a .keras file. Artifacts take 0-255 RGB NHWC
    pixels at the model's resolution, as effscale's Keras models do.

    \b
      effscale export --variant lite0 --weights lite0 -o lite0.tflite --verify imagenette.tar.gz
      effscale export runs/flowers -o flowers-int8.tflite --quantize int8 --calibration data/
      effscale export runs/flowers -o flowers.onnx
    """
    from effscale.export.artifacts import check_output_path, output_kind

    kind = output_kind(output, fmt)
    check_output_path(output)
    if quantize != "none" and kind != "tflite":
        raise click.UsageError(f"--quantize {quantize} applies to TFLite only, not {kind}")
    if quantize == "int8" and not calibration:
        raise click.UsageError("--quantize int8 needs --calibration DATASET (representative images)")
    if source is not None and variant is not None:
        raise click.UsageError("pass either MODEL or --variant, not both")
    if source is None and variant is None:
        raise click.UsageError("pass MODEL (a transfer run directory or .keras file) or --variant")

    from effscale.export import convert, verify

    convert.check_calibration(calibration)
    model, description = convert.load_source(source, variant, weights)
    size = int(model.input_shape[1])
    samples = (convert.calibration_images(calibration, size, calibration_size, calibration_split)
               if quantize == "int8" else None)
    path = convert.export(model, output, kind, quantize, samples)
    console.info(f"wrote {path} ({kind}{'' if quantize == 'none' else ', ' + quantize}) from {description}")
    if not verify_data:
        console.warn("not verified: pass --verify DATASET to compare the artifact with Keras on real images")
        return
    x, labels, what = verify.verify_images(verify_data, size, limit=verify_limit, label_map=label_map)
    threshold = verify.DEFAULT_MIN_AGREEMENT[quantize] if min_agreement is None else min_agreement
    result = verify.verify(model, path, kind, x, labels, threshold, threads)
    from effscale.fsutil import atomic_write_json

    atomic_write_json(Path(f"{path}.verify.json"), result | {"data": what, "source": description,
                                                              "quantize": quantize})
    console.out.print(verify.verification_line(result), highlight=False)
    if not result["passed"]:
        raise convert.ExportError(f"{path.name} agrees with Keras on {100 * result['agreement']:.1f}% of top-1, "
                                  f"below {100 * threshold:.1f}%; the artifact is kept for inspection")
