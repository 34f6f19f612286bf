"""Datasets and the input pipeline.

Datasets (``load_dataset``):

* ``cifar100`` / ``cifar10``: ``keras.datasets`` (download + cache) on a machine with
  internet, or ``data_dir`` holding the original ``cifar-100-python`` /
  ``cifar-10-batches-py`` pickles (as the ``.tar.gz`` or extracted).
* an image folder ``train/<class>/*`` + ``val/<class>/*`` (or ``test/<class>/*``), or a
  ``.tar.gz`` of one. Decoded once with PIL (grayscale/RGBA/palette -> RGB) and cached
  as an ``.npz`` keyed by the folder's file list, sizes and mtimes.
* ``synthetic``: learnable random images for smoke tests.

Images stay uint8, NHWC, at their native size (32x32 for CIFAR). Resizing to the
training resolution happens per batch (a ``Resizing`` layer at the front of the
training model, see ``resizing_inputs``), so 224x224 copies of a dataset are never
materialised.

Mixed sizes in an image folder: every image is brought to one common size at decode
time by resizing its shorter side and centre-cropping (aspect ratio kept). The common
size is ``image_size`` when given, else the most frequent size in the folder.

Keras/TensorFlow are imported lazily, inside the pipeline functions only.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.console import one_line
from effscale.errors import DatasetError

from effscale.backend import set_defaults  # noqa: E402

set_defaults()

CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_SPLITS = ("val", "test", "validation")
HOLDOUT_FRACTION = 0.1  # image folders without val/ or test/: hold out 10% of train

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)

CIFAR = {
    # name: (folder inside the archive, archive file, train files, test files, label key, meta file, names key)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels",
                "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), b"fine_labels",
                 "meta", b"fine_label_names"),
}


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


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("EFFSCALE_DATA_CACHE") or Path.home() / ".cache" / "effscale" / "datasets")


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

    ``image_size`` only matters for image folders (the common stored size, see module
    docstring); CIFAR stays 32x32 and synthetic is generated at ``image_size or 32``.
    ``limit_train`` / ``limit_val`` keep a seeded random subset (order preserved).
    """
    key = str(name).strip()
    if key.lower() in CIFAR:
        dataset = load_cifar(key.lower(), data_dir)
    elif key.lower() == "synthetic":
        dataset = synthetic_dataset(
            num_train=limit_train or 1000, num_val=limit_val or 200, image_size=image_size or 32, seed=seed
        )
    else:
        dataset = load_image_folder(key, cache_dir=cache_dir, image_size=image_size, seed=seed)
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


