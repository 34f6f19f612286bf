"""Where a cached ``top-blocks`` step spends its time, against an uncached step. Prints ratios.

    python benchmarks/transfer_top_floor.py                 # Lite0, 160 px, top-blocks 2, batch 64
    python benchmarks/transfer_top_floor.py --image-size 224
    python benchmarks/transfer_top_floor.py --xla --rounds 3 --steps 3   # also both steps under XLA

``benchmarks/transfer_cache.py`` times whole epochs; this one times single training steps
on one fixed batch (``train_on_batch``; every variant below is traced first, then all are
timed in turn for ``--rounds`` rounds of ``--steps`` calls; medians), so
the data path and ``fit``'s per-epoch work are out of both sides, and splits the cached
step by what it runs (TensorFlow backend, the default):

* the top's 1x1 convolutions, each run alone as a matmul of its shape, forward and the
  gradients a training step needs (no input gradient for the first layer: its input is
  cached data). This is the arithmetic a cached step cannot avoid;
* the same matmuls in bfloat16, for comparison only (the top trains in float32);
* the depthwise convolutions alone: forward, and forward + kernel gradient;
* ablations of the top, for accounting only (they change the model): frozen BatchNorm
  layers made identities, then the activations too; then, with both restored, the
  depthwise kernels frozen;
* with ``--xla``, both steps again compiled with ``jit_compile=True`` (Keras turns XLA off on
  CPU-only machines; this measures what turning it on would give).

It ends with the cached / uncached step ratio and two "what if" ratios: with BatchNorm and
activations free (fused into the convolutions), and with each depthwise kernel gradient
costing no more than that layer's forward pass. Real CIFAR-10 from ../shared/data when
present. Run it on an idle machine: one run, ratios within it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_cache import add_build_arguments, build  # noqa: E402


def _interleaved_ms(fns: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median milliseconds per call of each function: ``rounds`` rounds, each timing ``steps``
    calls of every function in turn, so that load from elsewhere hits all of them alike."""
    for fn in fns.values():  # untimed: tracing, first allocations
        fn()
        fn()
    per_round = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times))
    return {name: 1000 * statistics.median(values) for name, values in per_round.items()}


def _conv_floor(tf, batch: int, shape, cout: int, input_grad: bool, dtype="float32"):
    """A 1x1 convolution as the matmul it is: forward + kernel gradient (+ input gradient)."""
    rows = batch * shape[0] * shape[1]
    x = tf.Variable(tf.cast(tf.random.normal([rows, shape[2]]), dtype))
    w = tf.Variable(tf.cast(tf.random.normal([shape[2], cout]) * 0.05, dtype))
    sources = [w, x] if input_grad else [w]

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            y = tf.matmul(x, w)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, sources)

    return step


