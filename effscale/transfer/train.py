"""Transfer training: model assembly, strategies, guards, callbacks and checkpoints.

``transfer(config, run)`` trains one ``TransferConfig`` inside a run directory and is
safe to kill at any moment. The commit protocol of an epoch (``Checkpointer.commit``):

1. the model (with optimizer state) is saved to ``checkpoints/.epoch-N.keras``;
2. if the epoch is the best so far, ``best.keras`` is replaced atomically;
3. ``checkpoints/state.json`` is replaced atomically: epoch N, the history rows, best
   epoch, accumulated wall time. **This is the commit point.**
4. ``.epoch-N.keras`` is renamed to ``last.keras``; ``history.csv`` is rewritten atomically.

A kill before 3 loses only the epoch in flight (it is trained again on resume); a kill
between 3 and 4 is finished by the next ``--resume`` (rename the pending file), so the
history always has exactly one row per committed epoch. Resume order (big_vision):
1. ``state.json`` exists -> load ``last.keras`` (weights + optimizer) and continue at
epoch N; 2. otherwise start from the configured weights.

Keras 3 layers and ops only in the model; tf.data only inside ``effscale.data.datasets`` under the
TensorFlow backend.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from effscale.backend import set_defaults  # noqa: E402

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effscale import console  # noqa: E402
from effscale.transfer.config import TransferConfig  # noqa: E402
from effscale.errors import EffscaleError, WeightsError  # noqa: E402
from effscale.fsutil import atomic_write_json, atomic_write_text  # noqa: E402
from effscale.runs import RunDir  # noqa: E402

log = logging.getLogger("effscale.transfer.train")

BACKBONE = "efficientnet"
HEAD_LAYERS = ("head_dropout", "predictions")
STATE = "checkpoints/state.json"
HISTORY_COLUMNS = ("epoch", "phase", "lr", "loss", "accuracy", "top5", "val_loss", "val_accuracy",
                   "val_top5", "train_time_s", "epoch_time_s", "images_per_s")

# keras.applications' ImageNet files (keras/src/applications/efficientnet.py, notop hashes).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"
KERAS_NOTOP_MD5 = {
    "b0": "50bc09e76180e00e4465e1a485ddc09d", "b1": "74c4e6b3e1f6a1eea24c589628592432",
    "b2": "111f8e2ac8aa800a7a99e3239f7bfb39", "b3": "af6d107764bb5b1abb91932881670226",
    "b4": "ebc24e6d6c33eaebbd558eafbeedf1ba", "b5": "38879255a25d3c92d5e44e04ae6cec6f",
    "b6": "9ecce42647a20130c1f39a5d4cb75743", "b7": "cbcfe4450ddf6f3ad90b1b398090fe4a",
}


class TrainingStopped(EffscaleError):
    """Training stopped early (NaN loss); the reports were still written."""


def _one_line(text) -> str:
    return " ".join(str(text).split())[:300]


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------
def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def imagenet_weights_file(variant: str) -> Path:
    """The cached keras.applications ``efficientnetbN_notop.h5``, downloaded if missing."""
    fname = f"efficientnet{variant}_notop.h5"
    cached = keras_cache_dir() / "models" / fname
    if cached.is_file():
        return cached
    try:
        return Path(keras.utils.get_file(fname, KERAS_WEIGHTS_URL + fname, cache_subdir="models",
                                         file_hash=KERAS_NOTOP_MD5[variant]))
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception for URL failures
        reason = _one_line(exc).rsplit(" -- ", 1)[-1][:120]  # "URL fetch failure on <url>: None -- <why>"
        raise WeightsError(
            f"cannot download ImageNet weights {fname} ({reason}); on an offline machine copy "
            f"{fname} to {cached} or pass --weights none|PATH"
        ) from None


def _h5_shapes(path: Path) -> list[tuple]:
    """Shapes of every array in an HDF5 weights file (Keras 3 or legacy layout), sorted."""
    import h5py

    shapes = []
    with h5py.File(path, "r") as handle:
        if "model_weights" in handle:  # a whole legacy model.save(): skip its optimizer state
            handle = handle["model_weights"]
        handle.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(shapes)


def _load_h5(backbone, path: Path, name: str) -> None:
    # Keras loads .weights.h5 by position and skips what does not fit with a warning, so a
    # deeper network of the same widths would load "successfully" into the wrong layers.
    # Compare the arrays first: the same architecture holds exactly the same shapes.
    try:
        theirs = _h5_shapes(path)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {path} ({_one_line(exc)[:120]})") from None
    mine = sorted(tuple(w.shape) for w in backbone.weights)
    if theirs != mine:
        raise WeightsError(
            f"weights file {path} does not fit {name}: it holds {len(theirs)} arrays where {name} "
            f"has {len(mine)} (or of other shapes); it is for another architecture"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns per skipped layer before it raises
            backbone.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/KeyError/OSError variously
        raise WeightsError(
            f"weights file {path} does not fit {name} ({_one_line(exc)[:160]}); it was probably saved "
            "for another variant or image size"
        ) from None


def _load_keras_file(backbone, path: Path, name: str) -> None:
    """Copy weights by layer name from a ``.keras`` model (a transfer run's or an EfficientNet)."""
    try:
        source = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {path} ({_one_line(exc)[:160]})") from None
    try:
        source = source.get_layer(BACKBONE)
    except ValueError:
        pass
    by_name = {layer.name: layer for layer in source.layers}
    mine_names = {layer.name for layer in backbone.layers}
    extra = [layer.name for layer in source.layers if layer.weights and layer.name not in mine_names]
    if extra:
        raise WeightsError(
            f"weights file {path} is for another architecture: it has {len(extra)} weighted layers that {name} "
            f"lacks (e.g. {extra[0]}), so it is a deeper or different network"
        )
    copied = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            raise WeightsError(f"weights file {path} has no layer {layer.name!r}; it is not an EfficientNet like {name}")
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            raise WeightsError(
                f"weights file {path} is for another architecture: layer {layer.name} has shapes {theirs} "
                f"there but {mine} in {name}"
            )
        layer.set_weights(other.get_weights())
        copied += 1
    log.info("copied %d layers from %s", copied, path)


def load_backbone_weights(backbone, weights: str, name: str, spec) -> dict:
    """Load ``weights`` (imagenet | none | path) into the backbone; returns what was loaded."""
    choice = weights.strip()
    if choice.lower() == "none":
        return {"weights": "none"}
    key = name.lower().removeprefix("efficientnet-").removeprefix("efficientnet")
    if choice.lower() == "imagenet":
        if key in KERAS_NOTOP_MD5:
            path = imagenet_weights_file(key)
            _load_h5(backbone, path, name)
            return {"weights": "imagenet", "file": str(path)}
        if key.startswith("lite"):
            from effscale.weights import load_pretrained

            info = load_pretrained(backbone, key, spec)
            return {"weights": "imagenet", **{k: v for k, v in dict(info).items() if isinstance(v, (str, int, float))}}
        raise WeightsError(
            f"there are no ImageNet weights for {name} (only b0-b7 and lite0-lite2); pass --weights none or a file"
        )
    # [issue #5] registry weights by name: --weights lite0|lite1|lite2 (the optional extra 'lite').
    from effscale.weights.load import REGISTRY

    if choice.lower() in REGISTRY:
        from effscale.weights import load_pretrained

        info = load_pretrained(backbone, choice.lower(), spec, name=name)
        return {"weights": choice.lower(), **{k: v for k, v in dict(info).items() if isinstance(v, (str, int, float))}}
    # [/issue #5]
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass --weights imagenet, none or a file path")
    suffix = path.name.lower()
    if suffix.endswith((".pth", ".pt", ".bin")):
        from effscale.weights import load_pretrained

        load_pretrained(backbone, path, spec)
    elif suffix.endswith(".keras"):
        _load_keras_file(backbone, path, name)
    elif suffix.endswith(".h5"):
        _load_h5(backbone, path, name)
    else:
        raise WeightsError(f"unknown weights file type {path.name}; use .keras, .weights.h5, .h5 or .pth")
    return {"weights": "file", "file": str(path)}


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------
def build_transfer_model(config: TransferConfig, spec, native_shape, num_classes: int, image_size: int):
    """images (native size) -> Resizing -> EfficientNet backbone (pooled) -> Dropout -> Dense."""
    from effscale.data.datasets import resizing_inputs
    from effscale.net.keras_model import build_model

    backbone = build_model(spec, include_top=False, pooling=config.pooling, image_size=image_size, name=BACKBONE)
    inputs, x = resizing_inputs(native_shape, image_size)
    x = backbone(x)
    x = keras.layers.Dropout(config.dropout, name=HEAD_LAYERS[0])(x)
    # Zero-initialised head (big_vision's head_zeroinit): the first loss is exactly ln(classes)
    # and the first updates cannot push large random logits back through a pretrained backbone.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD_LAYERS[1],
                                 kernel_initializer="zeros")(x)
    return keras.Model(inputs, outputs, name="transfer"), backbone


