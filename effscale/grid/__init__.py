"""The phi=1 grid search: config, candidates, trial log, executors, proxy trainer, report."""
