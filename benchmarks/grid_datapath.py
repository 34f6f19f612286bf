"""How a proxy trial feeds its batches: ``fit`` over a ``PyDataset`` against ``train_on_batch``.

    python benchmarks/grid_datapath.py --dataset ../shared/data/cifar10-jpeg.tar.gz

In ONE process with one TensorFlow thread (a local grid worker's setting on 2 cores) and
the default search's proxy model for one row (default: resolution-only, 68 px), on the
proxy task's real images, 20 batches of 64 per epoch:

1. ``train_on_batch``, batch by batch (what ``effscale.grid.proxy`` does now): one epoch
   that pays the trace, then two timed epochs;
2. ``fit`` over a ``keras.utils.PyDataset`` yielding the same batches, a fresh one per epoch
   and a callback with a per-batch hook (what it did before): one epoch that pays its own
   trace, then two timed epochs;
3. ``train_on_batch`` again, two timed epochs: under TensorFlow the slowdown of 2. outlives
   the ``fit`` that caused it (tf.data's generator threads), so a process that ever used
   that path stays slow.

``--trials`` instead runs whole proxy trials of the row (seeds 1 and 2) with each path, in a
fresh process: the trial code as it is, then with the old ``fit`` epoch swapped in.

Prints images per second of each and the ratios, with the process's minor page faults per
timed epoch (the slow path shows hundreds of thousands: memory handed back to the kernel and
faulted in again every step).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as a one-thread worker runs


def old_fit_epoch(model, dataset, order, first: dict) -> dict:
    """The trial epoch effscale 0.1.0 to 2026-12-02 ran: ``fit`` over a fresh ``PyDataset``, with a
    callback timing the first step; same signature as ``effscale.grid.proxy._train_epoch``."""
    import keras
    import numpy as np

    x, y, eye = dataset.x_train, dataset.y_train, np.eye(dataset.num_classes, dtype=np.float32)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            return x[order[i]].astype(np.float32), eye[y[order[i]]]

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            first.setdefault("t", time.perf_counter())

    history = model.fit(Batches(workers=1, use_multiprocessing=False), epochs=1, verbose=0, shuffle=False,
                        callbacks=[FirstStep()])
    return {k: float(v[-1]) for k, v in history.history.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", default="1,1,1.4142", help="alpha,beta,gamma")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trials", action="store_true",
                        help="instead: whole trials of the row (seeds 1 and 2, all its batches) with each path")
    args = parser.parse_args()

    from effscale.backend import set_defaults

    set_defaults()
    import keras
    import numpy as np

    from effscale.grid.config import GridConfig
    from effscale.grid.proxy import ProxyTrainer, _prepare_model, _train_epoch, seed_everything
    from effscale.grid.search import Candidate, TrialSpec

    trainer = ProxyTrainer.load(GridConfig(dataset=args.dataset))
    data, config = trainer.dataset, trainer.config
    spec = TrialSpec(Candidate(*(float(v) for v in args.row.split(","))), "grid", 0, 0, 1)
    seed_everything(0)
    model, _ = _prepare_model(spec, config, data, {})
    batch, steps = config.batch_size, args.steps
    order = np.arange(steps * batch).reshape(steps, batch) % len(data.y_train)

    def timed(label: str, epoch) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        epoch()
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - usage.ru_minflt
        rate = steps * batch / seconds
        print(f"  {label}: {seconds:.1f} s, {rate:.1f} img/s, {faults:,} minor page faults")
        return rate

    def by_batch():
        _train_epoch(model, data, order, {})

    def by_fit():
        old_fit_epoch(model, data, order, {})

    print(f"row {spec.candidate.id}, {steps} batches of {batch}, one thread, {keras.backend.backend()}")
    if args.trials:  # in a process that has not run the steps below
        whole_trials(trainer, spec)
        return 0
    timed("train_on_batch, first epoch (trace)", by_batch)
    before = [timed("train_on_batch", by_batch) for _ in range(2)]
    timed("fit(PyDataset), first epoch (its trace)", by_fit)
    fit = [timed("fit(PyDataset)", by_fit) for _ in range(2)]
    after = [timed("train_on_batch after the fit", by_batch) for _ in range(2)]
    best = max(before)
    print(f"fit(PyDataset) / train_on_batch throughput: {max(fit) / best:.2f}x "
          f"(epochs {', '.join(f'{r / best:.2f}' for r in fit)})")
    print(f"train_on_batch after the fit / before: {max(after) / best:.2f}x")
    return 0


def whole_trials(trainer, spec) -> None:
    """Seeds 1 and 2 of the row as whole trials: with today's epochs, then with the old ``fit`` epochs."""
    from dataclasses import replace

    from effscale.grid import proxy

    new_epoch = proxy._train_epoch
    train = {}
    for label, epoch in (("train_on_batch", new_epoch), ("fit(PyDataset)", old_fit_epoch)):
        proxy._train_epoch = epoch
        for seed in (1, 2):
            timings = trainer(replace(spec, seed=seed))["timings"]
            train[label, seed] = timings["train"]
            print(f"  whole trial, {label}, seed {seed}: first step {timings['first_step']:.1f} s, "
                  f"train {timings['train']:.1f} s, total {timings['total']:.1f} s")
    proxy._train_epoch = new_epoch
    print(f"whole trials, train time fit(PyDataset) / train_on_batch: seed 1 "
          f"{train['fit(PyDataset)', 1] / train['train_on_batch', 1]:.2f}x, seed 2 "
          f"{train['fit(PyDataset)', 2] / train['train_on_batch', 2]:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