def flat_layers(model) -> list:
    """Every leaf layer in order, the nested backbone expanded (what ``model.layers`` shows flat)."""
    flat = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            flat.extend(flat_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            flat.append(layer)
    return flat


def configure_phase(model, backbone, config: TransferConfig, phase: str) -> None:
    """Set trainable flags. Frozen layers run in inference mode (Keras 3: ``trainable=False``
    BatchNorm uses its moving statistics), which is what a frozen backbone needs."""
    from effscale.net.keras_model import block_names

    head = [model.get_layer(n) for n in HEAD_LAYERS]
    if phase == "head":
        backbone.trainable = False
    elif phase == "all":
        backbone.trainable = True
    elif phase == "top-blocks":
        backbone.trainable = True
        blocks = block_names(backbone)
        keep = set(blocks[-config.blocks:])
        for layer in backbone.layers:
            prefix = layer.name.split("_", 1)[0]
            layer.trainable = prefix in keep or layer.name.startswith("top_")
    elif phase == "last-layers":
        backbone.trainable = True
        layers = flat_layers(model)
        trainable = {id(layer) for layer in layers[-config.last_layers:]}
        for layer in backbone.layers:
            layer.trainable = id(layer) in trainable
        for layer in head:
            layer.trainable = id(layer) in trainable
        return
    else:
        raise ValueError(phase)
    for layer in head:
        layer.trainable = True
    if phase != "head" and config.bn_frozen:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def make_optimizer(config: TransferConfig, phase: str, steps_per_epoch: int, phase_epochs: int):
    lr = config.phase_learning_rate(phase)
    if config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps_per_epoch * phase_epochs))
    elif config.schedule == "exponential":
        schedule = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=max(1, round(config.decay_epochs * steps_per_epoch)), decay_rate=config.decay_rate,
            staircase=True)
    elif config.schedule == "inverse-time":
        schedule = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=config.lr_decay)
    else:
        schedule = lr
    wd = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule, epsilon=config.epsilon, weight_decay=wd)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, epsilon=config.epsilon, weight_decay=config.weight_decay or 0.004)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True, weight_decay=wd)
    return keras.optimizers.RMSprop(schedule, rho=config.rho, momentum=config.momentum, epsilon=config.epsilon,
                                    weight_decay=wd)


