"""The caching pass on Keras against LiteRT (``--prefix-runtime``). Prints the ratio.

    python benchmarks/prefix_runtime.py                           # Lite0, 160 px, linear-probe cut
    python benchmarks/prefix_runtime.py --strategy top-blocks --images 512 --with-onnx

Same frozen prefix (Lite0 with its registry ImageNet weights, cut where ``--strategy``
cuts it), same CIFAR-10 images, both views, written into an ``ActivationCache`` exactly
as ``effscale transfer`` does:

* keras: ``prefix.predict`` (what the pass did before ``--prefix-runtime``);
* litert: the prefix converted to TFLite float32 and run by the LiteRT interpreter on
  every core, after the check against Keras on 8 images (conversion reported apart, and
  included in the "with conversion" figure);
* onnx (``--with-onnx``): the same through tf2onnx and onnxruntime, for comparison only.

Throughput counts images x views, like ``extra.prefix_time_s`` in docs/transfer.md. One
run each, in that order; wall and process CPU time (all threads). Real CIFAR-10 from
../shared/data (EFFSCALE_SHARED_DATA) when present, synthetic otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EFFSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--strategy", choices=["linear-probe", "top-blocks"], default="linear-probe")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--with-onnx", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    from effscale.backend import set_defaults

    set_defaults()
    import keras

    from effscale.data.datasets import load_dataset
    from effscale.schemas import resolve_network
    from effscale.transfer import prefix_runtime as PR
    from effscale.transfer.cache import ActivationCache
    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import HEAD_LAYERS, build_transfer_model, load_backbone_weights
    from effscale.transfer.prefix import cut_layer, split_model
    from effscale.transfer.strategies import configure_phase

    tar = SHARED / "cifar10-jpeg.tar.gz"
    data = load_dataset(str(tar) if tar.is_file() else "synthetic", limit_train=args.images, limit_val=64, seed=0)
    config = TransferConfig(variant=args.variant, weights=args.variant, image_size=args.image_size,
                            strategy=args.strategy, blocks=args.blocks, augment=("flip",))
    name, spec = resolve_network(args.variant)
    keras.utils.set_random_seed(0)
    model, backbone = build_transfer_model(config, spec, data.image_shape, data.num_classes, args.image_size)
    load_backbone_weights(backbone, config.weights, name, spec)
    phase = config.phases()[-1][0]
    configure_phase(model, backbone, config, phase)
    cut = cut_layer(backbone, phase)
    prefix = split_model(model, backbone, cut, HEAD_LAYERS)[0]
    shape = tuple(int(d) for d in prefix.output.shape[1:])
    x = data.x_train
    views = 2 * len(x)

    def fill(tmp, label, compute):
        cache = ActivationCache(tmp, label, len(x), shape)
        wall, cpu, _ = _timed(lambda: cache.fill(x, compute))
        return {"pass_s": round(wall, 2), "pass_cpu_s": round(cpu, 2), "img_per_s": round(views / wall, 1),
                "cpu_s_per_img": round(cpu / views, 5)}, cache.load().astype(np.float32)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["keras"], on_keras = fill(tmp, "keras", PR.keras_compute(prefix))
        wall, cpu, opened = _timed(lambda: PR.open_compute("litert", prefix, x, required=True))
        assert opened.runtime == "litert", "LiteRT did not pass the check against Keras"
        results["litert"], on_litert = fill(tmp, "litert", opened.compute)
        results["litert"] |= {"convert_s": round(wall, 2), "convert_cpu_s": round(cpu, 2),
                              "img_per_s_with_conversion": round(views / (wall + results["litert"]["pass_s"]), 1),
                              "difference_check": opened.difference,
                              "difference_cache": PR.relative_difference(on_keras, on_litert)}
        if args.with_onnx:
            from effscale.export.convert import export
            from effscale.export.runtimes import OnnxRunner

            wall, cpu, runner = _timed(lambda: OnnxRunner(export(prefix, Path(tmp) / "prefix.onnx", "onnx")))
            results["onnx"], on_onnx = fill(tmp, "onnx", lambda images: runner.predict(np.float32(images), 32))
            results["onnx"] |= {"convert_s": round(wall, 2),
                                "difference_cache": PR.relative_difference(on_keras, on_onnx)}
    keras_r, litert_r = results["keras"], results["litert"]
    result = {
        "variant": name, "image_size": args.image_size, "strategy": args.strategy, "cut": cut,
        "activation_shape": list(shape), "images": len(x), "views": 2, "runtimes": results,
        "litert_over_keras": round(litert_r["img_per_s"] / keras_r["img_per_s"], 3),
        "litert_over_keras_with_conversion": round(litert_r["img_per_s_with_conversion"] / keras_r["img_per_s"], 3),
        "cpu_time_ratio_keras_over_litert": round(keras_r["pass_cpu_s"] / litert_r["pass_cpu_s"], 3),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    print(f"caching pass, {len(x)} images x 2 views: keras {keras_r['img_per_s']} img/s, litert "
          f"{litert_r['img_per_s']} img/s ({litert_r['img_per_s_with_conversion']} with its {litert_r['convert_s']} s "
          f"conversion): litert/keras = {result['litert_over_keras']:.2f}x "
          f"({result['litert_over_keras_with_conversion']:.2f}x with conversion); "
          f"CPU time keras/litert = {result['cpu_time_ratio_keras_over_litert']:.2f}")
    return result


if __name__ == "__main__":
    main()
