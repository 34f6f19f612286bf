"""Training augmentation: flip and crop as pure functions of (seed, epoch, batch, images).

``flip`` and ``crop`` (the default recipe's augmentation) draw their randomness from a key
made of the run's seed, the epoch and the batch's index within the epoch, never from a
running random state, so a batch is augmented the same way however often the pipeline
was iterated before, in whatever order parallel workers finish, and after ``--resume``.
``crop`` is pad-and-crop: reflect-pad each side by ``crop_padding`` pixels, then cut the
original size back out at a random integer offset per image (an exact shift, no
interpolation). Under TensorFlow the draws are stateless ops (so they run inside
``tf.data``); other backends draw from numpy. The two backends draw different numbers,
each deterministically.

``rotate`` and ``zoom`` stay Keras preprocessing layers, whose seed generators advance
with every call: their draws depend on how often and in what order the pipeline ran, so
they are not reproducible across ``--resume`` (nor between two runs under ``tf.data``).
Keras's layers accept only an int or a ``SeedGenerator`` as seed, not a per-batch tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CROP_FRACTION = 0.125  # CIFAR's pad-4-and-crop at 32 px
FLIP, CROP, CROP_COLUMNS = 1, 2, 3  # stream tags: each draw has a key of its own


def crop_padding(side: int) -> int:
    """Pixels of reflection added on each side of an axis of length ``side``."""
    return int(round(CROP_FRACTION * side))


def keras_layers(names: Sequence[str], seed: int = 0) -> list:
    """The Keras preprocessing layers for the augmentations that are not stateless."""
    import keras

    layers = []
    if "rotate" in names:
        layers.append(keras.layers.RandomRotation(15 / 360, fill_mode="reflect", seed=seed + 2))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, 0.1, fill_mode="reflect", seed=seed + 3))
    if "normalize" in names:
        layers.append(keras.layers.Rescaling(1.0 / 255.0))
    return layers


# -- numpy (JAX, torch) ---------------------------------------------------------------------
def numpy_rng(seed: int, epoch: int, batch: int, stream: int) -> np.random.Generator:
    # The tag is last and never 0: numpy pads short seeds with zeros, so [seed, epoch, 0]
    # would be the generator that shuffles the epoch.
    return np.random.default_rng([int(seed), int(epoch), int(batch), stream])


def numpy_flip_crop(images: np.ndarray, names: Sequence[str], seed: int, epoch: int,
                    batch: int) -> np.ndarray:
    """``images`` (NHWC) flipped and/or cropped as ``names`` ask; a function of its arguments only."""
    if "flip" in names:
        flip = numpy_rng(seed, epoch, batch, FLIP).random(len(images)) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if "crop" in names:
        ph, pw = crop_padding(images.shape[1]), crop_padding(images.shape[2])
        rng = numpy_rng(seed, epoch, batch, CROP)
        offsets = rng.integers(0, [2 * ph + 1, 2 * pw + 1], size=(len(images), 2))
        images = numpy_crop(images, offsets, ph, pw)
    return images


def numpy_crop(images: np.ndarray, offsets: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Each image reflect-padded by (ph, pw), then cut back out at its (row, column) offset."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
    rows = offsets[:, :1] + np.arange(h)  # (n, h)
    cols = offsets[:, 1:] + np.arange(w)  # (n, w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# -- TensorFlow (inside tf.data) ------------------------------------------------------------
def tf_key(seed: int, epoch, batch, stream: int):
    """A stateless seed for one augmentation of one batch, distinct for every (stream, epoch, batch).

    The epoch's shuffle uses ``[seed, epoch]``; these keys put the tag above bit 60, the
    epoch above bit 32 and the batch below, so none equals another or a shuffle key
    (for fewer than 2**28 epochs and 2**32 batches an epoch).
    """
    import tensorflow as tf

    mixed = stream * 2**60 + tf.cast(epoch, tf.int64) * 2**32 + tf.cast(batch, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64), mixed])


def tf_flip_crop(images, names: Sequence[str], seed: int, epoch, batch):
    """The TensorFlow twin of ``numpy_flip_crop``: stateless ops, graph-friendly."""
    import tensorflow as tf

    if "flip" in names:
        # Draws one number per image of the 4-D batch: each image is flipped independently.
        images = tf.image.stateless_random_flip_left_right(images, seed=tf_key(seed, epoch, batch, FLIP))
    if "crop" in names:
        ph, pw = crop_padding(int(images.shape[1])), crop_padding(int(images.shape[2]))
        n = tf.shape(images)[0]
        draw = tf.random.stateless_uniform
        oy = draw([n, 1], tf_key(seed, epoch, batch, CROP), 0, 2 * ph + 1, dtype=tf.int32)
        ox = draw([n, 1], tf_key(seed, epoch, batch, CROP_COLUMNS), 0, 2 * pw + 1, dtype=tf.int32)
        images = tf_crop(images, oy, ox, ph, pw)
    return images


def tf_crop(images, oy, ox, ph: int, pw: int):
    """``numpy_crop`` with tensors: ``oy``, ``ox`` of shape (n, 1), exact integer gathers."""
    import tensorflow as tf

    h, w = int(images.shape[1]), int(images.shape[2])
    padded = tf.pad(images, [[0, 0], [ph, ph], [pw, pw], [0, 0]], mode="REFLECT")
    rows = tf.gather(padded, oy + tf.range(h), axis=1, batch_dims=1)  # (n, h, w + 2pw, c)
    return tf.gather(rows, ox + tf.range(w), axis=2, batch_dims=1)
