"""NetworkSpec -> keras.Model. The only module that builds EfficientNet layers.

Keras 3 layers and ``keras.ops`` only, so it runs under the TensorFlow, JAX and torch
backends. For the published configs the graph is layer-for-layer the one of
``keras.applications.EfficientNetB0..B7``: same names, same weight order, same outputs
after ``set_weights(reference.get_weights())``.

Input convention (as keras.applications): float pixels in 0-255. Rescaling and
normalization live inside the model; feeding 0-1 images is the classic cause of ~10%
transfer accuracy, so ``check_input_range`` refuses or warns about it.
"""

from __future__ import annotations

import math
import warnings

from effscale.backend import set_defaults  # noqa: E402

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from effscale.net.arch import NetworkSpec  # noqa: E402
from effscale.errors import ConfigError, InputRangeError  # noqa: E402

IMAGENET_MEAN_RGB = [0.485, 0.456, 0.406]
IMAGENET_STDDEV_RGB = [0.229, 0.224, 0.225]

# Same initializers as keras.applications.efficientnet.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}

# Input normalisations. "imagenet" is Keras's layout for ImageNet weights (Normalization
# holds the std, not the variance, and a Rescaling divides by sqrt(std) once more; see
# tensorflow/tensorflow#49930). "unit" is Keras's weights=None layout: pixels / 255 and an
# identity Normalization. "lite" is EfficientNet-Lite's (x - 127) / 128.
INPUT_NORMS = ("imagenet", "unit", "lite")


def correct_pad(size: int | None, kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding before a stride-2 'valid' conv, as keras.applications computes it."""
    adjust = 1 if size is None else 1 - size % 2
    correct = kernel_size // 2
    return ((correct - adjust, correct), (correct - adjust, correct))


def _input_stem(x, input_norm: str):
    if input_norm == "lite":
        return layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(x)
    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    norm = layers.Normalization(axis=-1, name="normalization")
    x = norm(x)
    if input_norm == "imagenet":
        # Same values the Keras ImageNet checkpoint stores in this layer.
        norm.set_weights([np.array(IMAGENET_MEAN_RGB), np.array(IMAGENET_STDDEV_RGB), np.array(0)])
        norm.finalize_state()  # call() reads tensors cached from the variables at build time
        x = layers.Rescaling([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], name="rescaling_1")(x)
    return x


def _block(x, *, activation, drop_rate, name, filters_in, filters_out, kernel_size, strides,
           expand_ratio, se_ratio, id_skip):
    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                          kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}expand_conv")(x)
        x = layers.BatchNormalization(axis=-1, name=f"{name}expand_bn")(x)
        x = layers.Activation(activation, name=f"{name}expand_activation")(x)
    if strides == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1], kernel_size), name=f"{name}dwconv_pad")(x)
        conv_pad = "valid"
    else:
        conv_pad = "same"
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding=conv_pad, use_bias=False,
                               depthwise_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(axis=-1, name=f"{name}bn")(x)
    x = layers.Activation(activation, name=f"{name}activation")(x)
    if 0 < se_ratio <= 1:
        filters_se = max(1, int(filters_in * se_ratio))
        se = layers.GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
        se = layers.Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
        se = layers.Conv2D(filters_se, 1, padding="same", activation=activation,
                           kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_reduce")(se)
        se = layers.Conv2D(filters, 1, padding="same", activation="sigmoid",
                           kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_expand")(se)
        x = layers.multiply([x, se], name=f"{name}se_excite")
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(axis=-1, name=f"{name}project_bn")(x)
    if id_skip and strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.add([x, inputs], name=f"{name}add")
    return x


def build_model(
    spec: NetworkSpec,
    num_classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    image_size: int | None = None,
    input_norm: str | None = None,
    classifier_activation: str | None = "softmax",
    name: str = "efficientnet",
) -> keras.Model:
    """Build ``spec`` as a functional Keras model with Keras's layer names.

    ``image_size`` overrides the spec's resolution (0 means any size: ``None`` spatial dims).
    ``pooling`` ("avg"/"max") only applies with ``include_top=False``, as in Keras.
    """
    input_norm = input_norm or spec.input_norm
    if input_norm not in INPUT_NORMS:
        raise ConfigError(f"unknown input normalisation {input_norm!r}; use one of {INPUT_NORMS}")
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    size = spec.resolution if image_size is None else (image_size or None)
    img_input = keras.Input(shape=(size, size, 3), name="input_layer")
    x = _input_stem(img_input, input_norm)
    x = layers.ZeroPadding2D(correct_pad(size, 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(spec.stem_filters, 3, strides=2, padding="valid", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER, name="stem_conv")(x)
    x = layers.BatchNormalization(axis=-1, name="stem_bn")(x)
    x = layers.Activation(spec.activation, name="stem_activation")(x)

    total, b = float(spec.total_blocks), 0
    for i, stage in enumerate(spec.stages):
        for j in range(stage.repeats):
            x = _block(
                x,
                activation=spec.activation,
                drop_rate=spec.drop_connect_rate * b / total,
                name=f"block{i + 1}{chr(j + 97)}_",
                filters_in=stage.filters_in if j == 0 else stage.filters_out,
                filters_out=stage.filters_out,
                kernel_size=stage.kernel_size,
                strides=stage.strides if j == 0 else 1,
                expand_ratio=stage.expand_ratio,
                se_ratio=stage.se_ratio,
                id_skip=stage.id_skip,
            )
            b += 1

    x = layers.Conv2D(spec.head_filters, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER, name="top_conv")(x)
    x = layers.BatchNormalization(axis=-1, name="top_bn")(x)
    x = layers.Activation(spec.activation, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if spec.dropout_rate > 0:
            x = layers.Dropout(spec.dropout_rate, name="top_dropout")(x)
        x = layers.Dense(num_classes, activation=classifier_activation,
                         kernel_initializer=DENSE_KERNEL_INITIALIZER,
                         bias_initializer="zeros", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(img_input, x, name=name)


def block_names(model: keras.Model) -> list[str]:
    """Distinct block prefixes in order ("block1a", ...), for freezing whole blocks by name."""
    seen: list[str] = []
    for layer in model.layers:
        if layer.name.startswith("block"):
            prefix = layer.name.split("_", 1)[0]
            if prefix not in seen:
                seen.append(prefix)
    return seen


def check_input_range(images, pretrained: bool) -> None:
    """Refuse (pretrained) or warn (from scratch) when images look like 0-1 floats.

    The models expect 0-255 pixels. A batch whose maximum is <= 1.0 almost surely was
    divided by 255 already, which starves pretrained features of contrast.
    """
    arr = np.asarray(images)
    if arr.size == 0:
        return
    peak = float(np.max(arr))
    if peak <= 1.0 + 1e-6 and float(np.min(arr)) >= -1.0 - 1e-6:
        message = (
            f"input pixels span [{float(np.min(arr)):.3g}, {peak:.3g}] but effscale models expect "
            "0-255 (rescaling happens inside the model); do not divide images by 255"
        )
        if pretrained:
            raise InputRangeError(message)
        warnings.warn(message, stacklevel=2)


def set_model_weights(model: keras.Model, weights) -> None:
    """``model.set_weights`` that also refreshes Normalization's cached mean/variance.

    Keras's Normalization layer caches tensors from its variables; ``set_weights`` alone
    leaves the input normalisation stale (``load_weights`` refreshes it, this mirrors that).
    """
    model.set_weights(weights)
    for layer in model.layers:
        if isinstance(layer, layers.Normalization):
            layer.finalize_state()
