"""Where a grid worker's memory goes: resident memory of ONE process run as a worker runs.

    python benchmarks/grid_worker_memory.py --dataset ../shared/data/cifar10-jpeg.tar.gz

Runs in this process, with one TensorFlow thread (a local worker's setting on 2 cores), the
default search's proxy trainer on the rows given (default: resolution-only, then width-only,
rung 0, one epoch each), and prints the RSS after importing TensorFlow + Keras, after
loading the proxy data, and after each trial; then after ``gc.collect()`` and glibc's
``malloc_trim(0)``, which shows how much of it is freed heap that the allocator kept
(little: the rest is held by live objects: the compiled model kept for the row's next seed,
traced graphs, the data).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource

for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")


def rss_mb() -> float:
    # the figure the local executor's memory rule reads for its workers
    from effscale.grid.workers import process_rss_mb

    return process_rss_mb(os.getpid()) or 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", action="append", help="alpha,beta,gamma (repeatable)")
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

    trainer = ProxyTrainer.load(GridConfig(dataset=args.dataset))
    print(f"proxy data loaded: {rss_mb():.0f} MB")
    libc = ctypes.CDLL("libc.so.6")
    for alpha, beta, gamma in rows:
        candidate = Candidate(alpha, beta, gamma)
        trainer(TrialSpec(candidate, "grid", 0, 0, 1))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        after = rss_mb()
        gc.collect()
        collected = rss_mb()
        libc.malloc_trim(0)
        print(f"after {candidate.id} (1 epoch): {after:.0f} MB (peak so far {peak:.0f} MB); "
              f"after gc {collected:.0f} MB; after malloc_trim {rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
