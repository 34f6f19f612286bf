"""Exact parameter counts and multiply-adds of a NetworkSpec, by arithmetic.

The paper's "FLOPs" are multiply-adds (MACs). We count the MACs of every convolution
and dense layer (SE included); BatchNorm, activations, pooling and element-wise ops are
not counted, following the convention of the paper and of common profilers.

Parameters match ``keras.Model.count_params()`` of the Keras reference exactly,
including the non-trainable input Normalization (mean, variance, count) and every
BatchNorm's four vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from effscale.net.arch import NetworkSpec


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)

    def to_dict(self) -> dict:
        return asdict(self)


ZERO = Cost(0, 0)


def conv_out(size: int, strides: int) -> int:
    """Spatial size after a conv: 'same' or Keras's correct_pad + 'valid' both give ceil."""
    return -(-size // strides)


def _bn(channels: int) -> Cost:
    return Cost(4 * channels, 0)  # gamma, beta, moving mean, moving variance


def _conv(k: int, c_in: int, c_out: int, out_hw: int, bias: bool = False) -> Cost:
    return Cost(k * k * c_in * c_out + (c_out if bias else 0), out_hw * out_hw * k * k * c_in * c_out)


def _block(c_in: int, c_out: int, k: int, strides: int, expand: int, se_ratio: float, hw: int):
    """Cost of one MBConv block and its output spatial size."""
    filters = c_in * expand
    total = ZERO
    if expand != 1:
        total += _conv(1, c_in, filters, hw) + _bn(filters)
    out_hw = conv_out(hw, strides)
    total += Cost(k * k * filters, out_hw * out_hw * k * k * filters) + _bn(filters)
    if 0 < se_ratio <= 1:
        squeezed = max(1, int(c_in * se_ratio))
        total += _conv(1, filters, squeezed, 1, bias=True) + _conv(1, squeezed, filters, 1, bias=True)
    total += _conv(1, filters, c_out, out_hw) + _bn(c_out)
    return total, out_hw


def network_cost(spec: NetworkSpec, num_classes: int = 1000, include_top: bool = True) -> Cost:
    """Params and MACs of ``spec`` at ``spec.resolution`` (square input, 3 channels)."""
    hw = conv_out(spec.resolution, 2)
    # Input Normalization holds mean, variance and count; Lite's Rescaling holds nothing.
    total = Cost(0 if spec.input_norm == "lite" else 2 * 3 + 1, 0)
    total += _conv(3, 3, spec.stem_filters, hw) + _bn(spec.stem_filters)
    for stage in spec.stages:
        for j in range(stage.repeats):
            c_in = stage.filters_in if j == 0 else stage.filters_out
            strides = stage.strides if j == 0 else 1
            block, hw = _block(
                c_in, stage.filters_out, stage.kernel_size, strides, stage.expand_ratio, stage.se_ratio, hw
            )
            total += block
    last = spec.stages[-1].filters_out
    total += _conv(1, last, spec.head_filters, hw) + _bn(spec.head_filters)
    if include_top:
        total += Cost(spec.head_filters * num_classes + num_classes, spec.head_filters * num_classes)
    return total
