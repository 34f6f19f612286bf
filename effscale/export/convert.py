"""Writing artifacts: SavedModel, TFLite (float32, float16, int8) and ONNX.

Every artifact takes what effscale's Keras models take: float 0-255 RGB pixels, NHWC, at
the model's resolution (the int8 TFLite takes uint8 pixels, the same numbers). Rescaling
and normalisation stay inside the graph.

Converters: Keras's ``ExportArchive`` for the SavedModel (inference mode); tf2onnx on that SavedModel
for ONNX; TensorFlow's ``TFLiteConverter`` from it for TFLite, because only it takes
the quantisation settings (float16 weights; full-integer int8 with a representative
dataset). Every artifact is written beside its destination and renamed into place, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from effscale.errors import ConfigError, EffscaleError
from effscale.export.artifacts import ArtifactError, check_output_path

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZE = ("none", "float16", "int8")
ONNX_OPSET = 17  # supported by every onnxruntime since 1.14


class ExportError(EffscaleError):
    """A conversion failed or an artifact did not verify."""


def _one_line(exc: Exception, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]


def load_source(source: Path | None = None, variant: str | None = None, weights: str | None = None):
    """``(keras model, description)`` of a transfer run / .keras file, or --variant [--weights]."""
    from effscale import evaluate as E

    if (source is None) == (variant is None):
        raise ConfigError("pass either a model (a transfer run directory or .keras file) or --variant")
    if source is not None:
        loaded = E.model_from_file(source)
        return loaded.model, loaded.description
    if weights:
        loaded = E.model_from_variant(variant, weights)
        return loaded.model, loaded.description
    from effscale.net.keras_model import build_model
    from effscale.schemas import resolve_network

    name, spec = resolve_network(variant)
    return build_model(spec, name=name), f"{name} (random weights)"


def check_calibration(dataset: str | None) -> np.ndarray | None:
    """A .npy calibration array, read and checked (N x H x W x 3) before any model is built;
    None for datasets, whose decoder always gives RGB."""
    if not dataset or Path(dataset).suffix != ".npy":
        return None
    path = Path(dataset)
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read calibration array {path}: {_one_line(exc)}") from None
    if x.ndim != 4 or x.shape[-1] != 3:
        channels = x.shape[-1] if x.ndim == 4 else "no channel axis"
        raise ConfigError(f"calibration data {path} has shape {tuple(x.shape)} ({channels} channels); the "
                          "model takes N x H x W x 3 RGB images")
    return x


def calibration_images(dataset: str, size: int, count: int = 200, split: str | None = None,
                       seed: int = 0) -> np.ndarray:
    """Up to ``count`` images (0-255 float32, ``size`` square) from a dataset or a .npy array."""
    from effscale.evaluate import load_images, resize_images

    path = Path(dataset)
    if path.suffix == ".npy":
        x = check_calibration(dataset)
        x = x[:count]
        if x.shape[1:3] != (size, size):
            x = resize_images(np.clip(x, 0, 255).astype(np.uint8), size)
    else:
        x = resize_images(load_images(dataset, split=split, limit=count, seed=seed).x, size)
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ConfigError(f"calibration data {dataset} holds no images")
    if float(x.max()) <= 1.0:
        raise ConfigError(f"calibration data {dataset} spans [{x.min():.3g}, {x.max():.3g}]; the model takes "
                          "0-255 pixels (do not divide by 255)")
    return x


def _replace(tmp: Path, out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _tflite_bytes(saved_model: Path, quantize: str, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None:
            raise ConfigError("--quantize int8 needs --calibration DATASET (representative images)")

        def representative():
            for image in calibration:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # uint8 in: pixels 0-255 are exact; float out: probabilities comparable with Keras.
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    from effscale.backend import native_stderr_captured

    with native_stderr_captured():  # the converter's native progress lines
        return converter.convert()


@contextlib.contextmanager
def _root_logger_kept():
    """absl's ``logging.info`` (the SavedModel writer's "signatures" notice, say) calls
    ``logging.basicConfig()`` when absl is not set up, which leaves a stderr handler on the
    root logger: every later INFO record of the process (a transfer run's debug log) would
    reach the console. Remove what was added."""
    before = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)


def _saved_model(model, saved: Path) -> None:
    """The SavedModel of ``model(x, training=False)``. Keras's ``model.export`` traces the
    model without a training flag, and a backbone nested in another model (a transfer run's
    model, its frozen prefix) then keeps its dropout and drop-connect active in the
    artifact: outputs that change from call to call, and random ops TFLite cannot convert."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, *model.input.shape[1:]), model.input.dtype, name=model.input.name)
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(str(saved), verbose=False)


def _onnx_from_saved_model(saved: Path, out: Path) -> None:
    """tf2onnx's command line on the SavedModel. Keras's own ONNX export traces the live
    model and turns the Normalization layer's cached mean and variance into graph inputs
    the artifact then demands; the SavedModel has them as constants."""
    import subprocess
    import sys

    try:
        import tf2onnx  # noqa: F401 - only to give the install hint early
    except ImportError:
        raise ExportError("ONNX export needs tf2onnx; run: pip install 'effscale[export]'") from None
    done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(out),
                           "--opset", str(ONNX_OPSET)], capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise ExportError(f"tf2onnx failed: {tail[0][:200]}")


def export(model, out: str | os.PathLike, fmt: str, quantize: str = "none",
           calibration: np.ndarray | None = None) -> Path:
    """Write ``model`` as ``fmt`` at ``out`` (atomically) and return the path."""
    out = check_output_path(out)
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if quantize != "none" and fmt != "tflite":
        raise ConfigError(f"--quantize {quantize} applies to TFLite only, not {fmt}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work, _root_logger_kept():
        work = Path(work)
        saved = work / "saved_model"
        try:
            _saved_model(model, saved)
            if fmt == "onnx":
                _onnx_from_saved_model(saved, work / "model.onnx")
                _replace(work / "model.onnx", out)
                return out
            if fmt == "savedmodel":
                _replace(saved, out)
                return out
            blob = _tflite_bytes(saved, quantize, calibration)
        except EffscaleError:
            raise
        except Exception as exc:  # noqa: BLE001 - converters raise many types
            raise ExportError(f"{fmt} conversion failed: {type(exc).__name__}: {_one_line(exc)}") from None
        (work / "model.tflite").write_bytes(blob)
        _replace(work / "model.tflite", out)
    return out
