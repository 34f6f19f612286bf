"""Exact parameter counts and multiply-adds of a NetworkSpec, by arithmetic.

The paper's "FLOPs" are multiply-adds (MACs). We count the MACs of every convolution
and dense layer (SE included); BatchNorm, activations, pooling and element-wise ops are
not counted, following the convention of the paper and of common profilers.

Parameters match ``keras.Model.count_params()`` of the Keras reference exactly,
including the non-trainable input Normalization (mean, variance, count) and every
BatchNorm's four vectors.

Activations (``network_activations``), at batch 1, two numbers:

* ``acts``: Dollar et al. 2021 ("Fast and Accurate Model Scaling"): the sum of the output
  sizes of every convolution (depthwise and SE included) and of the dense head, as pycls
  counts them. It tracks memory traffic, which FLOPs miss.
* ``peak``: the most activation elements alive at once in a layer-by-layer forward pass
  that frees a tensor after its last reader, over the same layers the Keras builder makes
  (Rescaling, BatchNorm, padding ... each writes a new tensor; Dropout and Reshape are
  views and write none). Times 4 bytes for float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


def _blocks(spec: NetworkSpec) -> tuple[list[Cost], int]:
    """Every MBConv block's cost, in order, and the spatial size after the last."""
    hw = conv_out(spec.resolution, 2)
    costs = []
    for stage in spec.stages:
        for j in range(stage.repeats):
            c_in = stage.filters_in if j == 0 else stage.filters_out
            strides = stage.strides if j == 0 else 1
            block, hw = _block(
                c_in, stage.filters_out, stage.kernel_size, strides, stage.expand_ratio, stage.se_ratio, hw
            )
            costs.append(block)
    return costs, hw


def block_costs(spec: NetworkSpec) -> list[Cost]:
    """Params and MACs of each MBConv block at ``spec.resolution``, stem to head (neither
    included): what a cut after block i leaves below and above it."""
    return _blocks(spec)[0]


def stem_cost(spec: NetworkSpec) -> Cost:
    """The input normalisation and the stride-2 3x3 stem convolution with its BatchNorm."""
    # Input Normalization holds mean, variance and count; Lite's Rescaling holds nothing.
    total = Cost(0 if spec.input_norm == "lite" else 2 * 3 + 1, 0)
    return total + _conv(3, 3, spec.stem_filters, conv_out(spec.resolution, 2)) + _bn(spec.stem_filters)


def network_cost(spec: NetworkSpec, num_classes: int = 1000, include_top: bool = True) -> Cost:
    """Params and MACs of ``spec`` at ``spec.resolution`` (square input, 3 channels)."""
    total = stem_cost(spec)
    blocks, hw = _blocks(spec)
    for block in blocks:
        total += block
    last = spec.stages[-1].filters_out
    total += _conv(1, last, spec.head_filters, hw) + _bn(spec.head_filters)
    if include_top:
        total += Cost(spec.head_filters * num_classes + num_classes, spec.head_filters * num_classes)
    return total


# ---------------------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class Op:
    """One layer of the forward pass: its Keras name, kind, output elements and inputs."""

    name: str
    kind: str  # "input", "conv", "dense" or "other" (element-wise, padding, pooling)
    size: int
    inputs: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Activations:
    acts: int  # Dollar's activations: sum of conv and dense output elements, batch 1
    peak: int  # most elements alive at once in a layer-by-layer forward pass, batch 1

    def peak_bytes(self, itemsize: int = 4) -> int:
        return self.peak * itemsize

    def to_dict(self) -> dict:
        return {"acts": self.acts, "peak_act_elems": self.peak, "peak_act_bytes": self.peak_bytes()}


class _Graph:
    def __init__(self):
        self.ops: list[Op] = []

    def add(self, name: str, kind: str, size: int, *inputs: int) -> int:
        self.ops.append(Op(name, kind, size, tuple(inputs)))
        return len(self.ops) - 1


