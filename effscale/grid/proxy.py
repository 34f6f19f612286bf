"""Proxy training for ``effscale grid``: build a candidate's network, train briefly, score it.

``ProxyTrainer`` loads the proxy task once (``effscale.data.datasets.load_dataset``: a fixed,
seeded subset of the dataset) and is the ``run_trial`` callable the search loop calls,
locally or shipped once to Ray workers. Each call runs ``run_proxy_trial``:

1. ``keras.utils.set_random_seed(seed)`` and a deterministic input pipeline: with the
   same seed every candidate sees the same data order, and a trial gives the same score
   whichever process (local, a Ray worker, a resumed run) runs it;
2. the candidate's network (``search.proxy_network``: the proxy base scaled by alpha,
   beta, gamma with the official rounding) behind a ``Resizing`` layer, so images stay at
   their native size in memory and gamma only changes the model's input size;
3. Adam with a cosine decay over the trial's steps (short training needs the decay to
   settle), no augmentation (the proxy underfits; augmentation only slows it down);
4. **BatchNorm**: Keras's momentum 0.99 makes the moving statistics an average over the
   last ~100 steps of a network that changed a lot during them, and a 1-epoch proxy trial
   has about 60 steps: the moving statistics are still close to their initial values and
   the evaluation score measures them, not the network. We (a) train with momentum
   ``bn_momentum`` (0.9: a ~10-step window) and (b) before scoring, recompute every BN
   layer's statistics as the exact average over ``bn_recalibration_batches`` training
   batches of the final weights ("precise BN", Wu & Johnson 2021);
5. ``model.evaluate`` on the validation subset, then ``keras.backend.clear_session()``.

It returns metrics and per-phase timings (build, compile, first step = graph tracing,
train, recalibrate, evaluate, teardown) so the overhead per trial can be measured.

Keras is imported inside the functions: this module is importable (and picklable for
Ray) without it.
"""

from __future__ import annotations

import time

import numpy as np

from effscale.grid.config import GridConfig
from effscale.grid.search import TrialSpec, proxy_network

from effscale.backend import set_defaults  # noqa: E402

set_defaults()


class ProxyTrainer:
    """The Keras ``run_trial`` callable: holds the config and the (small) proxy dataset."""

    def __init__(self, config: GridConfig, dataset):
        self.config = config
        self.dataset = dataset

    @classmethod
    def load(cls, config: GridConfig, cache_dir=None) -> ProxyTrainer:
        from effscale.data.datasets import load_dataset

        dataset = load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=cache_dir,
                               limit_train=config.limit_train, limit_val=config.limit_val, seed=config.data_seed)
        return cls(config, dataset)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def dataset_summary(self) -> dict:
        return self.dataset.summary()

    @property
    def backend(self) -> str:
        import keras

        return keras.backend.backend()

    def __call__(self, spec: TrialSpec) -> dict:
        return run_proxy_trial(spec, self.config, self.dataset)


def _batchnorms(model) -> list:
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batchnorms(layer))
    return found


def recalibrate_batchnorm(model, images: np.ndarray, batches: int, batch_size: int, seed: int = 0) -> int:
    """Set every BN layer's moving statistics to the average over ``batches`` training batches.

    Cumulative averaging through the layers' own update rule: for the k-th batch the
    momentum is (k-1)/k, so after k batches the moving mean is the mean of the k batch
    means (and likewise the variance). Runs eagerly (a traced function would freeze the
    momentum), forward only. Returns the number of batches used.
    """
    bns = _batchnorms(model)
    if not bns or batches <= 0 or len(images) == 0:
        return 0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    saved = [bn.momentum for bn in bns]
    used = 0
    try:
        for k in range(batches):
            idx = order[k * batch_size:(k + 1) * batch_size]
            if len(idx) == 0:
                break
            for bn in bns:
                bn.momentum = k / (k + 1)
            model(images[idx].astype("float32"), training=True)
            used += 1
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    return used