def _depthwise(tf, batch: int, shape, kernel: int):
    """Forward, and forward + kernel gradient, of one depthwise layer of this shape."""
    x = tf.Variable(tf.random.normal([batch, *shape]))
    w = tf.Variable(tf.random.normal([kernel, kernel, shape[2], 1]) * 0.05)
    forward = tf.function(lambda: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"), autograph=False)

    @tf.function(autograph=False)
    def with_grad():
        with tf.GradientTape() as tape:
            y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [w])

    return forward, with_grad


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_build_arguments(parser)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                        help="the Keras policy of both models (effscale transfer --precision)")
    parser.add_argument("--xla", action="store_true", help="also time both steps compiled with jit_compile=True")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per function and round")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from effscale.transfer.model import flat_layers

    b = args.batch_size
    built = build(args.variant, args.image_size, args.blocks, b, b, args.precision)
    x = built.data.x_train[:b]
    y = keras.utils.to_categorical(built.data.y_train[:b], built.data.num_classes)
    # What the cache holds: float16 activations, read back as float32.
    act = built.prefix.predict(x.astype(np.float32), verbose=0).astype(np.float16).astype(np.float32)
    layers = [layer for layer in flat_layers(built.top) if layer.trainable and layer.weights]
    convs = [layer for layer in layers if type(layer).__name__ == "Conv2D"]
    depthwise = [layer for layer in layers if type(layer).__name__ == "DepthwiseConv2D"]

    def train_fn(model, inputs):
        """``model``'s traced training step as it is now; later changes to the layers retrace
        only a new function, so the variants below can be timed side by side."""
        model.train_on_batch(inputs, y)
        fn = model.train_function
        return lambda: (setattr(model, "train_function", fn), model.train_on_batch(inputs, y))

    fns = {"uncached": train_fn(built.model, x), "cached": train_fn(built.top, act)}
    if args.xla:  # before the ablations below, which recompile the top without it
        for name, model, inputs in (("uncached", built.model, x), ("cached", built.top, act)):
            model.jit_compile, model.train_function = True, None
            fns[f"{name} xla"] = train_fn(model, inputs)
    for name, kinds in (("no BN", {"BatchNormalization"}), ("no BN, no act", {"BatchNormalization", "Activation"})):
        for layer in flat_layers(built.top):
            if type(layer).__name__ in kinds:
                layer.call = lambda inputs, *a, **k: inputs  # an identity, for accounting only
        built.recompile_top()
        fns[name] = train_fn(built.top, act)
    for layer in flat_layers(built.top):
        layer.__dict__.pop("call", None)
    for layer in depthwise:
        layer.trainable = False
    built.recompile_top()
    fns["depthwise frozen"] = train_fn(built.top, act)
    for dtype in ("float32", "bfloat16"):
        for i, layer in enumerate(convs):
            fns[f"matmul {dtype} {i}"] = _conv_floor(tf, b, layer.input.shape[1:], layer.filters, i > 0, dtype)
    for i, layer in enumerate(depthwise):
        fns[f"dw forward {i}"], fns[f"dw with grad {i}"] = _depthwise(tf, b, layer.input.shape[1:],
                                                                      layer.kernel_size[0])
    ms = _interleaved_ms(fns, args.rounds, args.steps)

    step = {"uncached": ms["uncached"], "cached": ms["cached"]}
    parts = {"1x1 convs as matmuls": sum(ms[f"matmul float32 {i}"] for i in range(len(convs)))}
    bfloat16_ms = sum(ms[f"matmul bfloat16 {i}"] for i in range(len(convs)))  # not in the step: for comparison
    # Multiply-adds of those matmuls: forward, kernel gradient, and input gradient but the first's.
    macs = sum(b * layer.input.shape[1] * layer.input.shape[2] * layer.input.shape[3] * layer.filters * (3 if i else 2)
               for i, layer in enumerate(convs))
    dw = [(ms[f"dw forward {i}"], ms[f"dw with grad {i}"]) for i in range(len(depthwise))]
    parts["depthwise forward"] = sum(f for f, _ in dw)
    parts["depthwise kernel gradient"] = sum(g - f for f, g in dw)
    parts["frozen BatchNorm (ablation)"] = ms["cached"] - ms["no BN"]
    parts["activations (ablation)"] = ms["no BN"] - ms["no BN, no act"]
    parts["depthwise kernel gradient (ablation)"] = ms["cached"] - ms["depthwise frozen"]
    no_bn_act = ms["no BN, no act"]

    slow_dw = sum(max(0.0, g - 2 * f) for f, g in dw)  # kernel gradient beyond the forward's cost
    result = {
        "variant": built.name, "image_size": args.image_size, "blocks": args.blocks, "cut": built.cut,
        "batch_size": b, "precision": args.precision, "rounds": args.rounds, "steps": args.steps,
        "step_ms": {k: round(v, 2) for k, v in step.items()},
        "cached_parts_ms": {k: round(v, 2) for k, v in parts.items()},
        "ratio": round(step["cached"] / step["uncached"], 4),
        "ratio_bn_act_free": round(no_bn_act / step["uncached"], 4),
        "ratio_bn_act_free_fast_depthwise_grad": round((no_bn_act - slow_dw) / step["uncached"], 4),
        "matmul_floor_ratio": round(parts["1x1 convs as matmuls"] / step["uncached"], 4),
        "matmul_gmacs_per_s": round(macs / parts["1x1 convs as matmuls"] / 1e6, 1),
        "matmuls_bfloat16_over_float32": round(bfloat16_ms / parts["1x1 convs as matmuls"], 4),
    }
    print(json.dumps(result, indent=2))
    print(f"per step: cached {step['cached']:.1f} ms / uncached {step['uncached']:.1f} ms = {result['ratio']:.3f}")
    for name, part in parts.items():
        print(f"  {name:<38} {part:6.1f} ms  {part / step['cached']:.2f} of the cached step, "
              f"{part / step['uncached']:.3f} of the uncached")
    print(f"ratio if BatchNorm and activations were free: {result['ratio_bn_act_free']:.3f}; and if each "
          f"depthwise kernel gradient cost its forward: {result['ratio_bn_act_free_fast_depthwise_grad']:.3f}; "
          f"the 1x1 matmuls alone: {result['matmul_floor_ratio']:.3f} "
          f"({macs / 1e9:.2f} G multiply-adds at {result['matmul_gmacs_per_s']:.0f} G/s)")
    print(f"the same matmuls in bfloat16 / float32: {result['matmuls_bfloat16_over_float32']:.3f}")
    if args.xla:
        xla = {name: ms[f"{name} xla"] for name in ("cached", "uncached")}
        result["xla_step_ms"] = {k: round(v, 2) for k, v in xla.items()}
        print(f"under XLA: cached {xla['cached']:.1f} ms ({xla['cached'] / step['cached']:.2f}x without), "
              f"uncached {xla['uncached']:.1f} ms ({xla['uncached'] / step['uncached']:.2f}x without); "
              f"cached under XLA / uncached without: {xla['cached'] / step['uncached']:.3f}")
    return result


if __name__ == "__main__":
    main()
