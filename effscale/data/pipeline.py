"""The input pipeline: batches, per-batch resizing and augmentation.

Images stay uint8, NHWC, at their native size (32x32 for CIFAR). Resizing to the training
resolution happens per batch (a ``Resizing`` layer at the front of the training model,
``resizing_inputs``), so 224x224 copies of a dataset are never materialised. Under
TensorFlow the batches are a ``tf.data`` pipeline; other backends get a numpy
``keras.utils.PyDataset``. Keras/TensorFlow are imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from effscale.backend import set_defaults

set_defaults()


AUGMENTATIONS = {
    # name: what it does (documented in docs/transfer.md)
    "flip": "random horizontal flip",
    "crop": "reflect-pad by 1/8 of the side, crop back at a random integer shift (CIFAR's pad-4-and-crop)",
    "rotate": "random rotation up to 15 degrees",
    "zoom": "random zoom in/out up to 10%",
    "normalize": "divide pixels by 255 (the seed recipe's mistake: the models expect 0-255)",
}


def check_augment(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        from effscale.errors import ConfigError

        raise ConfigError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(names)


def augmentation_layers(names: Sequence[str], seed: int = 0) -> list:
    """Keras preprocessing layers for the stateful augmentations in ``names`` (rotate, zoom,
    normalize); flip and crop are stateless functions (``effscale.data.augment``)."""
    from effscale.data.augment import keras_layers

    return keras_layers(check_augment(names), seed)


def _use_tf_data() -> bool:
    import keras

    return keras.backend.backend() == "tensorflow"


def make_batches(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    num_classes: int,
    training: bool,
    augment: Sequence[str] = (),
    seed: int = 0,
    one_hot: bool = True,
    deterministic: bool | None = None,
    epochs: range | None = None,
):
    """Batches of ``(float32 images at native size, labels)`` for ``model.fit``/``evaluate``.

    Training batches are reshuffled each epoch and augmented (``augment`` names, see
    ``AUGMENTATIONS``); evaluation batches keep order and are never augmented. Labels are
    one-hot float32 (so label smoothing works) unless ``one_hot=False``.

    ``epochs`` (training only): one stream of those epochs' batches, one after the other
    (``fit`` with ``steps_per_epoch``), where epoch e is in the order ``(seed, e)`` picks.
    So epoch e sees the same batches however many times the pipeline was iterated before
    (Keras under a distribution strategy draws a batch to build the model; a resumed run
    starts at a later epoch). Without it, every iteration draws the next order of one
    seeded sequence, which suits a benchmark but depends on how often it was iterated.

    ``flip`` and ``crop`` are functions of ``(seed, epoch, batch index in the epoch)``
    (``effscale.data.augment``), so with ``epochs`` a resumed run augments exactly as an
    uninterrupted one; without it, the batch index counts within the pass, epoch 0.
    ``rotate`` and ``zoom`` are Keras layers whose draws are not reproducible.

    Under TensorFlow this is a ``tf.data`` pipeline: batch-level index gather, augmentation
    mapped in parallel, prefetch, so the CPU prepares the next batch while the model
    trains. Other backends get a ``keras.utils.PyDataset`` doing the same in numpy.
    """
    if batch_size < 1:
        from effscale.errors import ConfigError

        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    augment = tuple(augment) if training else ()
    if _use_tf_data():
        return _tf_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot, deterministic,
                           epochs if training else None)
    return _numpy_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot,
                          epochs if training else None)


def _tf_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot, deterministic=None,
                epochs=None):
    import tensorflow as tf

    from effscale.data.augment import tf_flip_crop

    n = len(y)
    images = tf.constant(x)
    labels = tf.constant(y)
    if epochs is not None:
        def epoch_batches(epoch):
            # Stateless: the order is a function of (seed, epoch) only, not of iterator state.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
            batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
            return batches.map(lambda step, idx: (epoch, step, idx))

        ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    else:
        ds = tf.data.Dataset.range(n)
        if training:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).enumerate().map(lambda step, idx: (tf.constant(0, tf.int64), step, idx))
    layers = augmentation_layers(augment, seed) if augment else []

    def prepare(epoch, step, idx):
        batch_x = tf.cast(tf.gather(images, idx), tf.float32)
        batch_x = tf_flip_crop(batch_x, augment, seed, epoch, step)
        for layer in layers:
            batch_x = layer(batch_x, training=True)
        batch_y = tf.gather(labels, idx)
        if one_hot:
            batch_y = tf.one_hot(batch_y, num_classes, dtype=tf.float32)
        return batch_x, batch_y

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Training batches may arrive out of order for speed unless ``deterministic`` (the grid
    # search asks for it: a trial's score must not depend on thread timing).
    options.deterministic = (not training) if deterministic is None else deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _numpy_batches(x, y, batch_size, num_classes, training, augment, seed, one_hot, epochs=None):
    """The backend-agnostic fallback: a ``keras.utils.PyDataset`` of numpy batches."""
    import keras

    from effscale.data.augment import numpy_flip_crop

    steps = -(-len(y) // batch_size)

    class NumpyBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.layers = augmentation_layers(augment, seed) if augment else []
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(y))
            self.epoch = None
            if epochs is None:
                self.on_epoch_end()

        def __len__(self):
            return steps * len(epochs) if epochs is not None else steps

        def on_epoch_end(self):
            if training and epochs is None:
                self.order = self.rng.permutation(len(y))

        def __getitem__(self, i):
            epoch = 0  # without ``epochs``: a batch's augmentation depends on its index in the pass
            if epochs is not None:
                epoch, i = epochs[i // steps], i % steps
                if epoch != self.epoch:  # the order is a function of (seed, epoch) only
                    self.epoch, self.order = epoch, np.random.default_rng([seed, epoch]).permutation(len(y))
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            bx = numpy_flip_crop(x[idx].astype(np.float32), augment, seed, epoch, i)
            for layer in self.layers:
                bx = keras.ops.convert_to_numpy(layer(bx, training=True))
            by = y[idx]
            if one_hot:
                by = np.eye(num_classes, dtype=np.float32)[by]
            return bx, by

    return NumpyBatches()


def resizing_inputs(native_shape: Sequence[int], image_size: int):
    """``(inputs, x)``: a float32 input at the native image size, resized to ``image_size``.

    Put this in front of the backbone so the dataset stays at native size in memory and
    only each batch is resized (bilinear), on the same device as the model.
    """
    import keras

    inputs = keras.Input(shape=tuple(int(d) for d in native_shape), name="images")
    x = inputs
    if tuple(native_shape[:2]) != (image_size, image_size):
        x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    return inputs, x

