"""Datasets: ``load_dataset(name)`` for every kind a command accepts.

* ``cifar100`` / ``cifar10``: ``effscale.data.cifar`` (keras.datasets, or the original
  archives offline via ``data_dir``);
* an image folder or ``.tar.gz`` with ``train/<class>/`` and ``val|test/<class>/``:
  ``effscale.data.folders``;
* ``synthetic``: learnable random images for smoke tests (below).

Images stay uint8 NHWC at native size; batching, resizing and augmentation are
``effscale.data.pipeline``. The names of those modules that callers use are re-exported
here, so ``from effscale.data.datasets import load_dataset, make_batches`` keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from effscale.data.cifar import CIFAR, CIFAR10_CLASSES, CIFAR100_CLASSES, load_cifar, read_cifar_dir  # noqa: F401
from effscale.data.folders import IMAGE_EXTENSIONS, load_image_folder, read_image_folder  # noqa: F401
from effscale.data.pipeline import (  # noqa: F401
    AUGMENTATIONS, augmentation_layers, check_augment, make_batches, resizing_inputs,
)
from effscale.data.records import (  # noqa: F401
    HOLDOUT_FRACTION, VAL_SPLITS, ImageDataset, check_classes, default_cache_dir,
)
from effscale.errors import DatasetError

# ``synthetic`` without --limit-train/--limit-val: enough images for every class to be
# learnable in a few epochs, few enough to generate in well under a second.
SYNTHETIC_TRAIN = 1000
SYNTHETIC_VAL = 200
SYNTHETIC_SIZE = 32  # CIFAR's size, the smallest the models accept
SYNTHETIC_CLASSES = 10  # as CIFAR-10: chance is 10%, so learning is easy to see


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    limit_train: int | None = None,
    limit_val: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load ``name`` ("cifar100", "cifar10", "synthetic", or an image folder / .tar.gz).

    ``image_size`` only matters for image folders (the common stored size, see
    ``effscale.data.folders``); CIFAR stays 32x32 and synthetic is generated at ``image_size or 32``.
    ``limit_train`` / ``limit_val`` keep a seeded random subset (order preserved).
    Raises ``DatasetError`` for image folders that cannot train (``records.check_classes``).
    """
    key = str(name).strip()
    if key.lower() in CIFAR:
        dataset = load_cifar(key.lower(), data_dir)
    elif key.lower() == "synthetic":
        dataset = synthetic_dataset(
            num_train=limit_train or SYNTHETIC_TRAIN, num_val=limit_val or SYNTHETIC_VAL,
            image_size=image_size or SYNTHETIC_SIZE, seed=seed
        )
    else:
        # A user's folders, checked whole (before any --limit): a refusal names the folder
        # to fix, never an unlucky subset. CIFAR and synthetic are complete by construction.
        dataset = check_classes(load_image_folder(key, cache_dir=cache_dir, image_size=image_size, seed=seed))
    return subset(dataset, limit_train, limit_val, seed)


def subset(dataset: ImageDataset, limit_train: int | None, limit_val: int | None, seed: int = 0) -> ImageDataset:
    for value, flag in ((limit_train, "limit_train"), (limit_val, "limit_val")):
        if value is not None and value < 1:
            raise DatasetError(f"{flag} must be at least 1, got {value}")
    rng = np.random.default_rng(seed)

    def pick(x, y, limit):
        if limit is None or limit >= len(y):
            return x, y
        keep = np.sort(rng.choice(len(y), size=limit, replace=False))
        return x[keep], y[keep]

    x_train, y_train = pick(dataset.x_train, dataset.y_train, limit_train)
    x_val, y_val = pick(dataset.x_val, dataset.y_val, limit_val)
    if x_train is dataset.x_train and x_val is dataset.x_val:
        return dataset
    return ImageDataset(dataset.name, x_train, y_train, x_val, y_val, dataset.class_names, dataset.source)


def synthetic_dataset(num_train: int = SYNTHETIC_TRAIN, num_val: int = SYNTHETIC_VAL,
                      num_classes: int = SYNTHETIC_CLASSES, image_size: int = SYNTHETIC_SIZE, seed: int = 0) -> ImageDataset:
    """Learnable random images: each class has its own colour and coarse pattern, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, size=(num_classes, 4, 4, 3))
    # Nearest-neighbour upsample each class's 4x4 pattern to the image size.
    reps = -(-image_size // 4)
    prototypes = coarse.repeat(reps, axis=1).repeat(reps, axis=2)[:, :image_size, :image_size]

    def make(n: int, offset: int):
        labels = (np.arange(n) + offset) % num_classes
        rng.shuffle(labels)
        noise = rng.normal(0, 30, size=(n, image_size, image_size, 3))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    x_train, y_train = make(num_train, 0)
    x_val, y_val = make(num_val, 0)
    names = tuple(f"class{i}" for i in range(num_classes))
    return ImageDataset("synthetic", x_train, y_train, x_val, y_val, names, f"synthetic(seed={seed})")


def dataset_label(name: str) -> str:
    """A short, path-free name for run directories (``cifar10-jpeg`` for a tarball path)."""
    base = Path(str(name)).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-.")
    return cleaned or "images"
