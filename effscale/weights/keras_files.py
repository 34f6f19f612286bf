"""Keras weight files: keras.applications' ImageNet ``.h5`` and ``.keras``/``.h5`` files,
checked against the backbone's architecture before anything is copied into it.

The PyTorch side (``.pth`` and the Lite registry packages) is ``effscale.weights.pth``/``load``;
``effscale.weights.resolve`` picks between them for every ``--weights`` kind.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402

from effscale.console import one_line  # noqa: E402
from effscale.errors import WeightsError  # noqa: E402

log = logging.getLogger("effscale.weights")

BACKBONE = "efficientnet"  # the backbone's layer name inside a transfer model


# keras.applications' ImageNet files (keras/src/applications/efficientnet.py, notop hashes).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"
KERAS_NOTOP_MD5 = {
    "b0": "50bc09e76180e00e4465e1a485ddc09d", "b1": "74c4e6b3e1f6a1eea24c589628592432",
    "b2": "111f8e2ac8aa800a7a99e3239f7bfb39", "b3": "af6d107764bb5b1abb91932881670226",
    "b4": "ebc24e6d6c33eaebbd558eafbeedf1ba", "b5": "38879255a25d3c92d5e44e04ae6cec6f",
    "b6": "9ecce42647a20130c1f39a5d4cb75743", "b7": "cbcfe4450ddf6f3ad90b1b398090fe4a",
}


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def imagenet_weights_file(variant: str) -> Path:
    """The cached keras.applications ``efficientnetbN_notop.h5``, downloaded if missing."""
    fname = f"efficientnet{variant}_notop.h5"
    cached = keras_cache_dir() / "models" / fname
    if cached.is_file():
        return cached
    try:
        return Path(keras.utils.get_file(fname, KERAS_WEIGHTS_URL + fname, cache_subdir="models",
                                         file_hash=KERAS_NOTOP_MD5[variant]))
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception for URL failures
        reason = one_line(exc, 300).rsplit(" -- ", 1)[-1][:120]  # "URL fetch failure on <url>: None -- <why>"
        raise WeightsError(
            f"cannot download ImageNet weights {fname} ({reason}); on an offline machine copy "
            f"{fname} to {cached} or pass --weights none|PATH"
        ) from None


def _h5_shapes(path: Path) -> list[tuple]:
    """Shapes of every array in an HDF5 weights file (Keras 3 or legacy layout), sorted."""
    import h5py

    shapes = []
    with h5py.File(path, "r") as handle:
        if "model_weights" in handle:  # a whole legacy model.save(): skip its optimizer state
            handle = handle["model_weights"]
        handle.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(shapes)


def load_h5(backbone, path: Path, name: str) -> None:
    # Keras loads .weights.h5 by position and skips what does not fit with a warning, so a
    # deeper network of the same widths would load "successfully" into the wrong layers.
    # Compare the arrays first: the same architecture holds exactly the same shapes.
    try:
        theirs = _h5_shapes(path)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {path} ({one_line(exc, 120)})") from None
    mine = sorted(tuple(w.shape) for w in backbone.weights)
    if theirs != mine:
        raise WeightsError(
            f"weights file {path} does not fit {name}: it holds {len(theirs)} arrays where {name} "
            f"has {len(mine)} (or of other shapes); it is for another architecture"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns per skipped layer before it raises
            backbone.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/KeyError/OSError variously
        raise WeightsError(
            f"weights file {path} does not fit {name} ({one_line(exc, 160)}); it was probably saved "
            "for another variant or image size"
        ) from None


def load_keras_file(backbone, path: Path, name: str) -> None:
    """Copy weights by layer name from a ``.keras`` model (a transfer run's or an EfficientNet)."""
    try:
        source = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {path} ({one_line(exc, 160)})") from None
    try:
        source = source.get_layer(BACKBONE)
    except ValueError:
        pass
    by_name = {layer.name: layer for layer in source.layers}
    mine_names = {layer.name for layer in backbone.layers}
    extra = [layer.name for layer in source.layers if layer.weights and layer.name not in mine_names]
    if extra:
        raise WeightsError(
            f"weights file {path} is for another architecture: it has {len(extra)} weighted layers that {name} "
            f"lacks (e.g. {extra[0]}), so it is a deeper or different network"
        )
    copied = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            raise WeightsError(f"weights file {path} has no layer {layer.name!r}; it is not an EfficientNet like {name}")
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            raise WeightsError(
                f"weights file {path} is for another architecture: layer {layer.name} has shapes {theirs} "
                f"there but {mine} in {name}"
            )
        layer.set_weights(other.get_weights())
        copied += 1
    log.info("copied %d layers from %s", copied, path)

