"""CIFAR-10/100: ``keras.datasets`` (download and cache) with internet, or the original
python-pickle release (``cifar-100-python`` / ``cifar-10-batches-py``, as the ``.tar.gz``
or extracted) from ``--data-dir`` offline. Images are 32x32 uint8 NHWC.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.data.records import ImageDataset
from effscale.console import one_line
from effscale.errors import DatasetError

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


@dataclass(frozen=True)
class CifarRelease:
    """Where one CIFAR release keeps its parts (the original python-pickle archive)."""

    folder: str  # inside the archive
    archive: str  # the .tar.gz file name
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes
    class_names: tuple[str, ...]  # the release's own order, used when its meta file is absent


CIFAR = {
    "cifar10": CifarRelease("cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels",
                            "batches.meta", b"label_names", CIFAR10_CLASSES),
    "cifar100": CifarRelease("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), b"fine_labels",
                             "meta", b"fine_label_names", CIFAR100_CLASSES),
}


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
    release = CIFAR[name]
    folder, archive, meta_file = release.folder, release.archive, release.meta_file
    train_files, test_files = release.train_files, release.test_files
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
    x_train, y_train = _cifar_arrays([_unpickle(members[f], f) for f in train_files], release.label_key, source)
    x_val, y_val = _cifar_arrays([_unpickle(members[f], f) for f in test_files], release.label_key, source)
    class_names = release.class_names
    if meta_file in members:
        meta = _unpickle(members[meta_file], meta_file)
        if release.names_key in meta:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[release.names_key])
    return ImageDataset(name, x_train, y_train, x_val, y_val, tuple(class_names), source)


def load_cifar(name: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    if data_dir is not None:
        return read_cifar_dir(name, data_dir)
    archive = CIFAR[name].archive
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
    names = CIFAR[name].class_names
    return ImageDataset(
        name,
        np.ascontiguousarray(x_train, dtype=np.uint8),
        np.asarray(y_train, dtype=np.int64).reshape(-1),
        np.ascontiguousarray(x_val, dtype=np.uint8),
        np.asarray(y_val, dtype=np.int64).reshape(-1),
        names,
        "keras.datasets",
    )
