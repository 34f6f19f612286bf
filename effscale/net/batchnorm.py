"""BatchNorm statistics recomputed from the final weights ("precise BN", Wu & Johnson 2021).

Used by the grid's proxy trials before they score and by transfer before each validation:
moving statistics averaged over the last ~100 steps (Keras's momentum 0.99) describe
earlier weights, so both set them to the exact average over a few training batches.

Keras is imported inside the functions.
"""

from __future__ import annotations

import numpy as np


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
    return found


# Values of the largest BatchNorm input per eager call. An eager call of B0 costs about a
# second of dispatch whatever its batch, so small inputs are pooled; but Keras's own eager
# call held about 100 bytes per value at its peak (the 68 px proxy, 512 images in one call:
# +3 GB and no faster than 8 of 64), so at most 4 M: 75 images there, 170 for B0 at 32 px.
# The calls now go through lean_call, which holds far less; the bound stays because the
# chunk size is part of the result (the variance is averaged over chunks).
RECALIBRATION_CHUNK_ELEMENTS = 4 * 2**20


def recalibrate_batchnorm(model, images: np.ndarray, batches: int, batch_size: int, seed: int = 0) -> int:
    """Set every BN layer's moving statistics to the average over ``batches`` training batches.

    The ``batches * batch_size`` images are run through the network in training mode, in
    chunks as large as ``RECALIBRATION_CHUNK_ELEMENTS`` allows, and each chunk is folded in
    through the layers' own update rule with momentum n/(n+m) (n images seen, m in the
    chunk): the moving mean ends as the mean over all the images, and the moving variance
    as the image-weighted mean of the chunks' variances. Runs eagerly (a traced function
    would freeze the momentum), forward only. Returns the number of batches' worth of
    images used.
    """
    from effscale.net.lean_forward import lean_call

    bns = batchnorm_layers(model)
    if not bns or batches <= 0 or len(images) == 0:
        return 0
    order = np.random.default_rng(seed).permutation(len(images))[: batches * batch_size]
    chunks = np.array_split(order, -(-len(order) // _chunk_images(model, batch_size)))
    saved = [bn.momentum for bn in bns]
    seen = 0
    try:
        for idx in chunks:
            for bn in bns:
                bn.momentum = seen / (seen + len(idx))
            lean_call(model, images[idx].astype("float32"), training=True)
            seen += len(idx)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    return -(-seen // batch_size)


def largest_batchnorm_input(model) -> int:
    """Values per image of the largest input to any BatchNorm layer of ``model``."""
    return max(int(np.prod(bn.input.shape[1:])) for bn in batchnorm_layers(model))


def _chunk_images(model, batch_size: int) -> int:
    try:
        largest = largest_batchnorm_input(model)
    except (AttributeError, ValueError, TypeError):  # a layer without one symbolic input
        return batch_size
    return max(batch_size, RECALIBRATION_CHUNK_ELEMENTS // max(1, largest))
