"""The dataset record every loader returns, and the checks a dataset must pass to train."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.errors import DatasetError

VAL_SPLITS = ("val", "test", "validation")
HOLDOUT_FRACTION = 0.1  # image folders without val/ or test/: hold out 10% of train


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 NHWC arrays at native size, labels as int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "train": int(len(self.y_train)),
            "val": int(len(self.y_val)),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }


CACHE_ENV = "EFFSCALE_DATA_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "effscale" / "datasets")


def activation_cache_dir(cache_dir=None) -> Path:
    """Where transfer caches its frozen prefix's activations. A cache directory the user
    names (``cache_dir``, else EFFSCALE_DATA_CACHE) holds them in ``activations/``, so nothing
    is written beside it; by default they sit next to the decoded datasets."""
    named = cache_dir or os.environ.get(CACHE_ENV)
    return Path(named).expanduser() / "activations" if named else default_cache_dir().parent / "activations"


def check_classes(dataset: ImageDataset) -> ImageDataset:
    """Refuse a dataset that cannot train: fewer than two classes in its training split, or
    a validation class the training split does not have (it could never be predicted).
    The message names the class folder, so the user knows what to add or remove."""
    present = np.unique(dataset.y_train)
    names = dataset.class_names
    source = dataset.source or dataset.name
    if len(present) < 2:
        what = f"only one class folder, train/{names[int(present[0])]}/" if len(present) else "no images"
        raise DatasetError(
            f"{source}: the training split has {what}; a classifier needs at least two classes, so add "
            "another train/<class>/ folder with images"
        )
    unseen = sorted(set(np.unique(dataset.y_val).tolist()) - set(present.tolist()))
    if unseen:
        name = names[unseen[0]]
        more = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        raise DatasetError(
            f"{source}: the validation class folder {name}/{more} has no training images (train/{name}/ is "
            f"missing or empty), so it could never be predicted; add train/{name}/ images or remove it"
        )
    return dataset
