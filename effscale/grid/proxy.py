"""Proxy training for ``effscale grid``: build a candidate's network, train briefly, score it.

``ProxyTrainer`` loads the proxy task once (``effscale.data.datasets.load_dataset``: a fixed,
seeded subset of the dataset) and is the ``run_trial`` callable the search loop calls, in
this process, in worker processes or on Ray. Each call runs ``run_proxy_trial``:

1. ``seed_everything(seed)``; the candidate's network (``search.proxy_network``: the
   proxy base scaled by alpha, beta, gamma, filters and repeats rounded officially) behind a
   ``Resizing`` layer, so images stay at their native size in memory and gamma only
   changes the model's input size;
2. **no second trace for a repeat**: each process keeps its last compiled model. A trial
   of the same candidate (another seed, or the next rung) builds a fresh model under its
   own seed (cheap) and copies its variables into the compiled one, and resets the
   optimizer to its initial state. The compiled training and prediction functions are
   reused, so the repeat pays no graph trace, and it computes exactly what a freshly
   compiled model would;
3. **continued promotions**: a trial at rung r > 0 loads the state its candidate and seed
   saved at rung r-1 (model variables, optimizer moments and step count; see
   ``checkpoints``) and trains only the epochs that rung adds. So that this equals one
   longer run, the learning rate follows one cosine decay over the *last rung's* epochs
   for every trial, and epoch e always sees the same batches (a permutation seeded by the
   trial seed and e; the last partial batch is dropped, which also keeps one batch shape
   and so one trace). A rung-0 trial therefore ends at a learning rate still near its
   peak, which the BatchNorm recalibration below makes harmless to score;
4. Adam (Keras's to the bit, with a cheaper trace: ``effscale.net.optimizers``), no
   augmentation (the proxy underfits; augmentation only slows it down), batch by batch
   with ``train_on_batch`` in this thread (see ``_train_epoch`` for why not ``fit``);
5. **BatchNorm**: Keras's momentum 0.99 makes the moving statistics an average over the
   last ~100 steps of a network that changed a lot during them, and a 1-epoch proxy trial
   has about 60 steps: the moving statistics are still close to their initial values and
   the evaluation score measures them, not the network. We (a) train with momentum
   ``bn_momentum`` (0.9: a ~10-step window) and (b) before scoring, recompute every BN
   layer's statistics as the exact average over ``bn_recalibration_batches`` training
   batches of the final weights ("precise BN", Wu & Johnson 2021). The state saved for
   the next rung is taken before this, as one longer run would have it;
6. one pass of ``predict_on_batch`` over the validation images: the predicted class per image (kept in
   the run dir for paired statistics), accuracy and loss from the same probabilities.

It returns metrics, the predictions and seconds per phase (``trials.TIMING_PHASES``:
build, compile, first step = the trace, train = the steps after the first, BN
recalibration, evaluation, teardown = releasing the previous candidate's model).

Keras is imported inside the functions: this module is importable (and picklable for
Ray and worker processes) without it.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from effscale.grid import checkpoints
from effscale.grid.config import GridConfig
from effscale.grid.search import TrialSpec, proxy_network, trial_id
from effscale.net.batchnorm import batchnorm_layers, recalibrate_batchnorm
from effscale.net.optimizers import flat_state_adam
from effscale.net.training_state import create_training_variables

from effscale.backend import backend_name, set_defaults  # noqa: E402

set_defaults()


class ProxyTrainer:
    """The Keras ``run_trial`` callable: holds the config and the (small) proxy dataset."""

    def __init__(self, config: GridConfig, dataset, run_path: str | None = None):
        self.config = config
        self.dataset = dataset
        self.run_path = run_path

    @classmethod
    def load(cls, config: GridConfig, cache_dir=None) -> ProxyTrainer:
        from effscale.data.datasets import load_dataset

        dataset = load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=cache_dir,
                               limit_train=config.limit_train, limit_val=config.limit_val, seed=config.data_seed)
        return cls(config, dataset)

    def for_run(self, run_path) -> ProxyTrainer:
        """This trainer, saving and loading training states in ``run_path``."""
        return ProxyTrainer(self.config, self.dataset, str(run_path))

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def dataset_summary(self) -> dict:
        return self.dataset.summary()

    @property
    def backend(self) -> str:
        # not keras.backend.backend(): the search's driver never imports Keras (its workers do)
        return backend_name()

    def __call__(self, spec: TrialSpec) -> dict:
        return run_proxy_trial(spec, self.config, self.dataset, self.run_path)


def build_proxy_model(spec: TrialSpec, config: GridConfig, image_shape, num_classes: int):
    import keras

    from effscale.data.datasets import resizing_inputs
    from effscale.net.keras_model import build_model

    network = proxy_network(config, spec.candidate)
    inputs, x = resizing_inputs(image_shape, network.resolution)
    backbone = build_model(network, num_classes=num_classes, image_size=network.resolution, name="proxy")
    model = keras.Model(inputs, backbone(x), name=f"grid_{spec.candidate.id}")
    for bn in batchnorm_layers(model):
        bn.momentum = config.bn_momentum
    return model


# --- one compiled model per process, reused by the next trial of the same candidate -----------
class _Compiled:
    """The last compiled model of this process, with its optimizer's initial state."""

    key: tuple | None = None
    model = None
    optimizer_start: list | None = None
    tf_seeded = False

    @classmethod
    def release(cls) -> None:
        import keras

        if cls.model is None:
            return
        cls.key = cls.model = cls.optimizer_start = None
        # No gc.collect(): TF keeps every traced graph alive, so a full collection walks all
        # earlier trials' graphs (about 10 s by trial 20); the worker processes that run
        # trials are recycled instead, which frees those graphs for good.
        keras.backend.clear_session(free_memory=False)


