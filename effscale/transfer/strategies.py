"""What each strategy trains, and with which optimizer and learning rate.

A strategy is a list of phases (``TransferConfig.phases``: ``head``, ``all``,
``top-blocks``, ``last-layers``). ``configure_phase`` sets the trainable flags of one
phase; ``make_optimizer`` builds its optimizer with the phase's learning rate and schedule.
"""

from __future__ import annotations

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402

from effscale.net.training_state import create_training_variables  # noqa: E402
from effscale.transfer.config import TransferConfig  # noqa: E402
from effscale.transfer.model import HEAD_LAYERS, flat_layers  # noqa: E402


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
    wd = config.optimizer_weight_decay or None  # Keras: None means no decay at all
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule, epsilon=config.epsilon, weight_decay=wd)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, epsilon=config.epsilon, weight_decay=wd)
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
    create_training_variables(model)  # else the first step is traced twice


def current_lr(optimizer) -> float:
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - purely informative
        return float("nan")

