"""What an artifact path holds, decided from the file itself before any runtime is loaded.

Shared by ``effscale export`` (output paths) and ``effscale bench`` (inputs). No Keras.
"""

from __future__ import annotations

from pathlib import Path

from effscale.errors import ConfigError

KINDS = ("keras", "savedmodel", "tflite", "onnx")
SUFFIXES = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
# A TFLite flatbuffer carries this identifier at bytes 4-8.
TFLITE_MAGIC = b"TFL3"


class ArtifactError(ConfigError):
    """An artifact path is of an unknown type, missing or corrupt."""


def kind_of(path: str | Path) -> str:
    """``keras``, ``savedmodel``, ``tflite`` or ``onnx``; a one-line error otherwise."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ArtifactError(f"{path} is a directory without saved_model.pb; pass a SavedModel directory, "
                            "a .tflite, .onnx or .keras file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ArtifactError(f"unknown artifact type {path.suffix or '(no suffix)'!r} for {path}; "
                            "use a .tflite, .onnx or .keras file or a SavedModel directory")
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    check_file(path, kind)
    return kind


def check_file(path: Path, kind: str) -> None:
    """Cheap structural checks, so a truncated or foreign file fails before a runtime loads it."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if kind == "tflite" and head[4:8] != TFLITE_MAGIC:
        raise ArtifactError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier); the file is corrupt "
                            "or of another type")
    if kind == "keras" and head[:2] != b"PK":
        raise ArtifactError(f"{path} is not a .keras archive (not a zip file); the file is corrupt")
    if kind == "onnx" and len(head) < 8:
        raise ArtifactError(f"{path} is too short to be an ONNX model; the file is corrupt")


def output_kind(path: str | Path, fmt: str | None) -> str:
    """The format an export writes: ``--format`` if given, else from the output's suffix."""
    path = Path(path)
    if fmt:
        return fmt
    if path.suffix.lower() in SUFFIXES and SUFFIXES[path.suffix.lower()] != "keras":
        return SUFFIXES[path.suffix.lower()]
    if not path.suffix:
        return "savedmodel"
    raise ArtifactError(f"unknown artifact type {path.suffix!r} for {path}; use .tflite, .onnx, or a directory "
                        "name (no suffix) for a SavedModel")


def check_output_path(path: str | Path) -> Path:
    """Refuse an output whose parent directory does not exist (no silent mkdir of a typo)."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ArtifactError(f"output directory {parent} does not exist; create it first or fix the path")
    return path
