"""What a cached prefix can save, by multiply-adds alone. Pure Python, instant.

    python benchmarks/top_share.py                          # Lite0, 160 px, 10 classes
    python benchmarks/top_share.py --variant b0 --image-size 224 --blocks 1,2,5,8

For ``top-blocks N`` the trained top is the last N blocks, the head conv and the classifier;
the frozen prefix is the rest. With t the top's share of the forward multiply-adds and a
training step costing three forward passes (forward, input and kernel gradients), an
uncached step costs (1 - t) + 3t and a cached one 3t, so

    cached / uncached epoch = 3t / (1 + 2t)

if every multiply-add took the same time. Measured ratios differ where the two parts run at
different speeds per multiply-add (docs/transfer.md, "Cost model").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effscale.net.cost import block_costs, network_cost, stem_cost  # noqa: E402
from effscale.schemas import resolve_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--blocks", default="1,2,5,8,11")
    args = parser.parse_args()
    name, spec = resolve_network(args.variant)
    spec = replace(spec, resolution=args.image_size)
    total = network_cost(spec, num_classes=args.classes).macs
    blocks = [b.macs for b in block_costs(spec)]
    # Besides its blocks the network has only the stem (frozen) and the head conv and
    # classifier (trained).
    head = total - stem_cost(spec).macs - sum(blocks)
    print(f"{name} at {args.image_size} px, {args.classes} classes: {total / 1e6:.1f} M multiply-adds forward")
    print(f"{'top-blocks':>10}  {'top share t':>11}  {'cached/uncached by MACs':>23}")
    for n in (int(b) for b in args.blocks.split(",")):
        t = (sum(blocks[-n:]) + head) / total
        print(f"{n:>10}  {t:>11.3f}  {3 * t / (1 + 2 * t):>23.3f}")


if __name__ == "__main__":
    main()