def seed_everything(seed: int) -> None:
    """``keras.utils.set_random_seed`` without re-seeding TensorFlow after the first time.

    ``tf.random.set_seed`` makes every ``tf.function`` trace again, which would undo the
    model reuse. TensorFlow's own seed only drives unseeded TF random ops, and a trial has
    none: Keras initialisers and dropout draw from Keras's seed generators, and the data
    order comes from numpy. So TF is seeded once per process, to a constant, and the rest
    per trial, which keeps a trial's result independent of what the process ran before.
    """
    import keras

    if keras.backend.backend() != "tensorflow" or not _Compiled.tf_seeded:
        keras.utils.set_random_seed(seed)
        _Compiled.tf_seeded = True
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.random.set_seed(0)
        return
    import random

    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # another Keras layout: correct, only slower (it traces again)
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def _model_key(spec: TrialSpec, config: GridConfig, image_shape, num_classes: int) -> tuple:
    settings = json.dumps(config.to_dict(), sort_keys=True)
    return spec.candidate.id, settings, tuple(int(d) for d in image_shape), int(num_classes)


def _steps_per_epoch(config: GridConfig, n_train: int) -> tuple[int, int]:
    """(steps, batch size): whole batches only, so every step has one shape (one trace)."""
    batch = min(config.batch_size, n_train)
    return max(1, n_train // batch), batch


def _compile(model, config: GridConfig, steps_per_epoch: int) -> None:
    import keras

    # One schedule over the last rung's steps for every rung: a trial continued at the next
    # rung then follows exactly the learning rates one longer run would have had.
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, steps_per_epoch * config.max_epochs, alpha=0.01)
    # Keras's Adam, to the bit, with the step's scalars traced once and the moments in two flat
    # vectors: a smaller graph to trace than one update per variable
    model.compile(optimizer=flat_state_adam(schedule), loss="categorical_crossentropy", metrics=["accuracy"])
    create_training_variables(model)  # else the first step is traced twice


def _assign(variables, values) -> None:
    for variable, value in zip(variables, values):
        variable.assign(value)


def _numpy(variables) -> list:
    import keras

    return [keras.ops.convert_to_numpy(v) for v in variables]


def _prepare_model(spec: TrialSpec, config: GridConfig, dataset, timing: dict):
    """A compiled model holding this seed's initial weights; reuses the process's last one."""
    t0 = time.perf_counter()
    key = _model_key(spec, config, dataset.image_shape, dataset.num_classes)
    if _Compiled.key != key:
        _Compiled.release()
    t1 = time.perf_counter()
    timing["teardown"] = t1 - t0
    fresh = build_proxy_model(spec, config, dataset.image_shape, dataset.num_classes)
    t2 = time.perf_counter()
    timing["build"] = t2 - t1
    reused = _Compiled.key == key
    if reused:
        model = _Compiled.model
        _assign(model.variables, _numpy(fresh.variables))  # weights, BN statistics, dropout seed state
        _assign(model.optimizer.variables, _Compiled.optimizer_start)
    else:
        model = fresh
        _compile(model, config, _steps_per_epoch(config, len(dataset.y_train))[0])
        _Compiled.key, _Compiled.model = key, model
        _Compiled.optimizer_start = _numpy(model.optimizer.variables)
    timing["compile"] = time.perf_counter() - t2
    return model, reused


def _epoch_order(n_train: int, seed: int, epoch: int, batch: int, steps: int) -> np.ndarray:
    """Epoch ``epoch``'s batches (rows of indices): the same whether the trial started at epoch 0 or continued."""
    return np.random.default_rng([seed, epoch]).permutation(n_train)[: steps * batch].reshape(steps, batch)


