"""Flip and pad-and-crop: exact integer shifts, drawn from (seed, epoch, batch) only.

Each test runs on both implementations: numpy (JAX, torch) and TensorFlow's stateless ops
(inside tf.data). The TensorFlow half imports TensorFlow, so it is slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from effscale.data import augment

BACKENDS = ["numpy", pytest.param("tf", marks=pytest.mark.slow)]


def _flip_crop(backend):
    """``(images, names, seed, epoch, batch) -> numpy images`` on ``backend``."""
    if backend == "numpy":
        return augment.numpy_flip_crop
    import tensorflow as tf

    def run(images, names, seed, epoch, batch):
        return augment.tf_flip_crop(tf.constant(images), names, seed, tf.constant(epoch, tf.int64),
                                    tf.constant(batch, tf.int64)).numpy()

    return run


def _crop(backend, images, offsets, ph, pw):
    if backend == "numpy":
        return augment.numpy_crop(images, offsets, ph, pw)
    import tensorflow as tf

    oy, ox = (tf.constant(offsets[:, i:i + 1], tf.int32) for i in (0, 1))
    return augment.tf_crop(tf.constant(images), oy, ox, ph, pw).numpy()


def _distinct(n, h=8, w=8):
    """``n`` copies of an image whose pixels all differ, so a crop gives away its offset."""
    return np.repeat(np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1), n, axis=0)


def _offset(out, image, ph, pw):
    """The (row, column) offset at which ``out`` is cut from ``image`` reflect-padded, or None."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    for oy in range(2 * ph + 1):
        for ox in range(2 * pw + 1):
            if np.array_equal(out, padded[oy:oy + h, ox:ox + w]):
                return oy, ox
    return None


def test_crop_padding_is_an_eighth_of_the_side():
    assert [augment.crop_padding(s) for s in (1, 8, 16, 32, 224)] == [0, 1, 2, 4, 28]


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_at_the_centre_offset_is_the_identity(backend):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 2)).astype(np.float32)
    centre = np.tile([1, 2], (3, 1))  # (ph, pw) for 8x16
    assert np.array_equal(_crop(backend, images, centre, 1, 2), images)
    shifted = _crop(backend, images, np.tile([0, 4], (3, 1)), 1, 2)  # one row down, two columns left
    assert np.array_equal(shifted[:, 1:, :-2], images[:, :-1, 2:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_crop_is_a_reflect_padded_shift_and_every_shift_occurs(backend):
    images = _distinct(300)
    out = _flip_crop(backend)(images, ("crop",), 0, 0, 0)
    offsets = [_offset(o, images[0], 1, 1) for o in out]
    assert None not in offsets  # exact integer shifts: no interpolation, no fill value
    assert set(offsets) == {(oy, ox) for oy in range(3) for ox in range(3)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_is_drawn_per_image_about_half_the_time(backend):
    images = _distinct(2000)
    out = _flip_crop(backend)(images, ("flip",), 0, 0, 0)
    flipped = np.array([np.array_equal(o, images[0][:, ::-1]) for o in out])
    kept = np.array([np.array_equal(o, images[0]) for o in out])
    assert (flipped | kept).all()
    assert 0.42 < flipped.mean() < 0.58


@pytest.mark.parametrize("backend", BACKENDS)
def test_draws_depend_on_seed_epoch_and_batch_only(backend):
    run = _flip_crop(backend)
    images = _distinct(64)
    names = ("flip", "crop")
    first = run(images, names, 3, 5, 7)
    run(images, names, 3, 6, 0)  # anything drawn in between must not matter
    assert np.array_equal(run(images, names, 3, 5, 7), first)
    for other in [(4, 5, 7), (3, 6, 7), (3, 5, 8), (3, 7, 5)]:
        assert not np.array_equal(run(images, names, *other), first), other
    flips = [run(images, ("flip",), 3, epoch, 0)[:, 0, 0, 0] != 0 for epoch in range(3)]
    assert not np.array_equal(flips[0], flips[1]) and not np.array_equal(flips[1], flips[2])


@pytest.mark.slow
@pytest.mark.parametrize("tf_data", [True, False], ids=["tf.data", "numpy"])
def test_pipeline_augments_epoch_e_the_same_however_it_is_reached(tf_data, monkeypatch):
    """Two fresh pipelines, a resumed one (from epoch 1, iterated once before) and, under
    tf.data, one allowed to deliver out of order, all augment every batch the same way."""
    from effscale.data import pipeline

    monkeypatch.setattr(pipeline, "_use_tf_data", lambda: tf_data)
    x = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    y = np.arange(20)

    def stream(first, end, deterministic=True):
        return pipeline.make_batches(x, y, batch_size=8, num_classes=20, training=True, seed=2,
                                     augment=("flip", "crop"), deterministic=deterministic,
                                     epochs=range(first, end))

    def batches(ds):
        items = ds if tf_data else (ds[i] for i in range(len(ds)))
        return [(np.asarray(b[1]).argmax(1), np.asarray(b[0])) for b in items]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1])
                                        for p, q in zip(a, b))

    full = batches(stream(0, 3))
    assert same(batches(stream(0, 3)), full)
    resumed = stream(1, 3)
    batches(resumed)  # an earlier pass must not move the draws
    assert same(batches(resumed), full[3:])
    if tf_data:
        unordered = {tuple(labels): images for labels, images in batches(stream(0, 3, deterministic=False))}
        assert all(np.array_equal(unordered[tuple(labels)], images) for labels, images in full)
    for labels, images in full:  # each image a flipped or not, shifted copy of its own source
        for label, image in zip(labels, images):
            source = x[label].astype(np.float32)
            assert _offset(image, source, 1, 1) or _offset(image, source[:, ::-1], 1, 1)

    def by_source(epoch):  # epoch's augmented images, in the order of their sources
        labels, images = (np.concatenate(part) for part in zip(*full[3 * epoch:3 * epoch + 3]))
        return images[np.argsort(labels)]

    assert not np.array_equal(by_source(0), by_source(1)) and not np.array_equal(by_source(1), by_source(2))