def build_proxy_model(spec: TrialSpec, config: GridConfig, image_shape, num_classes: int):
    import keras

    from effscale.data.datasets import resizing_inputs
    from effscale.net.keras_model import build_model

    network = proxy_network(config, spec.candidate)
    inputs, x = resizing_inputs(image_shape, network.resolution)
    backbone = build_model(network, num_classes=num_classes, image_size=network.resolution, name="proxy")
    model = keras.Model(inputs, backbone(x), name=f"grid_{spec.candidate.id}")
    for bn in _batchnorms(model):
        bn.momentum = config.bn_momentum
    return model


def run_proxy_trial(spec: TrialSpec, config: GridConfig, dataset) -> dict:
    """One trial: build, train, recalibrate BN, evaluate, tear down; metrics and timings."""
    import keras

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(1000 * config.data_seed + spec.seed)
    try:
        # Every Keras object lives inside _train_and_score, so none is alive at clear_session.
        metrics, rows = _train_and_score(spec, config, dataset, timings, t0)
    finally:
        t6 = time.perf_counter()
        # No gc.collect(): TF keeps every traced graph alive (a leak in TF/Keras, ~180k objects a
        # trial), so each full collection walks all earlier trials' graphs and grew to ~10 s by
        # trial 20; Python's own collector still frees the models' reference cycles.
        keras.backend.clear_session(free_memory=False)
        timings["teardown"] = time.perf_counter() - t6
    timings["total"] = time.perf_counter() - t0
    timings["overhead"] = timings["build"] + timings["compile"] + timings["teardown"]
    return {"metrics": metrics, "images_seen": int(len(dataset.y_train)) * spec.epochs,
            "timings": {k: round(v, 4) for k, v in timings.items()}, "history": rows}


class _FirstStep:
    """A Keras callback recording when the first training step ends (graph tracing included)."""

    @staticmethod
    def make(store: dict):
        import keras

        class FirstStep(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if "t" not in store:
                    store["t"] = time.perf_counter()

        return FirstStep()


def _train_and_score(spec: TrialSpec, config: GridConfig, dataset, timings: dict, t0: float):
    import keras

    from effscale.data.datasets import make_batches

    model = build_proxy_model(spec, config, dataset.image_shape, dataset.num_classes)
    t1 = time.perf_counter()
    timings["build"] = t1 - t0
    steps_per_epoch = -(-len(dataset.y_train) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps_per_epoch * spec.epochs, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy", metrics=["accuracy"])
    t2 = time.perf_counter()
    timings["compile"] = t2 - t1

    first: dict = {}
    train = make_batches(dataset.x_train, dataset.y_train, batch_size=config.batch_size,
                         num_classes=dataset.num_classes, training=True, seed=spec.seed, deterministic=True)
    history = model.fit(train, epochs=spec.epochs, verbose=0, callbacks=[_FirstStep.make(first)])
    t3 = time.perf_counter()
    timings["train"] = t3 - t2
    timings["first_step"] = first.get("t", t3) - t2
    steps = steps_per_epoch * spec.epochs
    timings["step"] = (t3 - first.get("t", t2)) / max(1, steps - 1)
    timings["tracing"] = max(0.0, timings["first_step"] - timings["step"])

    used = recalibrate_batchnorm(model, dataset.x_train, config.bn_recalibration_batches, config.batch_size,
                                 seed=spec.seed)
    t4 = time.perf_counter()
    timings["recalibrate"] = t4 - t3
    val = make_batches(dataset.x_val, dataset.y_val, batch_size=max(config.batch_size, 256),
                       num_classes=dataset.num_classes, training=False)
    val_loss, val_acc = model.evaluate(val, verbose=0)
    timings["evaluate"] = time.perf_counter() - t4
    logs = dict(history.history)
    rows = [{k: float(v[i]) for k, v in logs.items()} | {"epoch": i + 1} for i in range(len(logs.get("loss", [])))]
    metrics = {"val_accuracy": float(val_acc), "val_loss": float(val_loss),
               "train_accuracy": rows[-1].get("accuracy") if rows else None,
               "train_loss": rows[-1].get("loss") if rows else None,
               "val_count": int(len(dataset.y_val)), "bn_recalibration_batches": used,
               "params": int(model.count_params())}
    return metrics, rows
