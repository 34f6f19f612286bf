"""Training the trainable top on cached activations of the frozen prefix.

For every strategy that freezes the bottom of the network (linear-probe, top-blocks N,
last-layers N) the model is cut where the frozen part ends:

* ``prefix``: native images -> Resizing -> backbone up to the cut (inference mode);
* ``top``: cut activations -> the rest of the backbone -> dropout -> dense.

The prefix runs once per image and per view (image, horizontal flip, and for the training
images ``--crop-views`` fixed random pad-and-crops), stored by
``effscale.transfer.cache``; the top shares its layers with the full model, so training it
trains the model that is checkpointed. Each epoch shows every training image once, in one
view drawn per image from ``(seed, epoch)`` (the flip augmentation, resumable exactly);
validation averages the softmax over both views. ``linear-probe`` does not train by epochs
at all: ``effscale.transfer.probe`` fits the head by L-BFGS, its L2 tuned on held-out
training images, and the result is committed as one epoch.

Augmentations other than the flip change the pixels the prefix sees, so they cannot be
drawn afresh each epoch: ``crop`` becomes the ``--crop-views`` fixed crops (none by
default), and a run asking for rotate, zoom or normalize keeps the uncached path
(``TransferConfig.cached_prefix``).
"""

from __future__ import annotations

import functools
import logging
import time

from effscale.backend import set_defaults

set_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effscale import console  # noqa: E402
from effscale.errors import ConfigError  # noqa: E402
from effscale.transfer import prefix_runtime  # noqa: E402
from effscale.transfer.cache import VIEWS, ActivationCache, cache_key, epoch_order, gather, train_views  # noqa: E402

log = logging.getLogger("effscale.transfer.train")

PREDICT_BATCH = 512


def cut_layer(backbone, phase: str) -> str | None:
    """The backbone layer whose output feeds the trainable top; None when nothing is frozen.

    Cuts fall on block boundaries (the last layer of a block) or at the backbone's output,
    because a residual connection inside a block would otherwise cross the cut. The cut is
    the deepest boundary below every trainable layer with weights.
    """
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    trainable = [i for i, layer in enumerate(layers) if layer.trainable and layer.weights]
    if phase == "head" or not trainable:
        return layers[-1].name
    first = trainable[0]
    boundaries = []
    for i, layer in enumerate(layers):
        prefix = layer.name.split("_", 1)[0]
        following = layers[i + 1].name.split("_", 1)[0] if i + 1 < len(layers) else None
        # A block's last layer, or the stem's (top-blocks N = every block): no residual crosses either.
        if following != prefix and (prefix.startswith("block") or (following or "").startswith("block")):
            boundaries.append(i)
    below = [i for i in boundaries if i < first]
    return layers[below[-1]].name if below else None


def split_model(model, backbone, cut: str, head_layers: tuple[str, str], features=lambda pooled: pooled):
    """``(prefix, top)`` Keras models around ``cut``, sharing the layers of ``model``; ``features``
    is what ``model`` applies between the backbone and its head (``model.head_features``)."""
    cut_tensor = backbone.get_layer(cut).output
    native = keras.Input(shape=model.input.shape[1:], name="images")
    x = native
    if "resize" in {layer.name for layer in model.layers}:
        x = model.get_layer("resize")(x)
    prefix = keras.Model(native, keras.Model(backbone.input, cut_tensor, name="frozen")(x), name="prefix")
    top_in = keras.Input(shape=cut_tensor.shape[1:], name="activations")
    y = top_in
    if cut != backbone.layers[-1].name:
        y = keras.Model(cut_tensor, backbone.output, name="top_blocks")(y)
    y = features(y)
    for name in head_layers:
        y = model.get_layer(name)(y)
    return prefix, keras.Model(top_in, y, name="top")


class CachedEpochs(keras.utils.PyDataset):
    """One epoch of cached activations: every image once, in its drawn view."""

    def __init__(self, store, labels, num_classes, batch_size, seed, epoch, views):
        super().__init__()
        self.store, self.labels, self.batch_size = store, labels, batch_size
        self.eye = np.eye(num_classes, dtype=np.float32)
        self.order, drawn = epoch_order(len(labels), len(views), seed, epoch)
        self.views = np.asarray(views)[drawn]

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, i):
        pick = slice(i * self.batch_size, (i + 1) * self.batch_size)
        order = self.order[pick]
        return gather(self.store, order, self.views[pick]), self.eye[self.labels[order]]


