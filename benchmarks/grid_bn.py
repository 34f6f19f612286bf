"""Does the proxy score measure the network or stale BatchNorm statistics?

Trains the default proxy base for one epoch (a rung-0 trial: ~60 steps) twice, with
Keras's BatchNorm momentum 0.99 and with the grid's 0.9, and scores each trained network
twice: with the moving statistics as training left them, and after recomputing them on 8
training batches (``effscale.net.batchnorm.recalibrate_batchnorm``). The same weights are scored
both ways, so the difference is the statistics alone.

    python benchmarks/grid_bn.py --dataset ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import sys

from effscale.grid.config import GridConfig
from effscale.grid.search import Candidate, TrialSpec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    import keras

    from effscale.data.datasets import load_dataset, make_batches
    from effscale.grid.proxy import build_proxy_model
    from effscale.net.batchnorm import recalibrate_batchnorm

    base = GridConfig(dataset=args.dataset)
    data = load_dataset(base.dataset, limit_train=base.limit_train, limit_val=base.limit_val, seed=base.data_seed)
    spec = TrialSpec(Candidate(1.2, 1.1, 1.15), "paper", 0, 0, args.epochs)
    steps = -(-len(data.y_train) // base.batch_size) * args.epochs
    print(f"{data.name}: {len(data.y_train)} train / {len(data.y_val)} val images, {steps} training steps")
    for momentum in (0.99, 0.9):
        config = base.replace(bn_momentum=momentum)
        keras.utils.set_random_seed(0)
        model = build_proxy_model(spec, config, data.image_shape, data.num_classes)
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy", metrics=["accuracy"])
        train = make_batches(data.x_train, data.y_train, batch_size=config.batch_size,
                             num_classes=data.num_classes, training=True, seed=0)
        history = model.fit(train, epochs=args.epochs, verbose=0)
        val = make_batches(data.x_val, data.y_val, batch_size=256, num_classes=data.num_classes, training=False)
        _, stale = model.evaluate(val, verbose=0)
        recalibrate_batchnorm(model, data.x_train, 8, config.batch_size)
        _, fresh = model.evaluate(val, verbose=0)
        print(f"momentum {momentum}: train acc {100 * history.history['accuracy'][-1]:.1f}%, "
              f"val acc with training's moving stats {100 * stale:.1f}%, after recomputing on 8 batches "
              f"{100 * fresh:.1f}%")
        keras.backend.clear_session()
    print(f"chance: {100 / data.num_classes:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