# --------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------
def _unpickle(blob: bytes, what: str) -> dict:
    try:
        return pickle.loads(blob, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(f"{what} is not a CIFAR pickle ({type(exc).__name__}); re-download it") from None


def _cifar_arrays(batches: Sequence[dict], label_key: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in batches:
        if b"data" not in batch or label_key not in batch:
            raise DatasetError(f"{what}: a batch lacks b'data' or {label_key!r}; is it the right CIFAR version?")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{what}: expected rows of 3072 bytes (3x32x32), got shape {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_cifar_dir(name: str, data_dir: str | os.PathLike) -> ImageDataset:
    """Read the original python-pickle CIFAR release from ``data_dir``.

    Accepted: the ``.tar.gz`` itself, a folder holding it, the extracted folder
    (``cifar-100-python``), or a folder holding the extracted folder.
    """
    folder, archive, train_files, test_files, label_key, meta_file, names_key = CIFAR[name]
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DatasetError(f"--data-dir {root} does not exist; point it at the folder holding {archive}")
    candidates_tar = [root] if root.is_file() else [root / archive]
    candidates_dir = [root, root / folder]
    members: dict[str, bytes] = {}
    for directory in candidates_dir:
        if directory.is_dir() and all((directory / f).is_file() for f in (*train_files, *test_files)):
            for f in (*train_files, *test_files, meta_file):
                if (directory / f).is_file():
                    members[f] = (directory / f).read_bytes()
            source = str(directory)
            break
    else:
        tar_path = next((p for p in candidates_tar if p.is_file()), None)
        if tar_path is None:
            raise DatasetError(
                f"no {name} data in {root}: expected {archive} or an extracted {folder}/ folder there "
                f"(download https://www.cs.toronto.edu/~kriz/{archive})"
            )
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in (*train_files, *test_files, meta_file):
                        members[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{tar_path} is not a readable tar.gz ({exc}); re-download {archive}") from None
        source = str(tar_path)
        missing = [f for f in (*train_files, *test_files) if f not in members]
        if missing:
            raise DatasetError(f"{tar_path} lacks {', '.join(missing)}; is it {archive}?")
    x_train, y_train = _cifar_arrays([_unpickle(members[f], f) for f in train_files], label_key, source)
    x_val, y_val = _cifar_arrays([_unpickle(members[f], f) for f in test_files], label_key, source)
    class_names = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    if meta_file in members:
        meta = _unpickle(members[meta_file], meta_file)
        if names_key in meta:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    return ImageDataset(name, x_train, y_train, x_val, y_val, tuple(class_names), source)


def load_cifar(name: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    if data_dir is not None:
        return read_cifar_dir(name, data_dir)
    _, archive, *_ = CIFAR[name]
    import keras

    loader = keras.datasets.cifar10 if name == "cifar10" else keras.datasets.cifar100
    try:
        if name == "cifar100":
            (x_train, y_train), (x_val, y_val) = loader.load_data(label_mode="fine")
        else:
            (x_train, y_train), (x_val, y_val) = loader.load_data()
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception on URL failures
        reason = one_line(exc).rsplit(" -- ", 1)[-1][:120]
        raise DatasetError(
            f"cannot download {name} ({reason}); on an offline machine put {archive} in a folder "
            f"and pass --data-dir FOLDER"
        ) from None
    names = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    return ImageDataset(
        name,
        np.ascontiguousarray(x_train, dtype=np.uint8),
        np.asarray(y_train, dtype=np.int64).reshape(-1),
        np.ascontiguousarray(x_val, dtype=np.uint8),
        np.asarray(y_val, dtype=np.int64).reshape(-1),
        names,
        "keras.datasets",
    )


# --------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------
def synthetic_dataset(num_train: int = 1000, num_val: int = 200, num_classes: int = 10,
                      image_size: int = 32, seed: int = 0) -> ImageDataset:
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


# --------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------
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


def _scan_folder(root: Path) -> list[tuple[str, str, Path]]:
    entries = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in ("train", *VAL_SPLITS)):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and _is_image(file.name):
                    entries.append((split_dir.name.lower(), class_dir.name, file))
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
                      image_size: int | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Decode (or reuse the cached decode of) every split of an image folder or .tar.gz.

    Returns ``({split: (x uint8 NHWC, y int64)}, class_names)``; splits are any of train,
    val, test, validation. Class names are the sorted class folder names of all splits.
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
    if root.is_dir() and not any(p.is_dir() and p.name.lower() in ("train", *VAL_SPLITS) for p in root.iterdir()):
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

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.npz")
    try:
        arrays = {f"x_{s}": x for s, (x, _) in splits.items()} | {f"y_{s}": y for s, (_, y) in splits.items()}
        np.savez(tmp, class_names=np.array(class_names), **arrays)
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)  # caching is an optimisation; a read-only cache dir is fine
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


def dataset_label(name: str) -> str:
    """A short, path-free name for run directories (``cifar10-jpeg`` for a tarball path)."""
    base = Path(str(name)).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-.")
    return cleaned or "images"


# --------------------------------------------------------------------------------------
# input pipeline
# --------------------------------------------------------------------------------------
AUGMENTATIONS = {
    # name: what it does (documented in docs/transfer.md)
    "flip": "random horizontal flip",
    "crop": "random translation by up to 1/8 of the side, reflect padding (CIFAR's pad-4-and-crop)",
    "rotate": "random rotation up to 15 degrees",
    "zoom": "random zoom in/out up to 10%",
    "normalize": "divide pixels by 255 (the seed recipe's mistake: the models expect 0-255)",
}


def check_augment(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        from effscale.errors import ConfigError

        raise ConfigError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(names)


def augmentation_layers(names: Sequence[str], seed: int = 0) -> list:
    """Keras preprocessing layers for ``names`` (they run inside tf.data or eagerly)."""
    import keras

    check_augment(names)
    layers = []
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if "crop" in names:
        layers.append(keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed + 1))
    if "rotate" in names:
        layers.append(keras.layers.RandomRotation(15 / 360, fill_mode="reflect", seed=seed + 2))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, 0.1, fill_mode="reflect", seed=seed + 3))
    if "normalize" in names:
        layers.append(keras.layers.Rescaling(1.0 / 255.0))
    return layers


def _use_tf_data() -> bool:
    import keras

    return keras.backend.backend() == "tensorflow"


def make_batches(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    num_classes: int,
    training: bool,
    augment: Sequence[str] = (),
    seed: int = 0,
    one_hot: bool = True,
    deterministic: bool | None = None,
):
    """Batches of ``(float32 images at native size, labels)`` for ``model.fit``/``evaluate``.

    Training batches are reshuffled each epoch and augmented (``augment`` names, see
    ``AUGMENTATIONS``); evaluation batches keep order and are never augmented. Labels are
    one-hot float32 (so label smoothing works) unless ``one_hot=False``.

    Under TensorFlow this is a ``tf.data`` pipeline: batch-level index gather, augmentation
    mapped in parallel, prefetch, so the 2 CPU cores decode the next batch while the model
    trains. Other backends get a ``keras.utils.PyDataset`` doing the same in numpy.
    """
    if batch_size < 1:
        from effscale.errors import ConfigError

        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    augment = tuple(augment) if training else ()
    if _use_tf_data():
        return _tf_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot, deterministic)
    return _numpy_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot)


