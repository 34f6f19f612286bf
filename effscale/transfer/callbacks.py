"""The epoch callback of a transfer run: progress bar, NaN guard, frozen-BatchNorm guard,
the checkpoint commit and the one console line per epoch; and ``BatchNormRecalibration``,
which recomputes trainable BatchNorm statistics before each validation."""

from __future__ import annotations

import logging
import math
import time

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effscale import console  # noqa: E402
from effscale.errors import EffscaleError  # noqa: E402
from effscale.transfer.strategies import current_lr  # noqa: E402

log = logging.getLogger("effscale.transfer.train")


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




def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console.err, transient=True)



# 16 batches (about 1,000 images at the default batch of 64) give the exact average the
# statistics need ("precise BN", as the grid's proxy does with 8-16) for a few percent of a
# CIFAR epoch's time.
BN_RECALIBRATION_BATCHES = 16


def trains_batchnorm(backbone) -> bool:
    """Whether this phase updates any BatchNorm statistics (frozen ones run in inference mode)."""
    from effscale.net.batchnorm import batchnorm_layers

    return any(layer.trainable for layer in batchnorm_layers(backbone))


class BatchNormRecalibration(keras.callbacks.Callback):
    """Before each validation, set the moving statistics of every trainable BatchNorm to the
    exact average over ``BN_RECALIBRATION_BATCHES`` training batches of the current weights.

    Keras's momentum 0.99 averages the statistics over the last ~100 steps of a network that
    changed a lot during them: after a few steps from scratch they are still near their
    initial values and the validation measures them, not the network (a smoke run scored
    chance, every image one class). Training itself is unchanged: it uses batch statistics.
    The checkpoint committed after the validation carries the recalibrated statistics.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_begin(self, logs=None):
        from effscale.net.batchnorm import recalibrate_batchnorm

        used = recalibrate_batchnorm(self.model, self.images, BN_RECALIBRATION_BATCHES, self.batch_size,
                                     seed=self.seed + self.epoch)
        log.debug("epoch %d: BatchNorm statistics recalibrated on %d batches", self.epoch + 1, used)