def compile_model(model, config: TransferConfig, optimizer, num_classes: int) -> None:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5")],
    )


def current_lr(optimizer) -> float:
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - purely informative
        return float("nan")


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
@dataclass
class Checkpointer:
    run: RunDir
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float = -1.0
    wall_before: float = 0.0
    status: str = "running"
    started: float = field(default_factory=time.monotonic)
    extra: dict = field(default_factory=dict)

    @property
    def ckpt(self) -> Path:
        return self.run.path / "checkpoints"

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def wall_time(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    @classmethod
    def restore(cls, run: RunDir) -> Checkpointer | None:
        """The committed state of ``run`` (finishing an interrupted commit), or None if fresh."""
        import json

        path = run.path / STATE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EffscaleError(f"{path} is unreadable ({exc}); start a new run") from None
        ckpt = run.path / "checkpoints"
        pending = ckpt / f".epoch-{state['epoch']}.keras"
        if pending.is_file():
            os.replace(pending, ckpt / "last.keras")  # step 4 of a commit killed half-way
        for leftover in ckpt.glob(".*.keras"):
            leftover.unlink(missing_ok=True)  # an epoch in flight when the process died
        me = cls(run, history=list(state["history"]), best_epoch=state.get("best_epoch"),
                 best_val_accuracy=state.get("best_val_accuracy", -1.0), wall_before=state.get("wall_time_s", 0.0),
                 status=state.get("status", "running"), extra=state.get("extra", {}))
        me.write_history()
        return me

    def state(self) -> dict:
        return {"epoch": self.epochs_done, "phase": self.history[-1]["phase"] if self.history else None,
                "history": self.history, "best_epoch": self.best_epoch, "best_val_accuracy": self.best_val_accuracy,
                "wall_time_s": round(self.wall_time(), 3), "status": self.status, "extra": self.extra}

    def commit(self, model, row: dict) -> None:
        self.ckpt.mkdir(parents=True, exist_ok=True)
        epoch = row["epoch"]
        pending = self.ckpt / f".epoch-{epoch}.keras"
        model.save(str(pending))
        val = row.get("val_accuracy")
        if val is not None and not math.isnan(val) and val > self.best_val_accuracy:
            tmp = self.ckpt / ".best-tmp.keras"
            shutil.copyfile(pending, tmp)
            os.replace(tmp, self.ckpt / "best.keras")
            self.best_epoch, self.best_val_accuracy = epoch, float(val)
        self.history.append(row)
        atomic_write_json(self.run.path / STATE, self.state())  # commit point
        os.replace(pending, self.ckpt / "last.keras")
        self.write_history()

    def write_status(self, status: str) -> None:
        self.status = status
        atomic_write_json(self.run.path / STATE, self.state())

    def write_history(self) -> None:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in self.history:
            writer.writerow(row)
        atomic_write_text(self.run.path / "history.csv", buffer.getvalue())


# --------------------------------------------------------------------------------------
# the epoch callback: progress, guards, commits
# --------------------------------------------------------------------------------------
class EpochCallback(keras.callbacks.Callback):
    def __init__(self, *, config, checkpointer, save_model, phase, total_epochs, steps, num_images,
                 num_classes, progress=None, bn_probe=None):
        super().__init__()
        self.config, self.ckpt, self.save_model = config, checkpointer, save_model
        self.phase, self.total_epochs, self.steps = phase, total_epochs, steps
        self.num_images, self.num_classes = num_images, num_classes
        self.progress, self.task = progress, None
        self.bn_probe = bn_probe  # (layer, moving_mean snapshot) of a frozen BatchNorm
        self.nan_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.monotonic()
        self.t_val = None
        self.lr = current_lr(self.model.optimizer)  # the rate the epoch starts with
        if self.progress is not None:
            desc = f"epoch {epoch + 1}/{self.total_epochs} ({self.phase})"
            if self.task is None:
                self.task = self.progress.add_task(desc, total=self.steps)
            self.progress.reset(self.task, total=self.steps, description=desc)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = (self.epoch_index(), batch + 1)
            self.model.stop_training = True
        if self.progress is not None and self.task is not None:
            acc = logs.get("accuracy")
            self.progress.update(self.task, advance=1, description=(
                f"epoch {self.epoch_index() + 1}/{self.total_epochs} ({self.phase}) "
                f"loss {float(loss or 0):.3f} acc {100 * float(acc or 0):.1f}%"))

    def epoch_index(self) -> int:
        return self.ckpt.epochs_done

    def on_test_begin(self, logs=None):
        if self.t_val is None:
            self.t_val = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        end = time.monotonic()
        train_time = (self.t_val or end) - self.t0
        if self.nan_at is None and not math.isfinite(float(logs.get("loss", 0.0))):
            self.nan_at = (epoch, self.steps)
        if self.nan_at is not None:
            self.model.stop_training = True
            return
        if self.bn_probe is not None:
            layer, before = self.bn_probe
            after = keras.ops.convert_to_numpy(layer.moving_mean)
            if not np.allclose(before, after):
                raise EffscaleError(
                    f"frozen BatchNorm {layer.name} changed its statistics during training; it is not in "
                    "inference mode (please report this bug)"
                )
        row = {
            "epoch": epoch + 1,
            "phase": self.phase,
            "lr": self.lr,
            "loss": float(logs.get("loss", float("nan"))),
            "accuracy": float(logs.get("accuracy", float("nan"))),
            "top5": float(logs.get("top5", float("nan"))),
            "val_loss": float(logs.get("val_loss", float("nan"))),
            "val_accuracy": float(logs.get("val_accuracy", float("nan"))),
            "val_top5": float(logs.get("val_top5", float("nan"))),
            "train_time_s": round(train_time, 3),
            "epoch_time_s": round(end - self.t0, 3),
            "images_per_s": round(self.num_images / train_time, 2) if train_time > 0 else None,
        }
        self.ckpt.commit(self.save_model, row)
        console.info(
            f"epoch {epoch + 1}/{self.total_epochs} ({self.phase}) loss {row['loss']:.4f} "
            f"acc {100 * row['accuracy']:.1f}% val_loss {row['val_loss']:.4f} "
            f"val_acc {100 * row['val_accuracy']:.1f}% top5 {100 * row['val_top5']:.1f}% "
            f"{row['images_per_s'] or 0:.0f} img/s"
        )
        log.info("epoch %s committed: %s", epoch + 1, row)
        if epoch == 0 and row["loss"] > math.log(self.num_classes):
            console.warn(
                f"training loss {row['loss']:.3f} is still above ln({self.num_classes}) = "
                f"{math.log(self.num_classes):.3f} (chance) after the first epoch. Likely causes: images "
                "scaled to 0-1 instead of 0-255, a learning rate too high for the optimizer, BatchNorm of a "
                "frozen backbone updating its statistics, labels not matching images, or tiny images "
                "upsampled far beyond their content"
            )


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console.err, transient=True)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    from effscale.evaluate import score  # the same top-k scoring `effscale evaluate` reports

    scores = score(probs, labels, k=min(5, num_classes))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, scores["top"][:, 0]), 1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "top1": scores["top1"],
        "top5": scores["top5"],
        "loss": float(-np.log(picked).mean()),
        "val_images": int(len(labels)),
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def _input_guard(config: TransferConfig, batch) -> None:
    from effscale.net.keras_model import check_input_range

    refuse = config.pretrained and config.input_check == "error"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_input_range(np.asarray(batch), pretrained=refuse)
    for item in caught:
        console.warn(str(item.message))
        log.warning("input range: %s", item.message)


