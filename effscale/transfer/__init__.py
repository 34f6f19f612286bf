"""Fine-tuning a variant on a dataset: config, model, strategies, checkpoints, training, report.

``effscale.transfer.run(TransferConfig(...), run_dir)`` is the library form of
``effscale transfer``. The names below are imported on first use, so importing the
package (or its config) never imports Keras.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "run": "effscale.transfer.runner",
    "TransferResult": "effscale.transfer.runner",
    "TransferConfig": "effscale.transfer.config",
    "resolve_transfer_config": "effscale.transfer.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'effscale.transfer' has no attribute {name!r}")