def _padded(size: int, kernel: int) -> int:
    """Side after the builder's correct_pad: one pixel less on the leading edge when even."""
    return size + 2 * (kernel // 2) - (1 - size % 2)


def forward_ops(spec: NetworkSpec, num_classes: int = 1000, include_top: bool = True) -> list[Op]:
    """The layers of ``spec``'s Keras model in execution order, named as the builder names them."""
    g = _Graph()
    hw = spec.resolution
    x = g.add("input_layer", "input", hw * hw * 3)
    x = g.add("rescaling", "other", hw * hw * 3, x)
    if spec.input_norm != "lite":
        x = g.add("normalization", "other", hw * hw * 3, x)
        if spec.input_norm == "imagenet":
            x = g.add("rescaling_1", "other", hw * hw * 3, x)
    pad = _padded(hw, 3)
    x = g.add("stem_conv_pad", "other", pad * pad * 3, x)
    hw = conv_out(hw, 2)
    for suffix, kind in (("conv", "conv"), ("bn", "other"), ("activation", "other")):
        x = g.add(f"stem_{suffix}", kind, hw * hw * spec.stem_filters, x)
    for i, stage in enumerate(spec.stages):
        for j in range(stage.repeats):
            name = f"block{i + 1}{chr(j + 97)}_"
            c_in = stage.filters_in if j == 0 else stage.filters_out
            strides = stage.strides if j == 0 else 1
            inputs, filters = x, c_in * stage.expand_ratio
            if stage.expand_ratio != 1:
                for suffix, kind in (("expand_conv", "conv"), ("expand_bn", "other"), ("expand_activation", "other")):
                    x = g.add(name + suffix, kind, hw * hw * filters, x)
            if strides == 2:
                pad = _padded(hw, stage.kernel_size)
                x = g.add(name + "dwconv_pad", "other", pad * pad * filters, x)
                hw = conv_out(hw, 2)
            for suffix, kind in (("dwconv", "conv"), ("bn", "other"), ("activation", "other")):
                x = g.add(name + suffix, kind, hw * hw * filters, x)
            if 0 < stage.se_ratio <= 1:
                se = g.add(name + "se_squeeze", "other", filters, x)
                se = g.add(name + "se_reduce", "conv", max(1, int(c_in * stage.se_ratio)), se)
                se = g.add(name + "se_expand", "conv", filters, se)
                x = g.add(name + "se_excite", "other", hw * hw * filters, x, se)
            x = g.add(name + "project_conv", "conv", hw * hw * stage.filters_out, x)
            x = g.add(name + "project_bn", "other", hw * hw * stage.filters_out, x)
            if stage.id_skip and strides == 1 and c_in == stage.filters_out:
                x = g.add(name + "add", "other", hw * hw * stage.filters_out, x, inputs)
    for suffix, kind in (("conv", "conv"), ("bn", "other"), ("activation", "other")):
        x = g.add(f"top_{suffix}", kind, hw * hw * spec.head_filters, x)
    if include_top:
        x = g.add("avg_pool", "other", spec.head_filters, x)
        g.add("predictions", "dense", num_classes, x)
    return g.ops


def peak_live(ops: list[Op]) -> int:
    """Largest sum of sizes of the tensors alive while one op runs (its inputs, its output
    and everything a later op still needs); a tensor is freed after its last reader."""
    last = list(range(len(ops)))
    for i, op in enumerate(ops):
        for j in op.inputs:
            last[j] = max(last[j], i)
    last[-1] = len(ops)  # the model's output outlives the pass
    return max(sum(ops[j].size for j in range(i + 1) if last[j] >= i) for i in range(len(ops)))


def network_activations(spec: NetworkSpec, num_classes: int = 1000, include_top: bool = True) -> Activations:
    """Dollar's activation count and the peak live activations of ``spec`` at batch 1."""
    ops = forward_ops(spec, num_classes, include_top)
    acts = sum(op.size for op in ops if op.kind in ("conv", "dense"))
    return Activations(acts, peak_live(ops))
