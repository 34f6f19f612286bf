"""Where a grid worker's memory goes: resident memory of ONE process run as a worker runs.

    python benchmarks/grid_worker_memory.py --dataset ../shared/data/cifar10-jpeg.tar.gz

Runs in this process, with one TensorFlow thread (a local worker's setting on 2 cores), the
default search's proxy trainer on the rows given (default: resolution-only, then width-only,
rung 0, one epoch each), and prints the RSS after importing TensorFlow + Keras, after
loading the proxy data, and after each trial; then after ``gc.collect()`` and glibc's
``malloc_trim(0)``, which shows how much of it is freed heap that the allocator kept
(little: the rest is held by live objects: the compiled model kept for the row's next seed,
traced graphs, the data).

``--phases`` also prints each phase's own peak (the kernel's high-water mark, reset before
the phase through ``/proc/self/clear_refs``): model preparation, the training epochs, the
BatchNorm recalibration and the prediction, with the resident memory before and after it
and its seconds. Run it with ``MALLOC_ARENA_MAX=1`` to see what one malloc arena saves
(the local executor's workers run with it).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time

for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")
# and oneDNN as a one-thread worker has it (off on x86-64 unless the user set it)
from effscale.backend import onednn_setting  # noqa: E402

if onednn_setting(1) is not None:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn_setting(1)


def rss_mb() -> float:
    # the figure the local executor's memory rule reads for its workers
    from effscale.grid.workers import process_rss_mb

    return process_rss_mb(os.getpid()) or 0.0


def vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def watch_phases(proxy) -> None:
    """Wrap the proxy trial's phase functions to print each one's peak resident memory."""
    def wrap(name, label):
        inner = getattr(proxy, name)

        def timed(*args, **kwargs):
            before = rss_mb()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")  # resets VmHWM to the current RSS
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - began
                print(f"  {label:<8} peak {vm_hwm_mb():6.0f} MB  (before {before:5.0f}, after {rss_mb():5.0f})"
                      f"  {seconds:6.2f} s")
        setattr(proxy, name, timed)

    for name, label in (("_prepare_model", "prepare"), ("_train_epoch", "epoch"),
                        ("recalibrate_batchnorm", "bn_recal"), ("_predict", "predict")):
        wrap(name, label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", action="append", help="alpha,beta,gamma (repeatable)")
    parser.add_argument("--phases", action="store_true", help="print each phase's peak resident memory")
    args = parser.parse_args()
    rows = [tuple(float(v) for v in r.split(",")) for r in (args.row or ["1,1,1.4142", "1,1.4142,1"])]

    from effscale.backend import set_defaults

    set_defaults()
    print(f"start: {rss_mb():.0f} MB")
    import keras  # noqa: F401

    print(f"TensorFlow + Keras imported: {rss_mb():.0f} MB")
    from effscale.grid.config import GridConfig
    from effscale.grid.proxy import ProxyTrainer
    from effscale.grid.search import Candidate, TrialSpec
    from effscale.grid.workers import release_free_heap

    trainer = ProxyTrainer.load(GridConfig(dataset=args.dataset))
    print(f"proxy data loaded: {rss_mb():.0f} MB")
    if args.phases:
        from effscale.grid import proxy

        watch_phases(proxy)
    for alpha, beta, gamma in rows:
        candidate = Candidate(alpha, beta, gamma)
        result = trainer(TrialSpec(candidate, "grid", 0, 0, 1))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        after = rss_mb()
        gc.collect()
        collected = rss_mb()
        release_free_heap()  # what a worker does after each trial
        print(f"after {candidate.id} (1 epoch, val acc {result['metrics']['val_accuracy']:.4f}): {after:.0f} MB "
              f"(peak so far {peak:.0f} MB); after gc {collected:.0f} MB; after malloc_trim {rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
