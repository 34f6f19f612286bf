"""Transfer training: ``transfer(config, run)`` trains one ``TransferConfig`` in a run
directory and is safe to kill at any moment.

It reads as the steps it takes (``transfer`` below): 1. settings, 2. network and data,
3. restore or start (big_vision's resume order: ``checkpoints/state.json`` exists -> load
``last.keras`` with its optimizer state and continue after the last committed epoch;
otherwise build the model and load the configured weights), 4. input pipelines and the
input-range guard, 5. train phase by phase, 6. score the best checkpoint and write
``metrics.json``.

The jobs around it each have their own module: ``model`` (assembly, weights),
``strategies`` (what is trained, optimizers), ``checkpoints`` (the commit protocol),
``callbacks`` (the epoch callback, BatchNorm recalibration), ``cache`` and ``prefix`` (the
cached frozen prefix of linear-probe, top-blocks and last-layers), ``probe`` (the tuned
linear probe). Keras 3 layers and ops only in the model; tf.data only inside
``effscale.data`` under the TensorFlow backend.
"""

from __future__ import annotations

import logging
import time
import warnings

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effscale import console  # noqa: E402
from effscale.errors import EffscaleError  # noqa: E402
from effscale.runs import RunDir  # noqa: E402
from effscale.transfer.callbacks import (  # noqa: E402
    BatchNormRecalibration, EpochCallback, progress_bar, trains_batchnorm,
)
from effscale.transfer.checkpoints import Checkpointer, RunStatus, restore_seed_states  # noqa: E402
from effscale.transfer.config import TransferConfig  # noqa: E402
from effscale.transfer.model import (  # noqa: E402
    BACKBONE, HEAD_LAYERS, build_transfer_model, load_backbone_weights,
)
from effscale.transfer.prefix import CachedTop  # noqa: E402
from effscale.transfer.strategies import compile_model, configure_phase, make_optimizer  # noqa: E402

log = logging.getLogger("effscale.transfer.train")



class TrainingStopped(EffscaleError):
    """Training stopped early (NaN loss); the reports were still written."""


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top-1, top-5, loss and the confusion matrix of the final predictions."""
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

    ``data`` is the already loaded ``ImageDataset`` (``effscale.transfer.run`` loads it
    before creating the run directory, so a bad dataset leaves nothing behind); loaded
    here when omitted. ``distribute`` trains data-parallel over all visible devices.
    """
    with distribution_scope(distribute):
        return _transfer(config, run, progress, data)