class FlipAveragedValidation(keras.callbacks.Callback):
    """Validation on both cached views, softmax averaged: the score the final model gets.
    Runs before the epoch callback and writes its ``val_*`` entries into the epoch's logs."""

    def __init__(self, cached, epoch_callback):
        super().__init__()
        self.cached, self.epoch_callback = cached, epoch_callback

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self.epoch_callback.on_test_begin()  # the epoch's training time ends here
        logs.update(self.cached.validation_logs())


class CachedTop:
    """The training step of frozen-bottom strategies (the drop-in for the uncached fit)."""

    def __init__(self, config, spec, image_size, ckpt, head_layers):
        self.config, self.spec, self.image_size, self.ckpt = config, spec, image_size, ckpt
        self.head_layers = head_layers
        self.top = None
        self.stores: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.num_classes = 0

    @property
    def feats(self):
        """Non-None once the activations are available."""
        return self.stores or None

    def view_names(self, split: str) -> tuple[str, ...]:
        """What the cache holds per image: validation always both eval views (the score
        averages them); training the image, its flip, and ``--crop-views`` crops."""
        if split != "train":
            return VIEWS
        return train_views(self.config.crop_views)  # validation ensures crop views come with crop

    def train_views(self) -> list[int]:
        """The cached training views an epoch draws from (the image alone without flip)."""
        names = self.view_names("train")
        return [i for i, name in enumerate(names) if name != "flip" or "flip" in self.config.augment]

    # -- the caching pass ---------------------------------------------------------------
    def _cache_root(self):
        from effscale.data.records import activation_cache_dir

        return activation_cache_dir(self.config.cache_dir)

    def prepare(self, model, backbone, phase: str, data) -> None:
        cut = cut_layer(backbone, phase)
        if cut is None:
            raise ConfigError(f"--last-layers {self.config.last_layers} trains the stem too, so nothing is frozen "
                              "to cache; pass fewer --last-layers, --no-prefix-cache, or --strategy full")
        from effscale.transfer.model import head_features

        prefix, self.top = split_model(model, backbone, cut, self.head_layers,
                                       functools.partial(head_features, config=self.config))
        self.num_classes = data.num_classes
        if self.stores:
            return
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        describe = {"network": self.spec.to_dict(), "image_size": self.image_size, "cut": cut,
                    "pooling": self.config.pooling, "precision": self.config.precision,
                    "backend": keras.backend.backend()}
        weights = [keras.ops.convert_to_numpy(w) for w in prefix.weights]
        splits = (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val))

        views = {split: self.view_names(split) for split, _, _ in splits}

        @functools.cache
        def caches(runtime: str) -> tuple[ActivationCache, ...]:
            described = prefix_runtime.key_describe(describe, runtime)
            return tuple(ActivationCache(self._cache_root(), cache_key(described, x, weights, views=views[split]),
                                         len(x), shape, views=views[split])
                         for split, x, _ in splits)

        t0 = time.monotonic()
        # The runtime is part of the key: chosen from the settings and what is on disk, so a
        # resumed pass continues under the key it started with (prefix_runtime explains).
        runtime = prefix_runtime.choose_runtime(self.config.prefix_runtime, self.config.precision,
                                                lambda r: any(c.done_chunks() for c in caches(r)))
        compute = None
        if not all(c.complete() for c in caches(runtime)):
            opened = prefix_runtime.open_compute(runtime, prefix, data.x_train,
                                                 required=self.config.prefix_runtime == "litert")
            runtime, compute = opened.runtime, opened.compute
            if opened.convert_s:
                spent = self.ckpt.extra.get("prefix_convert_s", 0.0) + opened.convert_s
                self.ckpt.extra["prefix_convert_s"] = round(spent, 3)
        label = prefix_runtime.LABELS[runtime]
        for (split, x, y), cache in zip(splits, caches(runtime)):
            done = len(cache.done_chunks())
            size = f"{cache.nbytes / 2**20:,.0f} MiB"
            if done < cache.num_chunks:
                console.info(f"{split}: caching the frozen prefix on {label} (up to {cut}, "
                             f"{'x'.join(map(str, shape))} per image, {len(cache.views)} views, {size} float16)"
                             + (f", {done}/{cache.num_chunks} chunks already cached" if done else ""))
            cache.fill(x, compute)
            self.stores[split] = cache.load()
            self.labels[split] = np.asarray(y, dtype=np.int64)
            where = "memory-mapped" if cache.memory_mapped() else "in RAM"
            console.info(f"{split} activations ({'x'.join(map(str, shape))} per image and view, {size}, {where}): "
                         + ("reused from the cache" if done == cache.num_chunks else "computed once and cached"))
            self.ckpt.extra[f"activations_{split}"] = str(cache.path)
        self.ckpt.extra["prefix_runtime"] = runtime
        self.ckpt.extra["cut"] = cut
        self.ckpt.extra["prefix_time_s"] = round(self.ckpt.extra.get("prefix_time_s", 0.0) + time.monotonic() - t0, 3)
        if "crop" in self.config.augment and not self.config.crop_views:
            console.info("cached prefix: training sees the image and its flip; crop is not applied per epoch (it "
                         "would change what the frozen prefix computes); --crop-views K caches K fixed crops")

    # -- training -----------------------------------------------------------------------
    def validation_logs(self) -> dict:
        probs = self.predict_split("val")
        labels = self.labels["val"]
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
        top5 = np.argsort(-probs, axis=1)[:, : min(5, self.num_classes)]
        return {"val_loss": float(-np.log(picked).mean()),
                "val_accuracy": float((probs.argmax(axis=1) == labels).mean()),
                "val_top5": float((top5 == labels[:, None]).any(axis=1).mean())}

    def predict_split(self, split: str) -> np.ndarray:
        store = self.stores[split]
        probs = 0.0
        for view in range(store.shape[0]):
            probs = probs + self.top.predict(np.asarray(store[view], dtype=np.float32), batch_size=PREDICT_BATCH,
                                             verbose=0)
        return np.asarray(probs, dtype=np.float64) / store.shape[0]

    def fit(self, model, backbone, optimizer, data, start, end, callback, phase, compile_model) -> None:
        self.prepare(model, backbone, phase, data)
        compile_model(self.top, self.config, optimizer, data.num_classes)
        compile_model(model, self.config, optimizer, data.num_classes)  # so checkpoints carry the optimizer
        if self.config.strategy == "linear-probe":
            self._fit_probe(model, start, callback)
            return
        validation = FlipAveragedValidation(self, callback)
        for epoch in range(start, end):
            batches = CachedEpochs(self.stores["train"], self.labels["train"], data.num_classes,
                                   self.config.batch_size, self.config.seed, epoch, self.train_views())
            self.top.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False,
                         callbacks=[validation, callback])
            if callback.nan_at is not None or self.top.stop_training:
                return

    def _fit_probe(self, model, start, callback) -> None:
        from effscale.transfer.probe import fit_probe, signed_sqrt

        def features(views):  # as the model's head reads them (model.head_features)
            views = np.asarray(views, dtype=np.float32)
            return signed_sqrt(views) if self.config.sqrt_features else views

        train = features(self.stores["train"][self.train_views()])
        callback.set_model(self.top)
        callback.on_epoch_begin(start)
        probe = fit_probe(train, self.labels["train"], self.num_classes, seed=self.config.seed,
                          log=console.info)
        del train
        model.get_layer(self.head_layers[1]).set_weights([probe.kernel, probe.bias])
        console.info(f"probe: L2 {probe.l2:g} chosen on {100 * 0.1:.0f}% held-out training images, refitted on "
                     f"all ({probe.iterations} L-BFGS steps)")
        self.ckpt.extra["probe"] = {"l2": probe.l2, "holdout_top1": {str(k): v for k, v in probe.holdout.items()},
                                    "iterations": probe.iterations}
        labels = self.labels["train"]
        probs = probe.predict_proba(features(self.stores["train"][0]))
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
        top5 = np.argsort(-probs, axis=1)[:, : min(5, self.num_classes)]
        logs = {"loss": float(-np.log(picked).mean()), "accuracy": float((probs.argmax(1) == labels).mean()),
                "top5": float((top5 == labels[:, None]).any(axis=1).mean())}
        callback.on_test_begin()
        logs.update(self.validation_logs())
        callback.on_epoch_end(start, logs)

    def predict(self, model, backbone, data) -> np.ndarray:
        """Flip-averaged validation probabilities of ``model``'s current weights."""
        if self.top is None:  # a resumed run whose epochs were all committed already
            self.prepare(model, backbone, self.config.phases()[-1][0], data)
        return self.predict_split("val")
