"""effscale: EfficientNet-style compound model scaling as a command-line tool and a library.

Importing this package is cheap: it pulls in nothing heavy (no Keras, no pandas). The
library API (docs/api.md) is imported on first use:

* ``effscale.derive(phi, coefficients=None, budget=None)`` and ``effscale.official(name)``:
  what ``effscale scale`` shows, as dicts (pure Python);
* ``effscale.grid.run(GridConfig(...), run_dir)``: a whole ``effscale grid`` search;
* ``effscale.transfer.run(TransferConfig(...), run_dir)``: a whole ``effscale transfer`` run;
* ``effscale.evaluate(...)``: ``effscale evaluate`` (the module is callable);
* ``ScalingCoefficients``, ``GridConfig``, ``TransferConfig``: the settings they take.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ATTRIBUTES = {
    "derive": "effscale.api",
    "official": "effscale.api",
    "ScalingCoefficients": "effscale.net.scaling",
    "GridConfig": "effscale.grid.config",
    "TransferConfig": "effscale.transfer.config",
}
_SUBPACKAGES = ("grid", "transfer", "evaluate")

__all__ = ["__version__", *_ATTRIBUTES, *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"effscale.{name}")
    raise AttributeError(f"module 'effscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
