"""One small interface over every runtime effscale measures or verifies.

A runner holds a loaded model and offers ``prepare(batch)`` (fix the batch size, build or
resize whatever the runtime needs), ``feed(images)`` (0-255 float or uint8 NHWC pixels
to the runtime's own input type, quantised for integer models) and ``run(fed)`` (one
forward pass, output as float32 numpy). ``feed`` is kept out of ``run`` so that timing
measures the runtime, not numpy conversions.

Compiled paths: Keras under TensorFlow runs ``model(x, training=False)`` inside a
``tf.function`` traced once per batch size (no Python per layer); under JAX or torch it
uses ``predict_on_batch`` (jitted by Keras). TFLite uses the LiteRT interpreter
(``ai-edge-litert``; TensorFlow's ``tf.lite.Interpreter`` when that is not installed),
ONNX onnxruntime's CPU provider, a SavedModel its ``serving_default`` signature.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from effscale.backend import native_stderr_captured
from effscale.errors import EffscaleError
from effscale.export.artifacts import ArtifactError


def _one_line(exc: Exception, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]


def effective_threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 1


class Runner:
    kind = "?"
    input_size: int | None = None

    def prepare(self, batch: int) -> None:
        self.batch = batch

    def feed(self, images: np.ndarray):
        return np.asarray(images, dtype=np.float32)

    def run(self, fed) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        """Outputs for any number of images, in batches of ``batch`` (the tail padded)."""
        out = []
        self.prepare(batch)
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(self.run(self.feed(chunk))[: batch - pad])
        return np.concatenate(out)


class KerasRunner(Runner):
    kind = "keras"

    def __init__(self, model):
        import keras

        self.model = model
        shape = model.input_shape
        self.input_size = shape[1] if len(shape) == 4 and shape[1] == shape[2] else None
        self.backend = keras.backend.backend()
        self._fn = None

    def prepare(self, batch: int) -> None:
        super().prepare(batch)
        if self.backend == "tensorflow":
            import tensorflow as tf

            model = self.model
            size = self.input_size
            spec = tf.TensorSpec((batch, size, size, 3), tf.float32)
            self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def feed(self, images):
        x = np.asarray(images, dtype=np.float32)
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.constant(x)
        return x

    def run(self, fed):
        if self._fn is not None:
            return self._fn(fed).numpy()
        return np.asarray(self.model.predict_on_batch(fed))


class TFLiteRunner(Runner):
    kind = "tflite"

    def __init__(self, path: Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the LiteRT package is optional; TensorFlow still ships one
            from tensorflow.lite import Interpreter
        try:
            with native_stderr_captured():  # LiteRT's "Created ... XNNPACK delegate" notice
                self.interpreter = Interpreter(model_path=str(path), num_threads=effective_threads(threads))
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"cannot load TFLite model {path}: {_one_line(exc)}") from None
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.input_size = int(self.inp["shape"][1])

    def prepare(self, batch: int) -> None:
        super().prepare(batch)
        shape = [batch, *(int(d) for d in self.inp["shape"][1:])]  # any image shape, square or not
        self.interpreter.resize_tensor_input(self.inp["index"], shape)
        with native_stderr_captured():
            self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    @property
    def input_dtype(self):
        return self.inp["dtype"]

    def feed(self, images):
        x = np.asarray(images, dtype=np.float32)
        dtype = self.inp["dtype"]
        if dtype == np.float32:
            return x
        scale, zero = self.inp["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def run(self, fed):
        self.interpreter.set_tensor(self.inp["index"], fed)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        if y.dtype != np.float32:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y


class OnnxRunner(Runner):
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EffscaleError("onnxruntime is not installed; run: pip install 'effscale[export]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = effective_threads(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtifactError(f"cannot load ONNX model {path}: {_one_line(exc)}") from None
        self.name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.input_size = shape[1] if isinstance(shape[1], int) else None

    def run(self, fed):
        return np.asarray(self.session.run(None, {self.name: fed})[0])


class SavedModelRunner(Runner):
    kind = "savedmodel"

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(str(path))
            self.fn = self.loaded.signatures["serving_default"]
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"cannot load SavedModel {path}: {_one_line(exc)}") from None
        spec = self.fn.structured_input_signature[1]
        self.name, tensor = next(iter(spec.items()))
        self.input_size = tensor.shape[1]

    def feed(self, images):
        import tensorflow as tf

        return tf.constant(np.asarray(images, dtype=np.float32))

    def run(self, fed):
        return next(iter(self.fn(**{self.name: fed}).values())).numpy()


def load_keras_file(path: Path):
    import keras

    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a bad file
        raise ArtifactError(f"cannot load Keras model {path}: {_one_line(exc)}") from None


def runner_for(kind: str, path: Path | None = None, model=None, threads: int | None = None) -> Runner:
    """The runner of an artifact ``kind`` at ``path``, or of a Keras ``model`` already built."""
    if model is not None:
        return KerasRunner(model)
    if kind == "keras":
        return KerasRunner(load_keras_file(path))
    if kind == "tflite":
        return TFLiteRunner(path, threads)
    if kind == "onnx":
        return OnnxRunner(path, threads)
    if kind == "savedmodel":
        return SavedModelRunner(path)
    raise ArtifactError(f"unknown artifact type {kind!r}")
