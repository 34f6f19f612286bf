"""What runs the frozen prefix in the caching pass: Keras, or LiteRT (TFLite float32, XNNPACK).

The caching pass is inference only, and on CPUs the LiteRT interpreter runs an
EfficientNet at about twice Keras's throughput on TensorFlow (docs/transfer.md). So the
prefix is converted with effscale's own TFLite export (``effscale.export.convert``) and
run by its TFLite runner (``effscale.export.runtimes``), on every core. Before it fills
anything, its output is compared with Keras's on a few images; beyond ``TOLERANCE`` the
pass runs on Keras instead, with a one-line notice.

The runtime is part of the cache key (activations differ slightly between runtimes), so
the choice must not drift between a run and its resume: it depends only on the setting,
the environment, what is already on disk and, for a fresh LiteRT pass, the comparison on
the same first images. No Keras at import: the choice is testable without it.
"""

from __future__ import annotations

import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale import console
from effscale.errors import ConfigError, EffscaleError

KERAS_BATCH = 128  # the caching pass is inference only: larger batches, no gradients
LITERT_BATCH = 32  # XNNPACK ran batches of 8, 32 and 128 alike (Lite0, 160 px); 32 keeps memory small
CHECK_IMAGES = 8  # compared through both runtimes before LiteRT fills anything
# Largest |LiteRT - Keras| allowed, as a fraction of the largest |activation| on the check
# images: one float16 step is 2**-10 (9.8e-4) of a value, so a difference below this is of
# the size the float16 cache rounds away anyway. Float32 in another order stays far below.
TOLERANCE = 1e-3
LABELS = {"keras": "Keras", "litert": "LiteRT"}

Compute = Callable[[np.ndarray], np.ndarray]


@dataclass
class PrefixCompute:
    """The function that fills the cache, and how it came to be."""

    runtime: str  # "keras" or "litert": the runtime whose activations the cache will hold
    compute: Compute  # native images (N, H, W, C), 0-255 -> activations (N, ...)
    convert_s: float = 0.0  # conversion and comparison, counted in the caching pass's time
    difference: float | None = None  # max |LiteRT - Keras| / max |Keras| on the check images


def litert_available() -> bool:
    """The Keras backend is TensorFlow, and its TFLite converter and a TFLite interpreter import."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf

        tf.lite.TFLiteConverter  # noqa: B018 - only whether it exists
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
        except ImportError:
            tf.lite.Interpreter  # noqa: B018 - the fallback TFLiteRunner uses
    except (ImportError, AttributeError):
        return False
    return True


def key_describe(describe: dict, runtime: str) -> dict:
    """What the cache key hashes for ``runtime``. Keras keeps the key caches had before the
    runtime was a choice, so caches filled then are still read; LiteRT adds itself."""
    return describe if runtime == "keras" else {**describe, "prefix_runtime": runtime}


def choose_runtime(requested: str, precision: str, started: Callable[[str], bool]) -> str:
    """The runtime to fill the cache with, before anything is converted.

    ``started(runtime)``: whether a cache under that runtime's key already holds logged
    chunks. ``auto`` continues such a pass (LiteRT's first, then Keras's, so a pass that fell
    back to Keras resumes on Keras), else picks LiteRT when it runs the run's float32
    arithmetic and imports, else Keras.
    """
    if requested != "auto":
        return requested
    for runtime in ("litert", "keras"):
        if started(runtime):
            return runtime
    return "litert" if precision == "float32" and litert_available() else "keras"


def relative_difference(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |candidate - reference| over max |reference| (NaN-safe: NaN compares as a miss)."""
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = float(np.abs(np.asarray(candidate, np.float32) - reference).max()) if reference.size else 0.0
    return diff / max(scale, float(np.finfo(np.float32).tiny))


def keras_compute(prefix) -> Compute:
    return lambda images: prefix.predict(np.asarray(images, np.float32), batch_size=KERAS_BATCH, verbose=0)


def litert_compute(prefix) -> Compute:
    """The prefix converted to TFLite float32 and loaded in the LiteRT interpreter (all cores)."""
    from effscale.export.convert import export
    from effscale.export.runtimes import TFLiteRunner

    work = tempfile.TemporaryDirectory(prefix="effscale-prefix-")
    try:
        runner = TFLiteRunner(export(prefix, Path(work.name) / "prefix.tflite", "tflite"))
    except BaseException:
        work.cleanup()
        raise
    weakref.finalize(runner, work.cleanup)  # the interpreter may map the file: it goes with the runner
    return lambda images: runner.predict(np.asarray(images, np.float32), LITERT_BATCH)


def open_compute(runtime: str, prefix, check_images: np.ndarray, required: bool = False) -> PrefixCompute:
    """``runtime``'s compute; LiteRT only once it matches Keras on ``check_images``, else Keras.
    ``required`` (``--prefix-runtime litert``): LiteRT missing is an error, not a fallback."""
    on_keras = keras_compute(prefix)
    if runtime == "keras":
        return PrefixCompute("keras", on_keras)
    if not litert_available():
        if required:
            raise ConfigError("--prefix-runtime litert needs the TensorFlow backend and a TFLite interpreter "
                              "(pip install 'effscale[export]'); pass --prefix-runtime keras or auto")
        console.info("prefix runtime: LiteRT is not available here; running the prefix on Keras")
        return PrefixCompute("keras", on_keras)
    t0 = time.monotonic()
    try:
        on_litert = litert_compute(prefix)
    except EffscaleError as exc:
        console.info(f"prefix runtime: the LiteRT conversion failed ({console.one_line(exc, 160)}); "
                     "running the prefix on Keras")
        return PrefixCompute("keras", on_keras, time.monotonic() - t0)
    sample = np.asarray(check_images[:CHECK_IMAGES], np.float32)
    difference = relative_difference(np.asarray(on_keras(sample), np.float32), on_litert(sample))
    convert_s = time.monotonic() - t0
    if not difference <= TOLERANCE:
        console.info(f"prefix runtime: LiteRT differs from Keras by {difference:.1e} of the activation scale on "
                     f"{len(sample)} images (tolerance {TOLERANCE:g}); running the prefix on Keras")
        return PrefixCompute("keras", on_keras, convert_s, difference)
    console.info(f"prefix runtime: LiteRT (converted in {convert_s:.1f} s; largest difference from Keras "
                 f"{difference:.1e} of the activation scale on {len(sample)} images, tolerance {TOLERANCE:g})")
    return PrefixCompute("litert", on_litert, convert_s, difference)
