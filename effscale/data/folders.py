"""Image folders and tarballs: ``train/<class>/*`` + ``val/<class>/*`` (or ``test/``,
``validation/``), as a folder or a ``.tar.gz``; or, for evaluation, torchvision's
ImageFolder layout with the class folders at the top (``<class>/*``).

Decoded once with PIL (grayscale/RGBA/palette -> RGB) and cached as an ``.npz`` keyed by
the folder's file list, sizes and mtimes. Mixed sizes: every image is brought to one
common size at decode time by resizing its shorter side and centre-cropping (aspect ratio
kept); the common size is ``image_size`` when given, else the most frequent size.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from effscale.data.records import HOLDOUT_FRACTION, VAL_SPLITS, ImageDataset, default_cache_dir
from effscale.errors import DatasetError
from effscale.fsutil import atomic_path

CACHE_VERSION = 1
# The one split of a folder that holds <class>/ folders directly (torchvision's ImageFolder):
# evaluation accepts it, training needs train/ and val/.
CLASS_FOLDERS = "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.rsplit("/", 1)[-1].startswith(".")


def _split_class(relpath: str) -> tuple[str, str] | None:
    """``[prefix/]train/cat/x.jpg`` -> ("train", "cat"); None for anything else."""
    parts = relpath.strip("/").split("/")
    if len(parts) < 3:
        return None
    split, cls = parts[-3].lower(), parts[-2]
    if split not in ("train", *VAL_SPLITS):
        return None
    return split, cls


def _has_splits(root: Path) -> bool:
    return any(p.is_dir() and p.name.lower() in ("train", *VAL_SPLITS) for p in root.iterdir())


def _scan_folder(root: Path) -> list[tuple[str, str, Path]]:
    """(split, class, file) of every image: ``<split>/<class>/*``, or, in a folder without
    split folders (torchvision's ImageFolder layout), ``<class>/*`` as the split ``CLASS_FOLDERS``."""
    if _has_splits(root):
        splits = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in ("train", *VAL_SPLITS))
        tops = [(split_dir.name.lower(), split_dir) for split_dir in splits]
    else:
        tops = [(CLASS_FOLDERS, root)]
    entries = []
    for split, split_dir in tops:
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and _is_image(file.name):
                    entries.append((split, class_dir.name, file))
    return entries


def _cache_key(parts: Sequence) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()
    return digest[:16]


def _decode(blob: bytes, label: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DatasetError(f"cannot decode image {label} (not a recognised image format); remove or replace "
                           "that file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image {label} ({exc}); remove or replace that file") from None


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to fit ``size`` and centre-crop (aspect ratio kept)."""
    if image.shape[:2] == size:
        return image
    from PIL import Image

    th, tw = size
    h, w = image.shape[:2]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return resized[top:top + th, left:left + tw]


def _iter_blobs(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, label, bytes) for every image in a folder or tar archive."""
    if path.is_dir():
        for split, cls, file in _scan_folder(path):
            try:
                blob = file.read_bytes()
            except OSError as exc:
                raise DatasetError(f"cannot read {file} ({exc.strerror or exc})") from None
            yield split, cls, str(file), blob
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not _is_image(member.name):
                    continue
                found = _split_class(member.name)
                if found is None:
                    continue
                yield found[0], found[1], f"{path}:{member.name}", tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable tar archive ({exc})") from None


def _source_fingerprint(path: Path) -> list:
    if path.is_dir():
        return [str(path.resolve())] + [
            (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for _, _, f in _scan_folder(path)
        ]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def read_image_folder(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      image_size: int | None = None,
                      class_folders: bool = False) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Decode (or reuse the cached decode of) every split of an image folder or .tar.gz.

    Returns ``({split: (x uint8 NHWC, y int64)}, class_names)``; splits are any of train,
    val, test, validation. Class names are the sorted class folder names of all splits.
    ``class_folders=True`` also accepts a folder of ``<class>/`` folders without split
    folders, returned as the one split ``CLASS_FOLDERS``.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(
            f"dataset {path} does not exist; pass cifar100, cifar10, synthetic, or a folder (or .tar.gz) "
            "with train/<class>/ and val/<class>/ images"
        )
    if root.is_file() and not tarfile.is_tarfile(root):
        raise DatasetError(f"dataset {path} is a file but not a tar archive; pass a folder or a .tar.gz")
    if image_size is not None and image_size < 1:
        raise DatasetError(f"image size must be positive, got {image_size}")
    if root.is_dir() and not _has_splits(root) and not class_folders:
        raise DatasetError(
            f"{root} has no train/ or val/ folder; expected train/<class>/*.jpg (and val/<class>/ or test/<class>/)"
        )
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache_root / f"{_cache_key([_source_fingerprint(root), image_size])}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                class_names = tuple(str(c) for c in cached["class_names"])
                splits = {
                    k[2:]: (cached[k], cached["y_" + k[2:]]) for k in cached.files if k.startswith("x_")
                }
            return splits, class_names
        except (OSError, ValueError, KeyError):
            cache_file.unlink(missing_ok=True)  # a damaged cache is rebuilt

    images: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    labels: dict[str, list[str]] = collections.defaultdict(list)
    for split, cls, label, blob in _iter_blobs(root):
        images[split].append(_decode(blob, label))
        labels[split].append(cls)
    if not images:
        raise DatasetError(
            f"no images found in {path}; expected train/<class>/*.jpg (and val/<class>/ or test/<class>/) "
            f"with extensions {', '.join(IMAGE_EXTENSIONS[:4])}..."
        )
    if image_size is not None:
        target = (image_size, image_size)
    else:
        sizes = collections.Counter(im.shape[:2] for split in images.values() for im in split)
        target = sizes.most_common(1)[0][0]
    class_names = tuple(sorted({c for split in labels.values() for c in split}))
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split in images:
        x = np.stack([_fit(im, target) for im in images[split]])
        y = np.array([index[c] for c in labels[split]], dtype=np.int64)
        splits[split] = (x, y)
        images[split] = []  # free the decoded list as we go

    try:
        arrays = {f"x_{s}": x for s, (x, _) in splits.items()} | {f"y_{s}": y for s, (_, y) in splits.items()}
        with atomic_path(cache_file) as tmp:
            np.savez(tmp, class_names=np.array(class_names), **arrays)
    except OSError:
        pass  # caching is an optimisation; a read-only cache dir is fine
    return splits, class_names


def load_image_folder(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      image_size: int | None = None, seed: int = 0) -> ImageDataset:
    splits, class_names = read_image_folder(path, cache_dir, image_size)
    if "train" not in splits:
        raise DatasetError(f"{path} has no train/<class>/ images; training needs a train split")
    x_train, y_train = splits["train"]
    val_split = next((s for s in VAL_SPLITS if s in splits), None)
    if val_split is not None:
        x_val, y_val = splits[val_split]
    else:
        # No val/ or test/: hold out a seeded 10% of train, so nothing is scored on training images.
        order = np.random.default_rng(seed).permutation(len(y_train))
        n_val = max(1, int(round(HOLDOUT_FRACTION * len(y_train))))
        if len(y_train) < 2:
            raise DatasetError(f"{path} has a single training image and no val/ split; add more images")
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    name = Path(path).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return ImageDataset(name or "images", x_train, y_train, x_val, y_val, class_names, str(path))
