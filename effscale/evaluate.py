"""Score a model on labelled images: top-1, top-5, per-class accuracy, throughput.

Two kinds of model:

* ``model_from_variant``: ``build_model(spec)`` with the checkpoint's head (1000 classes
  for ImageNet), then ``effscale.weights.load.load_state_dict`` (``--variant lite0 --weights lite0``);
* ``model_from_file``: a saved ``.keras`` model, or a transfer run directory (its
  ``checkpoints/best.keras`` and the class names from ``metrics.json``).

Labels: a dataset's classes are its sorted folder names. A model's outputs are matched
to them by name when the model knows its class names (a transfer run), through a label
map CSV (folder name -> model class index, e.g. Imagenette's ``imagenet_index.csv``
for an ImageNet head), or by position when the counts agree.

Images are resized to the model's input size, by default with a plain bicubic resize of
the whole image (``plain``); ``crop`` is the TF EfficientNet evaluation crop (centre
``R/(R+32)`` of the shorter side, then bicubic to R) meant for full-size photos.

Keras is imported lazily; label maps and metrics are plain numpy.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.console import one_line
from effscale.data.label_map import LabelMap, read_label_map  # noqa: F401 - part of this module's API
from effscale.errors import ConfigError, DatasetError, EffscaleError

RESIZE_METHODS = ("plain", "crop")
CROP_PADDING = 32  # TF EfficientNet eval: centre crop R / (R + 32) of the shorter side


# --------------------------------------------------------------------------------------
# data


@dataclass
class EvalImages:
    x: np.ndarray  # uint8 NHWC, one common size
    y: np.ndarray  # dataset class index (into class_names)
    class_names: tuple[str, ...]
    name: str
    split: str


def load_images(dataset: str, split: str | None = None, data_dir=None, cache_dir=None,
                limit: int | None = None, seed: int = 0) -> EvalImages:
    """The evaluation images of ``dataset`` (a name or an image folder / tarball).

    Image folders may hold only a val/ (or test/) split, as Imagenette's does, or no split
    folders at all (``<class>/*``, torchvision's ImageFolder layout: the split ``images``).
    ``split`` defaults to the first of val, test, validation, train, images.
    """
    from effscale.data import datasets as D

    key = str(dataset).strip()
    if key.lower() in D.CIFAR or key.lower() == "synthetic":
        if split not in (None, "val", "test", "train"):
            raise DatasetError(f"{key} has the splits train and test; got --split {split}")
        ds = D.load_dataset(key, data_dir=data_dir, cache_dir=cache_dir)
        which = "train" if split == "train" else "test"
        x, y = (ds.x_train, ds.y_train) if which == "train" else (ds.x_val, ds.y_val)
        images = EvalImages(x, y, ds.class_names, ds.name, which)
    else:
        from effscale.data.folders import CLASS_FOLDERS

        # Scoring needs one split only, so a folder of <class>/ folders (ImageFolder) works too.
        splits, class_names = D.read_image_folder(key, cache_dir=cache_dir, class_folders=True)
        if split is None:
            split = next((s for s in (*D.VAL_SPLITS, "train", CLASS_FOLDERS) if s in splits), None)
        if split not in splits:
            raise DatasetError(f"{dataset} has no {split}/ split; it has {', '.join(sorted(splits))}")
        x, y = splits[split]
        images = EvalImages(x, y, class_names, D.dataset_label(key), split)
    if limit is not None and limit < len(images.y):
        keep = np.sort(np.random.default_rng(seed).choice(len(images.y), size=limit, replace=False))
        images.x, images.y = images.x[keep], images.y[keep]
    return images


def resize_images(x: np.ndarray, size: int, method: str = "plain") -> np.ndarray:
    """Square ``size`` x ``size`` uint8 images; bicubic, as the TF EfficientNet evaluation."""
    if method not in RESIZE_METHODS:
        raise ConfigError(f"unknown resize method {method!r}; use one of {', '.join(RESIZE_METHODS)}")
    if method == "plain" and x.shape[1:3] == (size, size):
        return x
    from PIL import Image

    out = np.empty((len(x), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(x):
        pil = Image.fromarray(image)
        if method == "crop":
            h, w = image.shape[:2]
            side = int(round(min(h, w) * size / (size + CROP_PADDING)))
            top, left = (h - side) // 2, (w - side) // 2
            pil = pil.crop((left, top, left + side, top + side))
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    return out


# --------------------------------------------------------------------------------------
# models


@dataclass
class LoadedModel:
    model: object
    description: str
    input_size: int | None  # square input side, None if any size
    class_names: tuple[str, ...] | None  # what each output means, when known
    info: dict


def model_from_variant(variant: str, weights: str, image_size: int | None = None, checked=None) -> LoadedModel:
    """Build ``variant`` with its 1000-class head and load ``weights`` into it.

    ``checked`` is ``check_variant_weights``'s result when the caller validated first.
    """
    from effscale.net.keras_model import build_model
    from effscale.weights.load import checkpoint_classes, load_state_dict

    name, spec, state, description = checked or check_variant_weights(variant, weights, image_size)
    model = build_model(spec, num_classes=checkpoint_classes(state), name=name)
    loaded = load_state_dict(model, state, spec, description, name)
    info = {"variant": name, "resolution": spec.resolution, "weights": loaded}
    return LoadedModel(model, f"{name} + {description}", spec.resolution, None, info)


def check_variant_weights(variant: str, weights: str, image_size: int | None = None):
    """``(name, spec, state, description)``: the weights read and checked against the variant,
    before any model is built (a wrong checkpoint fails in a fraction of a second)."""
    from effscale.schemas import resolve_network
    from effscale.errors import WeightsError
    from effscale.weights.load import checkpoint_classes, read_checked

    name, spec = resolve_network(variant)
    if image_size:
        spec = spec.with_resolution(image_size)
    state, description = read_checked(weights, spec, name)
    if checkpoint_classes(state) is None:
        raise WeightsError(f"weights {weights} have no classifier (_fc); evaluate needs a model with its head")
    return name, spec, state, description


def locate_model(path: str | os.PathLike) -> tuple[Path, tuple[str, ...] | None, dict]:
    """``(keras file, class names or None, info)`` of a ``.keras`` file or a transfer run
    directory; checked before any data is loaded."""
    import json

    path = Path(path).expanduser()
    class_names = None
    info: dict = {}
    if path.is_dir():
        from effscale.runs import RunDir

        run_dir = RunDir(path)
        run = run_dir.path
        path = next((p for p in (run_dir.best_checkpoint, run_dir.last_checkpoint) if p.is_file()), None)
        if path is None:
            raise EffscaleError(f"{run} has no checkpoints/best.keras or last.keras; is it a finished transfer run?")
        metrics = run_dir.metrics_path
        if metrics.is_file():
            try:
                data = json.loads(metrics.read_text())
                class_names = tuple(data["class_names"]) if data.get("class_names") else None
                info = {k: data.get(k) for k in ("variant", "image_size", "weights") if k in data}
            except (OSError, ValueError, TypeError, KeyError):
                class_names = None
    elif not path.is_file():
        raise EffscaleError(f"model {path} does not exist; pass a .keras file or a transfer run directory")
    if path.suffix != ".keras":
        raise EffscaleError(f"model {path} is not a .keras file; for .pth weights use --variant NAME --weights FILE")
    return path, class_names, info


def model_from_file(path: str | os.PathLike) -> LoadedModel:
    """A ``.keras`` file, or a transfer run directory (best checkpoint + its class names)."""
    import keras

    path, class_names, info = locate_model(path)
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a bad file
        raise EffscaleError(f"cannot load model {path} ({one_line(exc, 200)})") from None
    shape = model.input_shape
    if isinstance(shape, list):
        raise EffscaleError(f"model {path} has {len(shape)} inputs; effscale evaluate needs an image classifier")
    size = shape[1] if len(shape) == 4 and shape[1] == shape[2] else None
    return LoadedModel(model, str(path), size, class_names, info | {"file": str(path)})


# --------------------------------------------------------------------------------------
# labels: dataset class -> model output


def target_indices(images: EvalImages, num_outputs: int, label_map: LabelMap | None,
                   model_classes: tuple[str, ...] | None) -> np.ndarray:
    """For each dataset class, the model output index that means it."""
    names = images.class_names
    if label_map is not None:
        missing = [c for c in names if c not in label_map.index]
        if missing:
            raise ConfigError(f"label map {label_map.source} has no entry for {len(missing)} folder(s), "
                              f"e.g. {missing[0]!r}")
        mapped = np.array([label_map.index[c] for c in names], dtype=np.int64)
        if mapped.max() >= num_outputs:
            raise ConfigError(f"label map {label_map.source} uses class index {int(mapped.max())} but the "
                              f"model has {num_outputs} outputs")
        return mapped
    if model_classes is not None:
        position = {c: i for i, c in enumerate(model_classes)}
        unknown = [c for c in names if c not in position]
        if unknown:
            raise ConfigError(f"the model was trained on other classes: it does not know {unknown[0]!r} "
                              f"({len(unknown)} unknown); pass --label-map CSV to map folders to outputs")
        return np.array([position[c] for c in names], dtype=np.int64)
    if num_outputs != len(names):
        raise ConfigError(f"the model has {num_outputs} outputs but the dataset has {len(names)} classes; "
                          "pass --label-map CSV mapping each folder to a model class index "
                          "(e.g. val/imagenet_index.csv for Imagenette)")
    return np.arange(len(names), dtype=np.int64)


# --------------------------------------------------------------------------------------
# scoring


def score(probs: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """Top-1 / top-k accuracy of ``probs`` (N x outputs) against model-index ``labels``."""
    probs = np.asarray(probs)
    top = np.argsort(-probs, axis=1)[:, :k]
    hit1 = top[:, 0] == labels
    hitk = (top == labels[:, None]).any(axis=1)
    return {"top1": float(hit1.mean()) if len(labels) else float("nan"),
            "top5": float(hitk.mean()) if len(labels) else float("nan"),
            "hit1": hit1, "hit5": hitk, "top": top}


def predict(model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, dict]:
    """Probabilities and timing; the first batch (tracing) is timed apart from the rest."""
    first = min(batch_size, len(x))
    start = time.perf_counter()
    head = model.predict(x[:first].astype(np.float32), batch_size=batch_size, verbose=0)
    warmup = time.perf_counter() - start
    rest, steady = [head], 0.0
    if len(x) > first:
        start = time.perf_counter()
        for i in range(first, len(x), batch_size):
            rest.append(np.asarray(model.predict_on_batch(x[i:i + batch_size].astype(np.float32))))
        steady = time.perf_counter() - start
    n_steady = len(x) - first
    timing = {"warmup_s": round(warmup, 3), "steady_s": round(steady, 3),
              "images_per_s": round(n_steady / steady, 1) if steady > 0 else None}
    return np.concatenate(rest), timing


def score_model(loaded: LoadedModel, images: EvalImages, label_map: LabelMap | None = None,
                batch_size: int = 32, resize: str = "plain", flip: bool = False) -> dict:
    """Score a loaded model on loaded images: summary, per-class rows, predictions. ``flip``
    averages each image's probabilities with its mirror image's, as a cached transfer run scores."""
    num_outputs = int(loaded.model.output_shape[-1])
    targets = target_indices(images, num_outputs, label_map, loaded.class_names)
    size = loaded.input_size
    x = images.x
    if size is not None and (x.shape[1:3] != (size, size) or resize == "crop"):
        x = resize_images(x, size, resize)
    from effscale.net.keras_model import check_input_range

    check_input_range(x[:batch_size].astype(np.float32), pretrained=True)
    probs, timing = predict(loaded.model, x, batch_size)
    if flip:
        probs = (probs + predict(loaded.model, x[:, :, ::-1], batch_size)[0]) / 2
    labels = targets[images.y]
    scores = score(probs, labels, k=min(5, num_outputs))
    names = label_map.names if label_map else {}
    per_class = []
    for c, folder in enumerate(images.class_names):
        mask = images.y == c
        if not mask.any():
            continue
        wrong = scores["top"][mask, 0][~scores["hit1"][mask]]
        confused = None
        if len(wrong):
            values, counts = np.unique(wrong, return_counts=True)
            confused = int(values[np.argmax(counts)])
        per_class.append({
            "class": folder,
            "name": names.get(folder, folder),
            "model_index": int(targets[c]),
            "images": int(mask.sum()),
            "top1": float(scores["hit1"][mask].mean()),
            "top5": float(scores["hit5"][mask].mean()),
            "most_confused_with": confused,
        })
    summary = {
        "model": loaded.description,
        "dataset": images.name,
        "split": images.split,
        "images": int(len(labels)),
        "classes": len(images.class_names),
        "outputs": num_outputs,
        "input_size": size if size is not None else int(x.shape[1]),
        "resize": resize if size is not None else "none",
        "views": "image+flip" if flip else "image",
        "label_map": label_map.source if label_map else None,
        "top1": scores["top1"],
        "top5": scores["top5"],
        "mean_class_top1": float(np.mean([r["top1"] for r in per_class])) if per_class else None,
        "batch_size": batch_size,
        **timing,
        "info": loaded.info,
    }
    predictions = [
        {"image": i, "class": images.class_names[images.y[i]], "label": int(labels[i]),
         "top5": [int(t) for t in scores["top"][i]], "correct": bool(scores["hit1"][i])}
        for i in range(len(labels))
    ]
    return {"summary": summary, "per_class": per_class, "predictions": predictions}


# --------------------------------------------------------------------------------------
# the whole command as one call

DEFAULT_BATCH_SIZE = 32  # images per predict step: what the throughput figures in docs/evaluate.md use


def evaluate(dataset: str, *, variant: str | None = None, weights: str | None = None, model=None,
             split: str | None = None, label_map: str | None = None, resize: str = "plain",
             image_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None,
             data_dir=None, cache_dir=None, output_dir=None, flip: bool = False) -> dict:
    """Everything ``effscale evaluate`` does: score ``variant`` + ``weights``, or a saved
    ``model`` (a ``.keras`` file or a transfer run directory), on ``dataset``.

    Cheap checks come first, so bad input fails before Keras builds anything: the label
    map, the weights (read and checked against the variant), then the images and their
    labels. Returns ``{"summary", "per_class", "predictions"}``; with ``output_dir`` also
    writes evaluation.json, per_class.csv and predictions.csv there (atomically).
    """
    from effscale import console

    if (variant is None) == (model is None):
        raise ConfigError("pass either a variant with weights, or a saved model")
    if variant is not None and weights is None:
        raise ConfigError("a variant needs weights (lite0, lite1, lite2 or a .pth file)")
    labels = read_label_map(label_map, dataset) if label_map else None
    checked = check_variant_weights(variant, weights, image_size) if variant is not None else None
    if model is not None:
        locate_model(model)
    console.info(f"loading {dataset} ...")
    images = load_images(dataset, split, data_dir=data_dir, cache_dir=cache_dir, limit=limit)
    if checked is not None:
        from effscale.weights.load import checkpoint_classes

        target_indices(images, checkpoint_classes(checked[2]), labels, None)  # the checkpoint's head
        loaded = model_from_variant(variant, weights, image_size, checked)
    else:
        loaded = model_from_file(model)
    console.info(f"scoring {loaded.description} on {len(images.y):,} {images.split} images of {images.name} ...")
    result = score_model(loaded, images, labels, batch_size=batch_size, resize=resize, flip=flip)
    if output_dir is not None:
        write_outputs(Path(output_dir), result)
        console.info(f"wrote {Path(output_dir) / 'evaluation.json'}, per_class.csv, predictions.csv")
    return result


def write_outputs(folder: Path, result: dict) -> None:
    import csv
    import io

    from effscale.console import to_frame
    from effscale.fsutil import atomic_write_json, atomic_write_text

    atomic_write_json(folder / "evaluation.json", {"summary": result["summary"], "per_class": result["per_class"]})

    atomic_write_text(folder / "per_class.csv", to_frame(result["per_class"]).to_csv(index=False))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "class", "label", "correct", "top5"])
    for row in result["predictions"]:
        writer.writerow([row["image"], row["class"], row["label"], int(row["correct"]),
                         " ".join(str(t) for t in row["top5"])])
    atomic_write_text(folder / "predictions.csv", buffer.getvalue())


class _CallableModule(sys.modules[__name__].__class__):
    """``effscale.evaluate(...)`` is the library call and also this module's name: importing
    the module binds it on the package, so the module itself forwards calls to ``evaluate``."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
