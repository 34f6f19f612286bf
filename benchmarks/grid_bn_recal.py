"""How many images per eager call make BatchNorm recalibration fastest?

    python benchmarks/grid_bn_recal.py --dataset ../shared/data/cifar10-jpeg.tar.gz

``effscale.net.batchnorm.recalibrate_batchnorm`` runs 8 batches of 64 training images through
the network eagerly in training mode. Each eager call pays a fixed per-op dispatch, which
favours few large calls; large calls stream bigger activations through the caches, which
favours small ones. In one process with one TensorFlow thread and oneDNN off (a local grid
worker's setting), on the default proxy of one row (default: resolution-only, 68 px) with
its initial weights, this times the whole recalibration for several chunk sizes, in rounds
that alternate them, and prints each size's median time and its ratio to one call per batch.

``--memory`` instead runs one recalibration per chunk size, each in a fresh process, and
prints that process's peak resident memory before and after it (an eager training-mode call
holds far more than its activations suggest).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", default="1,1,1.4142", help="alpha,beta,gamma")
    parser.add_argument("--chunks", default="64,128,256,512", help="images per eager call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="peak RSS per chunk size, fresh processes")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a --memory child
    args = parser.parse_args()
    if args.memory:
        for size in args.chunks.split(","):
            subprocess.run([sys.executable, __file__, "--dataset", args.dataset, "--row", args.row, "--one", size],
                           check=True)
        return 0

    from effscale.grid import proxy
    from effscale.grid.config import GridConfig
    from effscale.grid.search import Candidate, TrialSpec
    from effscale.net import batchnorm

    trainer = proxy.ProxyTrainer.load(GridConfig(dataset=args.dataset))
    data, config = trainer.dataset, trainer.config
    spec = TrialSpec(Candidate(*(float(v) for v in args.row.split(","))), "grid", 0, 0, 1)
    model = proxy.build_proxy_model(spec, config, data.image_shape, data.num_classes)
    largest = batchnorm.largest_batchnorm_input(model)
    sizes = [int(v) for v in args.chunks.split(",")]
    batches, batch = config.bn_recalibration_batches, config.batch_size
    print(f"row {spec.candidate.id}: {batches} batches of {batch}, one thread; largest BN input "
          f"{largest:,} values per image")
    model(data.x_train[:batch].astype("float32"), training=True)  # warm-up: first-call costs
    if args.one:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        batchnorm.RECALIBRATION_CHUNK_ELEMENTS = args.one * largest
        start = time.perf_counter()
        batchnorm.recalibrate_batchnorm(model, data.x_train, batches, batch)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        print(f"  {args.one:4d} images per call: peak RSS {before:,.0f} -> {after:,.0f} MB, {seconds:.1f} s")
        return 0
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            batchnorm.RECALIBRATION_CHUNK_ELEMENTS = size * largest
            start = time.perf_counter()
            batchnorm.recalibrate_batchnorm(model, data.x_train, batches, batch)
            times[size].append(time.perf_counter() - start)
    base = statistics.median(times[sizes[0]])
    for size in sizes:
        median = statistics.median(times[size])
        print(f"  {size:4d} images per call: median {median:.2f} s ({', '.join(f'{t:.2f}' for t in times[size])}), "
              f"{median / base:.2f}x of {sizes[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