def _transfer(config: TransferConfig, run: RunDir, progress: bool, data) -> dict:
    from effscale.data.datasets import make_batches
    from effscale.schemas import resolve_network

    # 1. Settings: validated, precision policy, one seed for weights, dropout and data order.
    config.validate()
    if config.precision != "float32":
        keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)

    # 2. Network and data.
    name, spec = resolve_network(config.variant)
    image_size = config.image_size or spec.resolution
    if data is None:
        data = load_config_dataset(config)
    num_classes = data.num_classes
    console.info(f"dataset {data.name}: {len(data.y_train):,} train / {len(data.y_val):,} val images, "
                 f"{num_classes} classes, stored at {data.image_shape[0]}x{data.image_shape[1]}, "
                 f"trained at {image_size}x{image_size}")
    steps = -(-len(data.y_train) // config.batch_size)

    # 3. Restore the committed state, or build the model and load its weights.
    ckpt, model, backbone, resumed = _restore_or_start(config, run, data, name, spec, image_size)

    # 4. Input pipelines and the range guard. Epoch e's batches depend on (seed, e) only, so
    # a distributed or resumed run trains on the same batches as one uninterrupted device.
    def train_batches(first: int, end: int):
        return make_batches(data.x_train, data.y_train, batch_size=config.batch_size, num_classes=num_classes,
                            training=True, augment=config.augment, seed=config.seed, deterministic=True,
                            epochs=range(first, end))

    val_batches = make_batches(data.x_val, data.y_val, batch_size=config.batch_size, num_classes=num_classes,
                               training=False)
    if config.strategy != "linear-probe":
        _input_guard(config, _first_batch(train_batches(ckpt.epochs_done, ckpt.epochs_done + 1)))
    else:
        _input_guard(config, data.x_train[: config.batch_size].astype(np.float32))

    # 5. Train phase by phase; each epoch commits through the callback.
    # Frozen-bottom strategies train only the top, on activations of the frozen prefix
    # computed once per image and view (effscale.transfer.prefix).
    cached = CachedTop(config, spec, image_size, ckpt, HEAD_LAYERS) if config.cached_prefix else None
    bar = progress_bar() if progress else None
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
            callback = EpochCallback(config=config, checkpointer=ckpt, save_model=model, phase=phase,
                                     total_epochs=config.phases()[-1][2], steps=steps, num_images=len(data.y_train),
                                     num_classes=num_classes, progress=bar,
                                     bn_probe=_frozen_bn_probe(config, backbone, phase))
            if cached is not None:
                cached.fit(model, backbone, optimizer, data, start, end, callback, phase, compile_model)
            else:
                callbacks = [callback]  # first: its validation timer starts before the recalibration
                if trains_batchnorm(backbone):
                    callbacks.append(BatchNormRecalibration(data.x_train, config.batch_size, config.seed))
                compile_model(model, config, optimizer, num_classes)
                model.fit(train_batches(start, end), steps_per_epoch=steps, validation_data=val_batches,
                          initial_epoch=start, epochs=end, verbose=0, callbacks=callbacks,
                          shuffle=False)  # the pipeline shuffles
            if callback.nan_at is not None:
                ckpt.status = RunStatus.NAN
                ckpt.extra["nan_at"] = {"epoch": callback.nan_at[0] + 1, "batch": callback.nan_at[1]}
                break
    finally:
        if bar is not None:
            bar.stop()

    # 6. Score the best checkpoint and write metrics.json.
    if ckpt.status != RunStatus.NAN:
        ckpt.status = RunStatus.COMPLETE
    ckpt.write_status(ckpt.status)
    metrics = _summary(config, ckpt, model, data, name, image_size)
    best = run.best_checkpoint
    if best.is_file():
        model.load_weights(str(best))
        console.info(f"evaluating the best epoch ({ckpt.best_epoch}) on {len(data.y_val):,} validation images ...")
        if cached is not None:
            probs = cached.predict(model, backbone, data)
        else:
            probs = model.predict(val_batches, verbose=0)
        metrics.update(evaluate_predictions(probs, data.y_val, num_classes))
        # What was scored: a cached top averages each image's prediction with its flip's.
        metrics["val_views"] = "+".join(cached.view_names("val")) if cached is not None else "image"
    else:
        metrics.update({"top1": None, "top5": None, "loss": None, "confusion": None})
    if ckpt.status == RunStatus.NAN:
        metrics["nan_at"] = ckpt.extra.get("nan_at")
    from effscale.fsutil import atomic_write_json

    atomic_write_json(run.metrics_path, metrics)
    return metrics


def _restore_or_start(config, run, data, name, spec, image_size):
    """``(checkpointer, model, backbone, resumed)``: big_vision's resume order."""
    from effscale.net.cost import network_cost

    ckpt = Checkpointer.restore(run)
    resumed = ckpt is not None
    if not resumed:
        ckpt = Checkpointer(run)
        ckpt.extra = {"dataset": data.summary(), "variant": name, "image_size": image_size}
    ckpt.started = time.monotonic()
    ckpt.status = RunStatus.RUNNING
    if resumed:
        console.info(f"resuming {run.path} after epoch {ckpt.epochs_done}/{config.epochs}")
        model = keras.models.load_model(str(run.last_checkpoint), compile=True)
        restore_seed_states(model, ckpt.extra.get("seed_states"))
        backbone = model.get_layer(BACKBONE)
    else:
        model, backbone = build_transfer_model(config, spec, data.image_shape, data.num_classes, image_size)
        ckpt.extra["weights"] = load_backbone_weights(backbone, config.weights, name, spec)
    cost = network_cost(spec.with_resolution(image_size), num_classes=data.num_classes, include_top=True)
    ckpt.extra.update({"params": int(model.count_params()), "macs": int(cost.macs)})
    return ckpt, model, backbone, resumed


def _frozen_bn_probe(config, backbone, phase):
    """(layer, moving_mean snapshot) of the last frozen BatchNorm, which the callback checks
    is unchanged after each epoch; None when nothing is frozen."""
    if not (config.bn_frozen or phase == "head"):
        return None
    frozen = [layer for layer in backbone.layers
              if isinstance(layer, keras.layers.BatchNormalization) and not layer.trainable]
    if not frozen:
        return None
    return frozen[-1], keras.ops.convert_to_numpy(frozen[-1].moving_mean).copy()


def _summary(config, ckpt, model, data, name, image_size) -> dict:
    metrics = {"status": ckpt.status.value, "epochs_planned": config.phases()[-1][2], "epochs_done": ckpt.epochs_done,
               "best_epoch": ckpt.best_epoch, "variant": name, "image_size": image_size,
               "dataset": data.summary(), "class_names": list(data.class_names),
               "weights": ckpt.extra.get("weights", {}), "params": ckpt.extra["params"],
               "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
               "macs": ckpt.extra["macs"], "backend": keras.backend.backend(),
               "wall_time_s": round(ckpt.wall_time(), 2)}
    rates = [r["images_per_s"] for r in ckpt.history if r.get("images_per_s")]
    steady = rates[1:] if len(rates) > 1 else rates
    metrics["train_images_per_s"] = float(np.median(steady)) if steady else None
    return metrics
