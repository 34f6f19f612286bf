"""Cached frozen prefix against running the frozen bottom every epoch. Prints ratios.

    python benchmarks/transfer_cache.py                          # Lite0, 160 px, top-blocks 2
    python benchmarks/transfer_cache.py --image-size 224 --images 512 --rounds 3

Same model (Lite0 with its registry ImageNet weights, ``top-blocks N`` trainable, frozen
BatchNorm), same CIFAR-10 images, same batch size, same optimizer:

* uncached epoch: ``model.fit`` on the transfer model (uint8 32x32 -> Resizing -> the whole
  backbone, the frozen prefix included, every step), flip augmentation;
* cached epoch: ``top.fit`` on the cached prefix activations (one view drawn per image),
  what ``effscale transfer --strategy top-blocks`` now does;
* caching pass: the prefix once over every image and its flip (paid once per cache key).
* ``--loop`` adds a third epoch: the same cached batches through ``top.train_on_batch`` in
  this thread, without ``fit``'s tf.data generator, to see whether the data path is a
  share of the cached epoch's time.

The two epochs alternate ``--rounds`` times after one untimed warm-up each (tracing), so
load from other processes on a shared CPU hits both alike; the ratio of each round is
reported with the median and the range, in wall time and in process CPU time.

Wall time is the epoch's, from ``on_epoch_begin`` to ``on_epoch_end``, not the ``fit``
call's: after a ``PyDataset`` fit in the same process, destroying a ``tf.data`` iterator can
wait seconds for tf.data's autotuning thread to wake (its period doubles from 10 ms, so the
call ended at exactly 10.24 or 20.48 s), an idle wait once per ``fit`` call that a real run,
with all its epochs in one call, pays once per phase. The call's extra wall time is
reported as ``*_teardown_s``.
Real CIFAR-10 from ../shared/data (EFFSCALE_SHARED_DATA) when present, synthetic otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EFFSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _timed(fn) -> tuple[float, float, float]:
    """(epoch wall, call CPU, call wall) of ``fn(callbacks)``, one ``fit`` call of one epoch."""
    import keras

    class EpochWall(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begin = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.begin

    timer = EpochWall()
    wall, cpu = time.perf_counter(), time.process_time()
    fn([timer])
    return getattr(timer, "seconds", time.perf_counter() - wall), time.process_time() - cpu, time.perf_counter() - wall


def build(variant: str, image_size: int, blocks: int, images: int, batch_size: int,
          precision: str = "float32") -> SimpleNamespace:
    """The transfer model of ``top-blocks`` with its registry weights, split at the cut, both
    compiled with one optimizer: what ``effscale transfer`` trains, cached and uncached."""
    from effscale.backend import set_defaults

    set_defaults()
    import keras

    from effscale.data.datasets import load_dataset
    from effscale.schemas import resolve_network
    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import HEAD_LAYERS, build_transfer_model, load_backbone_weights
    from effscale.transfer.prefix import cut_layer, split_model
    from effscale.transfer.strategies import compile_model, configure_phase, make_optimizer

    tar = SHARED / "cifar10-jpeg.tar.gz"
    data = load_dataset(str(tar) if tar.is_file() else "synthetic", limit_train=images, limit_val=64, seed=0)
    config = TransferConfig(variant=variant, weights=variant, image_size=image_size, precision=precision,
                            strategy="top-blocks", blocks=blocks, augment=("flip",), batch_size=batch_size)
    keras.mixed_precision.set_global_policy(precision)  # as effscale transfer --precision does
    name, spec = resolve_network(variant)
    keras.utils.set_random_seed(0)
    model, backbone = build_transfer_model(config, spec, data.image_shape, data.num_classes, image_size)
    load_backbone_weights(backbone, config.weights, name, spec)
    configure_phase(model, backbone, config, "top-blocks")
    steps = -(-len(data.y_train) // batch_size)
    optimizer = make_optimizer(config, "top-blocks", steps, 1000)
    compile_model(model, config, optimizer, data.num_classes)
    cut = cut_layer(backbone, "top-blocks")
    prefix, top = split_model(model, backbone, cut, HEAD_LAYERS)
    compile_model(top, config, optimizer, data.num_classes)
    return SimpleNamespace(name=name, data=data, config=config, model=model, prefix=prefix, top=top, cut=cut,
                           recompile_top=lambda: compile_model(top, config, make_optimizer(
                               config, "top-blocks", steps, 1000), data.num_classes))


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The model ``build`` makes: shared with benchmarks/transfer_top_floor.py."""
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_build_arguments(parser)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", action="store_true", help="also time the cached epoch without fit's data path")
    args = parser.parse_args(argv)

    import numpy as np

    from effscale.data.datasets import make_batches
    from effscale.transfer.cache import ActivationCache, cache_key
    from effscale.transfer.prefix import CachedEpochs

    built = build(args.variant, args.image_size, args.blocks, args.images, args.batch_size)
    data, model, prefix, top, cut, name = built.data, built.model, built.prefix, built.top, built.cut, built.name

    with tempfile.TemporaryDirectory() as tmp:
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        key = cache_key({"bench": True}, data.x_train, [])
        cache = ActivationCache(tmp, key, len(data.y_train), shape)
        fill_wall, fill_cpu, _ = _timed(lambda callbacks: cache.fill(
            data.x_train, lambda x: prefix.predict(x.astype(np.float32), batch_size=128, verbose=0)))
        store = cache.load()

        uncached_batches = make_batches(data.x_train, data.y_train, batch_size=args.batch_size,
                                        num_classes=data.num_classes, training=True, augment=("flip",), seed=0,
                                        deterministic=True)

        def uncached(callbacks=()):
            model.fit(uncached_batches, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))

        def cached_epoch(epoch: int) -> CachedEpochs:
            return CachedEpochs(store, data.y_train, data.num_classes, args.batch_size, 0, epoch, [0, 1])

        def cached(callbacks=(), epoch=[0]):  # noqa: B006 - a counter: each cached epoch draws its own order
            epoch[0] += 1
            top.fit(cached_epoch(epoch[0]), epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))

        def cached_loop(callbacks=(), epoch=[1000]):  # noqa: B006 - a counter, as in cached(); no fit, no epoch
            epoch[0] += 1
            batches = cached_epoch(epoch[0])
            for i in range(len(batches)):
                top.train_on_batch(*batches[i])

        uncached()  # warm-up: tracing
        cached()
        if args.loop:
            cached_loop()
        rounds = []
        for _ in range(args.rounds):
            u = _timed(uncached)
            c = _timed(cached)
            rounds.append({"uncached_s": round(u[0], 3), "cached_s": round(c[0], 3), "ratio": round(c[0] / u[0], 4),
                           "uncached_cpu_s": round(u[1], 3), "cached_cpu_s": round(c[1], 3),
                           "cpu_ratio": round(c[1] / u[1], 4),
                           "uncached_teardown_s": round(u[2] - u[0], 3), "cached_teardown_s": round(c[2] - c[0], 3)})
            if args.loop:
                loop = _timed(cached_loop)
                rounds[-1] |= {"loop_s": round(loop[0], 3), "loop_cpu_s": round(loop[1], 3),
                               "loop_over_fit": round(loop[0] / c[0], 4), "loop_over_fit_cpu": round(loop[1] / c[1], 4)}
    ratios = [r["ratio"] for r in rounds]
    cpu_ratios = [r["cpu_ratio"] for r in rounds]
    median_uncached = statistics.median(r["uncached_s"] for r in rounds)
    result = {
        "variant": name, "image_size": args.image_size, "blocks": args.blocks, "cut": cut,
        "activation_shape": list(shape), "images": len(data.y_train), "batch_size": args.batch_size,
        "cache_mib": round(cache.nbytes / 2**20, 1),
        "caching_pass_s": round(fill_wall, 2), "caching_pass_cpu_s": round(fill_cpu, 2),
        "caching_pass_in_uncached_epochs": round(fill_wall / median_uncached, 2),
        "rounds": rounds,
        "ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
        "cpu_ratio_median": statistics.median(cpu_ratios), "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    print(f"cached/uncached epoch time: {result['ratio_median']:.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
          f"{args.rounds} rounds); CPU time {result['cpu_ratio_median']:.3f} "
          f"(range {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}); caching pass = "
          f"{result['caching_pass_in_uncached_epochs']:.2f} uncached epochs")
    if args.loop:
        loops = [r["loop_over_fit"] for r in rounds]
        loops_cpu = [r["loop_over_fit_cpu"] for r in rounds]
        print(f"cached epoch, train_on_batch loop / fit: {statistics.median(loops):.3f} (range {min(loops):.3f}-"
              f"{max(loops):.3f}); CPU time {statistics.median(loops_cpu):.3f} "
              f"(range {min(loops_cpu):.3f}-{max(loops_cpu):.3f})")
    return result


if __name__ == "__main__":
    main()