def _first_batch(batches):
    for x, _ in batches:
        return keras.ops.convert_to_numpy(x)
    return None


def feature_cache_key(config: TransferConfig, spec, image_size: int, weights_info: dict, x: np.ndarray) -> str:
    """What the backbone's features depend on: architecture, size, pooling, weights, images."""
    import hashlib
    import json

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


def _features(feature_model, x, config, num_classes, cache: Path, key: str) -> tuple[np.ndarray, bool]:
    """Backbone features of ``x``: read from ``cache/<key>.npy`` or computed once and stored."""
    from effscale.data.datasets import make_batches

    path = cache / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    batches = make_batches(x, np.zeros(len(x), np.int64), batch_size=max(config.batch_size, 128),
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


def load_config_dataset(config: TransferConfig):
    from effscale.data.datasets import load_dataset

    console.info(f"loading dataset {config.dataset} ...")
    return load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
                        limit_train=config.limit_train, limit_val=config.limit_val, seed=config.seed)


def distribution_scope(enabled: bool):
    """Data parallelism over every visible device, by the backend's standard mechanism."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        console.info(f"data parallel: MirroredStrategy over {strategy.num_replicas_in_sync} replica(s)")
        return strategy.scope()
    if backend == "jax":
        distribution = keras.distribution.DataParallel()
        keras.distribution.set_distribution(distribution)
        console.info(f"data parallel: keras.distribution.DataParallel over {len(distribution.device_mesh.devices)} device(s)")
        return contextlib.nullcontext()
    from effscale.errors import ConfigError

    raise ConfigError(f"--distribute supports the tensorflow and jax backends, not {backend}")


def transfer(config: TransferConfig, run: RunDir, progress: bool = True, data=None, distribute: bool = False) -> dict:
    """Train ``config`` in ``run`` (fresh or resumed); writes metrics.json; returns it.

    ``data`` is the already loaded ``ImageDataset`` (the CLI loads it before creating the
    run directory, so a bad dataset leaves nothing behind); loaded here when omitted.
    ``distribute`` trains data-parallel over all visible devices (``distribution_scope``).
    """
    with distribution_scope(distribute):
        return _transfer(config, run, progress, data)


def _transfer(config: TransferConfig, run: RunDir, progress: bool, data) -> dict:
    from effscale.net.cost import network_cost
    from effscale.data.datasets import make_batches
    from effscale.schemas import resolve_network

    config.validate()
    if config.precision != "float32":
        keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)

    name, spec = resolve_network(config.variant)
    image_size = config.image_size or spec.resolution
    if data is None:
        data = load_config_dataset(config)
    num_classes = data.num_classes
    console.info(f"dataset {data.name}: {len(data.y_train):,} train / {len(data.y_val):,} val images, "
                 f"{num_classes} classes, stored at {data.image_shape[0]}x{data.image_shape[1]}, "
                 f"trained at {image_size}x{image_size}")
    steps = -(-len(data.y_train) // config.batch_size)
    ckpt = Checkpointer.restore(run)
    resumed = ckpt is not None
    if ckpt is None:
        ckpt = Checkpointer(run)
        ckpt.extra = {"dataset": data.summary(), "variant": name, "image_size": image_size}
    ckpt.started = time.monotonic()
    ckpt.status = "running"

    if resumed:
        last = run.path / "checkpoints" / "last.keras"
        console.info(f"resuming {run.path} after epoch {ckpt.epochs_done}/{config.epochs}")
        model = keras.models.load_model(str(last), compile=True)
        backbone = model.get_layer(BACKBONE)
        weights_info = ckpt.extra.get("weights", {})
    else:
        model, backbone = build_transfer_model(config, spec, data.image_shape, num_classes, image_size)
        weights_info = load_backbone_weights(backbone, config.weights, name, spec)
        ckpt.extra["weights"] = weights_info

    cost = network_cost(spec.with_resolution(image_size), num_classes=num_classes, include_top=True)
    ckpt.extra.update({"params": int(model.count_params()), "macs": int(cost.macs)})

    train_batches = make_batches(data.x_train, data.y_train, batch_size=config.batch_size, num_classes=num_classes,
                                 training=True, augment=config.augment, seed=config.seed,
                                 deterministic=True)  # same seed, same batches: runs are reproducible
    val_batches = make_batches(data.x_val, data.y_val, batch_size=config.batch_size, num_classes=num_classes,
                               training=False)
    if config.strategy != "linear-probe":
        _input_guard(config, _first_batch(train_batches))
    else:
        _input_guard(config, data.x_train[: config.batch_size].astype(np.float32))

    bar = _progress() if progress else None
    probe_feats = None
    if bar is not None:
        bar.start()
    try:
        for phase, first, end in config.phases():
            if end <= ckpt.epochs_done:
                continue
            start = max(first, ckpt.epochs_done)
            continuing = resumed and ckpt.history and ckpt.history[-1]["phase"] == phase and start > first
            configure_phase(model, backbone, config, phase)
            optimizer = model.optimizer if continuing and model.optimizer is not None else \
                make_optimizer(config, phase, steps, end - first)
            bn_probe = None
            if config.bn_frozen or phase == "head":
                frozen = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)
                          and not l.trainable]
                if frozen:
                    bn_probe = (frozen[-1], keras.ops.convert_to_numpy(frozen[-1].moving_mean).copy())
            callback = EpochCallback(config=config, checkpointer=ckpt, save_model=model, phase=phase,
                                     total_epochs=config.epochs, steps=steps, num_images=len(data.y_train),
                                     num_classes=num_classes, progress=bar, bn_probe=bn_probe)
            if config.strategy == "linear-probe":
                if probe_feats is None:
                    feature_model = keras.Model(model.input, model.get_layer(HEAD_LAYERS[0]).input)
                    cache = feature_cache_dir(config)
                    t_feat = time.monotonic()
                    found = []
                    for split, x in (("train", data.x_train), ("val", data.x_val)):
                        key = feature_cache_key(config, spec, image_size, weights_info, x)
                        feats, hit = _features(feature_model, x, config, num_classes, cache, key)
                        found.append(feats)
                        ckpt.extra[f"features_{split}"] = str(cache / f"{key}.npy")
                        console.info(f"{split} features ({feats.shape[1]} per image): "
                                     + ("reused from the cache" if hit else "computed once and cached"))
                    probe_feats = tuple(found)
                    ckpt.extra["feature_time_s"] = round(time.monotonic() - t_feat, 3)
                feats_in = keras.Input(shape=probe_feats[0].shape[1:], name="features")
                head_out = model.get_layer(HEAD_LAYERS[1])(model.get_layer(HEAD_LAYERS[0])(feats_in))
                trainer = keras.Model(feats_in, head_out, name="head")
                compile_model(trainer, config, optimizer, num_classes)
                compile_model(model, config, optimizer, num_classes)  # so checkpoints carry the optimizer
                eye = np.eye(num_classes, dtype=np.float32)
                trainer.fit(probe_feats[0], eye[data.y_train], batch_size=config.batch_size, shuffle=True,
                            validation_data=(probe_feats[1], eye[data.y_val]), initial_epoch=start, epochs=end,
                            verbose=0, callbacks=[callback])
            else:
                compile_model(model, config, optimizer, num_classes)
                model.fit(train_batches, validation_data=val_batches, initial_epoch=start, epochs=end,
                          verbose=0, callbacks=[callback], shuffle=False)  # the pipeline shuffles
            if callback.nan_at is not None:
                ckpt.status = "nan"
                ckpt.extra["nan_at"] = {"epoch": callback.nan_at[0] + 1, "batch": callback.nan_at[1]}
                break
    finally:
        if bar is not None:
            bar.stop()

    if ckpt.status != "nan":
        ckpt.status = "complete"
    ckpt.write_status(ckpt.status)
    metrics = {"status": ckpt.status, "epochs_planned": config.epochs, "epochs_done": ckpt.epochs_done,
               "best_epoch": ckpt.best_epoch, "variant": name, "image_size": image_size,
               "dataset": data.summary(), "class_names": list(data.class_names), "weights": weights_info,
               "params": ckpt.extra["params"], "trainable_params": int(sum(np.prod(w.shape) for w in
                                                                           model.trainable_weights)),
               "macs": ckpt.extra["macs"], "backend": keras.backend.backend(), "wall_time_s": round(ckpt.wall_time(), 2)}
    rates = [r["images_per_s"] for r in ckpt.history if r.get("images_per_s")]
    steady = rates[1:] if len(rates) > 1 else rates
    metrics["train_images_per_s"] = float(np.median(steady)) if steady else None
    best = run.path / "checkpoints" / "best.keras"
    if best.is_file():
        model.load_weights(str(best))
        console.info(f"evaluating the best epoch ({ckpt.best_epoch}) on {len(data.y_val):,} validation images ...")
        if probe_feats is not None:
            trainer = keras.Model(feats_in, model.get_layer(HEAD_LAYERS[1])(model.get_layer(HEAD_LAYERS[0])(feats_in)))
            probs = trainer.predict(probe_feats[1], batch_size=512, verbose=0)
        else:
            probs = model.predict(val_batches, verbose=0)
        metrics.update(evaluate_predictions(probs, data.y_val, num_classes))
    else:
        metrics.update({"top1": None, "top5": None, "loss": None, "confusion": None})
    if ckpt.status == "nan":
        metrics["nan_at"] = ckpt.extra.get("nan_at")
    atomic_write_json(run.path / "metrics.json", metrics)
    return metrics
