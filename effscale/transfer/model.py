"""The transfer model: images at their native size -> Resizing -> EfficientNet backbone
(pooled) -> Dropout -> Dense, and the backbone's weights loaded through the one resolver
(``effscale.weights.resolve``). The only place a transfer model is assembled.
"""

from __future__ import annotations

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402

from effscale.transfer.config import TransferConfig  # noqa: E402
from effscale.weights.keras_files import BACKBONE  # noqa: E402
from effscale.weights.resolve import load_backbone_weights  # noqa: E402,F401 - part of this module's API

HEAD_LAYERS = ("head_dropout", "predictions")


def build_transfer_model(config: TransferConfig, spec, native_shape, num_classes: int, image_size: int):
    """images (native size) -> Resizing -> EfficientNet backbone (pooled) -> Dropout -> Dense."""
    from effscale.data.datasets import resizing_inputs
    from effscale.net.keras_model import build_model

    backbone = build_model(spec, include_top=False, pooling=config.pooling, image_size=image_size, name=BACKBONE)
    inputs, x = resizing_inputs(native_shape, image_size)
    x = head_features(backbone(x), config)
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


def head_features(pooled, config: TransferConfig):
    """What the head reads: for ``linear-probe`` with ``probe_features="sqrt"`` the signed square
    root of each pooled feature (power normalisation: it evens out the few large activations
    a linear model otherwise leans on), else the pooled features. Written as keras.ops in the
    graph, so a saved model loads and exports without effscale; ``probe.signed_sqrt`` is the
    numpy twin the L-BFGS probe fits on."""
    if not config.sqrt_features:
        return pooled
    ops = keras.ops
    return ops.sqrt(ops.relu(pooled)) - ops.sqrt(ops.relu(-pooled))