def _tf_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot, deterministic=None):
    import tensorflow as tf

    n = len(y)
    images = tf.constant(x)
    labels = tf.constant(y)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def gather(idx):
        batch_x = tf.cast(tf.gather(images, idx), tf.float32)
        batch_y = tf.gather(labels, idx)
        if one_hot:
            batch_y = tf.one_hot(batch_y, num_classes, dtype=tf.float32)
        return batch_x, batch_y

    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        layers = augmentation_layers(augment, seed)

        def apply(batch_x, batch_y):
            for layer in layers:
                batch_x = layer(batch_x, training=True)
            return batch_x, batch_y

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Training batches may arrive out of order for speed unless ``deterministic`` (the grid
    # search asks for it: a trial's score must not depend on thread timing).
    options.deterministic = (not training) if deterministic is None else deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _numpy_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot):
    """The backend-agnostic fallback: a ``keras.utils.PyDataset`` of numpy batches."""
    import keras

    class NumpyBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.layers = augmentation_layers(augment, seed) if augment else []
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(y))
            self.on_epoch_end()

        def __len__(self):
            return -(-len(y) // batch_size)

        def on_epoch_end(self):
            if training:
                self.order = self.rng.permutation(len(y))

        def __getitem__(self, i):
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            bx = x[idx].astype(np.float32)
            for layer in self.layers:
                bx = keras.ops.convert_to_numpy(layer(bx, training=True))
            by = y[idx]
            if one_hot:
                by = np.eye(num_classes, dtype=np.float32)[by]
            return bx, by

    return NumpyBatches()


def resizing_inputs(native_shape: Sequence[int], image_size: int):
    """``(inputs, x)``: a float32 input at the native image size, resized to ``image_size``.

    Put this in front of the backbone so the dataset stays at native size in memory and
    only each batch is resized (bilinear), on the same device as the model.
    """
    import keras

    inputs = keras.Input(shape=tuple(int(d) for d in native_shape), name="images")
    x = inputs
    if tuple(native_shape[:2]) != (image_size, image_size):
        x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    return inputs, x