def _train_epoch(model, dataset, order: np.ndarray, first: dict) -> dict:
    """One epoch of ``train_on_batch`` calls; the epoch's mean loss and accuracy, as ``fit`` reports them.

    Not ``fit`` over a ``PyDataset``: under TensorFlow that feeds the batches through a
    tf.data generator, and whole trials trained 1.12-1.21x as long that way on a 2-core
    machine; the slowdown also outlived the ``fit`` (benchmarks/grid_datapath.py).
    ``train_on_batch`` runs the same compiled step in this thread, and on every backend.
    """
    x, y, eye = dataset.x_train, dataset.y_train, np.eye(dataset.num_classes, dtype=np.float32)
    totals: dict[str, float] = {}
    for idx in order:
        logs = model.train_on_batch(x[idx].astype(np.float32), eye[y[idx]], return_dict=True)
        first.setdefault("t", time.perf_counter())
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {name: total / len(order) for name, total in totals.items()}


def _previous_state(spec: TrialSpec, run_path: str | None, model, key: tuple):
    """The state this candidate and seed saved at the previous rung, if it fits this model."""
    if run_path is None or spec.rung == 0:
        return None
    state = checkpoints.load_state(checkpoints.checkpoint_path(run_path, trial_id(spec.candidate.id, spec.seed,
                                                                                  spec.rung - 1)))
    if (state is None or state.meta.get("key") != _state_key(key) or state.epochs_done >= spec.epochs
            or len(state.variables) != len(model.variables)
            or len(state.optimizer) != len(model.optimizer.variables)):
        return None
    return state


def _state_key(key: tuple) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def run_proxy_trial(spec: TrialSpec, config: GridConfig, dataset, run_path: str | None = None) -> dict:
    """One trial: prepare the model, train (or continue), recalibrate BN, predict; metrics and timings."""
    timing: dict[str, float] = {}
    seed_everything(1000 * config.data_seed + spec.seed)
    model, reused = _prepare_model(spec, config, dataset, timing)
    key = _model_key(spec, config, dataset.image_shape, dataset.num_classes)
    steps, batch = _steps_per_epoch(config, len(dataset.y_train))
    state = _previous_state(spec, run_path, model, key)
    start = 0
    if state is not None:
        _assign(model.variables, state.variables)
        _assign(model.optimizer.variables, state.optimizer)
        start = state.epochs_done

    first: dict = {}
    rows = []
    t3 = time.perf_counter()
    for epoch in range(start, spec.epochs):
        order = _epoch_order(len(dataset.y_train), spec.seed, epoch, batch, steps)
        rows.append(_train_epoch(model, dataset, order, first) | {"epoch": epoch + 1})
    t4 = time.perf_counter()
    timing["first_step"] = first.get("t", t4) - t3
    timing["train"] = t4 - t3 - timing["first_step"]
    images = steps * batch
    if run_path is not None and spec.rung < config.n_rungs - 1:  # the next rung continues from here
        checkpoints.save_state(checkpoints.checkpoint_path(run_path, spec.trial_id), checkpoints.TrainState(
            _numpy(model.variables), _numpy(model.optimizer.variables),
            {"key": _state_key(key), "epochs_done": spec.epochs, "images_trained": images * spec.epochs,
             "seed": spec.seed, "candidate": spec.candidate.id}))

    t5 = time.perf_counter()
    used = recalibrate_batchnorm(model, dataset.x_train, config.bn_recalibration_batches, config.batch_size,
                                 seed=spec.seed)
    t6 = time.perf_counter()
    timing["bn_recal"] = t6 - t5
    probabilities = _predict(model, dataset.x_val, max(config.batch_size, 256))
    predictions = probabilities.argmax(axis=1)
    labels = np.asarray(dataset.y_val)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    timing["eval"] = time.perf_counter() - t6
    if t5 - t4 > 0:
        timing["train"] += t5 - t4  # saving the state is part of continuing training
    val_acc = float(np.mean(predictions == labels))
    metrics = {"val_accuracy": val_acc, "val_loss": float(-np.mean(np.log(picked))),
               "train_accuracy": rows[-1].get("accuracy") if rows else None,
               "train_loss": rows[-1].get("loss") if rows else None,
               "val_count": int(len(labels)), "bn_recalibration_batches": used,
               "params": int(model.count_params()), "images_trained": images * spec.epochs,
               "model_reused": reused,
               "continued_from": (trial_id(spec.candidate.id, spec.seed, spec.rung - 1) if state is not None
                                  else None)}
    timings = dict(timing, total=sum(timing.values()))
    return {"metrics": metrics, "images_seen": images * (spec.epochs - start), "timing": timing,
            "timings": {k: round(v, 4) for k, v in timings.items()}, "history": rows,
            "predictions": checkpoints.as_predictions(predictions), "val_labels": checkpoints.as_predictions(labels)}


def _predict(model, images: np.ndarray, batch: int) -> np.ndarray:
    """Class probabilities, batch by batch in this thread (see ``_train_epoch``); the last
    batch is padded so prediction keeps one traced shape."""
    n = len(images)
    batch = max(1, min(batch, n))
    out = []
    for start in range(0, n, batch):
        x = images[start:start + batch].astype(np.float32)
        if len(x) < batch:
            x = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), dtype=np.float32)])
        out.append(np.asarray(model.predict_on_batch(x)))
    return np.concatenate(out)[:n]
