"""The phi=1 grid search: config, candidates, trial log, executors, proxy trainer, report.

``effscale.grid.run(GridConfig(...), run_dir)`` runs a whole search from a notebook. Both
names are imported here without Keras (the proxy trainer imports it when a trial runs).
"""

from effscale.grid.config import GridConfig
from effscale.grid.run import GridResult, run

__all__ = ["GridConfig", "GridResult", "run"]
