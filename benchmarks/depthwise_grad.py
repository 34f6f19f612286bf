"""A depthwise kernel gradient: TensorFlow's CPU kernel against a forward-pass formulation. Prints ratios.

    python benchmarks/depthwise_grad.py

The kernel gradient of a stride-1, SAME depthwise convolution is

    dW[i, j, c] = sum over n, h, w of xpad[n, h + i, w + j, c] * g[n, h, w, c]

which is itself a depthwise *forward* convolution: fold the batch into the channels
(input ``xpad`` as one image of N*C channels, "filter" ``g`` of H x W per channel, VALID),
then sum the N copies. TensorFlow's ``DepthwiseConv2dNativeBackpropFilter`` took 10x a
forward pass for Lite0's 5x5 kernels on 5x5 maps (benchmarks/transfer_top_floor.py), so
this checks whether the forward kernel does better on the shapes of Lite0's top blocks at
160 px (batch 64). Median of 30 calls each after two untimed; one run.
"""

from __future__ import annotations

import statistics
import time


def _median_ms(fn, calls: int = 30) -> float:
    fn()
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    import numpy as np
    import tensorflow as tf

    def folded(x, g, k: int):
        pad = k // 2
        n, h, w, c = x.shape
        xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        image = tf.reshape(tf.transpose(xp, [1, 2, 0, 3]), [1, h + 2 * pad, w + 2 * pad, n * c])
        kernel = tf.reshape(tf.transpose(g, [1, 2, 0, 3]), [h, w, n * c, 1])
        out = tf.nn.depthwise_conv2d(image, kernel, [1, 1, 1, 1], "VALID")  # [1, k, k, n*c]
        return tf.reduce_sum(tf.reshape(out, [k, k, n, c]), axis=2)[..., None]

    # (input shape, kernel): Lite0's stage-6/7 blocks at 160 px and two earlier stages
    for shape, k in [((64, 5, 5, 1152), 5), ((64, 5, 5, 1152), 3), ((64, 10, 10, 672), 5),
                     ((64, 20, 20, 240), 5), ((64, 40, 40, 144), 3)]:
        x, g = tf.random.normal(shape, seed=1), tf.random.normal(shape, seed=2)
        native = tf.function(lambda x=x, g=g, k=k: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x, filter_sizes=[k, k, shape[3], 1], out_backprop=g, strides=[1, 1, 1, 1], padding="SAME"),
            autograph=False)
        forward = tf.function(lambda x=x, g=g, k=k: folded(x, g, k), autograph=False)
        a, b = native().numpy(), forward().numpy()
        error = float(np.abs(a - b).max() / np.abs(a).max())
        t_native, t_forward = _median_ms(native), _median_ms(forward)
        print(f"{str(shape):<20} k={k}: native {t_native:6.2f} ms, folded forward {t_forward:6.2f} ms, "
              f"ratio {t_forward / t_native:.2f} (largest difference {error:.1e} of the gradient's scale)")


if __name__ == "__main__":
    main()
