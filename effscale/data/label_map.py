"""Label maps: which model output each dataset folder is (``folder,class_index[,name]`` CSV).

Used by ``--label-map`` (evaluate, export) to score an ImageNet head on a folder dataset
(Imagenette ships ``val/imagenet_index.csv``). Plain Python, no Keras.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from effscale.errors import ConfigError




@dataclass(frozen=True)
class LabelMap:
    """Folder name -> model class index (and an optional readable name)."""

    index: dict[str, int]
    names: dict[str, str] = field(default_factory=dict)
    source: str = ""


def _read_label_text(path: str, dataset: str | None) -> tuple[str, str]:
    file = Path(path).expanduser()
    if file.is_file():
        try:
            return file.read_text(encoding="utf-8-sig"), str(file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read label map {file} ({exc})") from None
    # Not on disk: look for it inside the dataset archive (Imagenette ships val/imagenet_index.csv).
    if dataset is not None and Path(dataset).is_file() and tarfile.is_tarfile(dataset):
        wanted = str(path).strip("/")
        try:
            with tarfile.open(dataset, "r:*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and (name == wanted or name.endswith("/" + wanted)):
                        return tar.extractfile(member).read().decode("utf-8-sig"), f"{dataset}:{member.name}"
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read label map {path} from {dataset} ({exc})") from None
        raise ConfigError(f"label map {path} not found on disk or inside {dataset}")
    raise ConfigError(f"label map {path} not found")


def read_label_map(path: str | os.PathLike, dataset: str | None = None) -> LabelMap:
    """Parse a CSV of ``folder,index[,name]`` rows; a header row is skipped.

    ``path`` may also name a member of a ``.tar.gz`` dataset (``val/imagenet_index.csv``).
    """
    text, source = _read_label_text(str(path), dataset)
    index: dict[str, int] = {}
    names: dict[str, str] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ConfigError(f"{source} line {line_no}: expected 'folder,class_index[,name]', got {','.join(row)!r}")
        folder, value = row[0].strip(), row[1].strip()
        try:
            number = int(value)
        except ValueError:
            if not index and line_no == 1:
                continue  # header
            raise ConfigError(f"{source} line {line_no}: class index {value!r} is not an integer") from None
        if number < 0:
            raise ConfigError(f"{source} line {line_no}: class index {number} is negative")
        if folder in index and index[folder] != number:
            raise ConfigError(f"{source} line {line_no}: {folder!r} is mapped twice ({index[folder]} and {number})")
        index[folder] = number
        if len(row) > 2 and row[2].strip():
            names[folder] = row[2].strip()
    if not index:
        raise ConfigError(f"{source} maps no folders; expected rows 'folder,class_index[,name]'")
    return LabelMap(index, names, source)
