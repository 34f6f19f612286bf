"""The linear probe's feature cache: backbone features computed once per image set and
stored as ``<cache>/features/<key>.npy``, keyed by everything they depend on."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effscale.transfer.config import TransferConfig  # noqa: E402

log = logging.getLogger("effscale.transfer.train")

# The feature pass is inference only (no gradients, no optimizer state), so it can use
# larger batches than training: fewer, fuller steps; 128 images at 224 px stay well under
# a gigabyte of activations for B0.
MIN_FEATURE_BATCH = 128


def feature_cache_key(config: TransferConfig, spec, image_size: int, weights_info: dict, x: np.ndarray) -> str:
    """What the backbone's features depend on: architecture, size, pooling, weights, images."""
    weights = dict(weights_info)
    if weights.get("weights") == "none":
        weights["seed"] = config.seed  # random initial weights depend on the seed
    if weights.get("file"):
        stat = Path(weights["file"]).stat()
        weights["stat"] = [stat.st_size, stat.st_mtime_ns]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([spec.to_dict(), image_size, config.pooling, config.precision, weights,
                              list(x.shape), keras.backend.backend()], sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(x).data)
    return digest.hexdigest()


def feature_cache_dir(config: TransferConfig) -> Path:
    from effscale.data.datasets import default_cache_dir

    return (Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()).parent / "features"


def features(feature_model, x, config, num_classes, cache: Path, key: str) -> tuple[np.ndarray, bool]:
    """Backbone features of ``x``: read from ``cache/<key>.npy`` or computed once and stored."""
    from effscale.data.datasets import make_batches

    path = cache / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    batches = make_batches(x, np.zeros(len(x), np.int64), batch_size=max(config.batch_size, MIN_FEATURE_BATCH),
                           num_classes=num_classes, training=False)
    feats = feature_model.predict(batches, verbose=0).astype(np.float32)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.{os.getpid()}.tmp.npy"
        np.save(tmp, feats)
        os.replace(tmp, path)
    except OSError as exc:  # a cache is an optimisation
        log.warning("could not cache features in %s: %s", cache, exc)
    return feats, False

